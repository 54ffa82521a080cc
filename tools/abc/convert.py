"""ABC to MIDI for playback and metrics; MIDI to ABC, once, when a MIDI corpus is ingested."""

from __future__ import annotations

import io
import logging
import tempfile
from pathlib import Path

import mido

from img2music.settings import Settings, get_settings
from img2music.tools.abc.check import ParseCheck, compile_abc
from img2music.tools.programs import run_program

logger = logging.getLogger(__name__)

DRUM_CHANNEL = 9
NOTE_EVENTS = ("note_on", "note_off")


class InvalidAbc(ValueError):
    """The ABC did not pass parse-check; `check` says what is wrong and where."""

    def __init__(self, check: ParseCheck) -> None:
        first = check.errors[0].one_line() if check.errors else "no tune found"
        super().__init__(f"the ABC is not a valid tune: {first}")
        self.check = check


class InvalidMidi(ValueError):
    """The bytes are not a MIDI file that can be read."""


def abc_to_midi(text: str | bytes, *, settings: Settings | None = None) -> bytes:
    """MIDI of the first tune, with its tempo, meter, key, voices and `%%MIDI program`s."""
    compiled = compile_abc(text, settings=settings)
    if compiled.midi is None:
        raise InvalidAbc(compiled.check)
    return compiled.midi


def midi_to_abc(
    midi: bytes,
    *,
    title: str = "Untitled",
    max_bars: int | None = None,
    settings: Settings | None = None,
) -> str:
    """ABC of the first `max_bars` bars of every non-drum track, rests kept, through midi2abc."""
    settings = settings or get_settings()
    if len(midi) > settings.max_midi_bytes:
        raise InvalidMidi(
            f"the MIDI file is {len(midi):,} bytes, over the {settings.max_midi_bytes:,}-byte limit"
        )
    try:
        song = mido.MidiFile(file=io.BytesIO(midi))
    except Exception as error:  # mido raises OSError, EOFError, ValueError, KeyError…
        raise InvalidMidi(f"not a readable MIDI file: {error}") from error
    song = _without_drums(song)
    if not any(message.type == "note_on" for track in song.tracks for message in track):
        raise InvalidMidi("the MIDI file has no notes outside the drum channel")
    song = _first_bars(song, max_bars or settings.midi_to_abc_bars)
    with tempfile.TemporaryDirectory(prefix="img2music-midi-") as work:
        folder = Path(work)
        song.save(folder / "in.mid")
        run_program(
            ["midi2abc", "-f", "in.mid", "-o", "out.abc", "-bpl", "4", "-title", title],
            cwd=folder, timeout_s=settings.program_timeout_s,
            max_file_bytes=settings.max_output_bytes,
        )
        output = folder / "out.abc"
        if not output.is_file():
            raise InvalidMidi("midi2abc could not convert the MIDI file")
        return output.read_text(encoding="utf-8", errors="replace")


def _without_drums(song: mido.MidiFile) -> mido.MidiFile:
    """Drop the General MIDI percussion channel: drums do not read as ABC notes."""
    cleaned = mido.MidiFile(type=song.type, ticks_per_beat=song.ticks_per_beat)
    for track in song.tracks:
        kept, carried = mido.MidiTrack(), 0
        for message in track:
            if getattr(message, "channel", None) == DRUM_CHANNEL:
                carried += message.time
                continue
            kept.append(message.copy(time=message.time + carried))
            carried = 0
        has_notes = any(message.type in NOTE_EVENTS for message in kept)
        if has_notes or not any(message.type in NOTE_EVENTS for message in track):
            cleaned.tracks.append(kept)
    return cleaned


def _bars_end_tick(song: mido.MidiFile, bars: int) -> int:
    """The tick where `bars` bars end, following the file's time-signature changes."""
    changes = sorted(
        (tick, message.numerator, message.denominator)
        for track in song.tracks
        for tick, message in _absolute(track)
        if message.type == "time_signature"
    ) or [(0, 4, 4)]
    tick, numerator, denominator = 0, changes[0][1], changes[0][2]
    pending = [change for change in changes if change[0] > 0]
    for _ in range(bars):
        while pending and pending[0][0] <= tick:
            _, numerator, denominator = pending.pop(0)
        tick += song.ticks_per_beat * 4 * numerator // denominator
    return tick


def _first_bars(song: mido.MidiFile, bars: int) -> mido.MidiFile:
    """Cut every track at the end of bar `bars`, ending notes still sounding there."""
    cutoff = _bars_end_tick(song, bars)
    cut = mido.MidiFile(type=song.type, ticks_per_beat=song.ticks_per_beat)
    for track in song.tracks:
        events: list[tuple[int, mido.Message]] = []
        sounding: set[tuple[int, int]] = set()
        for tick, message in _absolute(track):
            if message.type == "end_of_track":
                continue
            key = (getattr(message, "channel", 0), getattr(message, "note", 0))
            is_on = message.type == "note_on" and message.velocity > 0
            is_off = message.type == "note_off" or (message.type == "note_on" and not is_on)
            if tick >= cutoff and not (is_off and key in sounding):
                continue
            if is_on:
                sounding.add(key)
            elif is_off:
                sounding.discard(key)
            events.append((min(tick, cutoff), message))
        events.extend(
            (cutoff, mido.Message("note_off", channel=channel, note=note, velocity=0))
            for channel, note in sorted(sounding)
        )
        cut.tracks.append(_relative(events))
    return cut


def _absolute(track: mido.MidiTrack) -> list[tuple[int, mido.Message]]:
    tick, events = 0, []
    for message in track:
        tick += message.time
        events.append((tick, message))
    return events


def _relative(events: list[tuple[int, mido.Message]]) -> mido.MidiTrack:
    track, previous = mido.MidiTrack(), 0
    for tick, message in events:
        track.append(message.copy(time=tick - previous))
        previous = tick
    track.append(mido.MetaMessage("end_of_track", time=0))
    return track
