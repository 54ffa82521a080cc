"""img2music: turn an image into music that a person can read, hear and understand.

`from img2music import compose` is the Python API. Dependencies run one way: the root modules
(`settings`, `templating`, `prompt_files`, `redaction`) import nothing else of ours; `tools`
(the toolkit) imports only them; `graph` imports the tools; `pipeline` runs the graph and writes
a run's files; `eval` and `server` use the pipeline; `cli` sits on top. The folders `graph/`,
`tools/`, `server/` and `prompts/` at the repository root are installed as subpackages of this
one (pyproject.toml's `package-dir`). `tests/test_architecture.py` checks the rule.
"""

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
