"""Shared machinery of the reduced-precision variants (export.precision.fp16, export.precision.int8).

- evaluation data: the golden inputs of reference.npz (seeded noise) plus realistic inputs (embedded dataset images
  and decoded prior samples into the encoder; the encoder's latents of those images and prior draws into the
  decoder), each with its FP32 expected outputs;
- budgets (per output tensor, a runtime.verify.metrics.Tolerance) and the measurement of a candidate graph against them;
- the search for the fewest nodes to leave in full precision (`search_kept_nodes`), shared by FP16 and INT8;
- registering a variant in vae.json and the fp32 / fp16 / int8 side-by-side table (`precision_table`).

Everything runs on ONNX Runtime's CPU provider.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import io
import logging
import math
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from runtime import bundle as B
from runtime.cli import progress as progress_bar
from runtime.errors import VaeError
from runtime.files import sha256_file
from runtime.verify.metrics import ComparisonReport, Tolerance, compare_outputs, default_tolerance

# Decoder images are Tanh outputs: PSNR over the Tanh range whatever the bundle's input pixel range.
TANH_RANGE = (-1.0, 1.0)
FP16_MAX = 65504.0


class PrecisionError(VaeError, ValueError):
    """A precision variant cannot be made (bad bundle, bad option, unusable graph); the message says where."""


class BudgetError(PrecisionError):
    """A variant misses its accuracy budget; carries the report of the best attempt."""

    def __init__(self, message: str, report: ComparisonReport | None = None) -> None:
        super().__init__(message)
        self.report = report


# ----------------------------------------------------------------------------------------------- budgets


def make_budget(
    precision: str, graph: str, *, psnr: float | None = None, rel_l2: float | None = None
) -> dict[str, Tolerance]:
    """Tolerance per output tensor of `graph`: runtime.verify.metrics defaults for `precision`, overridden by the options.

    psnr applies to decoder images (dB over [-1, 1]); rel_l2 to encoder mu / logvar. NaN/Inf always fail.
    """
    out = {}
    for name in B.GRAPH_IO[graph][1]:
        tol = default_tolerance(precision, name)
        if name == B.IMAGE and psnr is not None:
            tol = replace(tol, min_psnr=float(psnr))
        if name in (B.MU, B.LOGVAR) and rel_l2 is not None:
            tol = replace(tol, rel_l2=float(rel_l2))
        out[name] = tol
    return out


def budget_to_dict(budget: Mapping[str, Tolerance]) -> dict[str, Any]:
    return {name: {k: v for k, v in asdict(t).items() if v is not None} for name, t in budget.items()}


# ----------------------------------------------------------------------------------------------- evaluation data


@dataclass(frozen=True)
class EvalSet:
    """One named batch of inputs for a graph and its FP32 expected outputs."""

    label: str  # "golden", "realistic", "extra"
    inputs: dict[str, np.ndarray]  # graph input name -> array
    expected: dict[str, np.ndarray]  # graph output name -> array
    source: str  # where `expected` came from: "pytorch-fp32" or "onnxruntime-fp32"

    @property
    def batch(self) -> int:
        return int(next(iter(self.inputs.values())).shape[0])


@dataclass(frozen=True)
class BundleData:
    """What a precision tool needs from a bundle: its folder, manifest, and FP32 graph paths."""

    path: Path
    manifest: B.Manifest

    def graph_path(self, graph: str) -> Path:
        spec = self.manifest.graph(graph)
        return B.resolve_file(self.path, spec.file, spec.sha256)


def open_bundle(bundle: str | os.PathLike, graphs: Sequence[str] | None = None) -> tuple[BundleData, list[str]]:
    """Read the manifest and check that every requested graph and reference.npz is present and unchanged."""
    path = Path(bundle)
    if not path.is_dir():
        raise B.BundleError(f"{path}: not a bundle folder (expected the folder written by export.to_onnx)")
    manifest = B.read_manifest(path)
    wanted = list(dict.fromkeys(graphs or [g for g in B.GRAPHS if g in manifest.graphs]))
    bad = [g for g in wanted if g not in B.GRAPHS]
    if bad:
        raise PrecisionError(f"--graphs: unknown graph(s) {bad}; expected some of {list(B.GRAPHS)}")
    missing = [g for g in wanted if g not in manifest.graphs]
    if missing:
        raise B.BundleError(f"{path / B.MANIFEST_NAME}: no {missing} graph (it has {sorted(manifest.graphs)})")
    data = BundleData(path, manifest)
    for g in wanted:
        check_graph_io(data.graph_path(g), manifest.graph(g), path / B.MANIFEST_NAME)
    ref = manifest.reference or {"file": B.REFERENCE_NAME}
    B.resolve_file(path, str(ref.get("file", B.REFERENCE_NAME)), ref.get("sha256"))
    return data, wanted


def _io_of(vi) -> tuple[str, str, tuple[int | str, ...]]:
    import onnx

    t = vi.type.tensor_type
    dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name if t.elem_type else "undefined"
    # A symbolic or unknown axis is dynamic whatever its name; only static sizes are compared by value.
    dims = tuple(int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else "dynamic" for d in t.shape.dim)
    return vi.name, dtype, dims


def check_graph_io(path: Path, spec: B.GraphSpec, manifest_path: Path) -> None:
    """The ONNX file's inputs and outputs (names, dtypes, ranks, static sizes) are the ones vae.json lists for the
    graph, before any work: a graph file swapped for another model (its sha256 updated to match) is a BundleError
    here, not a raw error deep inside a converter."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        m = onnx.load(str(path), load_external_data=False)
    except (OSError, ValueError, DecodeError) as e:
        raise B.BundleError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e})") from None
    inits = {i.name for i in m.graph.initializer}

    def want(tensors) -> list[tuple[str, str, tuple[int | str, ...]]]:
        return [(t.name, t.dtype, tuple(d if isinstance(d, int) else "dynamic" for d in t.shape)) for t in tensors]

    got_in = [_io_of(vi) for vi in m.graph.input if vi.name not in inits]
    got_out = [_io_of(vi) for vi in m.graph.output]
    problems = []
    for kind, got, exp in (("inputs", got_in, want(spec.inputs)), ("outputs", got_out, want(spec.outputs))):
        if got != exp:
            fmt = lambda xs: ", ".join(f"{n} {d} [{', '.join(map(str, s))}]" for n, d, s in xs) or "none"  # noqa: E731
            problems.append(f"{kind} {fmt(got)}, {manifest_path} lists {fmt(exp)}")
    if problems:
        raise B.BundleError(
            f"{path}: graph {spec.name!r} does not match the manifest: {'; '.join(problems)} "
            "(the file was replaced by another model? re-export the bundle)"
        )


