"""Numerical comparison of deployed outputs with reference outputs (numpy only).

Shared by the export parity gate, the runtime parity tool, the precision variants and the TensorRT builder. A
comparison knows whether it passed (`bool(report)`), keeps every output's numbers (max / mean / p99 absolute error,
relative L2, cosine similarity, PSNR for images, NaN/Inf counts) and the smallest tolerance that would have passed,
and collects every failing output before anyone raises.

    report = compare_outputs(actual, expected, {"image": Tolerance(max_abs=1e-4)}, image_outputs={"image": (-1, 1)})
    if not report: raise SomeError(report.table())       # every failing output, with its numbers

Tolerances are looked up per output by its full name ("realistic.decoder.image"), then by its tensor name (the part
after the last dot, "image"); a single Tolerance applies to every output. `OutputComparison.passes(tol)` re-checks a
comparison against another tolerance without recomputing, and `smallest_passing()` is the tightest Tolerance that
would still pass.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import numpy as np

# Failures that no tolerance can excuse (see OutputComparison.passes).
_SHAPE = "shape"
_MISSING = "output missing"
_STRUCTURAL = (_SHAPE, _MISSING)


@dataclass(frozen=True)
class Tolerance:
    """Pass criteria for one output; None means "not checked". NaN/Inf in the actual output always fails."""

    max_abs: float | None = None
    rel_l2: float | None = None
    min_psnr: float | None = None  # dB, images only
    min_cosine: float | None = None

    def describe(self) -> str:
        parts = []
        if self.max_abs is not None:
            parts.append(f"max_abs <= {self.max_abs:g}")
        if self.rel_l2 is not None:
            parts.append(f"rel_l2 <= {self.rel_l2:g}")
        if self.min_psnr is not None:
            parts.append(f"psnr >= {self.min_psnr:g} dB")
        if self.min_cosine is not None:
            parts.append(f"cosine >= {self.min_cosine:g}")
        return ", ".join(parts) or "finite"

    def violations(self, max_abs: float, rel_l2: float, psnr: float | None, cosine: float) -> tuple[str, ...]:
        """Why these error numbers fail this tolerance (empty: they pass). NaN numbers fail every set criterion."""
        out = []
        if self.max_abs is not None and not max_abs <= self.max_abs:
            out.append(f"max_abs {max_abs:.3g} > {self.max_abs:g}")
        if self.rel_l2 is not None and not rel_l2 <= self.rel_l2:
            out.append(f"rel_l2 {rel_l2:.3g} > {self.rel_l2:g}")
        if self.min_psnr is not None and (psnr is None or not psnr >= self.min_psnr):
            out.append(f"psnr {psnr if psnr is not None else float('nan'):.2f} dB < {self.min_psnr:g} dB")
        if self.min_cosine is not None and not cosine >= self.min_cosine:
            out.append(f"cosine {cosine:.6f} < {self.min_cosine:g}")
        return tuple(out)


# Defaults per precision, keyed by tensor name. FP32: bit-level agreement up to reassociation. FP16/BF16/INT8: the
# accuracy budgets of the reduced-precision variants (PSNR over the Tanh range [-1, 1] for images).
DEFAULT_TOLERANCES: dict[str, dict[str, Tolerance]] = {
    "fp32": {"image": Tolerance(max_abs=1e-4), "mu": Tolerance(max_abs=1e-4), "logvar": Tolerance(max_abs=1e-4)},
    "fp16": {"image": Tolerance(min_psnr=40.0), "mu": Tolerance(rel_l2=1e-2), "logvar": Tolerance(rel_l2=1e-2)},
    "int8": {"image": Tolerance(min_psnr=30.0), "mu": Tolerance(rel_l2=1e-1), "logvar": Tolerance(rel_l2=1e-1)},
}
# bf16 (OpenVINO's bf16 execution of the FP32 graph) is held to the FP16 budget: it is offered where FP16 would be.
DEFAULT_TOLERANCES["bf16"] = DEFAULT_TOLERANCES["fp16"]


def default_tolerance(precision: str, tensor: str) -> Tolerance:
    try:
        return DEFAULT_TOLERANCES[precision][tensor.rsplit(".", 1)[-1]]
    except KeyError:
        raise ValueError(
            f"no default tolerance for precision {precision!r}, tensor {tensor!r}; "
            f"known precisions {sorted(DEFAULT_TOLERANCES)}"
        ) from None


@dataclass(frozen=True)
class OutputComparison:
    name: str
    shape: tuple[int, ...]
    max_abs: float
    mean_abs: float
    p99_abs: float
    rel_l2: float
    cosine: float
    psnr: float | None
    nan_count: int
    inf_count: int
    tolerance: Tolerance
    failures: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return not self.failures

    def __bool__(self) -> bool:
        return self.passed

    def passes(self, tolerance: Tolerance) -> bool:
        """Would this output pass `tolerance`? (NaN/Inf values, a shape mismatch or a missing output never pass.)"""
        if self.nan_count or self.inf_count or any(f.startswith(_STRUCTURAL) for f in self.failures):
            return False
        return not tolerance.violations(self.max_abs, self.rel_l2, self.psnr, self.cosine)

    def smallest_passing(self) -> Tolerance:
        """The tightest tolerance (every criterion set) that this output still passes, if it can pass any."""
        return Tolerance(max_abs=self.max_abs, rel_l2=self.rel_l2, min_psnr=self.psnr, min_cosine=self.cosine)

    def needed(self) -> dict[str, float]:
        """The smallest tolerance of each kind that this output would pass, as a dict (see smallest_passing)."""
        out: dict[str, float] = {"max_abs": self.max_abs, "rel_l2": self.rel_l2, "min_cosine": self.cosine}
        if self.psnr is not None:
            out["min_psnr"] = self.psnr
        return out

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["tolerance"] = asdict(self.tolerance)
        d["passed"] = self.passed
        d["needed"] = self.needed()
        # Strict JSON has no Infinity/NaN: non-finite numbers (e.g. the PSNR of identical outputs) become null.
        d["needed"] = {k: (v if math.isfinite(v) else None) for k, v in d["needed"].items()}
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def compare_arrays(
    name: str,
    actual: np.ndarray,
    expected: np.ndarray,
    tolerance: Tolerance,
    pixel_range: tuple[float, float] | None = None,
) -> OutputComparison:
    """Compare one output. `pixel_range` marks an image output (enables PSNR over that range's span)."""
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    if a.shape != e.shape:
        nan = float("nan")
        return OutputComparison(
            name,
            tuple(a.shape),
            nan,
            nan,
            nan,
            nan,
            nan,
            None,
            0,
            0,
            tolerance,
            (f"{_SHAPE} {tuple(a.shape)} != expected {tuple(e.shape)}",),
        )
    nan_count, inf_count = int(np.isnan(a).sum()), int(np.isinf(a).sum())
    diff = np.abs(a - e)
    finite = np.isfinite(diff)
    # An empty output (batch 0) has no error; an output with no finite difference at all has an infinite one.
    d = np.zeros(1) if a.size == 0 else (diff[finite] if finite.any() else np.array([np.inf]))
    max_abs = float(d.max()) if finite.all() else float("inf")
    mean_abs, p99 = float(d.mean()), float(np.percentile(d, 99))
    ref_norm = float(np.linalg.norm(e))
    err_norm = float(np.linalg.norm(np.where(finite, a - e, 0.0)))
    rel_l2 = err_norm / ref_norm if ref_norm > 0 else (0.0 if err_norm == 0 else float("inf"))
    na = float(np.linalg.norm(np.where(finite, a, 0.0)))
    cosine = (
        float(np.sum(np.where(finite, a, 0.0) * e) / (na * ref_norm))
        if na > 0 and ref_norm > 0
        else (1.0 if na == ref_norm == 0 else 0.0)
    )
    psnr = None
    if pixel_range is not None:
        span = float(pixel_range[1]) - float(pixel_range[0])
        if not span > 0:
            raise ValueError(f"{name}: pixel range {tuple(pixel_range)} is empty; expected (low, high) with low < high")
        mse = float(np.mean(np.where(finite, a - e, np.inf) ** 2))  # any NaN/Inf makes the MSE infinite
        psnr = (
            float("inf")
            if mse == 0
            else (float("-inf") if not math.isfinite(mse) else 10.0 * math.log10(span * span / mse))
        )
    failures = [f"{nan_count} NaN and {inf_count} Inf values"] if nan_count or inf_count else []
    failures += tolerance.violations(max_abs, rel_l2, psnr, cosine)
    return OutputComparison(
        name,
        tuple(a.shape),
        max_abs,
        mean_abs,
        p99,
        rel_l2,
        cosine,
        psnr,
        nan_count,
        inf_count,
        tolerance,
        tuple(failures),
    )


@dataclass(frozen=True)
class ComparisonReport:
    """Every output's comparison; passes only if all do."""

    outputs: tuple[OutputComparison, ...]
    label: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)

    def __bool__(self) -> bool:
        return self.passed

    def passes(self, tolerances: "Tolerance | Mapping[str, Tolerance]") -> bool:
        """Would every output pass these tolerances (looked up as in compare_outputs)?"""
        return all(o.passes(tolerance_for(o.name, tolerances)) for o in self.outputs)

    def failures(self) -> list[str]:
        return [f"{o.name}: {'; '.join(o.failures)}" for o in self.outputs if o.failures]

    def table(self) -> str:
        head = (
            f"{'output':<28} {'max_abs':>10} {'mean_abs':>10} {'p99_abs':>10} {'rel_l2':>10} {'cosine':>10} "
            f"{'psnr_dB':>8} {'nan/inf':>8}  {'tolerance':<22} result"
        )
        lines = [head, "-" * len(head)]
        for o in self.outputs:
            psnr = "-" if o.psnr is None else ("inf" if math.isinf(o.psnr) else f"{o.psnr:.2f}")
            lines.append(
                f"{o.name:<28} {o.max_abs:>10.3g} {o.mean_abs:>10.3g} {o.p99_abs:>10.3g} {o.rel_l2:>10.3g} "
                f"{o.cosine:>10.7f} {psnr:>8} {o.nan_count:>3}/{o.inf_count:<4}  "
                f"{o.tolerance.describe():<22} {'PASS' if o.passed else 'FAIL: ' + '; '.join(o.failures)}"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "passed": self.passed,
            "meta": self.meta,
            "outputs": [o.to_dict() for o in self.outputs],
        }


