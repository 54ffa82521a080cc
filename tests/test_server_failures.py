"""The server's refusals and failures as a client meets them: every error code in OpenAI's
shape, the error event of a streamed run, a client that hangs up, and what is kept of a photo.

One app serves the module (with a key and small image limits); tests that need other settings
start their own.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from img2music.settings import get_settings
from tests.openai_server import Behaviour
from tests.test_compose_cli import PHOTO
from tests.test_graph import reply_for
from tests.test_server import KEY, Gate, Served, image_message, img2music_server

MAX_PIXELS = 100_000
MAX_BYTES = 60_000


def data_url(image: Image.Image, fmt: str = "JPEG", **options: Any) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buffer.getvalue()).decode()


SMALL = Image.open(PHOTO).convert("RGB").resize((160, 188))  # within the module's limits


@dataclass
class Responder:
    """The module's scripted VLM answers; a test may hold its calls behind a gate."""

    gate: Gate | None = None

    def __call__(self, body: dict[str, Any]) -> str:
        return self.gate(body) if self.gate is not None else reply_for(body)

    def reset(self) -> None:
        """Let any held call go, and hold none from now on."""
        if self.gate is not None:
            self.gate.opened.set()
        self.gate = None


@dataclass
class Shared:
    served: Served
    responder: Responder
    environment: dict[str, str]


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    responder = Responder()
    with img2music_server(tmp_path_factory.mktemp("server"), responder=responder, api_key=KEY,
                          max_image_pixels=MAX_PIXELS, max_image_bytes=MAX_BYTES) as served:
        environment = {k: v for k, v in os.environ.items() if k.startswith("IMG2MUSIC_")}
        yield Shared(served, responder, environment)


@pytest.fixture
def server(shared: Shared, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    """The module's app, with its settings in force for this test and a clean scripted VLM."""
    for name, value in shared.environment.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    vlm = shared.served.vlm
    vlm.requests.clear()
    vlm.behaviour = Behaviour()
    shared.responder.reset()
    yield shared.served
    shared.responder.reset()


def post(server: Served, body: dict[str, Any], key: str | None = KEY) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{server.url}/v1/chat/completions", json=body, headers=headers,
                      timeout=120)


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    """The OpenAI-shaped error, after checking its status and that its message is one line."""
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] and "\n" not in error["message"]
    return error


def runs_of(server: Served) -> list[Path]:
    return sorted(server.runs.iterdir()) if server.runs.exists() else []


def test_a_note_over_1000_characters_is_refused(server: Served) -> None:
    before = runs_of(server)
    error = error_of(post(server, {"model": "img2music", "messages": image_message(
        "x" * 1_001, url=data_url(SMALL))}), 400)
    assert (error["code"], error["type"]) == ("note_too_long", "invalid_request_error")
    assert "1,000" in error["message"] or "1000" in error["message"]
    assert runs_of(server) == before and server.vlm.requests == []


@pytest.mark.parametrize(("image", "limit"), [
    (Image.new("RGB", (400, 400), "navy"), f"over the {MAX_PIXELS:,}-pixel limit"),  # 160k
    (Image.effect_noise((300, 300), 128).convert("RGB"), f"over the {MAX_BYTES:,}-byte limit"),
])
def test_an_image_over_the_limits_is_refused(
    server: Served, image: Image.Image, limit: str
) -> None:
    before = runs_of(server)
    error = error_of(post(server, {"model": "img2music", "messages": image_message(
        url=data_url(image, "PNG"))}), 400)
    assert (error["code"], error["param"]) == ("invalid_image", "messages")
    assert limit in error["message"]
    assert runs_of(server) == before and server.vlm.requests == []


def test_a_wrong_or_missing_key_is_401(server: Served) -> None:
    body = {"model": "img2music", "messages": image_message(url=data_url(SMALL))}
    for key in ("wrong", None):
        error = error_of(post(server, body, key=key), 401)
        assert (error["code"], error["type"]) == ("invalid_api_key", "authentication_error")
        assert KEY not in error["message"]
    assert server.vlm.requests == []


def test_a_run_over_the_time_limit_is_504_with_its_code(tmp_path: Path) -> None:
    with img2music_server(tmp_path, behaviour=Behaviour(sleep_s=0.6),
                          server_run_timeout_s=0.5) as server:
        response = post(server, {"model": "img2music", "messages": image_message()}, key=None)
    error = error_of(response, 504)
    assert (error["code"], error["type"]) == ("timeout", "timeout_error")
    assert "0.5 s" in error["message"] and "time limit" in error["message"]
    assert len(server.vlm.requests) == 1  # stopped after the step that overran


