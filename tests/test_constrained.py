"""The local backend writes under the ABC grammar: a tiny random-weight Qwen2-VL, which never
writes ABC of its own accord, composes tunes that parse-check without an error."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import xgrammar
from langchain_core.messages import HumanMessage, SystemMessage
from langgraph.runtime import Runtime
from matplotlib import cbook
from PIL import Image

from img2music.graph.context import Context
from img2music.graph.local_vlm import GrammarLogitsProcessor, LocalChatModel, LocalVLM
from img2music.graph.models import (
    REASONING_END,
    AnswerConstraint,
    answer_constraint,
    call_model,
    image_data_url,
)
from img2music.graph.profiles import PROFILES, grammar_plan
from img2music.graph.nodes import compose
from img2music.graph.state import State
from img2music.prompt_files import render_prompt
from img2music.settings import Settings, get_settings
from img2music.tools.check import compile_abc
from img2music.tools.extract import extract_abc
from img2music.tools.grammar import answer_grammar
from img2music.tools.repair import repair_abc
from tests.test_grammar import errors
from tests.tiny_vlm import build_tiny_vlm

COMPOSITIONS = 50
# The shipped rules with smaller bounds: a random model writes as much as a grammar allows, and
# the tiny one takes a millisecond or two a token, so the tunes are kept short for the test.
SHORT = {
    "preamble": 'prose-character{1,20} "\\n"',
    "motivation": '"Motivation: " prose-character{1,40} "\\n"?',
    "tune": 'reference-line header-line{0,2} key-line body "\\n"?',
    "text-line": '[TCOARNZSBDFGH] ":" text{0,10} "\\n"',
    "written-header-line": "text-line | meter-line | unit-line | tempo-line | voice-line",
    "field-end": '" "? "\\n"',
    "comment-line": '"%" text-character{0,10} "\\n"',
    "lyrics-line": '"w:" text{0,10} "\\n"',
    "body": "leading-body-line{0,1} first-music-line body-line{0,2}",
    "line-tail": "(gap? bar gap? measure){0,2} (gap? bar)?",
    "measure-rest": "(gap? measure-item){0,3}",
    "annotation": '"\\"" quoted-piece{0,3} "\\""',
    "grace": '"{" grace-note{1,2} "}"',
    "chord-core": '"[" chord-note{1,3} "]"',
    "slur-content": "(slur-thing gap?){0,2} (untied-thing | inner-slur)",
    "gap": '" "',
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


def composition(image_url: str) -> list[Any]:
    prompt = render_prompt("compose.j2", description="A woman in uniform.", note="",
                           examples=[], max_bars=16, thinking="/no_think", sees_image=True)
    return [SystemMessage(content=render_prompt("system.j2")),
            HumanMessage(content=[{"type": "image_url", "image_url": {"url": image_url}},
                                  {"type": "text", "text": prompt}])]


def parse_check_errors(text: str) -> list[str]:
    """What the compose and parse-check nodes would find: extraction, repair, the checker."""
    extracted = extract_abc(text)
    if extracted.abc is None:
        return ["no tune"]
    return errors(compile_abc(repair_abc(extracted.abc).abc).check)


def test_fifty_compositions_under_the_grammar_have_no_error(
    vlm: LocalVLM, image_url: str, record_property: Any
) -> None:
    messages = composition(image_url)
    constrained = LocalChatModel(vlm=vlm, max_new_tokens=1_500)
    constraint = AnswerConstraint(answer_grammar(SHORT), "local")
    failures = []
    for seed in range(COMPOSITIONS):
        torch.manual_seed(seed)
        reply = call_model(constrained, messages, endpoint="local", constraint=constraint)
        assert reply.constrained and reply.finish_reason == "stop", seed
        failures += [f"seed {seed}: {error}" for error in parse_check_errors(reply.text)]
    free = LocalChatModel(vlm=vlm, max_new_tokens=150)
    free_valid = 0
    for seed in range(COMPOSITIONS):
        torch.manual_seed(seed)
        reply = call_model(free, messages, endpoint="local")
        assert not reply.constrained
        free_valid += not parse_check_errors(reply.text)
    record_property("valid_without_the_grammar", f"{free_valid}/{COMPOSITIONS}")
    assert not failures, "\n".join(failures[:10])
    assert free_valid < COMPOSITIONS  # random weights never write ABC of their own accord


def test_the_mask_waits_for_the_end_of_the_reasoning(vlm: LocalVLM) -> None:
    tokenizer = vlm.tokenizer
    compiled = vlm.compiled_grammar(answer_grammar())
    prompt = tokenizer("<|im_start|>user\nCompose.<|im_end|>\n<|im_start|>assistant\n")["input_ids"]
    masker = GrammarLogitsProcessor(compiled, tokenizer, prompt_length=len(prompt),
                                    start_after=REASONING_END)
    width = compiled.tokenizer_info.vocab_size

    def scores_after(text: str) -> torch.Tensor:
        ids = torch.tensor([prompt + tokenizer(text)["input_ids"]])
        return masker(ids, torch.zeros(1, width))  # type: ignore[arg-type]

    thinking = scores_after("<think>I could write <b>anything</b> here")
    applied_while_thinking = masker.applied
    answering = scores_after("<think>I could write <b>anything</b> here</think>\n\n")
    allowed = {tokenizer.decode([token]) for token in range(width)
               if answering[0, token] > float("-inf")}
    assert torch.all(thinking == 0) and not applied_while_thinking
    assert masker.applied and masker.mask_seconds
    assert "`" in allowed and "T" in allowed  # the abc fence, or a line of text before it
    assert "<" not in allowed and "\x01" not in allowed


def test_think_mode_leaves_a_reasoning_that_never_ends_unconstrained(vlm: LocalVLM) -> None:
    turn = vlm.generate([{"role": "user", "content": "Compose."}], temperature=0.6, top_p=0.95,
                        top_k=20, max_new_tokens=40, grammar=answer_grammar(),
                        reasoning_end=REASONING_END)
    assert not turn.constrained and not turn.mask_seconds


def compose_once(vlm: LocalVLM, image_url: str, **context: Any) -> dict[str, Any]:
    state: State = {"image": image_url, "description": "A woman in uniform.", "note": ""}
    runtime = Runtime(context=Context(max_tokens=60, rag=False, **context))
    update = compose(state, runtime, model_for=lambda _: LocalChatModel(vlm=vlm,
                                                                          max_new_tokens=60))
    attempt: dict[str, Any] = dict(update["attempts"][0])
    return attempt


def test_the_compose_node_writes_under_the_grammar_with_the_local_backend(
    vlm: LocalVLM, image_url: str, local_backend: None
) -> None:
    constrained = compose_once(vlm, image_url, grammar="auto")
    assert constrained["constrained"]
    matcher = xgrammar.GrammarMatcher(vlm.compiled_grammar(answer_grammar()))
    assert matcher.accept_string(constrained["raw"])  # cut at 60 tokens, but on the grammar
    assert not compose_once(vlm, image_url, grammar="off")["constrained"]
    assert not compose_once(vlm, image_url, grammar="on", thinking=True)["constrained"]


def test_where_the_grammar_applies(vlm: LocalVLM, tmp_path: Path) -> None:
    local = Settings(vlm_backend="local", data_dir=tmp_path)
    model = LocalChatModel(vlm=vlm)
    applied = answer_constraint(Context.from_settings(local, grammar="auto"), model,
                                settings=local)
    assert applied == AnswerConstraint(answer_grammar(), "local", None)
    thinking = answer_constraint(Context.from_settings(local, thinking=True), model,
                                 settings=local)
    assert thinking == AnswerConstraint(answer_grammar(), "local", REASONING_END)
    assert answer_constraint(Context.from_settings(local, grammar="off"), model,
                             settings=local) is None
    vllm, ollama = PROFILES["vllm"], PROFILES["ollama"]
    plans = {(grammar, profile.name, thinking): grammar_plan(
        grammar=grammar, backend="openai", thinking=thinking, profile=profile)[0]
        for grammar in ("auto", "on", "off") for profile in (vllm, ollama)
        for thinking in (False, True)}
    sent = {key for key, via in plans.items() if via is not None}
    assert sent == {("auto", "vllm", False), ("on", "vllm", False), ("on", "vllm", True),
                    ("on", "ollama", False), ("on", "ollama", True)}
    assert {plans[key] for key in sent} == {"structured_outputs"}
    _, why = grammar_plan(grammar="auto", backend="openai", thinking=True, profile=vllm)
    assert "--reasoning-parser" in why and "IMG2MUSIC_VLM_GRAMMAR=on" in why
