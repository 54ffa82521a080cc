"""img2music as an OpenAI-compatible model server: send an image, get a tune and its files.

`POST /v1/chat/completions` takes the image from the last user message (its text is the note
about the music) and answers with the motivation and the tune; the `img2music` extension object
of the answer carries the run id, the ABC, the metrics and the URLs of the run's files, which
`/v1/runs/{id}/...` serves; `/v1/options` describes the run options a request may set; `/` is a
web page over the same API. The same app is mounted into `langgraph dev` by `langgraph.json`.

This module holds the routes. What every request passes first is `middleware`; what a request
may say is `protocol`, and what the server answers is `completions`; the runs themselves are
`run_pool`'s, and the page is `page`'s.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from img2music.graph.context import Context
from img2music.graph.nodes import ModelFor, RetrieverFor
from img2music.graph.options import option_defaults, options_model
from img2music.pipeline.index_build import IndexBuild, progress_line
from img2music.pipeline.readiness import Check, health_checks
from img2music.pipeline.report import read_report
from img2music.pipeline.runs import Drive
from img2music.pipeline.takes import PickRefused, take_folder
from img2music.server import langgraph_runs
from img2music.server.completions import (
    FAILURE_STATUS,
    completion,
    failure_error,
    result_of,
    run_summary,
    sse,
    stream,
)
from img2music.server.image_urls import fetch_image, unusable_url
from img2music.server.middleware import BodyLimit, HostCheck, authorisation, bearer_matches
from img2music.server.page import mount_page
from img2music.server.protocol import (
    MODEL_ID,
    ApiError,
    ChatRequest,
    ErrorType,
    ImageInput,
    image_input,
    parse_request,
)
from img2music.server.rework_routes import mount_rework
from img2music.server.run_pool import Job, RunPool
from img2music.settings import Settings, get_settings
from img2music.tools.images import BadImage, jpeg_bytes, open_image

logger = logging.getLogger(__name__)

RUN_ID = re.compile(r"^[0-9a-f]{20}$")
FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
HEALTH_CACHE_S = 5.0
STORED_JPEG_QUALITY = 92
RETRY_AFTER_S = 1  # a slot frees whenever any run ends; clients should ask again soon
# A run's files are model output: served so that nothing in them can run scripts on this origin.
FILE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src 'self' data:; media-src 'self' data:; "
                               "style-src 'unsafe-inline'",
    "X-Content-Type-Options": "nosniff",
}


def create_app(settings: Settings | None = None, *, model_for: ModelFor | None = None,
               retriever_for: RetrieverFor | None = None,
               index_build: IndexBuild | None = None,
               drive_for: Callable[[str], Drive] | None = None) -> FastAPI:
    """The app; `model_for` and `retriever_for` replace the configured model and index (tests).
    With `drive_for`, runs go to another engine (a LangGraph server's runs API,
    `langgraph_runs`); without it they run in this process.

    With `index_build` (as `img2music serve` gives it), the index runs will search is built in
    the background as the server starts, and `/health` says how far it is.
    """
    settings = settings or get_settings()
    pool = RunPool(settings, model_for=model_for, retriever_for=retriever_for,
                   drive_for=drive_for)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(pool.prune)
        if index_build is not None:
            index_build.start()
        yield
        if index_build is not None:
            await asyncio.to_thread(index_build.stop)
        await pool.shutdown()

    app = FastAPI(title="img2music", version="0.1.0", lifespan=lifespan,
                  description=__doc__, docs_url="/docs", redoc_url=None)
    app.add_middleware(BodyLimit, limit=settings.server_max_body_bytes)
    app.add_middleware(HostCheck, settings=settings)
    _add_error_handlers(app)
    authorised = [Depends(authorisation(settings))]
    health = _HealthCache(settings, index_build)

    @app.get("/health")
    async def get_health(request: Request) -> JSONResponse:
        """Readiness, 200 or 503, for anyone, with the progress of the index build while one
        runs (the page shows it); what was checked only for those with the key (endpoints,
        paths and load are nobody else's business)."""
        checks = await health.get()
        ready = all(check.ok for check in checks)
        body: dict[str, Any] = {"status": "ready" if ready else "unavailable"}
        building = _build_status(index_build)
        if building is not None:
            body["index_build"] = building
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

    @app.get("/v1/options", dependencies=authorised)
    async def list_options() -> dict[str, Any]:
        """The run options a request's `img2music` object may set, as JSON schema (type,
        bounds, title, description of each), with this server's defaults: the web page builds
        its Advanced panel from it, so every option is offered there as it is declared."""
        return {"object": "img2music.options", "schema": options_model().model_json_schema(),
                "defaults": option_defaults(settings)}

    @app.post("/v1/chat/completions", dependencies=authorised, response_model=None)
    async def chat_completions(request: Request) -> Response:
        _require_json(request)
        chat = parse_request(await request.body())
        job = await _start(chat, pool, settings)
        base = _base_url(request)
        if chat.stream:
            return StreamingResponse(stream(job, chat, base), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        async for _ in job.feed():
            pass
        result = result_of(job)
        if result.failure_kind in FAILURE_STATUS:
            raise failure_error(job, result)
        return JSONResponse(await asyncio.to_thread(completion, job, result, base))

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
                yield sse(event)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    @app.delete("/v1/runs/{run_id}", dependencies=authorised)
    async def cancel_run(run_id: str) -> dict[str, Any]:
        """Stop a run now (its model call in flight is closed); what it finished stays on
        disk."""
        job = _live_job(pool, run_id)
        job.stop()
        return {"run_id": run_id, "status": "finished" if job.finished else "cancelling"}

    @app.post("/v1/runs/{run_id}/pick", dependencies=authorised)
    async def pick(run_id: str, request: Request) -> dict[str, Any]:
        """Record the take the user picked (`{"take": 2}`, 1 the first) in the run's report;
        answers the run as `GET /v1/runs/{id}` does."""
        _require_json(request)
        take = _picked_take(await request.body())
        job = pool.get(_checked_id(run_id))
        if job is not None and not job.finished:
            raise ApiError(409, f"run {run_id} is still composing; pick once it has finished",
                           code="run_not_finished")
        await asyncio.to_thread(_report, pool, run_id)
        try:
            report = await pool.pick(run_id, take)
        except PickRefused as error:
            raise ApiError(400, str(error), param="take", code="invalid_take") from None
        return await asyncio.to_thread(run_summary, pool.runs_dir / run_id, report,
                                       _base_url(request))

    @app.get("/v1/runs/{run_id}/takes/{take}/{name}", dependencies=authorised,
             response_model=None)
    async def take_file(run_id: str, take: int, name: str) -> FileResponse:
        """A file of one take of a run of several."""
        report = await asyncio.to_thread(_report, pool, _checked_id(run_id))
        if not 1 <= take <= len(report.get("takes") or []):
            raise ApiError(404, f"run {run_id} has no take {take}", type="not_found_error",
                           code="file_not_found")
        return await _run_file(pool, run_id, name, take)

    @app.get("/v1/runs/{run_id}/{name}", dependencies=authorised, response_model=None)
    async def run_file(run_id: str, name: str) -> FileResponse:
        return await _run_file(pool, _checked_id(run_id), name, None)

    def finished_run(run_id: str) -> Path:
        _report(pool, run_id)  # a 404 when there is no such run
        return pool.runs_dir / run_id

    mount_rework(app, pool, settings, dependencies=authorised, require_json=_require_json,
                 run_folder=finished_run)
    mount_page(app, settings)
    return app


async def _run_file(pool: RunPool, run_id: str, name: str, take: int | None) -> FileResponse:
    """A file the run (or its take) lists, made first if it waits until asked for."""
    folder = pool.runs_dir / run_id
    if take is not None:
        folder = folder / take_folder(take - 1)
    report = await asyncio.to_thread(read_report, folder)
    path = folder / name
    listed = FILE_NAME.match(name) and name in report.get("files", [])
    if listed and name in report.get("when_asked", []):
        await pool.make_when_asked(run_id, name, take)
    if not listed or not await asyncio.to_thread(path.is_file):
        raise ApiError(404, f"run {run_id} has no file {name!r}", type="not_found_error",
                       code="file_not_found")
    return FileResponse(path, media_type=_media_type(name), headers=FILE_HEADERS)


def _picked_take(body: bytes) -> int:
    """The take a pick names: `{"take": N}`, N a whole number."""
    try:
        take = json.loads(body).get("take")
    except (ValueError, AttributeError):
        take = None
    if not isinstance(take, int) or isinstance(take, bool):
        raise ApiError(400, 'send the take to pick as {"take": N}, N from 1', param="take",
                       code="invalid_take")
    return take


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


def _require_json(request: Request) -> None:
    """A JSON body, as OpenAI clients send it. A web page can send a form or plain text to any
    origin without asking first; JSON it cannot, so no page a user visits starts runs here."""
    media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media != "application/json":
        raise ApiError(415, "send the request body as JSON, with Content-Type: application/json",
                       code="unsupported_media_type")


class _HealthCache:
    """Probes at most every few seconds, however often a load balancer asks, and again at once
    when the index build moves on (starts building, ends)."""

    def __init__(self, settings: Settings, build: IndexBuild | None) -> None:
        self.settings = settings
        self.build = build
        self.checked_at = -HEALTH_CACHE_S
        self.build_state = build.state if build else None
        self.checks: list[Check] = []
        self.lock = asyncio.Lock()

    async def get(self) -> list[Check]:
        async with self.lock:
            state = self.build.state if self.build else None
            if time.monotonic() - self.checked_at >= HEALTH_CACHE_S or state != self.build_state:
                self.checks = await asyncio.to_thread(health_checks, self.settings, self.build)
                self.checked_at, self.build_state = time.monotonic(), state
            return self.checks


def _build_status(build: IndexBuild | None) -> dict[str, Any] | None:
    """The index build's progress while it runs (or why it failed); None otherwise."""
    if build is None or build.state not in ("building", "failed"):
        return None
    status: dict[str, Any] = {"source": build.source, "state": build.state}
    progress = build.progress
    if progress is not None:
        status.update(done=progress.done, total=progress.total, rate_per_s=progress.rate,
                      seconds_left=progress.seconds_left, line=progress_line(progress))
    return status


def _model_card() -> dict[str, Any]:
    return {"id": MODEL_ID, "object": "model", "created": 0, "owned_by": "img2music"}


async def _start(chat: ChatRequest, pool: RunPool, settings: Settings) -> Job:
    """Check the run's context (a budget too small for the grammar it asks for is a 400), take
    a place in the pool (or 429) before any image is decoded or fetched, check the image, then
    hand the run to the pool; the place is given back if anything fails first."""
    try:
        Context.from_settings(settings, **chat.context_overrides())
    except ValueError as error:
        raise ApiError(400, str(error), code="invalid_value") from None
    pool.reserve(chat.takes)
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
        stored = await asyncio.to_thread(jpeg_bytes, image, quality=STORED_JPEG_QUALITY)
        return await pool.submit(stored, ".jpg", given.note, chat.context_overrides(),
                                 takes=chat.takes)
    except BaseException:
        pool.unreserve(chat.takes)
        raise


async def _fetch_image(given: ImageInput, settings: Settings) -> bytes:
    if not settings.server_allow_image_urls:
        raise ApiError(400, "this server does not fetch image URLs; send the image as a "
                       "base64 data URL (or set IMG2MUSIC_SERVER_ALLOW_IMAGE_URLS=true)",
                       param="messages", code="image_urls_disabled")
    return await fetch_image(given.url or "", settings)


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
    report = read_report(pool.runs_dir / _checked_id(run_id))
    if not report:
        raise ApiError(404, f"no run {run_id!r}", type="not_found_error", code="run_not_found")
    return report


def _media_type(name: str) -> str:
    suffix = name.rsplit(".", 1)[-1].lower()
    return {"abc": "text/vnd.abc; charset=utf-8", "mid": "audio/midi", "wav": "audio/wav",
            "ogg": "audio/ogg", "mp3": "audio/mpeg", "svg": "image/svg+xml",
            "png": "image/png", "jpg": "image/jpeg", "html": "text/html; charset=utf-8",
            "json": "application/json", "md": "text/markdown; charset=utf-8",
            "musicxml": "application/vnd.recordare.musicxml+xml"}.get(
        suffix, "application/octet-stream")


# Mounted into `langgraph dev` or a LangGraph deployment, runs go through its runs API.
app = create_app(drive_for=langgraph_runs.drive_for if langgraph_runs.under_langgraph_server()
                 else None)
