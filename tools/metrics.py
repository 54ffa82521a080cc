"""MusPy metrics of a tune, with the words that let the model read them against its own intent.

The metrics are style-dependent: high pitch entropy suits serial music and low suits a catchy folk
tune, so the refine step shows each value with what it measures and what high and low values
suit (`metrics.toml`; `graph.feedback` words it for the model), never with a target. Values
are measured on the tune's MIDI; where a metric has no value (a tune without notes), it is None
and `undefined_reason` says why.
"""

from __future__ import annotations

import io
import logging
import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import mido
import muspy
from pydantic import BaseModel, Field, TypeAdapter, model_validator

from img2music.prompt_files import load_prompt_data
from img2music.settings import Settings
from img2music.tools.abc.check import Backend, compile_abc

logger = logging.getLogger(__name__)

METRIC_KEYS = (
    "pitch_range",
    "n_pitches_used",
    "n_pitch_classes_used",
    "polyphony",
    "scale_consistency",
    "pitch_entropy",
    "pitch_class_entropy",
    "empty_beat_rate",
)
# Counts are 0 for a tune without notes, which is true; every other metric has no value then.
COUNT_KEYS = frozenset({"n_pitches_used", "n_pitch_classes_used"})
NO_NOTES = "no notes"
ONLY_DRUMS = "no pitched notes (drum tracks are not measured)"
SILENT_NOTES = "every note has zero length, so nothing sounds"
# abc2midi delays each further chord note by 10 ticks of 480 per quarter (`%%MIDI chordattack`);
# onsets within a 32nd note of each other that end together are one written chord.
CHORD_ONSET_TOLERANCE_BEATS = 1 / 8
# The ticks a beat tunes are measured at, whichever backend wrote them (music21 writes 10,080):
# 480 keeps every duplet, triplet and quintuplet exact.
METRIC_RESOLUTION = 480
DEFAULT_QPM = 120.0


class MetricInfo(BaseModel):
    """One metric's description from `metrics.toml`."""

    name: str
    unit: str
    measures: str
    high: str
    low: str


_DESCRIPTIONS = TypeAdapter(dict[str, MetricInfo])  # built once: building takes longer than using


class MetricValue(BaseModel):
    """One metric of a tune: a value, or None with the reason it has none."""

    key: str
    name: str
    value: float | None
    undefined_reason: str | None = None

    @model_validator(mode="after")
    def _value_or_reason(self) -> MetricValue:
        if (self.value is None) == (self.undefined_reason is None):
            raise ValueError("a metric has either a value or an undefined_reason")
        return self


class TuneMetrics(BaseModel):
    """The eight MusPy metrics of a tune in report order, then its size."""

    pitch_range: MetricValue
    n_pitches_used: MetricValue
    n_pitch_classes_used: MetricValue
    polyphony: MetricValue
    scale_consistency: MetricValue
    pitch_entropy: MetricValue
    pitch_class_entropy: MetricValue
    empty_beat_rate: MetricValue
    length_seconds: float = Field(description="From the start to the last note's end, drums too.")
    length_beats: float = Field(description="The same length in quarter-note beats.")
    bars: int = Field(description="Bars of the longest voice, from parse-check.")
    voices: int = Field(description="Voices, from parse-check.")
    notes: int = Field(description="Pitched notes measured: chord notes each, repeats as played.")

    def metric_values(self) -> list[MetricValue]:
        """The metrics in report order."""
        return [getattr(self, key) for key in METRIC_KEYS]

    def summary(self) -> str:
        """The metrics in one line, as the CLI and the report show them."""
        return " · ".join(
            f"{m.name} {m.value:.3g}" if m.value is not None else f"{m.name} undefined"
            for m in self.metric_values()
        )

    def as_dict(self) -> dict[str, float | None]:
        """Key to value, metrics then size, for JSON output."""
        values: dict[str, float | None] = {m.key: m.value for m in self.metric_values()}
        values.update(
            length_seconds=self.length_seconds, length_beats=self.length_beats,
            bars=self.bars, voices=self.voices, notes=self.notes,
        )
        return values


def metric_descriptions(folder: Path | str | None = None) -> dict[str, MetricInfo]:
    """The descriptions in `metrics.toml`, checked to cover every metric."""
    infos = _DESCRIPTIONS.validate_python(load_prompt_data("metrics.toml", folder=folder))
    missing = [key for key in METRIC_KEYS if key not in infos]
    if missing:
        raise ValueError(f"metrics.toml has no description of {', '.join(missing)}")
    return infos


def evaluate_abc(
    text: str, *, settings: Settings | None = None, backend: Backend | None = None
) -> TuneMetrics:
    """Compile the first tune of `text` and measure it; a tune with errors cannot be measured."""
    compiled = compile_abc(text, settings=settings, backend=backend)
    if compiled.midi is None:
        errors = compiled.check.errors
        problem = errors[0].one_line() if errors else "the text holds no tune (X: field)"
        raise ValueError(f"the tune cannot be measured: {problem}")
    return evaluate_midi(compiled.midi, bars=compiled.check.bars, voices=compiled.check.voices)


