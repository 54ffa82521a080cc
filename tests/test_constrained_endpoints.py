"""The ABC grammar goes to an endpoint exactly where it is understood: every compose call to vLLM
(`auto`), to any endpoint (`on`), to none (`off`); an endpoint that refuses the field is asked
again without it and the report says so in one line; an answer that does not match the grammar
is not counted as constrained; `doctor` says whether the endpoint constrains.

The loopback vLLM here behaves as vLLM does with a grammar: it compiles what it was sent
(xgrammar, as `img2music vlm serve` tells vLLM to) and answers inside it; without one it writes
the broken tune a model might.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import HumanMessage

from img2music.graph.context import Context
from img2music.graph.models import answer_constraint, call_model, chat_model
from img2music.pipeline import readiness
from img2music.pipeline.runs import compose
from img2music.settings import Settings
from img2music.tools.abc.check import check_abc
from img2music.tools.abc.grammar import answer_grammar, matches, rule_definition
from tests import openai_server
from tests.openai_server import Dialect, ScriptedServer, last_user_text, scripted_server
from tests.test_graph import BROKEN, DESCRIPTION, REFINED, TUNE, Examples, answer, reply_for
from tests.test_profiles import PHOTO, settings_for

WRITE = [HumanMessage(content="Compose a tune for this picture.")]


def vllm_like(body: dict[str, Any]) -> str:
    """What vLLM answers: inside the grammar it was sent, else what the model would write."""
    text = last_user_text(body)
    if "Describe this image" in text:
        return DESCRIPTION
    grammar = body.get("structured_outputs", {}).get("grammar")
    tune = REFINED if "Metrics of your tune" in text else TUNE
    if grammar is None:
        return answer(BROKEN)
    written = answer(tune)
    assert matches(grammar, written)  # the grammar compiles, and a real answer is inside it
    return written


def grammar_sent(server: ScriptedServer) -> list[bool]:
    return ["structured_outputs" in body for body in server.requests]


@pytest.mark.parametrize("dialect", ["vllm", "openai", "ollama", "generic"])
def test_a_compose_call_carries_the_grammar_exactly_when_it_should(
    dialect: Dialect, tmp_path: Path
) -> None:
    with scripted_server(vllm_like, dialect=dialect) as server:
        sent = {}
        for grammar in ("off", "auto", "on"):  # `on` last: OpenAI's refusal is remembered
            settings = settings_for(tmp_path, server, vlm_grammar=grammar)
            context = Context.from_settings(settings)
            model = chat_model(context, settings=settings)
            before = len(server.requests)
            reply = call_model(model, WRITE, endpoint=server.url,
                               constraint=answer_constraint(context, model,
                                                            backend=settings.vlm_backend))
            sent[grammar] = grammar_sent(server)[before:]
            assert reply.constrained == (sent[grammar] == [True]), grammar
    expected = {"off": [False], "auto": [dialect == "vllm"], "on": [True]}
    if dialect == "openai":  # a 400 naming the field, then the same call without it
        expected["on"] = [True, False]
    assert sent == expected
    [body] = [body for body in server.requests if "structured_outputs" in body][:1]
    assert body["structured_outputs"] == {"grammar": context.answer_grammar()}


def test_think_mode_sends_the_grammar_with_a_free_thought(tmp_path: Path) -> None:
    with scripted_server(vllm_like) as server:
        settings = settings_for(tmp_path, server, vlm_thinking=True)
        context = Context.from_settings(settings)
        model = chat_model(context, settings=settings)
        call_model(model, WRITE, endpoint=server.url,
                   constraint=answer_constraint(context, model, backend=settings.vlm_backend))
    [body] = server.requests
    grammar = body["structured_outputs"]["grammar"]
    assert grammar == context.answer_grammar()
    assert rule_definition(grammar, "thought") == "free-thought"
    assert matches(grammar, answer(TUNE, think=True))
    assert not matches(answer_grammar(), answer(TUNE, think=True))


def composed(server: ScriptedServer, tmp_path: Path, **values: Any) -> dict[str, Any]:
    result = compose(PHOTO, out_dir=tmp_path / "run",
                     settings=settings_for(tmp_path, server, **values),
                     retriever_for=lambda _: Examples(), explain="none")
    assert result.ok, result.error
    assert check_abc(result.abc or "").ok and result.abc == REFINED
    return result.report


def test_a_composition_through_vllm_is_constrained_from_compose_to_refine(
    tmp_path: Path,
) -> None:
    with scripted_server(vllm_like) as server:
        report = composed(server, tmp_path)
    assert grammar_sent(server) == [False, True, True]  # describe, compose, refine
    assert [attempt["constrained"] for attempt in report["attempts"]] == [True, True]
    assert report["vlm_endpoint"]["warnings"] == []
    html = (tmp_path / "run" / "report.html").read_text()
    assert html.count("<td>yes</td>") == 2


def test_an_endpoint_that_refuses_the_field_is_asked_again_without_it(tmp_path: Path) -> None:
    """OpenAI's API answers 400 to `structured_outputs`: the run goes on, unconstrained, and its
    report says why in one line."""
    with scripted_server(reply_for, model="gpt-4o", dialect="openai") as server:
        report = composed(server, tmp_path, vlm_grammar="on")
    assert grammar_sent(server) == [False, True, False, False]  # the refused call, asked again
    assert [attempt["constrained"] for attempt in report["attempts"]] == [False, False]
    [warning] = report["vlm_endpoint"]["warnings"]
    assert "\n" not in warning
    assert ("refused structured_outputs (400: Unrecognized request argument supplied: "
            "structured_outputs)") in warning
    assert "Unrecognized request argument supplied" in (
        tmp_path / "run" / "report.html").read_text()


def test_an_endpoint_that_ignores_the_grammar_is_not_counted_as_constrained(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """vLLM before 0.10.2 (and Ollama) drop the field without a word and write what they like."""
    with caplog.at_level(logging.WARNING, logger="img2music.graph.models"), scripted_server(
            lambda body: answer(BROKEN)) as server:
        settings = settings_for(tmp_path, server)
        context = Context.from_settings(settings)
        model = chat_model(context, settings=settings)
        reply = call_model(model, WRITE, endpoint=server.url,
                           constraint=answer_constraint(context, model,
                                                       backend=settings.vlm_backend))
    assert grammar_sent(server) == [True] and not reply.constrained
    [warning] = [record.getMessage() for record in caplog.records]
    assert "wrote an answer outside it" in warning and server.url in warning


def test_doctor_says_whether_the_endpoint_constrains(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    def grammar_check(server: ScriptedServer, **values: Any) -> readiness.Check:
        settings = settings_for(tmp_path, server, **values)
        return readiness.abc_grammar(settings, readiness.vlm_endpoint(settings))

    with scripted_server(vllm_like) as vllm:
        constrains = grammar_check(vllm)
        off = grammar_check(vllm, vlm_grammar="off")
        monkeypatch.setitem(openai_server.VERSIONS, "vllm", ("/version", "0.9.2"))
        old = grammar_check(vllm, vlm_profile="vllm")
    with scripted_server(vllm_like, model="gpt-4o", dialect="openai") as openai:
        not_sent = grammar_check(openai)
        sent_anyway = grammar_check(openai, vlm_grammar="on")
    local = readiness.abc_grammar(Settings(vlm_backend="local", data_dir=tmp_path),
                                  readiness.Check("VLM", "ok", ""))
    assert constrains.status == "ok"
    assert constrains.detail == ("compose calls are constrained: sent as structured_outputs, "
                                 "which vLLM applies; sized to 8,192 tokens a call")
    assert off.detail == ("compose calls are not constrained: not applied "
                          "(IMG2MUSIC_VLM_GRAMMAR=off)")
    assert old.status == "warning" and "vLLM 0.9.2 ignores structured_outputs" in old.detail
    assert "guided_grammar" in old.detail and "0.10.2" in old.fix
    assert not_sent.detail.startswith("compose calls are not constrained: not sent: openai "
                                      "endpoints do not read")
    assert "which openai endpoints may ignore or refuse" in sent_anyway.detail
    assert local.detail == ("compose calls are constrained: applied by the local backend with "
                            "xgrammar; sized to 8,192 tokens a call")
    small = readiness.abc_grammar(Settings(vlm_backend="local", data_dir=tmp_path,
                                           vlm_max_tokens=1000), readiness.Check("VLM", "ok", ""))
    assert small.status == "warning" and "IMG2MUSIC_VLM_MAX_TOKENS" in small.fix
    assert small.detail.startswith("compose calls are not constrained: a budget of 1000 tokens")
