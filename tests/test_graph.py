"""The composing graph end to end with scripted model answers, and its routers on their own."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any, cast

import pytest
from langchain_core.runnables import RunnableConfig
from langgraph.runtime import Runtime
from matplotlib import cbook

from img2music.graph import nodes
from img2music.graph.context import Context
from img2music.graph.graph import build_graph
from img2music.graph.nodes import next_attempt
from img2music.graph.routing import after_describe, after_evaluate, after_parse_check
from img2music.graph.state import (
    Attempt,
    AttemptKind,
    Check,
    DiagnosticJSON,
    Example,
    Input,
    MetricJSON,
    Metrics,
    State,
    fault_count,
)
from img2music.prompt_files import prompt_set
from img2music.tools.abc.check import CompiledAbc, ParseCheck, check_abc, compile_abc
from img2music.tools.abc.diagnostics import Diagnostic
from img2music.tools.abc.extract import strip_reasoning
from img2music.tools.corpus.music21_corpus import iter_corpus_tunes
from img2music.tools.images import image_data_url, open_image
from img2music.tools.metrics import MetricValue, TuneMetrics
from img2music.tools.retrieval.retriever import RetrievedExample
from tests.openai_server import last_user_text
from tests.scripted import ScriptedChatModel

PHOTO = Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
DESCRIPTION = ("<think>Portrait, uniform.</think>A formal portrait of an officer in dark uniform "
               "before a flag; calm, dignified, warm indoor light.")
TUNE = """X:1
T:Dignity
M:4/4
L:1/8
Q:1/4=72
K:D
% [theme]
D2 F2 A2 d2 | c2 B2 A4 | B2 A2 F2 D2 | E8 |
% [close]
F2 A2 d2 f2 | e2 d2 c4 | d2 A2 F2 E2 | D8 |]
"""
FAULTY = TUNE.replace("c2 B2 A4 |", "c2 B2 A4 B2 |")  # plays, but bar 2 is too long
FAULTIER = FAULTY.replace("d2 A2 F2 E2 |", "d2 A2 F2 E2 F2 |")  # two bars too long
BROKEN = TUNE.replace("B2 A2 F2 D2 |", "B2 A2 [F2 D2 |")  # an unclosed chord: not playable
REFINED = TUNE.replace("T:Dignity", "T:Dignity, refined").replace("D8 |]", "D6 z2 |]")


def reply_for(body: dict[str, Any]) -> str:
    """A scripted VLM server's answers to the graph: a description, a tune, then a refined one."""
    text = last_user_text(body)
    if "Describe this image" in text:
        return DESCRIPTION
    return answer(REFINED) if "Metrics of your tune" in text else answer(TUNE)


def answer(tune: str, *, think: bool = False) -> str:
    reasoning = "<think>The uniform suggests a march; D major, steady.</think>\n" if think else ""
    return (f"{reasoning}Here is the piece.\n\n```abc\n{tune}```\n\nMotivation: A steady "
            "hymn-like line in D major mirrors the calm dignity of the portrait.")


class Examples:
    """Two real corpus tunes as the retriever's answer; retrieval itself is tested elsewhere."""

    def __init__(self) -> None:
        tunes = [t for _, t in zip(range(2), iter_corpus_tunes(("oneills1850",)), strict=False)]
        self.examples = [
            RetrievedExample(id=t.id, caption=f"An Irish air, number {i}.", abc=t.text,
                             score=0.5, image_similarity=0.2, text_similarity=0.6)
            for i, t in enumerate(tunes)
        ]
        self.queries: list[dict[str, Any]] = []

    def retrieve(self, **query: Any) -> list[RetrievedExample]:
        self.queries.append(query)
        return self.examples[: query["k"]]


