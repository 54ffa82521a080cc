"""The vision-language model behind one interface, and its failures as one clear line.

The default backend is any OpenAI-compatible endpoint (vLLM serving Keye-VL-8B, a hosted vision
API, Ollama and other local servers) through langchain-openai, sent what its profile
(`graph.profiles`) says it understands. Retries are the openai client's own: connection errors,
timeouts, 408, 409, 429 and 5xx are retried `vlm_retries` times with exponential backoff (0.5 s
doubling, at most 8 s, up to 25 % jitter; a server's `Retry-After` of up to two minutes is
honoured instead), so one call takes at most about `(vlm_retries + 1) × vlm_timeout_s` plus the
backoff. A 400 (or 422) that names a parameter sent is retried once with the standard
parameters only.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from http import HTTPStatus
from typing import Any, Literal, cast

import openai
from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    MessageLikeRepresentation,
    SystemMessage,
)
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_openai import ChatOpenAI
from pydantic import SecretStr

from img2music.graph.context import Context
from img2music.graph.profiles import (
    SAMPLING,
    GrammarRoute,
    Profile,
    Refusal,
    grammar_plan,
    known_profile,
    profile_for,
    record_refusal,
    refusal_for,
    refused_parameters,
)
from img2music.graph.state import Message
from img2music.redaction import redact_url
from img2music.settings import ProfileSetting, Settings, VLMBackend, get_settings
from img2music.tools.abc.budget import BudgetError
from img2music.tools.abc.diagnostics import one_line
from img2music.tools.abc.grammar import matches
from img2music.tools.images import image_data_url, image_from_data_url

logger = logging.getLogger(__name__)

MAX_REPLY_CHARS = 200_000
EndpointRole = Literal["VLM", "judge"]
"""Longest model text kept; a runaway answer is cut here rather than filling memory and logs."""
CONNECT_TIMEOUT_S = 10.0
"""A host that does not even accept the connection is not worth the long generation timeout."""
REFUSED = (openai.BadRequestError, openai.UnprocessableEntityError)
"""The answers of an endpoint that will not take a request as it was sent."""
THINK_SWITCH_MODELS = ("keye",)
"""Models (by a part of their name) whose prompts end with a /think or /no_think switch."""


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
    constrained: bool = False  # the answer was written under a grammar


@dataclass(frozen=True)
class AnswerConstraint:
    """The grammar a compose call's answer must match, and how the backend receives it: the
    local model masks with it, an endpoint gets it as vLLM's `structured_outputs`."""

    grammar: str
    via: GrammarRoute


def think_suffix(thinking: bool) -> str:
    """Keye's switch between think and no-think mode, appended to a prompt."""
    return "/think" if thinking else "/no_think"


def prompt_switch(thinking: bool, model: str) -> str:
    """The switch a prompt to `model` ends with: Keye's, or nothing for the models to whom
    it is only noise (GPT-4o, Gemini, Qwen2.5-VL, …)."""
    uses_switch = any(name in model.lower() for name in THINK_SWITCH_MODELS)
    return think_suffix(thinking) if uses_switch else ""


@dataclass(frozen=True)
class _OpenAIConfig:
    base_url: str
    model: str
    api_key: SecretStr
    profile: Profile
    role: EndpointRole
    temperature: float
    top_p: float
    top_k: int | None  # None: never sent; otherwise sent where the profile reads it
    max_tokens: int
    timeout_s: float
    retries: int


def chat_model(context: Context, *, settings: Settings | None = None) -> BaseChatModel:
    """The chat model for this run's context, built once per distinct configuration."""
    settings = settings or get_settings()
    if settings.vlm_backend == "local":
        return _local_model(context.vlm_model, context.vlm_temperature, context.vlm_top_p,
                            context.vlm_top_k, context.vlm_max_tokens)
    detection = profile_for(context.vlm_base_url,
                            api_key=settings.vlm_api_key.get_secret_value(),
                            choice=settings.vlm_profile)
    return _openai_model(_OpenAIConfig(
        base_url=context.vlm_base_url, model=context.vlm_model, api_key=settings.vlm_api_key,
        profile=detection.profile, role="VLM", temperature=context.vlm_temperature,
        top_p=context.vlm_top_p, top_k=context.vlm_top_k, max_tokens=context.vlm_max_tokens,
        timeout_s=settings.vlm_timeout_s, retries=settings.vlm_retries,
    ))


