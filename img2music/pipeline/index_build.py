"""The index retrieval needs, built before a run has to wait for it, and watched while it is built.

Retrieval searches music21's corpus (about 13,000 tunes, shipped with music21), whose index is
built once, on first use: minutes on a CPU. So that a first run never looks hung, `compose`
builds it up front with a progress bar, `serve` builds it in the background as it starts
(`/health`, `doctor` and the page show how far it is), and `doctor` says how long a build will
take with the configured model on this machine, from a short sample it measures. CLIP is
loaded only by what builds or measures (the command line reads `progress_line` from here).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from img2music.redaction import scrub
from img2music.settings import Settings
from img2music.tools.corpus.ingest import iter_records
from img2music.tools.corpus.records import MusicRecord, SourceName
from img2music.tools.retrieval.index import BuildReport, ensure_index, index_complete

if TYPE_CHECKING:
    from img2music.tools.retrieval.embedder import Embedder

logger = logging.getLogger(__name__)

FIRST_USE_SOURCE: SourceName = "music21"  # ships with music21: the one source built unasked
SAMPLE_TUNES = 16
STOP_WAIT_S = 60.0  # at shutdown, how long the batch being embedded may take to commit
State = Literal["waiting", "checking", "building", "done", "failed", "stopped"]


class BuildStopped(Exception):
    """The process is stopping: the build ends after its last committed batch (nothing is lost;
    the next start resumes it)."""


def first_use_source(settings: Settings, *, rag: bool = True,
                     rag_k: int | None = None) -> SourceName | None:
    """The source a run builds on first use, when retrieval is on and searches music21."""
    k = settings.rag_k if rag_k is None else rag_k
    if rag and k > 0 and FIRST_USE_SOURCE in settings.rag_source_list:
        return FIRST_USE_SOURCE
    return None


def progress_line(report: BuildReport) -> str:
    """`1,234 of 12,947 tunes, 25.1 tunes/s, about 8 min left`, as far as each is known; at the
    end, `12,947 of 12,947 tunes, 25.3 tunes/s, done in 9 min`."""
    parts = [f"{report.done:,} of {report.total:,} tunes" if report.total is not None
             else f"{report.done:,} tunes"]
    if report.rate is not None:
        parts.append(f"{report.rate:.1f} tunes/s")
    if report.total is not None and report.done >= report.total:
        parts.append(f"done in {duration(report.seconds)}")
    elif report.seconds_left is not None:
        parts.append(f"about {duration(report.seconds_left)} left")
    return ", ".join(parts)


def duration(seconds: float) -> str:
    """A time as a person says it: `40 s`, `8 min`, `1 h 5 min`."""
    if seconds < 60:
        return f"{max(1, round(seconds))} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


class IndexBuild:
    """The first-use build of one process, run here or in a background thread; any thread may
    read its state and progress while it runs.

    `after_batch` is called after each committed batch with the progress so far (the CLI draws
    its bar with it; a test can hold the build at a known batch).
    """

    def __init__(self, settings: Settings, source: SourceName = FIRST_USE_SOURCE, *,
                 after_batch: Callable[[BuildReport], None] | None = None) -> None:
        self.settings = settings
        self.source = source
        self.after_batch = after_batch
        self.state: State = "waiting"
        self.error: str | None = None
        self._progress: BuildReport | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._ended = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def progress(self) -> BuildReport | None:
        """The latest progress (a copy), None before the first count."""
        with self._lock:
            return None if self._progress is None else self._progress.snapshot()

    def needed(self) -> bool:
        """Whether the source's index is incomplete for the configured CLIP model (loads it)."""
        from img2music.tools.retrieval.embedder import load_embedder

        return not index_complete(self.source, load_embedder(self.settings),
                                  settings=self.settings)

    def run(self) -> BuildReport | None:
        """Build (or finish) the index here; None when it was complete. Raises what the build
        raised, `BuildStopped` after `stop`."""
        from img2music.tools.retrieval.embedder import load_embedder

        try:
            self.state = "checking"
            embedder = load_embedder(self.settings)
            if index_complete(self.source, embedder, settings=self.settings):
                report = None
            else:
                self.state = "building"
                report = ensure_index(self.source, embedder, settings=self.settings,
                                      on_batch=self._batch_done)
        except BuildStopped:
            self.state = "stopped"
            raise
        except Exception as error:
            self.error = scrub(f"{type(error).__name__}: {error}", self.settings)
            self.state = "failed"
            raise
        else:
            if report is not None:
                self._publish(report)
            self.state = "done"
            return report
        finally:
            self._ended.set()

    def start(self) -> None:
        """Run in a background thread; a failure is logged and kept in `error`."""
        self._thread = threading.Thread(target=self._run_logged, name="img2music-index-build",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop after the batch being embedded commits. A build still checking (loading its
        model) is not waited for: the process may end under it, having written nothing yet."""
        self._stopping.set()
        if self._thread is not None and self.state == "building":
            self._thread.join(timeout=STOP_WAIT_S)

    def wait(self, timeout: float | None = None) -> bool:
        """Until the build has ended (done, failed or stopped); False when `timeout` passed."""
        return self._ended.wait(timeout)

    def _run_logged(self) -> None:
        try:
            report = self.run()
        except BuildStopped:
            logger.info("the %s index build stopped with the server; the next start resumes "
                        "it", self.source)
        except Exception:
            logger.exception("the %s index could not be built; runs will try again",
                             self.source)
        else:
            if report is not None:
                logger.info("the %s index is built: %s", self.source, progress_line(report))

    def _batch_done(self, report: BuildReport) -> None:
        self._publish(report)
        if self.after_batch is not None:
            self.after_batch(report.snapshot())
        if self._stopping.is_set():
            raise BuildStopped(f"the {self.source} index build was stopped")

    def _publish(self, report: BuildReport) -> None:
        with self._lock:
            self._progress = report.snapshot()


@dataclass(frozen=True)
class BuildPace:
    """How fast a build goes here, from a sample of tunes read, checked, captioned and
    embedded as a build does it."""

    sampled: int
    seconds_per_tune: float


_PACES: dict[tuple[str, str, str, int], BuildPace] = {}  # measured once per process and space
_PACES_LOCK = threading.Lock()


def measure_pace(settings: Settings, source: SourceName = FIRST_USE_SOURCE,
                 sample: int = SAMPLE_TUNES) -> BuildPace:
    """Measure the first `sample` tunes of the source as a build handles them, once per process
    and embedding space. The model is loaded and warmed first, so the sample measures the
    steady pace, not the start."""
    from img2music.tools.retrieval.embedder import load_embedder

    embedder = load_embedder(settings)
    key = (embedder.name, str(embedder.device), source, sample)
    with _PACES_LOCK:
        if key not in _PACES:
            _PACES[key] = _measure(settings, embedder, source, sample)
        return _PACES[key]


def _measure(settings: Settings, embedder: Embedder, source: SourceName,
             sample: int) -> BuildPace:
    embedder.embed_texts(["a warm-up caption"])
    started = time.perf_counter()
    items = list(iter_records(source, limit=sample, settings=settings))
    captions = [item.caption for item in items if isinstance(item, MusicRecord)]
    if captions:
        embedder.embed_texts(captions)
    seconds = time.perf_counter() - started
    return BuildPace(sampled=len(items), seconds_per_tune=seconds / max(1, len(items)))
