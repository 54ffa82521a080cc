"""A folder of ABC files: every tune of every `.abc` file, with captions given beside the tunes
(`captions.json`, `captions.jsonl`), in the tune (`%caption ...`), or written from its facts."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

from img2music.settings import Settings
from img2music.tools.abc.check import CompiledAbc, decode_abc, normalise_abc
from img2music.tools.abc.scan import split_tunes
from img2music.tools.corpus.captions import tune_job
from img2music.tools.corpus.records import Collection, Job, Skipped

SIDECAR_NAMES = ("captions.json", "captions.jsonl")
TUNE_CAPTION = re.compile(r"^(?:%\s*|N:\s*)caption\b[\s:=-]*(?P<text>.+)$", re.IGNORECASE)


def load_sidecar_captions(folder: Path) -> dict[str, str]:
    """Captions given beside the tunes: `captions.json`, an object mapping "file.abc" or
    "file.abc:X" (X: number) to a caption, or `captions.jsonl`, lines of such objects or of
    {"file": ..., "X": ..., "caption": ...}. Paths are relative to the folder."""
    captions: dict[str, str] = {}
    for name in SIDECAR_NAMES:
        path = folder / name
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8")
        entries: Iterable[Any] = (
            [json.loads(text)] if name.endswith(".json")
            else (json.loads(line) for line in text.splitlines() if line.strip())
        )
        for entry in entries:
            captions.update(_sidecar_entry(entry, path))
    return captions


def _sidecar_entry(entry: Any, path: Path) -> dict[str, str]:
    if not isinstance(entry, dict):
        raise ValueError(f"{path}: each entry must be a JSON object")
    if "caption" in entry and "file" in entry:
        number = entry.get("X", entry.get("x"))
        key = str(entry["file"]) + (f":{number}" if number is not None else "")
        return {key: str(entry["caption"])}
    return {str(key): str(value) for key, value in entry.items()}


def abc_folder_jobs(folder: Path, sidecar: dict[str, str], settings: Settings) -> Iterator[Job]:
    for path in sorted(folder.rglob("*.abc")):
        relative = path.relative_to(folder).as_posix()
        file_id = f"abc-dir:{folder.name}/{relative}"
        try:
            text, _ = decode_abc(path.read_bytes())
        except OSError as error:
            yield Skipped(file_id, f"the file cannot be read: {error.strerror or error}")
            continue
        lines = normalise_abc(text).split("\n")
        tunes = split_tunes(lines)
        if not tunes:
            yield Skipped(file_id, "no ABC tune in the file")
        for first, last in tunes:
            yield partial(tune_job, f"{file_id}:{first + 1}", "abc-dir",
                          "\n".join(lines[first:last + 1]), settings,
                          partial(_abc_file_facts, relative, sidecar))


def _abc_file_facts(
    relative: str, sidecar: dict[str, str], compiled: CompiledAbc
) -> tuple[Collection, str | None]:
    """A tune's book (B:) as its collection; its caption from the sidecar ("file.abc:X"), the
    tune itself, or the sidecar's caption for the whole file, the most specific first."""
    assert compiled.tune is not None
    number = compiled.tune.field_value("X") or ""
    caption = (sidecar.get(f"{relative}:{number}") or _tune_caption(compiled.abc)
               or sidecar.get(relative))
    return Collection((compiled.tune.field_value("B") or "").strip('"')), caption


def _tune_caption(abc: str) -> str:
    """A caption written into the tune: `%caption ...` or `N:caption ...` lines."""
    found = [match["text"].strip() for line in abc.split("\n")
             if (match := TUNE_CAPTION.match(line.strip()))]
    return " ".join(text for text in found if text)
