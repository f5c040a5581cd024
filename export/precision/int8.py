"""Static INT8 (QDQ) variants of a bundle's graphs, calibrated on realistic inputs, gated on measured accuracy.

    python -m export.precision.int8 BUNDLE --int8 [--graphs encoder,decoder] [--calibration DIR] [--samples N]
        [--method auto|minmax|percentile|entropy] [--budget-psnr 30] [--budget-rel-l2 0.1] [--max-kept 2] [--force]
        [--no-progress] [--decoder-form auto|subpixel|bundle] [--checkpoint CKPT]

Writes BUNDLE/<graph>.int8.onnx and registers it under graphs.<graph>.variants.int8 in vae.json. --decoder-form:
`subpixel` quantizes the all-layers "nhwc" sub-pixel decoder rebuilt from the source checkpoint vae.json names
(by its path relative to the bundle, else inside it; size and sha256 checked; --checkpoint when it moved) and checked
against decoder.onnx (max abs <= 1e-4), recorded as source_form; `bundle` quantizes decoder.onnx; `auto` (default):
subpixel when that checkpoint is there and unchanged, else bundle, saying why (docs/performance.md#int8-decoder-form).
QDQ, symmetric INT8, weights per output channel, FP32 biases, at most --max-kept nodes left in FP32
(docs/performance.md#int8-quantization-settings). Budget: decoder PSNR >= 30 dB, mu / logvar relative L2 <= 0.1, on
other inputs than the calibration's; a variant that misses it is written only with --force (registered passed:
false). Graph I/O is checked against vae.json first; a kill at any point leaves the previous variant valid.
Exit codes: 0 ok, 1 a budget missed (nothing written for that graph unless --force), 2 bad input.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from runtime import bundle as B
from runtime.cli import HelpFormatter, add_graphs_argument, epilog, prog_name, progress as progress_bar
from runtime.errors import VaeError
from runtime.files import temp_prefix
from runtime.verify.metrics import ComparisonReport, Tolerance

from ..cli import add_budget_arguments, non_negative_int
from .common import (
    BudgetError,
    EvalSet,
    PrecisionError,
    SearchResult,
    badness,
    budget_to_dict,
    bundle_locked,
    commit_variant,
    dataset_images,
    describe_sets,
    evaluation_sets,
    float_nodes,
    make_budget,
    measure,
    open_bundle,
    plural,
    quiet,
    realistic_inputs,
    recover_variants,
    run_for_graphs,
    search_kept_nodes,
    summarize,
    timestamp,
    variant_file,
)

PRECISION = "int8"
METHODS = ("minmax", "percentile", "entropy")
#: What --method auto calibrates with, each searched and measured; the most accurate passing variant is kept
#: (docs/performance.md#int8-quantization-settings). Entropy is left out: on both models measured it gave exactly
#: minmax's errors.
AUTO_METHODS = ("minmax", "percentile")
DECODER_FORMS = ("auto", "bundle", "subpixel")
# rewrite_decoder's options for the sub-pixel INT8 form (the fastest INT8 form: docs/performance.md#int8-decoder-form)
SUBPIXEL_OPTIONS = {"layers": "all", "form": "nhwc", "absorb_head": True, "fold_stem": True}
FORM_CHECK_MAX_ABS = 1e-4  # the rebuilt FP32 form against decoder.onnx: exact up to FP32 rounding
WEIGHT_OPS = {"Conv": 0, "ConvTranspose": 1, "Gemm": 0}  # op -> output-channel axis of its weight


@dataclass(frozen=True)
class QdqCheck:
    """Properties of a QDQ graph that TensorRT relies on; true when all hold."""

    quantize_nodes: int
    dequantize_nodes: int
    nonzero_zero_points: tuple[str, ...]  # Q/DQ nodes whose zero point is not 0
    non_int8: tuple[str, ...]  # Q/DQ nodes whose quantized type is not int8
    per_tensor_weights: tuple[str, ...]  # Conv/ConvTranspose/Gemm whose weight scale is not per output channel
    quantized_weight_nodes: tuple[str, ...]  # nodes with an INT8 weight

    def __bool__(self) -> bool:
        return not (self.nonzero_zero_points or self.non_int8 or self.per_tensor_weights) and self.quantize_nodes > 0

    def problems(self) -> list[str]:
        out = []
        if self.quantize_nodes == 0:
            out.append("no QuantizeLinear node: nothing was quantized")
        if self.nonzero_zero_points:
            out.append(f"non-zero zero points in {list(self.nonzero_zero_points)}")
        if self.non_int8:
            out.append(f"non-int8 quantized type in {list(self.non_int8)}")
        if self.per_tensor_weights:
            out.append(f"weights not quantized per output channel in {list(self.per_tensor_weights)}")
        return out


def check_qdq(model) -> QdqCheck:
    """Inspect every QuantizeLinear / DequantizeLinear of a QDQ ModelProto."""
    from onnx import TensorProto, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    q = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    nonzero, non_int8 = [], []
    for n in (*q, *dq):
        zp = inits.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        if zp is not None:
            if np.any(numpy_helper.to_array(zp) != 0):
                nonzero.append(n.name)
            if zp.data_type != TensorProto.INT8:
                non_int8.append(n.name)
        elif (
            n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].data_type != TensorProto.INT8
        ):
            non_int8.append(n.name)
    per_tensor, quantized = [], []
    for node in model.graph.node:
        axis_expected = WEIGHT_OPS.get(node.op_type)
        if axis_expected is None or len(node.input) < 2:
            continue
        src = producers.get(node.input[1])
        if src is None or src.op_type != "DequantizeLinear" or src.input[0] not in inits:
            continue
        quantized.append(node.name)
        w = inits[src.input[0]]
        scale = numpy_helper.to_array(inits[src.input[1]]) if src.input[1] in inits else np.zeros(())
        axis = next((a.i for a in src.attribute if a.name == "axis"), 1)
        if node.op_type == "Gemm":
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            axis_expected = 0 if trans_b else 1
        channels = w.dims[axis_expected]
        if scale.size != channels or scale.size < 2 or axis % len(w.dims) != axis_expected:
            per_tensor.append(node.name)
    return QdqCheck(len(q), len(dq), tuple(nonzero), tuple(non_int8), tuple(per_tensor), tuple(quantized))


# ----------------------------------------------------------------------------------------------- quantization


def calibration_inputs(bundle, graph: str, samples: int, seed: int, folder: Path | None = None) -> np.ndarray:
    """Realistic calibration inputs for `graph`, never the golden noise: encoder: `samples` images from `folder`
    (recursively, centre-cropped as vae.json records training did) or the embedded shapes dataset, in the bundle's
    pixel range; decoder: the FP32 encoder's means of those images plus prior draws N(0, I)."""
    data, _ = open_bundle(bundle, [graph])
    if graph == B.ENCODER:
        return dataset_images(samples, data.manifest, seed, folder)
    return realistic_inputs(data, samples, seed, folder)[B.DECODER]


