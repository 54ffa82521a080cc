"""The VLM client against a real local OpenAI-compatible server that can be told to fail."""

from __future__ import annotations

import base64
import logging
import operator
import re
from collections.abc import Iterator
from functools import reduce
from pathlib import Path
from typing import Any

import pytest
import torch
from langchain_core.messages import AIMessageChunk, HumanMessage
from matplotlib import cbook
from PIL import Image

from img2music.graph.context import Context
from img2music.graph.models import ModelReply, VLMUnavailable, call_model, chat_model, think_suffix
from img2music.settings import Settings
from img2music.tools.images import image_data_url, image_from_data_url, open_image
from tests.openai_server import (
    PROMPT_TOKENS,
    STREAM_PIECE,
    Behaviour,
    ScriptedServer,
    scripted_server,
)
from tests.serving import refusing_port

PHOTO = Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
MODEL = "Kwai-Keye/Keye-VL-8B-Preview"
TUNE = "X:1\nT:Harbour at dawn\nM:3/4\nL:1/8\nK:G\nB2 c2 d2 | g4 d2 | e2 d2 B2 | A6 |]\n"
BUDGET = 448 * 448
RETRY_LOG = re.compile(r"Retrying request in ([\d.]+) seconds")


@pytest.fixture
def vlm() -> Iterator[ScriptedServer]:
    with scripted_server(lambda body: TUNE, model=MODEL) as server:
        yield server


def settings_for(tmp_path: Path, **values: Any) -> Settings:
    return Settings(data_dir=tmp_path, **{"vlm_timeout_s": 10.0, "vlm_retries": 2, **values})


def model_for(url: str, settings: Settings, **context: Any) -> Any:
    return chat_model(Context.from_settings(settings, vlm_base_url=url, **context),
                      settings=settings)


def messages() -> list[HumanMessage]:
    image = image_data_url(open_image(PHOTO), max_pixels=BUDGET)
    return [HumanMessage(content=[
        {"type": "text", "text": f"Write a tune for this picture. {think_suffix(False)}"},
        {"type": "image_url", "image_url": {"url": image}},
    ])]


def unavailable(url: str, settings: Settings, **context: Any) -> str:
    """The VLMUnavailable message of one call."""
    with pytest.raises(VLMUnavailable) as caught:
        call_model(model_for(url, settings, **context), messages(), endpoint=url)
    message = str(caught.value)
    assert "\n" not in message and url in message
    return message


def backoffs(log: pytest.LogCaptureFixture) -> list[float]:
    """The waits the openai client chose between tries, as it logs them."""
    return [float(wait) for wait in RETRY_LOG.findall(log.text)]


