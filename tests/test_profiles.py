"""Any vision model a user already has: vLLM, OpenAI's API, Ollama and other servers, each sent
what it understands, told apart by what it says about itself, and a first run that says how to
get a model when none answers."""

from __future__ import annotations

import logging
import re
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from langchain_core.messages import HumanMessage
from matplotlib import cbook
from PIL import Image
from pydantic import SecretStr
from typer.testing import CliRunner

from img2music.cli.main import app
from img2music.cli.output import console
from img2music.eval.runner import EvalOptions, run_eval
from img2music.eval.variants import resolve_variants
from img2music.graph import profiles
from img2music.graph.context import Context
from img2music.graph.models import VLMUnavailable, call_model, chat_model
from img2music.pipeline.runs import Composition, compose
from img2music.settings import Settings, get_settings
from img2music.tools.abc.check import check_abc
from img2music.tools.images import image_data_url, image_from_data_url, open_image
from tests.openai_server import (
    OPENAI_FIELDS,
    Behaviour,
    Dialect,
    ScriptedServer,
    last_user_text,
    scripted_server,
)
from tests.serving import refusing_port
from tests.test_eval import composer, judge
from tests.test_graph import REFINED, Examples, reply_for

PHOTO = Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
KEYE = "Kwai-Keye/Keye-VL-8B-Preview"


@pytest.fixture
def down() -> Iterator[str]:
    """An endpoint URL on a loopback port that refuses connections while the test runs."""
    with refusing_port() as port:
        yield f"http://127.0.0.1:{port}/v1"


SENT_TO = {  # what each kind of endpoint gets, beyond the model and the messages
    "vllm": {"stream", "temperature", "top_p", "max_completion_tokens", "top_k", "seed"},
    "openai": {"stream", "temperature", "top_p", "max_completion_tokens", "seed"},
    "ollama": {"stream", "temperature", "top_p", "max_tokens", "seed"},
    "generic": {"stream", "temperature", "top_p", "max_tokens", "seed"},
}
OLLAMA_FIELDS = {"model", "messages", "stream", "stream_options", "max_tokens", "seed", "stop",
                 "temperature", "frequency_penalty", "presence_penalty", "top_p",
                 "response_format", "tools", "reasoning", "reasoning_effort"}
"""The fields Ollama's OpenAI route reads (openai/openai.go, ChatCompletionRequest)."""
THREE_WAYS = ("img2music vlm serve", "export IMG2MUSIC_VLM_BASE_URL=https://api.openai.com/v1",
              "export IMG2MUSIC_VLM_MODEL=gpt-4o-mini", "export IMG2MUSIC_VLM_API_KEY=",
              "ollama pull qwen2.5vl:7b", "IMG2MUSIC_VLM_BASE_URL=http://127.0.0.1:11434/v1")


def settings_for(tmp_path: Path, server: ScriptedServer, **values: Any) -> Settings:
    return Settings(data_dir=tmp_path / "data", vlm_base_url=server.url, vlm_model=server.model,
                    vlm_api_key=SecretStr("sk-test"), vlm_retries=0, vlm_timeout_s=30, **values)


def compose_with(server: ScriptedServer, tmp_path: Path, name: str = "run",
                 **values: Any) -> Composition:
    result = compose(PHOTO, out_dir=tmp_path / name, settings=settings_for(tmp_path, server,
                     **values), retriever_for=lambda _: Examples(), explain="none")
    assert result.ok, result.error
    assert check_abc(result.abc or "").ok and result.abc == REFINED
    return result


def texts(body: dict[str, Any]) -> list[str]:
    """Every text part the request carried."""
    found = []
    for message in body["messages"]:
        content = message["content"]
        found += [content] if isinstance(content, str) else [
            part["text"] for part in content if part.get("type") == "text"]
    return found


def image_urls(body: dict[str, Any]) -> list[str]:
    return [part["image_url"]["url"] for message in body["messages"]
            if isinstance(message["content"], list) for part in message["content"]
            if part.get("type") == "image_url"]


