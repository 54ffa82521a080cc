"""The results of an evaluation as a person reads them: the paper's tables with bootstrap
intervals, paired differences against a reference variant, a CSV and a plot."""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from img2music.eval.judge import GROUPS, Question
from img2music.eval.stats import RESAMPLES, Estimate, mean_ci, paired_ci, ratio_ci
from img2music.tools.files import replacing
from img2music.tools.metrics import METRIC_KEYS, metric_descriptions

GROUP_AVERAGES = {"quality": "quality_avg", "consistency": "consistency_avg"}
CLIP_PROXY = "clip_proxy"
CLIP_PROXY_LABEL = "CLIP image–tune-caption similarity (proxy)"
COST_COLUMNS = {
    "valid_rate": "Valid-tune rate",
    "repairs": "Repairs / item",
    "refine_rounds": "Refine rounds / valid tune",
    "calls_per_valid": "Model calls / valid tune",
    "tokens_per_valid": "Tokens / valid tune",
    "wall_seconds": "Wall s / item",
    CLIP_PROXY: CLIP_PROXY_LABEL,
}


@dataclass
class VariantSummary:
    """One row of every table."""

    name: str
    prompt_set: str
    prompt_hash: str
    settings: dict[str, Any]
    items: int
    valid: int
    judged: int
    unparsed_answers: int
    estimates: dict[str, Estimate] = field(default_factory=dict)


@dataclass
class Summary:
    variants: list[VariantSummary]
    reference: str
    paired: dict[str, dict[str, Estimate]]  # variant -> measure -> mean of (variant − reference)
    questions: list[Question]
    meta: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {
            "meta": self.meta, "reference": self.reference,
            "variants": [{**{k: v for k, v in row.__dict__.items() if k != "estimates"},
                          "estimates": {k: e.as_dict() for k, e in row.estimates.items()}}
                         for row in self.variants],
            "paired": {name: {k: e.as_dict() for k, e in measures.items()}
                       for name, measures in self.paired.items()},
        }


def item_scores(item: dict[str, Any], questions: Sequence[Question]) -> dict[str, float | None]:
    """An item's judge score per question and per group (mean of the questions it has)."""
    judge: dict[str, float | None] = dict(item.get("judge") or {})
    scores = {q.key: judge.get(q.key) for q in questions}
    for group, key in GROUP_AVERAGES.items():
        present = [v for q in questions if q.group == group and (v := scores[q.key]) is not None]
        scores[key] = sum(present) / len(present) if present else None
    return scores


def summarize(items: Sequence[dict[str, Any]], *, order: Sequence[str], reference: str,
              prompt_sets: dict[str, tuple[str, str]], settings: dict[str, dict[str, Any]],
              questions: Sequence[Question], meta: dict[str, Any], seed: int = 0,
              resamples: int = RESAMPLES) -> Summary:
    """Per-variant estimates over its items (images), and paired differences on shared images."""
    rows = []
    by_variant = {name: [i for i in items if i["variant"] == name] for name in order}
    for name in order:
        mine = by_variant[name]
        valid = [i for i in mine if i["valid"]]
        scored = [item_scores(i, questions) for i in valid]

        def mean(values: Sequence[float | None]) -> Estimate:
            return mean_ci(values, seed=seed, resamples=resamples)

        estimates = {key: mean([s[key] for s in scored])
                     for key in [*(q.key for q in questions), *GROUP_AVERAGES.values()]}
        estimates.update({
            "valid_rate": mean([float(i["valid"]) for i in mine]),
            "repairs": mean([float(i["repairs"]) for i in mine]),
            "refine_rounds": mean([float(i["refine_rounds"]) for i in valid]),
            "calls_per_valid": ratio_ci([i["model_calls"] for i in mine],
                                        [float(i["valid"]) for i in mine], seed=seed,
                                        resamples=resamples),
            "tokens_per_valid": ratio_ci([i["input_tokens"] + i["output_tokens"] for i in mine],
                                         [float(i["valid"]) for i in mine], seed=seed,
                                         resamples=resamples),
            "wall_seconds": mean([i["wall_seconds"] for i in mine]),
            CLIP_PROXY: mean([i.get(CLIP_PROXY) for i in valid]),
        })
        estimates.update({key: mean([(i.get("metrics") or {}).get(key) for i in valid])
                          for key in METRIC_KEYS})
        prompt_name, prompt_hash = prompt_sets[name]
        rows.append(VariantSummary(
            name=name, prompt_set=prompt_name, prompt_hash=prompt_hash, settings=settings[name],
            items=len(mine), valid=len(valid),
            judged=sum(1 for s in scored if any(v is not None for v in s.values())),
            unparsed_answers=sum(i.get("judge_unparsed", 0) for i in valid),
            estimates=estimates,
        ))
    paired = {name: _paired(by_variant[reference], by_variant[name], questions, seed, resamples)
              for name in order if name != reference and reference in by_variant}
    return Summary(rows, reference, paired, list(questions), meta)


