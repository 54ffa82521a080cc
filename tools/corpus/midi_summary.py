"""What a tune's MIDI says that its headers do not: its range, and the note value it moves in."""

from __future__ import annotations

import io
import itertools
from collections import Counter
from collections.abc import Iterator
from fractions import Fraction

import mido

from img2music.tools.abc.convert import DRUM_CHANNEL
from img2music.tools.corpus.vocabulary import (
    DENSITY_BUSY,
    DENSITY_WORDS,
    INTERVALS,
    INTERVALS_ABOVE_OCTAVE,
    NOTE_VALUES,
    OCTAVES,
)

# The share of gaps between onsets one note value needs to be the tune's main value.
MAIN_VALUE_SHARE = 0.4
# Lengths (in quarter notes) of long-short pairs that stand for two equal written notes.
SWUNG_PAIRS = frozenset({Fraction(1, 2), Fraction(1), Fraction(2)})


def midi_summary(midi: bytes) -> tuple[int | None, str]:
    """Pitch range in semitones (None without pitched notes) and the note value most gaps
    between onsets have ("eighth notes"), or "" when no value dominates."""
    song = mido.MidiFile(file=io.BytesIO(midi))
    low, high = 128, -1
    gaps: Counter[Fraction] = Counter()
    for track in song.tracks:
        tick, onsets = 0, list[int]()
        for message in track:
            tick += message.time
            if message.type != "note_on" or message.velocity == 0:
                continue
            if message.channel == DRUM_CHANNEL:
                continue
            low, high = min(low, message.note), max(high, message.note)
            if not onsets or onsets[-1] != tick:
                onsets.append(tick)
        gaps.update(_note_lengths([
            Fraction(later - earlier, song.ticks_per_beat).limit_denominator(48)
            for earlier, later in itertools.pairwise(onsets)
        ]))
    semitones = high - low if high >= 0 else None
    if not gaps:
        return semitones, ""
    gap, count = gaps.most_common(1)[0]
    share = count / sum(gaps.values())
    return semitones, NOTE_VALUES.get(gap, "") if share >= MAIN_VALUE_SHARE else ""


def _note_lengths(gaps: list[Fraction]) -> Iterator[Fraction]:
    """Gaps between onsets, with a 2:1 pair in thirds (abc2midi plays `A>B` and hornpipes that
    way) counted as two notes of its mean length, as written, not as triplets."""
    index = 0
    while index < len(gaps):
        pair = gaps[index:index + 2]
        if (len(pair) == 2 and max(pair) == 2 * min(pair) and pair[0].denominator % 3 == 0
                and pair[0] + pair[1] in SWUNG_PAIRS):
            mean = (pair[0] + pair[1]) / 2
            yield from (mean, mean)
            index += 2
        else:
            yield gaps[index]
            index += 1


def range_words(semitones: int) -> str:
    """A range in words: 7 → "a fifth", 12 → "an octave", 16 → "an octave and a third"."""
    if semitones < 12:
        return INTERVALS[max(semitones, 0)]
    octaves, rest = divmod(semitones, 12)
    whole = OCTAVES[octaves] if octaves < len(OCTAVES) else f"{octaves} octaves"
    return f"{whole} and {INTERVALS_ABOVE_OCTAVE[rest]}" if rest else whole


def density_word(notes_per_beat: float) -> str:
    """Notes per quarter-note beat in one voice, in a word: sparse, measured, flowing, busy."""
    return next((word for limit, word in DENSITY_WORDS if notes_per_beat < limit), DENSITY_BUSY)
