"""Runs the server accepted: a bounded pool of compositions, each with a folder and a live feed.

A composition is blocking work (model calls, checks, rendering), so runs go to worker threads;
at most `server_max_concurrent_runs` run at once and `server_max_queued_runs` wait, and a
request beyond that is refused at once (429) rather than left to time out. Each run publishes
what every node changed, so streaming clients and the web page can follow it, and it can be
cancelled between nodes. After each run, and when the server starts, run folders past the
retention limits are deleted (`img2music.retention`).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from img2music.graph.nodes import ModelFor, RetrieverFor
from img2music.graph.state import State
from img2music.retention import prune_runs, runs_root
from img2music.runs import Composition, RunCancelled, compose
from img2music.server.protocol import ApiError
from img2music.settings import Settings
from img2music.tools.files import write_atomic

logger = logging.getLogger(__name__)

RUN_ID_BYTES = 10  # 20 hex digits: run ids cannot be guessed, so runs are not enumerable
KEPT_IN_MEMORY = 512  # finished runs whose feed stays in memory; their files stay on disk
StopReason = Literal["cancelled", "timeout"]


@dataclass
class Job:
    """One accepted run: where its files go, what it has done so far, and how to stop it.

    Its feed lives on the event loop: worker threads hand events over with
    `call_soon_threadsafe`, so readers never wait on a lock (the loop must not block).
    """

    id: str
    folder: Path
    loop: asyncio.AbstractEventLoop
    timeout_s: float
    events: list[dict[str, Any]] = field(default_factory=list)
    result: Composition | None = None
    stop_reason: StopReason | None = None
    started: float | None = None
    _listeners: list[asyncio.Event] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.result is not None

    def publish(self, event: dict[str, Any]) -> None:
        """Safe from any thread."""
        self.loop.call_soon_threadsafe(self._append, event)

    def _append(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        for listener in self._listeners:
            listener.set()

    async def feed(self) -> AsyncIterator[dict[str, Any]]:
        """Every event from the first, then live ones until the run has finished."""
        listener = asyncio.Event()
        self._listeners.append(listener)
        try:
            seen = 0
            while True:
                listener.clear()
                fresh = self.events[seen:]
                seen = len(self.events)
                for event in fresh:
                    yield event
                if fresh and fresh[-1]["type"] in ("done", "failed"):
                    return
                await listener.wait()
        finally:
            self._listeners.remove(listener)

    def stop(self, reason: StopReason) -> None:
        """Ask the run to stop at the next node boundary (a model call is not interrupted)."""
        if self.stop_reason is None and not self.finished:
            self.stop_reason = reason

    def on_progress(self, image: str, node: str, update: State) -> None:
        if self.started is not None and time.monotonic() - self.started > self.timeout_s:
            self.stop("timeout")
        if self.stop_reason == "timeout":
            raise RunCancelled(f"stopped after {self.timeout_s:g} s (the server's run time limit)",
                               "timeout")
        if self.stop_reason == "cancelled":
            raise RunCancelled("cancelled by request")
        self.publish({"type": "node", "run_id": self.id, "node": node,
                      "update": public_update(update)})


def public_update(update: State) -> dict[str, Any]:
    """A node's update as clients see it: no image data, no conversation, no raw model text."""
    shown: dict[str, Any] = {key: value for key, value in update.items()
                             if key not in ("image", "conversation")}
    if "attempts" in shown:
        shown["attempts"] = [{key: value for key, value in attempt.items() if key != "raw"}
                             for attempt in shown["attempts"]]
    return shown


class RunPool:
    """Admits runs up to the limits, runs them on worker threads, and finds them by id."""

    def __init__(self, settings: Settings, *, model_for: ModelFor | None = None,
                 retriever_for: RetrieverFor | None = None) -> None:
        self.settings = settings
        self.runs_dir = runs_root(settings)
        self.capacity = settings.server_max_concurrent_runs + settings.server_max_queued_runs
        self._model_for = model_for
        self._retriever_for = retriever_for
        self._executor = ThreadPoolExecutor(max_workers=settings.server_max_concurrent_runs,
                                            thread_name_prefix="img2music-run")
        self._admitted = 0  # changed on the event loop only
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._pruning = threading.Lock()

    @property
    def admitted(self) -> int:
        """Runs running or waiting now."""
        return self._admitted

    def reserve(self) -> None:
        """Take a place for a run, or refuse with 429 at once: before the request's image is
        fetched or decoded, so a full server spends nothing on it. `submit` uses the place;
        `unreserve` gives it back when the request fails first."""
        if self._admitted >= self.capacity:
            raise ApiError(429, f"the server is busy: {self.capacity} compositions are running "
                           "or waiting; try again shortly", type="rate_limit_error",
                           code="rate_limit_exceeded")
        self._admitted += 1

    def unreserve(self) -> None:
        self._admitted -= 1

    async def submit(self, image: bytes, suffix: str, note: str,
                     overrides: dict[str, Any]) -> Job:
        """Start a run in the place `reserve` took; the image was checked by the caller."""
        loop = asyncio.get_running_loop()
        run_id = secrets.token_hex(RUN_ID_BYTES)
        job = Job(id=run_id, folder=self.runs_dir / run_id, loop=loop,
                  timeout_s=self.settings.server_run_timeout_s)
        image_path = job.folder / f"image{suffix}"
        await asyncio.to_thread(_write_new, image_path, image)
        self._remember(job)
        job.publish({"type": "queued", "run_id": run_id})
        self._executor.submit(self._run, job, image_path, note, overrides)
        return job

    def get(self, run_id: str) -> Job | None:
        return self._jobs.get(run_id)

    def prune(self) -> None:
        """Delete old run folders (by age, then size) except those of runs still going; one pass
        at a time, on the calling thread (a worker's, or startup's)."""
        if not self._pruning.acquire(blocking=False):
            return
        try:
            live = [job.folder for job in list(self._jobs.values()) if not job.finished]
            prune_runs(self.runs_dir, self.settings, keep=live)
        except OSError as error:
            logger.warning("old runs not deleted: %s", error)
        finally:
            self._pruning.release()

    def shutdown(self) -> None:
        for job in list(self._jobs.values()):
            job.stop("cancelled")
        self._executor.shutdown(wait=True, cancel_futures=False)

    def _run(self, job: Job, image_path: Path, note: str, overrides: dict[str, Any]) -> None:
        job.started = time.monotonic()
        try:
            job.publish({"type": "started", "run_id": job.id})
            result = compose(image_path, out_dir=job.folder, note=note, settings=self.settings,
                             model_for=self._model_for, retriever_for=self._retriever_for,
                             on_progress=job.on_progress, **overrides)
            job.result = result
        except Exception as error:  # never lose a run silently: it ends with its reason
            logger.exception("run %s failed", job.id)
            job.result = Composition(image=image_path, out_dir=job.folder, abc=None,
                                     motivation="", error=f"{type(error).__name__}: {error}",
                                     failure_kind="internal")
        finally:
            job.loop.call_soon_threadsafe(self.unreserve)
        job.publish({"type": "done" if job.result.ok else "failed", "run_id": job.id})
        self.prune()

    def _remember(self, job: Job) -> None:
        self._jobs[job.id] = job
        while len(self._jobs) > KEPT_IN_MEMORY:
            oldest_id, oldest = next(iter(self._jobs.items()))
            if not oldest.finished:
                break
            del self._jobs[oldest_id]


def _write_new(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True)
    write_atomic(path, data)