def _paired(reference: Sequence[dict[str, Any]], other: Sequence[dict[str, Any]],
            questions: Sequence[Question], seed: int, resamples: int) -> dict[str, Estimate]:
    """Mean of (other − reference) per measure, over the images both have."""
    ref = {i["image_key"]: i for i in reference}
    pairs = [(ref[i["image_key"]], i) for i in other if i["image_key"] in ref]

    def measure(item: dict[str, Any], key: str) -> float | None:
        if key == "valid_rate":
            return float(item["valid"])
        if key == CLIP_PROXY:
            value = item.get(CLIP_PROXY)
            return float(value) if value is not None else None
        return item_scores(item, questions)[key] if item["valid"] else None

    keys = [*(q.key for q in questions), *GROUP_AVERAGES.values(), "valid_rate", CLIP_PROXY]
    return {key: paired_ci([measure(a, key) for a, _ in pairs],
                           [measure(b, key) for _, b in pairs], seed=seed, resamples=resamples)
            for key in keys}


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _judge_columns(questions: Sequence[Question]) -> list[tuple[str, str]]:
    """(measure key, column title) in the paper's order: each group's questions, its average."""
    columns = []
    for group in GROUPS:
        short = "Quality" if group == "quality" else "Consistency"
        columns += [(q.key, f"{short}: {q.label}") for q in questions if q.group == group]
        columns.append((GROUP_AVERAGES[group], f"{short}: Average"))
    return columns


def _best_marked(summary: Summary, key: str, cell: Callable[[Estimate], str]) -> list[str]:
    """Cells of one column with the best mean in bold, as in the paper's tables."""
    values = [row.estimates[key].value for row in summary.variants]
    finite = [v for v in values if not math.isnan(v)]
    best = max(finite) if len(finite) > 1 and max(finite) > min(finite) else None
    return [f"**{cell(row.estimates[key])}**" if best is not None and value == best
            else cell(row.estimates[key]) for row, value in zip(summary.variants, values,
                                                                strict=True)]


def to_markdown(summary: Summary) -> str:
    """The summary: variants, the judge table, model-free measures, MusPy metrics, pairs."""
    meta = summary.meta
    lines = ["# img2music evaluation", ""]
    lines.append(f"{meta['images']} images × {len(summary.variants)} variants. Cells are means "
                 f"over images with percentile-bootstrap {meta['confidence']:.0%} intervals "
                 f"({meta['resamples']} resamples, seed {meta['seed']}); n is the number of "
                 "images behind each mean.")
    if meta.get("judge"):
        judge = meta["judge"]
        lines += ["", f"Machine judge: `{judge['model']}` at {judge['endpoint']}, temperature "
                  f"{judge['temperature']}, each question asked on its own {judge['repeats']} "
                  f"times per tune and averaged, blind (no variant name in any prompt; order "
                  f"shuffled with seed {meta['seed']}), judge prompts `{judge['prompt_hash']}`."]
        profile = judge.get("endpoint_profile")
        if profile:
            lines.append(f"Judge endpoint profile: {profile['profile']} ({profile['chosen_by']})"
                         + "".join(f"; {warning}" for warning in profile["warnings"]) + ".")
        if judge.get("self_judging"):
            lines.append("The judge is the composing model itself (IMG2MUSIC_JUDGE_* unset): "
                         "expect it to favour its own style.")
    else:
        lines += ["", "No machine judge in this run (`--no-judge`)."]
    lines += ["", "## Variants", ""]
    lines += _table(["Variant", "Prompt set", "Prompt hash", "Settings", "Items", "Valid"], [
        [f"`{row.name}`", row.prompt_set, f"`{row.prompt_hash}`",
         ", ".join(f"{k}={v}" for k, v in row.settings.items() if k != "prompts_dir") or "—",
         str(row.items), str(row.valid)]
        for row in summary.variants])
    columns = _judge_columns(summary.questions)
    lines += ["", "## Machine judge (1–7)", ""]
    cells = {key: _best_marked(summary, key, lambda e: e.cell(2)) for key, _ in columns}
    lines += _table(["Variant", *(title for _, title in columns), "n"], [
        [f"`{row.name}`", *(cells[key][i] for key, _ in columns), str(row.judged)]
        for i, row in enumerate(summary.variants)])
    unparsed = sum(row.unparsed_answers for row in summary.variants)
    if unparsed:
        lines += ["", f"{unparsed} judge answers had no readable 1–7 score and were left out."]
    lines += ["", "## Model-free measures", ""]
    lines += _table(["Variant", *COST_COLUMNS.values(), "n"], [
        [f"`{row.name}`", *(row.estimates[key].cell(_digits(key)) for key in COST_COLUMNS),
         str(row.items)]
        for row in summary.variants])
    lines += ["", f"{CLIP_PROXY_LABEL}: the judge model describes the picture a tune evokes "
              "from its ABC alone (`caption_tune.j2`), and CLIP compares that caption with the "
              "real image. It is a proxy for music–image consistency, not a measure of it. "
              "Tokens and calls count the composing model only (describe and compose), not the "
              "judge."]
    names = metric_descriptions()
    lines += ["", "## MusPy metrics of the valid tunes", ""]
    lines += _table(["Variant", *(names[key].name for key in METRIC_KEYS), "n"], [
        [f"`{row.name}`", *(row.estimates[key].cell(2) for key in METRIC_KEYS), str(row.valid)]
        for row in summary.variants])
    if summary.paired:
        lines += ["", f"## Paired differences against `{summary.reference}`", "",
                  f"Mean of (variant − `{summary.reference}`) over the images both have, with "
                  "its interval; an interval that excludes 0 is a difference these images "
                  "support."]
        keys = [*columns, ("valid_rate", "Valid-tune rate"), (CLIP_PROXY, "CLIP proxy")]
        lines += ["", *_table(["Variant", "Prompt hash", *(title for _, title in keys),
                               "pairs"], [
            [f"`{name}`", f"`{_row(summary, name).prompt_hash}` vs "
             f"`{_row(summary, summary.reference).prompt_hash}`",
             *(_signed(measures[key]) for key, _ in keys),
             str(max(e.n for e in measures.values()))]
            for name, measures in summary.paired.items()])]
    return "\n".join(lines) + "\n"


