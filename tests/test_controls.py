"""Musical controls (length, tempo, key, meter, voices, instruments): read from what people
write, stated in the compose prompt, checked against the tune (a control the tune ignores is a
fault the model is told about), reported, and with the ABC grammar on written into the grammar.

The expected values are written out here, not computed with the code under test; the tunes are
checked by abc2midi, the real program."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from img2music.graph.context import Context
from img2music.graph.graph import build_graph
from img2music.graph.models import answer_constraint
from img2music.graph.state import ControlVerdict
from img2music.pipeline.runs import compose
from img2music.tools.abc.check import check_abc, compile_abc
from img2music.tools.abc.controls import (
    ControlError,
    Verdict,
    grammar_rules,
    instrument_programs,
    judge_tune,
    read_controls,
    read_key,
    read_meter,
)
from img2music.tools.abc.grammar import answer_grammar, matches, tune_grammar
from tests.needs import needs_programs
from tests.scripted import ScriptedChatModel
from tests.test_graph import DESCRIPTION, PHOTO, TUNE, Examples, answer, run

pytestmark = needs_programs("abc2midi")

# TUNE (from test_graph): 8 bars of 4/4 in D major at Q:1/4=72, one voice, no program: 26.7 s.
SIXTEEN_BARS = TUNE.replace("% [close]", "% [theme again]\nD2 F2 A2 d2 | c2 B2 A4 | "
                            "B2 A2 F2 D2 | E8 |\nF2 A2 d2 f2 | e2 d2 c4 | d2 A2 F2 E2 | D8 |\n"
                            "% [close]")
TWO_VOICES = TUNE.replace("K:D\n", "K:D\nV:1\n") + """V:2
D,8 | A,,8 | D,8 | A,,8 |
D,8 | A,,8 | D,4 A,,4 | D,8 |]
"""
QUARTET = """X:1
T:Night Quartet
M:3/4
L:1/8
Q:1/4=72
V:1 name="Violin I"
%%MIDI program 40
V:2 name="Violin II"
%%MIDI program 40
V:3 name="Viola" clef=alto
%%MIDI program 41
V:4 name="Cello" clef=bass
%%MIDI program 42
K:Dm
% [theme]
V:1
A4 F2 | E4 D2 | ^C2 D2 E2 | F6 | A4 d2 | c4 B2 | A2 G2 F2 | E6 |
d4 A2 | B4 G2 | A2 F2 D2 | E6 | F2 G2 A2 | B2 A2 G2 | F4 E2 | D6 |
A4 F2 | E4 D2 | ^C2 D2 E2 | F6 | A4 d2 | c4 B2 | A2 G2 F2 | E6 |
d4 A2 | B4 G2 | A2 F2 D2 | E6 | F2 G2 A2 | B2 A2 G2 | F4 E2 | D6 |]
V:2
F4 D2 | ^C4 D2 | E2 F2 G2 | A6 | F4 F2 | E4 D2 | ^C2 D2 D2 | ^C6 |
F4 F2 | G4 E2 | F2 D2 D2 | ^C6 | D2 E2 F2 | G2 F2 E2 | D4 ^C2 | A,6 |
F4 D2 | ^C4 D2 | E2 F2 G2 | A6 | F4 F2 | E4 D2 | ^C2 D2 D2 | ^C6 |
F4 F2 | G4 E2 | F2 D2 D2 | ^C6 | D2 E2 F2 | G2 F2 E2 | D4 ^C2 | A,6 |]
V:3
D4 A,2 | A,4 A,2 | A,2 A,2 A,2 | D6 | D4 D2 | G,4 G,2 | A,2 A,2 A,2 | A,6 |
A,4 D2 | D4 B,2 | D2 A,2 A,2 | A,6 | A,2 B,2 C2 | D2 C2 B,2 | A,4 G,2 | F,6 |
D4 A,2 | A,4 A,2 | A,2 A,2 A,2 | D6 | D4 D2 | G,4 G,2 | A,2 A,2 A,2 | A,6 |
A,4 D2 | D4 B,2 | D2 A,2 A,2 | A,6 | A,2 B,2 C2 | D2 C2 B,2 | A,4 G,2 | F,6 |]
V:4
D,6 | A,,6 | A,,6 | D,6 | D,6 | G,,6 | A,,6 | A,,6 |
D,6 | G,,6 | D,6 | A,,6 | D,6 | G,,6 | A,,6 | D,6 |
D,6 | A,,6 | A,,6 | D,6 | D,6 | G,,6 | A,,6 | A,,6 |
D,6 | G,,6 | D,6 | A,,6 | D,6 | G,,6 | A,,6 | D,6 |]
"""
DONE_WHEN: dict[str, Any] = {"bars": 32, "key": "D minor", "tempo": 72,
                             "instruments": "string quartet"}


# --- reading what people write ------------------------------------------------------------

@pytest.mark.parametrize(("written", "abc", "name"), [
    ("D minor", "Dm", "D minor"), ("Dm", "Dm", "D minor"), ("d minor", "Dm", "D minor"),
    ("F# dorian", "F#dor", "F# dorian"), ("Bb major", "Bb", "Bb major"), ("Eb", "Eb", "Eb major"),
    ("f sharp minor", "F#m", "F# minor"), ("B flat", "Bb", "Bb major"),
    ("E♭ major", "Eb", "Eb major"),
    ("A aeolian", "Am", "A minor"), ("C ionian", "C", "C major"), ("Gmix", "Gmix", "G mixolydian"),
    ("e Phrygian", "Ephr", "E phrygian"), ("  Dmin ", "Dm", "D minor"),
])
def test_a_key_is_read_as_people_write_it(written: str, abc: str, name: str) -> None:
    key = read_key(written)
    assert (key.abc, key.name) == (abc, name)


@pytest.mark.parametrize(("written", "meter"), [
    ("3/4", "3/4"), ("6/8", "6/8"), (" 4 / 4 ", "4/4"), ("C", "C"), ("C|", "C|"),
    ("2+3/8", "2+3/8"), ("12/8", "12/8"),
])
def test_a_meter_is_read_as_abc_writes_it(written: str, meter: str) -> None:
    assert read_meter(written) == meter


@pytest.mark.parametrize(("written", "voices", "programs"), [
    ("string quartet", None, (40, 40, 41, 42)),
    ("String-Quartet", 4, (40, 40, 41, 42)),
    ("violin, violin, viola, cello", None, (40, 40, 41, 42)),
    ("40,40,41,42", None, (40, 40, 41, 42)),
    ("piano", None, (0, 0)),
    ("piano", 3, (0, 0, 0)),
    ("flute", 2, (73, 73)),
    ("Acoustic Guitar (nylon), fiddle", None, (24, 110)),
    ("folk band", None, (110, 78, 21, 25)),
])
def test_instruments_are_an_ensemble_or_one_program_per_voice(
        written: str, voices: int | None, programs: tuple[int, ...]) -> None:
    assert instrument_programs(written, voices) == programs


def test_an_ensemble_implies_the_voice_count() -> None:
    controls = read_controls(instruments="string quartet")
    assert controls.voices == 4 and controls.programs == (40, 40, 41, 42)
    assert read_controls(tempo=72, meter="6/8").tempo_field() == "3/8=72"
    assert read_controls(tempo=72, meter="C|").tempo_field() == "1/2=72"
    assert read_controls(tempo=72, meter="3/4").tempo_field() == "1/4=72"
    assert read_controls(tempo=72).tempo_field() == "1/4=72"
    assert read_controls(bars=32).bar_range() == (29, 35)
    assert read_controls(bars=4).bar_range() == (3, 5)


@pytest.mark.parametrize(("given", "field", "words"), [
    ({"key": "H# major"}, "key", "is not a key"),
    ({"key": "D blues"}, "key", "is not a key"),
    ({"meter": "7/0"}, "meter", "note value"),
    ({"meter": "waltz"}, "meter", "is not a meter"),
    ({"meter": "13/8"}, "meter", "13 beats"),
    ({"tempo": 500}, "tempo", "outside 40 to 239"),
    ({"bars": 0}, "bars", "outside 1 to 256"),
    ({"voices": 9}, "voices", "outside 1 to 8"),
    ({"voices": 2, "instruments": "string quartet"}, "instruments", "voices is 2"),
    ({"instruments": "kazoo"}, "instruments", "neither an ensemble"),
    ({"instruments": "violin, 128"}, "instruments", "outside General MIDI's 0-127"),
])
def test_a_control_that_cannot_be_read_is_refused_in_one_line_naming_it(
        given: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(ControlError) as refused:
        Context(**given)
    message = str(refused.value)
    assert message.startswith(f"{field}: ") and words in message and "\n" not in message


def test_the_controls_are_optional_fields_of_the_music_group() -> None:
    properties = (build_graph().get_context_jsonschema() or {})["properties"]
    for name in ("bars", "seconds", "tempo", "key", "meter", "voices", "instruments"):
        assert Context.__dataclass_fields__[name].default is None
        assert properties[name]["group"] == "music" and properties[name]["description"]
    assert {"type": "integer", "minimum": 40, "maximum": 239} in properties["tempo"]["anyOf"]
    assert Context().controls().asked is False


def test_the_verdicts_json_shape_is_the_toolkits_model() -> None:
    assert set(ControlVerdict.__annotations__) == set(Verdict.model_fields)


# --- through the graph --------------------------------------------------------------------

# Each control: what the run sets, what the compose prompt then says, a tune that honours it,
# and the words of the fault for TUNE, which ignores it.
CONTROLS = [
    pytest.param({"tempo": 96}, "Tempo: 96 beats a minute: Q:1/4=96",
                 TUNE.replace("Q:1/4=72", "Q:1/4=96"), "(tempo): Q:1/4=72 is 72 beats", id="tempo"),
    pytest.param({"key": "b minor"}, "Key: B minor: K:Bm", TUNE.replace("K:D", "K:Bm"),
                 "(key): the tune is in D major; B minor was asked", id="key"),
    pytest.param({"meter": "C|"}, "Meter: M:C|", TUNE.replace("M:4/4", "M:2/2"),
                 "(meter): the tune is in 4/4; C| was asked", id="meter"),
    pytest.param({"bars": 16}, "Length: 16 bars.", SIXTEEN_BARS,
                 "(bars): the tune has 8 bars; 16 were asked (14 to 18 pass)", id="bars"),
    pytest.param({"seconds": 14}, "Length: 14 seconds when played",
                 TUNE.replace("Q:1/4=72", "Q:1/4=144"),
                 "(seconds): the tune plays for 27 s; 14 s were asked (12 to 16 s pass)",
                 id="seconds"),
    pytest.param({"voices": 2}, "Voices: 2 (V:1 to V:2, each with its own music)", TWO_VOICES,
                 "(voices): the tune has 1 voice with music; 2 were asked", id="voices"),
    pytest.param({"instruments": "violin"}, "V:1 Violin: %%MIDI program 40",
                 TUNE.replace("K:D\n", "K:D\n%%MIDI program 40\n"),
                 "(instruments): V:1 plays Acoustic Grand Piano (0), not Violin (40)",
                 id="instruments"),
]


@pytest.mark.parametrize(("context", "prompt", "honouring", "fault"), CONTROLS)
def test_a_control_is_asked_for_checked_fed_back_and_honoured(
        context: dict[str, Any], prompt: str, honouring: str, fault: str) -> None:
    state, model, _, _ = run([DESCRIPTION, answer(TUNE), answer(honouring)], refine=False,
                             **context)
    compose_prompt = model.texts(1)[1]
    assert prompt in compose_prompt
    assert compose_prompt.index("Example 1") < compose_prompt.index(prompt)  # after the examples
    first, second = state["attempts"]
    assert first["valid"]  # the tune that ignores the control still plays
    faults = [f["message"] for f in first["check"]["faults"]]  # type: ignore[index]
    assert any(fault in message for message in faults), faults
    assert [v["control"] for v in first["controls"] if not v["honoured"]] == list(context)
    repair_prompt = model.texts(2)[-1]
    assert "Your tune plays, but the ABC checker found" in repair_prompt and fault in repair_prompt
    assert state["final_abc"] == honouring and second["valid"]
    assert state["fault_count"] == 0, state["faults"]
    assert state["controls"] and all(verdict["honoured"] for verdict in state["controls"])


def test_a_run_without_controls_prompts_and_checks_as_before() -> None:
    state, model, _, _ = run([DESCRIPTION, answer(TUNE)], refine=False)
    assert "The listener set these" not in model.texts(1)[1]
    assert state["controls"] == [] and state["fault_count"] == 0


def test_a_control_still_ignored_is_named_in_the_refine_feedback() -> None:
    state, model, _, _ = run([DESCRIPTION, answer(TUNE), answer(TUNE.replace("Q:1/4=72",
                                                                          "Q:1/4=96"))],
                             max_repairs=0, refine_rounds=1, tempo=96)
    refine_prompt = model.texts(2)[-1]
    assert "Metrics of your tune" in refine_prompt
    assert "It does not yet keep to what the listener set" in refine_prompt
    assert "- tempo: Q:1/4=72 is 72 beats of 1/4 a minute; 96 were asked: write Q:1/4=96" in (
        refine_prompt)
    assert state["final_abc"].startswith(TUNE.split("Q:")[0])  # type: ignore[union-attr]
    assert state["controls"] == [{**state["controls"][0], "honoured": True}]


def test_a_32_bar_string_quartet_in_d_minor_at_72_bpm() -> None:
    """The issue's example, honoured by a real four-voice tune that abc2midi plays."""
    state, model, _, _ = run([DESCRIPTION, answer(QUARTET)], refine=False, **DONE_WHEN)
    prompt = model.texts(1)[1]
    for line in ("Length: 32 bars in each voice.", "Tempo: 72 beats a minute: Q:1/4=72",
                 "Key: D minor: K:Dm", "Voices: 4", "V:2 Violin: %%MIDI program 40",
                 "V:3 Viola: %%MIDI program 41", "V:4 Cello: %%MIDI program 42"):
        assert line in prompt
    assert state["status"] == "done" and state["final_abc"] == QUARTET
    assert state["fault_count"] == 0, state["faults"]
    assert {v["control"]: (v["asked"], v["found"], v["honoured"]) for v in state["controls"]} == {
        "tempo": ("72 BPM", "72 BPM", True),
        "key": ("D minor", "D minor", True),
        "voices": ("4", "4", True),
        "instruments": ("Violin (40), Violin (40), Viola (41), Cello (42)",
                        "Violin (40), Violin (40), Viola (41), Cello (42)", True),
        "bars": ("32", "32", True),
    }
    assert compile_abc(QUARTET).check.backend == "abc2midi"


