"""Export a VAE checkpoint to a verified encoder/decoder ONNX bundle.

    python -m export.to_onnx CKPT [--out DIR] [--opset N] [--graphs encoder,decoder] [--no-verify] [--no-rewrite]

Writes DIR/{encoder.onnx, decoder.onnx, vae.json, reference.npz} (contract: runtime/bundle.py) from an eval-mode FP32
CPU copy of the model (the caller's is untouched) with BatchNorm folded (export/graph/passes.py, checked against the
unfolded model). The decoder is speed-rewritten by default (export/graph/rewrites.py, exact; `--no-rewrite` opts out;
docs/performance.md#decoder-rewrites), recorded in its metadata ("rewrites", "rewrite_options") so that
export.divergence can rebuild the same module. Each graph: the torch.export-based exporter with a dynamic `batch`
axis (docs/performance.md#onnx-exporter), onnxslim, no BatchNormalization node, metadata props, strict shape
inference and onnx.checker, one self-contained file. Parity gate: both graphs on ONNX Runtime CPU against the PyTorch
FP32 model on seeded golden and realistic inputs, max abs <= 1e-4 per output (--max-abs; --no-verify skips it).
The bundle is built next to DIR and swapped in only when everything passed, keeping DIR/engines/; a file in DIR that
the exporter cannot prove it wrote makes it refuse before any work. vae.json's `source` records the checkpoint's name,
sha256, size and kind, and its path relative to DIR only when it lies under DIR's parent folder (source_record): no
absolute path of the build machine travels with the bundle. Its `preprocess` records the centre crop the model was
trained with, read from the checkpoint's training options (preprocess_record), which the runtimes then apply by default.
Exit codes: 0 ok, 1 parity failure, 2 bad input (one line on stderr).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import logging
import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from export.cli import non_negative_int
from runtime import bundle as B
from runtime.cli import HelpFormatter, add_graphs_argument, epilog, prog_name
from runtime.engines import ENGINES_DIR
from runtime.errors import VaeError
from runtime.files import OutputError, begin_output_dir, make_dir_public, replace_dir, sha256_file
from runtime.images import TRAIN_CENTER_CROP
from runtime.verify.metrics import ComparisonReport, Tolerance, compare_outputs, default_tolerance, tolerance_for
from runtime.version import package_version

DEFAULT_OPSET = 18
MIN_OPSET = 18  # the torch.export-based exporter emits opset 18 and converts upwards only
# Each PyTorch-side pass (BatchNorm fold, decoder rewrite) is exact up to FP32 rounding; checked before export.
PASS_TOLERANCE = Tolerance(max_abs=1e-4)
PRODUCER = "vae-deploy"
PRODUCER_VERSION = package_version()  # pyproject.toml's [project] version, via the installed metadata
# Re-exporting into a bundle keeps its engines: they are built on the target machine (minutes on a Jetson), the
# runtime refuses one whose source graph changed (the sidecar's sha256 against vae.json's, with the rebuild command),
# and one built from an unchanged graph stays valid.
KEPT_ON_REEXPORT = (ENGINES_DIR,)
# vae.json's preprocess.source: where the recorded centre crop came from (preprocess_record).
FROM_OPTIONS = "training options"
PYTORCH_VAE_DEFAULT = "PyTorch-VAE's default (CenterCrop(148) for CelebA): a Lightning checkpoint records no crop"
NO_OPTIONS_DEFAULT = "vae_model.train's default --center-crop"
NO_TRAINING_OPTIONS = B.PreprocessSpec(
    TRAIN_CENTER_CROP, source=f"{NO_OPTIONS_DEFAULT}: no training options were given"
)


class ExportError(VaeError, ValueError):
    """The export could not be done (bad option, invalid graph); the message says what and where."""


class ParityError(ExportError):
    """The exported graphs do not match PyTorch within tolerance; carries the report."""

    def __init__(self, report: ComparisonReport) -> None:
        super().__init__("parity gate failed:\n  " + "\n  ".join(report.failures()))
        self.report = report


@dataclass(frozen=True)
class ExportResult:
    """The bundle folder, the export-time parity report (None with verify=False) and the wall time."""

    bundle: Path
    report: ComparisonReport | None
    seconds: float


# ----------------------------------------------------------------------------------------------- graphs


def _graph_modules(model):
    import torch

    class EncoderGraph(torch.nn.Module):
        def __init__(self, vae):
            super().__init__()
            self.vae = vae

        def forward(self, image):  # the argument name becomes the ONNX input name
            post = self.vae.encode(image)
            return post.mu, post.logvar

    class DecoderGraph(torch.nn.Module):
        def __init__(self, vae):
            super().__init__()
            self.vae = vae

        def forward(self, z):
            return self.vae.decode(z)

    return {B.ENCODER: EncoderGraph(model).eval(), B.DECODER: DecoderGraph(model).eval()}


@contextlib.contextmanager
def _quiet():
    """The exporter prints progress banners and emits deprecation chatter; keep the CLI output ours."""
    buf = io.StringIO()
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "onnxscript", "torch._dynamo")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(buf):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def export_graph(module, graph: str, example, path: Path, opset: int, metadata: Mapping[str, str]) -> None:
    """Export one graph wrapper to a self-contained, simplified, checked ONNX file at `path`."""
    import onnx
    import onnxslim
    import torch

    ins, outs = B.GRAPH_IO[graph]
    with _quiet(), torch.no_grad():
        program = torch.onnx.export(
            module,
            (example,),
            dynamo=True,
            opset_version=opset,
            output_names=list(outs),
            dynamic_shapes={ins[0]: {0: torch.export.Dim(B.BATCH_AXIS)}},
            verbose=False,
            external_data=False,
        )
    model = program.model_proto
    got = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if got != opset:
        # The exporter falls back to its own opset when the version converter cannot reach the requested one.
        raise ExportError(f"{graph}: --opset {opset} was requested but the exporter produced opset {got}")
    with _quiet():
        model = onnxslim.slim(model)
    bn = [n.name for n in model.graph.node if n.op_type == "BatchNormalization"]
    if bn:
        raise ExportError(f"{graph}: BatchNormalization nodes left after folding: {bn}")
    del model.metadata_props[:]
    for k, v in {**metadata, "graph": graph}.items():
        model.metadata_props.add(key=k, value=str(v))
    model.producer_name, model.producer_version = PRODUCER, PRODUCER_VERSION
    model.doc_string = f"VanillaVAE {graph} exported by {PRODUCER} {PRODUCER_VERSION}"
    names = ([i.name for i in model.graph.input], [o.name for o in model.graph.output])
    if tuple(names[0]) != ins or tuple(names[1]) != outs:
        raise ExportError(f"{graph}: graph inputs/outputs are {names}, expected {(list(ins), list(outs))}")
    for vi in list(model.graph.input) + list(model.graph.output):
        dim0 = vi.type.tensor_type.shape.dim[0]
        if dim0.dim_param != B.BATCH_AXIS:
            dim0.Clear()
            dim0.dim_param = B.BATCH_AXIS
    model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    onnx.checker.check_model(model, full_check=True)
    onnx.save_model(model, str(path), save_as_external_data=False)


def _tensor_specs(path: Path) -> tuple[tuple[B.TensorSpec, ...], tuple[B.TensorSpec, ...], int]:
    import onnx

    m = onnx.load(str(path), load_external_data=False)

    def spec(vi):
        dims = tuple(d.dim_param if d.dim_param else int(d.dim_value) for d in vi.type.tensor_type.shape.dim)
        return B.TensorSpec(vi.name, dims, onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type).name)

    opset = next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))
    return tuple(spec(v) for v in m.graph.input), tuple(spec(v) for v in m.graph.output), int(opset)


# ----------------------------------------------------------------------------------------------- reference data


def reference_inputs(model, pixel_range: tuple[float, float], batch: int, seed: int) -> dict[str, np.ndarray]:
    """Golden (seeded) and realistic inputs for both graphs, keyed like reference.npz.

    golden:    decoder z ~ N(0, I); encoder images uniform in the pixel range (seeded).
    realistic: encoder images = embedded shapes dataset + decoded prior samples (clipped to the pixel range);
               decoder z = the encoder's means of those images + fresh prior draws.
    """
    import torch

    from vae_model.data import make_shapes, to_model_range

    cfg = model.config
    lo, hi = pixel_range
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((batch, cfg.latent_dim)).astype(np.float32)
    img = (rng.random((batch, *cfg.image_shape)) * (hi - lo) + lo).astype(np.float32)
    shapes = make_shapes(batch, cfg.image_size, 3 if cfg.in_channels == 3 else 1, seed=seed + 1).images
    data = to_model_range(shapes, pixel_range).numpy()
    if cfg.in_channels not in (1, 3):
        data = np.repeat(data[:, :1], cfg.in_channels, axis=1)
    with torch.no_grad():
        prior = torch.from_numpy(rng.standard_normal((batch, cfg.latent_dim)).astype(np.float32))
        decoded = model.decode(prior).clamp(lo, hi).numpy()
        if decoded.shape[1] != cfg.in_channels:
            decoded = np.repeat(decoded.mean(axis=1, keepdims=True), cfg.in_channels, axis=1)
        real_img = np.concatenate([data, decoded]).astype(np.float32)
        mu = model.encode(torch.from_numpy(real_img)).mu.numpy()
    real_z = np.concatenate([mu, rng.standard_normal((batch, cfg.latent_dim)).astype(np.float32)])
    return {
        B.reference_key(B.DECODER, B.Z): z,
        B.reference_key(B.ENCODER, B.IMAGE): img,
        "realistic." + B.reference_key(B.DECODER, B.Z): real_z,
        "realistic." + B.reference_key(B.ENCODER, B.IMAGE): real_img,
    }


def _split_key(key: str) -> tuple[str, str]:
    """'realistic.decoder.z' -> ('realistic.', 'decoder'); 'encoder.image' -> ('', 'encoder')."""
    parts = key.split(".")
    return "".join(p + "." for p in parts[:-2]), parts[-2]


def torch_outputs(model, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """PyTorch FP32 outputs (on the unfolded model) for every input in `inputs`."""
    import torch

    out = {}
    with torch.no_grad():
        for key, x in inputs.items():
            base, graph = _split_key(key)
            t = torch.from_numpy(x)
            if graph == B.ENCODER:
                post = model.encode(t)
                out[f"{base}{graph}.{B.MU}"] = post.mu.numpy()
                out[f"{base}{graph}.{B.LOGVAR}"] = post.logvar.numpy()
            else:
                out[f"{base}{graph}.{B.IMAGE}"] = model.decode(t).numpy()
    return out


def ort_outputs(bundle_dir: Path, graphs: Sequence[str], inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run each graph on ONNX Runtime CPU (all graph optimisations on, as deployed) for every matching input."""
    import onnxruntime as ort

    out = {}
    for graph in graphs:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        sess = ort.InferenceSession(str(bundle_dir / f"{graph}.onnx"), so, providers=["CPUExecutionProvider"])
        in_name = B.GRAPH_IO[graph][0][0]
        for key, x in inputs.items():
            if key.endswith(f"{graph}.{in_name}"):
                base = key[: -len(f"{graph}.{in_name}")]
                for name, value in zip(B.GRAPH_IO[graph][1], sess.run(None, {in_name: x})):
                    out[f"{base}{graph}.{name}"] = value
    return out