def _row(summary: Summary, name: str) -> VariantSummary:
    return next(row for row in summary.variants if row.name == name)


def _digits(key: str) -> int:
    return 0 if key in ("tokens_per_valid",) else 2


def _signed(estimate: Estimate) -> str:
    if math.isnan(estimate.value):
        return "—"
    if math.isnan(estimate.low):
        return f"{estimate.value:+.2f}"
    return f"{estimate.value:+.2f} [{estimate.low:+.2f}, {estimate.high:+.2f}]"


CSV_FIXED = ("variant", "image", "image_key", "prompt_set", "prompt_hash", "status", "valid",
             "attempts", "repairs", "refine_rounds", "model_calls", "input_tokens",
             "output_tokens", "wall_seconds")


def write_csv(path: Path, items: Sequence[dict[str, Any]], questions: Sequence[Question]) -> None:
    """One row per item: the model-free measures, the judge's scores, the metrics."""
    score_keys = [*(q.key for q in questions), *GROUP_AVERAGES.values()]
    header = [*CSV_FIXED, *score_keys, "judge_unparsed", CLIP_PROXY, *METRIC_KEYS, "failure"]
    with replacing(path) as temporary, temporary.open("x", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for item in items:
            scores = item_scores(item, questions)
            metrics = item.get("metrics") or {}
            writer.writerow([
                item["variant"], item["image"], item["image_key"], item["prompt_set"]["name"],
                item["prompt_set"]["hash"], item["status"], int(item["valid"]), item["attempts"],
                item["repairs"], item["refine_rounds"], item["model_calls"],
                item["input_tokens"], item["output_tokens"], f"{item['wall_seconds']:.3f}",
                *(_csv(scores[key]) for key in score_keys), item.get("judge_unparsed", 0),
                _csv(item.get(CLIP_PROXY)), *(_csv(metrics.get(key)) for key in METRIC_KEYS),
                item.get("failure") or "",
            ])


def _csv(value: float | None) -> str:
    return "" if value is None else f"{value:.4g}"


def plot(path: Path, summary: Summary) -> Path:
    """Each variant's judge scores with their intervals, and its validity and CLIP proxy."""
    columns = _judge_columns(summary.questions)
    figure = Figure(figsize=(12, 7), layout="constrained")
    top, bottom = figure.subplots(2, 1, height_ratios=(2, 1))
    _bars(top, summary, columns)
    top.set_ylim(0, 7.5)
    top.set_ylabel("machine judge (1–7)")
    top.set_title("Machine judge: music quality and music–image consistency")
    _bars(bottom, summary, [("valid_rate", "Valid-tune rate"), (CLIP_PROXY, "CLIP proxy")])
    bottom.set_ylabel("rate / cosine")
    bottom.set_title("Model-free measures")
    with replacing(path) as temporary:
        figure.savefig(temporary, dpi=110)
    return path


def _bars(axes: Any, summary: Summary, columns: Sequence[tuple[str, str]]) -> None:
    count = len(summary.variants)
    width = 0.8 / max(count, 1)
    for index, row in enumerate(summary.variants):
        estimates = [row.estimates[key] for key, _ in columns]
        xs = [c + (index - (count - 1) / 2) * width for c in range(len(columns))]
        heights = [0.0 if math.isnan(e.value) else e.value for e in estimates]
        errors = [[0.0 if math.isnan(e.low) else e.value - e.low for e in estimates],
                  [0.0 if math.isnan(e.high) else e.high - e.value for e in estimates]]
        axes.bar(xs, heights, width, yerr=errors, capsize=2, label=row.name)
    axes.set_xticks(range(len(columns)), [title for _, title in columns], rotation=20,
                    ha="right", fontsize=8)
    axes.legend(fontsize=8)
