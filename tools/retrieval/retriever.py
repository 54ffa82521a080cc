"""Retrieval: the k real tunes whose captions best match both the image and its description.

The image and the description each fetch their nearest captions; the union is scored with both
cosine similarities (computed exactly from the stored vectors), fused, filtered on metadata in
Python (Chroma's own filter was 50x slower at MidiCaps size), de-duplicated, and each example's
ABC is trimmed to a token budget so that k examples fit the model's context.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, Field

from img2music.settings import Fusion, Settings, get_settings
from img2music.tools.abc.scan import FIELD_LINE
from img2music.tools.retrieval.index import EmbeddingSpace, Vector, open_collection

if TYPE_CHECKING:
    from chromadb.api.models.Collection import Collection
    from PIL.Image import Image

logger = logging.getLogger(__name__)

RRF_OFFSET = 60
CHARS_PER_TOKEN = 2.5  # ABC is dense in symbols; BPE tokenizers give about 2-3 characters a token
TRIMMED_MARK = "% … trimmed to fit the prompt"


class RetrievedExample(BaseModel):
    """One example for the compose prompt, with the scores that chose it."""

    id: str
    caption: str
    abc: str = Field(description="The tune, trimmed to the token budget.")
    score: float = Field(description="The fused score that ranked it.")
    image_similarity: float | None = Field(description="Cosine similarity to the image.")
    text_similarity: float | None = Field(description="Cosine similarity to the description.")
    trimmed: bool = False
    metadata: dict[str, Any] = Field(default_factory=dict)


class NoIndex(RuntimeError):
    """No collection exists for the configured sources in this embedder's space."""


class Retriever:
    """Queries the collections of `sources` built with `embedder`."""

    def __init__(
        self,
        embedder: EmbeddingSpace,
        *,
        sources: Sequence[str] | None = None,
        settings: Settings | None = None,
    ) -> None:
        self.settings = settings or get_settings()
        self.embedder = embedder
        names = sources if sources is not None else self.settings.rag_source_list
        collections = [open_collection(name, embedder.name, settings=self.settings)
                       for name in names]
        self.collections: list[Collection] = [c for c in collections if c is not None]
        # Counting is a table scan in Chroma (8 ms at 100k rows): once per retriever, not per query.
        self.sizes = {c.name: c.count() for c in self.collections}
        if not any(self.sizes.values()):
            raise NoIndex(
                f"no index of {', '.join(names)} for the embedder {embedder.name}; build it with "
                f"`img2music index build --source {names[0]}`"
            )

    def retrieve(
        self,
        *,
        image: Image | None = None,
        description: str | None = None,
        k: int | None = None,
        fusion: Fusion | None = None,
        filters: Mapping[str, str] | None = None,
    ) -> list[RetrievedExample]:
        """Embed the image and the description, then search with both."""
        image_vector = self.embedder.embed_images([image])[0] if image is not None else None
        text_vector = self.embedder.embed_texts([description])[0] if description else None
        return self.search(image_vector, text_vector, k=k, fusion=fusion, filters=filters)

    def search(
        self,
        image_vector: Vector | None,
        text_vector: Vector | None,
        *,
        k: int | None = None,
        fusion: Fusion | None = None,
        filters: Mapping[str, str] | None = None,
    ) -> list[RetrievedExample]:
        """Fused top-k for precomputed query vectors (what the benchmark times)."""
        k = self.settings.rag_k if k is None else k
        queries = [v for v in (image_vector, text_vector) if v is not None]
        if k == 0 or not queries:
            return []
        fetch = max(self.settings.rag_candidates, k)
        total = sum(self.sizes.values())
        while True:
            candidates = self._candidates(queries, fetch, with_details=bool(filters))
            chosen = self._rank(candidates, image_vector, text_vector, k, fusion, filters or {})
            if len(chosen) >= k or fetch >= total:
                return chosen
            fetch = min(fetch * 4, total)

    def _candidates(
        self, queries: list[Vector], fetch: int, *, with_details: bool
    ) -> dict[str, _Candidate]:
        """Nearest records of each query; a similarity is known where the record was found.

        Metadata and captions come with the query only when filters need them; otherwise they
        are read for the few records that rank high enough (half the query's cost at 100k rows).
        """
        found: dict[str, _Candidate] = {}
        include = ["distances", "metadatas", "documents"] if with_details else ["distances"]
        for collection in self.collections:
            size = self.sizes[collection.name]
            if size == 0:
                continue
            result = collection.query(query_embeddings=np.stack(queries),
                                      n_results=min(fetch, size), include=include)  # type: ignore[arg-type]
            distances = result["distances"] or []
            metadatas = result["metadatas"]
            documents = result["documents"]
            for row, ids in enumerate(result["ids"]):
                for column, record_id in enumerate(ids):
                    candidate = found.setdefault(record_id, _Candidate(
                        collection=collection, similarities=[math.nan] * len(queries),
                    ))
                    candidate.similarities[row] = 1.0 - float(distances[row][column])
                    if metadatas is not None and documents is not None:
                        candidate.metadata = dict(metadatas[row][column] or {})
                        candidate.caption = documents[row][column] or ""
        return found

    def _rank(
        self,
        candidates: dict[str, _Candidate],
        image_vector: Vector | None,
        text_vector: Vector | None,
        k: int,
        fusion: Fusion | None,
        filters: Mapping[str, str],
    ) -> list[RetrievedExample]:
        queries = [v for v in (image_vector, text_vector) if v is not None]
        ids = [i for i, c in candidates.items() if not filters or _matches(c.metadata, filters)]
        if not ids:
            return []
        fusion = fusion or self.settings.rag_fusion
        if fusion == "weighted":
            _load_details(candidates, ids, queries)
        table = np.array([candidates[i].similarities for i in ids], dtype=np.float64)
        columns = iter(table.T)
        image_sims = next(columns) if image_vector is not None else None
        text_sims = next(columns) if text_vector is not None else None
        scores = fuse(image_sims, text_sims, fusion, self.settings.rag_image_weight)
        ordered = [ids[index] for index in np.argsort(-scores, kind="stable")]
        score_of = dict(zip(ids, scores, strict=True))
        picked: list[str] = []
        seen_tunes: set[str] = set()
        for start in range(0, len(ordered), 2 * k):
            chunk = ordered[start:start + 2 * k]
            _load_details(candidates, chunk, queries)
            for record_id in chunk:
                tune_key = _tune_fingerprint(str(candidates[record_id].metadata.get("abc", "")))
                if tune_key not in seen_tunes and len(picked) < k:
                    seen_tunes.add(tune_key)
                    picked.append(record_id)
            if len(picked) == k:
                break
        return [self._example(i, candidates[i], float(score_of[i]), image_vector is not None)
                for i in picked]

    def _example(
        self, record_id: str, candidate: _Candidate, score: float, has_image: bool
    ) -> RetrievedExample:
        similarities = iter(candidate.similarities)
        image_similarity = next(similarities) if has_image else None
        text_similarity = next(similarities, None)
        metadata = candidate.metadata
        abc, trimmed = trim_abc(str(metadata.get("abc", "")), self.settings.rag_example_tokens)
        return RetrievedExample(
            id=record_id, caption=candidate.caption or "", abc=abc, score=score,
            image_similarity=image_similarity, text_similarity=text_similarity, trimmed=trimmed,
            metadata={key: value for key, value in metadata.items() if key != "abc"},
        )


