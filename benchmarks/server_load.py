"""The server under load: many clients at once against a model that takes its time.

    .venv/bin/python -m benchmarks.server_load [--requests 200] [--concurrency 32]
        [--latency 0.3] [--max-runs 8] [--queue 8]

The real app on a loopback port, with the scripted model server answering every call after
`latency` seconds (describe, compose, refine: three calls a run) and canned examples. Clients
send the same photo; beyond `max-runs` running and `queue` waiting the server answers 429 at
once, and a client waits as its Retry-After says and sends again (as the openai client does).
Reported: the 429s seen, runs finished per second, and latency of the answered requests from
their first attempt.
What must hold: no 5xx, every answered run's files on disk, at most `max-runs` compositions
calling the model at once, and no 429 when clients stay within the limits.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory

import httpx

from benchmarks.timing import percentile
from tests.openai_server import Behaviour
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
        for status, refused, seconds, payload in answers:
            result.statuses[status] = result.statuses.get(status, 0) + 1
            result.refusals += refused
            if status != 200:
                continue
            result.latencies.append(seconds)
            extension: dict[str, object] = payload["img2music"]  # type: ignore[assignment]
            folder = server.runs / str(extension["run_id"])
            for name in extension["files"]:  # type: ignore[attr-defined]
                if not (folder / name).is_file():
                    result.missing_files.append(f"{folder.name}/{name}")
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--latency", type=float, default=0.3)
    parser.add_argument("--max-runs", type=int, default=8)
    parser.add_argument("--queue", type=int, default=8)
    arguments = parser.parse_args()
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
