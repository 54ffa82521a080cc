"""Composing from Python and the CLI: run the graph on an image and write what a person needs."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph.state import CompiledStateGraph

from img2music.graph.context import Context
from img2music.graph.graph import build_graph
from img2music.graph.models import VLMUnavailable, endpoint_report
from img2music.graph.nodes import ModelFor, RetrieverFor
from img2music.graph.state import Input, Output, State, check_takes, shared_by_takes
from img2music.pipeline.report import write_run
from img2music.pipeline.takes import (
    FIRST_TAKE_NODE,
    LAST_SHARED_NODE,
    take_folder,
    write_takes_report,
)
from img2music.prompt_files import prompt_set
from img2music.redaction import redact_url, scrub
from img2music.settings import Settings, get_settings
from img2music.templating import TemplateRefused
from img2music.tools.files import write_atomic
from img2music.tools.images import BadImage, image_data_url, open_image

logger = logging.getLogger(__name__)



class Progress(Protocol):
    """Called after each node with the image, the node's name and what the node changed; in a
    run of several takes, with the take (0 the first) when the node was one take's."""

    def __call__(self, image: str, node: str, update: State, /,
                 take: int | None = None) -> None: ...


FailureKind = Literal["bad_image", "bad_prompt", "vlm_unavailable", "no_tune", "cancelled",
                      "timeout", "internal"]
StopKind = Literal["cancelled", "timeout"]
CANCELLED = "cancelled by request"
STATE_KEYS = list(State.__annotations__)
# How a run's graph is driven: given the input and the context, it yields ("updates",
# {node: update}) after each step and last ("values", the whole final state). `in_process` runs
# the graph here; under a LangGraph server, `server.langgraph_runs` goes through its runs API.
Drive = Callable[[Input, Context], AsyncIterator[tuple[str, Any]]]


class GraphFailed(RuntimeError):
    """A graph that ran elsewhere (a LangGraph server's worker) failed: why, and what kind of
    failure it was, as `acompose` would have named the exception."""

    def __init__(self, reason: str, kind: FailureKind) -> None:
        super().__init__(reason)
        self.kind = kind


class RunStop:
    """Stops a run from outside (a user's cancel, a client that went away): the graph's task is
    cancelled, so the model request in flight is closed at once and the model server stops
    generating; the run then ends with `failure_kind` "cancelled" and its reason."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self.kind: StopKind = "cancelled"
        self._task: asyncio.Task[Any] | None = None

    def cancel(self, reason: str = CANCELLED, kind: StopKind = "cancelled") -> None:
        """Stop the run; the first reason given is the one it ends with."""
        if self.reason is None:
            self.reason, self.kind = reason, kind
        if self._task is not None:
            self._task.cancel()

    def attach(self, task: asyncio.Task[Any]) -> None:
        self._task = task
        if self.reason is not None:
            task.cancel()


def cancelled_by(stop: RunStop | None) -> RunStop | None:
    """The stop that cancelled a run's task, or None when the caller itself was cancelled (its
    CancelledError must then go on)."""
    current = asyncio.current_task()
    if stop is None or stop.reason is None or (current is not None and current.cancelling()):
        return None
    return stop


@dataclass
class Composition:
    """What one image gave: the tune (None when no attempt was playable), what a musician would
    still correct in it, the files, and the report."""

    image: Path
    out_dir: Path
    abc: str | None
    motivation: str
    files: dict[str, Path] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    failure_kind: FailureKind | None = None
    faults: list[str] = field(default_factory=list)
    fault_count: int = 0
    # A run of several takes: each take's composition (in its own folder); the run's own
    # tune, motivation and faults are its first playable take's.
    takes: list[Composition] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.abc is not None and self.error is None

    def summary(self) -> str:
        """One line: where the tune is and what is left to correct, or why there is none (a
        line per take in a run of several)."""
        if self.takes:
            return "\n".join(f"take {number}: {take.summary()}"
                             for number, take in enumerate(self.takes, 1))
        if not self.ok:
            return f"{self.image}: {self.error}"
        line = f"{self.image}: {self.out_dir / 'tune.abc'}"
        if self.fault_count:
            line += (f" ({self.fault_count} fault{'s' if self.fault_count > 1 else ''} a "
                     f"musician would correct; first: {self.faults[0]})")
        return line


def compose(image: Path | str, **options: Any) -> Composition:
    """`acompose` for synchronous callers: on its own event loop, in a thread of its own when
    this thread already runs one (a notebook, Playwright's sync API)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(acompose(image, **options))
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="img2music-compose") as thread:
        return thread.submit(asyncio.run, acompose(image, **options)).result()


