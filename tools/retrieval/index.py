"""The music memory: real tunes embedded by their captions, one Chroma collection per source and
embedder, so that switching CLIP models never mixes two embedding spaces."""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import lru_cache
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

import numpy as np
import numpy.typing as npt
from filelock import FileLock, Timeout

from img2music.settings import Settings, get_settings
from img2music.tools.corpus.ingest import count_tunes, iter_records
from img2music.tools.corpus.records import MusicRecord, Skipped, SourceName

if TYPE_CHECKING:
    from chromadb.api import ClientAPI
    from chromadb.api.models.Collection import Collection
    from PIL.Image import Image

logger = logging.getLogger(__name__)

INGEST_BATCH = 128
WRITER_LOCK = ".img2music-writer.lock"
Vector = npt.NDArray[np.float32]


class EmbeddingSpace(Protocol):
    """What retrieval needs of an embedder: its identity and its two encoders."""

    @property
    def name(self) -> str: ...

    def embed_texts(self, texts: Sequence[str]) -> Vector: ...

    def embed_images(self, images: Sequence[Image]) -> Vector: ...


class IndexMismatch(RuntimeError):
    """The collection was built with another embedder; its vectors mean nothing to this one."""


class IndexBusy(RuntimeError):
    """Another process held the index's writer lock for longer than this one would wait."""


@contextmanager
def index_writer(settings: Settings, *, wait_s: float | None = None) -> Iterator[None]:
    """Hold the embedded index's writer lock: an fcntl lock on a file beside the index, so two
    processes sharing a data folder (two servers, a server and `index build`) never write the
    index at once. `wait_s` None waits as long as the other writer takes; a Chroma server
    (`IMG2MUSIC_CHROMA_URL`) orders its writers itself and needs no lock here."""
    if settings.chroma_url:
        yield
        return
    settings.index_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(settings.index_dir / WRITER_LOCK, timeout=-1 if wait_s is None else wait_s)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        logger.warning("waiting for another process that is writing the index in %s",
                       settings.index_dir)
        try:
            lock.acquire()
        except Timeout as error:
            raise IndexBusy(f"another process has been writing the index in "
                            f"{settings.index_dir} for over {wait_s:g} s; try again when it "
                            "is done") from error
    try:
        yield
    finally:
        lock.release()


@dataclass
class BuildReport:
    """What a build has done so far; after each batch, and at the end.

    `total` is the number of tunes the source offers (None for a build with a limit), so that
    `done` of `total` is the build's progress.
    """

    source: str
    collection: str
    added: int = 0
    already_there: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    seconds: float = 0.0
    total: int | None = None

    def snapshot(self) -> BuildReport:
        """A copy that stays as it is while the build goes on."""
        return replace(self, skipped=list(self.skipped))

    @property
    def done(self) -> int:
        """Tunes handled: embedded, found stored, or skipped."""
        return self.added + self.already_there + len(self.skipped)

    @property
    def rate(self) -> float | None:
        """Tunes handled per second so far; None before the first batch."""
        return self.done / self.seconds if self.done and self.seconds > 0 else None

    @property
    def seconds_left(self) -> float | None:
        """At the pace so far; None while the total or the pace is unknown."""
        if self.total is None or self.rate is None:
            return None
        return max(0, self.total - self.done) / self.rate


@dataclass(frozen=True)
class CollectionInfo:
    name: str
    source: str
    embedder: str
    records: int
    complete: bool = False  # a whole build finished (not one with a limit, not interrupted)


@lru_cache(maxsize=4)
def _client(path: Path) -> ClientAPI:
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    path.mkdir(parents=True, exist_ok=True)
    return chromadb.PersistentClient(
        path=str(path), settings=ChromaSettings(anonymized_telemetry=False)
    )


@lru_cache(maxsize=4)
def _http_client(url: str) -> ClientAPI:
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    parsed = urlsplit(url)
    return chromadb.HttpClient(
        host=parsed.hostname or "localhost", port=parsed.port or 8000,
        ssl=parsed.scheme == "https", settings=ChromaSettings(anonymized_telemetry=False),
    )


def open_client(settings: Settings | None = None) -> ClientAPI:
    """The Chroma server when one is configured (shared by many servers), else the local index."""
    settings = settings or get_settings()
    if settings.chroma_url:
        return _http_client(settings.chroma_url)
    return _client(settings.index_dir)


def collection_name(source: str, embedder_name: str) -> str:
    """Readable and unique per (source, embedder): `music21--ViT-B-32-laion2b…-3f2a9c1e`."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", embedder_name).strip("-._")[:80]
    digest = hashlib.sha256(embedder_name.encode()).hexdigest()[:8]
    return f"{source}--{slug}-{digest}"


def open_collection(
    source: str, embedder_name: str, *, settings: Settings | None = None, create: bool = False
) -> Collection | None:
    """The collection for `source` in this embedder's space; None when it was never built."""
    client = open_client(settings)
    name = collection_name(source, embedder_name)
    if create:
        collection = client.get_or_create_collection(
            name, embedding_function=None, configuration={"hnsw": {"space": "cosine"}},
            metadata={"source": source, "embedder": embedder_name},
        )
    else:
        existing = {c.name for c in client.list_collections()}
        if name not in existing:
            return None
        collection = client.get_collection(name, embedding_function=None)
    recorded = (collection.metadata or {}).get("embedder")
    if recorded != embedder_name:
        raise IndexMismatch(
            f"collection {name} was built with the embedder {recorded!r}, not {embedder_name!r}; "
            f"rebuild it with `img2music index build --source {source}` under the current "
            "IMG2MUSIC_CLIP_* settings"
        )
    return collection


