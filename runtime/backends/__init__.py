"""Backend registry: names -> modules, imported only when chosen (so `import runtime` stays numpy-only).

    onnxruntime  runtime/backends/onnxruntime.py  CPU / CUDA / TensorRT execution providers (the default)
    tensorrt     runtime/backends/tensorrt.py     native TensorRT engines built on the target

Other installed packages add backends through the `vae_deploy.backends` entry-point group ("module:Class"), so the
runtime never imports them: this project's pyproject.toml registers `torch` (export/reference.py: the PyTorch model
itself, the reference for parity and benchmarks).

backend="auto" picks, in order, the first of AUTO_ORDER[device kind] whose module imports and whose
`unavailable_reason(...)` is None; the reference backend is never picked automatically.
"""
from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from pathlib import Path

from ..bundle import Manifest
from ..errors import BackendError, BackendUnavailableError
from .base import Backend, Device

BACKENDS: dict[str, tuple[str, str]] = {
    "onnxruntime": ("runtime.backends.onnxruntime", "OnnxRuntimeBackend"),
    "tensorrt": ("runtime.backends.tensorrt", "TensorRTBackend"),
}
PLUGIN_GROUP = "vae_deploy.backends"


def _registered() -> dict[str, tuple[str, str]]:
    """The built-in backends plus those other installed packages register under PLUGIN_GROUP."""
    found = dict(BACKENDS)
    for ep in entry_points(group=PLUGIN_GROUP):
        module, _, cls = ep.value.partition(":")
        found.setdefault(ep.name, (module.strip(), cls.strip()))
    return found
AUTO_ORDER = {"cpu": ("onnxruntime",), "cuda": ("tensorrt", "onnxruntime")}


def backend_class(name: str) -> type[Backend]:
    """The Backend subclass registered as `name` (imports its module, which imports no engine yet)."""
    known = _registered()
    if name not in known:
        raise BackendError(f"backend: expected 'auto' or one of {sorted(known)}, got {name!r}")
    module, cls = known[name]
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name == module:
            raise BackendUnavailableError(f"backend {name!r}: module {module} is not part of this installation") from None
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
        why = cls.unavailable_reason(bundle, manifest, device, precision)
        if why is None:
            skipped = f" (skipped: {'; '.join(reasons)})" if reasons else ""
            return cls, f"auto: first usable of {list(AUTO_ORDER[device.kind])} on {device}{skipped}"
        reasons.append(f"{candidate}: {why}")
    raise BackendUnavailableError(f"backend 'auto' on {device}: no usable backend: " + "; ".join(reasons))


__all__ = ["AUTO_ORDER", "BACKENDS", "PLUGIN_GROUP", "Backend", "Device", "backend_class", "resolve"]