class Quantizer:
    """Calibrates once (ranges cached in a temporary file), then quantizes with any set of nodes left in FP32."""

    def __init__(
        self,
        fp32_path: Path,
        graph: str,
        calibration: np.ndarray,
        *,
        method: str = "minmax",
        batch: int = 16,
        workdir: Path,
    ) -> None:
        if method not in METHODS:  # "auto" is resolved by make_int8_variant, one Quantizer per method
            raise PrecisionError(f"--method: expected one of {list(METHODS)}, got {method!r}")
        self.fp32_path, self.graph, self.method, self.workdir = Path(fp32_path), graph, method, Path(workdir)
        self.calibration, self.batch = calibration, batch
        self.cache = self.workdir / f"{graph}.{method}.calibration.json"
        self._count = 0

    def _reader(self):
        from onnxruntime.quantization import CalibrationDataReader

        name, x, batch = B.GRAPH_IO[self.graph][0][0], self.calibration, self.batch

        class Reader(CalibrationDataReader):
            def __init__(self):
                self._it = iter([{name: x[i : i + batch]} for i in range(0, len(x), batch)])

            def get_next(self):
                return next(self._it, None)

        return Reader()

    def quantize(self, keep_fp32: Iterable[str] = ()):
        import onnx
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        method = {
            "minmax": CalibrationMethod.MinMax,
            "percentile": CalibrationMethod.Percentile,
            "entropy": CalibrationMethod.Entropy,
        }[self.method]
        self._count += 1
        out = self.workdir / f"{self.graph}.int8.{self._count}.onnx"
        # Symmetric (zero point 0: TensorRT rejects any other); biases stay FP32 (TensorRT's parser refuses an INT32
        # DequantizeLinear); no ORT pre-processing, which may rename nodes
        # (docs/performance.md#int8-quantization-settings).
        with quiet():
            quantize_static(
                str(self.fp32_path),
                str(out),
                calibration_data_reader=None if self.cache.is_file() else self._reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                reduce_range=False,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=sorted(keep_fp32),
                calibrate_method=method,
                calibration_cache_path=str(self.cache),
                extra_options={
                    "ActivationSymmetric": True,
                    "WeightSymmetric": True,
                    "QuantizeBias": False,
                    # symmetric ranges straight from calibration, not widened afterwards
                    "CalibTensorRangeSymmetric": True,
                },
            )
        model = strip_output_qdq(onnx.load(str(out)))
        out.unlink()
        return model


