"""Seeds: with the tiny local model, a run's seed alone decides what it samples."""

from __future__ import annotations

import asyncio
from typing import Any

import torch
from langgraph.runtime import Runtime

from img2music.graph.context import Context
from img2music.graph.local_vlm import LocalChatModel, LocalVLM
from img2music.graph.nodes import compose, describe
from img2music.graph.state import State
from tests.test_constrained import image_url, one_thread, vlm  # noqa: F401 - fixtures, shared

TOKENS = 24  # enough for two random answers to differ, few enough to be quick


def describe_and_compose(vlm: LocalVLM, image_url: str, seed: int) -> tuple[str, str]:  # noqa: F811
    """What the describe node and the first compose attempt wrote, with this run seed; the
    process's own random state is moved first, so only the run's seed can repeat the answers."""
    torch.manual_seed(torch.seed())
    context = Context(vlm_max_tokens=TOKENS, rag=False, vlm_grammar="off", seed=seed)

    def model_for(_: Any) -> LocalChatModel:
        return LocalChatModel(vlm=vlm, max_new_tokens=TOKENS)

    state: State = {"image": image_url, "note": ""}
    described = asyncio.run(describe(state, Runtime(context=context), model_for=model_for))
    state = {**state, "description": described["description"]}
    composed = asyncio.run(compose(state, Runtime(context=context), model_for=model_for,
                                   backend="local"))
    return described["description"], composed["attempts"][0]["raw"]


def test_the_same_seed_gives_the_same_tune_and_another_seed_another(
    vlm: LocalVLM, image_url: str,  # noqa: F811
) -> None:
    first = describe_and_compose(vlm, image_url, seed=7)
    assert describe_and_compose(vlm, image_url, seed=7) == first
    other = describe_and_compose(vlm, image_url, seed=8)
    assert other[0] != first[0] and other[1] != first[1]


def test_each_call_of_a_run_gets_its_own_seed_from_the_runs() -> None:
    run = Context(seed=7)
    calls = [run.call_seed(position) for position in range(5)]
    assert len(set(calls)) == len(calls)  # a repair is not the first answer sampled again
    assert calls == [Context(seed=7).call_seed(position) for position in range(5)]
    assert calls != [Context(seed=8).call_seed(position) for position in range(5)]


def test_a_context_without_a_seed_chooses_one() -> None:
    chosen = {Context().seed for _ in range(3)}
    assert all(isinstance(seed, int) and seed >= 0 for seed in chosen)
    assert len(chosen) > 1
