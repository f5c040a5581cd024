"""Where does a graph stop matching PyTorch? The first intermediate tensor that diverges, mapped by name.

    python -m export.divergence BUNDLE [runtime.verify.parity's options]   # parity, then locate what fails

Handed to runtime.verify.parity.check_parity as its `locate` step (the runtime never imports this module); needs onnx,
onnxruntime, torch and vae_model, imported lazily: a tool for a development machine. Matching: export keeps PyTorch
parameter names as ONNX initializer names, so each Conv / ConvTranspose / Gemm node is mapped to its module by the
weight it consumes (also through a DequantizeLinear or Cast: INT8 and FP16 variants) and compared with the output of
the BatchNorm folded into it, if any; an activation node consuming an anchored tensor maps to the module after it.
Anchors become graph outputs, the graph runs on ONNX Runtime CPU and the model with forward hooks on the same input;
the first anchor (in topological order) whose relative L2 error exceeds the threshold is the culprit. A rewritten
decoder (metadata "rewrite_options") is matched against the same rewrite rebuilt from the checkpoint (fold_batchnorm,
then rewrite_decoder); its anchors are named by the original modules they compute, and a fused sub-pixel block is
compared only as a whole, at the DepthToSpace (nhwc form: the Transpose back to NCHW) that ends it.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from runtime.bundle import GRAPH_IO, MANIFEST_NAME, BundleError, Manifest, read_manifest, resolve_file

# Relative L2 above which an intermediate tensor counts as diverged, per precision (FP32 reassociation is ~1e-7).
THRESHOLDS = {"fp32": 1e-4, "fp16": 1e-2, "int8": 1e-1}
_WEIGHT = re.compile(r"^(?:vae\.)?((?:[A-Za-z_]\w*)(?:\.\w+)*?)\.weight")
_WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_ACTIVATIONS = ("LeakyRelu", "Relu", "Tanh", "Sigmoid")


@dataclass(frozen=True)
class Anchor:
    """One compared intermediate tensor: an ONNX node's output and the PyTorch module output it should equal."""

    onnx_node: str
    onnx_op: str
    onnx_output: str
    torch_module: str
    max_abs: float
    rel_l2: float
    diverged: bool
    rewritten_module: str = ""  # the module of the rewritten PyTorch decoder compared here ("" without rewrite)
    fused: bool = False  # it stands for several original layers (compared as one block)

    def describe(self) -> str:
        where = ""
        if self.fused:
            where = (
                f" (one block since the export's decoder rewrite, {self.rewritten_module}: the layers inside it "
                "cannot be told apart)"
            )
        return (
            f"ONNX node {self.onnx_node!r} ({self.onnx_op}, output {self.onnx_output!r}) vs PyTorch "
            f"{self.torch_module!r}{where}: max_abs {self.max_abs:.3g}, rel_l2 {self.rel_l2:.3g}"
        )


@dataclass(frozen=True)
class Divergence:
    """Every anchor of one graph on one input, in graph order; `first` is the first that diverged (or None)."""

    graph: str
    precision: str
    threshold: float
    anchors: tuple[Anchor, ...]
    notes: tuple[str, ...] = field(default=())  # e.g. how a rewritten graph was matched, what it cannot name

    @property
    def first(self) -> Anchor | None:
        return next((a for a in self.anchors if a.diverged), None)

    def describe(self) -> str:
        f = self.first
        if f is None:
            return (
                f"{self.graph} ({self.precision}): all {len(self.anchors)} mapped intermediate tensors match "
                f"PyTorch within rel_l2 {self.threshold:g} (the ONNX graph itself matches; look at the backend)"
            )
        return (
            f"{self.graph} ({self.precision}): first divergence at {f.describe()} (threshold rel_l2 {self.threshold:g})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "graph": self.graph,
            "precision": self.precision,
            "threshold": self.threshold,
            "first": None if self.first is None else self.first.__dict__,
            "anchors": [a.__dict__ for a in self.anchors],
            "notes": list(self.notes),
        }


def _torch_targets(model) -> dict[str, str]:
    """{weighted module name: name of the module whose output its ONNX node yields} (BatchNorm folded)."""
    import torch

    names = dict(model.named_modules())
    out = {}
    for name, mod in names.items():
        if not isinstance(mod, (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear)):
            continue
        parent, _, idx = name.rpartition(".")
        nxt = f"{parent}.{int(idx) + 1}" if idx.isdigit() else None
        out[name] = nxt if nxt in names and isinstance(names[nxt], torch.nn.BatchNorm2d) else name
    return out