def strip_output_qdq(model):
    """Remove the QuantizeLinear -> DequantizeLinear pair in front of each graph output.

    The contract says outputs are float32; an INT8 round trip on mu / logvar / image only adds error (logvar's few
    large values set the scale, and the many small ones lose their precision) and TensorRT would have to emit INT8
    from the last layer. The producer then writes the graph output directly.
    """
    g = model.graph
    outputs = {o.name for o in g.output}
    producers = {o: n for n in g.node for o in n.output}
    consumers: dict[str, int] = {}
    for n in g.node:
        for i in n.input:
            consumers[i] = consumers.get(i, 0) + 1
    drop = set()
    for dq in g.node:
        if dq.op_type != "DequantizeLinear" or dq.output[0] not in outputs:
            continue
        q = producers.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear" or consumers.get(q.output[0], 0) != 1:
            continue
        src = producers.get(q.input[0])
        if src is None or consumers.get(q.input[0], 0) != 1 or q.input[0] in outputs:
            continue
        src.output[list(src.output).index(q.input[0])] = dq.output[0]
        drop.update((id(q), id(dq)))
    if drop:
        kept = [n for n in g.node if id(n) not in drop]
        del g.node[:]
        g.node.extend(kept)
    return model


# ----------------------------------------------------------------------------------------------- decoder forms


def source_checkpoint(data, checkpoint: Path | None = None) -> Path:
    """The checkpoint the bundle was exported from: `checkpoint`, else the one vae.json's source names (its
    relative_path from the bundle folder, an older export's absolute path, then its name inside the bundle folder);
    its size and sha256 checked against vae.json's source."""
    src = data.manifest.source
    manifest_path = data.path / B.MANIFEST_NAME
    if checkpoint is not None:
        path = Path(checkpoint)
        if not path.is_file():
            raise PrecisionError(f"--checkpoint {path}: not a file")
    else:
        candidates = B.source_checkpoint_candidates(data.path, src)
        path = next((c for c in candidates if c.is_file()), None)
        if path is None and not candidates:
            raise PrecisionError(
                f"the sub-pixel decoder form is rebuilt from the source checkpoint, and "
                f"{manifest_path} names none (an export from a model in memory); pass "
                "--checkpoint CKPT"
            )
        if path is None:
            looked = [str(c) for c in candidates]
            raise PrecisionError(
                f"the sub-pixel decoder form is rebuilt from the source checkpoint, and "
                f"the one {manifest_path} names is not here (looked for {looked}); pass "
                "--checkpoint CKPT"
            )
    why = B.source_checkpoint_mismatch(path, src)
    if why is not None:
        raise PrecisionError(
            f"{path}: {why} ({manifest_path}): not the bundle's checkpoint (changed since export?); "
            "pass --checkpoint with the exported one"
        )
    return path


