"""An evaluation run: every image through every variant, then the blind judge, the CLIP proxy,
and the results folder.

The folder is the run's memory. `runs.jsonl` gets one line per finished composition and
`judgments.jsonl` one per judge answer, appended and flushed as each finishes, so a rerun of
the same command skips what is done (an item that could not run, e.g. with the endpoint down,
is tried again). Results made with other settings, prompts or judge stay in the files but are
not reused. `items.jsonl`, `items.csv`, `summary.md`, `summary.json` and `scores.png` are
written from them at the end of every run.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from langchain_core.language_models import BaseChatModel

from img2music.eval.judge import (
    Judge,
    JudgeReply,
    Question,
    judge_fingerprint,
    judge_prompt_hash,
    questions,
)
from img2music.eval.stats import CONFIDENCE, RESAMPLES
from img2music.eval.summary import (
    CLIP_PROXY,
    Summary,
    plot,
    summarize,
    to_markdown,
    write_csv,
)
from img2music.eval.variants import EVAL_DEFAULTS, Variant
from img2music.graph.models import VLMUnavailable, endpoint_report, judge_chat_model
from img2music.graph.nodes import ModelFor, RetrieverFor
from img2music.graph.state import rounds_and_repairs, usage_totals
from img2music.pipeline.report import chosen_metrics
from img2music.pipeline.runs import acompose
from img2music.redaction import redact_url
from img2music.settings import Settings, get_settings
from img2music.tools.files import UniqueNames, write_atomic
from img2music.tools.images import BadImage, image_data_url, image_files, open_image
from img2music.tools.metrics import METRIC_KEYS

if TYPE_CHECKING:
    from img2music.tools.retrieval.embedder import Embedder

logger = logging.getLogger(__name__)

RUNS = "runs.jsonl"
JUDGMENTS = "judgments.jsonl"
Progress = Callable[[str, int, int], None]
"""(what is being done, how many are done, of how many)"""


@dataclass(frozen=True)
class ImageItem:
    path: Path
    name: str  # unique within the run, for folders and tables
    key: str  # content hash: the same picture is the same item wherever it lies


@dataclass
class EvalOptions:
    images: list[Path]
    out: Path
    variants: list[Variant]
    reference: str | None = None  # paired differences against it; default the first variant
    judge: bool = True
    clip: bool = True
    repeats: int | None = None  # judge answers per question; default IMG2MUSIC_JUDGE_REPEATS
    seed: int = 0
    concurrency: int = 4
    note: str = ""
    resamples: int = RESAMPLES


@dataclass
class EvalResult:
    out: Path
    summary: Summary
    markdown: str
    files: dict[str, Path] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)  # one line per item that could not run
    composed: int = 0  # compositions made by this run
    reused: int = 0  # finished compositions found in the folder
    judge_calls: int = 0


class _Log:
    """An append-only JSON Lines file; a line torn by a crash is skipped when read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        records = []
        for number, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                logger.warning("%s:%d is not JSON (an interrupted write?); skipped",
                               self.path, number)
        return records

    def append(self, record: dict[str, Any]) -> None:
        with self._lock, self.path.open("a+", encoding="utf-8") as handle:
            handle.seek(0, 2)
            if handle.tell() > 0:
                handle.seek(handle.tell() - 1)
                if handle.read(1) != "\n":
                    handle.write("\n")
            handle.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
            handle.flush()


def image_items(paths: Sequence[Path]) -> tuple[list[ImageItem], list[str]]:
    """The readable images (folders expanded) with unique names and content keys, and one line
    per file that cannot be read."""
    items: list[ImageItem] = []
    problems: list[str] = []
    names = UniqueNames()
    for path in image_files(list(paths)):
        try:
            key = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
        except OSError as error:
            problems.append(f"{path}: cannot read: {error.strerror or error}")
            continue
        items.append(ImageItem(path=path, name=names.take(path), key=key))
    return items, problems