def test_a_call_sends_keyes_sampling_and_the_image(vlm: ScriptedServer, tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    model = model_for(vlm.url, settings, vlm_model=MODEL, vlm_max_tokens=1234)
    reply = call_model(model, messages(), endpoint=vlm.url)
    assert reply == ModelReply(text=TUNE, input_tokens=PROMPT_TOKENS, output_tokens=len(TUNE) // 4,
                               seconds=reply.seconds, finish_reason="stop")
    assert reply.seconds > 0
    [body] = vlm.requests
    assert body["model"] == MODEL
    assert (body["temperature"], body["top_p"], body["top_k"]) == (0.6, 0.95, 20)
    assert body["max_completion_tokens"] == 1234
    assert "extra_body" not in body and not body.get("stream")
    text, image = body["messages"][0]["content"]
    assert text["text"].endswith("/no_think")
    url = image["image_url"]["url"]
    assert image["type"] == "image_url" and url.startswith("data:image/jpeg;base64,")
    sent = image_from_data_url(url)
    assert sent.width * sent.height <= BUDGET


def test_streaming_concatenates_the_chunks(vlm: ScriptedServer, tmp_path: Path) -> None:
    model = model_for(vlm.url, settings_for(tmp_path), vlm_model=MODEL)
    chunks = list(model.stream(messages()))
    assert len(chunks) > 5 and all(isinstance(chunk, AIMessageChunk) for chunk in chunks)
    whole = reduce(operator.add, chunks)
    assert whole.text == TUNE
    assert whole.usage_metadata is not None
    assert (whole.usage_metadata["input_tokens"], whole.usage_metadata["output_tokens"]) == \
        (PROMPT_TOKENS, -(-len(TUNE) // STREAM_PIECE))
    [body] = vlm.requests
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["top_k"] == 20


def test_two_500s_are_retried_with_growing_backoff(
    vlm: ScriptedServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    vlm.behaviour = Behaviour(fail_first=2)
    with caplog.at_level(logging.INFO, logger="openai"):
        reply = call_model(model_for(vlm.url, settings_for(tmp_path), vlm_model=MODEL),
                           messages(), endpoint=vlm.url)
    assert reply.text == TUNE
    assert [headers["x-stainless-retry-count"] for headers in vlm.headers] == ["0", "1", "2"]
    first, second = backoffs(caplog)
    assert 0.375 <= first <= 0.5 and 0.75 <= second <= 1.0  # 0.5 s then 1 s, less ≤25 % jitter


def test_500_every_time_gives_up_after_the_retries(vlm: ScriptedServer, tmp_path: Path) -> None:
    vlm.behaviour = Behaviour(status=500, retry_after_ms=10)
    message = unavailable(vlm.url, settings_for(tmp_path, vlm_retries=2), vlm_model=MODEL)
    assert len(vlm.requests) == 3
    assert "answered 500 Internal Server Error 3 times: scripted failure 500" in message


def test_a_refused_connection_is_retried_then_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with refusing_port() as port, caplog.at_level(logging.INFO, logger="openai"):
        url = f"http://127.0.0.1:{port}/v1"
        message = unavailable(url, settings_for(tmp_path, vlm_retries=1))
    assert "refused the connection" in message and "img2music vlm serve" in message
    assert "did not answer within" not in message  # refused, not left to time out
    assert len(backoffs(caplog)) == 1  # the one retry


def test_a_dropped_connection_is_retried(vlm: ScriptedServer, tmp_path: Path) -> None:
    vlm.behaviour = Behaviour(close_first=1)
    reply = call_model(model_for(vlm.url, settings_for(tmp_path), vlm_model=MODEL), messages(),
                       endpoint=vlm.url)
    assert reply.text == TUNE and len(vlm.requests) == 2


def test_a_silent_server_times_out(vlm: ScriptedServer, tmp_path: Path) -> None:
    vlm.behaviour = Behaviour(sleep_s=5)
    settings = settings_for(tmp_path, vlm_timeout_s=0.5, vlm_retries=1)
    message = unavailable(vlm.url, settings, vlm_model=MODEL)
    assert "did not answer within 0.5 s (2 tries)" in message
    assert len(vlm.requests) == 2


def test_an_unknown_model_is_named_with_the_served_ones(
    vlm: ScriptedServer, tmp_path: Path
) -> None:
    message = unavailable(vlm.url, settings_for(tmp_path), vlm_model="Keye-VL-8")
    assert "does not serve the model 'Keye-VL-8'" in message
    assert f"(it serves {MODEL})" in message
    assert len(vlm.requests) == 1  # a 4xx is not retried


def test_a_bad_request_says_what_the_server_said(vlm: ScriptedServer, tmp_path: Path) -> None:
    vlm.behaviour = Behaviour(status=400)
    message = unavailable(vlm.url, settings_for(tmp_path), vlm_model=MODEL)
    assert "answered 400 Bad Request: scripted failure 400" in message
    assert len(vlm.requests) == 1


def test_a_long_answer_is_cut_and_says_so(vlm: ScriptedServer, tmp_path: Path) -> None:
    model = model_for(vlm.url, settings_for(tmp_path), vlm_model=MODEL)
    reply = call_model(model, messages(), endpoint=vlm.url, max_chars=10)
    assert reply.truncated and reply.text == TUNE[:10]


def test_models_are_built_once_per_configuration(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    first = model_for("http://127.0.0.1:9/v1", settings)
    assert model_for("http://127.0.0.1:9/v1", settings) is first
    assert model_for("http://127.0.0.1:9/v1", settings, vlm_temperature=0.2) is not first
    assert model_for("http://127.0.0.1:9/v1", settings_for(tmp_path, vlm_retries=0)) is not first


def test_the_local_backend_wraps_one_shared_copy_of_the_weights(tmp_path: Path) -> None:
    from img2music.graph import local_vlm
    from tests.tiny_vlm import build_tiny_vlm

    saved, processor = build_tiny_vlm(eager=False)
    saved.save_pretrained(tmp_path / "keye")
    processor.save_pretrained(tmp_path / "keye")
    local_vlm.load_once.cache_clear()
    settings = settings_for(tmp_path, vlm_backend="local", vlm_model=str(tmp_path / "keye"))
    model = model_for("unused", settings, vlm_top_k=7, vlm_max_tokens=99)
    assert isinstance(model, local_vlm.LocalChatModel)
    assert (model.temperature, model.top_p, model.top_k, model.max_new_tokens) == \
        (0.6, 0.95, 7, 99)
    assert model_for("unused", settings, vlm_top_k=7, vlm_max_tokens=99) is model
    other = model_for("unused", settings, vlm_temperature=0.2, vlm_top_k=3,
                      vlm_max_tokens=12)
    assert isinstance(other, local_vlm.LocalChatModel) and other is not model
    assert other.vlm is model.vlm  # other sampling, the same loaded weights
    assert local_vlm.load_once.cache_info().misses == 1
    loaded = model.vlm.model
    assert loaded.name_or_path == str(tmp_path / "keye")
    assert all(torch.equal(mine, saved.state_dict()[name])
               for name, mine in loaded.state_dict().items())
    local_vlm.load_once.cache_clear()


def test_think_switches() -> None:
    assert (think_suffix(True), think_suffix(False)) == ("/think", "/no_think")


def test_a_big_photo_is_downscaled_to_the_budget_keeping_aspect() -> None:
    big = Image.open(PHOTO).resize((2000, 2400))
    sent = image_from_data_url(image_data_url(big, max_pixels=BUDGET))
    assert sent.width * sent.height <= BUDGET
    assert sent.width * sent.height > 0.99 * BUDGET
    assert sent.width / sent.height == pytest.approx(2000 / 2400, rel=0.01)


def test_a_small_image_is_not_upscaled_and_loses_its_alpha() -> None:
    small = Image.new("RGBA", (40, 30), (255, 0, 0, 0))
    sent = image_from_data_url(image_data_url(small, max_pixels=BUDGET))
    assert sent.size == (40, 30) and sent.mode == "RGB"


def test_white_space_in_a_data_urls_base64_is_ignored() -> None:
    url = image_data_url(Image.new("RGB", (40, 30), (0, 128, 255)), max_pixels=BUDGET)
    head, payload = url.split(",", 1)
    wrapped = head + ",\n" + "\r\n \t".join(payload[at:at + 76]
                                          for at in range(0, len(payload), 76)) + "\n"
    assert image_from_data_url(wrapped).tobytes() == image_from_data_url(url).tobytes()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://example.com/cat.jpg", "not a data URL"),
        ("data:text/plain;base64,aGVsbG8=", "holds text/plain, not an image"),
        ("data:,hello", "holds text/plain, not an image"),
        ("data:image/png,rawbytes", "not base64-encoded"),
        ("data:image/png;base64,!!not base64!!", "not valid base64"),
        ("data:image/png;base64," + base64.b64encode(b"not an image").decode(),
         "no image format recognised"),
        ("data:image/png;base64," + "A" * 2_000, "image limit"),
    ],
)
def test_a_data_url_that_is_no_usable_image_is_refused(
    url: str, message: str, tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path, max_image_bytes=1_000)
    with pytest.raises(ValueError, match=message):
        image_from_data_url(url, settings=settings)