def subpixel_decoder(data, ckpt: Path, out: Path, log: Callable[[str], None] = print) -> dict:
    """Export the all-layers "nhwc" sub-pixel FP32 decoder of `ckpt` (already checked by source_checkpoint) to `out`,
    checked against the bundle's decoder.onnx.

    Returns what vae.json records as the variant's source_form.
    """
    import onnx
    import torch

    from vae_model import VaeModelError, load_checkpoint

    from ..graph.passes import fold_batchnorm
    from ..graph.rewrites import RewriteError, rewrite_decoder
    from ..to_onnx import ExportError, export_graph
    from .common import ort_session, run_graph

    try:
        model = load_checkpoint(ckpt).model.float().eval()
    except VaeModelError as e:
        raise PrecisionError(f"sub-pixel decoder form: {e}") from None
    cfg, m = model.config, data.manifest.model
    if (cfg.latent_dim, cfg.image_size, cfg.in_channels, tuple(cfg.hidden_dims)) != (
        m.latent_dim,
        m.image_size,
        m.in_channels,
        tuple(m.hidden_dims),
    ):
        raise PrecisionError(f"{ckpt}: model config {cfg} does not match {data.path / B.MANIFEST_NAME}'s {m}")
    try:
        rw = rewrite_decoder(fold_batchnorm(model), **SUBPIXEL_OPTIONS)
    except RewriteError as e:
        raise PrecisionError(f"sub-pixel decoder form: {e}") from None
    fp32_path = data.graph_path(B.DECODER)
    bundle_graph = onnx.load(str(fp32_path), load_external_data=False)
    meta = {p.key: p.value for p in bundle_graph.metadata_props if p.key != "graph"}
    meta.update(rw.metadata())
    opset = data.manifest.graph(B.DECODER).opset
    try:
        export_graph(rw.module.eval(), B.DECODER, torch.zeros(2, cfg.latent_dim), out, opset, meta)
    except ExportError as e:
        raise PrecisionError(f"sub-pixel decoder form: {e}") from None
    # The same function as decoder.onnx? Golden and realistic z of reference.npz through both graphs.
    ref = dict(np.load(data.path / str((data.manifest.reference or {}).get("file", B.REFERENCE_NAME))))
    zs = [
        ref[k].astype(np.float32)
        for k in (B.reference_key(B.DECODER, B.Z), "realistic." + B.reference_key(B.DECODER, B.Z))
        if k in ref
    ]
    if not zs:
        raise B.BundleError(f"{data.path / B.REFERENCE_NAME}: no decoder.z to check the sub-pixel form on")
    z = np.concatenate(zs)
    want = run_graph(ort_session(fp32_path), {B.Z: z})[B.IMAGE]
    got = run_graph(ort_session(out), {B.Z: z})[B.IMAGE]
    max_abs = float(np.abs(got - want).max()) if np.isfinite(got).all() else float("inf")
    if not max_abs <= FORM_CHECK_MAX_ABS:
        raise PrecisionError(
            f"{ckpt}: its sub-pixel decoder differs from {fp32_path} by max abs {max_abs:.3g} on the "
            f"{len(z)} golden + realistic z of reference.npz (tolerance {FORM_CHECK_MAX_ABS:g}): not "
            "the bundle's model; refusing to quantize it"
        )
    log(
        f"decoder: quantizing the sub-pixel form ({meta['rewrites']}); against {fp32_path.name}: max abs "
        f"{max_abs:.3g} on {len(z)} z"
    )
    return {
        "form": "subpixel",
        "rewrites": meta["rewrites"],
        "rewrite_options": dict(rw.options),
        "checkpoint_sha256": str(data.manifest.source.get("sha256") or ""),
        "fp32_check": {
            "against": fp32_path.name,
            "inputs": "golden + realistic z of reference.npz",
            "batch": int(len(z)),
            "max_abs": max_abs,
            "tolerance": FORM_CHECK_MAX_ABS,
        },
    }


@dataclass(frozen=True)
class Int8Result:
    graph: str
    model: object  # onnx.ModelProto
    kept_fp32_nodes: tuple[str, ...]
    search: SearchResult
    report: ComparisonReport  # of `model` on ONNX Runtime CPU
    qdq: QdqCheck
    passed: bool


def search_int8(
    quantizer: Quantizer,
    model_fp32,
    graph: str,
    sets: Sequence[EvalSet],
    budget: Mapping[str, Tolerance],
    *,
    max_kept: int = 2,
    progress: bool = True,
) -> Int8Result:
    """All-INT8 first; if it misses the budget, the fewest unquantized nodes (at most max_kept) that meet it."""

    def evaluate(keep: frozenset[str]) -> ComparisonReport:
        return measure(graph, quantizer.quantize(keep), sets, budget, label=f"{graph} int8, {len(keep)} kept")

    try:
        result = search_kept_nodes(float_nodes(model_fp32), evaluate, desc=f"{graph} int8 search", progress=progress)
    except BudgetError as e:
        result = SearchResult(tuple(float_nodes(model_fp32)), e.report, 0, (), (str(e),))
    passed = result.report.passed and len(result.kept) <= max_kept
    kept = result.kept if passed else ()
    model = quantizer.quantize(kept)
    report = measure(graph, model, sets, budget, label=f"{graph} int8 on onnxruntime-cpu")
    if not passed:  # the variant --force writes: all nodes INT8
        result = SearchResult(
            result.kept,
            result.report,
            result.evaluations,
            result.ranking,
            (
                *result.log,
                f"needs {len(result.kept)} unquantized node(s) {list(result.kept)}, more than --max-kept {max_kept}"
                if result.report.passed
                else "the budget is missed",
            ),
        )
    return Int8Result(graph, model, kept, result, report, check_qdq(model), passed and report.passed)


