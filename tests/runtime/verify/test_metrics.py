"""runtime.verify.metrics: known-answer numbers, pass/fail logic, every failing output collected, numpy-only import."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from runtime.verify.metrics import (
    DEFAULT_TOLERANCES,
    Tolerance,
    compare_arrays,
    compare_outputs,
    default_tolerance,
    tolerance_for,
)


def test_known_answers():
    e = np.array([1.0, -2.0, 3.0, 0.0], dtype=np.float32)
    a = e + np.array([0.5, 0.0, -0.25, 0.0], dtype=np.float32)
    c = compare_arrays("x", a, e, Tolerance(max_abs=0.5))
    assert c.max_abs == 0.5 and c.mean_abs == pytest.approx(0.1875)
    assert c.p99_abs == pytest.approx(np.percentile([0.5, 0, 0.25, 0], 99))
    assert c.rel_l2 == pytest.approx(math.sqrt(0.25 + 0.0625) / math.sqrt(14))
    assert c.cosine == pytest.approx(float(a @ e) / (np.linalg.norm(a) * np.linalg.norm(e)))
    assert c.psnr is None and c.nan_count == c.inf_count == 0
    assert c and c.passed and c.failures == ()
    assert not compare_arrays("x", a, e, Tolerance(max_abs=0.49))


def test_psnr_uses_the_pixel_range():
    e = np.zeros((1, 3, 4, 4), dtype=np.float32)
    a = e + 0.01
    assert compare_arrays("img", a, e, Tolerance(), (-1.0, 1.0)).psnr == pytest.approx(10 * math.log10(4 / 1e-4))
    assert compare_arrays("img", a, e, Tolerance(), (0.0, 1.0)).psnr == pytest.approx(40.0)
    assert compare_arrays("img", e, e, Tolerance(min_psnr=100), (0.0, 1.0)).psnr == math.inf
    with pytest.raises(ValueError, match=r"img: pixel range \(1.0, 1.0\) is empty"):
        compare_arrays("img", a, e, Tolerance(), (1.0, 1.0))


def test_each_criterion_fails_with_its_numbers():
    e = np.linspace(-1, 1, 100, dtype=np.float32)
    a = -e  # same norm, opposite direction
    c = compare_arrays("o", a, e, Tolerance(max_abs=1e-4, rel_l2=0.1, min_psnr=40, min_cosine=0.99), (-1.0, 1.0))
    assert not c
    assert [f.split()[0] for f in c.failures] == ["max_abs", "rel_l2", "psnr", "cosine"]
    assert "max_abs 2 > 0.0001" in c.failures[0] and "cosine -1.000000 < 0.99" in c.failures[3]


def test_nan_and_inf_always_fail_and_are_counted():
    e = np.ones(10, dtype=np.float32)
    a = e.copy()
    a[2], a[5], a[7] = np.nan, np.inf, -np.inf
    c = compare_arrays("o", a, e, Tolerance(), (-1.0, 1.0))  # no criterion set: still fails
    assert (c.nan_count, c.inf_count) == (1, 2) and not c
    assert c.failures[0] == "1 NaN and 2 Inf values"
    assert c.max_abs == math.inf and c.psnr == -math.inf
    assert c.mean_abs == 0.0  # over the finite differences
    assert not c.passes(Tolerance(max_abs=1e9))
    json.dumps(c.to_dict(), allow_nan=False)  # strict JSON: non-finite numbers become null


def test_passes_and_smallest_passing_tolerance():
    rng = np.random.default_rng(0)
    e = rng.standard_normal((4, 8)).astype(np.float32)
    a = e + rng.normal(0, 1e-3, e.shape).astype(np.float32)
    c = compare_arrays("mu", a, e, Tolerance(max_abs=1.0), (-4.0, 4.0))
    tight = c.smallest_passing()
    assert c.passes(tight)  # the smallest passing tolerance passes ...
    assert not c.passes(Tolerance(max_abs=np.nextafter(tight.max_abs, 0)))  # ... and nothing tighter does
    assert not c.passes(Tolerance(rel_l2=tight.rel_l2 * 0.999))
    assert not c.passes(Tolerance(min_psnr=tight.min_psnr + 0.01))
    assert c.needed() == {
        "max_abs": tight.max_abs,
        "rel_l2": tight.rel_l2,
        "min_cosine": tight.min_cosine,
        "min_psnr": tight.min_psnr,
    }


def test_compare_outputs_collects_every_failure():
    exp = {
        "decoder.image": np.zeros((2, 3, 4, 4), np.float32),
        "encoder.mu": np.zeros((2, 8), np.float32),
        "encoder.logvar": np.zeros((2, 8), np.float32),
        "realistic.decoder.image": np.zeros((1, 3, 4, 4), np.float32),
    }
    act = {
        "decoder.image": exp["decoder.image"] + 0.5,
        "encoder.mu": exp["encoder.mu"],
        "encoder.logvar": np.zeros((2, 9), np.float32),
        "unused": np.zeros(1),
    }
    r = compare_outputs(
        act,
        exp,
        DEFAULT_TOLERANCES["fp32"],
        image_outputs={"decoder.image": (-1, 1), "realistic.decoder.image": (-1, 1)},
        label="t",
    )
    assert not r and [o.name for o in r.outputs] == list(exp)
    assert r.failures() == [
        "decoder.image: max_abs 0.5 > 0.0001",
        "encoder.logvar: shape (2, 9) != expected (2, 8)",
        "realistic.decoder.image: output missing",
    ]
    assert r.outputs[1] and r.outputs[0].psnr == pytest.approx(10 * math.log10(4 / 0.25))
    # No tolerance excuses a wrong shape or a missing output; a loose one excuses the 0.5 error.
    assert not r.passes(Tolerance(max_abs=1.0)) and r.outputs[0].passes(Tolerance(max_abs=1.0))
    table = r.table()
    assert all(name in table for name in exp) and table.count("FAIL") == 3 and table.count("PASS") == 1
    json.dumps(r.to_dict(), allow_nan=False)


def test_tolerance_lookup():
    loose, tight = Tolerance(max_abs=1.0), Tolerance(max_abs=0.0)
    assert tolerance_for("realistic.decoder.image", {"image": loose}) is loose
    assert tolerance_for("realistic.decoder.image", {"image": loose, "realistic.decoder.image": tight}) is tight
    assert tolerance_for("anything", tight) is tight
    with pytest.raises(ValueError, match=r"no tolerance for output 'encoder.mu': tolerances are given for \['image'\]"):
        compare_outputs({"encoder.mu": np.zeros(2)}, {"encoder.mu": np.zeros(2)}, {"image": loose})


def test_empty_outputs_compare_equal():
    e = np.zeros((0, 8), np.float32)
    c = compare_arrays("mu", e, e, default_tolerance("fp32", "mu"))
    assert c and c.max_abs == 0.0


def test_default_tolerances():
    assert default_tolerance("fp32", "realistic.decoder.image") == Tolerance(max_abs=1e-4)
    assert all(default_tolerance("fp32", t).max_abs == 1e-4 for t in ("image", "mu", "logvar"))
    with pytest.raises(ValueError, match="no default tolerance for precision 'fp8'"):
        default_tolerance("fp8", "image")


def test_import_pulls_numpy_only():
    code = (
        "import sys, runtime.verify.metrics; "
        "print(sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
