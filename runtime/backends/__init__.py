"""Backend registry: names -> modules, imported only when chosen (so `import runtime` stays numpy-only).

    onnxruntime  runtime/backends/onnxruntime.py  CPU / CUDA / TensorRT execution providers (the default)
    tensorrt     runtime/backends/tensorrt.py     native TensorRT engines built on the target
    openvino     runtime/backends/openvino.py     OpenVINO on the CPU (fp32 / fp16 / int8 graphs; bf16 execution)

Other installed packages add backends through the `vae_deploy.backends` entry-point group ("module:Class"), so the
runtime never imports them: this project's pyproject.toml registers `torch` (export/reference.py: the PyTorch model
itself, the reference for parity and benchmarks).

backend="auto" on the CPU is a recorded, per-machine choice where vae.json has one, else a fixed order:

    recorded  `python -m benchmarks.latency BUNDLE --record-auto` writes the CPU backends' measured medians into
              vae.json, one record per machine (CPU model, ISA flags, usable CPUs, threads option). "auto" takes the
              usable backend with the best geometric mean of median / best median over the recorded points of the
              precision and graphs being loaded - only on that machine, for the graph files measured, with the
              engine version measured (runtime/backends/auto.py has the contract).
    fixed     otherwise: the first of AUTO_ORDER[device kind] whose module imports, which runs the precision asked
              for, and whose `unavailable_reason(...)` is None:
              cpu   fp32 / fp16 / int8 -> onnxruntime (openvino where it is not installed); bf16 -> openvino
              cuda  tensorrt where its engines are usable here, else onnxruntime (its CUDA provider); never a record

"auto" never changes the precision (the caller's accuracy choice) and never picks the reference backend. The fixed
order is the fallback, not a speed claim: neither CPU engine wins everywhere and which one wins depends on the
machine, so a choice by speed is measured on it and recorded (docs/performance.md#precision-and-backend-on-the-cpu).
describe()["chosen"] says which rule applied, what was skipped and, for the fixed order on the CPU, why no record
applied.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Sequence

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


def resolve(
    name: str,
    bundle: Path,
    manifest: Manifest,
    device: Device,
    precision: str,
    graphs: Sequence[str] | None = None,
    threads: int | None = None,
) -> tuple[type[Backend], str]:
    """(backend class, why it was chosen) for a backend name, resolving 'auto' for loading `graphs` (None: all of
    the bundle's) with the threads option `threads`: on the CPU by vae.json's record for this machine where one
    applies (runtime/backends/auto.py), else by AUTO_ORDER."""
    if name != "auto":
        return backend_class(name), "requested"
    no_record = ""
    if device.kind == "cpu":
        loaded = tuple(graphs) if graphs is not None else tuple(manifest.graphs)
        recorded = _recorded_choice(bundle, manifest, device, precision, loaded, threads)
        if not isinstance(recorded, str):
            return recorded
        no_record = f" (no recorded choice: {recorded})"
    reasons = []
    for candidate in AUTO_ORDER[device.kind]:
        cls, why = _usable(candidate, bundle, manifest, device, precision)
        if cls is not None:
            skipped = f" (skipped: {'; '.join(reasons)})" if reasons else ""
            return cls, f"auto: first usable of {list(AUTO_ORDER[device.kind])} on {device}{skipped}{no_record}"
        reasons.append(why)
    raise BackendUnavailableError(f"backend 'auto' on {device}: no usable backend: " + "; ".join(reasons) + no_record)


def _usable(
    candidate: str, bundle: Path, manifest: Manifest, device: Device, precision: str
) -> tuple[type[Backend] | None, str]:
    """(its class, "") if backend `candidate` imports, runs `precision` and is usable here, else (None, why not)."""
    try:
        cls = backend_class(candidate)
    except BackendUnavailableError as e:
        return None, str(e)
    why = (
        f"does not run precision {precision!r}"
        if precision not in cls.precisions
        else cls.unavailable_reason(bundle, manifest, device, precision)
    )
    return (cls, "") if why is None else (None, f"{candidate}: {why}")


def _recorded_choice(
    bundle: Path, manifest: Manifest, device: Device, precision: str, graphs: tuple[str, ...], threads: int | None
) -> tuple[type[Backend], str] | str:
    """The fastest usable backend by vae.json's record for this machine, with why; or why no record applies."""
    if not manifest.auto:  # the common case: no /proc/cpuinfo read, no module imported
        return "no record in vae.json"
    from . import auto

    record = auto.record_for(manifest, auto.this_machine(threads))
    if isinstance(record, str):
        return record
    ranking = auto.stale(record, manifest, precision, graphs) or auto.rank(record, precision, graphs, AUTO_ORDER["cpu"])
    if isinstance(ranking, str):
        return ranking
    reasons = []
    for candidate in ranking.order:
        cls, why = _usable(candidate, bundle, manifest, device, precision)
        if cls is None:
            reasons.append(why)
            continue
        changed = _engine_changed(candidate, record.versions.get(candidate))
        if changed:
            return changed
        skipped = f" (skipped: {'; '.join(reasons)})" if reasons else ""
        return cls, (
            f"auto: recorded choice for {precision} on this machine ({auto.describe_machine(record.machine)}, "
            f"measured {record.measured[:10]}: {ranking.describe()}){skipped}"
        )
    return "no backend the record ranks is usable here: " + "; ".join(reasons)


def _engine_changed(backend: str, recorded: str | None) -> str | None:
    """Why the record's numbers do not hold for `backend`'s engine as installed (None: same version)."""
    from . import auto

    try:
        here = auto.engine_version(backend)
    except (ImportError, OSError, AttributeError) as e:
        return f"engine version differs: cannot read {backend}'s version here ({e})"
    if here != recorded:
        return f"engine version differs: {backend} {recorded or '(none recorded)'} measured, {here} here"
    return None


__all__ = ["AUTO_ORDER", "BACKENDS", "PLUGIN_GROUP", "Backend", "Device", "backend_class", "resolve"]