def ort_session(model, *, optimize: bool = True):
    """A CPU InferenceSession from a ModelProto or a path, quiet unless it fails."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    src = str(model) if isinstance(model, (str, os.PathLike)) else model.SerializeToString()
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def run_graph(session, inputs: Mapping[str, np.ndarray], chunk: int = 64) -> dict[str, np.ndarray]:
    """Run a session on `inputs` in chunks along the batch axis; outputs keyed by name, as float32."""
    names = [o.name for o in session.get_outputs()]
    n = int(next(iter(inputs.values())).shape[0])
    parts: dict[str, list[np.ndarray]] = {k: [] for k in names}
    for lo in range(0, n, chunk):
        outs = session.run(None, {k: v[lo : lo + chunk] for k, v in inputs.items()})
        for k, v in zip(names, outs):
            parts[k].append(np.asarray(v))
    return {k: np.concatenate(v).astype(np.float32, copy=False) for k, v in parts.items()}


def dataset_images(n: int, manifest: B.Manifest, seed: int, folder: Path | None = None) -> np.ndarray:
    """n images in the bundle's pixel range: from `folder` (recursively, centre-cropped as vae.json records training
    did: manifest.center_crop) or the embedded shapes."""
    from vae_model.data import DataError, ImageFolderDataset, make_shapes

    model = manifest.model
    lo, hi = manifest.pixel_range
    if folder is not None:
        # No crop recorded (None): the largest centred square, i.e. a crop no image side exceeds.
        crop = B.MAX_CENTER_CROP if manifest.center_crop is None else manifest.center_crop
        try:
            ds = ImageFolderDataset(folder, model.image_size, crop, channels=3 if model.in_channels == 3 else 1)
            rng = np.random.default_rng(seed)
            idx = rng.permutation(len(ds))[:n]
            u8 = np.stack([ds[int(i)].numpy() for i in idx])
        except DataError as e:
            raise PrecisionError(f"--calibration: {e}") from None
    else:
        u8 = make_shapes(n, model.image_size, 3 if model.in_channels == 3 else 1, seed=seed).images
    x = u8.astype(np.float32) / 255.0 * (hi - lo) + lo
    if x.shape[1] != model.in_channels:
        x = np.repeat(x[:, :1], model.in_channels, axis=1)
    return np.ascontiguousarray(x, dtype=np.float32)


def realistic_inputs(data: BundleData, n: int, seed: int, folder: Path | None = None) -> dict[str, np.ndarray]:
    """Realistic inputs for every graph the bundle has, computed with its FP32 graphs (no torch).

    encoder.image: n//2 dataset images + n - n//2 decoded prior samples (clipped to the pixel range), or n dataset
    images when the bundle has no decoder. decoder.z: the encoder's means of n//2 dataset images + prior draws.
    """
    m = data.manifest
    lo, hi = m.pixel_range
    rng = np.random.default_rng(seed)
    n_data = max(1, n // 2)
    images = dataset_images(n_data if B.DECODER in m.graphs else n, m, seed, folder)
    prior = rng.standard_normal((n - n_data, m.model.latent_dim)).astype(np.float32)
    out: dict[str, np.ndarray] = {}
    if B.ENCODER in m.graphs:
        enc_imgs = images
        if B.DECODER in m.graphs and len(prior):
            dec = run_graph(ort_session(data.graph_path(B.DECODER)), {B.Z: prior})[B.IMAGE]
            if dec.shape[1] != m.model.in_channels:
                dec = np.repeat(dec.mean(axis=1, keepdims=True), m.model.in_channels, axis=1)
            enc_imgs = np.concatenate([images, np.clip(dec, lo, hi)])
        out[B.ENCODER] = np.ascontiguousarray(enc_imgs, dtype=np.float32)
    if B.DECODER in m.graphs:
        if B.ENCODER in m.graphs:
            mu = run_graph(ort_session(data.graph_path(B.ENCODER)), {B.IMAGE: images[:n_data]})[B.MU]
            z = np.concatenate([mu, prior])
        else:
            z = rng.standard_normal((n, m.model.latent_dim)).astype(np.float32)
        out[B.DECODER] = np.ascontiguousarray(z, dtype=np.float32)
    return out


def evaluation_sets(
    data: BundleData, graph: str, *, samples: int = 32, seed: int = 1, folder: Path | None = None
) -> list[EvalSet]:
    """The sets every variant is measured on: golden + stored realistic (PyTorch FP32 expected, from reference.npz)
    and `samples` fresh realistic inputs (expected from the bundle's FP32 graph, itself parity-gated at export)."""
    ref_info = data.manifest.reference or {}
    ref_path = data.path / str(ref_info.get("file", B.REFERENCE_NAME))
    try:
        ref = dict(np.load(ref_path))
    except (OSError, ValueError) as e:
        raise B.BundleError(f"{ref_path}: cannot read: {e}") from None
    ins, outs = B.GRAPH_IO[graph]
    sets = []
    for label, prefix in (("golden", ""), ("realistic", "realistic.")):
        keys = [prefix + B.reference_key(graph, t) for t in (*ins, *outs)]
        if all(k in ref for k in keys):
            sets.append(
                EvalSet(
                    label,
                    {t: ref[prefix + B.reference_key(graph, t)].astype(np.float32) for t in ins},
                    {t: ref[prefix + B.reference_key(graph, t)].astype(np.float32) for t in outs},
                    "pytorch-fp32",
                )
            )
    if not sets:
        raise B.BundleError(
            f"{ref_path}: no golden data for graph {graph!r} (expected keys "
            f"{[B.reference_key(graph, t) for t in (*ins, *outs)]})"
        )
    if samples > 0:
        x = realistic_inputs(data, samples, seed, folder)[graph]
        expected = run_graph(ort_session(data.graph_path(graph)), {ins[0]: x})
        sets.append(EvalSet("extra", {ins[0]: x}, expected, "onnxruntime-fp32"))
    return sets


def describe_sets(sets: Sequence[EvalSet]) -> str:
    """What a measurement ran on, naming the table's row prefixes: "golden.* (4) and realistic.* (12): reference.npz
    inputs vs PyTorch FP32; extra.* (32): fresh realistic inputs vs the bundle's FP32 graph"."""
    ref = [s for s in sets if s.source == "pytorch-fp32"]
    fresh = [s for s in sets if s.source != "pytorch-fp32"]
    parts = []
    if ref:
        parts.append(" and ".join(f"{s.label}.* ({s.batch})" for s in ref) + ": reference.npz inputs vs PyTorch FP32")
    if fresh:
        parts.append(
            " and ".join(f"{s.label}.* ({s.batch})" for s in fresh)
            + ": fresh realistic inputs vs the bundle's FP32 graph"
        )
    return "; ".join(parts)


def plural(n: int, noun: str) -> str:
    """1 graph, 2 graphs."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


# ----------------------------------------------------------------------------------------------- measuring


def measure(
    graph: str, session_or_model, sets: Sequence[EvalSet], budget: Mapping[str, Tolerance], *, label: str = ""
) -> ComparisonReport:
    """Run a candidate graph on every evaluation set and compare each output with its FP32 expectation."""
    session = session_or_model if hasattr(session_or_model, "run") else ort_session(session_or_model)
    actual, expected, tols, images = {}, {}, {}, {}
    for s in sets:
        got = run_graph(session, s.inputs)
        for name, exp in s.expected.items():
            key = f"{s.label}.{graph}.{name}"
            actual[key], expected[key], tols[key] = got[name], exp, budget[name]
            # runtime.verify.metrics cannot take the log of an infinite MSE: with NaN/Inf present the output fails on its
            # NaN/Inf count and reports no PSNR.
            if name == B.IMAGE and np.isfinite(got[name]).all():
                images[key] = TANH_RANGE
    with np.errstate(invalid="ignore"):  # percentiles of an all-Inf error are NaN; the NaN/Inf count fails it
        return compare_outputs(actual, expected, tols, image_outputs=images, label=label)


def badness(report: ComparisonReport) -> float:
    """One number per report for ranking: the worst output's error as a multiple of its budget (<= 1 passes).

    PSNR budgets compare mean squared errors (10^((budget - psnr)/10)); NaN/Inf or a shape error is infinite.
    """
    worst = 0.0
    for o in report.outputs:
        if o.nan_count or o.inf_count or not math.isfinite(o.max_abs):
            return math.inf
        t = o.tolerance
        ratios = []
        if t.min_psnr is not None and o.psnr is not None:
            ratios.append(0.0 if math.isinf(o.psnr) else 10 ** ((t.min_psnr - o.psnr) / 10))
        if t.rel_l2 is not None:
            ratios.append(o.rel_l2 / t.rel_l2 if t.rel_l2 > 0 else math.inf)
        if t.max_abs is not None:
            ratios.append(o.max_abs / t.max_abs if t.max_abs > 0 else math.inf)
        if t.min_cosine is not None:
            ratios.append((1 - o.cosine) / max(1e-12, 1 - t.min_cosine))
        worst = max([worst, *ratios])
    return worst


def summarize(report: ComparisonReport) -> dict[str, Any]:
    """The numbers of a report that go into vae.json (JSON-safe: non-finite values as strings)."""

    def num(x):
        if x is None:
            return None
        x = float(x)
        return x if math.isfinite(x) else str(x)

    return {
        "passed": report.passed,
        "label": report.label,
        "outputs": {
            o.name: {
                "max_abs": num(o.max_abs),
                "mean_abs": num(o.mean_abs),
                "p99_abs": num(o.p99_abs),
                "rel_l2": num(o.rel_l2),
                "cosine": num(o.cosine),
                "psnr": num(o.psnr),
                "nan": o.nan_count,
                "inf": o.inf_count,
                "batch": int(o.shape[0]) if o.shape else 0,
            }
            for o in report.outputs
        },
        "failures": report.failures(),
    }


def worst_case(report_summary: Mapping[str, Any]) -> dict[str, Any]:
    """min PSNR over image outputs, max rel_l2 / max_abs over all outputs, NaN/Inf count: one line of the table."""
    psnrs, rels, maxabs, bad = [], [], [], 0
    for o in report_summary.get("outputs", {}).values():

        def f(x):
            return float(x) if x is not None else math.nan

        if o.get("psnr") is not None:
            psnrs.append(f(o["psnr"]))
        rels.append(f(o.get("rel_l2")))
        maxabs.append(f(o.get("max_abs")))
        bad += int(o.get("nan", 0)) + int(o.get("inf", 0))
    return {
        "min_psnr": min(psnrs) if psnrs else None,
        "max_rel_l2": max(rels) if rels else None,
        "max_abs": max(maxabs) if maxabs else None,
        "nonfinite": bad,
    }


# ----------------------------------------------------------------------------------------------- the search


@dataclass(frozen=True)
class SearchResult:
    """The nodes left in full precision, the report of the final graph, and how the choice was made."""

    kept: tuple[str, ...]
    report: ComparisonReport
    evaluations: int
    ranking: tuple[tuple[str, float], ...] = ()  # (node, badness when it alone is reduced), worst first
    log: tuple[str, ...] = field(default=())


def search_kept_nodes(
    candidates: Sequence[str],
    evaluate: Callable[[frozenset[str]], ComparisonReport],
    *,
    desc: str = "search",
    progress: bool = True,
) -> SearchResult:
    """Find a small set K of candidate nodes to keep in full precision so that evaluate(K) meets the budget.

    evaluate(K) builds the reduced-precision graph with the nodes in K left in full precision, runs it on the
    evaluation sets and returns the budget report. The algorithm:

    1. Try K = {} (everything reduced). If it passes, stop: no node needs full precision.
    2. Rank every candidate by the error of the graph where it ALONE is reduced (_rank_by_reducing_one).
    3. Bisect on how many of the worst-ranked nodes to keep (_bisect_kept_prefix).
    4. Prune the kept nodes the budget does not need (_prune_kept): the result is 1-minimal.

    Cost: 1 + N + log2(N) + |K| evaluations for N candidates (about 25 for the VanillaVAE decoder), against 2^N for
    an exhaustive search.
    """
    cand = list(dict.fromkeys(candidates))
    log: list[str] = []
    ev = _CachedEvaluations(evaluate)
    bar = progress_bar(total=1, desc=desc, enabled=progress, leave=False, unit="graph")
    try:
        first = ev(())
        bar.update(1)
        if first.passed:
            log.append("all nodes reduced: budget met, nothing kept")
            return SearchResult((), first, ev.count, (), tuple(log))
        log.append(f"all nodes reduced: budget missed ({'; '.join(first.failures())})")
        full = ev(frozenset(cand))
        if not full.passed:
            raise BudgetError(
                f"{desc}: even with every candidate node kept in full precision the budget is missed "
                f"({'; '.join(full.failures())})",
                full,
            )
        ranking = _rank_by_reducing_one(cand, ev, bar)
        order = [n for n, _ in ranking]
        log.append(
            "ranking (node: error when it alone is reduced, x budget): "
            + ", ".join(f"{n}: {s:.3g}" for n, s in ranking)
        )
        hi = _bisect_kept_prefix(order, ev, bar)
        log.append(f"bisection: the {hi} worst nodes kept meet the budget")
        kept = _prune_kept(list(order[:hi]), ev, bar, log)
        final = ev(kept)
        if not final.passed:  # only reachable if the bisection's monotonicity assumption failed badly
            kept, final = list(order), full
        kept_sorted = tuple(n for n in cand if n in set(kept))
        return SearchResult(kept_sorted, final, ev.count, tuple(ranking), tuple(log))
    finally:
        bar.close()


class _CachedEvaluations:
    """evaluate(K) measured once per distinct K; `count` is how many were measured."""

    def __init__(self, evaluate: Callable[[frozenset[str]], ComparisonReport]) -> None:
        self._evaluate = evaluate
        self._cache: dict[frozenset[str], ComparisonReport] = {}
        self.count = 0

    def __call__(self, keep: Iterable[str]) -> ComparisonReport:
        key = frozenset(keep)
        if key not in self._cache:
            self.count += 1
            self._cache[key] = self._evaluate(key)
        return self._cache[key]


def _rank_by_reducing_one(cand: list[str], ev: _CachedEvaluations, bar) -> list[tuple[str, float]]:
    """(node, badness of the graph where it ALONE is reduced), worst first (ties in candidate order).

    Its error as a multiple of the budget (`badness`) is the node's measured error contribution. Ranking by "reduce
    one" rather than "keep one" matters: when several adjacent nodes overflow together (a value beyond FP16's range
    flows through a conv, its activation and into the next conv), keeping any single one of them in full precision
    does not help, so "keep one" gives no signal, while reducing any one of them alone shows Inf at once.
    """
    every = frozenset(cand)
    bar.reset(total=len(cand))
    scores = []
    for n in cand:
        scores.append((n, badness(ev(every - {n}))))
        bar.update(1)
    return sorted(scores, key=lambda t: (-t[1], cand.index(t[0])))


def _bisect_kept_prefix(order: list[str], ev: _CachedEvaluations, bar) -> int:
    """The smallest k such that keeping the k worst nodes passes (assumes more kept nodes never hurt, which holds up
    to rounding noise; search_kept_nodes' final check does not rely on it)."""
    lo, hi = 1, len(order)  # keeping order[:hi] passes (hi == N is every candidate kept)
    bar.reset(total=max(1, math.ceil(math.log2(len(order) + 1))))
    while lo < hi:
        mid = (lo + hi) // 2
        if ev(order[:mid]).passed:
            hi = mid
        else:
            lo = mid + 1
        bar.update(1)
    return hi


def _prune_kept(kept: list[str], ev: _CachedEvaluations, bar, log: list[str]) -> list[str]:
    """Return each kept node to reduced precision, least harmful first, and drop it from the kept set when the budget
    still holds: then no single kept node can be reduced without missing the budget."""
    bar.reset(total=len(kept))
    for n in reversed(list(kept)):
        trial = [k for k in kept if k != n]
        if ev(trial).passed:
            kept = trial
            log.append(f"pruned {n}: budget still met without it")
        bar.update(1)
    return kept


# ----------------------------------------------------------------------------------------------- onnx helpers


def float_nodes(model) -> list[str]:
    """Names of the nodes that compute on floating-point data (the candidates of a precision search)."""
    import onnx

    model = onnx.shape_inference.infer_shapes(model)
    types = {
        v.name: v.type.tensor_type.elem_type for v in (*model.graph.value_info, *model.graph.input, *model.graph.output)
    }
    for t in model.graph.initializer:
        types[t.name] = t.data_type
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16}
    names = []
    for node in model.graph.node:
        if not node.name:
            raise PrecisionError(
                f"graph has an unnamed {node.op_type} node; node names are needed to record which nodes stay in FP32"
            )
        if any(types.get(o) in floats for o in node.output):
            names.append(node.name)
    return names


