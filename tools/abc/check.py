"""Parse-check: can this ABC be played as its writer meant it, and what would a musician correct?

The structural scan (`scan`) runs on every input; the ABC itself is then read by abc2midi,
the reference implementation, or by music21 when abc2midi is not installed. Both paths return the
same `ParseCheck`, and compiling yields the MIDI that conversion, metrics and rendering reuse.

The verdict has two tiers. The **error** tier is this set of conditions and no other:

1. the text is over `max_abc_bytes`, or holds a control character (binary data);
2. the text holds no tune (no `X:`/`K:` header with music);
3. one of the scan's errors, listed in `img2music.tools.abc.scan`'s docstring: a missing or
   unreadable `K:`, `M:`, `L:` or `V:`; music before `K:` or after a blank line; prose in the
   header; an unclosed chord, grace group, annotation, `+decoration+` or inline field; a chord of
   non-notes (`[Am]`); an accidental without a note; a tuplet outside `(2`-`(9`; a character
   that cannot stand in music (`F#`, prose, garbage); no notes at all; over the note or bar
   limits;
4. the reference parser cannot read the tune: an `Error` line of abc2midi other than the
   harmless ones in `ABC2MIDI_HARMLESS` (and none on a `%%` directive line, which abc2midi skips),
   abc2midi writing no MIDI, or music21 raising (when it is the backend);
5. the tune would play longer than `max_tune_seconds` (tempo and repeats included).

Everything else is a **fault**: playable, delivered, and reported so that it can be corrected.
Before any of this, the directive filter (`directives`) removes the directives no program
may run (they read files, write raw output or markup, or hang abcm2ps); each removal is a fault,
and the text every later step and program reads is the filtered one.
`ParseCheck.ok` means no error; `ParseCheck.clean` means no fault either.
"""

from __future__ import annotations

import io
import logging
import re
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import mido
from pydantic import BaseModel, Field

from img2music.settings import Settings, get_settings
from img2music.tools.abc.diagnostics import Diagnostic, Severity, one_line
from img2music.tools.abc.directives import filter_directives
from img2music.tools.abc.scan import ScannedTune, scan_abc
from img2music.tools.programs import ProgramFailed, run_program, which

logger = logging.getLogger(__name__)

Backend = Literal["abc2midi", "music21"]

ABC2MIDI_MESSAGE = re.compile(
    r"^(?P<kind>Error|Warning) in line-char (?P<line>\d+)-(?P<col>\d+) : (?P<message>.+)$"
)
# What the scan already reports in its own words: bar lengths (it knows about pickups and
# repeats), a missing M: or one with no note value, voices of unequal length (abc2midi's count
# includes its chord staggering), a key word that is not a mode, a field letter ABC does not
# define.
ABC2MIDI_DUPLICATES = re.compile(
    r"Bar \d+ has .* time units|No M: in header|Track \d+ is .* quarter notes long"
    r"|Ignoring string .* in K: field|Ignoring text: [A-Za-z]:|No / found, assuming denominator"
)
# abc2midi calls these errors, yet it plays every written note as meant: an `I:` line it has no
# use for, its own swing rule for hornpipes, a tie between two different pitches (played as a
# slur), a decoration before a slur or annotation (`~(dcd)`, `u"4"A`), which it drops, a chord
# symbol it cannot voice (the accompaniment skips it), an octave mark on the other case (`d,` is
# D, `C'` is c), a `%%MIDI` directive it cannot use (sometimes reported lines later), notes
# that a `%%MIDI expand` lets ring past the end, a repeat opened with |: and never closed
# (played once), and a field, directive or mark it says it ignored (a lone `!`, a bad Q:).
# Notes that are really malformed are caught by the scan first.
ABC2MIDI_HARMLESS = re.compile(
    r"I: key .* not recognized|Hornpipe must be in|Could not find note to be tied"
    r"|Malformed note : expecting a-g or A-G|Unrecognized chord name|Bad pitch specifier"
    r"|\bMIDI\b|Sustained notes beyond end of track|Missing :\| at end of tune"
    r"|\bignored\b"
)
# A sentence a model can act on, added to abc2midi's own words.
ABC2MIDI_HINTS = {
    "Unrecognized chord name": "; chord symbols such as \"G\", \"Gm\", \"G7\", \"Gmaj7\", "
                               "\"Gdim\" are played",
    "Bad pitch specifier": "; write a lower octave with a capital letter (D, not d,) and a "
                           "higher one with a small letter (c, not C')",
    "%%MIDI command": "; players skip this directive",
}
CONTROL_CHARACTER = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
MAX_REPORTED = 30
DEFAULT_MIDI_TEMPO = 500_000  # microseconds a beat until a file sets one: 120 beats a minute