def parity_report(
    actual: Mapping[str, np.ndarray],
    expected: Mapping[str, np.ndarray],
    tolerances: Tolerance | Mapping[str, Tolerance] | None = None,
    label: str = "onnxruntime-cpu fp32",
) -> ComparisonReport:
    """Compare with the FP32 defaults of runtime.verify.metrics, overridden per output (full or tensor name) by `tolerances`."""

    def tol_for(key: str) -> Tolerance:
        try:
            return tolerance_for(key, tolerances or {})
        except ValueError:
            return default_tolerance("fp32", key)

    tol = {k: tol_for(k) for k in expected}
    # Decoder images are Tanh outputs: PSNR over the Tanh range [-1, 1], whatever the encoder's input pixel range.
    images = {k: (-1.0, 1.0) for k in expected if k.endswith(f"{B.DECODER}.{B.IMAGE}")}
    return compare_outputs(actual, expected, tol, image_outputs=images, label=label)


# ----------------------------------------------------------------------------------------------- the bundle


def export_model(
    model,
    out_dir: str | os.PathLike,
    *,
    pixel_range: tuple[float, float],
    source: Mapping | None = None,
    preprocess: B.PreprocessSpec = NO_TRAINING_OPTIONS,
    opset: int = DEFAULT_OPSET,
    graphs: Sequence[str] = B.GRAPHS,
    verify: bool = True,
    batch_for_reference: int = 4,
    seed: int = 0,
    tolerances: Mapping[str, Tolerance] | None = None,
    rewrite: bool = True,
    log=print,
) -> ExportResult:
    """Export an in-memory VanillaVAE (left untouched) to a verified bundle (steps: the module docstring).

    Args:
        model: The VanillaVAE; an eval-mode FP32 CPU copy is exported, the caller's model keeps its mode and weights.
        out_dir: The bundle folder; replaced only by a complete new bundle, its engines/ kept.
        pixel_range: The (min, max) pixel range the model's images use, recorded in vae.json.
        source: Provenance of the weights (checkpoint name, sha256, size, kind, relative_path: source_record),
            recorded in vae.json.
        preprocess: How training prepared the model's images (the centre crop), recorded in vae.json for the runtimes
            to repeat: preprocess_record(checkpoint) for a checkpoint; by default vae_model.train's --center-crop
            default, 148, saying that no training options were given.
        opset: The ONNX opset (MIN_OPSET up to what the installed onnx supports).
        graphs: The graphs to export, some of ("encoder", "decoder").
        verify: Run the parity gate against the PyTorch model (False: skip it, with a warning).
        batch_for_reference: Batch size of the golden inputs stored in reference.npz.
        seed: Seed of the golden and realistic inputs.
        tolerances: Parity tolerance overrides per output key or tensor name (default max abs 1e-4).
        rewrite: Export the decoder in its rewritten, faster form (docs/performance.md#decoder-rewrites).
        log: Called with each progress line.

    Returns:
        ExportResult: the bundle folder, the parity report (None with verify=False) and the wall time.

    Raises:
        ExportError: A bad option, a graph that fails its checks, or an out_dir that may not be replaced.
        ParityError: The exported graphs (or the folded / rewritten model) miss the tolerance; carries the report.
    """
    t0 = time.perf_counter()
    graphs = _checked_graphs(graphs)
    _check_opset(opset)
    out_dir = Path(out_dir)
    try:  # before any work: a folder we may not replace, or cannot write to, is refused now, not after the export
        tmp = begin_output_dir(out_dir, bundle_files, keep=KEPT_ON_REEXPORT, what="--out", manifest=B.MANIFEST_NAME)
    except OutputError as e:
        raise ExportError(str(e)) from None
    try:
        return _export_into(
            model,
            tmp,
            out_dir,
            pixel_range=pixel_range,
            source=source,
            preprocess=preprocess,
            opset=opset,
            graphs=graphs,
            verify=verify,
            batch_for_reference=batch_for_reference,
            seed=seed,
            tolerances=tolerances,
            rewrite=rewrite,
            log=log,
            t0=t0,
        )
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _checked_graphs(graphs: Sequence[str]) -> list[str]:
    graphs = list(dict.fromkeys(graphs))
    bad = [g for g in graphs if g not in B.GRAPHS]
    if bad or not graphs:
        raise ExportError(f"--graphs: expected some of {list(B.GRAPHS)}, got {graphs}")
    return graphs


