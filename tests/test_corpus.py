"""Real tunes from music21's corpus: accepted when sound, rejected at the damage when mutated.

The sample is every 16th tune of the five folk collections that abc2midi, the reference ABC
implementation, reads without an error or a bar-length complaint, and whose slurs balance (abc2midi
ignores slurs; a few transcriptions leave one open, which our check rightly rejects).
"""

from __future__ import annotations

import io
import re
from functools import cache

import mido
import pytest

from img2music.tools.check import Backend, check_abc, compile_abc
from img2music.tools.music21_corpus import CorpusTune, iter_corpus_tunes
from tests.needs import needs_programs
from tests.oracles import abc2midi_output

pytestmark = needs_programs("abc2midi")

STRIDE = 16
ABC2MIDI_COMPLAINT = re.compile(r"^Error|Bar \d+ has", re.MULTILINE)
SLUR_OPEN = re.compile(r"\((?!\d)")
ORNAMENTS = re.compile(r"[T~HMPR]|!(?:trill|roll|turn|mordent|fermata)[^!]*!")
PLAIN_BAR = re.compile(r"(?<![|:\[])\|(?![|:\]\d])")
FREE_METER = re.compile(r"^M:\s*none", re.MULTILINE)
REPEATS = re.compile(r":\||\|:|::|\[\d|\|\d")


def _abc2midi_accepts(tune: CorpusTune) -> bool:
    printed, _ = abc2midi_output(tune.text)
    return ABC2MIDI_COMPLAINT.search(printed) is None


def _slurs_balance(tune: CorpusTune) -> bool:
    body = re.sub(r'"[^"]*"|![^!]*!|^%.*$|^[A-Za-z]:.*$', "", tune.text, flags=re.MULTILINE)
    return len(SLUR_OPEN.findall(body)) == body.count(")")


@cache
def sample() -> list[CorpusTune]:
    every_nth = [t for i, t in enumerate(iter_corpus_tunes()) if i % STRIDE == 0]
    return [t for t in every_nth if _abc2midi_accepts(t) and _slurs_balance(t)]


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


def _middle_body_line(tune: CorpusTune) -> int | None:
    """A middle body line with at least two bar lines, 0-based, if the tune has one."""
    lines = tune.text.rstrip("\n").split("\n")
    key = next(i for i, line in enumerate(lines) if line.startswith("K:"))
    candidates = [
        i for i in range(key + 1, len(lines))
        if lines[i].count("|") >= 2 and not re.match(r"^(%|[A-Za-z]:)", lines[i])
    ]
    return candidates[len(candidates) // 2] if candidates else None


def _mutants(kind: str) -> list[tuple[str, int, str]]:
    mutants = []
    for tune in sample()[::12]:
        index = _middle_body_line(tune)
        if index is None:
            continue
        lines = tune.text.rstrip("\n").split("\n")
        line = lines[index]
        plain_bars = [m.end() for m in PLAIN_BAR.finditer(line)][:-1]
        if not plain_bars:
            continue
        after = plain_bars[len(plain_bars) // 2]
        if kind == "chord":
            lines[index] = line[:after] + " [" + line[after:].lstrip(" :|")
        elif kind == "slur":
            lines[index] = line[:after] + " (" + line[after:].lstrip(" :|")
        elif kind == "long bar":
            if FREE_METER.search(tune.text):
                continue
            lines[index] = line[:after] + " c " + line[after:]
        elif kind == "garbage":
            lines.insert(index, "Lorem ipsum dolor sit amet, @@@ ### %%% 12345")
        elif kind == "binary":
            lines[index] = line[:after] + "\x00\x07\x1b" + line[after:]
        mutants.append(("\n".join(lines) + "\n", index + 1, tune.id))
    return mutants


@pytest.mark.parametrize("kind", ["chord", "slur", "long bar", "garbage", "binary"])
def test_mutated_tunes_are_rejected_at_the_damaged_line(kind: str) -> None:
    mutants = _mutants(kind)
    assert len(mutants) >= 25
    missed = []
    for text, line, tune_id in mutants:
        result = check_abc(text)
        if result.ok or line not in {error.line for error in result.errors}:
            missed.append(f"{tune_id} line {line}: {result.feedback(limit=2) or 'accepted'}")
    assert not missed, "\n".join(missed)


def test_missing_key_is_rejected() -> None:
    for tune in sample()[::12]:
        text = "\n".join(line for line in tune.text.split("\n") if not line.startswith("K:"))
        result = check_abc(text)
        assert not result.ok
        assert any("no K: (key) field" in error.message for error in result.errors), tune.id


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