class ParseCheck(BaseModel):
    """What parse-check found; `ok` means no errors, so the tune can be played, measured and
    delivered; its faults are what a musician would still correct."""

    ok: bool
    errors: list[Diagnostic] = Field(default_factory=list)
    faults: list[Diagnostic] = Field(default_factory=list)
    error_count: int = Field(default=0, description="Errors found; `errors` lists the first.")
    fault_count: int = Field(default=0, description="Faults found; `faults` lists the first.")
    tunes: int = Field(default=0, description="Tunes (X: sections) in the text.")
    voices: int = Field(default=0, description="Voices of the first tune.")
    bars: int = Field(default=0, description="Bars of the first tune's longest voice.")
    notes: int = Field(default=0, description="Notes of the first tune, chord notes each counted.")
    duration_beats: float = Field(
        default=0.0, description="Length of the first tune in quarter-note beats, repeats unplayed."
    )
    backend: Backend | None = Field(default=None, description="The parser that read the ABC.")

    @property
    def clean(self) -> bool:
        """Playable with nothing a musician would correct."""
        return self.ok and self.fault_count == 0

    def feedback(self, limit: int = 12, *, tier: Severity | None = None) -> str:
        """The errors, then the faults (or one tier), as the lines a repair prompt shows."""
        tiers: list[tuple[Severity, list[Diagnostic], int]] = [
            ("error", self.errors, self.error_count), ("fault", self.faults, self.fault_count)]
        lines: list[str] = []
        for name, found, count in tiers:
            if tier not in (None, name):
                continue
            room = max(limit - len(lines), 0)
            lines.extend(diagnostic.one_line() for diagnostic in found[:room])
            hidden = max(count, len(found)) - min(room, len(found))
            if hidden:
                lines.append(f"… and {hidden} more {name}s")
        return "\n".join(lines)

    def summary(self, limit: int = 1) -> str:
        """One line: the first errors (or faults, for a playable tune) and how many there are."""
        tier: Severity = "fault" if self.ok else "error"
        shown = (self.faults if self.ok else self.errors)[:limit]
        count = self.fault_count if self.ok else self.error_count
        text = "; ".join(diagnostic.one_line() for diagnostic in shown)
        if count > len(shown):
            text += f" (and {count - len(shown)} more {tier}s)"
        return text


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
        fault = Diagnostic(
            severity="fault", line=line, col=col,
            message="the text is not UTF-8; read as Latin-1",
        )
        return data.decode("latin-1"), fault


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
    """Check every tune in `text` and compile the first one to MIDI when it has no error."""
    settings = settings or get_settings()
    backend = backend or select_backend(settings)
    diagnostics: list[Diagnostic] = []
    unlisted: Counter[str] = Counter()  # found by the scan beyond what it keeps
    if isinstance(text, bytes):
        text, decode_fault = decode_abc(text)
        diagnostics.extend([decode_fault] if decode_fault else [])
    text = normalise_abc(text)
    size_error = _size_error(text, settings.max_abc_bytes)
    if size_error is not None:
        return CompiledAbc(text, _result([size_error], unlisted, [], None, backend), None, None)
    filtered = filter_directives(text)
    text = filtered.text
    diagnostics.extend(filtered.removed)
    diagnostics.extend(_control_character_errors(text))
    scanned = scan_abc(text, max_notes=settings.max_notes, max_bars=settings.max_bars)
    diagnostics.extend(scanned.diagnostics)
    midi: bytes | None = None
    for index, tune in enumerate(scanned.tunes):
        diagnostics.extend(tune.diagnostics)
        unlisted.update(tune.found)
        unlisted.subtract(d.severity for d in tune.diagnostics)
        if tune.found["error"]:
            continue
        tune_text = "\n".join(scanned.lines[tune.first_line - 1:tune.last_line]) + "\n"
        tune_diagnostics, tune_midi = _read_tune(tune_text, tune.first_line - 1, backend, settings)
        if tune_midi is not None:
            tune_diagnostics.extend(_length_errors(tune_midi, tune.first_line, settings))
        diagnostics.extend(tune_diagnostics)
        if index == 0 and not _has_errors(tune_diagnostics):
            midi = tune_midi
    first = scanned.tunes[0] if scanned.tunes else None
    result = _result(diagnostics, unlisted, scanned.tunes, first, backend)
    return CompiledAbc(text, result, midi if result.ok else None, first)


