"""The local backend writes under the ABC grammar: a tiny random-weight Qwen2-VL, which never
writes ABC of its own accord, composes tunes that parse-check without an error.

One model serves the whole module, on one thread. A random model writes as much as the grammar
allows, so every tune runs into the token budget (or the playing-time limit) and is closed where
the grammar can end it: the test exercises what a real model meets only with long tunes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from langchain_core.callbacks import BaseCallbackHandler
from langgraph.runtime import Runtime
from matplotlib import cbook
from PIL import Image

from img2music.graph import context as run_context
from img2music.graph.context import Context
from img2music.graph.local_vlm import GrammarLogitsProcessor, LocalChatModel, LocalVLM
from img2music.graph.models import AnswerConstraint, answer_constraint
from img2music.graph.nodes import compose, parse_check
from img2music.graph.profiles import PROFILES, grammar_plan
from img2music.graph.state import State
from img2music.settings import Settings, get_settings
from img2music.tools.abc.controls import grammar_rules
from img2music.tools.abc.grammar import answer_grammar, matches, rule_definition
from img2music.tools.images import image_data_url
from tests.tiny_vlm import build_tiny_vlm

COMPOSITIONS = 50
# A random model fills any budget: each tune is cut at this many tokens, then closed.
COMPOSE_TOKENS = 160
# What comes before the music, kept short so that 160 tokens reach far into it (the shipped
# grammar, sized to a budget, lets a lead take up to three quarters of it: tests/test_budget.py
# and the test at the least budget below). The music is the shipped grammar's.
LEAST_BUDGET = 2210  # the least budget the shipped grammar can be sized to (tests/test_budget.py)
LEAST_BUDGET_COMPOSITIONS = 8
# The run's budget, where the model is cut sooner (as a stop sequence or the server's context
# length would cut it).
RUN_BUDGET = 4096
SHORT_LEAD = {
    "preamble": 'prose-character{1,8} "\\n"',
    "tune": 'reference-line header-line{0,1} key-line body "\\n"?',
    "text-line": '[TCOARNZSBDFGH] ":" text{0,4} "\\n"',
    "field-end": '" "? "\\n"',
    "comment-line": '"%" text-character{0,10} "\\n"',
    "leading-field-line": "key-line | meter-line | unit-line | tempo-line",
    "voice-declaration": "voice-line",
    "line-start": '""',
}


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """The tiny model is quicker on one thread than on two shared with other work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def vlm(one_thread: None) -> LocalVLM:
    model, processor = build_tiny_vlm()
    return LocalVLM(model, processor, name="tiny")


@pytest.fixture(scope="module")
def image_url() -> str:
    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as image:
        return image_data_url(image.convert("RGB"), max_pixels=96 * 96)


