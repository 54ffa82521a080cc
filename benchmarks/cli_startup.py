"""Time the command line as a user meets it: whole processes, from start to exit.

    .venv/bin/python -m benchmarks.cli_startup [--runs 10]

Goal: `img2music --help` and `img2music check tune.abc` each under 0.5 s median on a 2-core
CPU, so the toolkit answers like the programs it wraps. Commands that need the heavy libraries
(`check --metrics` needs MusPy) are timed too, for comparison. Each command runs once first,
untimed, so the operating system's file cache is warm, as it is for a user's second call.
Prints a table of median and p95 seconds.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.timing import percentile

TUNE = """X:1
T:Harbour at dusk
M:6/8
L:1/8
Q:3/8=60
K:Am
E | A2 B c2 d | e3 c2 A | B2 c d2 B | A3 z2 :|
"""
GOAL_S = 0.5


def commands(tune: Path) -> dict[str, list[str]]:
    program = str(Path(sys.executable).with_name("img2music"))
    return {
        "img2music --help": [program, "--help"],
        "img2music check tune.abc": [program, "check", str(tune)],
        "img2music check --json tune.abc": [program, "check", "--json", str(tune)],
        "img2music check --metrics tune.abc": [program, "check", "--metrics", str(tune)],
    }


def seconds(command: list[str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(  # noqa: S603 - our own program, no shell, arguments as a list
        command, capture_output=True, timeout=120, check=False)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({result.returncode}): "
                         f"{result.stderr.decode(errors='replace')[-500:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="timed runs per command")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        tune = Path(folder) / "tune.abc"
        tune.write_text(TUNE, encoding="utf-8")
        print(f"{'command':<38} {'median s':>9} {'p95 s':>7}  runs  goal")
        for name, command in commands(tune).items():
            seconds(command)  # warm the file cache
            times = [seconds(command) for _ in range(arguments.runs)]
            goal = f"< {GOAL_S:g} s" if "--metrics" not in command else "-"
            print(f"{name:<38} {statistics.median(times):>9.3f} "
                  f"{percentile(times, 0.95):>7.3f}  {len(times):>4}  {goal}")


if __name__ == "__main__":
    main()