def evaluate_midi(midi: bytes, *, bars: int, voices: int) -> TuneMetrics:
    """Measure a MIDI file; bars and voices come from parse-check, since MIDI has no bars."""
    music = _read_midi(midi)
    if music.resolution > METRIC_RESOLUTION:
        music.adjust_resolution(METRIC_RESOLUTION)
    end = max((note.end for track in music.tracks for note in track.notes), default=0)
    drum_notes = sum(len(track.notes) for track in music.tracks if track.is_drum)
    if drum_notes:
        logger.debug("left out %d drum notes; the metrics measure pitched notes", drum_notes)
    music.tracks = [track for track in music.tracks if not track.is_drum]
    tolerance = round(music.resolution * CHORD_ONSET_TOLERANCE_BEATS)
    for track in music.tracks:
        _align_chord_onsets(track, tolerance)
    notes = sum(len(track.notes) for track in music.tracks)
    empty_reason = ONLY_DRUMS if drum_notes else NO_NOTES
    infos = metric_descriptions()
    values: dict[str, MetricValue] = {}
    for key in METRIC_KEYS:
        why: str | None
        if notes == 0 and key not in COUNT_KEYS:
            value, why = None, empty_reason
        else:
            value = _finite(MEASURES[key](music))
            why = SILENT_NOTES if value is None else None
        values[key] = MetricValue(key=key, name=infos[key].name, value=value, undefined_reason=why)
    return TuneMetrics.model_validate({
        **values,
        "length_seconds": _seconds_at(music, end),
        "length_beats": end / music.resolution,
        "bars": bars,
        "voices": voices,
        "notes": notes,
    })


def empty_beat_rate(music: Any) -> float:
    """MusPy's empty-beat rate, with each note sounding over the half-open span [start, end).

    muspy 0.5 counts a note that ends on a beat as sounding in that beat too, and counts one beat
    past the last note, so `z C z D | z E z F` (half its 8 beats silent) scores 1/9 there, not 0.5.
    """
    resolution: int = music.resolution
    end: int = max((note.end for track in music.tracks for note in track.notes), default=0)
    if end < 1:
        return math.nan
    sounding = {
        beat
        for track in music.tracks
        for note in track.notes
        for beat in range(note.time // resolution, -(-note.end // resolution))
    }
    return 1 - len(sounding) / -(-end // resolution)


def polyphony(music: Any) -> float:
    """MusPy's polyphony (how many pitches sound on average, counted where any sounds), from the
    notes' spans rather than a piano roll.

    muspy fills a roll of every tick by 128 pitches (two million cells for 32 beats at 480
    ticks a beat), half the time evaluation takes; counted from the spans, each pitch's ticks
    (a pitch two notes hold at once counting once, as in the roll) over the ticks where any
    note sounds is the same number.
    """
    spans = [(note.pitch, note.time, note.end) for track in music.tracks if not track.is_drum
             for note in track.notes]
    sounding = _ticks_covered((start, end) for _, start, end in spans)
    if sounding < 1:
        return math.nan
    by_pitch: defaultdict[int, list[tuple[int, int]]] = defaultdict(list)
    for pitch, start, end in spans:
        by_pitch[pitch].append((start, end))
    return sum(_ticks_covered(pitch_spans) for pitch_spans in by_pitch.values()) / sounding


def _ticks_covered(spans: Iterable[tuple[int, int]]) -> int:
    """Ticks inside at least one of the [start, end) spans."""
    covered, reached = 0, None
    for start, end in sorted(spans):
        start = start if reached is None else max(start, reached)
        if end > start:
            covered, reached = covered + end - start, end
    return covered


MEASURES: dict[str, Callable[[Any], float]] = {
    "pitch_range": muspy.pitch_range,
    "n_pitches_used": muspy.n_pitches_used,
    "n_pitch_classes_used": muspy.n_pitch_classes_used,
    "polyphony": polyphony,
    "scale_consistency": muspy.scale_consistency,
    "pitch_entropy": muspy.pitch_entropy,
    "pitch_class_entropy": muspy.pitch_class_entropy,
    "empty_beat_rate": empty_beat_rate,
}


def _read_midi(midi: bytes) -> Any:
    try:
        return muspy.from_mido(mido.MidiFile(file=io.BytesIO(midi)))
    except (OSError, EOFError, ValueError, KeyError, muspy.MIDIError) as error:
        raise ValueError(f"not a readable MIDI file: {error or type(error).__name__}") from error


def _align_chord_onsets(track: Any, tolerance: int) -> None:
    """Start a chord's notes together again, as written.

    abc2midi staggers the notes of a chord (each a few ticks later and shorter, all ending
    together); counted as played, a tune of two-note chords would have polyphony 1.98, not 2.
    """
    by_end: defaultdict[int, list[Any]] = defaultdict(list)
    for note in track.notes:
        by_end[note.end].append(note)
    for group in by_end.values():
        group.sort(key=lambda note: note.time)
        start = group[0].time
        for note in group[1:]:
            if note.time - start > tolerance:
                start = note.time
            else:
                note.duration += note.time - start
                note.time = start


def _finite(value: float) -> float | None:
    """MusPy's NaN as None; + 0.0 turns the -0.0 its entropy gives for a single pitch into 0.0."""
    return None if math.isnan(value) else float(value) + 0.0


def _seconds_at(music: Any, tick: int) -> float:
    """Seconds from the start to `tick` under the MIDI tempo changes (120 qpm before any)."""
    resolution: int = music.resolution
    seconds, position, qpm = 0.0, 0, DEFAULT_QPM
    for tempo in sorted(music.tempos, key=lambda tempo: tempo.time):
        if tempo.time >= tick:
            break
        seconds += (tempo.time - position) / resolution * 60 / qpm
        position, qpm = int(tempo.time), float(tempo.qpm)
    return seconds + (tick - position) / resolution * 60 / qpm
