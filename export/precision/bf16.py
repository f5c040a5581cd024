"""BF16 execution of a bundle's FP32 graphs on OpenVINO (CPU), measured against the FP16 budget and recorded.

    python -m export.precision.bf16 BUNDLE [--graphs encoder,decoder] [--budget-psnr 40] [--budget-rel-l2 1e-2]
                             [--samples 32] [--seed 1] [--calibration DIR] [--threads N]

BF16 is an engine setting, not a graph variant: OpenVINO's CPU plugin runs the FP32 graph with its inference
precision hint set to bf16 (weights and activations rounded to bf16 inside its kernels, accumulation in FP32), so
there is no file to write. (ONNX Runtime's CPU provider has no such path: ONNX's Conv / ConvTranspose take no
bfloat16 inputs, its CPU MatMul has no bfloat16 kernel, and its bf16 fast-math GEMM option exists on ARM64 only.)
What this tool writes is evidence: per graph, vae.json's graphs.<graph>.engine_precisions.bf16 records that
OpenVINO's bf16 execution of that very graph file (its name and sha256) met the budget, with the worst-case numbers,
the budget, the OpenVINO version and the kernel precisions OpenVINO chose. runtime.load(..., backend="openvino",
precision="bf16") accepts bf16 only for graphs so recorded (runtime/backends/openvino.py).

Per graph: compile the FP32 graph exactly as the runtime does (runtime.backends.openvino.compile_onnx, inference
precision read back: it must be bf16), run it on the evaluation sets every variant is measured on
(export.precision.common.evaluation_sets: golden and realistic inputs of reference.npz against PyTorch FP32, plus
--samples fresh realistic inputs against the FP32 graph) and compare with the FP16 budget (runtime.verify.metrics:
decoder PSNR >= 40 dB over [-1, 1], mu / logvar relative L2 <= 1e-2, no NaN/Inf). Recorded only when it passes; a
miss leaves vae.json as it was.

Refused (exit 2, one line) on a CPU that cannot run bf16 natively - no avx512_bf16 / amx_bf16 flag in /proc/cpuinfo,
or no BF16 in OpenVINO's CPU OPTIMIZATION_CAPABILITIES - where bf16 would be emulated (slow) or quietly run as f32.
Exit codes: 0 ok, 1 a budget missed (nothing recorded for that graph), 2 bad input, no openvino, or no native bf16.
"""

from __future__ import annotations

import argparse
import hashlib
import platform
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from runtime import bundle as B
from runtime.backends.base import cpu_model
from runtime.backends.openvino import (
    OV_DEVICE,
    compile_onnx,
    cpu_bf16_support,
    engine_properties,
    import_openvino,
    kernel_precisions,
    read_onnx,
)
from runtime.cli import HelpFormatter, add_graphs_argument, epilog, prog_name
from runtime.errors import VaeError
from runtime.verify.metrics import ComparisonReport

from ..cli import add_budget_arguments, add_evaluation_arguments
from .common import (
    BudgetError,
    PrecisionError,
    budget_to_dict,
    bundle_locked,
    evaluation_sets,
    make_budget,
    measure,
    open_bundle,
    run_for_graphs,
    summarize,
    timestamp,
    worst_case,
)

PRECISION = "bf16"
ENGINE = "openvino"


