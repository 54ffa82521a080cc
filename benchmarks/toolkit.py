"""Time parse-check, ABC to MIDI and metrics per tune on real corpus tunes, for both backends.

    .venv/bin/python -m benchmarks.toolkit [--tunes 200]

Goal: check + convert + evaluate under 30 ms median per tune with abc2midi, so that the step is
negligible next to a model call. Prints a table of median and p95 milliseconds.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable
from functools import partial
from itertools import islice
from typing import TypeVar

from benchmarks.timing import percentile
from img2music.settings import get_settings
from img2music.tools.abc.check import Backend, compile_abc
from img2music.tools.abc.scan import scan_abc
from img2music.tools.corpus.music21_corpus import CorpusTune, iter_corpus_tunes
from img2music.tools.metrics import evaluate_midi
from img2music.tools.programs import which

STRIDE = 37
T = TypeVar("T")


def timed(action: Callable[[], T]) -> tuple[T, float]:
    """The action's result and how long it took, in milliseconds."""
    start = time.perf_counter()
    result = action()
    return result, (time.perf_counter() - start) * 1000


def valid_sample(count: int) -> list[CorpusTune]:
    spread = (tune for index, tune in enumerate(iter_corpus_tunes()) if index % STRIDE == 0)
    return list(islice((t for t in spread if compile_abc(t.text).check.ok), count))


def measure(tunes: list[CorpusTune], backend: Backend) -> dict[str, list[float]]:
    settings = get_settings()
    timings: dict[str, list[float]] = {"scan": [], "check + MIDI": [], "metrics": [], "total": []}
    for tune in tunes:
        _, scan = timed(partial(scan_abc, tune.text))
        compiled, compile_ms = timed(partial(compile_abc, tune.text, settings=settings,
                                             backend=backend))
        if compiled.midi is None:
            continue
        _, metrics = timed(partial(evaluate_midi, compiled.midi, bars=compiled.check.bars,
                                   voices=compiled.check.voices))
        timings["scan"].append(scan)
        timings["check + MIDI"].append(compile_ms)
        timings["metrics"].append(metrics)
        timings["total"].append(compile_ms + metrics)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tunes", type=int, default=200, help="corpus tunes to time")
    arguments = parser.parse_args()
    warnings.filterwarnings("ignore")
    tunes = valid_sample(arguments.tunes)
    backends: list[Backend] = ["abc2midi", "music21"] if which("abc2midi") else ["music21"]
    measure(tunes[:5], backends[0])
    print(f"{len(tunes)} valid corpus tunes (every {STRIDE}th tune of the five folk collections)")
    print(f"{'backend':<10} {'step':<14} {'median ms':>10} {'p95 ms':>10}")
    for backend in backends:
        for step, values in measure(tunes, backend).items():
            print(f"{backend:<10} {step:<14} {statistics.median(values):>10.2f} "
                  f"{percentile(values, 0.95):>10.2f}")


if __name__ == "__main__":
    main()
