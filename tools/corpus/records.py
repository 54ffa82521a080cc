"""A record of the index: one real tune with valid ABC, an English caption and flat metadata;
a `Skipped` for a tune left out; and what every source shares (collections, normalised text)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from img2music.tools.abc.check import CompiledAbc, normalise_abc
from img2music.tools.abc.scan import is_music_line

SourceName = Literal["music21", "midicaps", "abc-dir"]
MetadataValue = str | int | float | bool


class MusicRecord(BaseModel):
    """One tune as the index stores it: valid ABC, the caption CLIP embeds, flat metadata."""

    model_config = ConfigDict(frozen=True)

    id: str = Field(description="Stable and unique: source, file and place in the file.")
    abc: str = Field(description="One valid tune, normalised; passes parse-check.")
    caption: str = Field(description="English, MidiCaps style; what CLIP embeds.")
    source: SourceName
    title: str = ""
    key: str = Field(default="", description='e.g. "G major", "A minor", "D dorian".')
    meter: str = Field(default="", description='e.g. "6/8".')
    tempo: int | None = Field(default=None, description="Quarter-note bpm when known.")
    genre: str = ""
    region: str = ""
    instruments: str = Field(default="", description="Comma-separated names.")
    mood: str = ""
    bars: int = 0

    def metadata(self) -> dict[str, MetadataValue]:
        """Everything but id and caption, flat and without None (Chroma refuses None)."""
        values = self.model_dump(exclude={"id", "caption"})
        values["tempo"] = self.tempo or 0
        return values


class Skipped(NamedTuple):
    """A tune or file left out, with the one-line reason."""

    id: str
    reason: str


# Work for one record: a skip known without work, or the call that makes a record.
Job = Skipped | Callable[[], MusicRecord | Skipped]


@dataclass(frozen=True)
class Collection:
    """What a whole collection says of its tunes: name, default kind, region, instruments."""

    name: str
    noun: str = "tune"
    region: str = ""
    instruments: str = ""
    translate_headers: bool = False


def normalise_tune(text: str) -> str:
    """One tune as stored: LF line ends, no trailing spaces or blank lines, and none of the free
    text that may follow the blank line ending it. Music after that blank line is kept, so
    parse-check still reports it."""
    lines = [line.rstrip() for line in normalise_abc(text).split("\n")]
    key_at = next((i for i, line in enumerate(lines) if line.startswith("K:")), None)
    if key_at is not None:
        end = next((i for i in range(key_at, len(lines)) if not lines[i]), len(lines))
        if not any(is_music_line(line) for line in lines[end:]):
            lines = lines[:end]
    return "\n".join(line for line in lines if line) + "\n"


def first_error(compiled: CompiledAbc) -> str:
    """Why the checker refused a tune, in one line: the reason its `Skipped` gives."""
    errors = compiled.check.errors
    return errors[0].one_line() if errors else "no tune found"
