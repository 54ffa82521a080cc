"""What endpoint profiles cost: asking an endpoint what it is, and fitting an image to a limit.

    .venv/bin/python -m benchmarks.profiles [--samples 20]

A profile is asked for once per process and endpoint, so its probes are paid by the first call
only (loopback servers here: the network round trips of a remote endpoint add to it). An image
is fitted only when its data URL is over the profile's limit, which the default pixel budget
never reaches; a user who raises it to 12 megapixels pays this per distinct image. Prints
median and p95 milliseconds.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from matplotlib import cbook
from PIL import Image

from benchmarks.timing import percentile
from img2music.graph.models import image_data_url
from img2music.graph.profiles import PROFILES, profile_for
from tests.openai_server import Dialect, scripted_server

PHOTO = Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
KINDS: list[tuple[str, Dialect, str]] = [
    ("vllm", "vllm", "Kwai-Keye/Keye-VL-8B-Preview"),
    ("openai", "openai", "gpt-4o-mini"),
    ("ollama (library model)", "ollama", "qwen2.5vl:7b"),
    ("ollama (user model)", "ollama", "someone/llava:13b"),
    ("generic", "generic", "a-vision-model"),
]


def timed(action: Callable[[], object], samples: int) -> list[float]:
    milliseconds = []
    for _ in range(samples):
        started = time.perf_counter()
        action()
        milliseconds.append((time.perf_counter() - started) * 1000)
    return milliseconds


def row(name: str, milliseconds: list[float], note: str = "") -> None:
    print(f"| {name} | {statistics.median(milliseconds):.3f} | "
          f"{percentile(milliseconds, 0.95):.3f} | {note} |")


def detection(samples: int) -> None:
    print("| endpoint | first call ms | p95 | requests |")
    print("|---|---:|---:|---|")
    for name, dialect, model in KINDS:
        milliseconds: list[float] = []
        probes: list[str] = []
        for _ in range(samples):  # a fresh server each time: a fresh endpoint to ask
            with scripted_server(lambda _: "", model=model, dialect=dialect) as server:
                milliseconds += timed(
                    lambda: profile_for(server.url, api_key="EMPTY", choice="auto"), 1)
                probes = server.gets
        row(name, milliseconds, ", ".join(probes))
    with scripted_server(lambda _: "", dialect="vllm") as server:
        profile_for(server.url, api_key="EMPTY", choice="auto")
        row("any, asked before", timed(
            lambda: profile_for(server.url, api_key="EMPTY", choice="auto"), samples * 50),
            "none")


def fitting(samples: int) -> None:
    limit = PROFILES["generic"].max_image_bytes
    photo = Image.open(PHOTO).convert("RGB").resize((4000, 3000), Image.Resampling.LANCZOS)
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (3000, 4000, 3),
                                                              dtype=np.uint8))
    print(f"\n| 12 MP image | fitted to {limit / 1e6:g} MB: ms | p95 | data URL |")
    print("|---|---:|---:|---|")
    for name, image in (("photo (upscaled)", photo), ("noise (worst case)", noise)):
        plain = image_data_url(image, max_pixels=12_000_000)
        fitted = image_data_url(image, max_pixels=12_000_000, max_bytes=limit)
        row(name, timed(lambda image=image: image_data_url(  # type: ignore[misc]
            image, max_pixels=12_000_000, max_bytes=limit), samples),
            f"{len(plain) / 1e6:.1f} MB → {len(fitted) / 1e6:.1f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20)
    samples = parser.parse_args().samples
    detection(samples)
    fitting(max(3, samples // 4))


if __name__ == "__main__":
    main()
