"""OpenVINO backend (CPU): the bundle's ONNX graphs compiled by OpenVINO, one compiled model per graph.

    runtime.load(bundle, backend="openvino", precision="fp32" | "fp16" | "int8" | "bf16", threads=N)

OpenVINO reads the same files as the ONNX Runtime backend: the FP32 graph, or the fp16 / int8 (QDQ) variant that
vae.json lists, each checked against its sha256 - on the very bytes that are compiled, so a file changed between
the check and the read cannot run. Like the ONNX Runtime backend, load() checks that every file is there and each
graph is compiled by its first call (`preload=True`: in load()), once, under a lock.

Precision is never left to OpenVINO. Its CPU plugin's own default INFERENCE_PRECISION_HINT is bf16 on any CPU with
bf16 instructions (AVX512_BF16, AMX), so a plain compile_model() of an FP32 graph runs in bf16 there. Here every
graph is compiled with the hint set explicitly: f32 for fp32, fp16 and int8 (an fp16 variant keeps its FP16 weights
and computes in FP32, as on ONNX Runtime's CPU provider; an int8 variant's QDQ pairs become OpenVINO's INT8 kernels,
and what is left unquantized runs in f32, not bf16); bf16 only for precision="bf16", which
is OpenVINO's bf16 execution of the FP32 graph, an engine setting rather than a graph file. It is accepted only
where vae.json records it for the graph (graphs.<graph>.engine_precisions.bf16, written by
`python -m export.precision.bf16 BUNDLE` once it met its budget, measured on this very graph file) and only on a CPU
that runs bf16 natively (cpu_bf16_support; a CPU without it would emulate or quietly fall back to f32). After
compiling, the precision in effect is read back from the compiled model and must be the one asked for; describe()
reports it and the precision of each compute kernel OpenVINO chose.

Options (load(..., **options)):
    threads           INFERENCE_NUM_THREADS (default: OpenVINO's choice, one per physical core it may use)
    performance_hint  "latency" (default) or "throughput": OpenVINO's PERFORMANCE_HINT. LATENCY makes one stream
                      that gives one inference request every thread, which is what a synchronous call needs: this
                      runtime runs each call (each chunk) as one request on the caller's thread. THROUGHPUT splits
                      the cores into several streams of fewer threads each, so one request - one call - uses only
                      its stream's share of the cores; it pays off only with many concurrent calls.
    cpu_pinning       ENABLE_CPU_PINNING (default: OpenVINO's, on): each inference thread bound to one core, meant for
                      cores of one's own. On cores shared with other busy processes a pinned thread cannot move off
                      a busy core and every parallel layer waits for it: pass False there (as ONNX Runtime's
                      spinning=False).
    preload           compile every loaded graph in load() (default False: on its first call)

`openvino` is imported in open(), never at module import.
"""
from __future__ import annotations

import hashlib
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..bundle import ENGINE_PRECISIONS, BundleError, Manifest, resolve_file
from ..errors import BackendError, BackendUnavailableError
from .base import Backend, Device, check_graph_io, engine_installed, import_engine

OV_DEVICE = "CPU"
#: The inference precision hint each precision compiles with (OpenVINO's names); see the module docstring.
INFERENCE_PRECISION = {"fp32": "f32", "fp16": "f32", "int8": "f32", "bf16": "bf16"}
HINTS = {"latency": "LATENCY", "throughput": "THROUGHPUT"}
#: CPU flags (/proc/cpuinfo) of native bf16 arithmetic: AVX512_BF16 (Cooper Lake, Zen 4 and later), AMX (Sapphire
#: Rapids and later).
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
#: The kernels that do the arithmetic; describe() counts their runtime precisions (the rest are reorders, reshapes).
COMPUTE_LAYERS = ("Convolution", "Deconvolution", "FullyConnected", "MatMul", "Eltwise", "FakeQuantize")
_NP_DTYPES = {"f32": np.float32, "f16": np.float16, "f64": np.float64}


def import_openvino():
    """The openvino module, or BackendUnavailableError saying how to install it."""
    return import_engine("openvino", "openvino",
                         "pip install openvino (or this project's extra: pip install -e '.[openvino]')")