def events(text: str) -> list[Any]:
    """The data of each server-sent event, `[DONE]` as a string."""
    return [payload if payload == "[DONE]" else json.loads(payload)
            for payload in re.findall(r"^data: (.*)$", text, re.MULTILINE)]


def test_a_streamed_run_that_fails_ends_with_an_error_event(server: Served) -> None:
    server.vlm.behaviour = Behaviour(status=503)
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", timeout=120,
                      headers={"Authorization": f"Bearer {KEY}"},
                      json={"model": "img2music", "stream": True,
                            "messages": image_message(url=data_url(SMALL))}) as response:
        assert response.status_code == 200  # the stream had begun when the model failed
        sent = events(response.read().decode())
    assert sent[-1] == "[DONE]"
    error = sent[-2]["error"]
    assert (error["code"], error["type"]) == ("vlm_unavailable", "upstream_error")
    assert server.vlm.url in error["message"] and "\n" not in error["message"]
    progress = [event["img2music"]["type"] for event in sent[:-2]]
    assert progress[0] == "queued" and "node" not in progress  # it failed in the first step
    assert not any(event.get("choices", [{}])[0].get("delta", {}).get("content")
                   for event in sent[:-2])  # no answer text before the error


def wait_for(predicate: Any, what: str, timeout_s: float = 60) -> None:
    """Until the server shows the state (polled: the state is the server's to reach)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"the server never reached: {what}"
        time.sleep(0.05)


def test_a_client_that_hangs_up_cancels_its_run(server: Served, shared: Shared) -> None:
    gate = shared.responder.gate = Gate()
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(headers=headers, timeout=120) as http:
        with http.stream("POST", f"{server.url}/v1/chat/completions",
                         json={"model": "img2music", "stream": True,
                               "messages": image_message(url=data_url(SMALL))}) as response:
            lines = response.iter_lines()  # dropping it would close the response early
            first = json.loads(next(lines).removeprefix("data: "))
            wait_for(lambda: server.vlm.in_flight == 1, "the first model call in flight")
        run = f"{server.url}/v1/runs/{first['img2music']['run_id']}"  # the connection is closed
        wait_for(lambda: http.get(run).json().get("failure_kind") == "cancelled",
                 "the run ended as cancelled, inside its first model call")
        gate.opened.set()  # the describe call's answer comes too late
        replay = http.get(f"{run}/events").text  # ends when the run has ended
        summary = http.get(run).json()
    assert events(replay)[-1]["type"] == "failed"
    assert (summary["status"], summary["failure_kind"]) == ("failed", "cancelled")
    assert len(server.vlm.requests) == 1


def test_the_stored_photo_keeps_no_metadata(server: Served) -> None:
    exif = Image.Exif()
    exif[0x010F] = "SecretCam"  # Make
    exif[0x8825] = {1: "N", 2: (51.0, 30.0, 26.0), 3: "W", 4: (0.0, 7.0, 39.0)}  # GPS
    photo = data_url(SMALL, exif=exif, comment=b"taken at 12 Main Street")
    assert all(secret in base64.b64decode(photo.split(",", 1)[1])
               for secret in (b"SecretCam", b"Main Street", b"Exif\x00\x00"))
    completion = post(server, {"model": "img2music", "messages": image_message(url=photo)})
    assert completion.status_code == 200, completion.text
    extension = completion.json()["img2music"]
    run = server.runs / extension["run_id"]
    html = httpx.get(extension["files"]["report.html"], timeout=120,
                     headers={"Authorization": f"Bearer {KEY}"}).text
    sent = [part["image_url"]["url"] for body in server.vlm.requests
            for message in body["messages"] if isinstance(message["content"], list)
            for part in message["content"] if part["type"] == "image_url"]
    kept = [("image.jpg", (run / "image.jpg").read_bytes())] + [
        (where, base64.b64decode(url.split(",", 1)[1])) for where, urls in (
            ("report.html", re.findall(r"data:image/jpeg;base64,[^\"']+", html)),
            ("the model's request", sent)) for url in urls]
    assert {where for where, _ in kept} == {"image.jpg", "report.html", "the model's request"}
    for name, data in kept:
        assert data.startswith(b"\xff\xd8"), name  # a JPEG
        for secret in (b"SecretCam", b"Main Street", b"Exif\x00\x00"):
            assert secret not in data, (name, secret)
        with Image.open(io.BytesIO(data)) as image:
            assert dict(image.getexif()) == {} and "comment" not in image.info, name
