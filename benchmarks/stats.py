"""Latency statistics in the style of trtexec: percentiles, spread, throughput, and noise-aware comparisons.

Pure numpy, so the numbers can be checked against synthetic timings in tests.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

PERCENTILES = (1, 5, 50, 90, 95, 99)


@dataclass(frozen=True)
class LatencyStats:
    """Summary of per-call latencies in milliseconds for one configuration (batch images per call)."""

    n: int
    batch: int
    mean_ms: float
    stdev_ms: float
    cv: float  # stdev / mean
    min_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    throughput: float  # images per second at the median latency (batch / p50)
    # The low percentiles, for the plots' whiskers (p5-p95). Optional so that reports written before they existed
    # still load for --compare.
    p1_ms: float | None = None
    p5_ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(latencies_ms: Sequence[float], batch: int) -> LatencyStats:
    """Statistics of a sample of latencies (ms). Percentiles use linear interpolation, like numpy's default."""
    x = np.asarray(latencies_ms, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"summarize: expected a non-empty 1-D sequence of latencies, got shape {x.shape}")
    if not np.all(np.isfinite(x)) or np.any(x < 0):
        raise ValueError("summarize: latencies must be finite and non-negative")
    if batch < 1:
        raise ValueError(f"summarize: batch must be >= 1, got {batch}")
    mean = float(x.mean())
    stdev = float(x.std(ddof=1)) if x.size > 1 else 0.0
    p = {q: float(np.percentile(x, q)) for q in PERCENTILES}
    return LatencyStats(
        n=int(x.size),
        batch=batch,
        mean_ms=mean,
        stdev_ms=stdev,
        cv=stdev / mean if mean > 0 else 0.0,
        min_ms=float(x.min()),
        p50_ms=p[50],
        p90_ms=p[90],
        p95_ms=p[95],
        p99_ms=p[99],
        max_ms=float(x.max()),
        throughput=batch * 1000.0 / p[50] if p[50] > 0 else math.inf,
        p1_ms=p[1],
        p5_ms=p[5],
    )


def round_throughput_cv(round_p50_ms: Sequence[float]) -> float:
    """Coefficient of variation (stdev / mean, ddof=1) of the per-round throughput, batch / the round's median
    latency, over a run's interleaved rounds: how much the machine moved between rounds. 0 with fewer than 2 rounds.
    (The batch cancels out, so only the rounds' medians are needed.)"""
    rates = np.array([1.0 / x for x in round_p50_ms if x > 0], dtype=np.float64)
    if rates.size < 2:
        return 0.0
    return float(rates.std(ddof=1) / rates.mean())


@dataclass(frozen=True)
class Change:
    """One row of a comparison: how the median moved, and whether that is beyond the measured noise."""

    key: str
    old_p50_ms: float
    new_p50_ms: float
    ratio: float  # new / old
    noise: float  # relative change explainable by noise (from the rows' own spread)
    significant: bool
    verdict: str  # "regression", "improvement" or "same"


def noise_band(old_drift: float = 1.0, new_drift: float = 1.0, floor: float = 0.05) -> float:
    """Relative change of the median that the measured noise can explain.

    Each run measures every configuration in several interleaved rounds; `drift` is max/min of its per-round
    medians, i.e. how far the same configuration's median moved within one run. A change between two runs is only
    believable beyond the larger of the two drifts, and never below `floor` (5%): on shared machines even quiet
    runs differ by a few percent between processes.
    """
    return max(floor, old_drift - 1.0, new_drift - 1.0)


def compare(
    key: str,
    old: LatencyStats,
    new: LatencyStats,
    *,
    old_drift: float = 1.0,
    new_drift: float = 1.0,
    floor: float = 0.05,
) -> Change:
    ratio = new.p50_ms / old.p50_ms if old.p50_ms > 0 else math.inf
    band = noise_band(old_drift, new_drift, floor)
    # Drift is a max/min ratio, so noise is multiplicative and symmetric: a 2x slow-down and a 2x speed-up are
    # equally believable. Beyond the band means ratio > 1 + band or ratio < 1 / (1 + band).
    significant = ratio > 1.0 + band or ratio * (1.0 + band) < 1.0
    verdict = "same" if not significant else ("regression" if ratio > 1 else "improvement")
    return Change(
        key=key,
        old_p50_ms=old.p50_ms,
        new_p50_ms=new.p50_ms,
        ratio=ratio,
        noise=band,
        significant=significant,
        verdict=verdict,
    )