@pytest.fixture
def local_backend(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("IMG2MUSIC_VLM_BACKEND", "local")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def compose_and_check(vlm: LocalVLM, image_url: str, *, tokens: int = COMPOSE_TOKENS,
                      budget: int = RUN_BUDGET,
                      callbacks: list[BaseCallbackHandler] | None = None,
                      **context: Any) -> dict[str, Any]:
    """One first attempt through the compose and parse-check nodes, as a run makes it, with the
    run's `budget` (which sizes its grammar) and the model cut at `tokens` (the `callbacks` see
    the model's answer, with its masking times)."""
    state: State = {"image": image_url, "description": "A woman in uniform.", "note": ""}
    runtime = Runtime(context=Context(vlm_max_tokens=budget, rag=False, **context))
    model = LocalChatModel(vlm=vlm, max_new_tokens=tokens, callbacks=callbacks)
    composed = asyncio.run(compose(state, runtime, backend="local", model_for=lambda _: model))
    checked = asyncio.run(parse_check({**state, "attempts": composed["attempts"]}, runtime))
    attempt: dict[str, Any] = dict(checked["attempts"][0])
    return attempt


@pytest.fixture
def short_lead(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each run's grammar (for its calls, and for closing a tune they cut) with `SHORT_LEAD`."""
    monkeypatch.setattr(run_context, "grammar_rules",
                        lambda controls: {**SHORT_LEAD, **grammar_rules(controls)})


def test_fifty_compositions_under_the_grammar_have_no_error(
    vlm: LocalVLM, image_url: str, local_backend: None, short_lead: None, record_property: Any
) -> None:
    """The shipped music grammar and limits: every constrained tune parse-checks without an
    error, the ones the budget or the playing-time limit cut included; without the grammar, next
    to none does."""
    failures, closed = [], 0
    for seed in range(COMPOSITIONS):
        attempt = compose_and_check(vlm, image_url, seed=seed, vlm_grammar="on")
        assert attempt["constrained"], seed
        check = attempt["check"]
        if attempt["abc"] is None or not check["ok"]:
            failures.append(f"seed {seed}: {check['errors'][:2]}\n{attempt['raw']}")
        closed += any(fix.startswith("closed the tune") for fix in attempt["fixes"]) or any(
            "over the size limits" in fault["message"] for fault in check["faults"])
    free_valid = sum(
        bool(compose_and_check(vlm, image_url, seed=seed, vlm_grammar="off")["check"]["ok"])
        for seed in range(COMPOSITIONS))
    valid = COMPOSITIONS - len(failures)
    summary = (f"with the grammar {valid}/{COMPOSITIONS} without an error ({closed} cut by a "
               f"limit and closed); without it {free_valid}/{COMPOSITIONS}")
    record_property("valid_tunes", summary)
    print(summary)  # noqa: T201 - the rate beside the grammar's, as the issue asks
    assert not failures, "\n".join(failures[:3])
    assert closed, "a random model fills its budget: some tune was cut and closed"
    assert free_valid < COMPOSITIONS  # random weights never write ABC of their own accord


def test_at_the_least_budget_the_shipped_grammar_leaves_a_tune_without_an_error(
    vlm: LocalVLM, image_url: str, local_backend: None
) -> None:
    """The shipped grammar, sized to the least budget it fits (what comes before the music may
    take three quarters of it): a random model spends what the grammar allows there, and the
    budget still leaves a tune without an error."""
    failures, closed = [], 0
    for seed in range(LEAST_BUDGET_COMPOSITIONS):
        attempt = compose_and_check(vlm, image_url, tokens=LEAST_BUDGET, budget=LEAST_BUDGET,
                                    seed=seed, vlm_grammar="on")
        assert attempt["constrained"], seed
        if attempt["abc"] is None or not attempt["check"]["ok"]:
            failures.append(f"seed {seed}: {attempt['check']['errors'][:2]}\n{attempt['raw']}")
        closed += any(fix.startswith("closed the tune") for fix in attempt["fixes"])
    assert not failures, "\n".join(failures[:3])
    assert closed, "a random model fills its budget: some tune was cut and closed"


def test_in_think_mode_the_thought_is_free_and_the_answer_is_masked(vlm: LocalVLM) -> None:
    tokenizer = vlm.tokenizer
    prompt = tokenizer("<|im_start|>user\nCompose.<|im_end|>\n<|im_start|>assistant\n")["input_ids"]

    def allowed_after(grammar: str, text: str) -> set[str]:
        compiled = vlm.compiled_grammar(grammar)
        masker = GrammarLogitsProcessor(compiled, prompt_length=len(prompt))
        width = compiled.tokenizer_info.vocab_size
        ids = torch.tensor([prompt + tokenizer(text)["input_ids"]])
        scores = masker(ids, torch.zeros(1, width))  # type: ignore[arg-type]
        assert masker.mask_seconds
        return {tokenizer.decode([token]) for token in range(width)
                if scores[0, token] > float("-inf")}

    thinking = answer_grammar(thinking=True)
    musing = allowed_after(thinking, "<think>I could write (A>B) anything here")
    answering = allowed_after(thinking, "<think>I could write (A>B) anything</think>\n\n")
    assert {"<", "`", "Z", "\n", "\t"} <= musing and "\x01" not in musing  # ASCII, counted
    assert allowed_after(thinking, "<think>a <") == {"/"}  # a "<" only ends the thought
    assert "`" in answering and "T" in answering  # the abc fence, or a line of text before it
    assert "<" not in answering and "\x01" not in answering
    # Told /no_think, Keye writes an empty block, and nothing else may stand in it.
    assert allowed_after(answer_grammar(), "<think>") == {" ", "\n", "<"}
    assert "I" not in allowed_after(answer_grammar(), "<think>\n")


def compose_once(vlm: LocalVLM, image_url: str, **context: Any) -> dict[str, Any]:
    """One seeded compose call of 60 tokens: unseeded, a random model's free text would now and
    then happen to start like an answer under the grammar."""
    state: State = {"image": image_url, "description": "A woman in uniform.", "note": ""}
    runtime = Runtime(context=Context(vlm_max_tokens=RUN_BUDGET, rag=False, seed=1, **context))
    update = asyncio.run(compose(state, runtime, backend="local",
                                 model_for=lambda _: LocalChatModel(vlm=vlm, max_new_tokens=60)))
    attempt: dict[str, Any] = dict(update["attempts"][0])
    return attempt


def test_the_compose_node_writes_under_the_grammar_with_the_local_backend(
    vlm: LocalVLM, image_url: str, local_backend: None
) -> None:
    constrained = compose_once(vlm, image_url, vlm_grammar="auto")
    assert constrained["constrained"]
    assert matches(answer_grammar(), constrained["raw"], cut=True)  # cut at 60 tokens
    free = compose_once(vlm, image_url, vlm_grammar="off")
    assert not free["constrained"] and not matches(answer_grammar(), free["raw"], cut=True)
    thinking = compose_once(vlm, image_url, vlm_grammar="on", vlm_thinking=True)
    assert thinking["constrained"]
    assert matches(answer_grammar(thinking=True), thinking["raw"], cut=True)


def test_where_the_grammar_applies(vlm: LocalVLM, tmp_path: Path) -> None:
    local = Settings(vlm_backend="local", data_dir=tmp_path)
    model = LocalChatModel(vlm=vlm)
    run = Context.from_settings(local, vlm_grammar="auto")
    applied = answer_constraint(run, model, backend=local.vlm_backend)
    assert applied == AnswerConstraint(run.answer_grammar(), "local")
    assert run.answer_grammar() != answer_grammar()  # sized to the run's budget
    thinking_run = Context.from_settings(local, vlm_thinking=True)
    thinking = answer_constraint(thinking_run, model, backend=local.vlm_backend)
    assert thinking == AnswerConstraint(thinking_run.answer_grammar(), "local")
    assert rule_definition(thinking.grammar, "thought") == "free-thought"
    assert answer_constraint(Context.from_settings(local, vlm_grammar="off"), model,
                             backend=local.vlm_backend) is None
    routes = {(grammar, name): grammar_plan(grammar=grammar, backend="openai",
                                            profile=PROFILES[name])[0]
              for grammar in ("auto", "on", "off") for name in PROFILES}
    assert {key for key, via in routes.items() if via is not None} == {
        ("auto", "vllm"), ("on", "vllm"), ("on", "openai"), ("on", "ollama"), ("on", "generic")}
    assert set(routes.values()) == {"structured_outputs", None}