def run_eval(
    options: EvalOptions,
    *,
    settings: Settings | None = None,
    model_for: ModelFor | None = None,
    retriever_for: RetrieverFor | None = None,
    judge_model: BaseChatModel | None = None,
    embedder: Embedder | None = None,
    on_progress: Progress | None = None,
) -> EvalResult:
    """Run, judge and summarise; `model_for`, `retriever_for`, `judge_model` and `embedder`
    replace the configured composer, index, judge and CLIP (tests script them)."""
    settings = settings or get_settings()
    if not options.variants:
        raise ValueError("no variants to run")
    progress = on_progress or (lambda *_: None)
    out = options.out
    out.mkdir(parents=True, exist_ok=True)
    runs_log, judgments_log = _Log(out / RUNS), _Log(out / JUDGMENTS)
    images, errors = image_items(options.images)
    good: list[ImageItem] = []
    for image in images:
        try:
            open_image(image.path, settings=settings)
            good.append(image)
        except BadImage as error:
            errors.append(f"{image.path}: {error}")
    fingerprints = {v.name: v.fingerprint(settings) for v in options.variants}

    runs, composed, reused = _compose_all(
        options, good, fingerprints, runs_log, errors, settings=settings, model_for=model_for,
        retriever_for=retriever_for, progress=progress)
    asked = questions()
    judge_fp = judge_fingerprint(settings)
    judgments: list[dict[str, Any]] = []
    calls = 0
    if options.judge:
        judge = Judge(judge_model or judge_chat_model(settings), settings.judge_endpoint)
        calls = _judge_all(options, runs, good, judge, judge_fp, asked, judgments_log, errors,
                           settings=settings, progress=progress)
        if options.clip:
            _clip_all(runs, good, judge_fp, judgments_log, errors, settings=settings,
                      embedder=embedder, progress=progress)
        judgments = [j for j in judgments_log.read() if j.get("judge") == judge_fp]
    items = _items(runs, judgments, asked)
    reference = options.reference or options.variants[0].name
    summary = summarize(
        items, order=[v.name for v in options.variants], reference=reference,
        prompt_sets={v.name: (p.name, p.hash) for v in options.variants
                     for p in [v.prompts(settings)]},
        settings={v.name: v.overrides for v in options.variants}, questions=asked,
        meta=_meta(options, settings, len(good)), seed=options.seed,
        resamples=options.resamples)
    markdown = to_markdown(summary)
    files = _write_outputs(out, items, summary, markdown, asked)
    return EvalResult(out=out, summary=summary, markdown=markdown, files=files, errors=errors,
                      composed=composed, reused=reused, judge_calls=calls)


def _compose_all(
    options: EvalOptions, images: Sequence[ImageItem], fingerprints: dict[str, str],
    log: _Log, errors: list[str], *, settings: Settings, model_for: ModelFor | None,
    retriever_for: RetrieverFor | None, progress: Progress,
) -> tuple[list[dict[str, Any]], int, int]:
    """Compose what is not yet in the folder; return the current runs in variant order."""
    wanted = {_run_id(fingerprints[v.name], image.key): (v, image)
              for v in options.variants for image in images}
    done = {r["run_id"]: r for r in log.read() if r.get("run_id") in wanted}
    todo = [(rid, v, image) for rid, (v, image) in wanted.items() if rid not in done]
    total = len(todo)
    progress("composing", 0, total)

    async def one(rid: str, variant: Variant, image: ImageItem) -> dict[str, Any] | str:
        nodes: list[str] = []
        result = await acompose(
            image.path, out_dir=options.out / "runs" / _safe(variant.name) / image.name,
            note=options.note, settings=settings, model_for=model_for,
            retriever_for=retriever_for,
            on_progress=lambda _, node, __, take=None: nodes.append(node),
            **{**EVAL_DEFAULTS, **variant.overrides})
        if "attempts" not in result.report:  # it never ran: the endpoint, the image
            return f"{variant.name} · {image.name}: {result.error}"
        return _run_record(rid, variant, fingerprints[variant.name], image, result.report,
                           nodes, valid=result.ok, failure=result.error,
                           out_dir=result.out_dir)

    async def every() -> None:
        slots = asyncio.Semaphore(options.concurrency)

        async def in_turn(job: tuple[str, Variant, ImageItem]) -> tuple[
                tuple[str, Variant, ImageItem], dict[str, Any] | str]:
            async with slots:
                return job, await one(*job)

        running = [asyncio.ensure_future(in_turn(job)) for job in todo]  # started in order
        for finished, next_done in enumerate(asyncio.as_completed(running), 1):
            (_, variant, image), outcome = await next_done
            if isinstance(outcome, str):
                errors.append(outcome)
                logger.warning("%s", outcome)
            else:
                log.append(outcome)
                done[outcome["run_id"]] = outcome
            progress(f"composing: {variant.name} · {image.name}", finished, total)

    asyncio.run(every())
    runs = [done[rid] for rid in wanted if rid in done]
    composed = sum(1 for rid, _, _ in todo if rid in done)
    return runs, composed, len(runs) - composed


def _run_id(fingerprint: str, image_key: str) -> str:
    return hashlib.sha256(f"{fingerprint}:{image_key}".encode()).hexdigest()[:16]


def _safe(name: str) -> str:
    return re.sub(r"[^\w.@+-]", "_", name)


