"""Mixed-precision FP16 variants of a bundle's graphs, with the FP32-kept nodes chosen by measurement.

    python -m export.precision.fp16 BUNDLE [--graphs encoder,decoder] [--budget-psnr 40] [--budget-rel-l2 1e-2]
                             [--samples 32] [--seed 1] [--calibration DIR] [--no-progress]

Writes BUNDLE/<graph>.fp16.onnx and registers it under graphs.<graph>.variants.fp16 in vae.json (file, sha256, the
kept-FP32 node names, the measured accuracy and the budget), so the TensorRT 10 path can apply the same choice as
layer precisions. Inputs and outputs stay float32; everything else is float16 except the kept nodes. Per graph: an
FP16 range check (weights or activations beyond +-65504, the first nodes to overflow), the kept-node search
(export.precision.common.search_kept_nodes: all-FP16 first, then the fewest kept nodes), and a final measurement on
ONNX Runtime CPU and under FP16 storage emulation, which must both pass (docs/performance.md#fp16-variants). Budget:
decoder PSNR >= 40 dB, mu / logvar relative L2 <= 1e-2, on reference.npz's golden and realistic inputs and --samples
fresh ones. Graph I/O is checked against vae.json first; a kill at any point leaves the previous variant valid.
Exit codes: 0 ok, 1 a budget missed (nothing written for that graph), 2 bad input.
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from runtime import bundle as B
from runtime.cli import HelpFormatter, add_graphs_argument, epilog, prog_name
from runtime.errors import VaeError
from runtime.verify.metrics import ComparisonReport, Tolerance

from ..cli import add_budget_arguments, add_evaluation_arguments
from .common import (
    FP16_MAX,
    BudgetError,
    EvalSet,
    PrecisionError,
    SearchResult,
    budget_to_dict,
    bundle_locked,
    commit_variant,
    describe_sets,
    evaluation_sets,
    expose_intermediates,
    float_nodes,
    make_budget,
    measure,
    open_bundle,
    ort_session,
    plural,
    quiet,
    recover_variants,
    run_for_graphs,
    run_graph,
    search_kept_nodes,
    summarize,
    timestamp,
    variant_file,
)

PRECISION = "fp16"
_EMU_SUFFIX = "__fp16_emulation"


# ----------------------------------------------------------------------------------------------- range check


@dataclass(frozen=True)
class RangeIssue:
    node: str
    op_type: str
    kind: str  # "weight" | "output" | "input" (an FP32 value beyond +-65504) | "nonfinite" (Inf/NaN starts here)
    tensor: str
    value: float  # max |x| for the range kinds, number of non-finite values for "nonfinite"

    def describe(self) -> str:
        if self.kind == "nonfinite":
            return (
                f"{self.node} ({self.op_type}): its output {self.tensor!r} turns Inf/NaN in FP16 "
                f"({int(self.value)} values) although its inputs are finite"
            )
        return (
            f"{self.node} ({self.op_type}): {self.kind} {self.tensor!r} reaches |x| = {self.value:.4g} "
            f"> {FP16_MAX:g} (FP16 max)"
        )


@dataclass(frozen=True)
class RangeReport:
    """FP16 range findings for one graph; true when clean."""

    graph: str
    issues: tuple[RangeIssue, ...]
    max_abs: dict[str, float]  # node -> largest |x| of its FP32 outputs on the evaluation inputs

    @property
    def nodes(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(i.node for i in self.issues))

    def __bool__(self) -> bool:
        return not self.issues

    def text(self) -> str:
        if not self.issues:
            top = max(self.max_abs.values(), default=0.0)
            return f"{self.graph}: FP16 range check clean (largest FP32 activation |x| = {top:.4g})"
        return f"{self.graph}: FP16 range check found {len(self.issues)} issue(s):\n  " + "\n  ".join(
            i.describe() for i in self.issues
        )

    def to_dict(self) -> dict:
        return {"clean": not self.issues, "issues": [i.__dict__ for i in self.issues]}


def range_check(model, inputs: Sequence[Mapping[str, np.ndarray]], graph: str = "") -> RangeReport:
    """Check an FP32 ModelProto for values FP16 cannot hold, on the given input batches. Writes nothing."""
    from onnx import TensorProto, numpy_helper

    issues: list[RangeIssue] = []
    inits = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        for name in node.input:
            t = inits.get(name)
            if t is not None and t.data_type == TensorProto.FLOAT:
                big = float(np.max(np.abs(numpy_helper.to_array(t)), initial=0.0))
                if big > FP16_MAX:
                    issues.append(RangeIssue(node.name, node.op_type, "weight", name, big))

    exposed = expose_intermediates(model)
    sess = ort_session(exposed)
    peak: dict[str, float] = defaultdict(float)
    for batch in inputs:
        for name, v in run_graph(sess, batch).items():
            peak[name] = max(peak[name], float(np.max(np.abs(v), initial=0.0)))
    max_abs = {}
    for node in model.graph.node:
        outs = [peak[o] for o in node.output if o in peak]
        if outs:
            max_abs[node.name] = max(outs)
        for o in node.output:
            if peak.get(o, 0.0) > FP16_MAX:
                issues.append(RangeIssue(node.name, node.op_type, "output", o, peak[o]))
        for i in node.input:
            if i not in inits and peak.get(i, 0.0) > FP16_MAX:
                issues.append(RangeIssue(node.name, node.op_type, "input", i, peak[i]))

    # Where does the all-FP16 graph (storage emulated) first produce Inf/NaN from finite inputs?
    emu = expose_intermediates(emulate_fp16_storage(convert_fp16(model)))
    sess = ort_session(emu)
    bad: dict[str, int] = defaultdict(int)
    for batch in inputs:
        for name, v in run_graph(sess, batch).items():
            bad[name] += int(np.size(v) - np.count_nonzero(np.isfinite(v)))
    for node in model.graph.node:
        if any(bad.get(o, 0) for o in node.output) and not any(bad.get(i, 0) for i in node.input):
            o = next(o for o in node.output if bad.get(o, 0))
            issues.append(RangeIssue(node.name, node.op_type, "nonfinite", o, float(bad[o])))
    return RangeReport(graph, tuple(issues), max_abs)


# ----------------------------------------------------------------------------------------------- conversion


def _cast_to(node) -> int | None:
    return next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None


def convert_fp16(model, keep_fp32: Iterable[str] = ()):
    """FP16 copy of an FP32 ModelProto: float32 inputs/outputs, the nodes named in `keep_fp32` left in FP32.

    Converted by onnxruntime.transformers.float16 (ORT's maintained copy of the onnxconverter-common converter, whose
    own copy emits a type error when a node is blocked), then fuse_fp32_islands: the Cast pairs that converter leaves
    between two adjacent kept nodes would round (and overflow) exactly the values those nodes are kept in FP32 for.
    """
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    keep = sorted(set(keep_fp32))
    unknown = sorted(set(keep) - {n.name for n in model.graph.node})
    if unknown:
        raise PrecisionError(f"keep_fp32: no node(s) named {unknown} in the graph")
    with quiet():
        m16 = convert_float_to_float16(
            copy.deepcopy(model), keep_io_types=True, node_block_list=keep, op_block_list=[], max_finite_val=FP16_MAX
        )
    m16 = fuse_fp32_islands(m16)
    onnx.checker.check_model(m16)
    return m16


def fuse_fp32_islands(model):
    """Remove Cast(FP32->FP16) -> Cast(FP16->FP32) pairs: two adjacent FP32 nodes then exchange FP32 data directly.

    When the pair feeds a graph output, the two casts become one Identity so the output name is kept.
    """
    import onnx
    from onnx import TensorProto, helper

    inferred = onnx.shape_inference.infer_shapes(model)
    types = {
        v.name: v.type.tensor_type.elem_type
        for v in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output)
    }
    g = model.graph
    consumers: dict[str, list] = defaultdict(list)
    for n in g.node:
        for i in n.input:
            consumers[i].append(n)
    graph_outputs = {o.name for o in g.output}
    drop, rename, extra = set(), {}, []
    for n in g.node:
        if _cast_to(n) != TensorProto.FLOAT16 or types.get(n.input[0]) != TensorProto.FLOAT:
            continue
        mid = n.output[0]
        cons = consumers.get(mid, [])
        if mid in graph_outputs or not cons or any(_cast_to(c) != TensorProto.FLOAT for c in cons):
            continue
        drop.add(id(n))
        for c in cons:
            drop.add(id(c))
            if c.output[0] in graph_outputs:
                extra.append(helper.make_node("Identity", [n.input[0]], [c.output[0]], name=f"{c.name}_fp32"))
            else:
                rename[c.output[0]] = n.input[0]
    if not drop:
        _toposort(g)  # the converter appends its casts at the end of the node list
        return model
    kept_nodes = [n for n in g.node if id(n) not in drop] + extra
    for n in kept_nodes:
        for k, name in enumerate(n.input):
            while name in rename:
                name = rename[name]
            n.input[k] = name
    del g.node[:]
    g.node.extend(kept_nodes)
    gone = set(rename)
    vis = [v for v in g.value_info if v.name not in gone]
    del g.value_info[:]
    g.value_info.extend(vis)
    _toposort(g)
    return model


def _toposort(g) -> None:
    produced = {i.name for i in g.input} | {t.name for t in g.initializer} | {""}
    pending, ordered = list(g.node), []
    while pending:
        ready = [n for n in pending if all(i in produced for i in n.input)]
        if not ready:
            raise PrecisionError("graph has a cycle or a dangling input after FP16 conversion")
        for n in ready:
            ordered.append(n)
            produced.update(n.output)
        pending = [n for n in pending if all(id(n) != id(r) for r in ready)]
    del g.node[:]
    g.node.extend(ordered)


def emulate_fp16_storage(model16):
    """An FP32 graph that computes like `model16` stores: every FP16 tensor rounded through FP16, maths in FP32.

    FP16 weights become FP32 tensors holding the same (FP16-representable) values; each FP16 activation gets an
    explicit Cast(FP32->FP16) -> Cast(FP16->FP32), which ONNX Runtime executes (unlike the casts it inserts itself),
    so overflow to Inf and FP16 rounding happen where they would on a GPU. Tensor names are kept. Needed because ONNX
    Runtime's CPU provider runs FP16 Conv / ConvTranspose / Gemm in FP32 and drops the casts between them: on the CPU
    an "FP16" graph only rounds its weights (docs/performance.md#fp16-variants).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    m = onnx.shape_inference.infer_shapes(copy.deepcopy(model16))
    types = {v.name: v.type.tensor_type.elem_type for v in (*m.graph.value_info, *m.graph.output)}
    nodes = []
    for n in m.graph.node:
        if n.op_type == "Cast":
            if _cast_to(n) == TensorProto.FLOAT16:
                out, half = n.output[0], n.output[0] + _EMU_SUFFIX
                n.output[0] = half
                nodes += [n, helper.make_node("Cast", [half], [out], to=TensorProto.FLOAT, name=n.name + _EMU_SUFFIX)]
            else:
                nodes.append(n)
            continue
        for a in n.attribute:
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_type == TensorProto.FLOAT16:
                a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float32), a.t.name))
        nodes.append(n)
        for k, out in enumerate(n.output):
            if types.get(out) == TensorProto.FLOAT16:
                raw, half = out + _EMU_SUFFIX + "_fp32", out + _EMU_SUFFIX
                n.output[k] = raw
                nodes += [
                    helper.make_node("Cast", [raw], [half], to=TensorProto.FLOAT16, name=n.name + _EMU_SUFFIX),
                    helper.make_node("Cast", [half], [out], to=TensorProto.FLOAT, name=n.name + _EMU_SUFFIX + "_load"),
                ]
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    for t in m.graph.initializer:
        if t.data_type == TensorProto.FLOAT16:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float32), t.name))
    for vi in (*m.graph.input, *m.graph.output):
        if vi.type.tensor_type.elem_type == TensorProto.FLOAT16:
            vi.type.tensor_type.elem_type = TensorProto.FLOAT
    del m.graph.value_info[:]
    return m


