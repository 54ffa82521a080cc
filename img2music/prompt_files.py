"""Prompt files: shipped in `img2music.prompts`, replaceable as a folder for prompt iteration."""

from __future__ import annotations

import tomllib
from functools import lru_cache
from importlib.resources import files
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from img2music.settings import get_settings


def prompts_folder() -> Path:
    """The configured prompt folder, or the shipped one."""
    configured = get_settings().prompts_dir
    return configured if configured is not None else Path(str(files("img2music.prompts")))


@lru_cache(maxsize=8)
def _environment(folder: Path) -> Environment:
    return Environment(
        loader=FileSystemLoader(folder),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_prompt(name: str, **variables: object) -> str:
    """Render `name` (e.g. "metric_feedback.j2"); a missing variable is an error, never blank."""
    return _environment(prompts_folder()).get_template(name).render(**variables)


def load_prompt_data(name: str) -> dict[str, object]:
    """Read a TOML data file (e.g. "metrics.toml") from the prompt folder."""
    with (prompts_folder() / name).open("rb") as handle:
        return tomllib.load(handle)
