"""The OpenAI-compatible endpoint, served on loopback, as real OpenAI and LangChain clients use it.

The VLM behind the graph is the scripted loopback server, so the whole path runs: the request,
the graph with its real OpenAI client, the checks, the rendering, the files.
"""

from __future__ import annotations

import base64
import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from langchain_core.messages import HumanMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_openai import ChatOpenAI

from img2music.graph.nodes import EXAMPLES_TO_SPARE
from img2music.server.app import create_app
from img2music.settings import Settings, get_settings
from img2music.tools.abc.check import check_abc
from img2music.tools.abc.extract import extract_abc
from tests.openai_server import Behaviour, ScriptedServer, last_user_text, scripted_server
from tests.realworld import papers_tune
from tests.serving import refusing_port, served, within
from tests.test_compose_cli import PHOTO
from tests.test_graph import Examples, reply_for

PHOTO_URL = "data:image/jpeg;base64," + base64.b64encode(PHOTO.read_bytes()).decode()
KEY = "sk-test-img2music"


@dataclass
class Served:
    url: str  # the img2music server
    vlm: ScriptedServer
    examples: Examples
    settings: Settings

    @property
    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=KEY, max_retries=0)

    @property
    def runs(self) -> Path:
        return self.settings.data_dir / "runs"


@contextmanager
def img2music_server(tmp_path: Path, responder: Any = reply_for, behaviour: Behaviour | None = None,
                     **settings: Any) -> Iterator[Served]:
    """The app against a scripted VLM; settings as IMG2MUSIC_* values for this test only."""
    with scripted_server(responder, behaviour=behaviour) as vlm:
        values = {"data_dir": str(tmp_path / "data"), "vlm_base_url": vlm.url,
                  "vlm_model": vlm.model, "clip_model": "img2music-tiny",
                  "clip_pretrained": "none", "explain": "none", "vlm_retries": "0",
                  **{name: str(value) for name, value in settings.items()}}
        environment = {f"IMG2MUSIC_{name.upper()}": value for name, value in values.items()}
        saved = {name: os.environ.get(name) for name in environment}
        os.environ.update(environment)
        get_settings.cache_clear()
        try:
            examples = Examples()
            app = create_app(get_settings(), retriever_for=lambda _: examples)
            with served(app) as url:
                yield Served(url=url, vlm=vlm, examples=examples, settings=get_settings())
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            get_settings.cache_clear()


class Gate:
    """A scripted VLM's answers, held back until the test opens the gate: a run waits inside a
    model call for exactly as long as the test needs, with no sleeps."""

    def __init__(self, responder: Any = reply_for) -> None:
        self.responder = responder
        self.opened = threading.Event()

    def __call__(self, body: dict[str, Any]) -> str:
        if not self.opened.wait(120):
            raise RuntimeError("the test never opened the gate")
        text: str = self.responder(body)
        return text


def image_message(text: str = "", url: str = PHOTO_URL) -> list[Any]:
    parts: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": url}}]
    if text:
        parts.append({"type": "text", "text": text})
    return [{"role": "user", "content": parts}]


