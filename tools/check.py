"""Parse-check: is this ABC a usable tune, and if not, what is wrong and where, in one line each.

The structural scan (`abc_scan`) runs on every input; the ABC itself is then read by abc2midi,
the reference implementation, or by music21 when abc2midi is not installed. Both paths return the
same `ParseCheck`, and compiling yields the MIDI that conversion, metrics and rendering reuse.
"""

from __future__ import annotations

import io
import logging
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import mido
from pydantic import BaseModel, Field

from img2music.settings import Settings, get_settings
from img2music.tools.abc_directives import filter_directives
from img2music.tools.abc_scan import ScannedTune, scan_abc
from img2music.tools.diagnostics import Diagnostic
from img2music.tools.programs import ProgramFailed, run_program, which

logger = logging.getLogger(__name__)

Backend = Literal["abc2midi", "music21"]

ABC2MIDI_MESSAGE = re.compile(
    r"^(?P<kind>Error|Warning) in line-char (?P<line>\d+)-(?P<col>\d+) : (?P<message>.+)$"
)
# Bar lengths and a missing M: are checked by the scan, which knows about pickups and repeats.
ABC2MIDI_DUPLICATES = re.compile(r"Bar \d+ has .* time units|No M: in header")
# abc2midi calls these errors, yet the music is whole: an `I:` line it has no use for, its own
# swing rule for hornpipes, a tie between two different pitches (played as a slur), and a
# decoration before a slur or annotation (`~(dcd)`, `u"4"A`), which it drops; notes that are
# really malformed are caught by the scan first.
ABC2MIDI_HARMLESS = re.compile(
    r"I: key .* not recognized|Hornpipe must be in|Could not find note to be tied"
    r"|Malformed note : expecting a-g or A-G"
)
CONTROL_CHARACTER = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
MAX_REPORTED = 30


class ParseCheck(BaseModel):
    """What parse-check found; `ok` means no errors, so the tune can be played and measured."""

    ok: bool
    errors: list[Diagnostic] = Field(default_factory=list)
    warnings: list[Diagnostic] = Field(default_factory=list)
    tunes: int = Field(default=0, description="Tunes (X: sections) in the text.")
    voices: int = Field(default=0, description="Voices of the first tune.")
    bars: int = Field(default=0, description="Bars of the first tune's longest voice.")
    notes: int = Field(default=0, description="Notes of the first tune, chord notes each counted.")
    duration_beats: float = Field(
        default=0.0, description="Length of the first tune in quarter-note beats, repeats unplayed."
    )
    backend: Backend | None = Field(default=None, description="The parser that read the ABC.")

    def feedback(self, limit: int = 12) -> str:
        """The errors as the lines a repair prompt shows the model."""
        lines = [error.one_line() for error in self.errors[:limit]]
        if len(self.errors) > limit:
            lines.append(f"… and {len(self.errors) - limit} more errors")
        return "\n".join(lines)


@dataclass(frozen=True)
class CompiledAbc:
    """A checked ABC text with the MIDI of its first tune when that tune is valid; the text is
    what the programs read: line ends normalised, forbidden directives removed."""

    abc: str
    check: ParseCheck
    midi: bytes | None
    tune: ScannedTune | None


def decode_abc(data: bytes) -> tuple[str, Diagnostic | None]:
    """ABC files are UTF-8 by the standard and Latin-1 in older collections."""
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        col = error.start - (data.rfind(b"\n", 0, error.start) + 1) + 1
        warning = Diagnostic(
            severity="warning", line=line, col=col,
            message="the text is not UTF-8; read as Latin-1",
        )
        return data.decode("latin-1"), warning


