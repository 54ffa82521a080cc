"""Metrics checked against values worked out by hand on small tunes, on both ABC backends.

MIDI pitches used below: C=60 D=62 E=64 F=65 G=67 A=69 B=71 c=72; L:1/4 makes each note a
quarter-note beat, and abc2midi and music21 both play at 120 quarter notes a minute by default.
"""

from __future__ import annotations

import io
import json
import math
import re
from pathlib import Path

import mido
import muspy
import pytest
from music21 import corpus
from pydantic import ValidationError

from img2music.graph.feedback import metric_feedback
from img2music.tools.abc.check import Backend, compile_abc
from img2music.tools.metrics import (
    METRIC_KEYS,
    NO_NOTES,
    ONLY_DRUMS,
    SILENT_NOTES,
    MetricValue,
    TuneMetrics,
    evaluate_abc,
    evaluate_midi,
    metric_descriptions,
    polyphony,
)
from tests.needs import needs_programs

needs_abc2midi = needs_programs("abc2midi")
BACKENDS = [pytest.param("abc2midi", marks=needs_abc2midi), "music21"]
HEADER = "X:1\nT:test\nM:4/4\nL:1/4\n"
SCALE = HEADER + "K:C\nC D E F | G A B c |]\n"
TWO_NOTE_CHORDS = HEADER + "K:C\n[CE] [DF] [EG] [FA] |]\n"
OFFBEAT_NOTES = HEADER + "K:C\nz C z D | z E z F |]\n"


def values(metrics: TuneMetrics) -> dict[str, float | None]:
    return {metric.key: metric.value for metric in metrics.metric_values()}


def raw_music(abc: str) -> object:
    """The tune as MusPy reads abc2midi's MIDI, before this module's corrections."""
    midi = compile_abc(abc, backend="abc2midi").midi
    assert midi is not None
    return muspy.from_mido(mido.MidiFile(file=io.BytesIO(midi)))


