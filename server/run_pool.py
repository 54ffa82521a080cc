"""Runs the server accepted: a bounded set of compositions, each an asyncio task with a folder
and a live feed.

A run is a task on the server's event loop over the graph's `astream` (blocking steps go to
threads inside the graph's nodes), so no worker thread holds a run: at most
`server_max_concurrent_runs` compose at once, `server_max_queued_runs` wait for a slot, and a
request beyond that is refused at once (429) rather than left to time out. Each run publishes
what every node changed, so streaming clients and the web page can follow it. A cancel (DELETE,
the page, a streaming client that went away) or the run time limit cancels the run's graph
task, which closes the model request in flight within the moment, so the model server stops
generating for nobody. After each run, and when the server starts, run folders past the
retention limits are deleted (`img2music.pipeline.retention`).

A run of several takes counts as that many runs, against both limits: it takes as many places
when admitted and as many slots before it starts (all at once, one run gathering slots at a
time, so two such runs never each hold part of what they need), and its takes then compose
at once. A run may not ask for more takes than there are slots.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from img2music.graph.nodes import ModelFor, RetrieverFor
from img2music.graph.state import State
from img2music.pipeline.report import make_when_asked
from img2music.pipeline.retention import prune_runs, runs_root
from img2music.pipeline.runs import (
    CANCELLED,
    Composition,
    Drive,
    RunStop,
    StopKind,
    acompose,
    failed_run,
)
from img2music.pipeline.takes import pick_take, take_folder
from img2music.server.protocol import ApiError
from img2music.settings import Settings
from img2music.tools.files import write_atomic

logger = logging.getLogger(__name__)

RUN_ID_BYTES = 10  # 20 hex digits: run ids cannot be guessed, so runs are not enumerable
KEPT_IN_MEMORY = 512  # finished runs whose feed stays in memory; their files stay on disk
StopReason = StopKind


@dataclass
class Job:
    """One accepted run: where its files go, what it has done so far, and how to stop it.

    Everything here is touched on the event loop only, so readers never wait on a lock.
    """

    id: str
    folder: Path
    events: list[dict[str, Any]] = field(default_factory=list)
    result: Composition | None = None
    stop_reason: StopReason | None = None
    stopper: RunStop = field(default_factory=RunStop)
    task: asyncio.Task[None] | None = None
    started: bool = False
    takes: int = 1
    _listeners: list[asyncio.Event] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.result is not None

    def publish(self, event: dict[str, Any]) -> None:
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

    def stop(self, reason: StopReason = "cancelled", message: str = CANCELLED) -> None:
        """End the run now: a model call in flight is closed, and the run ends with this reason
        (a run still waiting for a slot ends without starting)."""
        if self.stop_reason is None and not self.finished:
            self.stop_reason = reason
            self.stopper.cancel(message, reason)
            if not self.started and self.task is not None:
                self.task.cancel()

    def on_progress(self, image: str, node: str, update: State,
                    take: int | None = None) -> None:
        """A node's update; in a run of several takes, with the take's number (1 the first)
        when the node was one take's."""
        event: dict[str, Any] = {"type": "node", "run_id": self.id, "node": node,
                 "update": public_update(update)}
        if take is not None:
            event["take"] = take + 1
        self.publish(event)


def public_update(update: State) -> dict[str, Any]:
    """A node's update as clients see it: no image data, no conversation, no raw model text,
    no MIDI (the run's files hold it)."""
    shown: dict[str, Any] = {key: value for key, value in update.items()
                             if key not in ("image", "conversation")}
    if "attempts" in shown:
        shown["attempts"] = [{key: value for key, value in attempt.items()
                              if key not in ("raw", "midi")}
                             for attempt in shown["attempts"]]
    return shown


# What a run does once it has its slot: compose for an image, or work on a tune that exists.
Work = Callable[[Job], Awaitable[Composition]]