def build_index(
    source: SourceName,
    embedder: EmbeddingSpace,
    *,
    path: Path | None = None,
    limit: int | None = None,
    settings: Settings | None = None,
    on_batch: Callable[[BuildReport], None] | None = None,
    wait_s: float | None = None,
) -> BuildReport:
    """Embed and store a source's records, a batch at a time; a rerun skips what is stored.

    Every batch is committed before the next is read, so an interrupted build loses nothing
    finished and resumes where it stopped. The index's writer lock is held throughout.
    """
    settings = settings or get_settings()
    with index_writer(settings, wait_s=wait_s):
        return _build(source, embedder, path=path, limit=limit, settings=settings,
                      on_batch=on_batch)


def _build(source: SourceName, embedder: EmbeddingSpace, *, path: Path | None,
           limit: int | None, settings: Settings,
           on_batch: Callable[[BuildReport], None] | None) -> BuildReport:
    collection = open_collection(source, embedder.name, settings=settings, create=True)
    assert collection is not None
    report = BuildReport(source=source, collection=collection.name, total=(
        count_tunes(source, path=path, settings=settings) if limit is None else None))
    started = time.perf_counter()
    records = iter_records(source, path=path, limit=limit, settings=settings)
    for batch in _batches(records, report.skipped, INGEST_BATCH):
        stored = set(collection.get(ids=[r.id for r in batch], include=[])["ids"])
        fresh = _unique([r for r in batch if r.id not in stored])
        report.already_there += len(batch) - len(fresh)
        if fresh:
            vectors = embedder.embed_texts([r.caption for r in fresh])
            collection.add(
                ids=[r.id for r in fresh], embeddings=vectors,
                documents=[r.caption for r in fresh],
                metadatas=[r.metadata() for r in fresh],
            )
            report.added += len(fresh)
        report.seconds = time.perf_counter() - started
        if on_batch is not None:
            on_batch(report)
    report.seconds = time.perf_counter() - started
    if limit is None:
        collection.modify(metadata={**(collection.metadata or {}), "complete": True})
    logger.info("%s: %d added, %d already stored, %d skipped in %.1f s", collection.name,
                report.added, report.already_there, len(report.skipped), report.seconds)
    return report


def ensure_index(
    source: SourceName,
    embedder: EmbeddingSpace,
    *,
    path: Path | None = None,
    settings: Settings | None = None,
    on_batch: Callable[[BuildReport], None] | None = None,
    wait_s: float | None = None,
) -> BuildReport | None:
    """Build (or finish) the source's index unless a full build already completed.

    The compose path calls this on first use, so retrieval works without a separate step; when
    another process is building it, this one waits for it and then finds it complete.
    """
    settings = settings or get_settings()
    if index_complete(source, embedder, settings=settings):
        return None
    with index_writer(settings, wait_s=wait_s):
        if index_complete(source, embedder, settings=settings):
            return None
        return _build(source, embedder, path=path, limit=None, settings=settings,
                      on_batch=on_batch)


def index_complete(source: SourceName, embedder: EmbeddingSpace, *,
                   settings: Settings | None = None) -> bool:
    """Whether a whole build of the source finished in this embedder's space."""
    collection = open_collection(source, embedder.name, settings=settings)
    return collection is not None and bool((collection.metadata or {}).get("complete"))


def writer_busy(settings: Settings | None = None) -> bool:
    """Whether a process (this one too) is writing the embedded index now: its writer lock is
    held. Always False with a Chroma server, which orders its writers itself."""
    settings = settings or get_settings()
    if settings.chroma_url or not (settings.index_dir / WRITER_LOCK).exists():
        return False
    lock = FileLock(settings.index_dir / WRITER_LOCK)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    lock.release()
    return False


def _batches(
    records: Iterable[MusicRecord | Skipped], skipped: list[Skipped], size: int
) -> Iterator[list[MusicRecord]]:
    iterator = iter(records)
    while True:
        chunk = list(islice(iterator, size))
        if not chunk:
            return
        skipped.extend(item for item in chunk if isinstance(item, Skipped))
        good = [item for item in chunk if isinstance(item, MusicRecord)]
        if good:
            yield good


def _unique(records: list[MusicRecord]) -> list[MusicRecord]:
    seen: set[str] = set()
    unique = []
    for record in records:
        if record.id not in seen:
            seen.add(record.id)
            unique.append(record)
    return unique


def index_info(settings: Settings | None = None) -> list[CollectionInfo]:
    """Every collection in the index folder, with the source and embedder it was built for."""
    client = open_client(settings)
    infos = []
    for listed in client.list_collections():
        collection = client.get_collection(listed.name, embedding_function=None)
        metadata: dict[str, Any] = dict(collection.metadata or {})
        infos.append(CollectionInfo(
            name=collection.name, source=str(metadata.get("source", "?")),
            embedder=str(metadata.get("embedder", "?")), records=collection.count(),
            complete=bool(metadata.get("complete")),
        ))
    return sorted(infos, key=lambda info: info.name)