def _next_sibling(name: str, modules: dict[str, Any]) -> str | None:
    """The module after `name` in its Sequential, skipping the nn.Identity a BatchNorm fold leaves behind."""
    import torch

    parent, _, idx = name.rpartition(".")
    if not idx.isdigit():
        return None
    i = int(idx) + 1
    while f"{parent}.{i}" in modules and isinstance(modules[f"{parent}.{i}"], torch.nn.Identity):
        i += 1
    nxt = f"{parent}.{i}"
    return nxt if nxt in modules else None


def _ends_block(node) -> bool:
    """The op that ends a sub-pixel block: its DepthToSpace, or for the "nhwc" form's blocks without a head the
    channels-last pixel shuffle's last Transpose, back to NCHW (perm [0, 3, 1, 2]; the only such Transpose there)."""
    if node.op_type == "DepthToSpace":
        return True
    if node.op_type == "Transpose":
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
        return perm == [0, 3, 1, 2]
    return False


def _anchors(
    model_proto, targets: dict[str, str], modules: dict[str, Any], blocks: tuple[str, ...] = ()
) -> list[tuple[Any, str, str]]:
    """[(node, output name, torch module)] in graph order. blocks: the sub-pixel modules of a rewritten decoder in
    order, each ending in one DepthToSpace (pixel_shuffle) or, in the "nhwc" form without a head, one Transpose back
    to NCHW: the k-th such node is the k-th block's output (_ends_block)."""
    producers = {o: n for n in model_proto.graph.node for o in n.output}
    inits = {i.name for i in model_proto.graph.initializer}
    anchored: dict[str, str] = {}  # onnx tensor -> torch module
    out = []
    pending = list(blocks)
    for node in model_proto.graph.node:
        module = None
        if node.op_type in _WEIGHTED_OPS:
            for inp in node.input[1:]:
                src = inp
                prod = producers.get(inp)
                if prod is not None and prod.op_type in ("DequantizeLinear", "Cast") and prod.input:
                    src = prod.input[0]
                m = _WEIGHT.match(src) if src in inits or src != inp else None
                if m:
                    base = re.sub(r"_(quantized|fp16|float16)$", "", m.group(1))
                    if base in targets:
                        module = targets[base]
                        break
        elif node.op_type in _ACTIVATIONS and node.input and node.input[0] in anchored:
            module = _next_sibling(anchored[node.input[0]], modules)
        elif pending and _ends_block(node):
            module = pending.pop(0)
        if module is not None and node.output:
            anchored[node.output[0]] = module
            out.append((node, node.output[0], module))
    return out


def locate_divergence(
    bundle: str | os.PathLike,
    graph: str,
    *,
    precision: str = "fp32",
    checkpoint: str | os.PathLike | None = None,
    inputs: np.ndarray | None = None,
    threshold: float | None = None,
) -> Divergence:
    """Compare every mapped intermediate tensor of `graph` (at `precision`) with the PyTorch model's modules.

    inputs: the graph's input batch (default: the golden input in reference.npz).
    checkpoint: the PyTorch checkpoint (default: the one vae.json names, as the torch backend finds it).
    """
    import onnx
    import onnxruntime  # noqa: F401 - the tool needs it (_anchor_outputs): fail before any work without it
    import torch  # noqa: F401 - likewise (_module_outputs)

    from export.reference import check_checkpoint, find_checkpoint
    from runtime.verify.reference import load_reference
    from vae_model import load_checkpoint

    root = Path(bundle)
    manifest: Manifest = read_manifest(root)
    name, sha = manifest.graph_file(graph, precision)
    path = resolve_file(root, name, sha)
    (in_name,), _ = GRAPH_IO[graph]
    if inputs is None:
        inputs = load_reference(root, manifest)[f"{graph}.{in_name}"]
    x = np.ascontiguousarray(inputs, dtype=np.float32)
    ckpt_path = find_checkpoint(root, manifest, checkpoint)
    ck = load_checkpoint(ckpt_path)
    check_checkpoint(ckpt_path, manifest, ck.sha256)  # another model's modules would make every comparison moot
    model = ck.model.eval()
    proto = onnx.load(str(path))
    record = _export_record(root, manifest, graph, precision, proto)
    side = _torch_side(model, graph, record.meta)
    modules = dict(side.module.named_modules())
    anchors = _anchors(proto, _torch_targets(side.module), modules, blocks=side.blocks)
    onnx_vals = _anchor_outputs(proto, anchors, in_name, x)
    captured = _module_outputs(modules, {a[2] for a in anchors}, side.run, x)
    thr = THRESHOLDS.get(precision, 1e-4) if threshold is None else float(threshold)
    result = [
        _compare_anchor(node, out_name, module, onnx_vals[out_name], captured[module], thr, side)
        for node, out_name, module in anchors
    ]
    return Divergence(
        graph=graph, precision=precision, threshold=thr, anchors=tuple(result), notes=record.notes + side.notes
    )


