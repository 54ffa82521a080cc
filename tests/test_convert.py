"""ABC to MIDI keeps what a listener hears; MIDI to ABC brings corpora in, capped and drum-free."""

from __future__ import annotations

import io

import mido
import pytest

from img2music.settings import Settings
from img2music.tools.check import check_abc
from img2music.tools.convert import InvalidAbc, InvalidMidi, abc_to_midi, midi_to_abc
from tests.needs import needs_programs

pytestmark = needs_programs("abc2midi", "midi2abc")

DUET = """X:1
T:Two voices
M:3/4
L:1/8
Q:1/4=100
K:D
V:1
%%MIDI program 73
A2 B2 c2 | d4 z2 | e2 f2 g2 | a6 | A2 B2 c2 | d4 z2 | e2 f2 g2 | a6 |]
V:2 clef=bass
%%MIDI program 32
D,4 A,2 | D,4 z2 | G,4 B,2 | A,6 | D,4 A,2 | D,4 z2 | G,4 B,2 | A,6 |]
"""


def _song(midi: bytes) -> mido.MidiFile:
    return mido.MidiFile(file=io.BytesIO(midi))


def _meta(song: mido.MidiFile, kind: str) -> list[mido.MetaMessage]:
    return [m for track in song.tracks for m in track if m.type == kind]


def test_abc_to_midi_keeps_tempo_meter_key_voices_and_programs() -> None:
    song = _song(abc_to_midi(DUET))
    assert round(mido.tempo2bpm(_meta(song, "set_tempo")[0].tempo)) == 100
    signature = _meta(song, "time_signature")[0]
    assert (signature.numerator, signature.denominator) == (3, 4)
    assert _meta(song, "key_signature")[0].key == "D"
    programs = sorted(m.program for t in song.tracks for m in t if m.type == "program_change")
    assert programs == [32, 73]
    tracks_with_notes = [t for t in song.tracks if any(m.type == "note_on" for m in t)]
    assert len(tracks_with_notes) == 2
    assert song.length == pytest.approx(8 * 3 * 60 / 100, abs=0.05)


def test_invalid_abc_raises_with_the_first_error() -> None:
    with pytest.raises(InvalidAbc, match="line 9, col 7: a chord opened with"):
        abc_to_midi(DUET.replace("A2 B2 c2 | d4", "A2 B2 [c2 | d4", 1))
    assert abc_to_midi(DUET.replace("A2 B2 c2 | d4", "A2 B2 c2 d2 | d4", 1))  # a long bar plays


def _pitches(midi: bytes) -> list[int]:
    return [m.note for t in _song(midi).tracks for m in t if m.type == "note_on" and m.velocity]


def test_midi_to_abc_round_trip_keeps_notes_and_rests() -> None:
    midi = abc_to_midi(DUET)
    abc = midi_to_abc(midi, title="Duet")
    assert "T:Duet" in abc.replace("T: ", "T:")
    assert "z" in abc
    result = check_abc(abc)
    assert result.ok, result.feedback()
    assert sorted(_pitches(abc_to_midi(abc))) == sorted(_pitches(midi))


def _with_drums(midi: bytes) -> bytes:
    song = _song(midi)
    drums = mido.MidiTrack()
    for _ in range(16):
        drums.append(mido.Message("note_on", channel=9, note=36, velocity=100, time=0))
        drums.append(mido.Message("note_off", channel=9, note=36, velocity=0, time=240))
    song.tracks.append(drums)
    out = io.BytesIO()
    song.save(file=out)
    return out.getvalue()


def test_midi_to_abc_drops_drums() -> None:
    abc = midi_to_abc(_with_drums(abc_to_midi(DUET)))
    assert abc.count("V:") == 2
    assert check_abc(abc).ok


def test_midi_to_abc_caps_the_length_per_voice() -> None:
    abc = midi_to_abc(abc_to_midi(DUET), max_bars=3)
    result = check_abc(abc)
    assert result.ok, result.feedback()
    assert result.bars == 3
    assert result.voices == 2


@pytest.mark.parametrize(
    ("data", "message"),
    [(b"", "not a readable MIDI file"), (b"MThd\x00\x00\x00\x06garbage", "not a readable MIDI"),
     (b"RIFF....WAVEfmt ", "not a readable MIDI file")],
)
def test_unreadable_midi_is_refused_clearly(data: bytes, message: str) -> None:
    with pytest.raises(InvalidMidi, match=message):
        midi_to_abc(data)


def test_oversized_midi_is_refused_before_reading() -> None:
    with pytest.raises(InvalidMidi, match="over the 100-byte limit"):
        midi_to_abc(abc_to_midi(DUET), settings=Settings(max_midi_bytes=100))


def test_drums_only_midi_has_no_notes_to_convert() -> None:
    song = mido.MidiFile()
    track = mido.MidiTrack([mido.Message("note_on", channel=9, note=36, velocity=90),
                            mido.Message("note_off", channel=9, note=36, time=480)])
    song.tracks.append(track)
    out = io.BytesIO()
    song.save(file=out)
    with pytest.raises(InvalidMidi, match="no notes outside the drum channel"):
        midi_to_abc(out.getvalue())