@dataclass
class _Candidate:
    collection: Collection
    similarities: list[float]
    caption: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return self.caption is not None and not any(math.isnan(s) for s in self.similarities)


def _load_details(
    candidates: Mapping[str, _Candidate], ids: Sequence[str], queries: Sequence[Vector]
) -> None:
    """Caption, metadata and exact similarities (from the stored vectors) where missing."""
    by_collection: dict[str, list[str]] = {}
    for record_id in ids:
        candidate = candidates[record_id]
        if not candidate.complete:
            by_collection.setdefault(candidate.collection.name, []).append(record_id)
    for group in by_collection.values():
        stored = candidates[group[0]].collection.get(
            ids=group, include=["embeddings", "metadatas", "documents"]
        )
        vectors = np.asarray(stored["embeddings"], dtype=np.float32)
        for row, record_id in enumerate(stored["ids"]):
            candidate = candidates[record_id]
            candidate.similarities = [float(vectors[row] @ q) for q in queries]
            candidate.metadata = dict((stored["metadatas"] or [])[row] or {})
            candidate.caption = (stored["documents"] or [])[row] or ""


def fuse(
    image_sims: npt.NDArray[np.float64] | None,
    text_sims: npt.NDArray[np.float64] | None,
    fusion: Fusion,
    image_weight: float,
) -> npt.NDArray[np.float64]:
    """Reciprocal-rank fusion is scale-free: image-to-caption similarities run far lower than
    text-to-caption ones, so a plain sum would let the description decide alone. A NaN marks a
    record one query did not find: it ranks below every record that query found."""
    if image_sims is None or text_sims is None:
        single = image_sims if image_sims is not None else text_sims
        assert single is not None
        return np.asarray(single, dtype=np.float64)
    if fusion == "weighted":
        return image_weight * np.asarray(image_sims, dtype=np.float64) + (
            1 - image_weight) * np.asarray(text_sims, dtype=np.float64)
    image_ranks = _ranks(image_sims)
    text_ranks = _ranks(text_sims)
    return 2 * (image_weight / (RRF_OFFSET + image_ranks)
                + (1 - image_weight) / (RRF_OFFSET + text_ranks))


def _ranks(similarities: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    values = np.nan_to_num(np.asarray(similarities, dtype=np.float64), nan=-np.inf)
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[np.argsort(-values, kind="stable")] = np.arange(1, len(values) + 1)
    return ranks


def _matches(metadata: Mapping[str, Any], filters: Mapping[str, str]) -> bool:
    """Each filter is a case-insensitive substring of that field: key=minor, meter=6/8."""
    return all(
        wanted.lower() in str(metadata.get(name, "")).lower() for name, wanted in filters.items()
    )


def _tune_fingerprint(abc: str) -> str:
    """The same tune stored twice (O'Neill's and Ryan's share tunes) has the same notes."""
    body = "".join(line for line in abc.splitlines() if not FIELD_LINE.match(line))
    return hashlib.sha256(re.sub(r"\s+", "", body).encode()).hexdigest()


def shown_similarity(value: float | None) -> str:
    """A similarity as tables and reports show it: three decimals, or a dash where that query
    was not asked (no image, or no description)."""
    return "—" if value is None else f"{value:.3f}"


def trim_abc(abc: str, token_budget: int) -> tuple[str, bool]:
    """The header and as many whole bars as fit `token_budget` (estimated), cut at a bar line."""
    budget = int(token_budget * CHARS_PER_TOKEN)
    if len(abc) <= budget:
        return abc, False
    kept: list[str] = []
    used = 0
    for line in abc.splitlines():
        if used + len(line) + 1 <= budget:
            kept.append(line)
            used += len(line) + 1
            continue
        if not FIELD_LINE.match(line):
            room = budget - used
            cut = line.rfind("|", 0, room)
            if cut > 0:
                kept.append(line[:cut + 1])
        break
    kept.append(TRIMMED_MARK)
    return "\n".join(kept) + "\n", True