def test_a_quartet_with_a_wrong_instrument_and_a_short_length_gets_both_faults() -> None:
    wrong = QUARTET.replace("%%MIDI program 41", "%%MIDI program 0")
    state, _, _, _ = run([DESCRIPTION, answer(wrong), answer(wrong)], refine=False, max_repairs=1,
                         **{**DONE_WHEN, "bars": 48})
    assert state["final_abc"] == wrong and state["fault_count"] == 2
    assert any("V:3 plays Acoustic Grand Piano (0), not Viola (41)" in f for f in state["faults"])
    assert any("the tune has 32 bars; 48 were asked (43 to 53 pass)" in f
               for f in state["faults"])


def test_tempo_counts_the_beat_of_the_meter() -> None:
    """72 in 6/8 is 72 dotted quarters a minute: Q:3/8=72, or the same speed as Q:1/4=108."""
    jig = TUNE.replace("M:4/4", "M:6/8").replace("Q:1/4=72", "Q:3/8=72").replace(
        "D2 F2 A2 d2 | c2 B2 A4 | B2 A2 F2 D2 | E8 |", "D2F A2d | c2B A3 | B2A F2D | E6 |").replace(
        "F2 A2 d2 f2 | e2 d2 c4 | d2 A2 F2 E2 | D8 |]", "F2A d2f | e2d c3 | d2A F2E | D6 |]")
    tune = compile_abc(jig).tune
    assert tune is not None
    for bpm, honoured in ((72, True), (73, True), (108, False), (80, False)):
        (verdict,) = judge_tune(read_controls(tempo=bpm), tune)
        assert verdict.honoured is honoured, (bpm, verdict)
    as_quarters = compile_abc(jig.replace("Q:3/8=72", "Q:1/4=108")).tune
    assert as_quarters is not None
    meter, tempo = judge_tune(read_controls(tempo=72, meter="6/8"), as_quarters)
    assert meter.honoured and tempo.honoured and tempo.found == "72 BPM"