def run(replies: list[str], *, examples: Examples | None = None,
        **context: Any) -> tuple[State, ScriptedChatModel, list[str], Examples]:
    """Run the graph on a real photo; returns the final state, the model, the node order."""
    model = ScriptedChatModel(replies=replies)
    examples = examples or Examples()
    graph = build_graph(model_for=lambda _: model, retriever_for=lambda _: examples)
    state: Input = {"image": image_data_url(open_image(PHOTO), max_pixels=128 * 128),
                    "note": "something solemn"}
    order: list[str] = []
    final: State = {}

    async def stream() -> None:
        nonlocal final
        async for mode, chunk in graph.astream(state, context=Context(explain="none", **context),
                                               stream_mode=["updates", "values"]):
            if mode == "updates":
                order.extend(chunk)
            else:
                final = cast(State, chunk)

    asyncio.run(stream())
    return final, model, order, examples


def test_a_valid_tune_is_refined_once_and_explained() -> None:
    state, _, order, examples = run(
        [DESCRIPTION, answer(TUNE, think=True), answer(REFINED)], refine_rounds=1)
    assert order == ["describe", "retrieve", "compose", "parse_check", "evaluate", "compose",
                     "parse_check", "evaluate", "explain"]
    assert state["status"] == "done"
    assert state["final_abc"] == REFINED
    assert state["description"].startswith("A formal portrait")
    assert examples.queries[0]["description"] == state["description"]
    assert [a["kind"] for a in state["attempts"]] == ["compose", "refine"]
    assert all(a["metrics"] for a in state["attempts"])
    assert "steady hymn-like line" in state["motivation"]
    assert state["usage"]["compose"]["calls"] == 2 and state["usage"]["describe"]["calls"] == 1


def test_the_conversation_grows_and_its_prefix_never_changes() -> None:
    _, model, _, _ = run([DESCRIPTION, answer(TUNE, think=True), answer(REFINED)],
                         refine_rounds=1)
    first, second = model.calls[1], model.calls[2]
    assert second[: len(first)] == first  # the prefix cache can serve the whole first turn
    assert len(second) == len(first) + 2  # the model's answer, then the feedback
    refine_prompt = model.texts(2)[-1]
    assert "Metrics of your tune" in refine_prompt and "Pitch range" in refine_prompt
    assert "<think>" not in model.texts(2)[-2]  # reasoning is not sent back
    compose_prompt = model.texts(1)[1]
    assert "An Irish air, number 0." in compose_prompt and "something solemn" in compose_prompt
    assert model.texts(1)[1].count("X:") >= 2  # the examples' ABC is in the prompt


def test_a_prompt_edited_in_studio_replaces_its_file_for_that_run() -> None:
    edited = "Write a lullaby for {{ description }} ({{ examples | length }} examples)."
    _, model, _, _ = run([DESCRIPTION, answer(TUNE), answer(REFINED)], refine_rounds=1,
                         compose_prompt=edited, refine_prompt="Round {{ round }}: {{ feedback }}")
    assert model.texts(1)[1].strip() == ("Write a lullaby for " + strip_reasoning(DESCRIPTION)
                                 + " (2 examples).")
    assert model.texts(2)[-1].startswith("Round 1: ") and "Pitch range" in model.texts(2)[-1]
    assert "Describe this image" in model.texts(0)[1]  # the describe prompt was not edited
    shipped = prompt_set()
    edited_set = prompt_set(edits={"compose.j2": edited})
    assert edited_set.name == "default+edited" and edited_set.hash != shipped.hash
    schema = (build_graph().get_context_jsonschema() or {})["properties"]
    assert schema["compose_prompt"]["langgraph_type"] == "prompt"
    assert schema["compose_prompt"]["langgraph_nodes"] == ["compose"]


def test_a_tune_with_a_fault_is_repaired_with_the_fault_shown() -> None:
    state, model, order, _ = run([DESCRIPTION, answer(FAULTY), answer(TUNE)], refine=False)
    assert order == ["describe", "retrieve", "compose", "parse_check", "compose", "parse_check",
                     "evaluate", "explain"]
    repair_prompt = model.texts(2)[-1]
    assert "Your tune plays, but the ABC checker found what a musician would correct" in (
        repair_prompt)
    assert "bar 2 lasts 10/8 but M:4/4 bars last 8/8 (2/8 too long)" in repair_prompt
    assert "c2 B2 A4 B2" in repair_prompt  # the offending line
    assert "X:1" not in repair_prompt  # the tune itself is already in the conversation
    assert state["final_abc"] == TUNE
    assert [a["valid"] for a in state["attempts"]] == [True, True]
    assert state["faults"] == [] and state["fault_count"] == 0


