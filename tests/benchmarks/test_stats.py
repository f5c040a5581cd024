"""Latency statistics and comparisons on synthetic timings, where the right answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.stats import compare, noise_band, summarize


def test_summary_of_known_samples():
    s = summarize(list(range(1, 101)), batch=8)  # 1..100 ms
    assert s.n == 100 and s.min_ms == 1 and s.max_ms == 100
    assert s.mean_ms == pytest.approx(50.5)
    assert s.p50_ms == pytest.approx(50.5) and s.p90_ms == pytest.approx(90.1) and s.p99_ms == pytest.approx(99.01)
    assert s.stdev_ms == pytest.approx(np.std(np.arange(1, 101), ddof=1))
    assert s.cv == pytest.approx(s.stdev_ms / 50.5)
    assert s.throughput == pytest.approx(8 * 1000 / 50.5)


def test_constant_latency_has_no_spread():
    s = summarize([2.0] * 10, batch=1)
    assert s.stdev_ms == 0 and s.cv == 0 and s.p99_ms == 2.0 and s.throughput == pytest.approx(500.0)


@pytest.mark.parametrize("bad", [[], [1.0, float("nan")], [-1.0]])
def test_bad_samples_are_rejected(bad):
    with pytest.raises(ValueError):
        summarize(bad, batch=1)


def test_compare_flags_a_regression_beyond_noise_and_ignores_jitter():
    rng = np.random.default_rng(0)
    base = summarize(10 + rng.normal(0, 0.2, 500), batch=1)
    jitter = summarize(10.1 + rng.normal(0, 0.2, 500), batch=1)
    slower = summarize(13 + rng.normal(0, 0.2, 500), batch=1)
    faster = summarize(7 + rng.normal(0, 0.2, 500), batch=1)
    assert compare("k", base, jitter).verdict == "same"
    c = compare("k", base, slower)
    assert c.significant and c.verdict == "regression" and c.ratio == pytest.approx(1.3, rel=0.02)
    assert compare("k", base, faster).verdict == "improvement"
    # the same 30% change is not believable from a run whose own rounds moved by 40%
    assert compare("k", base, slower, new_drift=1.4).verdict == "same"


def test_noise_band_is_the_larger_drift_with_a_floor():
    assert noise_band() == pytest.approx(0.05)
    assert noise_band(1.02, 1.01) == pytest.approx(0.05)
    assert noise_band(1.3, 1.1) == pytest.approx(0.3)


def test_noise_is_multiplicative_so_a_speedup_and_a_slowdown_of_the_same_factor_get_the_same_verdict():
    base = summarize([10.0] * 20, batch=1)
    # with rounds that drifted 1.5x, a 1.6x change is beyond the noise both ways; a 1.4x change is not, either way
    for factor, verdict in ((1.6, "regression"), (1 / 1.6, "improvement"), (1.4, "same"), (1 / 1.4, "same")):
        c = compare("k", base, summarize([10.0 * factor] * 20, batch=1), old_drift=1.5)
        assert c.verdict == verdict, (factor, c)
