"""Each row's accuracy, so a speed is never reported without what it costs in the output.

The loaded runtime (or the peer) runs the bundle's reference inputs - reference.npz's golden and realistic sets, as
`python -m runtime.verify.parity` runs them - and its outputs are compared with the golden PyTorch FP32 outputs
stored there (runtime.verify.metrics). The verdict uses the budget vae.json records for that precision (a variant's
or an engine precision's `budget`), else runtime.verify.metrics' default for it: FP32 is held to the export's parity
gate (max abs 1e-4), fp16 and bf16 to PSNR >= 40 dB / rel L2 <= 1e-2, int8 to 30 dB / 1e-1. One figure per row: the
decoder's worst PSNR (dB over [-1, 1]) or the encoder's worst relative L2 of mu / logvar.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np


@dataclass(frozen=True)
class RowAccuracy:
    graph: str
    budget_precision: str  # whose budget judged it ("fp32", "fp16", "int8", "bf16")
    metric: str  # "min_psnr_db" (decoder) or "max_rel_l2" (encoder)
    value: float
    passed: bool
    budget: str  # the tolerances, e.g. "image: psnr >= 40 dB"
    budget_source: str  # "vae.json" (recorded with the variant) or "default"
    failures: tuple[str, ...] = ()

    def short(self) -> str:
        """One table cell: the figure and the verdict, e.g. "52.3dB ok", "1.2e-03 ok", "16.6dB MISS"."""
        fig = f"{self.value:.1f}dB" if self.metric == "min_psnr_db" else f"{self.value:.1e}"
        return f"{fig} {'ok' if self.passed else 'MISS'}"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["failures"] = list(self.failures)
        d["value"] = self.value if math.isfinite(self.value) else None  # strict JSON: identical outputs' PSNR is inf
        return d


def budget_for(manifest: Any, graph: str, precision: str) -> tuple[dict[str, Any], str]:
    """({tensor: Tolerance}, "vae.json" | "default"): the budget recorded for `precision` of `graph`, else the
    default one."""
    from runtime.verify.metrics import Tolerance, default_tolerance

    spec = manifest.graphs[graph]
    record = spec.variants.get(precision) or spec.engine_precisions.get(precision)
    outputs = [t.name for t in spec.outputs]
    if record is not None and record.budget:
        try:
            return {name: Tolerance(**record.budget[name]) for name in outputs}, "vae.json"
        except (KeyError, TypeError):
            pass  # a budget this reader does not know: the default one
    return {name: default_tolerance(precision, name) for name in outputs}, "default"


def measure_accuracy(
    call: Callable[[str, np.ndarray], Mapping[str, np.ndarray]],
    bundle: Path,
    manifest: Any,
    graph: str,
    budget_precision: str,
) -> RowAccuracy:
    """`call(graph, input) -> {output name: array}` on every reference input set of `graph`, against reference.npz's
    golden outputs, judged by `budget_precision`'s budget. Raises BundleError when the bundle has no reference."""
    from runtime.bundle import DECODER, IMAGE, BundleError
    from runtime.verify.metrics import compare_outputs
    from runtime.verify.parity import IMAGE_RANGE
    from runtime.verify.reference import load_reference, reference_inputs

    reference = load_reference(bundle, manifest)
    inputs = reference_inputs(reference, [graph])
    if not inputs:
        raise BundleError(f"{bundle}: reference.npz has no {graph} inputs")
    actual, expected = {}, {}
    for key, (prefix, g) in inputs.items():
        for name, value in call(g, reference[key]).items():
            out_key = f"{prefix}{g}.{name}"
            if out_key in reference:
                actual[out_key], expected[out_key] = np.asarray(value, dtype=np.float32), reference[out_key]
    tolerances, source = budget_for(manifest, graph, budget_precision)
    tol = {k: tolerances[k.rsplit(".", 1)[-1]] for k in expected}
    images = {k: IMAGE_RANGE for k in expected if k.endswith(f"{DECODER}.{IMAGE}")}
    report = compare_outputs(actual, expected, tol, image_outputs=images, label=f"{graph} {budget_precision}")
    if graph == DECODER:
        metric = "min_psnr_db"
        value = min((o.psnr for o in report.outputs if o.psnr is not None), default=math.nan)
    else:
        metric = "max_rel_l2"
        value = max(o.rel_l2 for o in report.outputs)
    budget = "; ".join(f"{name}: {t.describe()}" for name, t in tolerances.items())
    return RowAccuracy(
        graph=graph,
        budget_precision=budget_precision,
        metric=metric,
        value=float(value),
        passed=report.passed,
        budget=budget,
        budget_source=source,
        failures=tuple(report.failures()),
    )


def runtime_call(rt: Any) -> Callable[[str, np.ndarray], dict[str, np.ndarray]]:
    """`call` for measure_accuracy over anything with encode / decode (runtime.load's VAERuntime, the C++ runtime,
    the peer): encode may return a Posterior or a (mu, logvar) pair."""

    def call(graph: str, x: np.ndarray) -> dict[str, np.ndarray]:
        if graph == "decoder":
            return {"image": rt.decode(x)}
        post = rt.encode(x)
        mu, logvar = (post.mu, post.logvar) if hasattr(post, "mu") else post
        return {"mu": mu, "logvar": logvar}

    return call
