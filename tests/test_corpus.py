"""Real tunes from music21's corpus, compiled by both backends and counted note by note.

The sample is every 16th tune of the five folk collections that abc2midi, the reference ABC
implementation, reads without an error or a bar-length complaint. How real tunes fare as a whole,
and damaged copies of them, is in test_realworld.py.
"""

from __future__ import annotations

import io
import re
from functools import cache

import mido
import pytest

from img2music.tools.check import Backend, check_abc, compile_abc
from img2music.tools.music21_corpus import CorpusTune
from tests.needs import needs_programs
from tests.oracles import abc2midi_output
from tests.realworld import corpus_sample

pytestmark = needs_programs("abc2midi")

ABC2MIDI_COMPLAINT = re.compile(r"^Error|Bar \d+ has", re.MULTILINE)
ORNAMENTS = re.compile(r"[T~HMPR]|!(?:trill|roll|turn|mordent|fermata)[^!]*!")
REPEATS = re.compile(r":\||\|:|::|\[\d|\|\d")


@cache
def sample() -> list[CorpusTune]:
    return [t for t in corpus_sample()
            if ABC2MIDI_COMPLAINT.search(abc2midi_output(t.text)[0]) is None]


def test_sample_is_large_and_spans_the_collections() -> None:
    tunes = sample()
    assert len(tunes) >= 300
    assert {t.collection for t in tunes} == {
        "essenFolksong", "oneills1850", "ryansMammoth", "airdsAirs", "miscFolk"
    }


@pytest.mark.parametrize("backend", ["abc2midi", "music21"])
def test_every_sampled_tune_passes_and_compiles(backend: Backend) -> None:
    failures = []
    for tune in sample():
        compiled = compile_abc(tune.text, backend=backend)
        if not compiled.check.ok or compiled.midi is None:
            failures.append(f"{tune.id}: {compiled.check.feedback(limit=1)}")
    assert not failures, "\n".join(failures)


def _midi_notes(midi: bytes) -> int:
    song = mido.MidiFile(file=io.BytesIO(midi))
    return sum(1 for track in song.tracks for m in track if m.type == "note_on" and m.velocity)


def _music21_notes(text: str) -> int:
    from music21 import converter

    score = converter.parse(text, format="abc", forceSource=True).stripTies()
    return sum(len(n.pitches) for n in score.recurse().notes)


def test_midi_note_count_matches_music21s_parse() -> None:
    """abc2midi plays repeats twice and realises ornaments, music21 does neither, and music21
    drops the note after some annotations (`">"d`): tunes with those are left out here."""
    compared = mismatches = 0
    details = []
    for tune in sample():
        compiled = compile_abc(tune.text, backend="abc2midi")
        assert compiled.midi is not None
        body = tune.text.split("\nK:", 1)[1].split("\n", 1)[1]
        if REPEATS.search(body) or ORNAMENTS.search(body) or '"' in body:
            continue
        compared += 1
        ours, theirs = _midi_notes(compiled.midi), _music21_notes(tune.text)
        if ours != theirs:
            mismatches += 1
            details.append(f"{tune.id}: MIDI {ours} notes, music21 {theirs}")
    assert compared >= 150
    assert mismatches == 0, "\n".join(details)


def test_written_note_count_matches_music21_for_every_sampled_tune() -> None:
    details = []
    for tune in sample()[::3]:
        ours = check_abc(tune.text, backend="abc2midi").notes
        from music21 import converter

        score = converter.parse(tune.text, format="abc", forceSource=True)
        theirs = sum(len(n.pitches) for n in score.recurse().notes if not n.duration.isGrace)
        if ours != theirs:
            details.append(f"{tune.id}: scan {ours}, music21 {theirs}")
    assert len(details) <= len(sample()[::3]) // 20, "\n".join(details)


def test_five_megabyte_body_is_refused_at_the_line_past_the_limit() -> None:
    tune = sample()[0]
    body = tune.text.split("\nK:", 1)[1].split("\n", 1)[1]
    text = tune.text + body * (5_000_000 // len(body) + 1)
    assert len(text) > 5_000_000
    result = check_abc(text)
    assert not result.ok and len(result.errors) == 1
    error = result.errors[0]
    assert "over the 262,144-byte limit" in error.message
    assert error.line == text.encode()[:262_144].count(b"\n") + 1