def _check_opset(opset: int) -> None:
    import onnx

    max_opset = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= max_opset:
        raise ExportError(
            f"--opset {opset}: unsupported; expected {MIN_OPSET} to {max_opset} (onnx {onnx.__version__}"
            f" with the torch.export-based exporter)"
        )


def _export_into(
    model,
    tmp: Path,
    out_dir: Path,
    *,
    pixel_range,
    source,
    preprocess,
    opset,
    graphs,
    verify,
    batch_for_reference,
    seed,
    tolerances,
    rewrite,
    log,
    t0,
) -> ExportResult:
    versions = _tool_versions()
    cfg = model.config
    source = dict(source or {})
    # Work on an eval-mode copy: the caller's model keeps its mode and weights, and a model handed over in train
    # mode is exported (and compared) as it runs in inference, with BatchNorm's running statistics.
    model = copy.deepcopy(model).cpu().float().eval()
    ref = _folded_reference(model, pixel_range, batch_for_reference, seed)
    metadata = _common_metadata(cfg, pixel_range, source)
    modules = _modules_to_export(ref, graphs, rewrite, log)
    specs = _export_graphs(modules, cfg, graphs, tmp, opset, metadata, log)
    keep = {k: v for k, v in {**ref.inputs, **ref.outputs}.items() if k.split(".")[-2] in graphs}
    np.savez(tmp / B.REFERENCE_NAME, **keep)
    report = _parity_gate(tmp, graphs, ref, tolerances, log) if verify else _skip_parity_gate(log)
    manifest = B.Manifest(
        model=B.ModelSpec(cfg.in_channels, cfg.out_channels, cfg.image_size, cfg.latent_dim, cfg.hidden_dims),
        pixel_range=(float(pixel_range[0]), float(pixel_range[1])),
        graphs=specs,
        source=source,
        versions=versions,
        reference={
            "file": B.REFERENCE_NAME,
            "sha256": sha256_file(tmp / B.REFERENCE_NAME),
            "batch": batch_for_reference,
            "seed": seed,
        },
        parity=_parity_record(report),
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        preprocess=preprocess,
    )
    B.write_manifest(tmp, manifest)
    make_dir_public(tmp)
    try:
        replace_dir(tmp, out_dir, owned=bundle_files, keep=KEPT_ON_REEXPORT, what="--out", manifest=B.MANIFEST_NAME)
    except OutputError as e:  # a file appeared in --out during the export
        raise ExportError(str(e)) from None
    return ExportResult(out_dir, report, time.perf_counter() - t0)