@pytest.mark.parametrize(("found", "honoured"), [
    ("K:C#", True), ("K:Db", True), ("K:Dbmaj", True), ("K:Db ionian", True),
    ("K:Bbm", False), ("K:D", False), ("K:Db clef=bass", True), ("K:Dbmix", False),
])
def test_enharmonic_keys_and_mode_synonyms_are_the_same_key(found: str, honoured: bool) -> None:
    tune = compile_abc(TUNE.replace("K:D", found)).tune
    assert tune is not None
    (verdict,) = judge_tune(read_controls(key="Db major"), tune)
    assert verdict.honoured is honoured


# --- the grammar --------------------------------------------------------------------------

def test_with_the_grammar_a_run_fixes_its_header_values_by_construction() -> None:
    rules = grammar_rules(read_controls(meter="3/4", **DONE_WHEN))
    grammar = tune_grammar(rules)
    assert matches(grammar, QUARTET)
    for right, wrong in (("Q:1/4=72", "Q:1/4=80"), ("Q:1/4=72", "Q:3/8=72"), ("K:Dm", "K:D"),
                         ("K:Dm", "K:Am"), ("M:3/4", "M:6/8"), ("Q:1/4=72\n", ""),
                         ("M:3/4\n", ""), ("%%MIDI program 41", "%%MIDI program 0"),
                         ("V:4 name", "V:5 name")):
        assert right in QUARTET
        assert not matches(grammar, QUARTET.replace(right, wrong)), wrong
    assert matches(answer_grammar(rules), answer(QUARTET))
    assert not matches(answer_grammar(rules), answer(QUARTET.replace("K:Dm", "K:F")))
    # Without a meter asked, the tempo's number is fixed and its beat left to the tune.
    tempo_only = tune_grammar(grammar_rules(read_controls(tempo=72)))
    assert matches(tempo_only, QUARTET) and matches(tempo_only, QUARTET.replace("1/4=72", "3/8=72"))
    assert not matches(tempo_only, QUARTET.replace("1/4=72", "1/4=73"))


