"""Chroma retrieval at MidiCaps scale, with synthetic unit vectors of the embedder's dimension.

    .venv/bin/python -m benchmarks.retrieval [--rows 10000 100000 170000] [--dim 512]

For each size: ingest throughput, size on disk, resident memory, and the latency of a fused
top-5 query (image and description vectors, both similarities, fusion, de-duplication) with and
without a metadata filter; the CLIP forward pass is not included. Goal: under 10 ms median at
170k rows. Also times the configured embedder (`benchmarks.embedder` has the details).
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL.Image import Image

from benchmarks.timing import latencies
from img2music.settings import Settings
from img2music.tools.retrieval.index import Vector, open_collection
from img2music.tools.retrieval.retriever import Retriever

BATCH = 5_000
QUERIES = 200
METERS = ("2/4", "3/4", "4/4", "6/8", "9/8", "12/8", "3/8", "2/2", "5/4", "7/8")


class SyntheticSpace:
    """Vectors given directly; the benchmark measures the store and the fusion, not CLIP."""

    name = "synthetic"

    def embed_texts(self, texts: Sequence[str]) -> Vector:
        raise NotImplementedError

    def embed_images(self, images: Sequence[Image]) -> Vector:
        raise NotImplementedError


def unit_vectors(rng: np.random.Generator, rows: int, dim: int) -> Vector:
    vectors = rng.standard_normal((rows, dim)).astype(np.float32)
    normalised: Vector = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return normalised


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def resident_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(rows: int, dim: int, rng: np.random.Generator) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="img2music-bench-") as work:
        settings = Settings(data_dir=Path(work))
        collection = open_collection("music21", SyntheticSpace.name, settings=settings,
                                     create=True)
        assert collection is not None
        start = time.perf_counter()
        for offset in range(0, rows, BATCH):
            size = min(BATCH, rows - offset)
            collection.add(
                ids=[f"r{offset + i}" for i in range(size)],
                embeddings=unit_vectors(rng, size, dim),
                documents=[f"caption {offset + i}" for i in range(size)],
                metadatas=[{"meter": METERS[(offset + i) % len(METERS)],
                            "abc": f"X:1\nT:t{offset + i}\nK:C\nC{offset + i % 7}|]\n"}
                           for i in range(size)],
            )
        ingest = rows / (time.perf_counter() - start)
        retriever = Retriever(SyntheticSpace(), settings=settings)
        queries = [(unit_vectors(rng, 1, dim)[0], unit_vectors(rng, 1, dim)[0])
                   for _ in range(QUERIES)]
        cycle = iter(queries * 4)
        retriever.search(*next(cycle), k=5)
        plain = latencies(lambda: retriever.search(*next(cycle), k=5), QUERIES)
        filtered = latencies(
            lambda: retriever.search(*next(cycle), k=5, filters={"meter": "6/8"}), QUERIES
        )
        disk = folder_bytes(Path(work)) / 1e6
    return [f"{rows:>8,}", f"{ingest:>9,.0f}", f"{disk:>8.0f}", f"{resident_mb():>7.0f}",
            f"{plain[0]:>7.2f}", f"{plain[1]:>7.2f}", f"{filtered[0]:>7.2f}",
            f"{filtered[1]:>7.2f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000, 170_000])
    parser.add_argument("--dim", type=int, default=512, help="512 for ViT-B-32, 768 for L-14")
    arguments = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"fused top-5 over synthetic unit vectors of dimension {arguments.dim}, "
          f"{QUERIES} queries each; filter: meter=6/8 (1 row in {len(METERS)})")
    print(f"{'rows':>8} {'ingest/s':>9} {'disk MB':>8} {'RSS MB':>7} {'q med':>7} {'q p95':>7} "
          f"{'fq med':>7} {'fq p95':>7}   (milliseconds)")
    for rows in arguments.rows:
        print(" ".join(run(rows, arguments.dim, rng)), flush=True)


if __name__ == "__main__":
    main()