async def acompose(
    image: Path | str,
    *,
    out_dir: Path | str | None = None,
    note: str = "",
    settings: Settings | None = None,
    model_for: ModelFor | None = None,
    retriever_for: RetrieverFor | None = None,
    on_progress: Progress | None = None,
    stop: RunStop | None = None,
    files_when_asked: bool = False,
    takes: int = 1,
    drive: Drive | None = None,
    **overrides: Any,
) -> Composition:
    """Compose music for one image; `overrides` are `Context` fields (rag_k, refine_rounds, …).

    The graph runs as its own task, which `stop` cancels (a user, a time limit): the model
    request in flight is closed at once and the run ends with the reason given. A bad image or
    an unreachable model ends this image with a one-line `error`; nothing is raised, so a batch
    goes on. Once the graph has finished, its files are written whatever happens: a tune that
    was made is never lost to a late cancel. With `files_when_asked` (the server) the audio and
    the HTML report are made when first asked for (`pipeline.report.make_when_asked`).

    With `takes` above one, the run composes that many candidates at once, each in a folder of
    its own (`pipeline.takes`). The graph runs until it would compose (describe, retrieve), then
    each take forks that state on a thread of its own in an in-memory checkpointer, as if it
    had just retrieved, and goes on from compose with its own seed (`Context.take_seed`): one
    description and one retrieval for every take, and each take is the graph as a run of one
    take runs it, so its state, report and files have the same shape; only the run's
    `report.json` above them is new (every take, and the pick). Why not fan out inside the
    graph (`Send` to a subgraph per take) here: the graph and its diagram, Studio's runs and a
    run's progress would all change shape for every run, while forking its checkpoints leaves
    them as they are and a run of one take exactly as it was; Studio has that fan-out as a
    graph of its own beside this one (`img2music_takes`, `graph.graph.build_takes_graph`), with
    the same seeds. A run of several takes is always driven here, whatever `drive` says: the
    fork needs the in-memory checkpointer.
    """
    settings = settings or get_settings()
    image = Path(image)
    out = Path(out_dir) if out_dir else settings.data_dir / "runs" / image.stem
    check_takes(takes)
    context = Context.from_settings(settings, **overrides)
    started = time.perf_counter()
    try:
        picture = await asyncio.to_thread(open_image, image, settings=settings)
    except BadImage as error:
        return await asyncio.to_thread(failed_run, image, out, f"{image.name}: {error}",
                                       "bad_image", settings)
    state: Input = {"image": image_data_url(picture, max_pixels=settings.vlm_image_pixels),
                    "note": note}
    # The operator's side of the run (the model's profile, key, timeouts; the index; the
    # explainer's models) comes from these settings too, not the process's.
    graph = build_graph(settings=settings, model_for=model_for, retriever_for=retriever_for,
                        checkpointer=InMemorySaver() if takes > 1 else None)
    if drive is None or takes > 1:
        drive = in_process(graph)

    def on_thread(given: Input | None, run_context: Context,
                  thread: str) -> AsyncIterator[tuple[str, Any]]:
        """The graph on a thread of the checkpointer: from `given` it pauses before composing;
        from None it goes on from the thread's checkpoint."""
        config: RunnableConfig = {"configurable": {"thread_id": thread}}
        return graph.astream(  # type: ignore[return-value]
            given, config, context=run_context, stream_mode=["updates", "values"],
            output_keys=STATE_KEYS,
            interrupt_before=[FIRST_TAKE_NODE] if given is not None else None)

    async def run_graph(stream: AsyncIterator[tuple[str, Any]], take: int | None = None) -> State:
        """Follows a run's stream: its progress to `on_progress`, and its final state."""
        final: State = {}
        async for mode, chunk in stream:
            if mode == "updates" and on_progress is not None:
                updates: dict[str, State | None] = chunk
                for node, update in updates.items():
                    if node == "__interrupt__":
                        continue  # the pause before the takes
                    if take is None:
                        on_progress(str(image), node, update or {})
                    else:
                        on_progress(str(image), node, update or {}, take=take)
            elif mode == "values":
                final = chunk
        return final

    async def run_takes() -> tuple[State, list[State | BaseException]]:
        """The shared steps once, then every take at once; a take that fails ends alone."""
        shared = await run_graph(on_thread(state, context, "shared"))
        known = shared_by_takes(shared)
        for number in range(takes):
            await graph.aupdate_state({"configurable": {"thread_id": take_folder(number)}},
                                      known, as_node=LAST_SHARED_NODE)
        finals = await asyncio.gather(
            *(run_graph(on_thread(None, take_contexts[n], take_folder(n)), take=n)
              for n in range(takes)),
            return_exceptions=True)
        for final in finals:
            if isinstance(final, asyncio.CancelledError):
                raise final
        return shared, finals

    take_contexts = [context.for_take(n) for n in range(takes)]
    graph_task: asyncio.Task[Any] = asyncio.create_task(
        run_graph(drive(state, context)) if takes == 1 else run_takes())
    if stop is not None:
        stop.attach(graph_task)
    try:
        outcome = await graph_task
    except asyncio.CancelledError:
        stopped = cancelled_by(stop)
        if stopped is None:
            raise  # this caller was cancelled, not the run
        return await asyncio.to_thread(failed_run, image, out, stopped.reason or CANCELLED,
                                       stopped.kind, settings)
    except Exception as error:  # one image's fault must not stop the batch
        return await asyncio.to_thread(failed_run, image, out, *failure_of(error, image),
                                       settings)

    def report_of(run_context: Context) -> dict[str, Any]:
        prompts = prompt_set(context.prompts_dir or None, context.prompt_edits())
        return {
            "image": image.name,
            "image_file": image.name,  # kept: the state's "image" (a data URL) replaces "image"
            "settings": shown_settings(run_context),
            "prompt_set": {"name": prompts.name, "hash": prompts.hash},
            "vlm_endpoint": None if settings.vlm_backend == "local" else endpoint_report(
                context.vlm_base_url, context.vlm_model, choice=settings.vlm_profile),
            "wall_seconds": time.perf_counter() - started,
        }

    def write_one(folder: Path, final: State, run_context: Context,
                  **extra: Any) -> Composition:
        files, report = write_run(folder, final, picture, {**report_of(run_context), **extra},
                                  settings=settings, when_asked=files_when_asked)
        return _composition(image, folder, final, files, report)

    def write() -> Composition:
        if takes == 1:
            return write_one(out, outcome, context)
        shared, finals = outcome
        compositions = []
        for number, final in enumerate(finals):
            folder = out / take_folder(number)
            if isinstance(final, BaseException):
                compositions.append(failed_run(image, folder, *failure_of(final, image),
                                               settings))
            else:
                compositions.append(write_one(folder, final, take_contexts[number],
                                              take=number + 1))
        report = write_takes_report(out, shared, [take.report for take in compositions],
                                    [run.seed or 0 for run in take_contexts],
                                    report_of(context), settings=settings)
        first = next((take for take in compositions if take.ok), None)
        return Composition(
            image=image, out_dir=out, abc=first.abc if first else None,
            motivation=first.motivation if first else "",
            files={"report.json": out / "report.json"}, report=report,
            error=None if first else report["failure"],
            failure_kind=None if first else report["failure_kind"],
            faults=first.faults if first else [], fault_count=first.fault_count if first else 0,
            takes=compositions)

    # Files and prompts: no IO on the event loop, and the files of a finished tune are written
    # before the caller stops.
    writing = asyncio.ensure_future(asyncio.to_thread(write))
    try:
        return await asyncio.shield(writing)
    except asyncio.CancelledError:
        await writing
        raise