def tolerance_for(name: str, tolerances: Tolerance | Mapping[str, Tolerance]) -> Tolerance:
    """The tolerance of output `name`: a single Tolerance, or a mapping keyed by full name, then by tensor name."""
    if isinstance(tolerances, Tolerance):
        return tolerances
    for key in (name, name.rsplit(".", 1)[-1]):
        if key in tolerances:
            return tolerances[key]
    raise ValueError(
        f"no tolerance for output {name!r}: tolerances are given for {sorted(tolerances)} "
        "(keys are full output names or tensor names such as 'image')"
    )


def compare_outputs(
    actual: Mapping[str, np.ndarray],
    expected: Mapping[str, np.ndarray],
    tolerances: Tolerance | Mapping[str, Tolerance],
    *,
    image_outputs: Mapping[str, tuple[float, float]] = {},
    label: str = "",
    meta: Mapping[str, Any] | None = None,
) -> ComparisonReport:
    """Compare every expected output; a missing actual output fails, extra actual outputs are ignored.

    tolerances: see tolerance_for. image_outputs: {output name: pixel range} of the outputs that are images (their
    PSNR is computed over that range's span). Every output is compared before the caller decides to raise.
    """
    outs = []
    for name, exp in expected.items():
        tol = tolerance_for(name, tolerances)
        if name not in actual:
            nan = float("nan")
            outs.append(
                OutputComparison(name, tuple(np.shape(exp)), nan, nan, nan, nan, nan, None, 0, 0, tol, (_MISSING,))
            )
            continue
        outs.append(compare_arrays(name, actual[name], exp, tol, image_outputs.get(name)))
    return ComparisonReport(tuple(outs), label=label, meta=dict(meta or {}))