@bundle_locked
def make_int8_variant(
    bundle: str | Path,
    graph: str,
    *,
    budget_psnr: float | None = None,
    budget_rel_l2: float | None = None,
    samples: int = 128,
    eval_samples: int = 32,
    seed: int = 1,
    calibration: Path | None = None,
    method: str = "auto",
    max_kept: int = 2,
    force: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
    decoder_form: str = "auto",
    checkpoint: Path | None = None,
) -> Int8Result:
    """Calibrate, search, verify and (if the budget is met, or forced) write and register BUNDLE/<graph>.int8.onnx.

    Args:
        bundle: The bundle folder (locked for the duration; a second writer is refused).
        graph: "encoder" or "decoder".
        budget_psnr: Decoder budget, PSNR in dB against FP32 (default from runtime.verify.metrics: 30).
        budget_rel_l2: Encoder budget, relative L2 of mu / logvar (default: 0.1).
        samples: Calibration inputs (realistic, never the golden noise).
        eval_samples: Fresh realistic inputs measured besides reference.npz's sets (other seeds than calibration).
        seed: Seed of the evaluation inputs (calibration uses seed + 1000).
        calibration: A folder of images for calibration and evaluation (default: the embedded shapes dataset).
        method: Calibration method: "minmax", "percentile", "entropy", or "auto" (default): each of AUTO_METHODS
            calibrated, searched and measured, and the most accurate passing variant kept (fewest unquantized
            nodes first, then the smallest error as a share of the budget); the record names all of them.
        max_kept: Most nodes the search may leave in FP32.
        force: Write and register a variant that misses its budget (recorded as passed: false).
        progress: Show progress bars.
        log: Called with each report line.
        decoder_form: Decoder only: "subpixel" quantizes the all-layers sub-pixel form rebuilt from `checkpoint`,
            "bundle" quantizes decoder.onnx, "auto" (default) the former when the checkpoint is there and unchanged,
            else the latter, saying why (docs/performance.md#int8-decoder-form).
        checkpoint: The source checkpoint for the sub-pixel form (default: the one vae.json names, sha256 checked).

    Returns:
        Int8Result: the quantized graph, its FP32-kept nodes, the search, the report, the QDQ check and `passed`.

    Raises:
        BundleError: The bundle is missing, malformed, changed since export, or locked by another writer.
        PrecisionError: A bad option, a missing or changed checkpoint for an explicit sub-pixel form, or a quantized
            graph that TensorRT could not take.
        BudgetError: The variant misses its budget and `force` is False (nothing written); carries the report.
    """
    import onnx

    data, _ = open_bundle(bundle, [graph])
    for line in recover_variants(bundle):  # a run killed earlier in this bundle (.quantize.* folders, staged files)
        log(f"recovered: {line}")
    _check_int8_options(samples, decoder_form, method)
    budget = make_budget(PRECISION, graph, psnr=budget_psnr, rel_l2=budget_rel_l2)
    fp32_path = data.graph_path(graph)
    # Calibration and evaluation use different seeds: accuracy is measured on inputs the ranges were not fitted to.
    calib = calibration_inputs(bundle, graph, samples, seed + 1000, calibration)
    sets = evaluation_sets(data, graph, samples=eval_samples, seed=seed, folder=calibration)
    # Named .quantize.<pid>.*.tmp: a killed run's folder is recognised (and removed) by the next run.
    with tempfile.TemporaryDirectory(prefix=temp_prefix("quantize"), suffix=".tmp", dir=Path(bundle)) as tmp:
        source = _graph_to_quantize(data, graph, fp32_path, decoder_form, checkpoint, Path(tmp), log)
        model_fp32 = onnx.load(str(source.path))
        tried = {}
        for m in AUTO_METHODS if method == "auto" else (method,):
            quantizer = _calibrated_quantizer(source.path, graph, calib, m, Path(tmp), progress)
            tried[m] = search_int8(quantizer, model_fp32, graph, sets, budget, max_kept=max_kept, progress=progress)
    method = choose_method(tried)
    res = tried[method]
    if len(tried) > 1:
        log(f"{graph}: INT8 calibration methods compared: {describe_methods(tried)} -> {method}")
    _log_int8_result(res, graph, method, len(calib), describe_sets(sets), log)
    _refuse_unusable(res, graph, force)
    accuracy = _int8_accuracy(
        res,
        graph,
        force=force,
        method=method,
        compared={m: _method_summary(r) for m, r in tried.items()} if len(tried) > 1 else None,
        calibrated_on=len(calib),
        calibration=calibration,
        seed=seed,
        eval_samples=eval_samples,
        max_kept=max_kept,
    )
    _commit_int8_variant(bundle, graph, res, accuracy, budget, source.source_form, log)
    return res


