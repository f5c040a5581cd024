"""Where does a graph stop matching PyTorch? The first intermediate tensor that diverges, mapped by name.

Used by the parity tool when parity fails (and callable on its own). Needs onnx, onnxruntime, torch and vae_model,
imported here lazily: it is a debugging tool for a development machine, not part of the deployed runtime.

How the two sides are matched. Export keeps PyTorch parameter names as ONNX initializer names (`vae.<module>.weight`,
the graph wrapper holding the model as `vae`), so every Conv / ConvTranspose / Gemm node is mapped to its PyTorch
module by the weight it consumes - also through a DequantizeLinear or Cast in front of the weight (INT8 QDQ and FP16
variants). BatchNorm is folded into the convolution at export, so such a node's output is compared with the output of
the BatchNorm that follows the module in PyTorch. An activation node (LeakyRelu, Relu, Tanh, Sigmoid) that consumes an
anchored tensor is mapped to the module after it in the same Sequential. Each anchor's tensor is marked as a graph
output, the graph runs on ONNX Runtime CPU, the PyTorch model runs with forward hooks on the same input, and anchors
are compared in graph (topological) order: the first whose relative L2 error exceeds the threshold is the culprit.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .bundle import GRAPH_IO, Manifest, read_manifest, resolve_file

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

    def describe(self) -> str:
        return (f"ONNX node {self.onnx_node!r} ({self.onnx_op}, output {self.onnx_output!r}) vs PyTorch "
                f"{self.torch_module!r}: max_abs {self.max_abs:.3g}, rel_l2 {self.rel_l2:.3g}")


@dataclass(frozen=True)
class Divergence:
    """Every anchor of one graph on one input, in graph order; `first` is the first that diverged (or None)."""

    graph: str
    precision: str
    threshold: float
    anchors: tuple[Anchor, ...]

    @property
    def first(self) -> Anchor | None:
        return next((a for a in self.anchors if a.diverged), None)

    def describe(self) -> str:
        f = self.first
        if f is None:
            return (f"{self.graph} ({self.precision}): all {len(self.anchors)} mapped intermediate tensors match "
                    f"PyTorch within rel_l2 {self.threshold:g} (the ONNX graph itself matches; look at the backend)")
        return f"{self.graph} ({self.precision}): first divergence at {f.describe()} (threshold rel_l2 {self.threshold:g})"

    def to_dict(self) -> dict[str, Any]:
        return {"graph": self.graph, "precision": self.precision, "threshold": self.threshold,
                "first": None if self.first is None else self.first.__dict__,
                "anchors": [a.__dict__ for a in self.anchors]}


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


def _next_sibling(name: str) -> str | None:
    parent, _, idx = name.rpartition(".")
    return f"{parent}.{int(idx) + 1}" if idx.isdigit() else None


def _anchors(model_proto, targets: dict[str, str], module_names: set[str]) -> list[tuple[Any, str, str]]:
    """[(node, output name, torch module)] in graph order."""
    producers = {o: n for n in model_proto.graph.node for o in n.output}
    inits = {i.name for i in model_proto.graph.initializer}
    anchored: dict[str, str] = {}  # onnx tensor -> torch module
    out = []
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
            sib = _next_sibling(anchored[node.input[0]])
            module = sib if sib in module_names else None
        if module is not None and node.output:
            anchored[node.output[0]] = module
            out.append((node, node.output[0], module))
    return out


def locate_divergence(bundle: str | os.PathLike, graph: str, *, precision: str = "fp32",
                      checkpoint: str | os.PathLike | None = None, inputs: np.ndarray | None = None,
                      threshold: float | None = None) -> Divergence:
    """Compare every mapped intermediate tensor of `graph` (at `precision`) with the PyTorch model's modules.

    inputs: the graph's input batch (default: the golden input in reference.npz).
    checkpoint: the PyTorch checkpoint (default: the one vae.json names, as the torch backend finds it).
    """
    import onnx
    import onnxruntime as ort
    import torch

    from .backends.torch_ref import find_checkpoint
    from .parity import load_reference
    from vae_model import load_checkpoint

    root = Path(bundle)
    manifest: Manifest = read_manifest(root)
    name, sha = manifest.graph_file(graph, precision)
    path = resolve_file(root, name, sha)
    (in_name,), _ = GRAPH_IO[graph]
    if inputs is None:
        inputs = load_reference(root, manifest)[f"{graph}.{in_name}"]
    x = np.ascontiguousarray(inputs, dtype=np.float32)
    model = load_checkpoint(find_checkpoint(root, manifest, checkpoint)).model.eval()
    modules = dict(model.named_modules())
    proto = onnx.load(str(path))
    anchors = _anchors(proto, _torch_targets(model), set(modules))

    # Mark every anchor tensor as a graph output (types from shape inference; FP32 when unknown).
    inferred = onnx.shape_inference.infer_shapes(proto)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in inferred.graph.value_info}
    present = {o.name for o in proto.graph.output}
    for _, out_name, _ in anchors:
        if out_name not in present:
            proto.graph.output.append(onnx.helper.make_tensor_value_info(
                out_name, types.get(out_name, onnx.TensorProto.FLOAT), None))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    feed_type = np.float16 if sess.get_inputs()[0].type == "tensor(float16)" else np.float32
    names = [a[1] for a in anchors]
    onnx_vals = dict(zip(names, sess.run(names, {in_name: x.astype(feed_type)})))

    captured: dict[str, np.ndarray] = {}
    wanted = {a[2] for a in anchors}
    hooks = [modules[m].register_forward_hook(
        lambda mod, args, out, m=m: captured.__setitem__(m, out.detach().cpu().numpy())) for m in wanted]
    try:
        with torch.inference_mode():
            t = torch.from_numpy(x)
            model.encode(t) if graph == "encoder" else model.decode(t)
    finally:
        for h in hooks:
            h.remove()

    thr = THRESHOLDS.get(precision, 1e-4) if threshold is None else float(threshold)
    result = []
    for node, out_name, module in anchors:
        a = np.asarray(onnx_vals[out_name], dtype=np.float64)
        e = np.asarray(captured[module], dtype=np.float64)
        if a.shape != e.shape:
            a = a.reshape(e.shape) if a.size == e.size else a
        if a.shape != e.shape:
            result.append(Anchor(node.name, node.op_type, out_name, module, float("inf"), float("inf"), True))
            continue
        diff = a - e
        ref = float(np.linalg.norm(e))
        err = float(np.linalg.norm(diff))
        rel = err / ref if ref > 0 else (0.0 if err == 0 else float("inf"))
        max_abs = float(np.abs(diff).max()) if diff.size else 0.0
        bad = not (np.isfinite(a).all() and rel <= thr)
        result.append(Anchor(node.name, node.op_type, out_name, module, max_abs, rel, bad))
    return Divergence(graph=graph, precision=precision, threshold=thr, anchors=tuple(result))