def answer_constraint(context: Context, model: BaseChatModel, *,
                      backend: VLMBackend) -> AnswerConstraint | None:
    """The ABC grammar for this run's compose calls to `model` (served by `backend`), or None
    where it is not sent (`grammar_plan` says where it goes)."""
    profile = model.endpoint_profile if isinstance(model, EndpointChatModel) else None
    via, _ = grammar_plan(grammar=context.vlm_grammar, backend=backend, profile=profile)
    if via is None:
        return None
    try:
        grammar = context.answer_grammar()
    except BudgetError as error:  # `on` refuses such a run when it is made
        logger.warning("composing without the ABC grammar: %s", error)
        return None
    return AnswerConstraint(grammar, via)


def judge_chat_model(settings: Settings | None = None) -> BaseChatModel:
    """The evaluation judge (`IMG2MUSIC_JUDGE_*`), with its endpoint's profile (no top-k: the
    judge samples plainly); timeouts and retries as for the VLM."""
    settings = settings or get_settings()
    api_key = settings.judge_api_key or settings.vlm_api_key
    detection = profile_for(settings.judge_endpoint, api_key=api_key.get_secret_value(),
                            choice=settings.judge_profile_choice,
                            setting=settings.judge_profile_setting)
    return _openai_model(_OpenAIConfig(
        base_url=settings.judge_endpoint, model=settings.judge_served_model, api_key=api_key,
        profile=detection.profile, role="judge", temperature=settings.judge_temperature,
        top_p=1.0, top_k=None, max_tokens=settings.judge_max_tokens,
        timeout_s=settings.vlm_timeout_s, retries=settings.vlm_retries,
    ))


def endpoint_report(url: str, model: str, *, choice: ProfileSetting,
                    setting: str = "IMG2MUSIC_VLM_PROFILE") -> dict[str, Any] | None:
    """For a run's report: the endpoint's profile, why, and what it refused (None when it was
    never asked, e.g. a run with a scripted model)."""
    detection = known_profile(url, choice=choice, setting=setting)
    if detection is None:
        return None
    refusal = refusal_for(url, model)
    return {"url": redact_url(url), "model": model, "profile": detection.profile.name,
            "chosen_by": detection.reason, "warnings": list(refusal.warnings) if refusal else []}


@lru_cache(maxsize=8)
def _openai_model(config: _OpenAIConfig) -> ChatOpenAI:
    # stream_usage asks for token counts when streaming too (vLLM sends them). LangChain sends
    # some OpenAI models' calls to OpenAI's Responses API; every other endpoint gets chat
    # completions, whatever its model is called.
    return EndpointChatModel(
        base_url=config.base_url,
        model=config.model,
        api_key=config.api_key,
        temperature=config.temperature,
        top_p=config.top_p,
        max_completion_tokens=config.max_tokens,
        timeout=openai.Timeout(config.timeout_s,
                               connect=min(config.timeout_s, CONNECT_TIMEOUT_S)),
        max_retries=config.retries,
        stream_usage=True,
        use_responses_api=None if config.profile.name == "openai" else False,
        endpoint_profile=config.profile,
        top_k=config.top_k,
        role=config.role,
    )