class OpenVinoSession:
    """A compiled OpenVINO model of `graph` as export.precision.common.measure runs a session: get_outputs() and
    run(None, feeds), outputs by the graph's fixed names."""

    def __init__(self, compiled: Any, graph: str) -> None:
        self._outputs = [(name, compiled.output(name)) for name in B.GRAPH_IO[graph][1]]
        self._request = compiled.create_infer_request()

    def get_outputs(self) -> list[SimpleNamespace]:
        return [SimpleNamespace(name=name) for name, _ in self._outputs]

    def run(self, names: Any, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        result = self._request.infer(
            {k: np.ascontiguousarray(v, np.float32) for k, v in feeds.items()}, share_outputs=False
        )
        return [result[port] for _, port in self._outputs]


@dataclass(frozen=True)
class Bf16Result:
    graph: str
    report: ComparisonReport
    record: B.EnginePrecisionSpec  # what was (or, on a miss, would have been) recorded

    @property
    def passed(self) -> bool:
        return self.report.passed


def check_bf16_support(core: Any = None) -> dict[str, Any]:
    """The CPU's bf16 evidence for the record, or PrecisionError (one line: flags found and needed)."""
    support = cpu_bf16_support(core)
    if not support.native:
        raise PrecisionError(f"bf16: {support.refusal()}")
    return {
        "bf16_flags": list(support.cpu_flags),
        "openvino_capabilities": list(support.openvino_capabilities),
        "machine": platform.machine(),
        "processor": _cpu_model(),
    }


def measure_bf16(
    data,
    graph: str,
    *,
    budget_psnr: float | None = None,
    budget_rel_l2: float | None = None,
    samples: int = 32,
    seed: int = 1,
    calibration: Path | None = None,
    threads: int | None = None,
    cpu: Mapping[str, Any] | None = None,
) -> Bf16Result:
    """Compile the graph's FP32 file with bf16 on OpenVINO and measure it against the FP16 budget (writes nothing)."""
    ov = import_openvino()
    spec = data.manifest.graph(graph)
    path = data.graph_path(graph)  # sha256-checked against vae.json
    raw = path.read_bytes()
    if hashlib.sha256(raw).hexdigest() != spec.sha256:  # the bytes compiled are the bytes checked
        raise B.BundleError(f"{path}: changed while being measured; run again")
    core = ov.Core()
    properties = engine_properties(PRECISION, threads=threads)
    compiled = compile_onnx(core, read_onnx(core, raw, path), properties, path)
    budget = make_budget(PRECISION, graph, psnr=budget_psnr, rel_l2=budget_rel_l2)
    sets = evaluation_sets(data, graph, samples=samples, seed=seed, folder=calibration)
    report = measure(graph, OpenVinoSession(compiled, graph), sets, budget, label=f"{graph} bf16 on openvino-cpu")
    summary = summarize(report)
    accuracy = {
        "passed": report.passed,
        "measured": timestamp(),
        "reference": "golden/realistic: PyTorch FP32 (reference.npz); extra: the bundle's FP32 graph",
        "openvino_cpu": summary,
        "worst_case": worst_case(summary),
        "inference_precision": compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name(),
        "kernel_precisions": kernel_precisions(compiled),
        "cpu": dict(cpu or {}),
        "samples": samples,
        "seed": seed,
        "data": str(calibration) if calibration else "embedded shapes + prior",
    }
    record = B.EnginePrecisionSpec(
        precision=PRECISION,
        engine=ENGINE,
        file=spec.file,
        sha256=spec.sha256,
        device=OV_DEVICE,
        properties={"INFERENCE_PRECISION_HINT": "bf16"},
        versions={"openvino": str(ov.__version__)},
        accuracy=accuracy,
        budget=budget_to_dict(budget),
    )
    return Bf16Result(graph, report, record)


@bundle_locked
def record_bf16(bundle: str | Path, graph: str, *, log: Callable[[str], None] = print, **options: Any) -> Bf16Result:
    """Measure bf16 for one graph and, only if it meets the budget, record it in vae.json (atomically)."""
    data, _ = open_bundle(bundle, [graph])
    res = measure_bf16(data, graph, **options)
    log(res.report.table())
    if not res.passed:
        raise BudgetError(
            f"{graph}: OpenVINO bf16 misses the FP16 budget: {'; '.join(res.report.failures())}", res.report
        )
    m = B.read_manifest(bundle)
    spec = m.graph(graph)
    if spec.sha256 != res.record.sha256:
        raise B.BundleError(
            f"{Path(bundle) / B.MANIFEST_NAME}: graph {graph!r} changed while being measured; run again"
        )
    new_spec = replace(spec, engine_precisions={**spec.engine_precisions, PRECISION: res.record})
    B.write_manifest(bundle, replace(m, graphs={**m.graphs, graph: new_spec}))
    log(f"recorded graphs.{graph}.engine_precisions.{PRECISION} in {Path(bundle) / B.MANIFEST_NAME}")
    return res


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog=prog_name("export.precision.bf16"),
        description=__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter,
        epilog=epilog(
            {
                0: "bf16 execution met the budget and was recorded for every graph",
                1: "a graph missed its budget (nothing recorded for it; the others are)",
                2: "bad input or option, no openvino, or no native bf16 on this CPU (one line on stderr)",
            },
            "%(prog)s runs/bundle",
            "%(prog)s runs/bundle --graphs decoder --threads 8",
        ),
    )
    p.add_argument("bundle", type=Path, metavar="BUNDLE", help="bundle folder written by export.to_onnx")
    add_graphs_argument(p, what="graphs to measure")
    add_budget_arguments(p, psnr="40, the FP16 budget", rel_l2="1e-2, the FP16 budget")
    add_evaluation_arguments(p)
    p.add_argument(
        "--threads", type=int, default=None, metavar="N", help="OpenVINO inference threads (default: its choice)"
    )
    args = p.parse_args(argv)
    try:
        if args.threads is not None and args.threads < 1:
            raise PrecisionError(f"--threads must be >= 1, got {args.threads}")
        if args.samples < 0:
            raise PrecisionError(f"--samples must be >= 0, got {args.samples}")
        _, graphs = open_bundle(args.bundle, args.graphs)
        cpu = check_bf16_support()
    except VaeError as e:  # PrecisionError, BundleError, BackendUnavailableError (no openvino)
        print(f"error: {e}", file=sys.stderr)
        return 2
    return run_for_graphs(
        args.bundle,
        graphs,
        lambda graph: (
            record_bf16(
                args.bundle,
                graph,
                budget_psnr=args.budget_psnr,
                budget_rel_l2=args.budget_rel_l2,
                samples=args.samples,
                seed=args.seed,
                calibration=args.calibration,
                threads=args.threads,
                cpu=cpu,
            ).passed
        ),
        "bf16 not recorded for {graph}",
    )


def _cpu_model() -> str:
    return cpu_model() or platform.processor()


if __name__ == "__main__":
    sys.exit(main())