class RunPool:
    """Admits runs up to the limits, runs each as a task on the event loop, finds them by id."""

    def __init__(self, settings: Settings, *, model_for: ModelFor | None = None,
                 retriever_for: RetrieverFor | None = None,
                 drive_for: Callable[[str], Drive] | None = None) -> None:
        """`drive_for` gives each run (by id) the engine that runs its graph (a LangGraph
        server's runs API); without it, runs are driven here, on this event loop."""
        self.settings = settings
        self.runs_dir = runs_root(settings)
        self.capacity = settings.server_max_concurrent_runs + settings.server_max_queued_runs
        self._model_for = model_for
        self._retriever_for = retriever_for
        self._drive_for = drive_for
        # A LangGraph server queues the runs it is given itself; the pool only admits them.
        self._slots = asyncio.Semaphore(self.capacity if drive_for
                                        else settings.server_max_concurrent_runs)
        self._gathering = asyncio.Lock()  # one run at a time takes its slots
        self._admitted = 0
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._pruning = threading.Lock()
        self._making: dict[str, asyncio.Lock] = {}

    @property
    def model_for(self) -> ModelFor | None:
        """The model the pool's runs use in place of the configured one (tests)."""
        return self._model_for

    @property
    def admitted(self) -> int:
        """Runs running or waiting now."""
        return self._admitted

    def reserve(self, takes: int = 1) -> None:
        """Take a place for a run (one per take), or refuse at once: before the request's image
        is fetched or decoded, so a full server spends nothing on it. `submit` uses the places;
        `unreserve` gives them back when the request fails first."""
        slots = self.settings.server_max_concurrent_runs
        if takes > slots:
            raise ApiError(400, f"{takes} takes: this server composes at most {slots} at once "
                           "(IMG2MUSIC_SERVER_MAX_CONCURRENT_RUNS)", param="n",
                           code="too_many_takes")
        if self._admitted + takes > self.capacity:
            raise ApiError(429, f"the server is busy: {self.capacity} compositions are running "
                           "or waiting; try again shortly", type="rate_limit_error",
                           code="rate_limit_exceeded")
        self._admitted += takes

    def unreserve(self, takes: int = 1) -> None:
        self._admitted -= takes

    async def submit(self, image: bytes, suffix: str, note: str,
                     overrides: dict[str, Any], takes: int = 1) -> Job:
        """Start a run in the places `reserve` took; the image was checked by the caller."""
        job = self.new_job(takes)
        image_path = job.folder / f"image{suffix}"
        await asyncio.to_thread(_write_new, image_path, image)

        def work(job: Job) -> Awaitable[Composition]:
            return acompose(image_path, out_dir=job.folder, note=note, settings=self.settings,
                            model_for=self._model_for, retriever_for=self._retriever_for,
                            on_progress=job.on_progress, stop=job.stopper,
                            files_when_asked=True, takes=job.takes,
                            drive=self._drive_for(job.id) if self._drive_for else None,
                            **overrides)

        return self.start(job, work, image_path)

    def new_job(self, takes: int = 1) -> Job:
        """A run (of `takes` takes) with a new id and its folder's place (not made yet)."""
        run_id = secrets.token_hex(RUN_ID_BYTES)
        return Job(id=run_id, folder=self.runs_dir / run_id, takes=takes)

    def start(self, job: Job, work: Work, source: Path) -> Job:
        """Run `work` for the job in the place `reserve` took, as every run goes: queued for a
        slot, under the time limit, stoppable, its feed live (`source` names it in a report
        written when it stops before it starts)."""
        self._remember(job)
        job.publish({"type": "queued", "run_id": job.id})
        job.task = asyncio.create_task(self._run(job, work, source),
                                       name=f"img2music-run-{job.id}")
        return job

    def get(self, run_id: str) -> Job | None:
        return self._jobs.get(run_id)

    async def make_when_asked(self, run_id: str, name: str, take: int | None = None) -> None:
        """Make a run's (or its take's) file that waits until asked for (its audio, its HTML
        report), once: requests for a run's files wait for each other."""
        folder = self.runs_dir / run_id
        if take is not None:
            folder = folder / take_folder(take - 1)
        async with self.one_at_a_time(run_id):
            await asyncio.to_thread(make_when_asked, folder, name, self.settings)

    async def pick(self, run_id: str, take: int) -> dict[str, Any]:
        """Record the take the user picked in the run's report; returns the report."""
        async with self.one_at_a_time(run_id):
            return await asyncio.to_thread(pick_take, self.runs_dir / run_id, take)

    @asynccontextmanager
    async def one_at_a_time(self, run_id: str) -> AsyncIterator[None]:
        """What writes a run's files (making them when asked, a pick) waits for each other."""
        lock = self._making.setdefault(run_id, asyncio.Lock())
        try:
            async with lock:
                yield
        finally:
            if not lock.locked() and self._making.get(run_id) is lock:
                del self._making[run_id]

    def prune(self) -> None:
        """Delete old run folders (by age, then size) except those of runs still going; one pass
        at a time (called in a thread, after each run and at startup)."""
        if not self._pruning.acquire(blocking=False):
            return
        try:
            live = [job.folder for job in list(self._jobs.values()) if not job.finished]
            prune_runs(self.runs_dir, self.settings, keep=live)
        except OSError as error:
            logger.warning("old runs not deleted: %s", error)
        finally:
            self._pruning.release()

    async def shutdown(self) -> None:
        """Cancel every run still going and wait until each has written why it stopped."""
        tasks = [job.task for job in self._jobs.values() if job.task and not job.finished]
        for job in list(self._jobs.values()):
            job.stop(message="the server is shutting down")
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, job: Job, work: Work, source: Path) -> None:
        limit_s = self.settings.server_run_timeout_s
        try:
            async with self._slots_for(job.takes):
                job.started = True
                job.publish({"type": "started", "run_id": job.id})
                timer = asyncio.get_running_loop().call_later(
                    limit_s, job.stop, "timeout",
                    f"stopped after {limit_s:g} s (the server's run time limit)")
                try:
                    job.result = await work(job)
                finally:
                    timer.cancel()
        except asyncio.CancelledError:  # stopped while it waited for a slot
            job.result = await asyncio.to_thread(
                failed_run, source, job.folder, job.stopper.reason or CANCELLED,
                job.stopper.kind, self.settings)
        except Exception as error:  # never lose a run silently: it ends with its reason
            logger.exception("run %s failed", job.id)
            job.result = Composition(image=source, out_dir=job.folder, abc=None,
                                     motivation="", error=f"{type(error).__name__}: {error}",
                                     failure_kind="internal")
        finally:
            self.unreserve(job.takes)
        job.publish({"type": "done" if job.result.ok else "failed", "run_id": job.id})
        await asyncio.to_thread(self.prune)

    @asynccontextmanager
    async def _slots_for(self, takes: int) -> AsyncIterator[None]:
        """A slot per take, all taken before the run starts."""
        taken = 0
        try:
            async with self._gathering:
                while taken < takes:
                    await self._slots.acquire()
                    taken += 1
            yield
        finally:
            for _ in range(taken):
                self._slots.release()

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
