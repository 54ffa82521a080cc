"""MusicXML for notation programs (MuseScore, Dorico, Finale, Sibelius): music21 reads the ABC
one voice at a time (`tools.abc.voices`) and writes one part per voice, named after it, with the
instrument of the General MIDI program it plays with.

music21's ABC reader is not abc2midi, and where the two would differ the audio is abc2midi's, so
the score is written to hold what plays: each voice is read alone (music21 makes a new part of
every `V:` block and reads inline `[V:…]` voices as one); the tune is read as ABC 2.1, whose
accidentals hold to the end of the bar (music21 assumes ABC 1.3), and a `Q:` with spaces around
its `=` without them (music21 would take `1/4 = 120` as a whole note and a quarter); a bar is
written as long as it is (music21's general exporter would pad a short bar with hidden rests);
and music21, which writes a bar longer than its meter as the bar and a short one after it, has
the `:|` that closes such a bar moved from between the two to the end.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from img2music.settings import Settings, get_settings
from img2music.tools.abc.diagnostics import one_line
from img2music.tools.abc.directives import filter_directives
from img2music.tools.abc.voices import Voice, split_voices
from img2music.tools.files import write_atomic
from img2music.tools.render.checks import RenderError, check_size

if TYPE_CHECKING:
    from music21 import stream

ABC_VERSION = "%abc-2.1\n"
TEMPO_SPACES = re.compile(r"^(Q:[^=\n]*?)[ \t]*=[ \t]*", re.MULTILINE)


def render_musicxml(
    abc: str, out: Path, *, programs: Sequence[int] = (), settings: Settings | None = None
) -> Path:
    """Write the first tune of `abc` as a MusicXML file; `programs` are the voices' General
    MIDI programs in order (`tools.render.midi.voice_tracks` finds them), piano when not given."""
    settings = settings or get_settings()
    check_size("ABC text", len(abc.encode("utf-8")), settings.max_abc_bytes)
    voices = split_voices(filter_directives(abc).text)
    if not voices:
        raise RenderError("the ABC holds no tune to write as MusicXML")
    try:
        data = _musicxml(voices, programs)
    except RenderError:
        raise
    except Exception as error:  # music21 raises many exception types on what it cannot read
        message = one_line(str(error), 200) or type(error).__name__
        raise RenderError(f"music21 could not write the MusicXML: {message}") from error
    return write_atomic(out, data)


def _musicxml(voices: Sequence[Voice], programs: Sequence[int]) -> bytes:
    from music21 import converter, instrument, stream
    from music21.musicxml.m21ToXml import ScoreExporter

    score = stream.Score()
    for number, voice in enumerate(voices):
        parsed = converter.parse(_for_music21(voice.abc), format="abc",
                                 forceSource=True)
        if score.metadata is None and parsed.metadata is not None:
            score.metadata = parsed.metadata
        parts = list(parsed.parts) if isinstance(parsed, stream.Score) else []
        if not parts or not parts[0].recurse().notesAndRests:
            continue  # a voice declared but never written
        part = parts[0]
        part.partName, part.id = voice.name, f"P{number + 1}"
        for old in part.recurse().getElementsByClass(instrument.Instrument):
            old.activeSite.remove(old)
        program = programs[number] if number < len(programs) else 0
        played = instrument.instrumentFromMidiProgram(program)
        played.midiProgram, played.partName = program, voice.name
        part.insert(0, played)
        _repeat_ends_after_their_bars(part)
        score.insert(0, part)
    if not score.parts:
        raise RenderError("the tune has no voice with music to write as MusicXML")
    exporter = ScoreExporter(score, makeNotation=True)
    exporter.parse()
    return bytes(exporter.asBytes())


def _for_music21(abc: str) -> str:
    """The voice as music21 reads it as abc2midi plays it: ABC 2.1, whose accidentals hold to
    the end of the bar (music21 reads ABC 1.3 unless told), and `Q:` values without spaces."""
    return ABC_VERSION + TEMPO_SPACES.sub(r"\1=", abc)


def _repeat_ends_after_their_bars(part: stream.Part) -> None:
    """Put a `:|` that music21 left at the start of a bar at its end: music21 splits a bar
    longer than its meter in two and puts the bar's closing repeat sign between the halves."""
    from music21 import bar, stream

    for measure in part.getElementsByClass(stream.Measure):
        left = measure.leftBarline
        if isinstance(left, bar.Repeat) and left.direction == "end":
            measure.leftBarline = None
            measure.rightBarline = bar.Repeat(direction="end", times=left.times)