@dataclass(frozen=True)
class _Reference:
    """The BatchNorm-folded model, the golden and realistic inputs and the (unfolded) model's outputs on them."""

    folded: object
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]


@dataclass(frozen=True)
class _ExportModules:
    """The module each graph is exported from, and the metadata each graph adds (the decoder's rewrites)."""

    modules: dict[str, object]
    graph_meta: dict[str, dict[str, str]]


def _tool_versions() -> dict[str, str]:
    """The versions recorded in vae.json (importing these first: a missing one fails before any work)."""
    import onnx
    import onnxruntime
    import torch

    return {
        "torch": str(torch.__version__),
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "vae_deploy": PRODUCER_VERSION,
    }


def _folded_reference(model, pixel_range, batch_for_reference: int, seed: int) -> _Reference:
    """Fold BatchNorm and check the folded model against the original on the reference inputs."""
    from export.graph.passes import count_batchnorm, fold_batchnorm

    folded = fold_batchnorm(model)
    if count_batchnorm(folded):
        raise ExportError("BatchNorm layers left after folding")
    inputs = reference_inputs(model, pixel_range, batch_for_reference, seed)
    reference = torch_outputs(model, inputs)
    fold_check = parity_report(torch_outputs(folded, inputs), reference, PASS_TOLERANCE, "folded PyTorch")
    if not fold_check:
        raise ParityError(fold_check)
    return _Reference(folded, inputs, reference)


