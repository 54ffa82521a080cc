"""Several takes of one run: where each take's files go, the run's report over them, and the
take the user picks.

A run of N takes describes the image and retrieves its examples once, then runs the graph N
times from there (forking the state it had before composing), each take with its own seed
(`pipeline.runs.acompose`). Each take writes
the files and the report a run of one take writes, in `take-1/`, `take-2/`, … of the run's
folder; the run's own `report.json` lists every take (seed, status, tune, faults, metrics,
files), what they shared (the description, the examples, the model calls they spent) and which
take the user picked (`picked`, None until one is).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from img2music.graph.state import State, merge
from img2music.pipeline.report import chosen_metrics, read_report
from img2music.redaction import scrub
from img2music.settings import Settings
from img2music.tools.files import write_atomic

LAST_SHARED_NODE = "retrieve"
FIRST_TAKE_NODE = "compose"


class PickRefused(ValueError):
    """A pick that cannot be recorded: the message says why, in one line."""


def take_folder(take: int) -> str:
    """The folder of take `take` (0 the first) inside its run's folder: take-1, take-2, …"""
    return f"take-{take + 1}"


def write_takes_report(out: Path, shared: State, reports: Sequence[dict[str, Any]],
                       seeds: Sequence[int], report: dict[str, Any], *,
                       settings: Settings) -> dict[str, Any]:
    """The run's report.json over its takes (each take's own report is in its folder)."""
    takes = [take_entry(number, take, seed)
             for number, (take, seed) in enumerate(zip(reports, seeds, strict=True))]
    usage: dict[str, Any] = dict(shared.get("usage", {}))
    timings: dict[str, Any] = dict(shared.get("timings", {}))
    for take in reports:
        usage = merge(usage, take.get("usage", {}))
        timings = merge(timings, take.get("timings", {}))
    done = any(take["status"] == "done" for take in takes)
    failures = [take for take in takes if take["status"] != "done"]
    kinds = {take["failure_kind"] for take in failures}
    full = scrub({
        **report,
        "status": "done" if done else "failed",
        "failure": None if done else f"no take has a tune; take 1: {failures[0]['failure']}",
        "failure_kind": None if done else (kinds.pop() if len(kinds) == 1 else "no_tune"),
        "description": shared.get("description", ""),
        "examples": shared.get("examples", []),
        "usage": usage, "timings": timings,
        "takes": takes, "picked": None,
        "files": ["report.json"],
    }, settings)
    write_atomic(out / "report.json", json.dumps(full, indent=2, default=str))
    return full


def take_entry(take: int, report: dict[str, Any], seed: int) -> dict[str, Any]:
    """What the run's report says of one take: enough to compare the takes and pick one."""
    done = report.get("status") == "done"
    return {
        "take": take + 1, "folder": take_folder(take), "seed": seed,
        "status": "done" if done else "failed",
        "failure": None if done else report.get("failure") or "no tune",
        "failure_kind": None if done else report.get("failure_kind") or "no_tune",
        "final_abc": report.get("final_abc") if done else None,
        "motivation": report.get("motivation", ""),
        "faults": report.get("faults", []) if done else [],
        "fault_count": report.get("fault_count", 0) if done else 0,
        "metrics": chosen_metrics(report) if done else None,
        "files": report.get("files", []),
    }


def pick_take(folder: Path, take: int) -> dict[str, Any]:
    """Record in the run's report that the user picked take `take` (1 the first); returns the
    report. The caller makes sure one pick at a time writes a run's report."""
    report = read_report(folder)
    takes = report.get("takes")
    if not takes:
        raise PickRefused(f"{folder.name} is not a run of several takes: there is nothing to "
                          "pick")
    if not 1 <= take <= len(takes):
        raise PickRefused(f"{folder.name} has takes 1 to {len(takes)}, not {take}")
    if takes[take - 1]["status"] != "done":
        raise PickRefused(f"take {take} of {folder.name} has no tune to pick: "
                          f"{takes[take - 1]['failure']}")
    report["picked"] = take
    write_atomic(folder / "report.json", json.dumps(report, indent=2, default=str))
    return report
