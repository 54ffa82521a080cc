"""A tune written under the grammar that a limit stopped is closed where the grammar can end
it: cut anywhere by the token budget, or over the playing-time limit, it parse-checks without an
error, and what is kept is the music as written, up to where it was closed.

The tunes are real replies (`../shared/reference/llm-outputs/`) that the grammar accepts; the
oracle is parse-check (abc2midi) and mido's reading of the MIDI, not the grammar."""

from __future__ import annotations

import asyncio
import io

import mido
import pytest

from img2music.graph.context import Context
from img2music.graph.models import ModelReply
from img2music.graph.nodes import read_answer
from img2music.settings import Settings
from img2music.tools.abc.check import compile_abc
from img2music.tools.abc.close import close_cut_answer, fit_to_limits
from img2music.tools.abc.extract import extract_abc
from img2music.tools.abc.grammar import matches, tune_grammar
from img2music.tools.abc.repair import repair_abc
from tests.needs import needs_programs
from tests.realworld import llm_replies

CUTS_PER_TUNE = 6


def grammatical_replies() -> list[tuple[str, str]]:
    """(name, tune) of each real reply whose tune, as extraction and repair leave it, the
    grammar accepts: what a model under the grammar could have written."""
    tunes = []
    for path in llm_replies():
        extracted = extract_abc(path.read_text(encoding="utf-8"))
        if extracted.abc is not None:
            tune = repair_abc(extracted.abc).abc
            if matches(tune_grammar(), tune):
                tunes.append((path.name, tune))
    return tunes


def answer_cut_at(tune: str, cut: int) -> str:
    return f"Here is a tune for the picture.\n```abc\n{tune[:cut]}"


@needs_programs("abc2midi")
def test_a_tune_cut_anywhere_in_its_music_is_closed_without_an_error() -> None:
    replies = grammatical_replies()
    assert len(replies) >= 6
    failures = []
    for name, tune in replies:
        # From the end of the first line with a bar line: its music has begun.
        body = tune.index("\n", tune.index("\nK:") + 1) + 1
        start = tune.index("\n", tune.index("|", body)) + 1
        for index in range(CUTS_PER_TUNE):
            cut = start + (len(tune) - start) * index // CUTS_PER_TUNE
            closed = close_cut_answer(tune_grammar(), answer_cut_at(tune, cut))
            if closed is None:
                failures.append(f"{name} cut at {cut}: not closed")
                continue
            kept = closed.abc.rstrip("\n").removesuffix(" :|")
            assert tune[:cut].startswith(kept), (name, cut)
            errors = compile_abc(closed.abc).check.errors
            failures += [f"{name} cut at {cut}: {error.one_line()}" for error in errors]
    assert not failures, "\n".join(failures[:10])


def test_only_a_tune_cut_inside_its_block_is_closed() -> None:
    name, tune = grammatical_replies()[0]
    whole = f"```abc\n{tune}```\nMotivation: calm, as the picture is. And then it was cu"
    assert close_cut_answer(tune_grammar(), whole) is None, name  # the tune was complete
    cut = len(tune) - 5
    closed = close_cut_answer(tune_grammar(), answer_cut_at(tune, cut))
    assert closed is not None and "token limit" in closed.note
    # A thought may mention a fence of its own: the tune is the one after it.
    thought = "<think>I could open with ```abc\nX:1 but first, the mood.</think>\n"
    assert close_cut_answer(tune_grammar(), thought + answer_cut_at(tune, cut)) == closed
    assert close_cut_answer(tune_grammar(), "The tune would go like this, but the b") is None


@pytest.mark.parametrize(("cut", "closed_as"), [
    ("|: DFA d | c", "|: DFA d | c :|\n"),  # the repeat it left open is closed
    ("DFA d | [DF", "DFA d | [DF]\n"),  # and the chord it fell in
    ("DFA d | (3ABc (de", "DFA d | (3ABc (de)\n"),  # and the slur
    ("DFA d | (3AB", "DFA d | \n"),  # a tuplet short of a note is left out
])
def test_a_cut_inside_the_last_bar_keeps_what_can_be_closed(cut: str, closed_as: str) -> None:
    header = "X:1\nM:4/4\nL:1/4\nK:D\n"
    closed = close_cut_answer(tune_grammar(), f"```abc\n{header}{cut}")
    assert closed is not None
    assert closed.abc == header + closed_as


@needs_programs("abc2midi")
def test_a_tune_over_the_playing_time_limit_is_cut_to_fit() -> None:
    line = "CDEF | GABc | cBAG | FEDC |\n"
    tune = "X:1\nT:Long\nM:4/4\nL:1/4\nQ:1/4=60\nK:C\n" + line * 30  # 120 bars of 4 s
    limits = Settings(max_tune_seconds=60)
    checked = compile_abc(tune, settings=limits)
    assert not checked.check.ok
    fitted = fit_to_limits(tune_grammar(), checked, settings=limits)
    assert fitted is not None
    compiled, note = fitted
    assert compiled.check.ok and compiled.midi is not None
    seconds = mido.MidiFile(file=io.BytesIO(compiled.midi)).length
    assert 60 - 16 < seconds <= 60  # as much as fits, to a line's end (a line lasts 16 s)
    assert tune.startswith(compiled.abc.rstrip("\n"))
    assert "over the size limits" in note and "120 bars" in note


@needs_programs("abc2midi")
@pytest.mark.parametrize("tune", [
    "X:1\nM:4/4\nL:1/4\nQ:1/4=60\nK:C\n" + "CDEF | [CEG | GABc |\n" * 30,  # and an error
    "X:1\nM:4/4\nL:1/4\nK:C\nCDEF | GABc |\n",  # within the limits: nothing to cut
])
def test_only_a_tune_over_the_limits_alone_is_cut(tune: str) -> None:
    limits = Settings(max_tune_seconds=60)
    checked = compile_abc(tune, settings=limits)
    assert fit_to_limits(tune_grammar(), checked, settings=limits) is None


@pytest.mark.parametrize(("constrained", "finish"), [(True, "length"), (True, "stop"),
                                                      (False, "length")])
def test_a_compose_or_section_answer_is_closed_only_when_constrained_and_cut(
        constrained: bool, finish: str) -> None:
    """`read_answer`, which the compose node and a section or continuation run read answers
    with: a tune cut inside its first line looks like prose to extraction."""
    tune = "X:1\nT:Cut\nM:4/4\nL:1/8\nK:D\nD2 F2 A2 d2 | B2 A2 d2 f2 |\n"
    answer = answer_cut_at(tune, tune.index("B2 A2 d") + len("B2 A2 d"))
    reply = ModelReply(text=answer, input_tokens=1, output_tokens=1, seconds=0.0,
                       finish_reason=finish, constrained=constrained)
    _, repaired, fixes = asyncio.run(read_answer(reply, Context()))
    closes = constrained and finish == "length"
    assert any(fix.startswith("closed the tune the token limit cut") for fix in fixes) == closes
    if closes:
        assert repaired is not None and repaired.abc.endswith("| B2 A2 d\n")