def midi_file(*tracks: list[tuple[int, int, int, int]], beats: int = 4) -> bytes:
    """A MIDI file of (channel, pitch, start beat, length in beats) notes, one track each list."""
    midi = mido.MidiFile(ticks_per_beat=480)
    conductor = mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=500_000, time=0)])
    conductor.append(mido.MetaMessage("end_of_track", time=beats * 480))
    midi.tracks.append(conductor)
    for notes in tracks:
        events = sorted(
            [(start * 480, "note_on", channel, pitch) for channel, pitch, start, _ in notes]
            + [((start + length) * 480, "note_off", channel, pitch)
               for channel, pitch, start, length in notes],
            key=lambda event: (event[0], event[1] == "note_on"),
        )
        track, now = mido.MidiTrack(), 0
        for tick, kind, channel, pitch in events:
            track.append(mido.Message(kind, channel=channel, note=pitch, velocity=80,
                                      time=tick - now))
            now = tick
        midi.tracks.append(track)
    buffer = io.BytesIO()
    midi.save(file=buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("backend", BACKENDS)
def test_c_major_scale(backend: Backend) -> None:
    metrics = evaluate_abc(SCALE, backend=backend)
    assert values(metrics) == {
        "pitch_range": 12.0,  # c - C = 72 - 60
        "n_pitches_used": 8.0,  # 60 62 64 65 67 69 71 72
        "n_pitch_classes_used": 7.0,  # c is C again
        "polyphony": 1.0,  # one note at a time
        "scale_consistency": 1.0,  # every note is in C major
        "pitch_entropy": 3.0,  # 8 pitches, 1/8 each: -8 · 1/8 · log2(1/8) = 3
        # C twice (1/4), six others once (1/8): 1/4 · 2 + 6 · 1/8 · 3 = 0.5 + 2.25
        "pitch_class_entropy": 2.75,
        "empty_beat_rate": 0.0,  # a note on every beat
    }
    assert metrics.length_beats == 8.0  # eight quarter notes
    assert metrics.length_seconds == 4.0  # at 120 quarter notes a minute
    assert (metrics.bars, metrics.voices, metrics.notes) == (2, 1, 8)
    assert all(metric.undefined_reason is None for metric in metrics.metric_values())


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_note_chords_have_polyphony_two(backend: Backend) -> None:
    metrics = evaluate_abc(TWO_NOTE_CHORDS, backend=backend)
    assert metrics.polyphony.value == 2.0  # two pitches sound whenever anything sounds
    assert metrics.pitch_range.value == 9.0  # A - C = 69 - 60
    assert metrics.n_pitches_used.value == 6.0  # C D E F G A
    # 8 notes: E and F twice (1/4 each), C D G A once (1/8 each): 2 · 1/4 · 2 + 4 · 1/8 · 3
    assert metrics.pitch_entropy.value == 2.5
    assert metrics.notes == 8  # chord notes each counted


@needs_abc2midi
def test_abc2midi_staggers_chord_notes() -> None:
    """Why chord onsets are realigned: abc2midi starts each further chord note 10 ticks late.

    Played as written to MIDI, each chord's first note lasts ticks [1, 480) and its second
    [11, 480); MusPy's polyphony is then (479 + 469) / 479 per chord, not 2.
    """
    assert muspy.polyphony(raw_music(TWO_NOTE_CHORDS)) == pytest.approx(948 / 479)


@pytest.mark.parametrize("tracks", [
    [[(0, 60, 0, 2), (0, 64, 1, 2)]],  # overlapping notes: 1, 2, then 1 pitch
    [[(0, 60, 0, 2)], [(1, 60, 1, 2)]],  # one pitch in two voices at once counts once
    [[(0, 60, 0, 1), (0, 64, 0, 3)], [(1, 67, 5, 1), (1, 71, 5, 1), (1, 74, 6, 2)]],  # a gap
    [[(0, 60, 0, 0)], [(1, 62, 0, 1), (1, 64, 0, 2)]],  # a note of no length among others
    [[(0, 60, 0, 0)]],  # nothing ever sounds: NaN
], ids=["overlap", "unison", "gap", "no-length", "silent"])
def test_polyphony_is_muspys(tracks: list[list[tuple[int, int, int, int]]]) -> None:
    music = muspy.from_mido(mido.MidiFile(file=io.BytesIO(midi_file(*tracks, beats=8))))
    expected = muspy.polyphony(music)
    found = polyphony(music)
    assert found == expected or (math.isnan(found) and math.isnan(expected))


@needs_abc2midi
def test_polyphony_is_muspys_on_staggered_chords_and_real_tunes() -> None:
    duets = corpus.getWork("essenFolksong/altdeu10.abc")
    assert isinstance(duets, Path)
    first = re.findall(r"^X:.*?(?=^X:|\Z)", duets.read_text(encoding="latin-1"),
                       flags=re.DOTALL | re.MULTILINE)[0]
    quartet = (HEADER + "V:1\nK:C\n[CEG]2 [DFA] z | c4 |]\nV:2\nK:C\nC,2 G, C | E4 |]\n")
    for abc in (TWO_NOTE_CHORDS, first, quartet):
        music = raw_music(abc)
        assert polyphony(music) == muspy.polyphony(music)


@pytest.mark.parametrize("backend", BACKENDS)
def test_three_note_chord_then_single_notes(backend: Backend) -> None:
    metrics = evaluate_abc(HEADER + "K:C\n[CEG] C D E |]\n", backend=backend)
    # 3 pitches in beat 1, then 1 in each of beats 2-4: (3 + 1 + 1 + 1) / 4; abc2midi delays
    # the chord's E by 10 ticks and its G by 20, which realignment undoes.
    assert metrics.polyphony.value == 1.5


@pytest.mark.parametrize("backend", BACKENDS)
def test_rests_on_half_the_beats(backend: Backend) -> None:
    metrics = evaluate_abc(OFFBEAT_NOTES, backend=backend)
    assert metrics.empty_beat_rate.value == 0.5  # beats 1, 3, 5 and 7 of 8 are rests
    assert metrics.polyphony.value == 1.0  # counted only where something sounds


@pytest.mark.parametrize("backend", BACKENDS)
def test_trailing_rests_are_not_beats(backend: Backend) -> None:
    metrics = evaluate_abc(HEADER + "K:C\nC z D z | E z F z |]\n", backend=backend)
    # MusPy's song length ends with the last note, F on beat 7: 3 of those 7 beats are rests.
    assert metrics.empty_beat_rate.value == pytest.approx(3 / 7)
    assert metrics.length_beats == 7.0


@needs_abc2midi
def test_muspy_counts_a_beat_too_many() -> None:
    """Why the empty-beat rate is counted here: muspy 0.5 treats note ends as inclusive.

    The off-beat tune's notes lie at ticks [481, 960), [1441, 1920)… (abc2midi's one-tick
    lead-in); MusPy marks beats 1-2, 3-4, 5-6 and 7-8 as sounding out of 3840 // 480 + 1 = 9,
    so it reports 1/9 where half the beats are silent.
    """
    assert muspy.empty_beat_rate(raw_music(OFFBEAT_NOTES)) == pytest.approx(1 / 9)


@pytest.mark.parametrize("backend", BACKENDS)
def test_chromatic_tune_is_less_scale_consistent(backend: Backend) -> None:
    metrics = evaluate_abc(HEADER + "K:C\nC ^C D ^D | E F ^F G |]\n", backend=backend)
    # Pitch classes 0-7, once each. A major scale (W W H W W W H) never holds three semitones
    # in a row; any 8 neighbouring pitch classes hold 5 of its 7 notes (C major: C D E F G),
    # and each natural minor scale has its relative major's notes. Best fit: 5 of 8 notes.
    assert metrics.scale_consistency.value == 0.625
    assert metrics.n_pitch_classes_used.value == 8.0
    assert metrics.pitch_range.value == 7.0  # G - C
    assert metrics.pitch_entropy.value == 3.0  # 8 pitches once each
    assert metrics.pitch_class_entropy.value == 3.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_tempo_sets_seconds(backend: Backend) -> None:
    metrics = evaluate_abc(SCALE.replace("K:C", "Q:1/4=60\nK:C"), backend=backend)
    assert (metrics.length_beats, metrics.length_seconds) == (8.0, 8.0)  # 8 beats at 60 a minute


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_note_tune(backend: Backend) -> None:
    metrics = evaluate_abc(HEADER + "K:C\nC |]\n", backend=backend)
    assert values(metrics) == {
        "pitch_range": 0.0,
        "n_pitches_used": 1.0,
        "n_pitch_classes_used": 1.0,
        "polyphony": 1.0,
        "scale_consistency": 1.0,
        "pitch_entropy": 0.0,  # one outcome of probability 1: -1 · log2(1) = 0
        "pitch_class_entropy": 0.0,
        "empty_beat_rate": 0.0,
    }
    # MusPy computes the entropy as -0.0; shown to the model, that would read "-0".
    assert math.copysign(1.0, metrics.pitch_entropy.value or 0.0) == 1.0
    assert (metrics.length_beats, metrics.length_seconds, metrics.notes) == (1.0, 0.5, 1)


def test_muspy_on_a_tune_without_notes() -> None:
    """What muspy 0.5 does with no notes: counts of 0, pitch range 0 (not NaN), NaN, or raises."""
    music = muspy.from_mido(mido.MidiFile(file=io.BytesIO(midi_file())))
    assert music.tracks == []  # MusPy makes a track only when a note ends
    assert muspy.n_pitches_used(music) == 0
    assert muspy.pitch_range(music) == 0
    for metric in (muspy.scale_consistency, muspy.pitch_entropy, muspy.pitch_class_entropy):
        assert math.isnan(metric(music))
    for metric in (muspy.polyphony, muspy.empty_beat_rate):
        with pytest.raises(ValueError, match="empty"):  # max() of no tracks
            metric(music)


def test_tune_without_notes() -> None:
    metrics = evaluate_midi(midi_file(), bars=1, voices=0)
    assert metrics.n_pitches_used.value == 0.0
    assert metrics.n_pitch_classes_used.value == 0.0
    undefined = [m for m in metrics.metric_values() if m.key not in {
        "n_pitches_used", "n_pitch_classes_used"}]
    assert len(undefined) == 6
    for metric in undefined:
        # A pitch range of 0 (MusPy's answer) would claim one repeated pitch, so it is None too.
        assert metric.value is None
        assert metric.undefined_reason == NO_NOTES
    assert (metrics.notes, metrics.length_beats, metrics.length_seconds) == (0, 0.0, 0.0)
    assert f"undefined: {NO_NOTES}" in metric_feedback(metrics)


def test_notes_without_length() -> None:
    track = mido.MidiTrack([mido.Message("note_on", note=60, velocity=80, time=0),
                            mido.Message("note_off", note=60, velocity=0, time=0)])
    buffer = io.BytesIO()
    mido.MidiFile(tracks=[track]).save(file=buffer)
    metrics = evaluate_midi(buffer.getvalue(), bars=1, voices=1)
    assert metrics.n_pitches_used.value == 1.0  # the pitch is there
    for metric in (metrics.polyphony, metrics.empty_beat_rate):  # but nothing ever sounds
        assert metric.value is None
        assert metric.undefined_reason == SILENT_NOTES


def test_rests_only_abc_is_refused() -> None:
    with pytest.raises(ValueError, match="the tune has no notes"):
        evaluate_abc(HEADER + "K:C\nz4 | z4 |]\n")


def test_drum_tracks_are_left_out() -> None:
    drums = [(9, 36, beat, 1) for beat in range(4)]
    only_drums = evaluate_midi(midi_file(drums), bars=1, voices=1)
    assert only_drums.pitch_entropy.value is None
    assert only_drums.pitch_entropy.undefined_reason == ONLY_DRUMS
    mixed = evaluate_midi(midi_file([(0, 60, 0, 2), (0, 64, 2, 2)], drums), bars=1, voices=2)
    assert mixed.pitch_range.value == 4.0  # E - C; the kick drum's 36 is no pitch
    assert mixed.n_pitches_used.value == 2.0
    assert mixed.notes == 2
    assert mixed.length_beats == 4.0


def test_invalid_abc_names_its_first_error() -> None:
    with pytest.raises(ValueError, match=r"line 6, col 15: a chord opened with"):
        evaluate_abc(HEADER + "K:C\nC D E F | G A [B c |]\n")
    assert evaluate_abc(HEADER + "K:C\nC D E F | G A B c d |]\n").notes == 9  # a long bar plays


def test_invalid_midi() -> None:
    with pytest.raises(ValueError, match="not a readable MIDI file"):
        evaluate_midi(b"not MIDI", bars=1, voices=1)


def test_metric_value_has_a_value_or_a_reason() -> None:
    with pytest.raises(ValidationError):
        MetricValue(key="polyphony", name="Polyphony", value=None)
    with pytest.raises(ValidationError):
        MetricValue(key="polyphony", name="Polyphony", value=1.0, undefined_reason="why")


def test_descriptions_cover_every_metric() -> None:
    descriptions = metric_descriptions()
    assert set(descriptions) == set(METRIC_KEYS)
    assert len({info.name for info in descriptions.values()}) == len(METRIC_KEYS)
    for info in descriptions.values():
        assert all([info.name, info.measures, info.high, info.low])


def test_as_dict_for_json() -> None:
    result = evaluate_abc(SCALE).as_dict()
    assert list(result) == [*METRIC_KEYS, "length_seconds", "length_beats", "bars", "voices",
                            "notes"]
    assert json.loads(json.dumps(result)) == result


def test_feedback_text() -> None:
    text = metric_feedback(evaluate_abc(SCALE))
    for info in metric_descriptions().values():
        assert info.name in text
        assert info.measures in text
    for shown in ("Pitch range: 12 semitones", "Pitches used: 8", "Pitch classes used: 7 of 12",
                  "Polyphony: 1", "Scale consistency: 1", "Pitch entropy: 3 bits",
                  "Pitch-class entropy: 2.75 bits", "Empty-beat rate: 0"):
        assert f"- {shown} — " in text
    assert "Length: 4.0 s (8 quarter-note beats); bars: 2; voices: 1; notes: 8." in text
    assert "they are not targets" in text
    assert "undefined" not in text


def test_folk_song_from_the_corpus() -> None:
    path = corpus.getWork("essenFolksong/altdeu10.abc")
    assert isinstance(path, Path)
    text = path.read_text(encoding="latin-1")
    first = re.findall(r"^X:.*?(?=^X:|\Z)", text, flags=re.DOTALL | re.MULTILINE)[0]
    metrics = evaluate_abc(first)
    found = {key: value for key, value in values(metrics).items() if value is not None}
    assert list(found) == list(METRIC_KEYS)
    assert all(math.isfinite(value) for value in found.values())
    assert 5 <= found["pitch_range"] <= 24  # a sung melody
    assert found["polyphony"] == 1.0  # one unaccompanied line
    assert 0.8 <= found["scale_consistency"] <= 1.0
    pitches, classes = found["n_pitches_used"], found["n_pitch_classes_used"]
    assert classes <= min(pitches, 12)
    # An entropy is at most log2 of the number of outcomes, reached when all are equally likely.
    assert 1.0 < found["pitch_entropy"] <= math.log2(pitches)
    assert 1.0 < found["pitch_class_entropy"] <= math.log2(classes)
    assert 0.0 <= found["empty_beat_rate"] < 0.5
    assert metrics.bars > 10 and metrics.voices == 1 and metrics.notes > 30
    assert metrics.length_seconds > 0 and metrics.length_beats > 0
