"""Time the CLIP embedder on this machine: images and captions per second.

    .venv/bin/python -m benchmarks.embedder [--model img2music-tiny --model ViT-B-32]
        [--pretrained none] [--batch-size 32] [--batches 5] [--context-length 248]

Indexing embeds every caption of a corpus once, and each tune then embeds one image and one
description, so caption throughput bounds index builds and image latency is paid per request.
Prints the median per-batch throughput and the throughput of the slow tail (the batch at the
95th percentile of batch time), after one warm-up batch.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np
from PIL import Image

from img2music.settings import Settings
from img2music.tools.retrieval.embedder import Embedder, load_embedder

T = TypeVar("T")

# A MidiCaps-like caption: about 60 tokens, within CLIP's 77.
CAPTION = (
    "A melodic classical piece in D minor with piano and strings, played at a moderate tempo "
    "in 3/4. The mood is melancholic and reflective; the chord progression moves between Dm, "
    "Gm and A7, and the piece lasts about two minutes."
)


def slowest_tail(seconds: list[float], fraction: float = 0.95) -> float:
    """The batch time at `fraction` of the sorted times: the slow tail a caller may wait."""
    ordered = sorted(seconds)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def photo_like_images(count: int, seed: int = 0) -> list[Image.Image]:
    """Random 640×480 RGB images: the resize and crop cost of a real photo, no download."""
    generator = np.random.default_rng(seed)
    return [
        Image.fromarray(generator.integers(0, 256, (480, 640, 3), dtype=np.uint8))
        for _ in range(count)
    ]


def throughputs(
    embed: Callable[[Sequence[T]], object], items: list[T], batches: int
) -> list[float]:
    """Items per second of each timed batch, after one warm-up batch."""
    embed(items)
    rates = []
    for _ in range(batches):
        start = time.perf_counter()
        embed(items)
        rates.append(len(items) / (time.perf_counter() - start))
    return rates


def measure(embedder: Embedder, batch_size: int, batches: int) -> dict[str, list[float]]:
    captions = [f"{CAPTION} ({index})" for index in range(batch_size)]
    return {
        "captions": throughputs(embedder.embed_texts, captions, batches),
        "images": throughputs(embedder.embed_images, photo_like_images(batch_size), batches),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", help="open_clip model (repeatable)")
    parser.add_argument("--pretrained", default="none", help="weights tag, file or none")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument("--batch-size", type=int, default=32, help="items per batch")
    parser.add_argument("--batches", type=int, default=5, help="timed batches per measure")
    parser.add_argument("--context-length", type=int, default=None, help="text positions")
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    print(f"{'embedder':<34} {'device':<6} {'input':<9} {'batch':>5} {'median/s':>9} "
          f"{'p95/s':>8} {'load s':>7}")
    for model in arguments.model or ["img2music-tiny", "ViT-B-32"]:
        settings = Settings(
            clip_model=model, clip_pretrained=arguments.pretrained,
            clip_context_length=arguments.context_length, clip_device=arguments.device,
            clip_batch_size=arguments.batch_size,
        )
        start = time.perf_counter()
        embedder = load_embedder(settings)
        load = time.perf_counter() - start
        for kind, rates in measure(embedder, arguments.batch_size, arguments.batches).items():
            slow_tail = slowest_tail([1 / rate for rate in rates])
            print(f"{embedder.name:<34} {embedder.device.type:<6} {kind:<9} "
                  f"{arguments.batch_size:>5} {statistics.median(rates):>9.1f} "
                  f"{1 / slow_tail:>8.1f} {load:>7.2f}")


if __name__ == "__main__":
    main()