def expose_intermediates(model, names: Iterable[str] | None = None):
    """A copy of `model` whose float intermediate tensors (or `names`) are also graph outputs."""
    import onnx

    m = onnx.shape_inference.infer_shapes(model)
    have = {o.name for o in m.graph.output}
    wanted = None if names is None else set(names)
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16}
    for vi in list(m.graph.value_info):
        if vi.name in have or vi.type.tensor_type.elem_type not in floats:
            continue
        if wanted is None or vi.name in wanted:
            m.graph.output.append(vi)
            have.add(vi.name)
    return m


@contextlib.contextmanager
def quiet():
    """The converters warn per tensor and log banners; our CLIs print their own summary."""
    buf = io.StringIO()
    root = logging.getLogger()
    level = root.level
    try:
        root.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(buf):
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def save_model_atomic(model, path: Path) -> str:
    """Write an ONNX model (single file) atomically; returns its sha256."""
    import onnx

    from runtime.files import atomic_write

    atomic_write(path, lambda tmp: onnx.save_model(model, str(tmp), save_as_external_data=False))
    return sha256_file(path)


# ----------------------------------------------------------------------------------------------- the manifest


def variant_file(graph: str, precision: str) -> str:
    return f"{graph}.{precision}.onnx"


def register_variant(bundle: str | os.PathLike, graph: str, variant: B.VariantSpec) -> B.Manifest:
    """Add or replace graphs.<graph>.variants.<precision> in vae.json (atomically); returns the new manifest."""
    m = B.read_manifest(bundle)
    spec = m.graph(graph)
    new_spec = replace(spec, variants={**spec.variants, variant.precision: variant})
    m = replace(m, graphs={**m.graphs, graph: new_spec})
    B.write_manifest(bundle, m)
    return m