@pytest.mark.parametrize(("dialect", "model"), [
    ("vllm", KEYE), ("openai", "gpt-4o-mini"), ("ollama", "qwen2.5vl:7b"),
    ("generic", "a-vision-model"),
])
def test_a_composition_succeeds_against_each_kind_sending_what_it_understands(
    dialect: Dialect, model: str, tmp_path: Path,
) -> None:
    with scripted_server(reply_for, model=model, dialect=dialect) as server:
        result = compose_with(server, tmp_path)
    endpoint = result.report["vlm_endpoint"]
    assert endpoint["profile"] == dialect and endpoint["warnings"] == []
    assert {"vllm": "owned_by 'vllm'", "openai": "owned_by 'system'",
            "ollama": "owned_by 'library'", "generic": "nothing it answered named its kind",
            }[dialect] in endpoint["chosen_by"]
    assert len(server.requests) == 3  # describe, compose, refine: no request was refused
    for index, body in enumerate(server.requests):  # describe, then the compose node's calls
        grammar = {"structured_outputs"} if dialect == "vllm" and index else set()
        assert set(body) - {"model", "messages"} == SENT_TO[dialect] | grammar, body.keys()
        assert body.get("max_completion_tokens", body.get("max_tokens")) == 8192
        assert all(url.startswith("data:image/jpeg;base64,") for url in image_urls(body))
    understood = {"openai": OPENAI_FIELDS, "ollama": OLLAMA_FIELDS}.get(dialect)
    if understood is not None:  # the fields the real server reads
        assert set().union(*server.requests) <= understood
    prompts = {text for body in server.requests for text in texts(body)}
    switches = {text for text in prompts if re.search(r"/(no_)?think\s*$", text)}
    assert len(switches) == (3 if dialect == "vllm" else 0)  # Keye's switch for Keye only
    probes = {"vllm": ["/v1/models"], "openai": ["/v1/models"], "ollama": ["/v1/models"],
              "generic": ["/v1/models", "/api/version", "/version"]}[dialect]
    assert server.gets == probes  # asked once, for the whole run
    html = (tmp_path / "run" / "report.html").read_text()
    assert f"({dialect} endpoint: " in html


def test_the_endpoint_is_asked_once_per_process_however_many_runs_start(
    tmp_path: Path,
) -> None:
    with scripted_server(reply_for, model="someone/llava:13b", dialect="ollama") as server:
        settings = settings_for(tmp_path, server)
        with ThreadPoolExecutor(max_workers=8) as pool:
            chosen = list(pool.map(lambda _: profiles.profile_for(
                server.url, api_key="sk-test", choice="auto"), range(8)))
        compose_with(server, tmp_path, "first")
        second = compose_with(server, tmp_path, "second")
        model = chat_model(Context.from_settings(settings, vlm_base_url=server.url),
                           settings=settings)
    # a model outside Ollama's library namespace: its version route tells
    assert server.gets == ["/v1/models", "/api/version"]
    assert {detection.profile.name for detection in chosen} == {"ollama"}
    assert second.report["vlm_endpoint"]["chosen_by"].endswith(
        "/api/version answered version 0.12.6")
    assert model is chat_model(Context.from_settings(settings, vlm_base_url=server.url),
                               settings=settings)


def test_a_chosen_profile_asks_nothing_and_the_host_can_tell(tmp_path: Path, down: str) -> None:
    with scripted_server(reply_for, model="gpt-4o-mini", dialect="openai") as server:
        result = compose_with(server, tmp_path, vlm_profile="openai")
    assert server.gets == []
    assert result.report["vlm_endpoint"]["chosen_by"] == "IMG2MUSIC_VLM_PROFILE=openai"
    # OpenAI's own hosts need no question at all (nothing is sent to them here)
    hosted = profiles.profile_for("https://api.openai.com/v1", api_key="sk-x", choice="auto")
    assert (hosted.profile.name, hosted.reason) == ("openai", "the host api.openai.com")
    silent = profiles.profile_for(down, api_key="sk-x", choice="auto")
    assert silent.profile.name == "generic" and "no answer yet" in silent.reason
    assert profiles.known_profile(down, choice="auto") is None  # asked again next time


