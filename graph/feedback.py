"""What the refine step tells the model about its tune: each metric with what it measures and
what high and low values suit (`prompts/metrics.toml`), then the tune's size, rendered by
`prompts/metric_feedback.j2`."""

from __future__ import annotations

from pathlib import Path

from img2music.prompt_files import render_prompt
from img2music.tools.metrics import TuneMetrics, metric_descriptions


def metric_feedback(metrics: TuneMetrics, *, folder: Path | str | None = None) -> str:
    """The text the refine step sends: each metric with its meaning, then the tune's size."""
    infos = metric_descriptions(folder)
    rows = [
        {
            "name": metric.name,
            "shown": _shown(metric.value, infos[metric.key].unit),
            "undefined_reason": metric.undefined_reason,
            "measures": infos[metric.key].measures,
            "high": infos[metric.key].high,
            "low": infos[metric.key].low,
        }
        for metric in metrics.metric_values()
    ]
    return render_prompt(
        "metric_feedback.j2",
        folder=folder,
        metrics=rows,
        length_seconds=metrics.length_seconds,
        length_beats=metrics.length_beats,
        bars=metrics.bars,
        voices=metrics.voices,
        notes=metrics.notes,
    )


def _shown(value: float | None, unit: str) -> str | None:
    if value is None:
        return None
    number = str(int(value)) if value.is_integer() else f"{value:.3g}"
    return f"{number} {unit}" if unit else number