@dataclass(frozen=True)
class _ExportRecord:
    """What the exporter did to the graph ("rewrites", "rewrite_options") and how that was found out."""

    meta: dict[str, str]
    notes: tuple[str, ...]


@dataclass(frozen=True)
class _TorchSide:
    """The PyTorch module the graph is compared with, and how its names relate to the original model's."""

    module: Any  # the module whose submodules are hooked
    run: Any  # called on the input batch
    sources: dict[str, str]  # rewritten module name -> original name ({} without rewrite)
    fused: dict[str, str]  # modules that stand for several original layers
    blocks: tuple[str, ...]  # sub-pixel blocks in graph order
    notes: tuple[str, ...]


def _export_record(root: Path, manifest: Manifest, graph: str, precision: str, proto) -> _ExportRecord:
    import onnx

    # What the exporter did to this graph is recorded in the FP32 graph (variants may not keep metadata).
    meta = {
        p.key: p.value
        for p in (
            proto
            if precision == "fp32"
            else onnx.load(str(resolve_file(root, manifest.graphs[graph].file)), load_external_data=False)
        ).metadata_props
    }
    # A variant made from another form of the graph (export.precision.int8 --decoder-form subpixel) records that form's
    # rewrite in vae.json: rebuild that one, not the FP32 file's, or every anchor would be named after the wrong form.
    variant = manifest.graphs[graph].variants.get(precision) if precision != "fp32" else None
    form = dict(variant.source_form) if variant is not None else {}
    if not form:
        return _ExportRecord(meta, ())
    if "rewrite_options" not in form or "rewrites" not in form:
        raise BundleError(
            f"{root / MANIFEST_NAME}: the {precision} {graph} variant was made from another form "
            f"({form.get('form', '?')!r}) and does not record its rewrite options: its layers "
            "cannot be located; compare the FP32 graph instead (precision='fp32')"
        )
    return _ExportRecord(
        {"rewrites": str(form["rewrites"]), "rewrite_options": json.dumps(form["rewrite_options"])},
        (
            f"the {precision} variant was quantized from the {form.get('form', '?')!r} form of the graph, "
            f"not {manifest.graphs[graph].file}; its anchors are that form's blocks",
        ),
    )


def _torch_side(model, graph: str, meta: dict[str, str]) -> _TorchSide:
    if graph == "decoder" and meta.get("rewrites", "none") != "none":  # (older exports also tagged the encoder)
        module, sources, fused, blocks, notes = _rewritten_reference(model, meta)
        return _TorchSide(module, module, sources, fused, blocks, tuple(notes))
    return _TorchSide(model, model.encode if graph == "encoder" else model.decode, {}, {}, (), ())


def _anchor_outputs(proto, anchors: list[tuple[Any, str, str]], in_name: str, x: np.ndarray) -> dict[str, Any]:
    """Every anchor tensor's value: marked as a graph output, the graph run on ONNX Runtime CPU."""
    import onnx
    import onnxruntime as ort

    # Types from shape inference; FP32 when unknown.
    inferred = onnx.shape_inference.infer_shapes(proto)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in inferred.graph.value_info}
    present = {o.name for o in proto.graph.output}
    for _, out_name, _ in anchors:
        if out_name not in present:
            proto.graph.output.append(
                onnx.helper.make_tensor_value_info(out_name, types.get(out_name, onnx.TensorProto.FLOAT), None)
            )
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    feed_type = np.float16 if sess.get_inputs()[0].type == "tensor(float16)" else np.float32
    names = [a[1] for a in anchors]
    return dict(zip(names, sess.run(names, {in_name: x.astype(feed_type)})))