def test_a_broken_tune_is_repaired_with_the_errors_shown() -> None:
    state, model, order, _ = run([DESCRIPTION, answer(BROKEN), answer(TUNE)], refine=False)
    assert order == ["describe", "retrieve", "compose", "parse_check", "compose", "parse_check",
                     "evaluate", "explain"]
    repair_prompt = model.texts(2)[-1]
    assert "cannot play your tune as you meant it" in repair_prompt
    assert "a chord opened with [ is not closed" in repair_prompt
    assert "B2 A2 [F2 D2" in repair_prompt
    assert state["final_abc"] == TUNE
    assert [a["valid"] for a in state["attempts"]] == [False, True]


def test_a_repair_that_returns_the_same_tune_ends_the_repairs_at_once() -> None:
    """The model hands back what it wrote: asking again would pay for a known answer. The tune
    plays, so it is delivered with its fault reported."""
    state, model, order, _ = run([DESCRIPTION, answer(FAULTY), answer(FAULTY)], refine=False,
                                 max_repairs=3)
    assert order == ["describe", "retrieve", "compose", "parse_check", "compose", "parse_check",
                     "evaluate", "explain"]
    assert len(model.calls) == 3
    assert state["status"] == "done" and state["final_abc"] == FAULTY
    assert state["best"] == 0  # the same tune again does not replace it
    assert state["fault_count"] == 1
    assert "bar 2 lasts 10/8 but M:4/4 bars last 8/8" in state["faults"][0]


def test_the_run_ends_on_the_playable_tune_with_fewest_faults() -> None:
    state, model, _, _ = run(
        [DESCRIPTION, answer(FAULTIER), answer(BROKEN), answer(FAULTY), answer(FAULTIER)],
        refine=False, max_repairs=3)
    assert [a["valid"] for a in state["attempts"]] == [True, False, True, True]
    assert [fault_count(a) for a in state["attempts"] if a["valid"]] == [2, 1, 2]
    assert state["best"] == 2 and state["final_abc"] == FAULTY
    assert state["attempts"][2]["metrics"] and not state["attempts"][0]["metrics"]
    assert len(model.calls) == 5


def test_among_playable_tunes_with_equal_faults_the_latest_stands() -> None:
    other = FAULTY.replace("T:Dignity", "T:Dignity again")
    state, _, _, _ = run([DESCRIPTION, answer(FAULTY), answer(other)], refine=False,
                         max_repairs=1)
    assert state["best"] == 1 and state["final_abc"] == other


def test_no_tune_at_all_stops_at_the_repair_limit_and_fails_clearly() -> None:
    prose = "I would write a slow march in D major, with a solemn theme."
    state, model, order, _ = run([DESCRIPTION, prose, prose, prose], max_repairs=2)
    assert order.count("compose") == 3
    assert order[-1] == "finish"
    assert state["status"] == "failed"
    assert "no valid tune within the limits" in state["failure"]
    assert "no ABC tune" in state["failure"]
    assert "\n" not in state["failure"]
    assert state["final_abc"] is None
    assert len(model.calls) == 4


@pytest.mark.parametrize("refined", [BROKEN, FAULTY])
def test_a_refinement_that_is_not_better_keeps_the_tune_it_had(refined: str) -> None:
    """A refined tune replaces the current one only with no errors and no more faults."""
    state, _, order, _ = run([DESCRIPTION, answer(TUNE), answer(refined)], max_repairs=0,
                             refine_rounds=1)
    assert order[-3:] == ["compose", "parse_check", "explain"]
    assert state["status"] == "done"
    assert state["final_abc"] == TUNE
    assert state["best"] == 0


