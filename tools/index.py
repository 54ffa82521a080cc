"""The music memory: real tunes embedded by their captions, one Chroma collection per source and
embedder, so that switching CLIP models never mixes two embedding spaces."""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

import numpy as np
import numpy.typing as npt

from img2music.settings import Settings, get_settings
from img2music.tools.sources import MusicRecord, Skipped, SourceName, iter_records

if TYPE_CHECKING:
    from chromadb.api import ClientAPI
    from chromadb.api.models.Collection import Collection
    from PIL.Image import Image

logger = logging.getLogger(__name__)

INGEST_BATCH = 128
Vector = npt.NDArray[np.float32]


class EmbeddingSpace(Protocol):
    """What retrieval needs of an embedder: its identity and its two encoders."""

    @property
    def name(self) -> str: ...

    def embed_texts(self, texts: Sequence[str]) -> Vector: ...

    def embed_images(self, images: Sequence[Image]) -> Vector: ...


class IndexMismatch(RuntimeError):
    """The collection was built with another embedder; its vectors mean nothing to this one."""


@dataclass
class BuildReport:
    source: str
    collection: str
    added: int = 0
    already_there: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    seconds: float = 0.0


@dataclass(frozen=True)
class CollectionInfo:
    name: str
    source: str
    embedder: str
    records: int


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
) -> BuildReport:
    """Embed and store a source's records, a batch at a time; a rerun skips what is stored.

    Every batch is committed before the next is read, so an interrupted build loses nothing
    finished and resumes where it stopped.
    """
    settings = settings or get_settings()
    collection = open_collection(source, embedder.name, settings=settings, create=True)
    assert collection is not None
    report = BuildReport(source=source, collection=collection.name)
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
) -> BuildReport | None:
    """Build (or finish) the source's index unless a full build already completed.

    The compose path calls this on first use, so retrieval works without a separate step.
    """
    collection = open_collection(source, embedder.name, settings=settings)
    if collection is not None and (collection.metadata or {}).get("complete"):
        return None
    return build_index(source, embedder, path=path, settings=settings, on_batch=on_batch)


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
        ))
    return sorted(infos, key=lambda info: info.name)