def commit_variant(bundle: str | os.PathLike, graph: str, model, variant: B.VariantSpec) -> B.Manifest:
    """Write a variant's ONNX model and register it in vae.json so that a kill at any point leaves a bundle whose
    every listed file matches its sha256 (the previous variant stays valid until the new one is committed):

    1. the model goes to a content-addressed name, <graph>.<precision>.staged-<sha256[:16]>.onnx, over nothing;
    2. vae.json is committed naming that file (the previous variant file is now unlisted, still intact);
    3. <graph>.<precision>.onnx is atomically replaced by a hard link to (or a copy of) the staged file;
    4. vae.json is committed naming <graph>.<precision>.onnx;
    5. the staged file is removed.
    A run killed after 2 leaves a valid bundle naming the staged file; recover_variants (at the start of the next
    to_fp16 / quantize run) finishes 3-5. `variant.file` and `variant.sha256` are filled in here.
    """
    import onnx

    from runtime.files import write_staged

    bundle = Path(bundle)
    name = variant_file(graph, variant.precision)
    staged, sha = write_staged(bundle, name, lambda tmp: onnx.save_model(model, str(tmp), save_as_external_data=False))
    register_variant(bundle, graph, replace(variant, file=staged.name, sha256=sha))
    return _settle_variant(bundle, graph, variant.precision)