def _common_metadata(cfg, pixel_range, source: Mapping) -> dict:
    """The metadata props every graph carries."""
    return {
        "producer": PRODUCER,
        "producer_version": PRODUCER_VERSION,
        "model": "VanillaVAE",
        "latent_dim": cfg.latent_dim,
        "image_size": cfg.image_size,
        "in_channels": cfg.in_channels,
        "out_channels": cfg.out_channels,
        "pixel_range": f"{pixel_range[0]:g},{pixel_range[1]:g}",
        "source_sha256": source.get("sha256", ""),
        "source_checkpoint": source.get("checkpoint", ""),
    }


def _modules_to_export(ref: _Reference, graphs: Sequence[str], rewrite: bool, log) -> _ExportModules:
    """The folded model's graph wrappers; with `rewrite`, the decoder's replaced by its checked rewrite."""
    modules = _graph_modules(ref.folded)
    graph_meta: dict[str, dict[str, str]] = {g: {} for g in graphs}
    if rewrite and B.DECODER in graphs:
        rw = _checked_decoder_rewrite(ref)
        modules[B.DECODER] = rw.module
        graph_meta[B.DECODER] = rw.metadata()
        log(f"decoder rewrites: {graph_meta[B.DECODER]['rewrites']}")
    return _ExportModules(modules, graph_meta)


