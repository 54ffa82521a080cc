"""The server under load: many clients at once against a model that takes its time; and the
CPU one composition costs outside the model, step by step.

    .venv/bin/python -m benchmarks.server_load [--requests 200] [--concurrency 32]
        [--latency 0.3] [--max-runs 8] [--queue 8] [--compositions 10]

The real app on a loopback port, with the scripted model server answering every call after
`latency` seconds (describe, compose, refine: three calls a run) and canned examples. Clients
send the same photo; beyond `max-runs` running and `queue` waiting the server answers 429 at
once, and a client waits as its Retry-After says and sends again (as the openai client does).
Reported: the 429s seen, runs finished per second, and latency of the answered requests from
their first attempt.
What must hold: no 5xx, every answered run's files on disk (those made when first asked for:
listed in its report as such, and fetched for one run), at most `max-runs` compositions
calling the model at once, and no 429 when clients stay within the limits.

CPU: `compositions` runs one after another in this process with a model that answers at once,
each costed in CPU-seconds of this process and of the programs it ran (abc2midi, fluidsynth,
sox, abcm2ps), in all and per step (each node, each file written). Goal: at most 0.4 s a
composition (median). Waves: 64 requests at concurrency 16 against a model that answers in
0.5 s, beside four sequential waves of 16; goal: within 1.5x.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import statistics
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import httpx

from benchmarks.timing import percentile
from img2music.pipeline.runs import acompose
from tests.openai_server import Behaviour
from tests.test_compose_cli import PHOTO
from tests.test_server import image_message, img2music_server


@dataclass
class LoadResult:
    requests: int
    concurrency: int
    statuses: dict[int, int] = field(default_factory=dict)  # final answers
    refusals: int = 0  # 429s seen, retried or not
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)  # of the answered (200) requests
    missing_files: list[str] = field(default_factory=list)
    run_folders: int = 0
    most_model_calls_at_once: int = 0

    @property
    def answered(self) -> int:
        return self.statuses.get(200, 0)

    @property
    def server_errors(self) -> int:
        return sum(count for status, count in self.statuses.items() if status >= 500)


def load(requests: int, concurrency: int, *, latency: float, max_runs: int, queue: int,
         data: Path, retry: bool = True) -> LoadResult:
    """Fire `requests` compositions, `concurrency` at a time, and check what the server kept;
    without `retry` a 429 is the request's final answer."""
    result = LoadResult(requests=requests, concurrency=concurrency)
    body = json.dumps({"model": "img2music", "messages": image_message()}).encode()
    with img2music_server(data, behaviour=Behaviour(sleep_s=latency),
                          server_max_concurrent_runs=max_runs,
                          server_max_queued_runs=queue) as server:
        answers: list[tuple[int, int, float, dict[str, object]]] = []

        def one(_: int) -> None:
            started = time.perf_counter()
            refused = 0
            while True:
                response = httpx.post(f"{server.url}/v1/chat/completions", content=body,
                                      headers={"Content-Type": "application/json"}, timeout=600)
                if response.status_code != 429:
                    break
                refused += 1
                if not retry:
                    break
                time.sleep(float(response.headers["retry-after"]))
            payload = response.json() if response.status_code == 200 else {}
            answers.append((response.status_code, refused, time.perf_counter() - started,
                            payload))

        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=concurrency) as clients:
            list(clients.map(one, range(requests)))
        result.seconds = time.perf_counter() - started
        result.most_model_calls_at_once = server.vlm.most_in_flight
        fetched_later = False
        for status, refused, seconds, payload in answers:
            result.statuses[status] = result.statuses.get(status, 0) + 1
            result.refusals += refused
            if status != 200:
                continue
            result.latencies.append(seconds)
            extension: dict[str, object] = payload["img2music"]  # type: ignore[assignment]
            folder = server.runs / str(extension["run_id"])
            report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
            later = report.get("when_asked", [])
            for name in extension["files"]:  # type: ignore[attr-defined]
                if name not in later and not (folder / name).is_file():
                    result.missing_files.append(f"{folder.name}/{name}")
            if later and not fetched_later:  # made when asked: ask, for one run
                fetched_later = True
                for name in later:
                    url = extension["files"][name]  # type: ignore[index]
                    if httpx.get(url, timeout=600).status_code != 200 or \
                            not (folder / name).is_file():
                        result.missing_files.append(f"{folder.name}/{name} (asked for)")
            if extension["status"] != "done":
                result.missing_files.append(f"{folder.name}: {extension['failure']}")
        result.run_folders = sum(1 for path in server.runs.iterdir() if path.is_dir())
    return result


