"""The peer row of the latency report (issue 19): what OpenVINO gives on this model out of the box.

The peer is the plain export (`python -m export.to_onnx CKPT --no-rewrite`: the PyTorch layers as they are, no decoder
rewrite, no precision variant) compiled by OpenVINO for the CPU with its default configuration -
`core.compile_model(model, "CPU")` with no properties at all (the one exception: the harness's --threads, when given,
so that both sides use the same cores). On a CPU with native bf16 (AVX512_BF16, AMX) OpenVINO's default inference
precision is bf16, so there the peer computes in bf16; the row reports the precision in effect, read back from the
compiled model, and its accuracy is judged by that precision's budget. Every report that has the peer row puts this
toolkit's options beside it with a ratio column (benchmarks/report.py).

The plain bundle is `--peer-bundle DIR`, or exported by the harness itself from `--checkpoint` (`--peer`); either way
it must come from the same checkpoint as the measured bundle (vae.json's source sha256) and have an unrewritten
decoder (its ONNX metadata lists no "rewrites").
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import BenchError

BACKEND = "ov-default"  # the peer row's name in the report's backend column
PRECISION = "default"  # its precision column: OpenVINO's default; the precision in effect is in "in_effect"
OV_DEVICE = "CPU"


def check_peer_bundle(peer: Path, manifest: Any, graphs: Sequence[str]) -> Any:
    """The peer bundle's manifest, after checking that it is the plain export of the measured bundle's checkpoint
    (BenchError naming what differs)."""
    from runtime.bundle import read_manifest
    from runtime.errors import VaeError

    try:
        pm = read_manifest(peer)
    except VaeError as e:
        raise BenchError(f"--peer-bundle {peer}: {e}") from None
    if pm.model != manifest.model:
        raise BenchError(
            f"--peer-bundle {peer}: model {pm.model.to_dict()}, the measured bundle's is {manifest.model.to_dict()}"
        )
    ours, theirs = manifest.source.get("sha256"), pm.source.get("sha256")
    if ours and theirs and ours != theirs:
        raise BenchError(
            f"--peer-bundle {peer}: exported from checkpoint sha256 {theirs[:12]}..., the measured "
            f"bundle from {ours[:12]}...: export the peer from the same checkpoint "
            f"(python -m export.to_onnx CKPT --no-rewrite --out DIR)"
        )
    missing = [g for g in graphs if g in manifest.graphs and g not in pm.graphs]
    if missing:
        raise BenchError(f"--peer-bundle {peer}: has no {missing} graph (it has {sorted(pm.graphs)})")
    if "decoder" in pm.graphs and "decoder" in graphs:
        rewrites = _onnx_metadata(peer / pm.graph("decoder").file).get("rewrites")
        if rewrites:
            raise BenchError(
                f"--peer-bundle {peer}: its decoder is rewritten ({rewrites[:60]}...); the peer is the "
                "plain export: python -m export.to_onnx CKPT --no-rewrite --out DIR"
            )
    return pm


def _onnx_metadata(path: Path) -> dict[str, str]:
    """An ONNX file's metadata props (empty when the onnx package is not installed: the check is then skipped)."""
    try:
        import onnx
    except ImportError:
        return {}
    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def export_peer_bundle(checkpoint: Path, out: Path, graphs: Sequence[str]) -> Path:
    """The plain export of `checkpoint` into `out` (python -m export.to_onnx CKPT --no-rewrite), parity-gated as
    every export is."""
    from export.to_onnx import export_bundle

    return export_bundle(checkpoint, out, graphs=tuple(graphs), rewrite=False, log=lambda *a: None)


class PeerRuntime:
    """encode / decode / close over OpenVINO's default compile of the plain bundle's graphs (numpy in and out)."""

    def __init__(self, bundle: Path, graphs: Sequence[str], threads: int | None = None) -> None:
        from runtime.backends.openvino import import_openvino, kernel_precisions
        from runtime.bundle import read_manifest, resolve_file

        ov = import_openvino()
        manifest = read_manifest(bundle)
        core = ov.Core()
        # The default configuration: no properties (threads only when the harness pins every backend's).
        properties = {"INFERENCE_NUM_THREADS": threads} if threads else {}
        self.properties = dict(properties)
        self.openvino = str(ov.__version__)
        self._compiled: dict[str, Any] = {}
        self._requests: dict[str, Any] = {}
        self._outputs: dict[str, list[tuple[str, Any]]] = {}
        for graph in graphs:
            spec = manifest.graph(graph)
            data = resolve_file(bundle, spec.file).read_bytes()
            if hashlib.sha256(data).hexdigest() != spec.sha256:
                raise BenchError(
                    f"--peer-bundle {bundle}: {spec.file} changed after export (sha256 differs from vae.json)"
                )
            compiled = core.compile_model(core.read_model(data), OV_DEVICE, properties)
            self._compiled[graph] = compiled
            self._requests[graph] = compiled.create_infer_request()
            self._outputs[graph] = [(t.name, compiled.output(t.name)) for t in spec.outputs]
        first = next(iter(self._compiled.values()))
        #: OpenVINO's inference precision in effect ("bf16" on CPUs with native bf16, else "f32").
        self.in_effect = first.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        self.kernels = {g: kernel_precisions(c) for g, c in self._compiled.items()}

    def _run(self, graph: str, x: np.ndarray) -> dict[str, np.ndarray]:
        result = self._requests[graph].infer(
            {0: np.ascontiguousarray(x, dtype=np.float32)}, share_inputs=True, share_outputs=False
        )
        return {name: result[port] for name, port in self._outputs[graph]}

    def decode(self, z: np.ndarray) -> np.ndarray:
        return self._run("decoder", z)["image"]

    def encode(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = self._run("encoder", images)
        return out["mu"], out["logvar"]

    def describe(self) -> dict[str, Any]:
        return {
            "backend": BACKEND,
            "openvino": self.openvino,
            "properties": self.properties,
            "inference_precision": self.in_effect,
            "kernel_precisions": self.kernels,
        }

    def close(self) -> None:
        self._requests.clear()
        self._compiled.clear()
