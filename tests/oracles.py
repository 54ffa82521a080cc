"""Oracles that share no code with img2music (test support): abc2midi run directly on a tune,
and music21's own reading of it. Used where the code under test already ran our checker, so
asking the checker again would only repeat what it said."""

from __future__ import annotations

import io
import re
import subprocess
import tempfile
from pathlib import Path

import mido
from music21 import converter, stream

ABC2MIDI_ERROR = re.compile(r"^Error.*$", re.MULTILINE)


def abc2midi_output(abc: str, *, flags: tuple[str, ...] = ()) -> tuple[str, bytes | None]:
    """What abc2midi prints for the text, and the MIDI file it wrote (None when it wrote none)."""
    with tempfile.TemporaryDirectory() as work:
        (Path(work) / "tune.abc").write_text(abc, encoding="utf-8")
        result = subprocess.run(
            ["abc2midi", "tune.abc", "-o", "tune.mid", *flags], cwd=work, capture_output=True,
            text=True, timeout=30, check=False,
        )
        midi = Path(work) / "tune.mid"
        return result.stdout + result.stderr, midi.read_bytes() if midi.is_file() else None


def sounding_notes(midi: bytes | None) -> int:
    """Notes that sound in a MIDI file (note-ons with a velocity); 0 for no file."""
    if midi is None:
        return 0
    return sum(message.type == "note_on" and message.velocity > 0
               for track in mido.MidiFile(file=io.BytesIO(midi)).tracks for message in track)


def abc2midi_problems(abc: str) -> list[str]:
    """abc2midi's errors for the text, or that it wrote no MIDI with notes; [] for a tune it
    plays."""
    printed, midi = abc2midi_output(abc)
    problems = ABC2MIDI_ERROR.findall(printed)
    if midi is None:
        problems.append("abc2midi wrote no MIDI file")
    elif not sounding_notes(midi):
        problems.append("abc2midi's MIDI has no notes")
    return problems


def music21_voices_and_bars(abc: str) -> tuple[int, int]:
    """Parts, and measures of the longest part, as music21 reads the text."""
    score = converter.parse(abc, format="abc", forceSource=True)
    parts = list(score.parts) if isinstance(score, stream.Score) else [score]
    return len(parts), max(len(part.getElementsByClass(stream.Measure)) for part in parts)


def header_field(abc: str, letter: str) -> str:
    """The first `letter:` header line's value, read straight from the text."""
    found = re.search(rf"^{letter}:[ \t]*(.*?)[ \t]*$", abc, re.MULTILINE)
    return found.group(1) if found else ""