def test_a_composition_answers_with_the_tune_its_measures_and_its_files(tmp_path: Path) -> None:
    with img2music_server(tmp_path) as server:
        completion = server.client.chat.completions.create(
            model="img2music", messages=image_message("something solemn"),
            extra_body={"img2music": {"explain": "clip"}})
        extension: dict[str, Any] = completion.model_extra["img2music"]  # type: ignore[index]
        content = completion.choices[0].message.content or ""
        assert completion.choices[0].finish_reason == "stop"
        # A plain chat client shows the motivation, then the tune in an abc block.
        assert content.index("calm dignity") < content.index("```abc\nX:1")
        assert extract_abc(content).abc == extension["abc"]
        assert check_abc(extension["abc"]).ok and "T:Dignity, refined" in extension["abc"]
        assert extension["status"] == "done" and extension["rounds"] == 1
        assert extension["metrics"]["pitch_range"] > 0
        assert "something solemn" in last_user_text(server.vlm.requests[0])
        assert completion.usage is not None
        assert completion.usage.prompt_tokens == 321 * len(server.vlm.requests)
        assert completion.usage.total_tokens == (completion.usage.prompt_tokens
                                                 + completion.usage.completion_tokens)
        files = extension["files"]
        expected = {"tune.abc", "tune.mid", "tune.ogg", "score.svg", "attention.png",
                    "report.html", "report.json"}
        assert expected <= set(files)
        run = server.runs / extension["run_id"]
        # The audio and the page that embeds it are made when first asked for, off the answer.
        assert not (run / "tune.ogg").exists() and not (run / "report.html").exists()
        with httpx.Client(headers={"Authorization": f"Bearer {KEY}"}, timeout=120) as http:
            fetched = {name: http.get(url) for name, url in files.items()}
        assert all(response.status_code == 200 for response in fetched.values())
        assert fetched["tune.abc"].text == extension["abc"]
        assert fetched["tune.mid"].content.startswith(b"MThd")
        assert fetched["tune.mid"].headers["content-type"] == "audio/midi"
        assert fetched["tune.ogg"].content[:4] == b"OggS"
        assert "tune.wav" not in files  # an intermediate, not kept unless asked
        assert fetched["score.svg"].text.lstrip().startswith(("<?xml", "<svg"))
        assert fetched["attention.png"].content.startswith(b"\x89PNG")
        report = json.loads(fetched["report.json"].text)
        assert report["final_abc"] == extension["abc"]
        assert "default-src 'none'" in fetched["report.html"].headers["content-security-policy"]
        # No seed was asked for: the run chose one, and its report and answer name it.
        seed = extension["seed"]
        assert isinstance(seed, int) and report["settings"]["seed"] == seed
        assert f"seed {seed}" in fetched["report.html"].text
        assert all(isinstance(body.get("seed"), int) for body in server.vlm.requests)
        run = server.runs / extension["run_id"]
        assert (run / "tune.abc").read_text(encoding="utf-8") == extension["abc"]