def _checked_decoder_rewrite(ref: _Reference):
    """The decoder rewrite, checked here against the original model before it is exported (exact up to FP32
    rounding)."""
    import torch

    from export.graph.rewrites import RewriteError, rewrite_decoder

    try:
        rw = rewrite_decoder(ref.folded)
    except RewriteError as e:
        raise ExportError(f"{e} (export with --no-rewrite)") from None
    with torch.no_grad():
        got = {
            f"{_split_key(k)[0]}{B.DECODER}.{B.IMAGE}": rw.module(torch.from_numpy(x)).numpy()
            for k, x in ref.inputs.items()
            if _split_key(k)[1] == B.DECODER
        }
    check = parity_report(got, {k: ref.outputs[k] for k in got}, PASS_TOLERANCE, "rewritten PyTorch")
    if not check:
        raise ParityError(check)
    return rw


def _export_graphs(
    to_export: _ExportModules, cfg, graphs: Sequence[str], tmp: Path, opset: int, metadata: Mapping[str, str], log
) -> dict[str, B.GraphSpec]:
    """Export each graph into `tmp`; returns their specs for vae.json."""
    import torch

    examples = {B.ENCODER: torch.zeros(2, *cfg.image_shape), B.DECODER: torch.zeros(2, cfg.latent_dim)}
    specs = {}
    for graph in graphs:
        t = time.perf_counter()
        path = tmp / f"{graph}.onnx"
        export_graph(
            to_export.modules[graph], graph, examples[graph], path, opset, {**metadata, **to_export.graph_meta[graph]}
        )
        specs[graph] = _graph_spec(graph, path)
        log(f"exported {graph}.onnx ({path.stat().st_size / 1e6:.1f} MB, {time.perf_counter() - t:.1f} s)")
    return specs


def _parity_gate(tmp: Path, graphs: Sequence[str], ref: _Reference, tolerances, log) -> ComparisonReport:
    """The exported graphs on ONNX Runtime CPU against PyTorch; raises ParityError when they miss."""
    report = parity_report(
        ort_outputs(tmp, graphs, ref.inputs),
        {k: v for k, v in ref.outputs.items() if k.split(".")[-2] in graphs},
        tolerances,
    )
    log(report.table())
    if not report:
        raise ParityError(report)
    return report


def _skip_parity_gate(log) -> None:
    log(
        "WARNING: --no-verify: the exported graphs were NOT compared with PyTorch; "
        "run `python -m runtime.verify.parity BUNDLE` before trusting them"
    )
    return None


def _parity_record(report: ComparisonReport | None) -> dict:
    """vae.json's "parity": the export-time comparison, or that there was none."""
    if not report:
        return {"verified": False}
    return {
        "verified": True,
        "backend": "onnxruntime-cpu",
        "passed": report.passed,
        # to_dict: strict JSON (an infinite PSNR of identical outputs becomes null)
        "outputs": {
            o.name: {k: v for k, v in o.to_dict().items() if k in ("max_abs", "mean_abs", "rel_l2", "cosine", "psnr")}
            for o in report.outputs
        },
    }


def bundle_files(folder: Path) -> dict[str, str | None]:
    """What a bundle folder's vae.json proves this toolkit wrote there: file -> sha256 (None for vae.json itself,
    proven by parsing). Nothing without a manifest that reads: then every file in the folder is someone else's."""
    try:
        m = B.read_manifest(folder)
    except B.BundleError:
        return {}
    owned: dict[str, str | None] = {B.MANIFEST_NAME: None}
    for spec in m.graphs.values():
        owned[spec.file] = spec.sha256 or "-"  # no sha256 recorded: nothing proves the file is ours
        for v in spec.variants.values():
            owned[v.file] = v.sha256 or "-"
    if m.reference.get("file"):
        owned[str(m.reference["file"])] = str(m.reference.get("sha256") or "-")
    return owned