def _composition(image: Path, out: Path, final: State, files: dict[str, Path],
                 report: dict[str, Any]) -> Composition:
    """What a finished graph run gave, once its files are written."""
    done = final.get("status") == "done"
    return Composition(
        image=image, out_dir=out, abc=final.get("final_abc"),
        motivation=final.get("motivation", ""), files=files, report=report,
        error=None if done else str(report.get("failure") or "no tune"),
        failure_kind=None if done else "no_tune",
        faults=final.get("faults", []), fault_count=final.get("fault_count", 0),
    )


def failure_of(error: BaseException, image: Path) -> tuple[str, FailureKind]:
    """Why a graph run stopped, in one line, and what kind of failure that is."""
    if isinstance(error, VLMUnavailable):
        return str(error), "vlm_unavailable"
    if isinstance(error, TemplateRefused):
        return str(error), "bad_prompt"
    if isinstance(error, GraphFailed):
        return str(error), error.kind
    logger.error("composing for %s failed", image, exc_info=error)
    return f"{type(error).__name__}: {error}", "internal"


def in_process(graph: CompiledStateGraph[State, Context, Input, Output]) -> Drive:
    """The graph driven here, on this event loop (the CLI, Python, eval, `img2music serve`)."""

    async def drive(state: Input, context: Context) -> AsyncIterator[tuple[str, Any]]:
        # The whole state, not only the graph's output: the run's report shows every attempt.
        async for mode, chunk in graph.astream(state, context=context,
                                               stream_mode=["updates", "values"],
                                               output_keys=STATE_KEYS):
            yield mode, chunk

    return drive


def shown_settings(context: Context) -> dict[str, Any]:
    """The run's settings as a report shows them: the endpoint without credentials, folders by
    their names."""
    shown = dict(context.__dict__)
    shown["vlm_base_url"] = redact_url(context.vlm_base_url)
    shown["prompts_dir"] = Path(context.prompts_dir).name if context.prompts_dir else ""
    if Path(context.vlm_model).is_absolute():  # a local model's folder: its name says enough
        shown["vlm_model"] = Path(context.vlm_model).name
    return shown


def failed_run(image: Path, out: Path, reason: str, kind: FailureKind,
               settings: Settings) -> Composition:
    """A run that ends without a tune: its report says why, in one line without secrets."""
    reason = scrub(reason, settings)
    report = {"image": image.name, "status": "failed", "failure": reason, "failure_kind": kind,
              "files": ["report.json"]}
    write_atomic(out / "report.json", json.dumps(report, indent=2))
    return Composition(image=image, out_dir=out, abc=None, motivation="",
                       files={"report.json": out / "report.json"}, report=report, error=reason,
                       failure_kind=kind)