class EndpointChatModel(ChatOpenAI):
    """ChatOpenAI that sends its endpoint what the endpoint's profile understands.

    Fields beyond OpenAI's (the profile's `top_k`, a call's own `extra_body`) travel in
    `extra_body`, which the openai client puts at the top level of the request. A 400 (or 422,
    as some servers answer an unknown field) that names a parameter sent gets one retry with
    the standard parameters only, less any the endpoint said it does not support; the refusal
    is remembered for this endpoint and model (`graph.profiles`) and logged as one warning line.
    """

    endpoint_profile: Profile
    top_k: int | None = None
    role: EndpointRole = "VLM"

    def _get_request_payload(self, input_: Any, *, stop: list[str] | None = None,
                             **kwargs: Any) -> dict[str, Any]:
        payload = super()._get_request_payload(input_, stop=stop, **kwargs)
        payload = self._shaped(payload, refusal_for(self._url, self.model_name))
        if "messages" in payload:  # chat completions (the Responses API has `input`)
            payload["messages"] = [self._fit_images(message) for message in payload["messages"]]
        return payload

    def _shaped(self, payload: dict[str, Any], refusal: Refusal | None) -> dict[str, Any]:
        """The request's parameters as this endpoint takes them (messages left as they are),
        less what it refused."""
        payload = dict(payload)
        extra = {**self.endpoint_profile.extra_body(top_k=self.top_k),
                 **(payload.pop("extra_body", None) or {})}
        if self.endpoint_profile.token_limit == "max_tokens" and "max_completion_tokens" in payload:
            payload["max_tokens"] = payload.pop("max_completion_tokens")
        if refusal is not None:
            return {k: v for k, v in payload.items() if k not in refusal.dropped}
        return {**payload, "extra_body": extra} if extra else payload

    def _fit_images(self, message: dict[str, Any]) -> dict[str, Any]:
        """The message with any image data URL over the provider's limit made to fit."""
        content = message.get("content")
        if not isinstance(content, list):
            return message
        limit = self.endpoint_profile.max_image_bytes
        parts = []
        for part in content:
            image = part.get("image_url") if isinstance(part, dict) else None
            url = image.get("url") if isinstance(image, dict) else None
            if isinstance(image, dict) and isinstance(url, str) and url.startswith("data:") \
                    and len(url) > limit:
                part = {**part, "image_url": {**image, "url": _fitted_data_url(url, limit)}}
            parts.append(part)
        return {**message, "content": parts}

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None,
                  **kwargs: Any) -> ChatResult:
        try:
            return super()._generate(messages, stop, run_manager, **kwargs)
        except REFUSED as error:
            if not self._learn_refusal(error, kwargs):
                raise
        return super()._generate(messages, stop, run_manager, **kwargs)

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None,
                **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        started = False
        try:
            for chunk in super()._stream(messages, stop, run_manager, **kwargs):
                started = True
                yield chunk
            return
        except REFUSED as error:
            if started or not self._learn_refusal(error, kwargs):
                raise
        yield from super()._stream(messages, stop, run_manager, **kwargs)

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None,
                         **kwargs: Any) -> ChatResult:
        try:
            return await super()._agenerate(messages, stop, run_manager, **kwargs)
        except REFUSED as error:
            if not self._learn_refusal(error, kwargs):
                raise
        return await super()._agenerate(messages, stop, run_manager, **kwargs)

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None,
                       **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        started = False
        try:
            async for chunk in super()._astream(messages, stop, run_manager, **kwargs):
                started = True
                yield chunk
            return
        except REFUSED as error:
            if started or not self._learn_refusal(error, kwargs):
                raise
        async for chunk in super()._astream(messages, stop, run_manager, **kwargs):
            yield chunk

    @property
    def _url(self) -> str:
        return str(self.openai_api_base or "")

    def _learn_refusal(self, error: openai.APIStatusError, kwargs: dict[str, Any]) -> bool:
        """Whether the error named a parameter this model sends; if so the endpoint gets the
        standard ones only from now on (less those it does not support), and a warning says so.

        What was sent is worked out as if nothing had been refused yet: a call that went out
        before a concurrent one learned the refusal is retried too, without a second warning.
        """
        sent = self._shaped({**self._default_params, **kwargs}, None)
        extra = set(sent.get("extra_body") or {})
        standard = set(sent) - {"model", "messages", "stream", "extra_body"}
        said = _said(error)
        refused = refused_parameters(f"{error.param or ''} {said}", extra=extra,
                                     standard=standard)
        if not refused:
            return False
        dropped = {"extra_body", *(refused & standard)}
        if refused & SAMPLING:
            dropped |= SAMPLING
        left_out = ", ".join(sorted((refused | extra | dropped) - {"extra_body"}))
        warning = (f"{Endpoint(self.role, self._url)} refused {', '.join(sorted(refused))} "
                   f"({error.status_code}: {said}); asked again without {left_out}, as every "
                   "later request to it will be")
        if record_refusal(self._url, self.model_name, dropped, warning):
            logger.warning("%s", warning)
        return True