def _graph_spec(graph: str, path: Path) -> B.GraphSpec:
    ins, outs, opset = _tensor_specs(path)
    return B.GraphSpec(name=graph, file=path.name, sha256=sha256_file(path), opset=opset, inputs=ins, outputs=outs)


def source_record(checkpoint: str | os.PathLike, out_dir: str | os.PathLike, *, sha256: str, kind: str) -> dict:
    """vae.json's `source` for a checkpoint file: its name, sha256, size and kind, and - only when it lies under the
    bundle's parent folder - its path relative to the bundle folder ("/"-separated), never an absolute path: a bundle
    shipped to a device must not carry the build machine's layout. Readers: runtime.bundle.source_checkpoint_candidates.
    """
    ckpt = Path(checkpoint).resolve()  # the kernel resolves ".." physically: so must the relative path
    bundle = Path(out_dir).resolve()
    record = {"checkpoint": ckpt.name, "sha256": sha256, "size": ckpt.stat().st_size, "kind": kind}
    if ckpt.is_relative_to(bundle.parent):
        record["relative_path"] = Path(os.path.relpath(ckpt, bundle)).as_posix()
    return record


def preprocess_record(ck) -> B.PreprocessSpec:
    """vae.json's `preprocess` for a loaded checkpoint (vae_model.LoadedCheckpoint): the centre crop its model was
    trained with. vae_model.train saves its options in the checkpoint (training.options): with --data, the crop is
    --center-crop; without, the embedded shapes dataset is generated at image_size and never cropped (None). A
    PyTorch-VAE Lightning checkpoint records no crop: PyTorch-VAE's CenterCrop(148). Any other checkpoint without
    options gets vae_model.train's default (148), saying so. ExportError for a malformed recorded crop."""
    options = ck.training.get("options")
    if ck.kind == "lightning":
        return B.PreprocessSpec(TRAIN_CENTER_CROP, source=PYTORCH_VAE_DEFAULT)
    if not isinstance(options, Mapping) or "center_crop" not in options:
        return B.PreprocessSpec(TRAIN_CENTER_CROP, source=f"{NO_OPTIONS_DEFAULT}: the checkpoint records none")
    if "data" in options and options["data"] is None:
        return B.PreprocessSpec(
            None, source=f"{FROM_OPTIONS}: the embedded shapes dataset (generated at image_size, not cropped)"
        )
    crop = options["center_crop"]
    if not B.is_center_crop(crop):
        raise ExportError(
            f"{ck.path}: training.options.center_crop: expected an integer in [1, {B.MAX_CENTER_CROP}] "
            f"(vae_model.train --center-crop), got {crop!r}"
        )
    return B.PreprocessSpec(crop, source=f"{FROM_OPTIONS}: --center-crop")