def choose_method(tried: Mapping[str, Int8Result]) -> str:
    """The calibration method whose variant to keep: passing first, then the fewest unquantized nodes, then the
    smallest error as a multiple of the budget (common.badness), then the order tried."""
    order = list(tried)
    return min(
        order,
        key=lambda m: (not tried[m].passed, len(tried[m].kept_fp32_nodes), badness(tried[m].report), order.index(m)),
    )


def describe_methods(tried: Mapping[str, Int8Result]) -> str:
    """'minmax 0.61x budget, 0 kept; percentile 0.54x budget, 0 kept' (x budget: common.badness)."""
    return "; ".join(
        f"{m} {badness(r.report):.3g}x budget, {len(r.kept_fp32_nodes)} kept" + ("" if r.passed else " (missed)")
        for m, r in tried.items()
    )


def _method_summary(res: Int8Result) -> dict:
    worst = badness(res.report)
    return {
        "passed": res.passed,
        "kept_fp32_nodes": list(res.kept_fp32_nodes),
        "x_budget": worst if math.isfinite(worst) else "inf",
    }


@dataclass(frozen=True)
class _QuantizeSource:
    """The FP32 graph to quantize, and vae.json's source_form for it ({}: the bundle's own graph)."""

    path: Path
    source_form: dict


def _check_int8_options(samples: int, decoder_form: str, method: str) -> None:
    if method not in ("auto", *METHODS):
        raise PrecisionError(f"--method: expected one of {['auto', *METHODS]}, got {method!r}")
    if samples < 1:
        raise PrecisionError(f"--samples must be >= 1, got {samples}")
    if decoder_form not in DECODER_FORMS:
        raise PrecisionError(f"--decoder-form: expected one of {list(DECODER_FORMS)}, got {decoder_form!r}")


def _graph_to_quantize(
    data, graph: str, fp32_path: Path, decoder_form: str, checkpoint: Path | None, tmp: Path, log: Callable[[str], None]
) -> _QuantizeSource:
    """The bundle's FP32 graph (fp32_path), or for the decoder the sub-pixel form built into `tmp`
    (resolve_decoder_form)."""
    ckpt = resolve_decoder_form(data, decoder_form, checkpoint, log) if graph == B.DECODER else None
    if ckpt is not None:
        try:
            source_form = subpixel_decoder(data, ckpt, tmp / "decoder.subpixel.onnx", log=log)
            return _QuantizeSource(tmp / "decoder.subpixel.onnx", source_form)
        except Exception as e:  # noqa: BLE001 - auto: any failure to build the form falls back, saying why
            if decoder_form != "auto" or checkpoint is not None:
                raise  # asked for explicitly (the form, or this checkpoint): an error, not a fallback
            # auto quantizes decoder.onnx when the sub-pixel form cannot be built (a budget the INT8 graph then
            # misses is still an error, as with --decoder-form bundle)
            _log_fallback(log, str(e) if isinstance(e, PrecisionError) else f"{type(e).__name__}: {e}")
    return _QuantizeSource(fp32_path, {})


def _calibrated_quantizer(
    fp32_path: Path, graph: str, calib: np.ndarray, method: str, workdir: Path, progress: bool
) -> Quantizer:
    quantizer = Quantizer(fp32_path, graph, calib, method=method, workdir=workdir)
    with progress_bar(
        total=1, desc=f"{graph} int8 calibration ({plural(len(calib), 'input')})", enabled=progress, leave=False
    ) as bar:
        quantizer.quantize(())  # computes and caches the calibration ranges
        bar.update(1)
    return quantizer


