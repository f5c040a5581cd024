"""Backend registry: names -> modules, imported only when chosen (so `import runtime` stays numpy-only).

    onnxruntime  runtime/backends/onnxruntime.py  CPU / CUDA / TensorRT execution providers (the default)
    tensorrt     runtime/backends/tensorrt.py     native TensorRT engines built on the target
    openvino     runtime/backends/openvino.py     OpenVINO on the CPU (fp32 / fp16 / int8 graphs; bf16 execution)

Other installed packages add backends through the `vae_deploy.backends` entry-point group ("module:Class"), so the
runtime never imports them: this project's pyproject.toml registers `torch` (export/reference.py: the PyTorch model
itself, the reference for parity and benchmarks).

backend="auto" picks, in order, the first of AUTO_ORDER[device kind] whose module imports, which runs the precision
asked for, and whose `unavailable_reason(...)` is None; the reference backend is never picked automatically. What
that means:

    cpu   fp32 / fp16 / int8 -> onnxruntime (openvino only where onnxruntime is not installed); bf16 -> openvino,
          the only backend that runs it
    cuda  tensorrt where its engines are usable here, else onnxruntime (its CUDA provider)

Why a fixed order and not the fastest backend measured on this machine: "auto" never changes the precision (that is
the caller's accuracy choice), and at fp32 neither CPU engine wins everywhere - ONNX Runtime, which the CPU graphs
were shaped for (the decoder rewrite, the batch split), led on the decoder at batch 64, OpenVINO on the encoder at
batch 64, batch 1 changed from run to run. Where another choice is clearly faster (OpenVINO's bf16, int8) it is
another precision, so it is asked for by name. docs/performance.md#precision-and-backend-on-the-cpu has the measurements and the open
question of a machine-specific choice. describe()["chosen"] says which backend "auto" took and what it skipped.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from ..bundle import Manifest
from ..errors import BackendError, BackendUnavailableError
from .base import Backend, Device

BACKENDS: dict[str, tuple[str, str]] = {
    "onnxruntime": ("runtime.backends.onnxruntime", "OnnxRuntimeBackend"),
    "tensorrt": ("runtime.backends.tensorrt", "TensorRTBackend"),
    "openvino": ("runtime.backends.openvino", "OpenVinoBackend"),
}
PLUGIN_GROUP = "vae_deploy.backends"
# OpenVINO after ONNX Runtime on the CPU: what "auto" ran before stays; it is picked for what only it runs (bf16).
AUTO_ORDER = {"cpu": ("onnxruntime", "openvino"), "cuda": ("tensorrt", "onnxruntime")}


def _plugins() -> dict[str, tuple[str, str]]:
    """The backends other installed packages register under PLUGIN_GROUP (read only when asked: importlib.metadata
    pulls zipfile, tempfile and more, which loading a built-in backend never needs)."""
    from importlib.metadata import entry_points

    found = {}
    for ep in entry_points(group=PLUGIN_GROUP):
        module, _, cls = ep.value.partition(":")
        found.setdefault(ep.name, (module.strip(), cls.strip()))
    return found


def backend_class(name: str) -> type[Backend]:
    """The Backend subclass registered as `name` (imports its module, which imports no engine yet)."""
    plugin = name not in BACKENDS
    known = {**_plugins(), **BACKENDS} if plugin else BACKENDS
    if name not in known:
        raise BackendError(f"backend: expected 'auto' or one of {sorted(known)}, got {name!r}")
    module, cls = known[name]
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        if plugin:  # another package's backend: whatever keeps it from importing, it is unavailable here
            raise BackendUnavailableError(
                f"backend {name!r}: its module {module} cannot be imported here: {e}"
            ) from None
        if isinstance(e, ModuleNotFoundError) and e.name == module:
            raise BackendUnavailableError(
                f"backend {name!r}: module {module} is not part of this installation"
            ) from None
        raise
    return getattr(mod, cls)


def resolve(name: str, bundle: Path, manifest: Manifest, device: Device, precision: str) -> tuple[type[Backend], str]:
    """(backend class, why it was chosen) for a backend name, resolving 'auto'."""
    if name != "auto":
        return backend_class(name), "requested"
    reasons = []
    for candidate in AUTO_ORDER[device.kind]:
        try:
            cls = backend_class(candidate)
        except BackendUnavailableError as e:
            reasons.append(str(e))
            continue
        why = (
            f"does not run precision {precision!r}"
            if precision not in cls.precisions
            else cls.unavailable_reason(bundle, manifest, device, precision)
        )
        if why is None:
            skipped = f" (skipped: {'; '.join(reasons)})" if reasons else ""
            return cls, f"auto: first usable of {list(AUTO_ORDER[device.kind])} on {device}{skipped}"
        reasons.append(f"{candidate}: {why}")
    raise BackendUnavailableError(f"backend 'auto' on {device}: no usable backend: " + "; ".join(reasons))


__all__ = ["AUTO_ORDER", "BACKENDS", "PLUGIN_GROUP", "Backend", "Device", "backend_class", "resolve"]
