"""The vision-language model behind one interface, and its failures as one clear line.

The default backend is any OpenAI-compatible endpoint (vLLM serving Keye-VL-8B) through
langchain-openai. Retries are the openai client's own: connection errors, timeouts, 408, 409,
429 and 5xx are retried `vlm_retries` times with exponential backoff (0.5 s doubling, at most
8 s, up to 25 % jitter; a server's `Retry-After` of up to two minutes is honoured instead),
so one call takes at most about `(vlm_retries + 1) × vlm_timeout_s` plus the backoff.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import math
import re
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from http import HTTPStatus
from typing import Any, Literal, cast

import openai
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    MessageLikeRepresentation,
    SystemMessage,
)
from langchain_openai import ChatOpenAI
from PIL import Image
from pydantic import SecretStr

from img2music.graph.context import Context
from img2music.graph.state import Message
from img2music.settings import Settings, get_settings
from img2music.tools.grammar import answer_grammar
from img2music.tools.images import BadImage, open_image, to_rgb

logger = logging.getLogger(__name__)

MAX_REPLY_CHARS = 200_000
EndpointRole = Literal["VLM", "judge"]
"""Longest model text kept; a runaway answer is cut here rather than filling memory and logs."""
CONNECT_TIMEOUT_S = 10.0
"""A host that does not even accept the connection is not worth the long generation timeout."""
JPEG_QUALITY = 90
_DATA_URL = re.compile(r"data:(?P<media>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^,;]*)*),", re.ASCII)
_DETAIL_CHARS = 300
REASONING_END = "</think>"
"""Where Keye's reasoning ends in think mode; a grammar constrains only what follows it."""


class VLMUnavailable(RuntimeError):
    """The model could not answer; the message names the endpoint and what happened."""


@dataclass(frozen=True)
class ModelReply:
    """One answer of the model, with what it cost."""

    text: str
    input_tokens: int
    output_tokens: int
    seconds: float
    truncated: bool = False  # the text was longer than the cap and was cut
    finish_reason: str | None = None  # "length" means the model hit max_tokens
    constrained: bool = False  # the backend masked the answer with a grammar


@dataclass(frozen=True)
class AnswerConstraint:
    """The grammar a compose call's answer must match, and where the constraint starts."""

    grammar: str
    reasoning_end: str | None = None  # constrain only after this marker (think mode)

    def call_options(self) -> dict[str, Any]:
        """The keyword arguments a chat model that applies grammars takes for one call."""
        return {"grammar": self.grammar, "reasoning_end": self.reasoning_end}


def think_suffix(thinking: bool) -> str:
    """Keye's switch between think and no-think mode, appended to a prompt."""
    return "/think" if thinking else "/no_think"