def table(results: list[LoadResult]) -> str:
    lines = ["| requests | concurrency | 200 | 429s seen | 5xx | runs/s | median s | p95 s |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        median = statistics.median(r.latencies) if r.latencies else float("nan")
        p95 = percentile(r.latencies, 0.95) if r.latencies else float("nan")
        lines.append(f"| {r.requests} | {r.concurrency} | {r.answered} | "
                     f"{r.refusals} | {r.server_errors} | "
                     f"{r.answered / r.seconds:.2f} | {median:.2f} | {p95:.2f} |")
    return "\n".join(lines)


def cpu_now() -> float:
    """CPU-seconds of this process and of the programs it ran and waited for."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


# What is costed on its own inside writing a run's files (the nodes are costed by their updates).
WRITE_STEPS = {
    "img2music.pipeline.report": ("render_all", "_attention_maps", "_html"),
    "img2music.tools.render.tune": ("compile_abc", "render_wav", "convert_audio", "render_svg",
                                    "render_pianoroll"),
}


@contextmanager
def costed(steps: dict[str, list[float]]) -> Iterator[None]:
    """The write steps wrapped, for as long as the block runs, to add their CPU to `steps`."""
    saved = []
    for module_name, names in WRITE_STEPS.items():
        module = importlib.import_module(module_name)
        for name in names:
            original = getattr(module, name)
            saved.append((module, name, original))

            def timed(*args: Any, _original: Any = original, _name: str = name,
                      **kwargs: Any) -> Any:
                started = cpu_now()
                try:
                    return _original(*args, **kwargs)
                finally:
                    steps.setdefault(f"write: {_name}", []).append(cpu_now() - started)

            setattr(module, name, timed)
    try:
        yield
    finally:
        for module, name, original in saved:
            setattr(module, name, original)


def composition_cpu(compositions: int, data: Path, *, when_asked: bool = True,
                    ) -> tuple[list[float], dict[str, list[float]]]:
    """CPU-seconds of each composition (model answers at once), and of each step in all runs;
    `when_asked` as the server composes (audio and the HTML page made when first fetched),
    otherwise as the CLI does (every file at once)."""
    totals: list[float] = []
    steps: dict[str, list[float]] = {}
    with img2music_server(data) as server:  # for its settings, examples and scripted model
        settings = server.settings
        photo = data / "photo.jpg"
        photo.write_bytes(PHOTO.read_bytes())

        async def one(index: int) -> None:
            mark = cpu_now()

            def progress(_: str, node: str, __: Any, take: int | None = None) -> None:
                nonlocal mark
                now = cpu_now()
                steps.setdefault(f"node: {node}", []).append(now - mark)
                mark = now

            started = cpu_now()
            result = await acompose(photo, out_dir=data / "cpu" / str(index), settings=settings,
                                    retriever_for=lambda _: server.examples,
                                    on_progress=progress, files_when_asked=when_asked)
            assert result.ok, result.error
            totals.append(cpu_now() - started)
            steps.setdefault("write: all files", []).append(cpu_now() - mark)

        with costed(steps):
            for index in range(compositions + 1):  # the first warms caches and is left out
                asyncio.run(one(index))
                if index == 0:
                    totals.clear()
                    steps.clear()
    return totals, steps


def cpu_table(totals: list[float], steps: dict[str, list[float]], how: str) -> str:
    lines = [f"CPU-seconds per composition outside the model, {how}, {len(totals)} "
             f"compositions: median {statistics.median(totals):.3f}, "
             f"p95 {percentile(totals, 0.95):.3f} (goal: median at most 0.4)",
             "| step | runs | median CPU s | p95 CPU s | CPU s per composition |",
             "|---|---:|---:|---:|---:|"]
    for name, values in sorted(steps.items(), key=lambda item: -sum(item[1])):
        lines.append(f"| {name} | {len(values)} | {statistics.median(values):.3f} | "
                     f"{percentile(values, 0.95):.3f} | {sum(values) / len(totals):.3f} |")
    return "\n".join(lines)


def waves(latency: float) -> str:
    """64 requests at concurrency 16 against four sequential waves of 16."""
    with TemporaryDirectory() as data:
        one_wave = [load(16, 16, latency=latency, max_runs=16, queue=16,
                         data=Path(data) / f"wave{i}") for i in range(4)]
    with TemporaryDirectory() as data:
        together = load(64, 16, latency=latency, max_runs=16, queue=16, data=Path(data))
    sequential = sum(result.seconds for result in one_wave)
    return (f"64 requests at concurrency 16: {together.seconds:.2f} s; four sequential waves of "
            f"16: {sequential:.2f} s; ratio {together.seconds / sequential:.2f} (goal: at most "
            f"1.5); model latency {latency} s a call; answered {together.answered}/64")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--latency", type=float, default=0.3)
    parser.add_argument("--max-runs", type=int, default=8)
    parser.add_argument("--queue", type=int, default=8)
    parser.add_argument("--compositions", type=int, default=10)
    parser.add_argument("--only", choices=["cpu", "waves", "load"], default=None)
    arguments = parser.parse_args()
    if arguments.only in (None, "cpu"):
        for when_asked, how in ((True, "as the server composes (audio and the HTML page "
                                 "made when first fetched)"), (False, "every file at once")):
            with TemporaryDirectory() as data:
                print(cpu_table(*composition_cpu(arguments.compositions, Path(data),
                                                 when_asked=when_asked), how))
    if arguments.only in (None, "waves"):
        print(waves(0.5))
    if arguments.only == "cpu" or arguments.only == "waves":
        return
    results = []
    for concurrency in (arguments.max_runs + arguments.queue, arguments.concurrency):
        with TemporaryDirectory() as data:
            results.append(load(arguments.requests, concurrency, latency=arguments.latency,
                                max_runs=arguments.max_runs, queue=arguments.queue,
                                data=Path(data)))
    print(f"limits: {arguments.max_runs} running + {arguments.queue} waiting; model latency "
          f"{arguments.latency} s a call")
    print(table(results))


if __name__ == "__main__":
    main()