def test_streaming_sends_progress_in_extensions_and_only_the_answer_as_content(
    tmp_path: Path,
) -> None:
    with img2music_server(tmp_path) as server:
        stream = server.client.chat.completions.create(
            model="img2music", messages=image_message(), stream=True,
            stream_options={"include_usage": True})
        chunks = list(stream)
    contents = [c.choices[0].delta.content for c in chunks if c.choices]
    answers = [text for text in contents if text]
    assert len(answers) == 1 and "```abc\nX:1" in answers[0]
    extensions = [(c.model_extra or {}).get("img2music") for c in chunks]
    nodes = [e["node"] for e in extensions if e and e.get("type") == "node"]
    assert nodes == ["describe", "retrieve", "compose", "parse_check", "evaluate", "compose",
                     "parse_check", "evaluate", "explain"]
    checked = [e["update"]["attempts"][0] for e in extensions
               if e and e.get("node") == "parse_check"]
    assert [attempt["valid"] for attempt in checked] == [True, True]
    assert all("raw" not in attempt for attempt in checked)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and finishes.count("stop") == 1
    result = next(e for e in extensions if e and e.get("type") == "result")
    assert result["abc"] in answers[0] and "tune.mid" in result["files"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == result["usage"]["total_tokens"] > 0


def test_langchain_chains_through_the_endpoint(tmp_path: Path) -> None:
    with img2music_server(tmp_path) as server:
        model = ChatOpenAI(model="img2music", base_url=f"{server.url}/v1", api_key=KEY,  # type: ignore[arg-type]
                           temperature=0.3, max_retries=0, timeout=120)
        message = HumanMessage(content=[
            {"type": "image_url", "image_url": {"url": PHOTO_URL}},
            {"type": "text", "text": "a quiet march"}])
        chain = model | StrOutputParser() | (lambda text: extract_abc(text).abc)
        tune = chain.invoke([message])
        streamed = "".join(str(chunk.content) for chunk in model.stream([message]))
    assert tune is not None and check_abc(tune).ok
    assert extract_abc(streamed).abc == tune
    assert {body["temperature"] for body in server.vlm.requests} == {0.3}


def test_request_fields_and_the_extension_set_the_run(tmp_path: Path) -> None:
    with img2music_server(tmp_path) as server:
        completion = server.client.chat.completions.create(
            model="img2music", messages=image_message(), temperature=0.2, max_tokens=900,
            frequency_penalty=0.5, user="someone",  # OpenAI fields img2music ignores
            extra_body={"img2music": {"rag_k": 1, "refine_rounds": 0}, "seed": 7})
    extension: dict[str, Any] = completion.model_extra["img2music"]  # type: ignore[index]
    assert extension["rounds"] == 0 and len(server.vlm.requests) == 2
    assert [query["k"] for query in server.examples.queries] == [1 + EXAMPLES_TO_SPARE]
    assert len(extension["examples"]) == 1
    assert len(extension["examples"]) == 1
    assert {body["temperature"] for body in server.vlm.requests} == {0.2}
    assert {body["max_completion_tokens"] for body in server.vlm.requests} == {900}


def test_a_seed_is_sent_to_the_vlm_and_the_same_seed_sends_the_same_seeds(
    tmp_path: Path,
) -> None:
    """OpenAI's own `seed` field sets the run's seed, `img2music.seed` wins over it; each model
    call of a run gets a seed of its own, the same ones again for the same seed."""
    def sent_seeds(server: Served, **body: Any) -> tuple[int, list[Any]]:
        before = len(server.vlm.requests)
        completion = server.client.chat.completions.create(
            model="img2music", messages=image_message(), extra_body=body)
        extension: dict[str, Any] = completion.model_extra["img2music"]  # type: ignore[index]
        return extension["seed"], [request.get("seed")
                                   for request in server.vlm.requests[before:]]

    with img2music_server(tmp_path) as server:
        seed, seeds = sent_seeds(server, seed=7, img2music={"refine_rounds": 0})
        assert seed == 7 and len(seeds) == 2  # describe, compose
        assert all(isinstance(sent, int) for sent in seeds) and seeds[0] != seeds[1]
        assert sent_seeds(server, seed=8, img2music={"refine_rounds": 0, "seed": 7}) == (
            7, seeds)
        other, others = sent_seeds(server, img2music={"refine_rounds": 0, "seed": 8})
        assert other == 8 and set(others).isdisjoint(seeds)


def test_without_rag_nothing_is_retrieved(tmp_path: Path) -> None:
    with img2music_server(tmp_path) as server:
        completion = server.client.chat.completions.create(
            model="img2music", messages=image_message(),
            extra_body={"img2music": {"rag": False, "refine": False}})
    assert server.examples.queries == []
    assert completion.model_extra["img2music"]["examples"] == []  # type: ignore[index]


def post(server: Served, body: bytes | dict[str, Any], **headers: str) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{server.url}/v1/chat/completions", content=content, timeout=60,
                      headers={"Content-Type": "application/json", **headers})