def _run_record(rid: str, variant: Variant, fingerprint: str, image: ImageItem,
                report: dict[str, Any], nodes: list[str], *, valid: bool,
                failure: str | None, out_dir: Path) -> dict[str, Any]:
    """The model-free measures of one composition, from its final state."""
    attempts = report.get("attempts", [])
    usage = usage_totals(report.get("usage", {}))
    rounds, repairs = rounds_and_repairs(attempts)
    metrics = chosen_metrics(report) if valid else None
    return {
        "run_id": rid, "variant": variant.name, "fingerprint": fingerprint,
        "image": str(image.path), "image_name": image.name, "image_key": image.key,
        "prompt_set": report.get("prompt_set", {}), "settings": report.get("settings", {}),
        "status": report.get("status"), "valid": valid, "failure": failure,
        "abc": report.get("final_abc") if valid else None,
        "attempts": len(attempts),
        "repairs": repairs,
        "refine_rounds": rounds,
        "model_calls": usage["calls"],
        "input_tokens": usage["input_tokens"],
        "output_tokens": usage["output_tokens"],
        "wall_seconds": report.get("wall_seconds", 0.0),
        "metrics": {key: metrics.get(key) for key in METRIC_KEYS} if metrics else None,
        "path": nodes, "out_dir": str(out_dir),
    }


@dataclass(frozen=True)
class _Job:
    run: dict[str, Any]
    kind: str  # "score" or "caption"
    question: Question | None = None
    repeat: int = 0

    @property
    def key(self) -> tuple[str, str, str, str | None, int]:
        return (self.run["run_id"], _tune_hash(self.run), self.kind,
                self.question.key if self.question else None, self.repeat)


def _tune_hash(run: dict[str, Any]) -> str:
    """Judgements belong to a tune: a run composed again with another tune is judged again."""
    return hashlib.sha256(str(run.get("abc")).encode()).hexdigest()[:12]


def _judge_all(
    options: EvalOptions, runs: Sequence[dict[str, Any]], images: Sequence[ImageItem],
    judge: Judge, judge_fp: str, asked: Sequence[Question], log: _Log, errors: list[str], *,
    settings: Settings, progress: Progress,
) -> int:
    """Every question for every valid tune, `repeats` times, in one seeded shuffled order."""
    repeats = options.repeats or settings.judge_repeats
    done = {(j["run_id"], j.get("tune"), j["kind"], j.get("question"), j.get("repeat", 0))
            for j in log.read() if j.get("judge") == judge_fp}
    valid = [r for r in runs if r["valid"]]
    jobs = [_Job(run, "score", q, n) for run in valid for q in asked for n in range(repeats)]
    if options.clip:
        jobs += [_Job(run, "caption") for run in valid]
    jobs = [job for job in jobs if job.key not in done]
    random.Random(options.seed).shuffle(jobs)
    if not jobs:
        return 0
    paths = {image.key: image.path for image in images}
    urls = {key: image_data_url(open_image(paths[key], settings=settings),
                                max_pixels=settings.vlm_image_pixels)
            for key in {job.run["image_key"] for job in jobs}}
    failed: dict[str, str] = {}

    async def one(job: _Job, slots: asyncio.Semaphore) -> tuple[
            _Job, JudgeReply | None, VLMUnavailable | None]:
        """A judge call in its turn: at most `concurrency` are awaited at once."""
        async with slots:
            if job.run["run_id"] in failed:
                return job, None, None
            try:
                if job.question is None:
                    return job, await judge.caption(job.run["abc"]), None
                return job, await judge.ask(urls[job.run["image_key"]], job.run["abc"],
                                            job.question), None
            except VLMUnavailable as error:
                return job, None, error

    async def every() -> int:
        calls = 0
        slots = asyncio.Semaphore(options.concurrency)
        # Tasks made here, in the shuffled order, take the slots in that order: as_completed
        # would make them from a set of coroutines, in an order that changes from run to run.
        asking = [asyncio.ensure_future(one(job, slots)) for job in jobs]
        for finished, next_done in enumerate(asyncio.as_completed(asking), 1):
            job, reply, error = await next_done
            if error is not None:
                if job.run["run_id"] not in failed:
                    failed[job.run["run_id"]] = str(error)
                    errors.append(f"judge · {job.run['variant']} · {job.run['image_name']}: "
                                  f"{error}")
                continue
            if reply is None:
                continue
            calls += 1
            log.append({
                "run_id": job.run["run_id"], "tune": _tune_hash(job.run), "judge": judge_fp,
                "kind": job.kind,
                "question": job.question.key if job.question else None, "repeat": job.repeat,
                "score": reply.score.value, "parsed_by": reply.score.parsed_by,
                "reason": reply.score.reason, "reply": reply.text, "tokens": reply.tokens,
            })
            progress("judging", finished, len(jobs))
        return calls

    progress("judging", 0, len(jobs))
    return asyncio.run(every())


