"""img2music as an OpenAI-compatible model server: send an image, get a tune and its files.

`POST /v1/chat/completions` takes the image from the last user message (its text is the note
about the music) and answers with the motivation and the tune; the `img2music` extension object
of the answer carries the run id, the ABC, the metrics and the URLs of the run's files, which
`/v1/runs/{id}/...` serves; `/` is a web page over the same API. The same app is mounted into
`langgraph dev` by `langgraph.json`.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from img2music.graph.nodes import ModelFor, RetrieverFor
from img2music.graph.state import rounds_and_repairs, usage_totals
from img2music.readiness import Check, health_checks
from img2music.report import chosen_metrics
from img2music.runs import Composition
from img2music.server.image_urls import fetch_image, unusable_url
from img2music.server.jobs import Job, RunPool
from img2music.server.page import mount_page
from img2music.server.protocol import (
    MODEL_ID,
    ApiError,
    ChatRequest,
    ErrorType,
    ImageInput,
    image_input,
    parse_request,
    send_error,
)
from img2music.server.security import HostCheck, bearer_matches
from img2music.settings import Settings, get_settings
from img2music.tools.images import BadImage, open_image

logger = logging.getLogger(__name__)

RUN_ID = re.compile(r"^[0-9a-f]{20}$")
FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
HEALTH_CACHE_S = 5.0
RETRY_AFTER_S = 1  # a slot frees whenever any run ends; clients should ask again soon
# A run's files are model output: served so that nothing in them can run scripts on this origin.
FILE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src 'self' data:; media-src 'self' data:; "
                               "style-src 'unsafe-inline'",
    "X-Content-Type-Options": "nosniff",
}
# Failures that are the server's or the model's fault, not a musical outcome: they are HTTP errors.
FAILURE_STATUS: dict[str, tuple[int, ErrorType]] = {
    "bad_image": (400, "invalid_request_error"), "vlm_unavailable": (502, "upstream_error"),
    "timeout": (504, "timeout_error"), "internal": (500, "server_error"),
    "bad_prompt": (500, "server_error"),
}


def create_app(settings: Settings | None = None, *, model_for: ModelFor | None = None,
               retriever_for: RetrieverFor | None = None) -> FastAPI:
    """The app; `model_for` and `retriever_for` replace the configured model and index (tests)."""
    settings = settings or get_settings()
    pool = RunPool(settings, model_for=model_for, retriever_for=retriever_for)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(pool.prune)
        yield
        await asyncio.to_thread(pool.shutdown)

    app = FastAPI(title="img2music", version="0.1.0", lifespan=lifespan,
                  description=__doc__, docs_url="/docs", redoc_url=None)
    app.add_middleware(BodyLimit, limit=settings.server_max_body_bytes)
    app.add_middleware(HostCheck, settings=settings)
    _add_error_handlers(app)
    authorised = [Depends(_authorisation(settings))]
    health = _HealthCache(settings)

    @app.get("/health")
    async def get_health(request: Request) -> JSONResponse:
        """Readiness, 200 or 503, for anyone; what was checked only for those with the key
        (endpoints, paths and load are nobody else's business)."""
        checks = await health.get()
        ready = all(check.ok for check in checks)
        body: dict[str, Any] = {"status": "ready" if ready else "unavailable"}
        if bearer_matches(request.headers.get("authorization"), settings):
            body.update(runs=pool.admitted, checks=[asdict(check) for check in checks])
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/v1/models", dependencies=authorised)
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [_model_card()]}

    @app.get("/v1/models/{model}", dependencies=authorised)
    async def get_model(model: str) -> dict[str, Any]:
        if model != MODEL_ID:
            raise ApiError(404, f"the model {model!r} does not exist", type="not_found_error",
                           code="model_not_found")
        return _model_card()

    @app.post("/v1/chat/completions", dependencies=authorised, response_model=None)
    async def chat_completions(request: Request) -> Response:
        _require_json(request)
        chat = parse_request(await request.body())
        job = await _start(chat, pool, settings)
        base = _base_url(request)
        if chat.stream:
            return StreamingResponse(_stream(job, chat, base), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        async for _ in job.feed():
            pass
        result = _result(job)
        if result.failure_kind in FAILURE_STATUS:
            raise _failure_error(job, result)
        return JSONResponse(await asyncio.to_thread(_completion, job, result, base))

    @app.get("/v1/runs/{run_id}", dependencies=authorised)
    async def get_run(run_id: str, request: Request) -> dict[str, Any]:
        job = pool.get(_checked_id(run_id))
        if job is not None and not job.finished:
            return {"run_id": run_id, "status": "running", "stopping": job.stop_reason}
        report = await asyncio.to_thread(_report, pool, run_id)
        return await asyncio.to_thread(run_summary, pool.runs_dir / run_id, report,
                                       _base_url(request))

    @app.get("/v1/runs/{run_id}/events", dependencies=authorised)
    async def run_events(run_id: str) -> StreamingResponse:
        """The run's progress as server-sent events, from its start, until it ends."""
        job = _live_job(pool, run_id)

        async def events() -> AsyncIterator[str]:
            async for event in job.feed():
                yield _sse(event)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    @app.delete("/v1/runs/{run_id}", dependencies=authorised)
    async def cancel_run(run_id: str) -> dict[str, Any]:
        """Stop a run at its next step; what it finished stays on disk."""
        job = _live_job(pool, run_id)
        job.stop("cancelled")
        return {"run_id": run_id, "status": "finished" if job.finished else "cancelling"}

    @app.get("/v1/runs/{run_id}/{name}", dependencies=authorised, response_model=None)
    async def run_file(run_id: str, name: str) -> FileResponse:
        report = await asyncio.to_thread(_report, pool, _checked_id(run_id))
        path = pool.runs_dir / run_id / name
        listed = FILE_NAME.match(name) and name in report.get("files", [])
        if not listed or not await asyncio.to_thread(path.is_file):
            raise ApiError(404, f"run {run_id} has no file {name!r}", type="not_found_error",
                           code="file_not_found")
        return FileResponse(path, media_type=_media_type(name), headers=FILE_HEADERS)

    mount_page(app, settings)
    return app


class BodyLimit:
    """Refuses bodies over the limit before they are read whole (413)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await send_error(send, self._error())
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise self._error()
            return message

        await self.app(scope, limited, send)

    def _error(self) -> ApiError:
        return ApiError(413, f"the request body is over the {self.limit:,}-byte limit "
                        "(IMG2MUSIC_SERVER_MAX_BODY_BYTES)", code="body_too_large")


def _add_error_handlers(app: FastAPI) -> None:
    """Every error in OpenAI's shape, so clients show the message rather than a parse failure."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        headers = {"Retry-After": str(RETRY_AFTER_S)} if error.status == 429 else None
        return JSONResponse(error.body(), status_code=error.status, headers=headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        kind: ErrorType = ("not_found_error" if error.status_code == 404
                           else "invalid_request_error")
        return JSONResponse(ApiError(error.status_code, str(error.detail), type=kind).body(),
                            status_code=error.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        return JSONResponse(ApiError(400, f"{where}: {first['msg']}").body(), status_code=400)


def _authorisation(settings: Settings) -> Callable[[Request], Awaitable[None]]:
    async def check(request: Request) -> None:
        if not bearer_matches(request.headers.get("authorization"), settings):
            raise ApiError(401, "missing or wrong API key: send Authorization: Bearer "
                           "<IMG2MUSIC_API_KEY>", type="authentication_error",
                           code="invalid_api_key")
    return check


def _require_json(request: Request) -> None:
    """A JSON body, as OpenAI clients send it. A web page can send a form or plain text to any
    origin without asking first; JSON it cannot, so no page a user visits starts runs here."""
    media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media != "application/json":
        raise ApiError(415, "send the request body as JSON, with Content-Type: application/json",
                       code="unsupported_media_type")


class _HealthCache:
    """Probes at most every few seconds, however often a load balancer asks."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.checked_at = -HEALTH_CACHE_S
        self.checks: list[Check] = []
        self.lock = asyncio.Lock()

    async def get(self) -> list[Check]:
        async with self.lock:
            if time.monotonic() - self.checked_at >= HEALTH_CACHE_S:
                self.checks = await asyncio.to_thread(health_checks, self.settings)
                self.checked_at = time.monotonic()
            return self.checks


def _model_card() -> dict[str, Any]:
    return {"id": MODEL_ID, "object": "model", "created": 0, "owned_by": "img2music"}


async def _start(chat: ChatRequest, pool: RunPool, settings: Settings) -> Job:
    """Take a place in the pool (or 429) before any image is decoded or fetched, check the
    image, then hand the run to the pool; the place is given back if anything fails first."""
    pool.reserve()
    try:
        given = image_input(chat)
        data = given.data if given.data is not None else await _fetch_image(given, settings)
        try:
            image = await asyncio.to_thread(open_image, data, settings=settings)
        except BadImage as error:
            if given.url is not None:
                raise unusable_url() from None
            raise ApiError(400, f"the image is not usable: {error}", param="messages",
                           code="invalid_image") from None
        # Stored re-encoded: the photo's metadata (location, camera) does not reach the run.
        buffer = io.BytesIO()
        await asyncio.to_thread(image.save, buffer, format="JPEG", quality=92)
        return await pool.submit(buffer.getvalue(), ".jpg", given.note,
                                 chat.context_overrides())
    except BaseException:
        pool.unreserve()
        raise


async def _fetch_image(given: ImageInput, settings: Settings) -> bytes:
    if not settings.server_allow_image_urls:
        raise ApiError(400, "this server does not fetch image URLs; send the image as a "
                       "base64 data URL (or set IMG2MUSIC_SERVER_ALLOW_IMAGE_URLS=true)",
                       param="messages", code="image_urls_disabled")
    return await fetch_image(given.url or "", settings)


def _result(job: Job) -> Composition:
    assert job.result is not None, "a run's feed ends only when it has a result"
    return job.result


def _failure_error(job: Job, result: Composition) -> ApiError:
    kind = result.failure_kind or "internal"
    status, error_type = FAILURE_STATUS[kind]
    return ApiError(status, f"{result.error} (run {job.id})", type=error_type, code=kind)


def answer_text(result: Composition) -> str:
    """What a plain chat client shows: why the music is as it is, then the tune."""
    if not result.ok:
        return f"No tune this time: {result.error}"
    motivation = result.motivation.strip()
    tune = f"```abc\n{(result.abc or '').strip()}\n```"
    return f"{motivation}\n\n{tune}" if motivation else tune


def usage_of(report: dict[str, Any]) -> dict[str, int]:
    """Model tokens the run spent, over every node and every attempt, as OpenAI counts them."""
    totals = usage_totals(report.get("usage", {}))
    prompt, completion = totals["input_tokens"], totals["output_tokens"]
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def run_summary(folder: Path, report: dict[str, Any], base: str) -> dict[str, Any]:
    """The `img2music` extension object: the run, its tune and measures, and its files' URLs."""
    run_id = folder.name
    attempts = report.get("attempts", [])
    rounds, repairs = rounds_and_repairs(attempts)
    return {
        "run_id": run_id,
        "status": report.get("status", "failed"),
        "failure": report.get("failure"),
        "failure_kind": report.get("failure_kind") or (
            None if report.get("status") == "done" else "no_tune"),
        "abc": report.get("final_abc"),
        "faults": report.get("faults", []) if report.get("final_abc") else [],
        "fault_count": report.get("fault_count", 0) if report.get("final_abc") else 0,
        "motivation": report.get("motivation", ""),
        "description": report.get("description", ""),
        "metrics": chosen_metrics(report),
        "rounds": rounds,
        "repairs": repairs,
        "attempts": len(attempts),
        "examples": [{"id": e.get("id"), "caption": e.get("caption"), "score": e.get("score")}
                     for e in report.get("examples", [])],
        "prompt_set": report.get("prompt_set"),
        "wall_seconds": report.get("wall_seconds"),
        "usage": usage_of(report),
        "attention_maps": report.get("attention_maps"),
        "files": {name: f"{base}v1/runs/{run_id}/{name}" for name in report.get("files", [])
                  if (folder / name).is_file()},
    }


def _finished_summary(job: Job, base: str) -> dict[str, Any]:
    """A finished run's summary, from the report it wrote."""
    return run_summary(job.folder, _read_report(job.folder), base)


def _completion(job: Job, result: Composition, base: str) -> dict[str, Any]:
    summary = _finished_summary(job, base)
    return {
        "id": f"chatcmpl-{job.id}", "object": "chat.completion", "created": int(time.time()),
        "model": MODEL_ID,
        "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                     "message": {"role": "assistant", "content": answer_text(result)}}],
        "usage": summary["usage"],
        "img2music": summary,
    }


async def _stream(job: Job, chat: ChatRequest, base: str) -> AsyncIterator[str]:
    """Progress in `img2music` extension fields; `delta.content` only carries the answer."""
    created = int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None = None,
              extension: dict[str, Any] | None = None) -> str:
        body: dict[str, Any] = {
            "id": f"chatcmpl-{job.id}", "object": "chat.completion.chunk", "created": created,
            "model": MODEL_ID,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        }
        if extension is not None:
            body["img2music"] = extension
        return _sse(body)

    first = True
    try:
        async for event in job.feed():
            if event["type"] in ("done", "failed"):
                break
            delta = {"role": "assistant", "content": ""} if first else {}
            first = False
            yield chunk(delta, extension=event)
        result = _result(job)
        if result.failure_kind in FAILURE_STATUS:
            yield _sse(_failure_error(job, result).body())
            yield "data: [DONE]\n\n"
            return
        summary = await asyncio.to_thread(_finished_summary, job, base)
        yield chunk({"content": answer_text(result)})
        yield chunk({}, "stop", {"type": "result", **summary})
        if chat.include_usage:
            yield _sse({"id": f"chatcmpl-{job.id}", "object": "chat.completion.chunk",
                        "created": created, "model": MODEL_ID, "choices": [],
                        "usage": summary["usage"]})
        yield "data: [DONE]\n\n"
    finally:
        if not job.finished:  # the client went away: spend no more model calls on it
            job.stop("cancelled")


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, default=str)}\n\n"