def _log_int8_result(
    res: Int8Result, graph: str, method: str, calibrated_on: int, inputs: str, log: Callable[[str], None]
) -> None:
    log(
        f"{graph}: INT8 ({method} calibration on {plural(calibrated_on, 'input')}), unquantized: "
        f"{list(res.kept_fp32_nodes) or 'none'} ({plural(res.search.evaluations, 'candidate graph')} measured)"
    )
    for line in res.search.log:
        log(f"  {line}")
    log(f"{graph} INT8 (QDQ) variant on ONNX Runtime CPU vs FP32\n  inputs (none used for calibration): {inputs}")
    log(res.report.table())


def _refuse_unusable(res: Int8Result, graph: str, force: bool) -> None:
    """A graph TensorRT could not take is never written; one that misses its budget only with `force`."""
    if not res.qdq:
        raise PrecisionError(
            f"{graph}: the quantized graph is not TensorRT-compatible: {'; '.join(res.qdq.problems())}"
        )
    if not res.passed and not force:
        why = "; ".join(res.report.failures()) or res.search.log[-1]
        raise BudgetError(f"{graph}: the INT8 variant misses its budget: {why}", res.report)


def _commit_int8_variant(
    bundle: str | Path,
    graph: str,
    res: Int8Result,
    accuracy: dict,
    budget: Mapping[str, Tolerance],
    source_form: dict,
    log: Callable[[str], None],
) -> None:
    name = variant_file(graph, PRECISION)
    # The previous int8 variant stays valid until vae.json names the new one (commit_variant).
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
            source_form=source_form,
        ),
    )
    log(f"wrote {Path(bundle) / name}" + ("" if res.passed else " (FORCED: it misses its budget)"))


def _int8_accuracy(
    res: Int8Result,
    graph: str,
    *,
    force: bool,
    method: str,
    compared: dict | None,
    calibrated_on: int,
    calibration: Path | None,
    seed: int,
    eval_samples: int,
    max_kept: int,
) -> dict:
    """The variant's "accuracy" in vae.json: what was measured, and how it was calibrated and searched."""
    return {
        "passed": res.passed,
        "forced": bool(force and not res.passed),
        "measured": timestamp(),
        "reference": "golden/realistic: PyTorch FP32 (reference.npz); extra: the bundle's FP32 graph",
        "onnxruntime_cpu": summarize(res.report),
        "calibration": {
            "method": method,
            **({"compared": compared} if compared else {}),
            "samples": int(calibrated_on),
            "seed": seed + 1000,
            "data": str(calibration)
            if calibration
            else "embedded shapes" + (" + encoder latents + prior" if graph == B.DECODER else ""),
        },
        "quantization": {
            "format": "QDQ",
            "activations": "int8 symmetric",
            "weights": "int8 symmetric per-channel",
            "bias": "fp32",
            "quantized_weight_nodes": list(res.qdq.quantized_weight_nodes),
        },
        "search": {
            "evaluations": res.search.evaluations,
            "log": list(res.search.log),
            "max_kept": max_kept,
            "ranking": [[n, (s if np.isfinite(s) else "inf")] for n, s in res.search.ranking],
        },
        "samples": eval_samples,
        "seed": seed,
    }


def _log_fallback(log: Callable[[str], None], why: str) -> None:
    log(f"decoder: quantizing the bundle's {B.DECODER}.onnx, not the faster sub-pixel form: {why}")


