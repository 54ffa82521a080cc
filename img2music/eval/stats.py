"""Bootstrap confidence intervals over images: means, ratios and paired differences."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Statistic = Callable[[npt.NDArray[np.float64]], npt.NDArray[np.float64]]
RESAMPLES = 2_000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Estimate:
    """A statistic with its percentile-bootstrap interval and the number of items behind it."""

    value: float
    low: float
    high: float
    n: int

    def cell(self, digits: int = 2) -> str:
        """`5.20 [4.80, 5.60]`, or `—` when there is nothing to estimate."""
        if math.isnan(self.value):
            return "—"
        if math.isnan(self.low):
            return f"{self.value:.{digits}f}"
        return f"{self.value:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"

    def as_dict(self) -> dict[str, float | int | None]:
        def plain(x: float) -> float | None:
            return None if math.isnan(x) else x

        return {"value": plain(self.value), "low": plain(self.low), "high": plain(self.high),
                "n": self.n}


def _mean(samples: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return np.asarray(samples.mean(axis=-1), dtype=np.float64)


def bootstrap(
    data: npt.ArrayLike,
    statistic: Statistic = _mean,
    *,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> Estimate:
    """`statistic` of `data` (rows are items) with a seeded percentile-bootstrap interval.

    `statistic` maps an array of shape (..., n) for 1-D data, or (..., n, k) for rows of k
    columns, to one value per leading index. One item has no interval; none has no value.
    """
    values = np.asarray(data, dtype=np.float64)
    n = values.shape[0] if values.ndim else 0
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0)
    point = float(statistic(values[np.newaxis])[0])
    if n == 1:
        return Estimate(point, math.nan, math.nan, 1)
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, n, size=(resamples, n))
    with np.errstate(divide="ignore", invalid="ignore"):
        stats = statistic(values[indices])
    stats = stats[np.isfinite(stats)]
    if stats.size == 0:
        return Estimate(point, math.nan, math.nan, n)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(stats, [tail, 100 - tail])
    return Estimate(point, float(low), float(high), n)


def mean_ci(values: Sequence[float | None], *, seed: int = 0,
            resamples: int = RESAMPLES) -> Estimate:
    """Mean of the values that exist, with its interval."""
    present = [v for v in values if v is not None and not math.isnan(v)]
    return bootstrap(present, seed=seed, resamples=resamples)


def ratio_ci(numerators: Sequence[float], denominators: Sequence[float], *, seed: int = 0,
             resamples: int = RESAMPLES) -> Estimate:
    """sum(numerators) / sum(denominators), resampling items: e.g. tokens per valid tune."""
    def ratio(samples: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        totals = samples.sum(axis=-2)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.asarray(totals[..., 0] / totals[..., 1], dtype=np.float64)

    rows: npt.ArrayLike = np.column_stack([
        np.asarray(numerators, dtype=np.float64), np.asarray(denominators, dtype=np.float64),
    ]) if len(numerators) else []
    estimate = bootstrap(rows, ratio, seed=seed, resamples=resamples)
    return estimate if math.isfinite(estimate.value) else Estimate(
        math.nan, math.nan, math.nan, estimate.n)


def paired_ci(reference: Sequence[float | None], other: Sequence[float | None], *,
              seed: int = 0, resamples: int = RESAMPLES) -> Estimate:
    """Mean of `other − reference` over the items where both exist (the same images)."""
    differences = [b - a for a, b in zip(reference, other, strict=True)
                   if a is not None and b is not None and not (math.isnan(a) or math.isnan(b))]
    return bootstrap(differences, seed=seed, resamples=resamples)
