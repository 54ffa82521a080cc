"""img2music: turn an image into music that a person can read, hear and understand."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from img2music.pipeline.runs import Composition, compose

__all__ = ["Composition", "compose"]


def __getattr__(name: str) -> Any:
    """`from img2music import compose` without loading the graph for every CLI command."""
    if name in __all__:
        from img2music.pipeline import runs

        return getattr(runs, name)
    raise AttributeError(f"module 'img2music' has no attribute {name!r}")