def test_a_400_naming_a_parameter_is_retried_once_with_the_standard_ones(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """OpenAI's API taken for vLLM: the first request's top_k is refused, the run goes on."""
    with caplog.at_level(logging.WARNING, logger="img2music.graph.models"), scripted_server(
            reply_for, model="gpt-4o-mini", dialect="openai") as server:
        first = compose_with(server, tmp_path, "first", vlm_profile="vllm")
        refused = len(server.requests)
        second = compose_with(server, tmp_path, "second", vlm_profile="vllm")
    assert refused == 4 and len(server.requests) == 7  # one refusal, then never again
    assert server.requests[0]["top_k"] == 20
    assert all("top_k" not in body for body in server.requests[1:])
    assert all(set(body) <= OPENAI_FIELDS for body in server.requests[1:])
    [warning] = [record.getMessage() for record in caplog.records]
    assert "\n" not in warning and server.url in warning
    assert "refused top_k (400: Unrecognized request argument supplied: top_k)" in warning
    for result in (first, second):
        assert result.report["vlm_endpoint"]["warnings"] == [warning]
    assert "Unrecognized request argument supplied: top_k" in (
        tmp_path / "second" / "report.html").read_text()


def test_a_calls_own_fields_are_sent_where_understood_and_dropped_on_a_refusal(
    tmp_path: Path,
) -> None:
    """The per-call fields (issue 13's grammar) ride on the same path as top_k."""
    grammar = {"structured_outputs": {"grammar": 'root ::= "X:1"'}}
    message = [HumanMessage(content="Write a tune.")]
    with scripted_server(lambda _: "X:1", model=KEYE) as vllm:
        model = chat_model(Context.from_settings(settings_for(tmp_path, vllm)),
                           settings=settings_for(tmp_path, vllm))
        call_model(model, message, endpoint=vllm.url, extra_body=grammar)
    [body] = vllm.requests
    assert body["structured_outputs"] == grammar["structured_outputs"] and body["top_k"] == 20
    with scripted_server(lambda _: "X:1", model="gpt-4o", dialect="openai") as strict:
        settings = settings_for(tmp_path, strict, vlm_profile="vllm")
        model = chat_model(Context.from_settings(settings), settings=settings)
        reply = call_model(model, message, endpoint=strict.url, extra_body=grammar)
    refused, retried = strict.requests
    assert reply.text == "X:1"
    assert {"top_k", "structured_outputs"} <= set(refused)
    assert set(retried) == {"model", "messages", "stream", "temperature", "top_p",
                            "max_completion_tokens"}


def test_a_model_that_takes_only_its_default_sampling_is_asked_again_without_it(
    tmp_path: Path,
) -> None:
    behaviour = Behaviour(unsupported=frozenset({"temperature", "top_p"}))
    with scripted_server(lambda _: "X:1", model="o4-mini", dialect="openai",
                         behaviour=behaviour) as server:
        settings = settings_for(tmp_path, server)
        model = chat_model(Context.from_settings(settings), settings=settings)
        first = call_model(model, [HumanMessage(content="hi")], endpoint=server.url)
        second = call_model(model, [HumanMessage(content="again")], endpoint=server.url)
    assert first.text == second.text == "X:1"
    refused, *answered = server.requests
    assert refused["temperature"] == 0.6 and len(answered) == 2
    for body in answered:
        assert set(body) == {"model", "messages", "stream", "max_completion_tokens"}


def test_a_422_naming_a_field_is_a_refusal_too(tmp_path: Path) -> None:
    """Servers built on pydantic answer an unknown field with 422, not 400."""
    behaviour = Behaviour(fail_first=1, first_status=422,
                          message="top_k: Extra inputs are not permitted")
    with scripted_server(lambda _: "X:1", model="llava", dialect="generic",
                         behaviour=behaviour) as server:
        settings = settings_for(tmp_path, server, vlm_profile="vllm")
        model = chat_model(Context.from_settings(settings), settings=settings)
        reply = call_model(model, [HumanMessage(content="hi")], endpoint=server.url)
    refused, retried = server.requests
    assert reply.text == "X:1" and refused["top_k"] == 20 and "top_k" not in retried
    [warning] = profiles.refusal_for(server.url, "llava").warnings  # type: ignore[union-attr]
    assert "refused top_k (422: top_k: Extra inputs are not permitted)" in warning


def test_a_value_out_of_range_is_no_refusal_and_is_not_retried(tmp_path: Path) -> None:
    """vLLM's answer to a reply longer than the context names max_tokens, but refuses nothing:
    dropping the limit or top_k would not help, so the call fails in one line as before."""
    too_long = ("'max_tokens' or 'max_completion_tokens' is too large: 4096. This model's "
                "maximum context length is 16384 tokens and your request has 13000 input "
                "tokens (4096 > 16384 - 13000).")
    with scripted_server(lambda _: "X:1", model=KEYE,
                         behaviour=Behaviour(status=400, message=too_long)) as server:
        settings = settings_for(tmp_path, server)
        model = chat_model(Context.from_settings(settings), settings=settings)
        with pytest.raises(VLMUnavailable, match="answered 400 Bad Request: 'max_tokens'"):
            call_model(model, [HumanMessage(content="hi")], endpoint=server.url)
    [body] = server.requests
    assert body["top_k"] == 20
    assert profiles.refusal_for(server.url, KEYE) is None


def test_an_image_over_the_providers_limit_is_sent_smaller(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    limit = 30_000
    monkeypatch.setitem(profiles.PROFILES, "generic",
                        replace(profiles.PROFILES["generic"], max_image_bytes=limit))
    photo = open_image(PHOTO)
    url = image_data_url(photo, max_pixels=10**6)
    assert len(url) > limit
    behaviour = Behaviour(max_image_chars=limit)
    with scripted_server(lambda _: "X:1", model="llava", dialect="generic",
                         behaviour=behaviour) as server:
        settings = settings_for(tmp_path, server)
        model = chat_model(Context.from_settings(settings), settings=settings)
        message = HumanMessage(content=[{"type": "image_url", "image_url": {"url": url}},
                                        {"type": "text", "text": "Describe it."}])
        reply = call_model(model, [message], endpoint=server.url)
    assert reply.text == "X:1" and len(server.requests) == 1
    [sent] = image_urls(server.requests[0])
    picture = image_from_data_url(sent)
    assert len(sent) <= limit
    assert picture.width / picture.height == pytest.approx(photo.width / photo.height, rel=0.02)
    assert message.content[0]["image_url"]["url"] == url  # type: ignore[index]  # kept as it was


def test_a_photo_is_fitted_to_a_byte_limit_quality_first_then_size() -> None:
    noise = Image.effect_noise((900, 700), 90).convert("RGB")
    whole = image_data_url(noise, max_pixels=10**6)
    for limit in (len(whole) // 2, 40_000, 5_000):
        fitted = image_data_url(noise, max_pixels=10**6, max_bytes=limit)
        picture = image_from_data_url(fitted)
        assert len(fitted) <= limit
        assert picture.width / picture.height == pytest.approx(900 / 700, rel=0.05)
    photo = open_image(PHOTO)  # a photo loses a little quality before it loses pixels
    fitted = image_data_url(photo, max_pixels=10**6, max_bytes=100_000)
    assert len(image_data_url(photo, max_pixels=10**6)) > 100_000 >= len(fitted)
    assert image_from_data_url(fitted).size == photo.size
    with pytest.raises(ValueError, match="no JPEG fits"):
        image_data_url(noise, max_pixels=10**6, max_bytes=100)


def test_the_judge_uses_the_profile_of_its_own_endpoint(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    (images / "portrait.jpg").write_bytes(PHOTO.read_bytes())
    with scripted_server(composer, model=KEYE) as vlm, scripted_server(
            judge, model="gpt-4o-mini", dialect="openai") as hosted:
        settings = Settings(data_dir=tmp_path / "data", vlm_base_url=vlm.url, vlm_model=KEYE,
                            judge_base_url=hosted.url, judge_model=hosted.model,
                            judge_max_tokens=777, vlm_retries=0)
        result = run_eval(EvalOptions(
            images=[images], out=tmp_path / "results", repeats=1, clip=False,
            variants=resolve_variants(["no-rag-no-refine"])), settings=settings)
    assert result.errors == [] and result.judge_calls == 8
    assert all("top_k" in body for body in vlm.requests)
    assert len(hosted.requests) == 8 and hosted.gets == ["/v1/models"]
    for body in hosted.requests:
        assert set(body) == {"model", "messages", "stream", "temperature", "top_p",
                             "max_completion_tokens"}
        assert body["max_completion_tokens"] == 777
        assert not any(text.rstrip().endswith("think") for text in texts(body))
    assert "Judge endpoint profile: openai (" in result.markdown
    assert result.summary.meta["judge"]["endpoint_profile"]["profile"] == "openai"


@pytest.fixture
def no_model(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, down: str) -> Any:
    monkeypatch.setenv("IMG2MUSIC_VLM_BASE_URL", down)
    monkeypatch.setenv("IMG2MUSIC_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("IMG2MUSIC_CLIP_MODEL", "img2music-tiny")  # doctor measures a build
    monkeypatch.setenv("IMG2MUSIC_CLIP_PRETRAINED", "none")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_compose_with_no_model_says_the_three_ways_to_get_one(
    no_model: None, tmp_path: Path, down: str,
) -> None:
    result = CliRunner().invoke(app, ["compose", str(PHOTO), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert f"No model answered at {down} (ConnectError" in result.stderr
    for way in THREE_WAYS:
        assert way in result.stderr, way
    assert not (tmp_path / "out").exists()  # nothing was tried that could only fail


def test_doctor_with_no_model_says_the_three_ways_and_not_when_one_answers(
    no_model: None, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(console, "width", 250)  # the table's rows on one line each
    down = CliRunner().invoke(app, ["doctor"])
    assert down.exit_code == 1 and "not ready: VLM endpoint" in down.stderr
    for way in THREE_WAYS:
        assert way in down.stdout, way
    with scripted_server(lambda _: "") as server:
        monkeypatch.setenv("IMG2MUSIC_VLM_BASE_URL", server.url)
        monkeypatch.setenv("IMG2MUSIC_VLM_MODEL", "not-served")
        get_settings.cache_clear()
        wrong_model = CliRunner().invoke(app, ["doctor"])
        monkeypatch.setenv("IMG2MUSIC_VLM_MODEL", server.model)
        get_settings.cache_clear()
        ready = CliRunner().invoke(app, ["doctor"])
    assert wrong_model.exit_code == 1 and "No model answered" not in wrong_model.output
    assert "serves scripted-vlm, not not-served" in wrong_model.stdout
    assert ready.exit_code == 0, ready.output
    assert "profile vllm" in ready.stdout and "No model answered" not in ready.output


def test_serve_with_no_model_says_the_three_ways_and_serves_anyway(
    no_model: None, monkeypatch: pytest.MonkeyPatch,
) -> None:
    served_ports: list[int] = []

    def serve_nothing(server: uvicorn.Server, sockets: list[socket.socket]) -> None:
        for listening in sockets:
            served_ports.append(listening.getsockname()[1])
            listening.close()

    monkeypatch.setattr(uvicorn.Server, "run", serve_nothing)
    result = CliRunner().invoke(app, ["serve", "--port", "0"])
    assert result.exit_code == 0, result.output
    assert "warning: No model answered at" in result.stderr
    for way in THREE_WAYS:
        assert way in result.stderr, way
    assert len(served_ports) == 1 and f"127.0.0.1:{served_ports[0]}/" in result.stdout


def test_the_scripted_openai_server_is_as_strict_as_openai(tmp_path: Path) -> None:
    """The oracle itself: a request with a field OpenAI does not know gets OpenAI's 400."""
    import httpx

    with scripted_server(lambda body: last_user_text(body), model="gpt-4o",
                         dialect="openai") as server:
        refused = httpx.post(server.url + "/chat/completions", json={
            "model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "top_k": 20})
        accepted = httpx.post(server.url + "/chat/completions", json={
            "model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}],
            "max_completion_tokens": 5})
    assert refused.status_code == 400
    assert refused.json() == {"error": {
        "message": "Unrecognized request argument supplied: top_k",
        "type": "invalid_request_error", "param": None, "code": None}}
    assert accepted.status_code == 200
    assert accepted.json()["choices"][0]["message"]["content"] == "hi"