@dataclass(frozen=True)
class Bf16Support:
    """Whether this CPU runs bf16 natively: a bf16 flag in /proc/cpuinfo and BF16 in OpenVINO's CPU capabilities."""

    cpu_flags: tuple[str, ...]            # the BF16_CPU_FLAGS /proc/cpuinfo lists
    openvino_capabilities: tuple[str, ...]  # core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    openvino_version: str

    @property
    def native(self) -> bool:
        return bool(self.cpu_flags) and "BF16" in self.openvino_capabilities

    def refusal(self) -> str:
        """One line: what was found and what is needed."""
        flags = ", ".join(self.cpu_flags) or f"none of {', '.join(BF16_CPU_FLAGS)}"
        return (f"this CPU cannot run bf16 natively: /proc/cpuinfo flags: {flags} (needed: one of "
                f"{', '.join(BF16_CPU_FLAGS)}); OpenVINO {self.openvino_version} CPU OPTIMIZATION_CAPABILITIES: "
                f"{', '.join(self.openvino_capabilities) or 'none'} (needed: BF16)")


def cpu_flags(path: str = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags (x86 'flags', aarch64 'Features'); empty where /proc/cpuinfo cannot be read."""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            text = f.read()
    except OSError:
        return set()
    found: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            found.update(value.split())
    return found


def cpu_bf16_support(core: Any = None) -> Bf16Support:
    """Probe this machine for native bf16 (imports openvino; `core`: an ov.Core to ask, else a new one)."""
    ov = import_openvino()
    core = core or ov.Core()
    caps = tuple(str(c) for c in core.get_property(OV_DEVICE, "OPTIMIZATION_CAPABILITIES"))
    flags = cpu_flags()
    return Bf16Support(tuple(f for f in BF16_CPU_FLAGS if f in flags), caps, str(ov.__version__))


class OpenVinoBackend(Backend):
    name = "openvino"
    options = ("threads", "performance_hint", "cpu_pinning", "preload")
    precisions = ("fp32", "fp16", "int8", *ENGINE_PRECISIONS)
    device_kinds = ("cpu",)
    thread_safe = True  # each call takes an inference request of its own (a request serves one call at a time)

    def __init__(self, manifest: Manifest, *, device: Device, precision: str, graphs: tuple[str, ...],
                 check_finite: bool, files: dict[str, Path], hashes: Mapping[str, str], ov_module: Any,
                 core: Any, properties: dict[str, Any], engine_records: Mapping[str, Any]) -> None:
        super().__init__(manifest, device=device, precision=precision, graphs=graphs, check_finite=check_finite)
        self._ov = ov_module
        self._core = core
        self._files = files
        self._hashes = dict(hashes)
        self.properties = properties          # what compile_model is given (describe() shows what it made of them)
        self._engine_records = dict(engine_records)  # graph -> EnginePrecisionSpec (precision="bf16" only)
        # graph -> (compiled model, input dtypes, output ports), published whole once compiled
        self._compiled: dict[str, tuple[Any, dict[str, Any], list[tuple[str, Any]]]] = {}
        self._idle: dict[str, list[Any]] = {}  # graph -> inference requests not in use
        self._create_lock = threading.Lock()
        self._pool_lock = threading.Lock()
        self.engine_errors = (RuntimeError,)  # OpenVINO's Python binding raises RuntimeError for engine failures

    @classmethod
    def unavailable_reason(cls, bundle: Path, manifest: Manifest, device: Device, precision: str) -> str | None:
        if device.kind != "cpu":
            return f"runs on the CPU only, not {device}"
        if not engine_installed("openvino"):
            return "the openvino package is not installed"
        return None

    @classmethod
    def open(cls, bundle: Path, manifest: Manifest, *, device: Device, precision: str, graphs: tuple[str, ...],
             check_finite: bool = True, threads: int | None = None, performance_hint: str = "latency",
             cpu_pinning: bool | None = None, preload: bool = False) -> "OpenVinoBackend":
        if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
            raise BackendError(f"option threads: expected a positive integer, got {threads!r}")
        if performance_hint not in HINTS:
            raise BackendError(f"option performance_hint: expected one of {list(HINTS)}, got {performance_hint!r}")
        for opt, value in (("cpu_pinning", cpu_pinning), ("preload", preload)):
            if value is not None and not isinstance(value, bool):
                raise BackendError(f"option {opt}: expected True or False, got {value!r}")
        files: dict[str, Path] = {}
        hashes: dict[str, str] = {}
        records: dict[str, Any] = {}
        for graph in graphs:
            if precision in ENGINE_PRECISIONS:
                records[graph] = _engine_record(manifest, graph, precision)
                spec = manifest.graph(graph)
                name, hashes[graph] = spec.file, spec.sha256
            else:
                name, hashes[graph] = manifest.graph_file(graph, precision)
            files[graph] = resolve_file(bundle, name)  # present and inside the bundle; hashed when compiled
        ov = import_openvino()
        core = ov.Core()
        if precision == "bf16":
            support = cpu_bf16_support(core)
            if not support.native:
                raise BackendUnavailableError(f"backend 'openvino', precision 'bf16': {support.refusal()}")
        properties = engine_properties(precision, threads=threads, performance_hint=performance_hint,
                                       cpu_pinning=cpu_pinning)
        backend = cls(manifest, device=device, precision=precision, graphs=graphs, check_finite=check_finite,
                      files=files, hashes=hashes, ov_module=ov, core=core, properties=properties,
                      engine_records=records)
        if preload:
            for graph in graphs:
                backend._model(graph)
        return backend

    # ------------------------------------------------------------------ compiling
    def _model(self, graph: str) -> tuple[Any, dict[str, Any], list[tuple[str, Any]]]:
        """The graph's compiled model (compiled on the first call, once, whichever thread gets here first)."""
        entry = self._compiled.get(graph)
        if entry is None:
            with self._create_lock:
                entry = self._compiled.get(graph)
                if entry is None:
                    entry = self._compile(graph)
                    self._compiled[graph] = entry
        return entry

    def _compile(self, graph: str) -> tuple[Any, dict[str, Any], list[tuple[str, Any]]]:
        path = self._files[graph]
        try:
            data = resolve_file(path.parent, path.name).read_bytes()  # still there, still inside the bundle
        except OSError as e:
            raise BundleError(f"{path}: cannot be read: {e}") from None
        actual, expected = hashlib.sha256(data).hexdigest(), self._hashes[graph]
        if actual != expected:  # the bytes compiled below are the bytes hashed here
            raise BundleError(f"{path}: sha256 {actual[:12]}..., manifest says {expected[:12]}...: "
                              "the file changed after export; re-export the bundle")
        spec = self.manifest.graphs[graph]
        model = read_onnx(self._core, data, path)
        check_graph_io(path, spec, _io(model.inputs, spec.inputs), _io(model.outputs, spec.outputs))
        compiled = compile_onnx(self._core, model, self.properties, path)
        # Ports by vae.json's names: a compiled port also carries the names of tensors fused into it (an fp16
        # variant's input is known as "z" and as its Cast's output), so its get_any_name() may be another one.
        types = {t.name: _NP_DTYPES.get(compiled.input(t.name).get_element_type().get_type_name(), np.float32)
                 for t in spec.inputs}
        return compiled, types, [(t.name, compiled.output(t.name)) for t in spec.outputs]

    # ------------------------------------------------------------------ running
    def _run(self, graph: str, feeds: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        compiled, types, outputs = self._model(graph)
        feeds = {k: (v if types[k] is np.float32 else v.astype(types[k])) for k, v in feeds.items()}
        request = self._take_request(graph, compiled)
        try:
            # share_inputs: OpenVINO reads the (validated, C-contiguous) arrays in place; share_outputs=False: the
            # results are copies, as the request's own buffers are reused by the next call.
            result = request.infer(feeds, share_inputs=True, share_outputs=False)
            return {name: result[port] for name, port in outputs}
        finally:
            with self._pool_lock:
                self._idle.setdefault(graph, []).append(request)

    def _take_request(self, graph: str, compiled: Any) -> Any:
        """An idle inference request of the graph, or a new one: concurrent calls never share a request."""
        with self._pool_lock:
            idle = self._idle.get(graph)
            if idle:
                return idle.pop()
        return compiled.create_infer_request()

    def _close(self) -> None:
        self._idle.clear()
        self._compiled.clear()

    # ------------------------------------------------------------------ provenance
    def describe(self) -> dict[str, Any]:
        compiled = {}
        for graph, (model, _, _) in sorted(self._compiled.items()):
            compiled[graph] = {
                "inference_precision": model.get_property("INFERENCE_PRECISION_HINT").get_type_name(),
                "threads": int(model.get_property("INFERENCE_NUM_THREADS")),
                "streams": int(model.get_property("NUM_STREAMS")),
                "performance_hint": str(model.get_property("PERFORMANCE_HINT")).rsplit(".", 1)[-1],
                "cpu_pinning": bool(model.get_property("ENABLE_CPU_PINNING")),
                "execution_devices": list(model.get_property("EXECUTION_DEVICES")),
                "kernel_precisions": kernel_precisions(model)}
        out = {**super().describe(), "openvino": str(self._ov.__version__), "ov_device": OV_DEVICE,
               "properties": dict(self.properties), "files": {g: p.name for g, p in self._files.items()},
               "compiled": compiled}
        if self._engine_records:
            out["engine_precision"] = {g: {"measured_with": r.versions, "sha256": r.sha256,
                                           "passed": r.accuracy.get("passed")}
                                       for g, r in self._engine_records.items()}
        return out


def engine_properties(precision: str, *, threads: int | None = None, performance_hint: str = "latency",
                      cpu_pinning: bool | None = None) -> dict[str, Any]:
    """The compile_model properties of a precision: the inference precision always explicit (module docstring)."""
    properties: dict[str, Any] = {"INFERENCE_PRECISION_HINT": INFERENCE_PRECISION[precision],
                                  "PERFORMANCE_HINT": HINTS[performance_hint]}
    if threads is not None:
        properties["INFERENCE_NUM_THREADS"] = threads
    if cpu_pinning is not None:
        properties["ENABLE_CPU_PINNING"] = cpu_pinning
    return properties


def read_onnx(core: Any, data: bytes, source: str | Path) -> Any:
    """An ov.Model from the bytes of an ONNX file (the bytes that were hashed); BundleError naming `source`."""
    try:
        return core.read_model(data)
    except RuntimeError as e:
        raise BundleError(f"{source}: OpenVINO cannot read it: {_first_line(e)}") from None


def compile_onnx(core: Any, model: Any, properties: Mapping[str, Any], source: str | Path) -> Any:
    """Compile for the CPU with `properties`, then check that the inference precision in effect, read back from the
    compiled model, is the one asked for (a CPU without bf16 would quietly run f32). Shared by this backend and
    export.precision.bf16, so what is measured there is what runs here."""
    try:
        compiled = core.compile_model(model, OV_DEVICE, dict(properties))
    except RuntimeError as e:
        raise BundleError(f"{source}: OpenVINO cannot compile it: {_first_line(e)}") from None
    asked = properties["INFERENCE_PRECISION_HINT"]
    got = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    if got != asked:
        raise BackendUnavailableError(f"backend 'openvino': asked OpenVINO for inference precision {asked} for "
                                      f"{Path(source).name}, the compiled model runs {got}")
    return compiled


def kernel_precisions(compiled: Any) -> dict[str, dict[str, int]]:
    """{layer type: {runtime precision: count}} of a compiled model's compute kernels (OpenVINO's execution graph)."""
    counts: dict[str, Counter] = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        kind = info["layerType"].astype(str)
        if kind in COMPUTE_LAYERS:
            counts.setdefault(kind, Counter())[info["runtimePrecision"].astype(str)] += 1
    return {k: dict(sorted(v.items())) for k, v in sorted(counts.items())}


def _engine_record(manifest: Manifest, graph: str, precision: str) -> Any:
    """vae.json's record that `precision` met its budget on this graph under OpenVINO, or why it cannot run."""
    spec = manifest.graph(graph)
    record = spec.engine_precisions.get(precision)
    if record is None or record.engine != OpenVinoBackend.name:
        raise BackendError(
            f"precision {precision!r}: vae.json does not record it for graph {graph!r} on backend 'openvino' (the "
            f"graph offers {spec.precisions()}); measure it first with `python -m export.precision.bf16 BUNDLE`")
    if record.sha256 != spec.sha256:
        raise BundleError(f"graphs.{graph}.engine_precisions.{precision}: measured on {record.file} with sha256 "
                          f"{record.sha256[:12]}..., the graph is now {spec.sha256[:12]}...: measure it again with "
                          "`python -m export.precision.bf16 BUNDLE`")
    return record


def _io(ports: Any, declared: Any) -> list[tuple[str, tuple[Any, ...], str | None]]:
    """A model's inputs/outputs as (name, shape with None for dynamic axes, NumPy dtype name) for check_graph_io; a
    port with several names is named by the one vae.json declares at its position, if it has it."""
    out = []
    for i, p in enumerate(ports):
        want = declared[i].name if i < len(declared) else None
        name = want if want in p.get_names() else p.get_any_name()
        shape = tuple(d.get_length() if d.is_static else None for d in p.get_partial_shape())
        dtype = _NP_DTYPES.get(p.get_element_type().get_type_name())
        out.append((name, shape, np.dtype(dtype).name if dtype else p.get_element_type().get_type_name()))
    return out


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and not ln.strip().startswith("Exception from")]
    return (lines[0] if lines else type(e).__name__)[:300]
