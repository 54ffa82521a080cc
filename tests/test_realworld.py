"""Real ABC that abc2midi plays is accepted; damaged copies are caught at the damaged line.

The tunes are Debian's abcmidi and abcm2ps examples (microtones, `M:2`, percussion, inline
fields, `%%MIDI` and text blocks) and every 16th tune of music21's folk corpus, each kept when
abc2midi reads it with no error. Real ABC like this must not be called broken: at least 98% of it
has no error-tier diagnostic (faults, what a musician would correct, are allowed).
"""

from __future__ import annotations

import re

import pytest

from img2music.tools.check import check_abc
from tests.realworld import realworld_tunes

PLAIN_BAR = re.compile(r"(?<![|:\[])\|(?![|:\]\d])")
FREE_METER = re.compile(r"^M:\s*(?:none|\d+)\s*$", re.MULTILINE)
GARBAGE = "Lorem ipsum dolor sit amet, @@@ ### %%% 12345"


def test_real_tunes_that_abc2midi_plays_have_no_errors() -> None:
    tunes = realworld_tunes()
    debian = [tune_id for tune_id, _ in tunes if tune_id.startswith(("abcmidi/", "abcm2ps/"))]
    assert len(debian) >= 40 and len(tunes) - len(debian) >= 600
    rejected = []
    for tune_id, text in tunes:
        result = check_abc(text)
        if not result.ok:
            rejected.append(f"{tune_id}: {result.summary()}")
    accepted = len(tunes) - len(rejected)
    assert accepted >= 0.98 * len(tunes), (
        f"{accepted} of {len(tunes)} accepted\n" + "\n".join(rejected))


def _middle_body_line(text: str) -> int | None:
    """A middle body line with at least two bar lines, 0-based, if the tune has one."""
    lines = text.rstrip("\n").split("\n")
    key = next((i for i, line in enumerate(lines) if line.startswith("K:")), None)
    if key is None:
        return None
    candidates = [
        i for i in range(key + 1, len(lines))
        if lines[i].count("|") >= 2 and not re.match(r"^(%|[A-Za-z]:)", lines[i])
    ]
    return candidates[len(candidates) // 2] if candidates else None


def _damaged(kind: str) -> list[tuple[str, int, str]]:
    """(text, damaged line, tune id) for a spread of the accepted real tunes."""
    damaged = []
    for tune_id, text in realworld_tunes()[::10]:
        index = _middle_body_line(text)
        if index is None or not check_abc(text).ok:
            continue
        lines = text.rstrip("\n").split("\n")
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
            if FREE_METER.search(text) or "&" in line:
                continue
            lines[index] = line[:after] + " c " + line[after:]
        elif kind == "garbage":
            lines.insert(index, GARBAGE)
        elif kind == "binary":
            lines[index] = line[:after] + "\x00\x07\x1b" + line[after:]
        damaged.append(("\n".join(lines) + "\n", index + 1, tune_id))
    return damaged


@pytest.mark.parametrize("kind", ["chord", "garbage", "binary"])
def test_damage_that_stops_playing_is_an_error_at_the_damaged_line(kind: str) -> None:
    damaged = _damaged(kind)
    assert len(damaged) >= 40
    missed = []
    for text, line, tune_id in damaged:
        result = check_abc(text)
        if result.ok or line not in {error.line for error in result.errors}:
            missed.append(f"{tune_id} line {line}: {result.feedback(limit=2) or 'accepted'}")
    assert not missed, "\n".join(missed)


@pytest.mark.parametrize("kind", ["slur", "long bar"])
def test_damage_a_player_plays_through_is_a_fault_at_the_damaged_line(kind: str) -> None:
    damaged = _damaged(kind)
    assert len(damaged) >= 40
    missed = []
    for text, line, tune_id in damaged:
        result = check_abc(text)
        if not result.ok or line not in {fault.line for fault in result.faults}:
            missed.append(f"{tune_id} line {line}: {result.feedback(limit=2)}")
    assert not missed, "\n".join(missed)


def test_a_missing_key_is_an_error() -> None:
    for tune_id, text in realworld_tunes()[::10]:
        keyless = "\n".join(line for line in text.split("\n") if not line.startswith("K:"))
        result = check_abc(keyless)
        assert not result.ok, tune_id
        assert any("no K: (key) field" in error.message for error in result.errors), tune_id