def test_a_refinement_after_a_failed_repair_shows_the_tune_that_stands() -> None:
    state, model, order, _ = run(
        [DESCRIPTION, answer(FAULTY), answer(BROKEN), answer(REFINED)], max_repairs=1,
        refine_rounds=1)
    assert order == ["describe", "retrieve", "compose", "parse_check", "compose", "parse_check",
                     "evaluate", "compose", "parse_check", "evaluate", "explain"]
    refine_prompt = model.texts(3)[-1]
    assert "this tune stands" in refine_prompt and "c2 B2 A4 B2" in refine_prompt
    assert [a["kind"] for a in state["attempts"]] == ["compose", "repair", "refine"]
    assert state["final_abc"] == REFINED and state["best"] == 2


def test_a_retrieved_example_with_an_error_never_reaches_a_prompt() -> None:
    examples = Examples()
    broken = examples.examples[0].model_copy(update={
        "id": "broken", "caption": "A tune cut off inside a chord.",
        "abc": "X:9\nT:Cut\nM:4/4\nL:1/4\nK:C\nC D E F | [CEG\n"})
    examples.examples.insert(0, broken)
    state, model, _, _ = run([DESCRIPTION, answer(TUNE)], examples=examples, refine=False,
                             rag_k=2)
    assert examples.queries[0]["k"] > 2  # a few spare, in case some are not playable
    assert [e["id"] for e in state["examples"]] == [e.id for e in examples.examples[1:3]]
    prompt = model.texts(1)[1]
    assert "A tune cut off inside a chord." not in prompt and "[CEG" not in prompt
    assert "An Irish air, number 1." in prompt