# ----------------------------------------------------------------------------------------------- search


@dataclass(frozen=True)
class Fp16Result:
    """The chosen FP16 graph of one ONNX model and the evidence for it."""

    graph: str
    model: object  # onnx.ModelProto, the variant to write
    kept_fp32_nodes: tuple[str, ...]
    range_report: RangeReport
    search: SearchResult
    report_ort: ComparisonReport  # the variant as ONNX Runtime CPU runs it
    report_emulated: ComparisonReport  # under FP16 storage emulation

    @property
    def passed(self) -> bool:
        return self.report_ort.passed and self.report_emulated.passed


def search_fp16(
    model,
    graph: str,
    sets: Sequence[EvalSet],
    budget: Mapping[str, Tolerance],
    *,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> Fp16Result:
    """Range check, then find the fewest FP32-kept nodes meeting `budget` on `sets`; see the module docstring."""
    rr = range_check(model, [s.inputs for s in sets], graph)
    log(rr.text())

    def evaluate(keep: frozenset[str]) -> ComparisonReport:
        return measure(
            graph,
            emulate_fp16_storage(convert_fp16(model, keep)),
            sets,
            budget,
            label=f"{graph} fp16 (storage emulated), {len(keep)} kept",
        )

    result = search_kept_nodes(float_nodes(model), evaluate, desc=f"{graph} fp16 search", progress=progress)
    variant = convert_fp16(model, result.kept)
    report_ort = measure(graph, variant, sets, budget, label=f"{graph} fp16 on onnxruntime-cpu")
    return Fp16Result(graph, variant, result.kept, rr, result, report_ort, result.report)


# ----------------------------------------------------------------------------------------------- bundle level


@bundle_locked
def make_fp16_variant(
    bundle: str | Path,
    graph: str,
    *,
    budget_psnr: float | None = None,
    budget_rel_l2: float | None = None,
    samples: int = 32,
    seed: int = 1,
    calibration: Path | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> Fp16Result:
    """Search, verify and (only if the budget is met) write BUNDLE/<graph>.fp16.onnx and register it in vae.json.

    Args:
        bundle: The bundle folder (locked for the duration; a second writer is refused).
        graph: "encoder" or "decoder".
        budget_psnr: Decoder budget, PSNR in dB against FP32 (default from runtime.verify.metrics: 40).
        budget_rel_l2: Encoder budget, relative L2 of mu / logvar (default: 1e-2).
        samples: Fresh realistic inputs measured besides reference.npz's golden and realistic sets.
        seed: Seed of those inputs.
        calibration: A folder of images for the realistic inputs (default: the embedded shapes dataset).
        progress: Show progress bars.
        log: Called with each report line.

    Returns:
        Fp16Result: the written graph, its kept-FP32 nodes, the range check, the search and both measurements.

    Raises:
        BundleError: The bundle is missing, malformed, changed since export, or locked by another writer.
        PrecisionError: A bad option or a graph that cannot be converted.
        BudgetError: The best variant misses its budget (nothing written); carries the report.
    """
    import onnx

    data, _ = open_bundle(bundle, [graph])
    for line in recover_variants(bundle):  # a run killed earlier in this bundle
        log(f"recovered: {line}")
    budget = make_budget(PRECISION, graph, psnr=budget_psnr, rel_l2=budget_rel_l2)
    sets = evaluation_sets(data, graph, samples=samples, seed=seed, folder=calibration)
    model = onnx.load(str(data.graph_path(graph)))
    res = search_fp16(model, graph, sets, budget, progress=progress, log=log)
    log(
        f"{graph}: kept in FP32: {list(res.kept_fp32_nodes) or 'none'} "
        f"({plural(res.search.evaluations, 'candidate graph')} measured)"
    )
    for line in res.search.log:
        log(f"  {line}")
    inputs = describe_sets(sets)
    log(
        f"{graph} FP16 variant under FP16 storage emulation (float16 rounding and overflow where a GPU has them) "
        f"vs FP32\n  inputs: {inputs}"
    )
    log(res.report_emulated.table())
    log(
        f"{graph} FP16 variant as ONNX Runtime CPU runs it (weights rounded to FP16, arithmetic in FP32) vs FP32\n"
        "  inputs: the same"
    )
    log(res.report_ort.table())
    if not res.passed:
        failed = res.report_ort.failures() + res.report_emulated.failures()
        raise BudgetError(f"{graph}: the FP16 variant misses its budget: {'; '.join(failed)}", res.report_ort)
    name = variant_file(graph, PRECISION)
    accuracy = {
        "passed": True,
        "measured": timestamp(),
        "reference": "golden/realistic: PyTorch FP32 (reference.npz); extra: the bundle's FP32 graph",
        "onnxruntime_cpu": summarize(res.report_ort),
        "fp16_storage_emulation": summarize(res.report_emulated),
        "range_check": res.range_report.to_dict(),
        "search": {
            "evaluations": res.search.evaluations,
            "log": list(res.search.log),
            "ranking": [[n, (s if np.isfinite(s) else "inf")] for n, s in res.search.ranking],
        },
        "samples": samples,
        "seed": seed,
        "data": str(calibration) if calibration else "embedded shapes + prior",
    }
    # The previous fp16 variant stays valid until vae.json names the new one (commit_variant).
    commit_variant(
        bundle,
        graph,
        res.model,
        B.VariantSpec(
            precision=PRECISION,
            file=name,
            sha256="",
            kept_fp32_nodes=res.kept_fp32_nodes,
            accuracy=accuracy,
            budget=budget_to_dict(budget),
        ),
    )
    log(f"wrote {Path(bundle) / name}")
    return res


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog_name("export.precision.fp16"),
        description=__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter,
        epilog=epilog(
            {
                0: "every graph's FP16 variant met its budget and was written",
                1: "a graph missed its budget (nothing written for it; the others are)",
                2: "bad input or option (one line on stderr)",
            },
            "%(prog)s runs/bundle",
            "%(prog)s runs/bundle --graphs decoder --budget-psnr 45",
            "%(prog)s runs/bundle --calibration ~/celeba/img_align_celeba --samples 64",
        ),
    )
    p.add_argument("bundle", type=Path, metavar="BUNDLE", help="bundle folder written by export.to_onnx")
    add_graphs_argument(p, what="graphs to convert")
    add_budget_arguments(p, psnr="40", rel_l2="1e-2")
    add_evaluation_arguments(p)
    p.add_argument(
        "--no-progress", action="store_true", help="no progress output (a bar on a terminal, a few lines in a log)"
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.samples < 0:
            raise PrecisionError(f"--samples must be >= 0, got {args.samples}")
        _, graphs = open_bundle(args.bundle, args.graphs)
    except VaeError as e:  # PrecisionError, BundleError, ...
        print(f"error: {e}", file=sys.stderr)
        return 2
    return run_for_graphs(
        args.bundle,
        graphs,
        lambda graph: (
            make_fp16_variant(
                args.bundle,
                graph,
                budget_psnr=args.budget_psnr,
                budget_rel_l2=args.budget_rel_l2,
                samples=args.samples,
                seed=args.seed,
                calibration=args.calibration,
                progress=not args.no_progress,
            ).passed
        ),
        "{graph}.fp16.onnx not written",
    )


if __name__ == "__main__":
    sys.exit(main())
