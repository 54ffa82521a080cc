"""The takes graph (Studio's `img2music_takes`): one description and one retrieval, then a take
per take at once, each the compose loop under its own seed, and every take in the output; its
routers on their own."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, cast

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatResult
from langgraph.runtime import Runtime
from langgraph.types import Send

from img2music.graph.context import Context
from img2music.graph.graph import build_graph, build_takes_graph
from img2music.graph.routing import before_describe, one_take_each, takes_after_describe
from img2music.graph.state import Input, TakesInput, TakesOutput, TakesState
from img2music.settings import MAX_TAKES
from img2music.tools.abc.check import check_abc
from img2music.tools.images import image_data_url, open_image
from tests.test_graph import PHOTO, TUNE, Examples
from tests.test_takes import MeetingModel

IMAGE = image_data_url(open_image(PHOTO), max_pixels=96 * 96)
NOTE = "something solemn"


def run_takes(takes: int, *, seed: int, model: BaseChatModel | None = None,
              **context: Any) -> tuple[TakesOutput, MeetingModel, Examples]:
    """The takes graph on a real photo with a model that answers only when every take's compose
    call waits at once (takes composed one after another would never be answered)."""
    meeting, examples = MeetingModel(parties=takes), Examples()
    graph = build_takes_graph(model_for=lambda _: model or meeting,
                              retriever_for=lambda _: examples)
    given: TakesInput = {"image": IMAGE, "note": NOTE, "takes": takes}
    output = asyncio.run(graph.ainvoke(given, context=Context(
        seed=seed, explain="none", refine=False, **context)))
    return cast(TakesOutput, output), meeting, examples


def one_take(seed: int) -> MeetingModel:
    """The `img2music` graph (one take) with this seed: the model calls it made."""
    model = MeetingModel(parties=1)
    graph = build_graph(model_for=lambda _: model, retriever_for=lambda _: Examples())
    given: Input = {"image": IMAGE, "note": NOTE}
    final = asyncio.run(graph.ainvoke(given, context=Context(seed=seed, explain="none",
                                                             refine=False)))
    assert final["status"] == "done"
    return model


def test_the_takes_describe_and_retrieve_once_compose_at_once_and_are_all_returned() -> None:
    output, model, examples = run_takes(3, seed=7)
    kinds = [kind for kind, _ in model.calls]
    assert kinds.count("describe") == 1 and kinds.count("compose") == 3
    assert len(examples.queries) == 1
    assert output["description"].startswith("A formal portrait")
    candidates = output["candidates"]
    assert [take["take"] for take in candidates] == [1, 2, 3]
    for take in candidates:
        assert take["status"] == "done" and take["final_abc"] == TUNE
        assert check_abc(take["final_abc"]).clean
        assert take["faults"] == [] and take["fault_count"] == 0 and take["controls"] == []
        assert "steady hymn-like line" in take["motivation"]
    seeds = [take["seed"] for take in candidates]
    assert seeds[0] == 7 and len(set(seeds)) == 3


def test_each_take_is_the_one_take_run_with_its_seed_and_the_same_seed_gives_the_same_takes(
) -> None:
    output, model, _ = run_takes(2, seed=7)
    seeds = [take["seed"] for take in output["candidates"]]
    sent = {seed for kind, seed in model.calls if kind == "compose"}
    alone = [one_take(seed) for seed in seeds]
    # The description is the one a run of one take with the run's seed asks for, and each
    # take's compose call is sent the seed a run of one take with the take's seed sends.
    assert [call for call in model.calls if call[0] == "describe"] == [
        call for call in alone[0].calls if call[0] == "describe"]
    assert sent == {seed for run in alone for kind, seed in run.calls if kind == "compose"}
    assert len(sent) == 2
    again, model_again, _ = run_takes(2, seed=7)
    assert [take["seed"] for take in again["candidates"]] == seeds
    assert sorted(model_again.calls, key=str) == sorted(model.calls, key=str)
    other, _, _ = run_takes(2, seed=8)
    assert {take["seed"] for take in other["candidates"]}.isdisjoint(seeds)


class SecondComposeFails(MeetingModel):
    """Describes and composes, but the second compose call finds the endpoint gone."""

    async def _agenerate(self, messages: list[BaseMessage], stop: Sequence[str] | None = None,
                         run_manager: Any = None, **kwargs: Any) -> ChatResult:
        if len(self.calls) == 2:
            self.calls.append(("compose", kwargs.get("seed")))
            raise ConnectionError("the endpoint went away")
        return await super()._agenerate(messages, stop, run_manager, **kwargs)


def test_a_take_that_fails_ends_alone_and_the_others_are_kept() -> None:
    output, _, _ = run_takes(2, seed=7, model=SecondComposeFails(parties=1))
    candidates = output["candidates"]
    assert sorted(take["status"] for take in candidates) == ["done", "failed"]
    [failed] = [take for take in candidates if take["status"] == "failed"]
    [done] = [take for take in candidates if take["status"] == "done"]
    assert "the endpoint went away" in failed["failure"] and failed["final_abc"] is None
    assert done["final_abc"] == TUNE


def test_without_rag_the_takes_compose_from_the_description_alone() -> None:
    output, model, examples = run_takes(2, seed=3, rag=False)
    assert examples.queries == [] and len(model.calls) == 3
    assert [take["status"] for take in output["candidates"]] == ["done", "done"]


@pytest.mark.parametrize("takes", [0, MAX_TAKES + 1])
def test_a_count_of_takes_out_of_range_is_refused_before_any_model_call(takes: int) -> None:
    model = MeetingModel(parties=1)
    with pytest.raises(ValueError, match=f"takes must be 1 to {MAX_TAKES}, not {takes}"):
        run_takes(takes, seed=1, model=model)
    assert model.calls == []


def test_before_describe() -> None:
    assert before_describe({"image": IMAGE}) == "describe"
    assert before_describe({"image": IMAGE, "takes": MAX_TAKES}) == "describe"
    for wrong in (0, -1, MAX_TAKES + 1, True):
        with pytest.raises(ValueError, match="takes must be"):
            before_describe({"image": IMAGE, "takes": wrong})


def test_the_takes_fan_out_after_retrieval_or_after_the_description_without_it() -> None:
    state: TakesState = {"image": IMAGE, "note": NOTE, "description": "a calm sea",
                         "examples": [], "status": "running", "takes": 3,
                         "usage": {"describe": {"calls": 1}}, "timings": {"describe": 1.0}}
    sends = one_take_each(state)
    shared = {"image": IMAGE, "note": NOTE, "description": "a calm sea", "examples": [],
              "status": "running"}
    assert sends == [Send("take", {**shared, "take": number}) for number in range(3)]
    assert one_take_each({"image": IMAGE, "description": "x"}) == [
        Send("take", {"image": IMAGE, "description": "x", "take": 0})]
    with_rag = Runtime(context=Context(rag=True, rag_k=2))
    without = Runtime(context=Context(rag=False))
    assert takes_after_describe(state, with_rag) == "retrieve"
    assert takes_after_describe(state, without) == sends