def test_each_example_is_checked_once_a_process_and_a_broken_one_stays_out(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    examples = Examples()
    examples.examples.insert(0, examples.examples[0].model_copy(update={
        "id": "broken", "abc": "X:9\nT:Cut\nM:4/4\nL:1/4\nK:C\nC D E F | [CEG\n"}))
    fresh = f"% fetched by {uuid.uuid4().hex}\n"  # texts no earlier test had checked
    for example in examples.examples:
        example.abc += fresh
    compiled: list[str] = []

    def counted(text: str, **options: Any) -> CompiledAbc:
        compiled.append(text)
        return compile_abc(text, **options)

    monkeypatch.setattr(nodes, "compile_abc", counted)
    for _ in range(2):
        state, _, _, _ = run([DESCRIPTION, answer(TUNE)], examples=examples, refine=False,
                             rag_k=2)
        assert [e["id"] for e in state["examples"]] == [e.id for e in examples.examples[1:]]
    assert [compiled.count(e.abc) for e in examples.examples] == [1, 1, 1]


@pytest.mark.parametrize("context", [{"rag": False}, {"rag_k": 0}])
def test_without_rag_the_retrieve_node_is_not_visited(context: dict[str, Any]) -> None:
    state, model, order, examples = run([DESCRIPTION, answer(TUNE)], refine=False, **context)
    assert order == ["describe", "compose", "parse_check", "evaluate", "explain"]
    assert examples.queries == []
    assert "examples" not in state
    assert "real tunes" not in model.texts(1)[1]
    assert state["status"] == "done"


def test_caption_only_the_composer_gets_the_description_and_not_the_image() -> None:
    state, model, order, _ = run([DESCRIPTION, answer(TUNE)], rag=False, refine=False,
                                 see_image=False)
    assert "retrieve" not in order and state["status"] == "done"

    def images(call: int) -> int:
        return sum(1 for message in model.calls[call] if isinstance(message.content, list)
                   for part in message.content
                   if isinstance(part, dict) and part.get("type") == "image_url")

    assert images(0) == 1  # the describe step still looks at the image
    assert images(1) == 0
    compose_prompt = model.texts(1)[1]
    assert "A formal portrait of an officer" in compose_prompt
    assert "know only from its description" in compose_prompt
    assert "for this image" not in compose_prompt


def test_with_the_image_the_composer_is_told_to_look_at_it() -> None:
    _, model, _, _ = run([DESCRIPTION, answer(TUNE), answer(REFINED)], refine_rounds=1)
    assert "Compose an original piece of music for this image." in model.texts(1)[1]
    assert "Look at the image again" in model.texts(2)[-1]


def attempt(n: int, round_number: int, valid: bool, *, faults: int = 0, abc: str | None = None,
            kind: AttemptKind = "compose", measured: bool = False) -> Attempt:
    return {"n": n, "round": round_number, "kind": kind, "raw": "",
            "abc": abc if abc is not None else f"X:{n}\nK:C\nC|\n",
            "motivation": "", "fixes": [], "notes": [],
            "check": cast(Check, {"ok": valid, "fault_count": faults}), "midi": None,
            "metrics": cast(Metrics, {}) if measured else None,
            "valid": valid, "input_tokens": 0, "output_tokens": 0, "seconds": 0.0,
            "constrained": False}


def attempts_of(*verdicts: tuple[bool, int]) -> list[Attempt]:
    """Attempts of round 0 with (playable, faults) each: a composition, then repairs."""
    return [attempt(n, 0, valid, faults=faults, kind="repair" if n else "compose")
            for n, (valid, faults) in enumerate(verdicts)]


def runtime(**context: Any) -> Runtime[Context]:
    return Runtime(context=Context(**context))


@pytest.mark.parametrize(
    ("rag", "k", "expected"),
    [(True, 4, "retrieve"), (False, 4, "compose"), (True, 0, "compose")],
)
def test_after_describe(rag: bool, k: int, expected: str) -> None:
    state: State = {"description": "a calm sea"}
    assert after_describe(state, runtime(rag=rag, rag_k=k)) == expected


@pytest.mark.parametrize(
    ("verdicts", "best", "repairs", "expected"),
    [
        ([(True, 0)], 0, 0, "evaluate"),  # clean: measured at once
        ([(True, 0)], 0, 3, "evaluate"),
        ([(True, 2)], 0, 1, "compose"),  # playable with faults: a repair is asked for
        ([(True, 2)], 0, 0, "evaluate"),  # no repairs allowed: measured as it is
        ([(False, 0)], None, 1, "compose"),
        ([(False, 0)], None, 0, "finish"),  # nothing playable: the run fails
        ([(False, 0), (False, 0)], None, 1, "finish"),
        ([(False, 0), (False, 0), (False, 0)], None, 3, "compose"),
        ([(True, 3), (False, 0)], 0, 1, "evaluate"),  # repairs spent: the playable one stands
        ([(True, 3), (True, 1)], 1, 1, "evaluate"),
    ],
)
def test_after_parse_check(verdicts: list[tuple[bool, int]], best: int | None, repairs: int,
                           expected: str) -> None:
    state: State = {"attempts": attempts_of(*verdicts), "best": best}
    assert after_parse_check(state, runtime(max_repairs=repairs)) == expected


def test_after_parse_check_stops_repairing_when_a_tune_comes_back_unchanged() -> None:
    same = "X:1\nT:t\nM:4/4\nL:1/4\nK:C\nC D E F G |]\n"
    attempts = [attempt(0, 0, True, faults=1, abc=same),
                attempt(1, 0, True, faults=1, abc=same, kind="repair")]
    assert after_parse_check({"attempts": attempts, "best": 0},
                             runtime(max_repairs=3)) == "evaluate"
    unplayable = [attempt(0, 0, False, abc=same), attempt(1, 0, False, abc=same, kind="repair")]
    assert after_parse_check({"attempts": unplayable}, runtime(max_repairs=3)) == "finish"


def test_after_parse_check_counts_repairs_per_round() -> None:
    state: State = {"attempts": [attempt(0, 0, False), attempt(1, 0, True, measured=True),
                                 attempt(2, 1, False, kind="refine")], "best": 1}
    assert after_parse_check(state, runtime(max_repairs=1)) == "compose"
    state["attempts"].append(attempt(3, 1, False, kind="repair"))
    assert after_parse_check(state, runtime(max_repairs=1)) == "explain"  # round 0's tune stands


def test_next_attempt_repairs_until_the_round_is_measured() -> None:
    assert next_attempt([], None) == ("compose", 0)
    playable = attempt(0, 0, True, faults=1)
    assert next_attempt([playable], 0) == ("repair", 0)
    assert next_attempt([{**playable, "metrics": cast(Metrics, {})}], 0) == ("refine", 1)
    refined = attempt(1, 1, False, kind="refine")
    assert next_attempt([{**playable, "metrics": cast(Metrics, {})}, refined], 0) == \
        ("repair", 1)


@pytest.mark.parametrize(
    ("round_number", "refine", "rounds", "expected"),
    [(0, True, 1, "compose"), (1, True, 1, "explain"), (0, False, 3, "explain"),
     (0, True, 0, "explain"), (2, True, 3, "compose")],
)
def test_after_evaluate(round_number: int, refine: bool, rounds: int, expected: str) -> None:
    state: State = {"attempts": [attempt(0, round_number, True)]}
    assert after_evaluate(state, runtime(refine=refine, refine_rounds=rounds)) == expected


def test_the_tunes_in_these_tests_are_what_they_claim() -> None:
    assert check_abc(TUNE).clean and check_abc(REFINED).clean
    assert check_abc(FAULTY).ok and check_abc(FAULTY).fault_count == 1
    assert check_abc(FAULTIER).ok and check_abc(FAULTIER).fault_count == 2
    assert not check_abc(BROKEN).ok


def test_an_interrupted_run_resumes_from_its_checkpoint_without_redoing_nodes(
    tmp_path: Path,
) -> None:
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    class Outage(RuntimeError):
        """The endpoint went away in the middle of the run."""

    replies = [DESCRIPTION, answer(TUNE), answer(REFINED)]
    first = ScriptedChatModel(replies=replies[:2])
    state: Input = {"image": image_data_url(open_image(PHOTO), max_pixels=96 * 96)}
    config: RunnableConfig = {"configurable": {"thread_id": "photo-1"}}
    context = Context(explain="none", refine_rounds=1)

    def outage_after_two(_: Context) -> ScriptedChatModel:
        if len(first.calls) == 2:
            raise Outage("connection lost")
        return first

    async def interrupted() -> None:
        async with AsyncSqliteSaver.from_conn_string(str(tmp_path / "runs.sqlite")) as saver:
            graph = build_graph(model_for=outage_after_two, retriever_for=lambda _: Examples(),
                                checkpointer=saver)
            await graph.ainvoke(state, config, context=context)

    async def resumed() -> dict[str, Any]:
        async with AsyncSqliteSaver.from_conn_string(str(tmp_path / "runs.sqlite")) as saver:
            graph = build_graph(model_for=lambda _: second, retriever_for=lambda _: Examples(),
                                checkpointer=saver)
            return await graph.ainvoke(None, config, context=context)

    with pytest.raises(Outage):
        asyncio.run(interrupted())
    second = ScriptedChatModel(replies=replies[2:])
    final = asyncio.run(resumed())
    assert final["status"] == "done" and final["final_abc"] == REFINED
    assert len(first.calls) == 2 and len(second.calls) == 1  # describe and compose not redone


def test_the_graph_takes_the_image_and_a_note_and_gives_the_tune_and_why() -> None:
    graph = build_graph()
    given = graph.get_input_jsonschema()
    assert set(given["properties"]) == {"image", "note"} and given["required"] == ["image"]
    assert set(graph.get_output_jsonschema()["properties"]) == {
        "final_abc", "faults", "fault_count", "controls", "motivation", "explanation", "status",
        "failure"}


@pytest.mark.parametrize(("typed", "model"), [
    (Check, ParseCheck), (DiagnosticJSON, Diagnostic), (Metrics, TuneMetrics),
    (MetricJSON, MetricValue), (Example, RetrievedExample),
])
def test_the_states_json_shapes_are_the_toolkits_models(typed: type, model: type[Any]) -> None:
    """Each TypedDict names exactly the fields its pydantic model dumps, so a node can store a
    dump as it is and read it back without validating it again."""
    assert set(typed.__annotations__) == set(model.model_fields)
    assert set(typed.__annotations__) == set(model.model_json_schema()["properties"])
