"""MidiCaps, the paper's database: its captions file and MIDI files, each MIDI converted to ABC
once, at ingestion; the dataset's own caption and metadata are kept."""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from img2music.settings import Settings
from img2music.tools.abc.check import compile_abc
from img2music.tools.abc.convert import midi_to_abc
from img2music.tools.abc.diagnostics import one_line
from img2music.tools.corpus.records import (
    Job,
    MusicRecord,
    Skipped,
    first_error,
    normalise_tune,
)
from img2music.tools.programs import ProgramMissing

MIDICAPS_CAPTIONS = "train.json"
SHAPE_PEEK_CHARS = 65_536


class MidiCapsEntry(BaseModel):
    """One line of MidiCaps' captions file; the fields the index keeps."""

    model_config = ConfigDict(extra="ignore")

    location: str = Field(min_length=1)
    caption: str = Field(min_length=1)
    genre: list[str] = Field(default_factory=list)
    mood: list[str] = Field(default_factory=list)
    key: str = ""
    time_signature: str = ""
    tempo: float | None = None
    instrument_summary: list[str] = Field(default_factory=list)

    @field_validator("genre", "mood", "instrument_summary", mode="before")
    @classmethod
    def _as_list(cls, value: Any) -> Any:
        if value is None:
            return []
        return [value] if isinstance(value, str) else value

    @field_validator("key", "time_signature", mode="before")
    @classmethod
    def _as_text(cls, value: Any) -> Any:
        return "" if value is None else value


def find_captions_files(folder: Path) -> list[Path]:
    """MidiCaps' `train.json`, else every `*.json` / `*.jsonl` in the folder shaped like it."""
    if (folder / MIDICAPS_CAPTIONS).is_file():
        return [folder / MIDICAPS_CAPTIONS]
    found = [path for path in sorted(folder.iterdir())
             if path.suffix in {".json", ".jsonl"} and path.is_file() and _is_captions_file(path)]
    if not found:
        raise FileNotFoundError(
            f"no MidiCaps captions file in {folder}: expected {MIDICAPS_CAPTIONS}, or JSON Lines "
            "(or a JSON array) of objects with location and caption"
        )
    return found


def _is_captions_file(path: Path) -> bool:
    with path.open(encoding="utf-8", errors="replace") as handle:
        head = handle.read(SHAPE_PEEK_CHARS).lstrip()
    if head.startswith("["):
        return '"location"' in head and '"caption"' in head
    try:
        first = json.loads(head.split("\n", 1)[0])
    except ValueError:
        return False
    return isinstance(first, dict) and "location" in first and "caption" in first


def _caption_lines(path: Path) -> Iterator[tuple[int, Any | ValueError]]:
    """(line number, or place in a JSON array; parsed object or the JSON error) per entry."""
    with path.open(encoding="utf-8", errors="replace") as handle:
        is_array = handle.read(SHAPE_PEEK_CHARS).lstrip().startswith("[")
        handle.seek(0)
        if is_array:
            try:
                entries = json.load(handle)
            except ValueError as error:
                yield 1, error
                return
            yield from enumerate(entries if isinstance(entries, list) else [entries], start=1)
            return
        for number, line in enumerate(handle, start=1):
            if line.strip():
                try:
                    yield number, json.loads(line)
                except ValueError as error:
                    yield number, error


def midicaps_jobs(folder: Path, captions: list[Path], settings: Settings) -> Iterator[Job]:
    root = folder.resolve()
    seen: set[str] = set()
    for path in captions:
        for number, parsed in _caption_lines(path):
            where = f"midicaps:{path.name}:{number}"
            if isinstance(parsed, ValueError):
                yield Skipped(where, f"{path.name}:{number} is not valid JSON: "
                                     f"{one_line(str(parsed))}")
                continue
            try:
                entry = MidiCapsEntry.model_validate(parsed)
            except ValidationError as error:
                problems = "; ".join(
                    f"{'.'.join(str(p) for p in e['loc']) or 'entry'}: {e['msg']}"
                    for e in error.errors()[:3]
                )
                yield Skipped(where, f"{path.name}:{number} is not a MidiCaps entry: {problems}")
                continue
            record_id = f"midicaps:{entry.location.strip().removeprefix('./')}"
            if record_id in seen:
                yield Skipped(record_id, f"the location appears again, at {path.name}:{number}")
                continue
            seen.add(record_id)
            yield partial(_midicaps_record, record_id, root, entry, settings)


def _midicaps_record(
    record_id: str, root: Path, entry: MidiCapsEntry, settings: Settings
) -> MusicRecord | Skipped:
    midi_path = (root / entry.location.strip()).resolve()
    if not midi_path.is_relative_to(root):
        return Skipped(record_id, f"the location {entry.location!r} leads outside the "
                                  "MidiCaps folder; refused")
    try:
        size = midi_path.stat().st_size
        if size > settings.max_midi_bytes:
            return Skipped(record_id, f"the MIDI file is {size:,} bytes, over the "
                                      f"{settings.max_midi_bytes:,}-byte limit")
        midi = midi_path.read_bytes()
    except OSError as error:
        return Skipped(record_id, f"the MIDI file cannot be read: {error.strerror or error}")
    try:
        abc = midi_to_abc(midi, title="Untitled", max_bars=settings.midi_to_abc_bars,
                          settings=settings)
    except ProgramMissing:
        raise
    except Exception as error:  # one bad file in 168,000 must not stop an ingest
        return Skipped(record_id, f"MIDI to ABC failed: {one_line(str(error))}")
    compiled = compile_abc(normalise_tune(abc), settings=settings)
    if not compiled.check.ok:
        return Skipped(record_id, f"the converted ABC is not valid: {first_error(compiled)}")
    return MusicRecord(
        id=record_id, abc=compiled.abc, caption=" ".join(entry.caption.split()),
        source="midicaps", key=entry.key.strip(), meter=entry.time_signature.strip(),
        tempo=round(entry.tempo) if entry.tempo else None,
        genre=", ".join(entry.genre), mood=", ".join(entry.mood),
        instruments=", ".join(entry.instrument_summary), bars=compiled.check.bars,
    )
