"""Records for the retrieval index from one source, in a stable order, with a `Skipped` for each
tune left out; checked in a few threads, since a tune's time goes mostly to waiting on a program.

Three sources feed the index. music21's folk collections ship with the package, so retrieval
works with no download; MidiCaps (the paper's database) brings its own captions; any folder of
ABC files can be added. A tune without a caption gets one written from its headers and its MIDI
(`captions`), because the index compares captions with images and image descriptions in one
CLIP space.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from img2music.settings import Settings, get_settings
from img2music.tools.abc.check import select_backend
from img2music.tools.corpus.abc_folder import abc_folder_jobs, load_sidecar_captions
from img2music.tools.corpus.midicaps import find_captions_files, midicaps_jobs
from img2music.tools.corpus.music21_corpus import music21_jobs
from img2music.tools.corpus.records import Job, MusicRecord, Skipped, SourceName

logger = logging.getLogger(__name__)

# Threads per ingest: enough to keep two cores busy while abc2midi and midi2abc start.
MAX_WORKERS = 4
LOOKAHEAD_PER_WORKER = 4


def iter_records(
    source: SourceName,
    *,
    path: Path | None = None,
    limit: int | None = None,
    settings: Settings | None = None,
) -> Iterator[MusicRecord | Skipped]:
    """Records of one source in a stable order, with a `Skipped` for each tune left out.

    Wrong arguments, a missing folder or captions file and a malformed captions sidecar raise
    at once; a bad tune, file or captions line never stops the run. `limit` counts records,
    not skips.
    """
    settings = settings or get_settings()
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be 0 or more, not {limit}")
    jobs = _jobs(source, path, settings)
    workers = 1 if select_backend(settings) == "music21" else MAX_WORKERS
    return _counted(jobs, workers, source, limit)


def count_tunes(
    source: SourceName, *, path: Path | None = None, settings: Settings | None = None
) -> int:
    """How many items `iter_records` yields for the whole source (records and skips), found
    without checking or captioning any tune: a build's progress is measured against it."""
    return sum(1 for _ in _jobs(source, path, settings or get_settings()))


def _jobs(source: SourceName, path: Path | None, settings: Settings) -> Iterator[Job]:
    if source == "music21":
        if path is not None:
            raise ValueError("the music21 source ships with music21 and takes no path")
        return music21_jobs(settings)
    if path is None or not path.is_dir():
        raise NotADirectoryError(f"the {source} source needs a folder; {path} is not one")
    if source == "midicaps":
        return midicaps_jobs(path, find_captions_files(path), settings)
    if source == "abc-dir":
        return abc_folder_jobs(path, load_sidecar_captions(path), settings)
    raise ValueError(f"unknown source {source!r}; use music21, midicaps or abc-dir")


def _counted(
    jobs: Iterator[Job], workers: int, source: str, limit: int | None
) -> Iterator[MusicRecord | Skipped]:
    kept = skipped = 0
    if limit == 0:
        return
    for item in _run_in_order(jobs, workers):
        yield item
        if isinstance(item, Skipped):
            skipped += 1
            logger.debug("skipped %s: %s", item.id, item.reason)
            continue
        kept += 1
        if limit is not None and kept >= limit:
            break
    logger.info("%s: %d records, %d skipped", source, kept, skipped)


def _run_in_order(jobs: Iterator[Job], workers: int) -> Iterator[MusicRecord | Skipped]:
    """Run jobs in threads, results in input order: a tune's time goes mostly to waiting on
    abc2midi or midi2abc, so a few threads overlap it. Only a bounded run of jobs is ahead."""
    if workers <= 1:
        for job in jobs:
            yield job if isinstance(job, Skipped) else job()
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="img2music-sources")
    pending: deque[Future[MusicRecord | Skipped]] = deque()
    try:
        for job in jobs:
            pending.append(_submit(pool, job))
            if len(pending) >= workers * LOOKAHEAD_PER_WORKER:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _submit(pool: ThreadPoolExecutor, job: Job) -> Future[MusicRecord | Skipped]:
    if isinstance(job, Skipped):
        done: Future[MusicRecord | Skipped] = Future()
        done.set_result(job)
        return done
    return pool.submit(job)