def normalise_abc(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def select_backend(settings: Settings) -> Backend:
    if settings.abc_backend != "auto":
        return settings.abc_backend
    return "abc2midi" if which("abc2midi") else "music21"


def compile_abc(
    text: str | bytes,
    *,
    settings: Settings | None = None,
    backend: Backend | None = None,
) -> CompiledAbc:
    """Check every tune in `text` and compile the first one to MIDI when nothing is wrong."""
    settings = settings or get_settings()
    backend = backend or select_backend(settings)
    diagnostics: list[Diagnostic] = []
    if isinstance(text, bytes):
        text, decode_warning = decode_abc(text)
        diagnostics.extend([decode_warning] if decode_warning else [])
    text = normalise_abc(text)
    size_error = _size_error(text, settings.max_abc_bytes)
    if size_error is not None:
        return CompiledAbc(text, _result([size_error], [], None, backend), None, None)
    filtered = filter_directives(text)
    text = filtered.text
    diagnostics.extend(filtered.removed)
    diagnostics.extend(_control_character_errors(text))
    scanned = scan_abc(text, max_notes=settings.max_notes, max_bars=settings.max_bars)
    diagnostics.extend(scanned.diagnostics)
    midi: bytes | None = None
    for index, tune in enumerate(scanned.tunes):
        diagnostics.extend(tune.diagnostics)
        if _has_errors(tune.diagnostics):
            continue
        tune_text = "\n".join(scanned.lines[tune.first_line - 1:tune.last_line]) + "\n"
        tune_diagnostics, tune_midi = _read_tune(tune_text, tune.first_line - 1, backend, settings)
        if tune_midi is not None:
            tune_diagnostics.extend(_length_errors(tune_midi, tune.first_line, settings))
        diagnostics.extend(tune_diagnostics)
        if index == 0 and not _has_errors(tune_diagnostics):
            midi = tune_midi
    first = scanned.tunes[0] if scanned.tunes else None
    result = _result(diagnostics, scanned.tunes, first, backend)
    return CompiledAbc(text, result, midi if result.ok else None, first)


def check_abc(
    text: str | bytes, *, settings: Settings | None = None, backend: Backend | None = None
) -> ParseCheck:
    return compile_abc(text, settings=settings, backend=backend).check


def _has_errors(diagnostics: list[Diagnostic]) -> bool:
    return any(d.severity == "error" for d in diagnostics)


def _result(
    diagnostics: list[Diagnostic],
    tunes: list[ScannedTune],
    first: ScannedTune | None,
    backend: Backend,
) -> ParseCheck:
    errors = [d for d in diagnostics if d.severity == "error"]
    warnings = [d for d in diagnostics if d.severity == "warning"]
    return ParseCheck(
        ok=not errors and first is not None,
        errors=errors[:MAX_REPORTED],
        warnings=warnings[:MAX_REPORTED],
        tunes=len(tunes),
        voices=max(len(first.voices), 1) if first and first.notes else 0,
        bars=first.bar_count if first else 0,
        notes=first.notes if first else 0,
        duration_beats=float(first.duration * 4) if first else 0.0,
        backend=backend,
    )


def _size_error(text: str, limit: int) -> Diagnostic | None:
    encoded = text.encode("utf-8")
    if len(encoded) <= limit:
        return None
    line = encoded.count(b"\n", 0, limit) + 1
    return Diagnostic(
        severity="error", line=line, col=1,
        message=f"the ABC text is {len(encoded):,} bytes, over the {limit:,}-byte limit; "
        f"it passes the limit on line {line}",
    )


def _length_errors(midi: bytes, line: int, settings: Settings) -> list[Diagnostic]:
    """A tune longer than `max_tune_seconds` when played (repeats and tempo included) is an
    error, so no render (a WAV grows by 10 MB a minute) can run for minutes."""
    seconds = mido.MidiFile(file=io.BytesIO(midi)).length
    if seconds <= settings.max_tune_seconds:
        return []
    return [Diagnostic(
        severity="error", line=line, col=0,
        message=f"the tune lasts {seconds:.0f} s when played (repeats and Q: tempo included), "
        f"over the {settings.max_tune_seconds:g}-second limit: write fewer bars or a faster "
        "tempo")]


def _control_character_errors(text: str) -> list[Diagnostic]:
    errors = []
    for number, line in enumerate(text.split("\n"), start=1):
        match = CONTROL_CHARACTER.search(line)
        if match:
            errors.append(Diagnostic(
                severity="error", line=number, col=match.start() + 1,
                message=f"control character U+{ord(match.group()):04X} in the text; ABC is "
                "plain text (binary data?)",
                source=CONTROL_CHARACTER.sub("?", line),
            ))
        if len(errors) >= 5:
            break
    return errors


def _read_tune(
    tune_text: str, line_offset: int, backend: Backend, settings: Settings
) -> tuple[list[Diagnostic], bytes | None]:
    if backend == "abc2midi":
        return _read_with_abc2midi(tune_text, line_offset, settings)
    return _read_with_music21(tune_text, line_offset)


def _read_with_abc2midi(
    tune_text: str, line_offset: int, settings: Settings
) -> tuple[list[Diagnostic], bytes | None]:
    lines = tune_text.split("\n")
    with tempfile.TemporaryDirectory(prefix="img2music-abc-") as work:
        folder = Path(work)
        (folder / "tune.abc").write_text(tune_text, encoding="utf-8")
        try:
            result = run_program(
                ["abc2midi", "tune.abc", "-o", "tune.mid", "-NGUI"],
                cwd=folder, timeout_s=settings.program_timeout_s,
                max_file_bytes=settings.max_output_bytes,
            )
        except ProgramFailed as error:
            return [Diagnostic(severity="error", line=line_offset + 1, col=0, message=str(error),
                               checker="abc2midi")], None
        diagnostics = []
        for raw in result.stdout.splitlines() + result.stderr.splitlines():
            match = ABC2MIDI_MESSAGE.match(raw.strip())
            if match is None or ABC2MIDI_DUPLICATES.search(match["message"]):
                continue
            line = int(match["line"])
            source = lines[line - 1] if 0 < line <= len(lines) else ""
            is_error = match["kind"] == "Error" and not ABC2MIDI_HARMLESS.search(match["message"])
            diagnostics.append(Diagnostic(
                severity="error" if is_error else "warning",
                line=line + line_offset if line else 0,
                col=int(match["col"]) + 1 if line else 0,
                message=match["message"].strip(), source=source, checker="abc2midi",
            ))
        midi_path = folder / "tune.mid"
        midi = midi_path.read_bytes() if midi_path.is_file() else None
    if midi is None and not _has_errors(diagnostics):
        diagnostics.append(Diagnostic(severity="error", line=line_offset + 1, col=0,
                                      message="abc2midi wrote no MIDI for this tune",
                                      checker="abc2midi"))
    return diagnostics, midi


def _read_with_music21(tune_text: str, line_offset: int) -> tuple[list[Diagnostic], bytes | None]:
    from music21 import converter
    from music21.midi.translate import music21ObjectToMidiFile

    try:
        score = converter.parse(tune_text, format="abc", forceSource=True)
        midi = music21ObjectToMidiFile(score).writestr()
    except Exception as error:  # music21 raises many exception types on malformed ABC
        message = " ".join(str(error).split())[:200] or type(error).__name__
        return [Diagnostic(severity="error", line=line_offset + 1, col=0,
                           message=f"music21 could not read the tune: {message}",
                           checker="music21")], None
    return [], bytes(midi)