def _clip_all(
    runs: Sequence[dict[str, Any]], images: Sequence[ImageItem], judge_fp: str, log: _Log,
    errors: list[str], *, settings: Settings, embedder: Embedder | None, progress: Progress,
) -> None:
    """CLIP cosine between each image and the caption its tune evoked (a proxy, not a judge)."""
    from img2music.tools.retrieval.embedder import EmbedderUnavailable, load_embedder

    current = {r["run_id"]: r for r in runs}
    records = [j for j in log.read() if j.get("judge") == judge_fp and j["run_id"] in current
               and j.get("tune") == _tune_hash(current[j["run_id"]])]
    captions = {j["run_id"]: j["reply"] for j in records
                if j["kind"] == "caption" and j["reply"]}
    if not captions:
        return
    try:
        clip = embedder or load_embedder(settings)
    except EmbedderUnavailable as error:
        errors.append(f"CLIP proxy: {error}")
        return
    measured = {j["run_id"] for j in records
                if j["kind"] == "clip" and j.get("embedder") == clip.name}
    todo = [rid for rid in captions if rid not in measured]
    if not todo:
        return
    progress("CLIP proxy", 0, len(todo))
    paths = {image.key: image.path for image in images}
    keys = sorted({current[rid]["image_key"] for rid in todo})
    pictures = clip.embed_images([open_image(paths[key], settings=settings) for key in keys])
    image_vectors = dict(zip(keys, pictures, strict=True))
    texts = clip.embed_texts([captions[rid] for rid in todo])
    for rid, text in zip(todo, texts, strict=True):
        similarity = float(image_vectors[current[rid]["image_key"]] @ text)
        log.append({"run_id": rid, "tune": _tune_hash(current[rid]), "judge": judge_fp,
                    "kind": "clip", "embedder": clip.name, "similarity": similarity})
    progress("CLIP proxy", len(todo), len(todo))


def _items(runs: Sequence[dict[str, Any]], judgments: Sequence[dict[str, Any]],
           asked: Sequence[Question]) -> list[dict[str, Any]]:
    """Each run with its judge scores (mean over the answers with a score) and CLIP proxy."""
    items = []
    for run in runs:
        mine = [j for j in judgments
                if j["run_id"] == run["run_id"] and j.get("tune") == _tune_hash(run)]
        scores = {q.key: [j["score"] for j in mine if j["kind"] == "score"
                          and j["question"] == q.key and j["score"] is not None] for q in asked}
        clip = [j["similarity"] for j in mine if j["kind"] == "clip"]
        caption = next((j["reply"] for j in mine if j["kind"] == "caption"), None)
        items.append({
            **run,
            "judge": {key: sum(v) / len(v) if v else None for key, v in scores.items()},
            "judge_answers": sum(1 for j in mine if j["kind"] == "score"),
            "judge_unparsed": sum(1 for j in mine if j["kind"] == "score" and j["score"] is None),
            "tune_caption": caption,
            CLIP_PROXY: clip[-1] if clip else None,
        })
    return items


def _meta(options: EvalOptions, settings: Settings, images: int) -> dict[str, Any]:
    meta: dict[str, Any] = {"images": images, "seed": options.seed,
                            "resamples": options.resamples, "confidence": CONFIDENCE,
                            "judge": None}
    if options.judge:
        meta["judge"] = {
            "endpoint": redact_url(settings.judge_endpoint),
            "model": settings.judge_served_model,
            "temperature": settings.judge_temperature,
            "repeats": options.repeats or settings.judge_repeats,
            "prompt_hash": judge_prompt_hash(),
            "self_judging": (settings.judge_served_model == settings.vlm_model
                             and settings.judge_endpoint == settings.vlm_base_url),
            "endpoint_profile": endpoint_report(
                settings.judge_endpoint, settings.judge_served_model,
                choice=settings.judge_profile_choice, setting=settings.judge_profile_setting),
        }
    return meta


def _write_outputs(out: Path, items: Sequence[dict[str, Any]], summary: Summary,
                   markdown: str, asked: Sequence[Question]) -> dict[str, Path]:
    files = {name: out / name for name in ("items.jsonl", "items.csv", "summary.md",
                                           "summary.json", "scores.png")}
    write_atomic(files["items.jsonl"], "".join(
        json.dumps(item, ensure_ascii=False, default=str) + "\n" for item in items))
    write_csv(files["items.csv"], items, asked)
    write_atomic(files["summary.md"], markdown)
    write_atomic(files["summary.json"], json.dumps(summary.as_dict(), indent=2, default=str))
    plot(files["scores.png"], summary)
    return {**files, RUNS: out / RUNS, JUDGMENTS: out / JUDGMENTS}
