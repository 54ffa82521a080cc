"""Composing from Python and the CLI: run the graph on an image and write what a person needs."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from img2music.graph.context import Context
from img2music.graph.graph import build_graph
from img2music.graph.models import VLMUnavailable, endpoint_report
from img2music.graph.nodes import ModelFor, RetrieverFor
from img2music.graph.state import Input, State
from img2music.pipeline.report import write_run
from img2music.prompt_files import prompt_set
from img2music.redaction import redact_url, scrub
from img2music.settings import Settings, get_settings
from img2music.templating import TemplateRefused
from img2music.tools.files import write_atomic
from img2music.tools.images import BadImage, image_data_url, open_image

logger = logging.getLogger(__name__)

# Called after each node with the image, the node's name and what the node changed.
Progress = Callable[[str, str, State], None]
FailureKind = Literal["bad_image", "bad_prompt", "vlm_unavailable", "no_tune", "cancelled",
                      "timeout", "internal"]
StopKind = Literal["cancelled", "timeout"]
CANCELLED = "cancelled by request"
STATE_KEYS = list(State.__annotations__)


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

    def _attach(self, task: asyncio.Task[Any]) -> None:
        self._task = task
        if self.reason is not None:
            task.cancel()


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

    @property
    def ok(self) -> bool:
        return self.abc is not None and self.error is None

    def summary(self) -> str:
        """One line: where the tune is and what is left to correct, or why there is none."""
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
    **overrides: Any,
) -> Composition:
    """Compose music for one image; `overrides` are `Context` fields (rag_k, refine_rounds, …).

    The graph runs as its own task, which `stop` cancels (a user, a time limit): the model
    request in flight is closed at once and the run ends with the reason given. A bad image or
    an unreachable model ends this image with a one-line `error`; nothing is raised, so a batch
    goes on. Once the graph has finished, its files are written whatever happens: a tune that
    was made is never lost to a late cancel. With `files_when_asked` (the server) the audio and
    the HTML report are made when first asked for (`pipeline.report.make_when_asked`).
    """
    settings = settings or get_settings()
    image = Path(image)
    out = Path(out_dir) if out_dir else settings.data_dir / "runs" / image.stem
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
    graph = build_graph(settings=settings, model_for=model_for, retriever_for=retriever_for)

    async def run_graph() -> State:
        final: State = {}
        # The whole state, not only the graph's output: the run's report shows every attempt.
        async for mode, chunk in graph.astream(state, context=context,
                                               stream_mode=["updates", "values"],
                                               output_keys=STATE_KEYS):
            if mode == "updates" and on_progress is not None:
                updates: dict[str, State | None] = chunk  # type: ignore[assignment]
                for node, update in updates.items():
                    on_progress(str(image), node, update or {})
            elif mode == "values":
                final = chunk  # type: ignore[assignment]
        return final

    graph_task = asyncio.create_task(run_graph())
    if stop is not None:
        stop._attach(graph_task)
    kind: FailureKind | None = None
    reason = ""
    try:
        final = await graph_task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if stop is None or stop.reason is None or (current and current.cancelling()):
            raise  # this caller was cancelled, not the run
        reason, kind = stop.reason, stop.kind
    except VLMUnavailable as error:
        reason, kind = str(error), "vlm_unavailable"
    except TemplateRefused as error:
        reason, kind = str(error), "bad_prompt"
    except Exception as error:  # one image's fault must not stop the batch
        logger.exception("composing for %s failed", image)
        reason, kind = f"{type(error).__name__}: {error}", "internal"
    if kind is not None:
        return await asyncio.to_thread(failed_run, image, out, reason, kind, settings)

    def write() -> tuple[dict[str, Path], dict[str, Any]]:
        prompts = prompt_set(context.prompts_dir or None, context.prompt_edits())
        report = {
            "image": image.name,
            "image_file": image.name,  # kept: the state's "image" (a data URL) replaces "image"
            "settings": _shown_settings(context),
            "prompt_set": {"name": prompts.name, "hash": prompts.hash},
            "vlm_endpoint": None if settings.vlm_backend == "local" else endpoint_report(
                context.vlm_base_url, context.vlm_model, choice=settings.vlm_profile),
            "wall_seconds": time.perf_counter() - started,
        }
        return write_run(out, final, picture, report, settings=settings,
                         when_asked=files_when_asked)

    writing = asyncio.ensure_future(asyncio.to_thread(write))  # files and prompts: no IO here
    try:
        files, report = await asyncio.shield(writing)
    except asyncio.CancelledError:
        await writing  # the files of a finished tune are written before the caller stops
        raise
    done = final.get("status") == "done"
    return Composition(
        image=image, out_dir=out, abc=final.get("final_abc"),
        motivation=final.get("motivation", ""), files=files, report=report,
        error=None if done else str(report.get("failure") or "no tune"),
        failure_kind=None if done else "no_tune",
        faults=final.get("faults", []), fault_count=final.get("fault_count", 0),
    )


def _shown_settings(context: Context) -> dict[str, Any]:
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