@pytest.fixture(scope="module")
def refusing_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One app for the requests it must refuse before anything runs (nothing ever runs on it)."""
    with img2music_server(tmp_path_factory.mktemp("refusals")) as server:
        yield server


@pytest.mark.parametrize(("body", "status", "code"), [
    ({"model": "img2music", "messages": [{"role": "user", "content": "a tune please"}]}, 400,
     "no_image"),
    ({"model": "img2music", "messages": image_message(url="data:image/png;base64,@@@!")}, 400,
     "invalid_base64"),
    ({"model": "img2music", "messages": image_message(
        url="data:image/png;base64," + base64.b64encode(b"not a picture at all").decode())},
     400, "invalid_image"),
    ({"model": "img2music", "messages": image_message(url="file:///etc/passwd")}, 400,
     "invalid_image_url"),
    ({"model": "img2music", "messages": image_message(url="http://127.0.0.1:1/x.png")}, 400,
     "image_urls_disabled"),
    ({"model": "img2music", "messages": [{"role": "user", "content": [
        *image_message()[0]["content"], *image_message()[0]["content"]]}]}, 400,
     "too_many_images"),
    ({"model": "gpt-4o", "messages": image_message()}, 404, "model_not_found"),
    ({"model": "img2music", "messages": image_message(), "n": 9}, 400, "invalid_value"),
    ({"model": "img2music", "messages": image_message(), "n": 5}, 400, "too_many_takes"),
    ({"model": "img2music", "messages": image_message(), "img2music": {"takes": 0}}, 400,
     "invalid_value"),
    ({"model": "img2music", "messages": image_message(), "img2music": {"rag_k": 99}}, 400,
     "invalid_value"),
    ({"model": "img2music", "messages": image_message(), "img2music": {"k": 1}}, 400,
     "unknown_option"),
    ({"model": "img2music", "messages": image_message(), "img2music": {"vlm_model": "x"}}, 400,
     "unknown_option"),
    ({"messages": image_message()}, 400, "invalid_value"),
    (b"{not json", 400, "invalid_json"),
])
def test_bad_requests_are_refused_in_openais_error_shape(
    refusing_server: Served, body: bytes | dict[str, Any], status: int, code: str
) -> None:
    server = refusing_server
    response = post(server, body)
    runs = list(server.runs.glob("*")) if server.runs.exists() else []
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == code and error["type"]
    assert error["message"] and "\n" not in error["message"]
    assert server.vlm.requests == [] and runs == []  # refused before anything ran


def test_a_budget_too_small_for_the_operators_grammar_is_refused_before_anything_runs(
        tmp_path: Path) -> None:
    with img2music_server(tmp_path, vlm_grammar="on") as server:
        response = post(server, {"model": "img2music", "messages": image_message(),
                                 "max_tokens": 1000})
        runs = list(server.runs.glob("*")) if server.runs.exists() else []
        assert server.vlm.requests == [] and runs == []
    error = response.json()["error"]
    assert response.status_code == 400 and error["code"] == "invalid_value"
    assert error["message"].startswith("vlm_max_tokens: a budget of 1000 tokens a call is too "
                                       "small for a constrained tune")


def test_the_openai_client_raises_the_matching_errors(refusing_server: Served) -> None:
    client = refusing_server.client
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="gpt-4o", messages=image_message())
    with pytest.raises(openai.BadRequestError, match="no image"):
        client.chat.completions.create(
            model="img2music", messages=[{"role": "user", "content": "hello"}])


def test_a_body_over_the_limit_is_refused_before_it_is_read(tmp_path: Path) -> None:
    with img2music_server(tmp_path, server_max_body_bytes=50_000) as server:
        big = {"model": "img2music", "messages": image_message(
            url="data:image/png;base64," + "A" * 60_000)}
        response = post(server, big)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "body_too_large"


def test_image_urls_are_fetched_only_when_allowed(tmp_path: Path) -> None:
    # Loopback is refused unless the operator lists it (tests/test_attacks.py); listed here, as
    # an internal image store would be.
    photo_url = "http://127.0.0.1:{port}/photo.jpg"
    with static_file(PHOTO) as port, img2music_server(
            tmp_path, server_allow_image_urls="true",
            server_image_url_networks="127.0.0.1/32") as server:
        completion = server.client.chat.completions.create(
            model="img2music", messages=image_message(url=photo_url.format(port=port)))
        missing = post(server, {"model": "img2music", "messages": image_message(
            url=photo_url.format(port=port).replace("photo", "nothing"))})
    assert completion.model_extra["img2music"]["status"] == "done"  # type: ignore[index]
    assert missing.status_code == 400 and "cannot fetch" in missing.json()["error"]["message"]


@contextmanager
def static_file(path: Path) -> Iterator[int]:
    """One file served on loopback, as an image host would."""
    import functools
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            """Quiet."""

        def translate_path(self, request_path: str) -> str:
            return str(path) if request_path == "/photo.jpg" else "/nonexistent"

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet))
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_a_vlm_that_is_down_is_a_502_naming_it_and_health_says_so(tmp_path: Path) -> None:
    with img2music_server(tmp_path, behaviour=Behaviour(status=503)) as server:
        response = post(server, {"model": "img2music", "messages": image_message()})
        with pytest.raises(openai.APIError, match=r"127\.0\.0\.1"):
            list(server.client.chat.completions.create(
                model="img2music", messages=image_message(), stream=True))
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "vlm_unavailable" and server.vlm.url in error["message"]
    with refusing_port() as port, img2music_server(
            tmp_path, vlm_base_url=f"http://127.0.0.1:{port}/v1") as server:
        health = httpx.get(f"{server.url}/health")
    assert health.status_code == 503 and health.json()["status"] == "unavailable"
    vlm = next(c for c in health.json()["checks"] if c["name"] == "VLM endpoint")
    assert vlm["status"] == "missing" and f"127.0.0.1:{port}" in vlm["detail"]


def test_health_reports_each_part(tmp_path: Path) -> None:
    with img2music_server(tmp_path, api_key=KEY) as server:
        anonymous = httpx.get(f"{server.url}/health")  # no key needed: ready or not
        health = httpx.get(f"{server.url}/health", headers={"Authorization": f"Bearer {KEY}"})
    assert anonymous.status_code == 200 and anonymous.json() == {"status": "ready"}
    assert health.status_code == 200 and health.json()["status"] == "ready"
    names = {check["name"] for check in health.json()["checks"]}
    assert {"VLM endpoint", "abc2midi", "abcm2ps", "fluidsynth", "SoundFont"} <= names
    assert any(name.startswith("index") for name in names)


def test_no_valid_tune_is_a_200_that_explains_the_failure(tmp_path: Path) -> None:
    def no_music(body: dict[str, Any]) -> str:
        return "I would rather describe a painting than write music."

    with img2music_server(tmp_path, responder=no_music, max_repairs=1) as server:
        completion = server.client.chat.completions.create(
            model="img2music", messages=image_message())
    extension: dict[str, Any] = completion.model_extra["img2music"]  # type: ignore[index]
    assert extension["status"] == "failed" and extension["failure_kind"] == "no_tune"
    assert extension["abc"] is None and extension["attempts"] == 2
    content = completion.choices[0].message.content or ""
    assert content.startswith("No tune this time: no valid tune within the limits")
    assert "report.json" in extension["files"]


def never_fixes_the_papers_tune(body: dict[str, Any]) -> str:
    """A model that answers every compose, repair and refine call with the paper's tune."""
    return reply_for(body) if "Describe this image" in last_user_text(body) else papers_tune()


