"""Prompt files: shipped in `img2music.prompts`, replaceable as a folder for prompt iteration."""

from __future__ import annotations

import copy
import hashlib
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files
from pathlib import Path

from jinja2 import FileSystemLoader

from img2music.settings import get_settings
from img2music.templating import BoundedSandbox, render, sandbox

SHIPPED_NAME = "default"


@dataclass(frozen=True)
class PromptSet:
    """A prompt folder with the name and content hash that every report records."""

    name: str
    hash: str
    folder: Path


def shipped_prompts() -> Path:
    """The prompt folder that ships with img2music (the judge always reads its prompts here)."""
    return Path(str(files("img2music.prompts")))


def prompts_folder(folder: Path | str | None = None) -> Path:
    """The given folder, else the configured one, else the shipped one."""
    if folder:
        return Path(folder)
    configured = get_settings().prompts_dir
    return configured if configured is not None else shipped_prompts()


def prompt_set(folder: Path | str | None = None,
               edits: dict[str, str] | None = None) -> PromptSet:
    """Name and hash of the prompt files (templates and data), so runs can be compared; `edits`
    are templates a run replaced (from Studio), and change both."""
    resolved = prompts_folder(folder)
    edits = edits or {}
    texts = {path.name: path.read_bytes() for path in resolved.glob("*")
             if path.suffix in (".j2", ".toml") and path.is_file()}
    texts.update({name: text.encode() for name, text in edits.items()})
    digest = hashlib.sha256()
    for name in sorted(texts):
        digest.update(name.encode() + b"\0" + texts[name] + b"\0")
    shipped = resolved.resolve() == shipped_prompts().resolve()
    name = SHIPPED_NAME if shipped else resolved.name
    return PromptSet(name=f"{name}+edited" if edits else name, hash=digest.hexdigest()[:12],
                     folder=resolved)


# Every variable any prompt template is given, with a value of its kind: an edited template is
# rendered with these before the run's first model call, so one that breaks a rule fails the run
# before anything is spent.
SAMPLE_VARIABLES: dict[str, object] = {
    "description": "A quiet lake at dawn.", "note": "calm", "max_bars": 32, "thinking": "",
    "sees_image": True, "examples": [{"caption": "A calm air in D.", "abc": "X:1\nK:D\nD|"}],
    "errors": "line 3: a bar is too long", "feedback": "pitch_range 12", "round": 1,
    "asked": {"bars": 32, "seconds": None, "seconds_bars": None, "tempo": 72,
              "tempo_field": "1/4=72", "meter": "3/4", "key": "Dm", "key_name": "D minor",
              "voices": 2, "instruments": [{"voice": 1, "program": 40, "name": "Violin"},
                                           {"voice": 2, "program": 42, "name": "Cello"}]},
    "unmet": "- tempo: write Q:1/4=72",
}


@lru_cache(maxsize=8)
def _environment(folder: Path) -> BoundedSandbox:
    return sandbox(FileSystemLoader(folder), strict=True, keep_trailing_newline=True,
                   trim_blocks=True, lstrip_blocks=True)


def render_prompt(name: str, *, folder: Path | str | None = None, text: str = "",
                  label: str = "", **variables: object) -> str:
    """Render `name` (e.g. "compose.j2"), or `text` in its place when a run replaced it (named
    `label` in errors); a missing variable is an error, never a blank, and any failure is a
    `TemplateRefused` naming the template."""
    environment = _environment(prompts_folder(folder))
    return render(environment, template=label or name, text=text or None,
                  variables=variables).strip()


def check_prompt_edits(edits: dict[str, str], labels: dict[str, str]) -> None:
    """Render each edited template (by file name) with sample variables: a `TemplateRefused`
    now rather than after model calls were spent. `labels` name each edit in errors."""
    for name, text in edits.items():
        render(_environment(shipped_prompts()), template=labels.get(name, name), text=text,
               variables=SAMPLE_VARIABLES)


def load_prompt_data(name: str, *, folder: Path | str | None = None) -> dict[str, object]:
    """Read a TOML data file (e.g. "metrics.toml") from the prompt folder: read every time (the
    folder may be edited between runs), parsed once per content (every tune measured reads
    `metrics.toml`), and a copy the caller may change."""
    return copy.deepcopy(_parsed_toml((prompts_folder(folder) / name).read_bytes()))


@lru_cache(maxsize=16)
def _parsed_toml(content: bytes) -> dict[str, object]:
    return tomllib.loads(content.decode("utf-8"))