@lru_cache(maxsize=4)
def _fitted_data_url(url: str, limit: int) -> str:
    """The image of a data URL made to fit `limit`, once: a conversation sends it every turn."""
    picture = image_from_data_url(url)
    return image_data_url(picture, max_pixels=picture.width * picture.height, max_bytes=limit)


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
               endpoint: str, max_chars: int = MAX_REPLY_CHARS, role: EndpointRole = "VLM",
               extra_body: Mapping[str, Any] | None = None,
               constraint: AnswerConstraint | None = None,
               seed: int | None = None) -> ModelReply:
    """One model call from synchronous code (the evaluation judge, the benchmarks);
    `acall_model` says what it returns and raises."""
    started = time.monotonic()
    with _failures_named(model, Endpoint(role, endpoint)):
        message = model.invoke(list(messages), **_options(extra_body, constraint, seed))
    return _reply(model, message, endpoint, time.monotonic() - started, max_chars, constraint)


async def acall_model(model: BaseChatModel, messages: Sequence[MessageLikeRepresentation], *,
                      endpoint: str, max_chars: int = MAX_REPLY_CHARS,
                      role: EndpointRole = "VLM",
                      extra_body: Mapping[str, Any] | None = None,
                      constraint: AnswerConstraint | None = None,
                      seed: int | None = None) -> ModelReply:
    """One model call: its text (capped, as model output is untrusted), tokens and time.

    Awaited, so a cancelled run closes the request at once and the model server stops
    generating for nobody. `extra_body` holds this call's own fields beyond OpenAI's, for an
    endpoint whose profile reads them (check `EndpointChatModel.profile`); an endpoint that
    refuses one gets the call again without them. A `constraint` asks the backend to write
    under its grammar; the reply says whether it did. A `seed` makes the sampling
    reproducible: an endpoint gets OpenAI's `seed` field, the local model seeds its generator.
    Raises `VLMUnavailable` with one line
    naming the endpoint (the composer's VLM, or the evaluation judge) when the call fails for
    any reason the openai client reports: down, refused, timed out, 5xx after the retries, 4xx.
    """
    started = time.monotonic()
    with _failures_named(model, Endpoint(role, endpoint)):
        message = await model.ainvoke(list(messages), **_options(extra_body, constraint, seed))
    seconds = time.monotonic() - started
    if constraint is None:
        return _reply(model, message, endpoint, seconds, max_chars, constraint)
    # Checking the answer against its grammar compiles it (xgrammar): off the event loop.
    return await asyncio.to_thread(_reply, model, message, endpoint, seconds, max_chars,
                                   constraint)


def _options(extra_body: Mapping[str, Any] | None, constraint: AnswerConstraint | None,
             seed: int | None) -> dict[str, Any]:
    """The call's options: its extra fields, the grammar where the backend takes it (an
    endpoint as vLLM's `structured_outputs`, the local model as an option of its own), and
    its seed (a standard field, which every backend takes under that name)."""
    body = dict(extra_body or {})
    options: dict[str, Any] = {}
    if constraint is not None and constraint.via == "structured_outputs":
        body["structured_outputs"] = {"grammar": constraint.grammar}
    elif constraint is not None:
        options = {"grammar": constraint.grammar}
    if body:
        options["extra_body"] = body
    if seed is not None:
        options["seed"] = seed
    return options