def _module_outputs(modules: dict[str, Any], wanted: set[str], run, x: np.ndarray) -> dict[str, np.ndarray]:
    """The output of each wanted module when `run` runs on x (forward hooks, removed afterwards)."""
    import torch

    captured: dict[str, np.ndarray] = {}
    hooks = [
        modules[m].register_forward_hook(
            lambda mod, args, out, m=m: captured.__setitem__(m, out.detach().cpu().numpy())
        )
        for m in wanted
    ]
    try:
        with torch.inference_mode():
            run(torch.from_numpy(x))
    finally:
        for h in hooks:
            h.remove()
    return captured


def _compare_anchor(node, out_name: str, module: str, actual, expected, thr: float, side: _TorchSide) -> Anchor:
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    if a.shape != e.shape:
        a = a.reshape(e.shape) if a.size == e.size else a
    if a.shape != e.shape:
        return Anchor(node.name, node.op_type, out_name, module, float("inf"), float("inf"), True)
    diff = a - e
    ref = float(np.linalg.norm(e))
    err = float(np.linalg.norm(diff))
    rel = err / ref if ref > 0 else (0.0 if err == 0 else float("inf"))
    max_abs = float(np.abs(diff).max()) if diff.size else 0.0
    bad = not (np.isfinite(a).all() and rel <= thr)
    return Anchor(
        node.name,
        node.op_type,
        out_name,
        side.sources.get(module, module),
        max_abs,
        rel,
        bad,
        rewritten_module=module if side.sources else "",
        fused=module in side.fused,
    )


def _rewritten_reference(model, meta: dict[str, str]):
    """The PyTorch module a rewritten graph was exported from, rebuilt from the checkpoint's model.

    Returns (module, sources: its module names -> original names, fused: the modules that stand for several
    original layers (name -> original names), blocks: the sub-pixel modules in order, notes for the report).
    """
    from export.graph.passes import fold_batchnorm
    from export.graph.rewrites import RewriteError, rewrite_decoder
    from runtime.bundle import BundleError

    try:
        options = json.loads(meta.get("rewrite_options", "{}"))
        rw = rewrite_decoder(fold_batchnorm(model), **options)
    except (ValueError, TypeError, RewriteError) as e:
        raise BundleError(
            f"decoder graph records rewrites {meta['rewrites']!r} with options "
            f"{meta.get('rewrite_options')!r}, which cannot be rebuilt here: {e}"
        ) from None
    fused = dict(rw.fused)
    notes = [
        f"the decoder was rewritten at export ({meta['rewrites']}); compared with the same rewrite of the "
        "checkpoint's BN-folded model"
    ]
    if fused:
        notes.append(
            "compared only as whole blocks (the layers inside cannot be named): "
            + "; ".join(f"{v} ({k})" for k, v in fused.items())
        )
    if "rewrite_options" not in meta:
        notes.append("the graph does not record its rewrite options; assumed rewrite_decoder's defaults")
    if "; ".join(rw.applied) != meta["rewrites"]:
        notes.append(
            f"this checkout's rewrite gives {'; '.join(rw.applied)!r}, the export recorded "
            f"{meta['rewrites']!r}: anchors may be missing"
        )
    return rw.module.eval(), dict(rw.sources), fused, rw.blocks, notes


def _locate_for_parity(*args: Any, **kwargs: Any) -> Any:
    """locate_divergence as runtime.verify.parity calls it. The runtime cannot know vae_model's errors (its CLI
    catches runtime.errors.VaeError only), so a checkpoint that cannot be used becomes a BundleError, which parity
    reports as a note on the failing graph."""
    from vae_model import VaeModelError

    try:
        return locate_divergence(*args, **kwargs)
    except VaeModelError as e:
        raise BundleError(f"checkpoint: {e}") from None


def main(argv: Sequence[str] | None = None) -> int:
    """runtime.verify.parity's CLI with the divergence finder plugged in (exit 0 pass, 1 fail, 2 bad input)."""
    from runtime.cli import prog_name
    from runtime.verify.parity import main as parity_main

    return parity_main(argv, locate=_locate_for_parity, prog=prog_name("export.divergence"))


if __name__ == "__main__":
    sys.exit(main())
