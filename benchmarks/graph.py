"""The graph's own cost per image, and whether a batch runs in parallel against a slow model.

    .venv/bin/python -m benchmarks.graph [--images 16] [--latency 1.0]

1. Overhead: a zero-latency scripted model and canned examples, so what is timed is the graph
   itself (extraction, repair, parse-check, evaluate, state handling; no CLIP, no rendering).
   Goal: at most 35 ms per image (median).
2. Batch: N images through the real OpenAI client against a loopback server that answers every
   call after `latency` seconds (three calls an image: describe, compose, refine), at
   concurrency 1, 4 and N. Goal: at concurrency N, within 1.5x the time of one image.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from functools import partial
from typing import Any

from benchmarks.timing import percentile
from img2music.graph.context import Context
from img2music.graph.graph import build_graph
from img2music.graph.models import chat_model
from img2music.graph.state import Input
from img2music.settings import get_settings
from img2music.tools.images import image_data_url, open_image
from tests.openai_server import scripted_server
from tests.scripted import ScriptedChatModel
from tests.test_graph import DESCRIPTION, PHOTO, REFINED, TUNE, Examples, answer, reply_for


def _same(model: ScriptedChatModel, _: Context) -> ScriptedChatModel:
    return model


def overhead(images: int, state: Input, context: Context) -> list[float]:
    examples = Examples()
    times = []
    for _ in range(images + 1):
        model = ScriptedChatModel(replies=[DESCRIPTION, answer(TUNE), answer(REFINED)])
        graph = build_graph(model_for=partial(_same, model), retriever_for=lambda _: examples)
        start = time.perf_counter()
        asyncio.run(graph.ainvoke(state, context=context))
        times.append((time.perf_counter() - start) * 1000)
    return times[1:]


def batch(images: int, concurrency: int, state: Input, context: Context) -> float:
    examples = Examples()
    graph = build_graph(retriever_for=lambda _: examples)

    async def every() -> None:
        slots = asyncio.Semaphore(concurrency)

        async def one() -> None:
            async with slots:
                await graph.ainvoke(state, context=context)

        await asyncio.gather(*(one() for _ in range(images)))

    start = time.perf_counter()
    asyncio.run(every())
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--latency", type=float, default=1.0, help="seconds per model call")
    arguments = parser.parse_args()
    state: Input = {"image": image_data_url(open_image(PHOTO), max_pixels=448 * 448)}
    context = Context(explain="none", refine_rounds=1)
    times = overhead(20, state, context)
    print("graph overhead per image (scripted model, no CLIP, no rendering), 20 images:")
    print(f"  median {statistics.median(times):.1f} ms, p95 {percentile(times, 0.95):.1f} ms")

    def slow(body: dict[str, Any]) -> str:
        time.sleep(arguments.latency)
        return reply_for(body)

    with scripted_server(slow) as server:
        served = Context.from_settings(get_settings(), explain="none", refine_rounds=1,
                                       vlm_base_url=server.url, vlm_model=server.model)
        chat_model(served, settings=get_settings())
        batch(1, 1, state, served)  # untimed: the first run pays for imports and first calls
        single = batch(1, 1, state, served)
        print(f"\nbatch against a {arguments.latency:g} s-per-call endpoint "
              f"(3 calls an image): one image {single:.2f} s")
        print(f"{'images':>7} {'concurrency':>12} {'wall s':>8} {'vs one image':>13}")
        for concurrency in (1, 4, arguments.images):
            wall = batch(arguments.images, concurrency, state, served)
            print(f"{arguments.images:>7} {concurrency:>12} {wall:>8.2f} {wall / single:>12.2f}x")


if __name__ == "__main__":
    main()