def test_a_tune_that_plays_is_delivered_with_its_faults(tmp_path: Path) -> None:
    with img2music_server(tmp_path, responder=never_fixes_the_papers_tune) as server:
        completion = server.client.chat.completions.create(
            model="img2music", messages=image_message())
        calls = len(server.vlm.requests)
    extension: dict[str, Any] = completion.model_extra["img2music"]  # type: ignore[index]
    assert extension["status"] == "done" and extension["failure_kind"] is None
    assert extension["fault_count"] == 28
    assert extension["faults"][0].startswith("line 8, col 13: bar 2 lasts 3/8 but M:6/4")
    assert "T: Sunset Over the Coast" in (completion.choices[0].message.content or "")
    assert calls == 4  # describe, compose, one repair and one refinement, each answered alike


def test_with_a_key_every_route_but_health_needs_it(tmp_path: Path) -> None:
    with img2music_server(tmp_path, api_key=KEY) as server:
        anonymous = openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            anonymous.models.list()
        with pytest.raises(openai.AuthenticationError):
            anonymous.chat.completions.create(model="img2music", messages=image_message())
        completion = server.client.chat.completions.create(model="img2music",
                                                           messages=image_message())
        file_url = completion.model_extra["img2music"]["files"]["tune.abc"]  # type: ignore[index]
        assert httpx.get(file_url).status_code == 401
        assert httpx.get(file_url, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
        assert [m.id for m in server.client.models.list()] == ["img2music"]


def test_without_a_key_no_authentication_is_asked(refusing_server: Served) -> None:
    models = httpx.get(f"{refusing_server.url}/v1/models")
    assert models.status_code == 200 and models.json()["data"][0]["id"] == "img2music"


def test_beyond_the_queue_requests_get_429_at_once(tmp_path: Path) -> None:
    gate = Gate()
    body = {"model": "img2music", "messages": image_message(), "stream": True,
            "img2music": {"refine": False}}
    # A streamed answer starts (200) once its run is admitted: the first runs, held in its
    # first model call, the second waits, the third finds no room.
    with img2music_server(tmp_path, responder=gate, server_max_concurrent_runs=1,
                          server_max_queued_runs=1) as server, httpx.Client(
            base_url=f"{server.url}/v1", timeout=120) as http, \
            http.stream("POST", "/chat/completions", json=body) as running, \
            http.stream("POST", "/chat/completions", json=body) as waiting:
        refused = http.post("/chat/completions", json={**body, "stream": False})
        gate.opened.set()
        answers = ["".join(response.iter_text()) for response in (running, waiting)]
    assert (running.status_code, waiting.status_code, refused.status_code) == (200, 200, 429)
    error = refused.json()["error"]
    assert error["type"] == "rate_limit_error" and error["code"] == "rate_limit_exceeded"
    assert refused.headers["retry-after"] == "1"
    assert all('"finish_reason": "stop"' in text and "```abc" in text for text in answers)
    assert server.vlm.most_in_flight == 1


def test_a_run_can_be_followed_and_cancelled(tmp_path: Path) -> None:
    gate = Gate()
    with img2music_server(tmp_path, responder=gate) as server:
        stream = server.client.chat.completions.create(
            model="img2music", messages=image_message(), stream=True)
        first = next(iter(stream))
        run_id = first.model_extra["img2music"]["run_id"]  # type: ignore[index]
        run = f"{server.url}/v1/runs/{run_id}"
        assert httpx.get(run).json()["status"] == "running"
        within(60, "the describe call in flight", lambda: server.vlm.in_flight == 1)
        assert httpx.delete(run).json()["status"] == "cancelling"
        gate.opened.set()  # the describe call's answer comes too late: the run has stopped
        rest = list(stream)
        events = [json.loads(line[6:]) for line in httpx.get(f"{run}/events").text.splitlines()
                  if line.startswith("data: ")]
        summary = httpx.get(run).json()
    assert rest[-1].choices[0].finish_reason == "stop"
    assert "cancelled by request" in (rest[-2].choices[0].delta.content or "")
    assert events[0]["type"] == "queued" and events[-1]["type"] == "failed"
    assert summary["status"] == "failed" and summary["failure_kind"] == "cancelled"
    assert len(server.vlm.requests) == 1


def test_a_run_over_the_time_limit_is_stopped_with_504(tmp_path: Path) -> None:
    with img2music_server(tmp_path, behaviour=Behaviour(sleep_s=0.6),
                          server_run_timeout_s=0.5) as server:
        response = post(server, {"model": "img2music", "messages": image_message()})
    assert response.status_code == 504
    assert "time limit" in response.json()["error"]["message"]


def test_files_are_only_those_a_run_wrote(tmp_path: Path) -> None:
    with img2music_server(tmp_path) as server:
        completion = server.client.chat.completions.create(
            model="img2music", messages=image_message(), extra_body={"img2music": {
                "refine": False}})
        run_id = completion.model_extra["img2music"]["run_id"]  # type: ignore[index]
        (server.runs / run_id / "secret.txt").write_text("not listed", encoding="utf-8")
        base = f"{server.url}/v1/runs"
        statuses = [httpx.get(f"{base}/{path}").status_code for path in (
            f"{run_id}/secret.txt", f"{run_id}/image.jpg", f"{run_id}/..%2F..%2Fsettings",
            "0123456789abcdef0123/tune.abc", "../etc/passwd", f"{run_id}/tune.abc")]
    assert statuses == [404, 404, 404, 404, 404, 200]
