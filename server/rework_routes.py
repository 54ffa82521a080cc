"""Routes that work on a tune that exists: one section of a finished run composed again
(`POST /v1/runs/{id}/sections`), and a tune sent as ABC text or as a MIDI file (base64)
continued for more bars (`POST /v1/continuations`).

Each starts a run like a composition, with the same key, queue, slots, time limit and cancel
(`run_pool`): the answer is 202 with the new run's id, whose events, summary and files are at
`/v1/runs/{id}` as for any run. Bodies are JSON only, as for compositions (a web page cannot send
JSON to another origin without asking first); a MIDI file travels base64-encoded in it. What is
sent is untrusted: sizes are checked before anything is decoded, the ABC passes the directive
filter before any program reads it, and a tune that does not play is refused in one line.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.params import Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from img2music.graph.nodes import MAX_BARS
from img2music.pipeline.rework import (
    ReworkRefused,
    acontinue_tune,
    arecompose_section,
    source_run,
    tune_from_bytes,
)
from img2music.pipeline.runs import Composition
from img2music.server.protocol import MAX_NOTE_CHARS, ApiError, parsed_body
from img2music.server.run_pool import Job, RunPool
from img2music.settings import MAX_SEED, Settings

MAX_SECTION_CHARS = 200


class SectionRequest(BaseModel):
    """Which section of the run to compose again, with an optional note and seed."""

    model_config = ConfigDict(extra="forbid")

    section: str = Field(min_length=1, max_length=MAX_SECTION_CHARS,
                         description="The section's name, as in its `% [name]` line.")
    note: str = Field(default="", max_length=MAX_NOTE_CHARS)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)


class ContinuationRequest(BaseModel):
    """The tune to continue (ABC text, or a MIDI file as base64: one of them) and how far."""

    model_config = ConfigDict(extra="forbid")

    abc: str | None = None
    midi: str | None = Field(default=None, description="A MIDI file, base64-encoded.")
    name: str = Field(default="tune", pattern=r"^[\w .()-]{1,80}$",
                      description="The tune's name, for the report (a file name).")
    bars: int = Field(default=8, ge=1, le=MAX_BARS)
    note: str = Field(default="", max_length=MAX_NOTE_CHARS)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)


def mount_rework(app: FastAPI, pool: RunPool, settings: Settings, *,
                 dependencies: list[Depends], require_json: Callable[[Request], None],
                 run_folder: Callable[[str], Path]) -> None:
    """Add the routes; `run_folder` gives a finished run's folder by id (or a 404)."""

    @app.post("/v1/runs/{run_id}/sections", dependencies=dependencies, status_code=202)
    async def section_again(run_id: str, request: Request) -> JSONResponse:
        """Compose one `% [section]` of a finished run again: a new run with the whole tune,
        every line outside the section unchanged."""
        require_json(request)
        asked = parsed_body(SectionRequest, await request.body())
        live = pool.get(run_id)
        if live is not None and not live.finished:
            raise ApiError(409, f"run {run_id} is still composing; ask for a section again once "
                           "it has finished", code="run_not_finished")
        source = await asyncio.to_thread(run_folder, run_id)
        try:
            _, name = await asyncio.to_thread(source_run, source, asked.section)
        except ReworkRefused as error:
            raise ApiError(400, str(error), param="section", code="unknown_section") from None

        def work(job: Job) -> Awaitable[Composition]:
            return arecompose_section(source, name, out_dir=job.folder, note=asked.note,
                                      seed=asked.seed, settings=settings,
                                      model_for=pool.model_for, on_progress=job.on_progress,
                                      stop=job.stopper, files_when_asked=True)

        job = await _start(pool, work, source)
        return _accepted(job, request, source_run=run_id, section=name)

    @app.post("/v1/continuations", dependencies=dependencies, status_code=202)
    async def continuation(request: Request) -> JSONResponse:
        """Continue a tune (ABC or MIDI) for more bars: a new run with the whole tune, its own
        bars unchanged."""
        require_json(request)
        asked = parsed_body(ContinuationRequest, await request.body())
        if (asked.abc is None) == (asked.midi is None):
            raise ApiError(400, "send the tune as `abc` (ABC text) or as `midi` (a MIDI file, "
                           "base64): one of them", param="abc", code="no_tune")
        data = asked.abc.encode("utf-8") if asked.abc is not None else _midi_bytes(
            asked.midi or "", settings)
        try:
            abc = await asyncio.to_thread(tune_from_bytes, data, midi=asked.midi is not None,
                                          name=asked.name, settings=settings)
        except ReworkRefused as error:
            raise ApiError(400, str(error), param="abc" if asked.abc else "midi",
                           code="invalid_tune") from None

        def work(job: Job) -> Awaitable[Composition]:
            return acontinue_tune(abc, asked.bars, name=asked.name, out_dir=job.folder,
                                  midi=asked.midi is not None, note=asked.note, seed=asked.seed,
                                  settings=settings, model_for=pool.model_for,
                                  on_progress=job.on_progress, stop=job.stopper,
                                  files_when_asked=True)

        job = await _start(pool, work, Path(asked.name))
        return _accepted(job, request, bars=asked.bars)


async def _start(pool: RunPool, work: Callable[[Job], Awaitable[Composition]],
                 source: Path) -> Job:
    """A place in the pool (or 429), the run's folder, then the run."""
    pool.reserve()
    try:
        job = pool.new_job()
        await asyncio.to_thread(job.folder.mkdir, parents=True)
        return pool.start(job, work, source)
    except BaseException:
        pool.unreserve()
        raise


def _accepted(job: Job, request: Request, **about: Any) -> JSONResponse:
    run = f"{request.base_url}v1/runs/{job.id}"
    return JSONResponse({"run_id": job.id, "status": "queued", **about, "run": run,
                         "events": f"{run}/events"}, status_code=202)


def _midi_bytes(encoded: str, settings: Settings) -> bytes:
    """The MIDI file of a base64 field, its size checked before it is decoded."""
    if len(encoded) > (settings.max_midi_bytes * 4) // 3 + 4:
        raise ApiError(400, f"the MIDI file is over the {settings.max_midi_bytes:,}-byte limit",
                       param="midi", code="midi_too_large")
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "midi is not base64", param="midi", code="invalid_base64") from None
