"""What the server answers, in OpenAI's shapes: a chat completion, or its stream of chunks, whose
`img2music` extension object carries the run (`run_summary`); and a failed run as OpenAI's error.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from img2music.graph.state import rounds_and_repairs, usage_totals
from img2music.pipeline.report import chosen_metrics, read_report
from img2music.pipeline.runs import Composition
from img2music.server.protocol import MODEL_ID, ApiError, ChatRequest, ErrorType
from img2music.server.run_pool import Job
from img2music.tools.abc.sections import section_names

# Failures that are the server's or the model's fault, not a musical outcome: they are HTTP errors.
FAILURE_STATUS: dict[str, tuple[int, ErrorType]] = {
    "bad_image": (400, "invalid_request_error"), "vlm_unavailable": (502, "upstream_error"),
    "timeout": (504, "timeout_error"), "internal": (500, "server_error"),
    "bad_prompt": (500, "server_error"),
}


def result_of(job: Job) -> Composition:
    """The finished run's composition."""
    assert job.result is not None, "a run's feed ends only when it has a result"
    return job.result


def failure_error(job: Job, result: Composition) -> ApiError:
    kind = result.failure_kind or "internal"
    status, error_type = FAILURE_STATUS[kind]
    return ApiError(status, f"{result.error} (run {job.id})", type=error_type, code=kind)


def answer_text(result: Composition) -> str:
    """What a plain chat client shows: why the music is as it is, then the tune."""
    if not result.ok:
        return f"No tune this time: {result.error}"
    motivation = result.motivation.strip()
    tune = f"```abc\n{(result.abc or '').strip()}\n```"
    return f"{motivation}\n\n{tune}" if motivation else tune


def usage_of(report: dict[str, Any]) -> dict[str, int]:
    """Model tokens the run spent, over every node and every attempt, as OpenAI counts them."""
    totals = usage_totals(report.get("usage", {}))
    prompt, completion = totals["input_tokens"], totals["output_tokens"]
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def run_summary(folder: Path, report: dict[str, Any], base: str, *, run_id: str | None = None,
                files_under: str = "") -> dict[str, Any]:
    """The `img2music` extension object: the run, its tune and measures, and its files' URLs;
    a run of several takes has no tune of its own but a summary per take (`takes`, each with
    its `take` number and its files under `/v1/runs/{id}/takes/{take}/`) and the take the
    user picked (`picked`, None until one is)."""
    run_id = run_id or folder.name
    attempts = report.get("attempts", [])
    rounds, repairs = rounds_and_repairs(attempts)
    summary: dict[str, Any] = {
        "run_id": run_id,
        "status": report.get("status", "failed"),
        "failure": report.get("failure"),
        "failure_kind": report.get("failure_kind") or (
            None if report.get("status") == "done" else "no_tune"),
        "abc": report.get("final_abc"),
        "faults": report.get("faults", []) if report.get("final_abc") else [],
        "fault_count": report.get("fault_count", 0) if report.get("final_abc") else 0,
        "controls": report.get("controls", []) if report.get("final_abc") else [],
        "motivation": report.get("motivation", ""),
        "description": report.get("description", ""),
        "metrics": chosen_metrics(report),
        "rounds": rounds,
        "repairs": repairs,
        "attempts": len(attempts),
        "examples": [{"id": e.get("id"), "caption": e.get("caption"), "score": e.get("score")}
                     for e in report.get("examples", [])],
        "prompt_set": report.get("prompt_set"),
        "seed": report.get("settings", {}).get("seed"),
        "wall_seconds": report.get("wall_seconds"),
        "usage": usage_of(report),
        "attention_maps": report.get("attention_maps"),
        "sections": section_names(report.get("final_abc")),
        "source": report.get("source"),
        "files": {name: f"{base}v1/runs/{run_id}/{files_under}{name}"
                  for name in report.get("files", [])
                  if name in report.get("when_asked", []) or (folder / name).is_file()},
    }
    if "takes" in report:
        summary["takes"] = [take_summary(folder, take, base, run_id) for take in report["takes"]]
        summary["picked"] = report.get("picked")
    return summary


def take_summary(folder: Path, take: dict[str, Any], base: str, run_id: str) -> dict[str, Any]:
    """One take's summary, from the report in its folder, with its number and seed."""
    take_dir = folder / take["folder"]
    return {**run_summary(take_dir, read_report(take_dir), base, run_id=run_id,
                          files_under=f"takes/{take['take']}/"),
            "take": take["take"], "seed": take["seed"]}


def finished_summary(job: Job, base: str) -> dict[str, Any]:
    """A finished run's summary, from the report it wrote."""
    return run_summary(job.folder, read_report(job.folder), base)


def choices_of(result: Composition) -> list[Composition]:
    """The answer's choices: one per take (OpenAI's `n`), the run itself when it has one."""
    return result.takes or [result]


def completion(job: Job, result: Composition, base: str) -> dict[str, Any]:
    summary = finished_summary(job, base)
    return {
        "id": f"chatcmpl-{job.id}", "object": "chat.completion", "created": int(time.time()),
        "model": MODEL_ID,
        "choices": [{"index": index, "finish_reason": "stop", "logprobs": None,
                     "message": {"role": "assistant", "content": answer_text(take)}}
                    for index, take in enumerate(choices_of(result))],
        "usage": summary["usage"],
        "img2music": summary,
    }


async def stream(job: Job, chat: ChatRequest, base: str) -> AsyncIterator[str]:
    """Progress in `img2music` extension fields; `delta.content` only carries the answer. With
    several takes, each choice's chunks carry its `index` (a take's progress too); the shared
    steps' progress is choice 0's, and the last chunk's extension holds every take."""
    created = int(time.time())
    begun: set[int] = set()

    def chunk(delta: dict[str, Any], finish: str | None = None,
              extension: dict[str, Any] | None = None, index: int = 0) -> str:
        if index not in begun:  # each choice's first chunk names its role, as OpenAI's do
            begun.add(index)
            delta = {"role": "assistant", "content": "", **delta}
        body: dict[str, Any] = {
            "id": f"chatcmpl-{job.id}", "object": "chat.completion.chunk", "created": created,
            "model": MODEL_ID,
            "choices": [{"index": index, "delta": delta, "finish_reason": finish,
                         "logprobs": None}],
        }
        if extension is not None:
            body["img2music"] = extension
        return sse(body)

    try:
        async for event in job.feed():
            if event["type"] in ("done", "failed"):
                break
            yield chunk({}, extension=event, index=event.get("take", 1) - 1)
        result = result_of(job)
        if result.failure_kind in FAILURE_STATUS:
            yield sse(failure_error(job, result).body())
            yield "data: [DONE]\n\n"
            return
        summary = await asyncio.to_thread(finished_summary, job, base)
        choices = choices_of(result)
        for index, take in enumerate(choices):
            yield chunk({"content": answer_text(take)}, index=index)
        for index in range(len(choices) - 1):
            yield chunk({}, "stop", index=index)
        yield chunk({}, "stop", {"type": "result", **summary}, index=len(choices) - 1)
        if chat.include_usage:
            yield sse({"id": f"chatcmpl-{job.id}", "object": "chat.completion.chunk",
                        "created": created, "model": MODEL_ID, "choices": [],
                        "usage": summary["usage"]})
        yield "data: [DONE]\n\n"
    finally:
        if not job.finished:  # the client went away: spend no more model calls on it
            job.stop()


def sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, default=str)}\n\n"