def resolve_decoder_form(
    data, decoder_form: str, checkpoint: Path | None = None, log: Callable[[str], None] = print
) -> Path | None:
    """The checked source checkpoint to build the sub-pixel form from, or None for the bundle form (decoder_form
    already validated). "subpixel", or "auto" with `checkpoint` given: source_checkpoint's checks, an error if they
    fail. "auto" otherwise: the checkpoint vae.json names when it is found with the recorded sha256, else None,
    saying why."""
    if decoder_form == "bundle":
        return None
    if decoder_form == "subpixel" or checkpoint is not None:
        return source_checkpoint(data, checkpoint)  # asked for explicitly: a bad one is an error, not a fallback
    try:
        return source_checkpoint(data)
    except PrecisionError as e:
        _log_fallback(log, str(e))
        return None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog_name("export.precision.int8"),
        description=__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter,
        epilog=epilog(
            {
                0: "every graph's INT8 variant met its budget and was written",
                1: "a graph missed its budget (nothing written for it unless --force; the others are)",
                2: "bad input or option, e.g. no --int8 (one line on stderr)",
            },
            "%(prog)s runs/bundle --int8",
            "%(prog)s runs/bundle --int8 --graphs decoder --method percentile --samples 256",
            "%(prog)s runs/bundle --int8 --calibration ~/celeba/img_align_celeba --budget-psnr 32",
        ),
    )
    p.add_argument("bundle", type=Path, metavar="BUNDLE", help="bundle folder written by export.to_onnx")
    p.add_argument("--int8", action="store_true", help="make INT8 QDQ variants (the only mode so far)")
    add_graphs_argument(p, what="graphs to quantize")
    p.add_argument(
        "--calibration",
        type=Path,
        default=None,
        metavar="DIR",
        help="folder of images (default: the embedded shapes dataset)",
    )
    p.add_argument("--samples", type=int, default=128, metavar="N", help="calibration inputs per graph (default 128)")
    p.add_argument(
        "--eval-samples", type=int, default=32, metavar="N", help="fresh realistic evaluation inputs (default 32)"
    )
    p.add_argument(
        "--method",
        default="auto",
        choices=("auto", *METHODS),
        help=f"calibration method; auto (default): each of {', '.join(AUTO_METHODS)} measured, the most accurate "
        "passing variant kept",
    )
    add_budget_arguments(p, psnr="30", rel_l2="0.1")
    p.add_argument(
        "--max-kept", type=int, default=2, metavar="N", help="most nodes left unquantized to meet the budget"
    )
    p.add_argument(
        "--seed", type=non_negative_int, default=1, help="seed of the evaluation inputs (calibration: +1000)"
    )
    p.add_argument("--force", action="store_true", help="write (and register as failed) a variant that misses")
    p.add_argument(
        "--no-progress", action="store_true", help="no progress output (a bar on a terminal, a few lines in a log)"
    )
    p.add_argument(
        "--decoder-form",
        default="auto",
        choices=DECODER_FORMS,
        help="decoder graph to quantize: its all-layers sub-pixel form rebuilt from the source checkpoint "
        "(subpixel: 1.75-1.87x the FP32 decoder's throughput at batch 64 on ONNX Runtime CPU), "
        "the bundle's decoder.onnx (bundle: slower than FP32 there), or auto (default): subpixel "
        "when the checkpoint vae.json names is there and unchanged, else bundle",
    )
    p.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        metavar="CKPT",
        help="for the sub-pixel form (auto or subpixel): the source checkpoint, when it is not where "
        "vae.json says (its sha256 must match vae.json's)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if not args.int8:
            raise PrecisionError("nothing to do: pass --int8")
        if args.max_kept < 0 or args.eval_samples < 0:
            raise PrecisionError(
                f"--max-kept and --eval-samples must be >= 0, got {args.max_kept}, {args.eval_samples}"
            )
        if args.calibration is not None and not args.calibration.is_dir():
            raise PrecisionError(f"--calibration {args.calibration}: not a directory")
        data, graphs = open_bundle(args.bundle, args.graphs)
        if B.DECODER in graphs and (
            args.decoder_form == "subpixel" or (args.decoder_form == "auto" and args.checkpoint is not None)
        ):
            source_checkpoint(data, args.checkpoint)  # a missing or changed checkpoint fails before any work
    except VaeError as e:  # PrecisionError, BundleError, ...
        print(f"error: {e}", file=sys.stderr)
        return 2
    return run_for_graphs(
        args.bundle,
        graphs,
        lambda graph: (
            make_int8_variant(
                args.bundle,
                graph,
                budget_psnr=args.budget_psnr,
                budget_rel_l2=args.budget_rel_l2,
                samples=args.samples,
                eval_samples=args.eval_samples,
                seed=args.seed,
                calibration=args.calibration,
                method=args.method,
                max_kept=args.max_kept,
                force=args.force,
                progress=not args.no_progress,
                decoder_form=args.decoder_form,
                checkpoint=args.checkpoint,
            ).passed
        ),
        "{graph}.int8.onnx not written",
    )


if __name__ == "__main__":
    sys.exit(main())