def _settle_variant(bundle: Path, graph: str, precision: str) -> B.Manifest:
    """Steps 3-5 of commit_variant for a variant vae.json lists under its staged name."""
    from runtime.files import link_or_copy_atomic, staged_target

    m = B.read_manifest(bundle)
    v = m.graph(graph).variants[precision]
    final = staged_target(v.file)
    if final is None:
        return m
    link_or_copy_atomic(bundle / v.file, bundle / final)
    m = register_variant(bundle, graph, replace(v, file=final))
    (bundle / v.file).unlink(missing_ok=True)
    return m


def bundle_locked(fn: Callable) -> Callable:
    """Run fn(bundle, ...) holding an exclusive lock on the bundle folder (flock on the folder itself, no file added).

    Two variant writers on one bundle would otherwise race: each reads, edits and rewrites vae.json, and one run's
    recover_variants would take the other's staged file for a dead run's leftover. A second run is refused at once
    with a BundleError rather than left waiting."""

    @functools.wraps(fn)
    def locked(bundle, *args, **kwargs):
        root = Path(bundle)
        root = root if root.is_dir() else root.parent
        fd = os.open(root, os.O_RDONLY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise B.BundleError(
                    f"{root}: another export.precision.fp16 / export.precision.int8 run is writing this bundle; "
                    "wait for it to finish"
                ) from None
            return fn(bundle, *args, **kwargs)
        finally:
            os.close(fd)  # releases the lock

    return locked


def recover_variants(bundle: str | os.PathLike) -> list[str]:
    """Finish or clean up after a to_fp16 / quantize run that was killed in this bundle; returns what was done.

    A variant vae.json lists under its staged name whose file is intact is moved to its final name (commit_variant
    steps 3-5); staged files vae.json does not list, and temporary files and folders of dead runs (.quantize.*,
    .<file>.<pid>.*.tmp), are removed. Only names this toolkit makes are touched, and a staged file only when its
    content still hashes to its name."""
    from runtime.files import clean_stale_inside, is_provably_staged, sha256_file as sha

    bundle = Path(bundle)
    done = [f"removed {p.name}" for p in clean_stale_inside(bundle)]
    m = B.read_manifest(bundle)
    for g, spec in m.graphs.items():
        for p, v in spec.variants.items():
            f = bundle / v.file
            if is_provably_staged(f) and sha(f) == v.sha256:
                _settle_variant(bundle, g, p)
                done.append(f"finished {v.file}")
    listed = {v.file for spec in B.read_manifest(bundle).graphs.values() for v in spec.variants.values()}
    for f in bundle.iterdir():
        if f.name not in listed and is_provably_staged(f):
            f.unlink()
            done.append(f"removed {f.name}")
    return done


def precision_table(bundle: str | os.PathLike) -> str:
    """fp32 / fp16 / int8 (and bf16 where recorded) side by side per graph, from vae.json (what was measured when
    each variant was made).

    fp32: ONNX Runtime vs PyTorch at export. fp16 / int8 / bf16: worst case over the evaluation sets, against FP32.
    """
    m = B.read_manifest(bundle)
    root = Path(bundle)
    head = (
        f"{'graph':<8} {'precision':<9} {'file':<20} {'MB':>6} {'kept fp32':>9} {'min PSNR dB':>11} "
        f"{'max rel_l2':>10} {'max abs':>9} {'NaN/Inf':>7}  {'budget':<34} result"
    )
    title = (
        f"precisions recorded in {root / B.MANIFEST_NAME} - fp32: ONNX Runtime CPU vs PyTorch FP32 at export; "
        "fp16 / int8 / bf16: worst case over their evaluation inputs vs FP32, measured when each was made:"
    )
    lines = [title, head, "-" * len(head)]

    def fmt(x, spec):
        return (
            "-"
            if x is None or (isinstance(x, float) and math.isnan(x))
            else ("inf" if isinstance(x, float) and math.isinf(x) else format(x, spec))
        )

    for g, spec in m.graphs.items():
        size = (root / spec.file).stat().st_size / 1e6 if (root / spec.file).is_file() else float("nan")
        par = m.parity.get("outputs", {}) if m.parity else {}
        rows = {k: v for k, v in par.items() if f"{g}." in k}
        wc = worst_case({"outputs": rows})
        result = ("PASS" if m.parity.get("passed") else "FAIL") if m.parity.get("verified") else "not verified"
        lines.append(
            f"{g:<8} {'fp32':<9} {spec.file:<20} {size:>6.2f} {'-':>9} {fmt(wc['min_psnr'], '.2f'):>11} "
            f"{fmt(wc['max_rel_l2'], '.3g'):>10} {fmt(wc['max_abs'], '.3g'):>9} {'-':>7}  "
            f"{'vs PyTorch, max_abs <= 1e-4':<34} {result}"
        )
        for p in ("fp16", "int8"):
            v = spec.variants.get(p)
            if v is None:
                lines.append(f"{g:<8} {p:<9} {'(none)':<20}")
                continue
            f = root / v.file
            size = f.stat().st_size / 1e6 if f.is_file() else float("nan")
            ort_summary = v.accuracy.get("onnxruntime_cpu", {})
            emu = v.accuracy.get("fp16_storage_emulation")
            wc = worst_case(ort_summary)
            if emu:  # report the worse of the two FP16 measurements
                we = worst_case(emu)
                wc = {
                    "min_psnr": min(x for x in (wc["min_psnr"], we["min_psnr"]) if x is not None)
                    if wc["min_psnr"] is not None
                    else None,
                    "max_rel_l2": max(wc["max_rel_l2"] or 0, we["max_rel_l2"] or 0),
                    "max_abs": max(wc["max_abs"] or 0, we["max_abs"] or 0),
                    "nonfinite": wc["nonfinite"] + we["nonfinite"],
                }
            budget = ", ".join(f"{k} " + " ".join(f"{kk}={vv:g}" for kk, vv in b.items()) for k, b in v.budget.items())
            passed = v.accuracy.get("passed")
            lines.append(
                f"{g:<8} {p:<9} {v.file:<20} {size:>6.2f} {len(v.kept_fp32_nodes):>9} "
                f"{fmt(wc['min_psnr'], '.2f'):>11} {fmt(wc['max_rel_l2'], '.3g'):>10} "
                f"{fmt(wc['max_abs'], '.3g'):>9} {wc['nonfinite']:>7}  {budget:<34} "
                f"{'PASS' if passed else 'FAIL (forced)'}"
            )
        for p, e in sorted(spec.engine_precisions.items()):  # bf16: an engine setting on the FP32 graph
            wc = worst_case(e.accuracy.get(f"{e.engine}_cpu", {}))
            budget = ", ".join(f"{k} " + " ".join(f"{kk}={vv:g}" for kk, vv in b.items()) for k, b in e.budget.items())
            fresh = e.sha256 == spec.sha256
            lines.append(
                f"{g:<8} {p:<9} {e.engine + ' on fp32':<20} {'-':>6} {'-':>9} "
                f"{fmt(wc['min_psnr'], '.2f'):>11} {fmt(wc['max_rel_l2'], '.3g'):>10} "
                f"{fmt(wc['max_abs'], '.3g'):>9} {wc['nonfinite']:>7}  {budget:<34} "
                f"{'PASS' if fresh else 'STALE (graph changed)'}"
            )
    return "\n".join(lines)


def timestamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def run_for_graphs(
    bundle: str | os.PathLike, graphs: Sequence[str], make: Callable[[str], bool | None], not_done: str
) -> int:
    """The precision tools' loop: make(graph) for each graph, then the side-by-side table; the CLI's exit code.

    make returns False when it wrote a variant that misses its budget (--force). A BudgetError is reported with
    `not_done` (formatted with graph=) and the loop goes on: exit 1. Any other VaeError stops it: exit 2.
    """
    missed = []
    for graph in graphs:
        try:
            if make(graph) is False:
                missed.append(graph)
        except BudgetError as e:
            print(f"error: {e}; {not_done.format(graph=graph)}", file=sys.stderr)
            missed.append(graph)
        except VaeError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    print(precision_table(bundle))
    return 1 if missed else 0
