"""What real language models wrote when asked for ABC, read as it is (never rewritten for a test):
extraction, repair and check, then the whole graph with a model that never fixes anything.

Each reply that holds a tune abc2midi can play must end with that tune, its faults reported;
every other reply ends in one line; and the model is called a bounded number of times.
"""

from __future__ import annotations

import re

import pytest

from img2music.graph.state import fault_count
from img2music.tools.check import compile_abc
from img2music.tools.extract import extract_abc
from img2music.tools.repair import repair_abc
from tests.realworld import llm_replies, written_notes_played
from tests.test_graph import DESCRIPTION, run

# This test's own reading of each reply: a phrase of the tune a musician would take from it (the
# last complete draft, the music once accidentals are written the ABC way), or None when it
# holds no tune a player can play as written.
HOLDS = {
    "00-paper-fig2.txt": "T: Sunset Over the Coast",
    "02-dangandy-upbeat-edm-3voice.txt": "T:Upbeat Classical EDM Mix",
    "04-dangandy-jazzy-mozartian-chords.txt": "T:Jazzy Mozartian Melody",
    "06-dangandy-baroque-inline-voices.txt": "T:Lively Baroque Melody",
    "08-dangandy-melancholic-blues.txt": "T:Melancholic Blues",
    "10-grazia-sunny-day-revised-fenced.txt": "T:Sunny Day Revised",
    "12-grazia-sunny-shiny-forest.txt": "T:Sunny, Shiny, Forest",
    "14-songgpt-magical-journey-violin.txt": "T:Magical Journey",
    "16-imelodist-chinese-prose-inline-header.txt": None,  # a bare K: the key is unknown
    "18-flowphony-placeholder-abc-block.txt": "[V:3] z4 E,,G,,B,,",
    "20-flowphony-tuplets-draft-and-final.txt": "(3:2:2E2G2A2",
    "22-flowphony-7-8-with-4-4-bars-prose.txt": 'V:3 name="Bass"',
    "24-flowphony-nested-markdown-fsharp.txt": "A2 G2 ^F2 G2",
    "26-flowphony-unequal-voice-lengths.txt": "T:Moroccan Majesty",
    "28-claude-choralestep-6voice-midi.txt": "T:Choralestep - Sacred Breaks in D Minor",
    "30-gpt4-jamsesh-json-object-fsharp.txt": '"F#m7"^F4 A4',
    "32-gpt4-jamsesh-truncated-json.txt": '"D"D4 D2 F2|',
    "34-gpt-grazia-self-critique-three-blocks.txt": '"Dmaj"d2 ^E2',
    "36-gpt-grazia-letter-sharps.txt": '"Dmaj"A ^F D A',
    "38-claude37-grazia-japanese-midi-sections.txt": "T: Brightness Journey",
    "40-gpt4o-museleader-blank-lines-in-body.txt": '"G#dim" ^G2 F2',
}
REPLIES = {path.name: path for path in llm_replies()}
MARKUP = re.compile(r'"[^"]*"|![^!]*!|\+[^+]*\+|\[[A-Za-z]:[^\]]*\]|%.*$')
NOTE = re.compile(r"[A-G]b(?![A-Za-z])|[A-Ga-g]")


def written_notes(abc: str) -> int:
    """Note letters in the music lines (a letter flat such as `Bb2` is one note): an independent
    count to show that a repair kept every note."""
    music = [line for line in abc.split("\n")
             if line.strip() and not re.match(r"^[A-Za-z+]:|^%", line)]
    return sum(len(NOTE.findall(MARKUP.sub(" ", line))) for line in music)


def reply(name: str) -> str:
    return REPLIES[name].read_text(encoding="utf-8")


def test_every_reply_in_the_folder_is_read_here() -> None:
    assert set(REPLIES) == set(HOLDS)


@pytest.mark.parametrize("name", sorted(HOLDS))
def test_extraction_repair_and_check_find_the_tune_each_reply_holds(name: str) -> None:
    extraction = extract_abc(reply(name))
    assert extraction.abc is not None, extraction.notes
    repaired = repair_abc(extraction.abc, cut_off=extraction.cut_off)
    check = compile_abc(repaired.abc).check
    phrase = HOLDS[name]
    if phrase is None:
        assert not check.ok
        assert "\n" not in check.summary() and check.summary()
        return
    assert check.ok, check.feedback()
    assert phrase in repaired.abc
    assert written_notes(repaired.abc) == written_notes(extraction.abc), repaired.fixes
    assert written_notes_played(repaired.abc) > 0  # abc2midi itself plays it


@pytest.mark.parametrize("name", sorted(HOLDS))
def test_a_model_that_never_fixes_its_reply_still_ends_with_the_tune(name: str) -> None:
    """The model answers every call of the compose loop with the same reply."""
    state, model, _, _ = run([DESCRIPTION, *[reply(name)] * 8], rag=False)
    assert len(model.calls) <= 4  # describe, compose, one repair, one refinement at most
    phrase = HOLDS[name]
    if phrase is None:
        assert state["status"] == "failed" and state["final_abc"] is None
        assert "\n" not in state["failure"]
        return
    assert state["status"] == "done", state.get("failure")
    final = state["final_abc"]
    assert final is not None and phrase in final
    assert written_notes_played(final) > 0
    best = state["best"]
    assert best is not None
    assert state["fault_count"] == fault_count(state["attempts"][best])
    assert len(state["faults"]) == min(state["fault_count"], 12)


def test_the_papers_own_tune_is_delivered_with_its_faults() -> None:
    """Fig. 2a: every bar of Keye-VL-8B's tune lasts 1½ beats under M:6/4. abc2midi plays it;
    the run delivers it and says what a musician would correct, bar by bar."""
    state, model, _, _ = run([DESCRIPTION, *[reply("00-paper-fig2.txt")] * 8], rag=False)
    assert state["status"] == "done"
    assert state["final_abc"] is not None and "^C3/8 A3/8 F3/8 ^C3/8" in state["final_abc"]
    assert state["fault_count"] >= 28
    assert "bar 2 lasts 3/8 but M:6/4 bars last 12/8" in state["faults"][0]
    kinds = [attempt["kind"] for attempt in state["attempts"]]
    assert kinds == ["compose", "repair", "refine"]  # the same tune back ends each at once
    assert len(model.calls) == 4
    assert "bar 2 lasts 3/8" in model.texts(2)[-1]  # the repair asked for the faults