@contextmanager
def _failures_named(model: BaseChatModel, where: Endpoint) -> Iterator[None]:
    """The openai client's failures as `VLMUnavailable`, one line naming the endpoint."""
    try:
        yield
    except openai.APITimeoutError as error:
        raise VLMUnavailable(_timeout_message(model, where)) from error
    except openai.APIConnectionError as error:
        raise VLMUnavailable(_connection_message(error, where)) from error
    except openai.APIStatusError as error:
        raise VLMUnavailable(_status_message(model, error, where)) from error
    except openai.APIError as error:
        raise VLMUnavailable(f"{where} gave an answer that could not be read: "
                             f"{one_line(str(error))}") from error


def _reply(model: BaseChatModel, message: BaseMessage, endpoint: str, seconds: float,
           max_chars: int, constraint: AnswerConstraint | None) -> ModelReply:
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
        constrained=constraint is not None and _applied(model, message, constraint, text,
                                                        finish_reason == "length" or truncated),
    )
    logger.info("model call to %s: %d tokens in, %d out, %.1f s, finish %s", endpoint,
                reply.input_tokens, reply.output_tokens, seconds, reply.finish_reason)
    return reply


def _applied(model: BaseChatModel, message: BaseMessage, constraint: AnswerConstraint,
             text: str, cut: bool) -> bool:
    """Whether the answer was written under the grammar: the local model says so; an endpoint
    was sent it (it had not refused the request's extra fields) and the answer matches it, or
    starts to when it was cut (a server that ignores the field, as vLLM before 0.10.2 and
    Ollama do, writes what it likes)."""
    if constraint.via == "local":
        return message.response_metadata.get("constrained") is True
    if not isinstance(model, EndpointChatModel):
        return False
    refusal = refusal_for(model._url, model.model_name)
    if refusal is not None and "extra_body" in refusal.dropped:
        return False
    if matches(constraint.grammar, text, cut=cut):
        return True
    logger.warning("%s was sent the ABC grammar but wrote an answer outside it: it ignores "
                   "`structured_outputs` (vLLM reads it from 0.10.2 on); the attempt is not "
                   "counted as constrained", Endpoint(model.role, model._url))
    return False


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
        return f"the {self.role} endpoint {redact_url(self.url)}"

    @property
    def key_setting(self) -> str:
        return "IMG2MUSIC_VLM_API_KEY" if self.role == "VLM" else "IMG2MUSIC_JUDGE_API_KEY"

    @property
    def start_hint(self) -> str:
        return (" (is the model server running? `img2music vlm serve` starts vLLM on a GPU; "
                "`img2music doctor` lists the hosted and local alternatives)"
                if self.role == "VLM" else " (is it running? see IMG2MUSIC_JUDGE_BASE_URL)")


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
    return f"{endpoint} could not be reached: {one_line(str(causes[-1]))}"


def _status_message(model: BaseChatModel, error: openai.APIStatusError,
                    endpoint: Endpoint) -> str:
    status = error.status_code
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "error"
    detail = _said(error)
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


def _said(error: openai.APIStatusError) -> str:
    """What the endpoint said in its error body, in one line."""
    body = error.body
    if isinstance(body, dict):
        body = body.get("message") or body
    return one_line(str(body)) if body else ""


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


def to_langchain(messages: Sequence[Message]) -> list[BaseMessage]:
    """The state's plain-JSON conversation as LangChain messages, images as data-URL parts."""
    kinds: dict[str, type[BaseMessage]] = {
        "system": SystemMessage, "user": HumanMessage, "assistant": AIMessage,
    }
    return [kinds[m["role"]](content=cast(Any, m["content"])) for m in messages]