def test_the_grammar_sent_for_a_run_carries_its_controls() -> None:
    model = ScriptedChatModel(replies=[])
    plain = answer_constraint(Context(vlm_grammar="on"), model, backend="local")
    asked = answer_constraint(Context(vlm_grammar="on", key="D minor", tempo=72, meter="3/4"),
                              model, backend="local")
    assert plain is not None and asked is not None
    assert 'key ::= "Dm"' in asked.grammar and 'key ::= "Dm"' not in plain.grammar
    assert matches(asked.grammar, answer(QUARTET))
    assert not matches(asked.grammar, answer(TUNE))  # D major, 4/4


# --- the Python API and the report -----------------------------------------------------------

def test_python_asks_for_the_quartet_and_the_report_says_what_was_honoured(
        tmp_path: Path) -> None:
    model = ScriptedChatModel(replies=[DESCRIPTION, answer(QUARTET)])
    result = compose(PHOTO, out_dir=tmp_path, model_for=lambda _: model,
                     retriever_for=lambda _: Examples(), rag=False, refine=False,
                     explain="none", **DONE_WHEN)
    assert result.ok, result.error
    report = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    assert {name: report["settings"][name] for name in DONE_WHEN} == DONE_WHEN
    assert [(v["control"], v["honoured"]) for v in report["controls"]] == [
        ("tempo", True), ("key", True), ("voices", True), ("instruments", True), ("bars", True)]
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "<h2>What was asked</h2>" in html
    assert "<td>key</td><td>D minor</td><td>D minor</td><td>yes</td>" in html
    with pytest.raises(ControlError, match=r"^key: 'H# major' is not a key"):
        compose(PHOTO, out_dir=tmp_path / "bad", model_for=lambda _: model, key="H# major")
    assert not (tmp_path / "bad").exists()


def test_a_meter_of_zero_note_values_in_a_tune_is_an_error_not_a_crash() -> None:
    """The same refusal as the meter control's, for a tune: M:7/0 names no note value."""
    for meter in ("M:7/0", "[M:7/0]"):
        tune = "X:1\nT:t\nM:4/4\nL:1/8\nK:C\nCDEF GABc|\n"
        tune = tune.replace("M:4/4", meter) if meter.startswith("M") else tune.replace(
            "GABc|", f"GABc| {meter} CDEF|")
        check = check_abc(tune)
        assert not check.ok
        assert any("M:7/0 is not a meter" in error.message for error in check.errors), check