def image_data_url(image: Image.Image, *, max_pixels: int) -> str:
    """The image as a JPEG data URL within the model's pixel budget, aspect kept.

    Downscaling here keeps requests and saved runs small; the model's processor would shrink
    a larger image anyway. Images are never upscaled.
    """
    if max_pixels <= 0:
        raise ValueError(f"the pixel budget must be positive, not {max_pixels}")
    image = to_rgb(image)
    width, height = image.size
    if width * height > max_pixels:
        scale = math.sqrt(max_pixels / (width * height))
        size = (max(1, math.floor(width * scale)), max(1, math.floor(height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def image_from_data_url(url: str, *, settings: Settings | None = None) -> Image.Image:
    """The image in a base64 data URL, opened with the same checks as an uploaded file."""
    settings = settings or get_settings()
    match = _DATA_URL.match(url)
    if match is None:
        raise BadImage("not a data URL (expected `data:image/...;base64,...`)")
    media = match["media"] or "text/plain"
    if not media.lower().startswith("image/"):
        raise BadImage(f"the data URL holds {media}, not an image")
    if ";base64" not in match["params"].lower():
        raise BadImage("the data URL is not base64-encoded")
    payload = url[match.end():]
    if len(payload) > 4 * math.ceil(settings.max_image_bytes / 3):
        raise BadImage(f"the data URL holds more than the {settings.max_image_bytes:,}-byte "
                       "image limit")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as error:
        raise BadImage(f"the data URL is not valid base64: {error}") from error
    return open_image(data, settings=settings)


@dataclass(frozen=True)
class _OpenAIConfig:
    base_url: str
    model: str
    api_key: str
    temperature: float
    top_p: float
    top_k: int | None  # None: not sent, for servers other than vLLM
    max_tokens: int
    timeout_s: float
    retries: int


def chat_model(context: Context, *, settings: Settings | None = None) -> BaseChatModel:
    """The chat model for this run's context, built once per distinct configuration."""
    settings = settings or get_settings()
    if settings.vlm_backend == "local":
        return _local_model(context.vlm_model, context.temperature, context.top_p,
                            context.top_k, context.max_tokens)
    return _openai_model(_OpenAIConfig(
        base_url=context.vlm_base_url, model=context.vlm_model, api_key=settings.vlm_api_key,
        temperature=context.temperature, top_p=context.top_p, top_k=context.top_k,
        max_tokens=context.max_tokens, timeout_s=settings.vlm_timeout_s,
        retries=settings.vlm_retries,
    ))


def answer_constraint(context: Context, *, settings: Settings | None = None
                      ) -> AnswerConstraint | None:
    """The ABC grammar for this run's compose calls, or None where it is not applied.

    The local backend applies it with xgrammar (`auto` means on there). An OpenAI-compatible
    endpoint gets no grammar from this build, whatever the setting: a server that did not expect
    the field might refuse the call.
    """
    settings = settings or get_settings()
    if context.grammar == "off":
        return None
    if settings.vlm_backend != "local":
        if context.grammar == "on":
            _warn_grammar_not_sent()
        return None
    return AnswerConstraint(answer_grammar(),
                            reasoning_end=REASONING_END if context.thinking else None)


@cache
def _warn_grammar_not_sent() -> None:
    logger.warning("IMG2MUSIC_VLM_GRAMMAR=on: this build applies the ABC grammar with the local "
                   "backend only; answers from the endpoint are checked afterwards as before")


def judge_chat_model(settings: Settings | None = None) -> BaseChatModel:
    """The evaluation judge (`IMG2MUSIC_JUDGE_*`): any OpenAI-compatible endpoint, so no
    vLLM-only sampling parameters; timeouts and retries as for the VLM."""
    settings = settings or get_settings()
    return _openai_model(_OpenAIConfig(
        base_url=settings.judge_endpoint, model=settings.judge_served_model,
        api_key=settings.judge_api_key or settings.vlm_api_key,
        temperature=settings.judge_temperature, top_p=1.0, top_k=None,
        max_tokens=settings.judge_max_tokens, timeout_s=settings.vlm_timeout_s,
        retries=settings.vlm_retries,
    ))


@lru_cache(maxsize=8)
def _openai_model(config: _OpenAIConfig) -> ChatOpenAI:
    # top_k is no OpenAI parameter: extra_body puts it at the top level of the request, where
    # vLLM reads it. stream_usage asks for token counts when streaming too (vLLM sends them).
    return ChatOpenAI(
        base_url=config.base_url,
        model=config.model,
        api_key=SecretStr(config.api_key),
        temperature=config.temperature,
        top_p=config.top_p,
        max_completion_tokens=config.max_tokens,
        timeout=openai.Timeout(config.timeout_s,
                               connect=min(config.timeout_s, CONNECT_TIMEOUT_S)),
        max_retries=config.retries,
        extra_body={"top_k": config.top_k} if config.top_k is not None else None,
        stream_usage=True,
    )


@lru_cache(maxsize=2)
def _local_model(model_id: str, temperature: float, top_p: float, top_k: int,
                 max_tokens: int) -> BaseChatModel:
    # Imported here: the local backend needs torch and transformers, the endpoint does not.
    # The weights are shared across sampling settings. Keye's modelling code ships with its
    # weights (as for `vllm serve --trust-remote-code`); the user chose the local model.
    from img2music.graph.local_vlm import LocalChatModel, shared_local_vlm

    return LocalChatModel(vlm=shared_local_vlm(model_id, trust_remote_code=True),
                          temperature=temperature, top_p=top_p, top_k=top_k,
                          max_new_tokens=max_tokens)


def call_model(model: BaseChatModel, messages: Sequence[MessageLikeRepresentation], *,
               endpoint: str, max_chars: int = MAX_REPLY_CHARS,
               role: EndpointRole = "VLM", constraint: AnswerConstraint | None = None
               ) -> ModelReply:
    """One model call: its text (capped, as model output is untrusted), tokens and time.

    With a `constraint`, the model is asked to apply its grammar (a model that says it did sets
    `constrained` in its response metadata).

    Raises `VLMUnavailable` with one line naming the endpoint (the composer's VLM, or the
    evaluation judge) when the call fails for any reason the openai client reports: down,
    refused, timed out, 5xx after the retries, 4xx.
    """
    where = Endpoint(role, endpoint)
    started = time.monotonic()
    try:
        message = model.invoke(list(messages),
                               **(constraint.call_options() if constraint else {}))
    except openai.APITimeoutError as error:
        raise VLMUnavailable(_timeout_message(model, where)) from error
    except openai.APIConnectionError as error:
        raise VLMUnavailable(_connection_message(error, where)) from error
    except openai.APIStatusError as error:
        raise VLMUnavailable(_status_message(model, error, where)) from error
    except openai.APIError as error:
        raise VLMUnavailable(f"{where} gave an answer that could not be read: "
                             f"{_one_line(str(error))}") from error
    seconds = time.monotonic() - started
    text = str(message.text)
    truncated = len(text) > max_chars
    if truncated:
        logger.warning("the model at %s wrote %d characters; kept the first %d",
                       endpoint, len(text), max_chars)
        text = text[:max_chars]
    usage = message.usage_metadata if isinstance(message, AIMessage) else None
    finish_reason = message.response_metadata.get("finish_reason")
    reply = ModelReply(
        text=text,
        input_tokens=usage["input_tokens"] if usage else 0,
        output_tokens=usage["output_tokens"] if usage else 0,
        seconds=seconds,
        truncated=truncated,
        finish_reason=finish_reason if isinstance(finish_reason, str) else None,
        constrained=message.response_metadata.get("constrained") is True,
    )
    logger.info("model call to %s: %d tokens in, %d out, %.1f s, finish %s", endpoint,
                reply.input_tokens, reply.output_tokens, seconds, reply.finish_reason)
    return reply


def _tries(model: BaseChatModel) -> int:
    """Requests the openai client makes before giving up (its default is 2 retries)."""
    retries = model.max_retries if isinstance(model, ChatOpenAI) else None
    return (2 if retries is None else retries) + 1


def _times(count: int) -> str:
    return "once" if count == 1 else f"{count} times"


@dataclass(frozen=True)
class Endpoint:
    """Which endpoint a failed call went to, as its messages name it, with the fixes to try."""

    role: EndpointRole
    url: str

    def __str__(self) -> str:
        return f"the {self.role} endpoint {self.url}"

    @property
    def key_setting(self) -> str:
        return "IMG2MUSIC_VLM_API_KEY" if self.role == "VLM" else "IMG2MUSIC_JUDGE_API_KEY"

    @property
    def start_hint(self) -> str:
        return (" (is vLLM running? see `img2music vlm serve`)" if self.role == "VLM"
                else " (is it running? see IMG2MUSIC_JUDGE_BASE_URL)")


def _timeout_message(model: BaseChatModel, endpoint: Endpoint) -> str:
    timeout = model.request_timeout if isinstance(model, ChatOpenAI) else None
    seconds = timeout.read if isinstance(timeout, openai.Timeout) else timeout
    within = f" within {seconds:g} s" if isinstance(seconds, int | float) else " in time"
    tries = _tries(model)
    return (f"{endpoint} did not answer{within}"
            f"{f' ({tries} tries)' if tries > 1 else ''}")


def _connection_message(error: openai.APIConnectionError, endpoint: Endpoint) -> str:
    causes: list[BaseException] = []
    cause: BaseException | None = error
    while cause is not None and cause not in causes:
        causes.append(cause)
        cause = cause.__cause__ or cause.__context__
    if any(isinstance(cause, ConnectionRefusedError) for cause in causes):
        return f"{endpoint} refused the connection{endpoint.start_hint}"
    if any(isinstance(cause, socket.gaierror) for cause in causes):
        return f"{endpoint} has a host name that does not resolve"
    return f"{endpoint} could not be reached: {_one_line(str(causes[-1]))}"


def _status_message(model: BaseChatModel, error: openai.APIStatusError,
                    endpoint: Endpoint) -> str:
    status = error.status_code
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "error"
    body = error.body
    if isinstance(body, dict):
        body = body.get("message") or body
    detail = _one_line(str(body)) if body else ""
    said = f": {detail}" if detail else ""
    name = model.model_name if isinstance(model, ChatOpenAI) else None
    if status == 404 and name is not None and "model" in detail.lower():
        served = _served_models(model)
        serves = f" (it serves {', '.join(served)})" if served else ""
        return f"{endpoint} does not serve the model {name!r}{serves}{said}"
    if status == 404:
        return (f"{endpoint} answered 404 Not Found (is the URL right? vLLM's ends in "
                f"/v1){said}")
    if status in (401, 403):
        return (f"{endpoint} refused the API key ({status} {reason}; set "
                f"{endpoint.key_setting}){said}")
    if status >= 500 or status in (408, 409, 429):
        return f"{endpoint} answered {status} {reason} {_times(_tries(model))}{said}"
    return f"{endpoint} answered {status} {reason}{said}"


def _served_models(model: BaseChatModel) -> list[str]:
    """The model names the endpoint lists, to help with a misspelt one; none if it cannot say."""
    client = model.root_client if isinstance(model, ChatOpenAI) else None
    if client is None:
        return []
    try:
        page = client.with_options(max_retries=0, timeout=CONNECT_TIMEOUT_S).models.list()
        return [entry.id for entry in page.data][:20]
    except openai.OpenAIError as error:
        logger.debug("could not list the served models: %s", error)
        return []


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= _DETAIL_CHARS else line[:_DETAIL_CHARS - 1] + "…"


def to_langchain(messages: Sequence[Message]) -> list[BaseMessage]:
    """The state's plain-JSON conversation as LangChain messages, images as data-URL parts."""
    kinds: dict[str, type[BaseMessage]] = {
        "system": SystemMessage, "user": HumanMessage, "assistant": AIMessage,
    }
    return [kinds[m["role"]](content=cast(Any, m["content"])) for m in messages]