def _base_url(request: Request) -> str:
    return str(request.base_url)


def _checked_id(run_id: str) -> str:
    if not RUN_ID.match(run_id):
        raise ApiError(404, f"no run {run_id!r}", type="not_found_error", code="run_not_found")
    return run_id


def _live_job(pool: RunPool, run_id: str) -> Job:
    job = pool.get(_checked_id(run_id))
    if job is None:
        raise ApiError(404, f"no run {run_id!r} in this server's memory; its files stay under "
                       f"/v1/runs/{run_id}", type="not_found_error", code="run_not_found")
    return job


def _report(pool: RunPool, run_id: str) -> dict[str, Any]:
    report = _read_report(pool.runs_dir / _checked_id(run_id))
    if not report:
        raise ApiError(404, f"no run {run_id!r}", type="not_found_error", code="run_not_found")
    return report


def _read_report(folder: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((folder / "report.json").read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return {}


def _media_type(name: str) -> str:
    suffix = name.rsplit(".", 1)[-1].lower()
    return {"abc": "text/vnd.abc; charset=utf-8", "mid": "audio/midi", "wav": "audio/wav",
            "ogg": "audio/ogg", "mp3": "audio/mpeg", "svg": "image/svg+xml",
            "png": "image/png", "jpg": "image/jpeg", "html": "text/html; charset=utf-8",
            "json": "application/json", "md": "text/markdown; charset=utf-8"}.get(
        suffix, "application/octet-stream")


app = create_app()