def export_bundle(
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    opset: int | None = None,
    graphs: Sequence[str] = B.GRAPHS,
    verify: bool = True,
    batch_for_reference: int = 4,
    seed: int = 0,
    tolerances: Mapping[str, Tolerance] | None = None,
    rewrite: bool = True,
    log=print,
) -> Path:
    """Load any checkpoint vae_model.load_checkpoint accepts and export it with export_model.

    Args:
        checkpoint: Our .pt, a PyTorch-VAE / Lightning .ckpt, or a bare state_dict file; its name, sha256, size and
            kind are recorded as the bundle's source, with its path relative to the bundle when it lies under the
            bundle's parent folder (source_record).
        out_dir, graphs, verify, batch_for_reference, seed, tolerances, rewrite, log: As for export_model.
        opset: The ONNX opset (default: DEFAULT_OPSET).

    Returns:
        The bundle folder.

    Raises:
        vae_model.CheckpointError: The checkpoint is missing, unreadable, unsafe or not a VanillaVAE.
        ExportError: As for export_model (ParityError when the gate fails).
    """
    from vae_model import load_checkpoint

    ck = load_checkpoint(checkpoint)
    source = source_record(checkpoint, out_dir, sha256=ck.sha256, kind=ck.kind)
    preprocess = preprocess_record(ck)
    crop = "none" if preprocess.center_crop is None else f"{preprocess.center_crop} px"
    log(f"preprocess: centre crop {crop}, {preprocess.resize} resize ({preprocess.source})")
    return export_model(
        ck.model,
        out_dir,
        pixel_range=ck.pixel_range,
        source=source,
        preprocess=preprocess,
        opset=opset or DEFAULT_OPSET,
        graphs=graphs,
        verify=verify,
        batch_for_reference=batch_for_reference,
        seed=seed,
        tolerances=tolerances,
        rewrite=rewrite,
        log=log,
    ).bundle


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog_name("export.to_onnx"),
        formatter_class=HelpFormatter,
        description="Export a VAE checkpoint to a bundle: encoder.onnx (image -> mu, logvar), decoder.onnx (z -> image),\n"
        "vae.json (manifest) and reference.npz (seeded inputs and PyTorch FP32 outputs), gated on parity\n"
        "with PyTorch on ONNX Runtime CPU.",
        epilog=epilog(
            {
                0: "bundle written",
                1: "parity gate failed (no bundle written)",
                2: "bad input or option (one line on stderr)",
            },
            "%(prog)s runs/train/best.pt --out runs/bundle",
            "%(prog)s runs/train/best.pt --out runs/decoder-only --graphs decoder",
            "%(prog)s PyTorch-VAE/logs/VanillaVAE/version_0/checkpoints/last.ckpt --no-rewrite",
        ),
    )
    p.add_argument(
        "checkpoint",
        type=Path,
        metavar="CKPT",
        help="vae-deploy .pt, PyTorch-VAE / Lightning .ckpt (any device) or bare state_dict",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="bundle folder (default: bundle/ next to CKPT). An existing bundle is replaced only by a "
        "complete new one, and only its vae.json and the files it lists with a matching sha256; its "
        "engines/ is kept (the runtime refuses an engine whose graph changed and prints the rebuild "
        "command); any other file there makes the export refuse (exit 2), naming it",
    )
    p.add_argument(
        "--opset",
        type=int,
        default=DEFAULT_OPSET,
        metavar="N",
        help=f"ONNX opset, {MIN_OPSET} or newer (default {DEFAULT_OPSET}, which TensorRT 10 parses)",
    )
    add_graphs_argument(p, what="graphs to export", default=",".join(B.GRAPHS))
    p.add_argument(
        "--no-verify",
        action="store_true",
        help="skip the parity gate (prints a warning; vae.json records parity as unverified)",
    )
    p.add_argument(
        "--no-rewrite",
        action="store_true",
        help="export the decoder as the PyTorch modules are, without the speed rewrite (export/graph/rewrites.py,"
        " on by default: exact, ~2x faster on ONNX Runtime CPU; the divergence finder then names the "
        "blocks it fused only as a whole)",
    )
    p.add_argument(
        "--max-abs",
        type=float,
        default=None,
        metavar="TOL",
        help="parity tolerance: max abs error per output against PyTorch FP32 (default "
        f"{default_tolerance('fp32', B.IMAGE).max_abs:g})",
    )
    p.add_argument(
        "--reference-batch",
        type=int,
        default=4,
        metavar="N",
        help="rows per golden / realistic input set in reference.npz (default 4)",
    )
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the golden inputs (default 0)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from vae_model import VaeModelError

    out = args.out or args.checkpoint.parent / "bundle"
    try:
        if args.reference_batch < 1:
            raise ExportError(f"--reference-batch must be >= 1, got {args.reference_batch}")
        if args.max_abs is not None and not args.max_abs >= 0:
            raise ExportError(f"--max-abs must be >= 0, got {args.max_abs}")
        tolerances = (
            None if args.max_abs is None else {t: Tolerance(max_abs=args.max_abs) for t in (B.IMAGE, B.MU, B.LOGVAR)}
        )
        bundle = export_bundle(
            args.checkpoint,
            out,
            opset=args.opset,
            graphs=B.GRAPHS if args.graphs is None else args.graphs,
            verify=not args.no_verify,
            rewrite=not args.no_rewrite,
            tolerances=tolerances,
            batch_for_reference=args.reference_batch,
            seed=args.seed,
        )
    except ParityError as e:
        print(f"error: {e}\nno bundle was written", file=sys.stderr)
        return 1
    except (VaeError, VaeModelError) as e:  # ExportError, OutputError, BundleError, CheckpointError, ...
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"bundle written to {bundle}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