def check_abc(
    text: str | bytes, *, settings: Settings | None = None, backend: Backend | None = None
) -> ParseCheck:
    return compile_abc(text, settings=settings, backend=backend).check


def _has_errors(diagnostics: list[Diagnostic]) -> bool:
    return any(d.severity == "error" for d in diagnostics)


def _result(
    diagnostics: list[Diagnostic],
    unlisted: Counter[str],
    tunes: list[ScannedTune],
    first: ScannedTune | None,
    backend: Backend,
) -> ParseCheck:
    errors = [d for d in diagnostics if d.severity == "error"]
    faults = [d for d in diagnostics if d.severity == "fault"]
    return ParseCheck(
        ok=not errors and first is not None,
        errors=errors[:MAX_REPORTED],
        faults=faults[:MAX_REPORTED],
        error_count=len(errors) + unlisted["error"],
        fault_count=len(faults) + unlisted["fault"],
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


def midi_seconds(midi: bytes) -> float:
    """How long a MIDI file plays, tempo changes included (mido raises on a broken file).

    Mido's `MidiFile.length` in a third of its time: it walks a merged track, made by copying
    every message twice; the tempo changes and the last tick of each track say as much.
    """
    file = mido.MidiFile(file=io.BytesIO(midi))
    if file.type == 2:
        raise ValueError("a type 2 (asynchronous) MIDI file has no single length")
    changes: list[tuple[int, int]] = []
    end = 0
    for track in file.tracks:
        tick = 0
        for message in track:
            tick += message.time
            if message.type == "set_tempo":
                changes.append((tick, message.tempo))
        end = max(end, tick)
    seconds, tick, tempo = 0.0, 0, DEFAULT_MIDI_TEMPO
    for at, new_tempo in sorted(changes, key=lambda change: change[0]):  # stable, as mido's
        seconds += mido.tick2second(at - tick, file.ticks_per_beat, tempo)
        tick, tempo = at, new_tempo
    return float(seconds + mido.tick2second(end - tick, file.ticks_per_beat, tempo))


def _length_errors(midi: bytes, line: int, settings: Settings) -> list[Diagnostic]:
    """A tune longer than `max_tune_seconds` when played (repeats and tempo included) is an
    error, so no render (a WAV grows by 10 MB a minute) can run for minutes."""
    try:
        seconds = midi_seconds(midi)
    except (EOFError, OSError, ValueError, KeyError) as error:
        return [Diagnostic(severity="error", line=line, col=0,
                           message=f"the MIDI written for this tune cannot be read ({error!r})")]
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
        # abc2midi repeats some messages once per pass over the tune; each is reported once.
        for raw in dict.fromkeys(result.stdout.splitlines() + result.stderr.splitlines()):
            match = ABC2MIDI_MESSAGE.match(raw.strip())
            if match is None or ABC2MIDI_DUPLICATES.search(match["message"]):
                continue
            line = int(match["line"])
            source = lines[line - 1] if 0 < line <= len(lines) else ""
            message = match["message"].strip()
            is_error = (match["kind"] == "Error" and not ABC2MIDI_HARMLESS.search(message)
                        and not source.startswith("%%"))
            if not is_error:
                message += next((hint for key, hint in ABC2MIDI_HINTS.items() if key in message),
                                "")
            diagnostics.append(Diagnostic(
                severity="error" if is_error else "fault",
                line=line + line_offset if line else 0,
                col=int(match["col"]) + 1 if line else 0,
                message=message, source=source, checker="abc2midi",
            ))
        midi_path = folder / "tune.mid"
        # An empty file is what abc2midi leaves when it aborts part way (a buffer overflow).
        midi = (midi_path.read_bytes() or None) if midi_path.is_file() else None
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
        message = one_line(str(error), 200) or type(error).__name__
        return [Diagnostic(severity="error", line=line_offset + 1, col=0,
                           message=f"music21 could not read the tune: {message}",
                           checker="music21")], None
    return [], bytes(midi)

