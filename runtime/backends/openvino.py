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
    threads           INFERENCE_NUM_THREADS (default: OpenVINO's choice, one per physical core it may use); also the
                      number of chunks batch_split cuts a batch into (default: the physical cores this process may use)
    performance_hint  "latency" (default) or "throughput": OpenVINO's PERFORMANCE_HINT. LATENCY makes one stream
                      that gives one inference request every thread, which is what a synchronous call needs: this
                      runtime runs each call (each chunk) as one request on the caller's thread. THROUGHPUT splits
                      the cores into several streams of fewer threads each, so one request - one call - uses only
                      its stream's share of the cores; it pays off only with many concurrent calls.
    cpu_pinning       ENABLE_CPU_PINNING (default: OpenVINO's, on). Measured on/off in interleaved runs on 2 cores,
                      quiet and shared with a busy process (docs/performance.md#openvino-batch-split): neither was
                      consistently faster at batch 1 or 64 (the differences stayed inside the round-to-round spread),
                      so the default stays OpenVINO's. A pinned thread cannot move off a core another busy process
                      holds: try False where that hurts.
    batch_split       a batch of at least N rows is cut into one contiguous chunk per core (`threads`, default the
                      usable cores), each run on an inference request of its own, all in flight at once
                      (start_async), and assembled in order: the same numbers as one call, as rows are independent.
                      Default (None, as False): never - on 2 quiet cores it was slower for the encoder (0.92x ->
                      0.83x the peer at bf16 batch 64) and no faster for the decoder; only on cores shared with a
                      busy process did it pay (encoder 1.08x -> 1.58x the peer), as its extra runnable threads win
                      a bigger share of them. An integer N >= 2: every graph's batches of N rows or more; False:
                      never. It applies to each chunk of max_chunk. Nothing more is compiled: the chunks run on the
                      graph's one compiled model.
    preload           compile every loaded graph in load() (default False: on its first call)

A call takes an inference request from a small per-graph pool (a new one only when every pooled one is in use), so
concurrent calls never share one; the inputs are shared with OpenVINO, not copied (unless read-only or of another
dtype), and the outputs are copied out of the request, so nothing returned aliases memory a later call overwrites.

`openvino` is imported in open(), never at module import.
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..bundle import ENGINE_PRECISIONS, BundleError, Manifest, resolve_file
from ..errors import BackendError, BackendUnavailableError
from .base import Backend, Device, check_graph_io, check_option_types, cpu_flags, engine_installed, import_engine
from .onnxruntime import physical_cores  # no onnxruntime import: that module imports it lazily too

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
    return import_engine(
        "openvino", "openvino", "pip install openvino (or this project's extra: pip install -e '.[openvino]')"
    )


@dataclass(frozen=True)
class Bf16Support:
    """Whether this CPU runs bf16 natively: a bf16 flag in /proc/cpuinfo and BF16 in OpenVINO's CPU capabilities."""

    cpu_flags: tuple[str, ...]  # the BF16_CPU_FLAGS /proc/cpuinfo lists
    openvino_capabilities: tuple[str, ...]  # core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    openvino_version: str

    @property
    def native(self) -> bool:
        return bool(self.cpu_flags) and "BF16" in self.openvino_capabilities

    def refusal(self) -> str:
        """One line: what was found and what is needed."""
        flags = ", ".join(self.cpu_flags) or f"none of {', '.join(BF16_CPU_FLAGS)}"
        return (
            f"this CPU cannot run bf16 natively: /proc/cpuinfo flags: {flags} (needed: one of "
            f"{', '.join(BF16_CPU_FLAGS)}); OpenVINO {self.openvino_version} CPU OPTIMIZATION_CAPABILITIES: "
            f"{', '.join(self.openvino_capabilities) or 'none'} (needed: BF16)"
        )


def cpu_bf16_support(core: Any = None) -> Bf16Support:
    """Probe this machine for native bf16 (imports openvino; `core`: an ov.Core to ask, else a new one)."""
    ov = import_openvino()
    core = core or ov.Core()
    caps = tuple(str(c) for c in core.get_property(OV_DEVICE, "OPTIMIZATION_CAPABILITIES"))
    flags = cpu_flags()
    return Bf16Support(tuple(f for f in BF16_CPU_FLAGS if f in flags), caps, str(ov.__version__))


class OpenVinoBackend(Backend):
    name = "openvino"
    options = ("threads", "performance_hint", "cpu_pinning", "preload", "batch_split")
    #: Default smallest batch batch_split cuts into one chunk per core, per graph: none. On 2 quiet cores neither
    #: graph gained at batch 64; only on cores a busy process shares did the encoder
    #: (docs/performance.md#openvino-batch-split).
    DEFAULT_BATCH_SPLIT: dict[str, int] = {}
    precisions = ("fp32", "fp16", "int8", *ENGINE_PRECISIONS)
    device_kinds = ("cpu",)
    thread_safe = True  # each call takes inference requests of its own (a request serves one call at a time)

    def __init__(
        self,
        manifest: Manifest,
        *,
        device: Device,
        precision: str,
        graphs: tuple[str, ...],
        check_finite: bool,
        files: dict[str, Path],
        hashes: Mapping[str, str],
        ov_module: Any,
        core: Any,
        properties: dict[str, Any],
        engine_records: Mapping[str, Any],
        split_min_batch: Mapping[str, int] | None = None,
        split_ways: int = 1,
    ) -> None:
        super().__init__(manifest, device=device, precision=precision, graphs=graphs, check_finite=check_finite)
        self._ov = ov_module
        self._core = core
        self._files = files
        self._hashes = dict(hashes)
        self.properties = properties  # what compile_model is given (describe() shows what it made of them)
        self._engine_records = dict(engine_records)  # graph -> EnginePrecisionSpec (precision="bf16" only)
        self._compiled: dict[str, _Compiled] = {}  # graph -> its compiled model and request pool, published whole
        self._create_lock = threading.Lock()
        # batch_split: graph -> smallest batch that runs as split_ways chunks, one inference request each, all in
        # flight at once; a graph not in it is never split
        self.split_min_batch = dict(split_min_batch or {}) if split_ways > 1 else {}
        self.split_ways = split_ways
        self.engine_errors = (RuntimeError,)  # OpenVINO's Python binding raises RuntimeError for engine failures

    @classmethod
    def unavailable_reason(cls, bundle: Path, manifest: Manifest, device: Device, precision: str) -> str | None:
        if device.kind != "cpu":
            return f"runs on the CPU only, not {device}"
        if not engine_installed("openvino"):
            return "the openvino package is not installed"
        return None

    @classmethod
    def open(
        cls,
        bundle: Path,
        manifest: Manifest,
        *,
        device: Device,
        precision: str,
        graphs: tuple[str, ...],
        check_finite: bool = True,
        threads: int | None = None,
        performance_hint: str = "latency",
        cpu_pinning: bool | None = None,
        preload: bool = False,
        batch_split: int | bool | None = None,
    ) -> "OpenVinoBackend":
        check_option_types(positive_ints={"threads": threads})
        if performance_hint not in HINTS:
            raise BackendError(f"option performance_hint: expected one of {list(HINTS)}, got {performance_hint!r}")
        check_option_types(bools={"cpu_pinning": cpu_pinning, "preload": preload}, batch_split=batch_split)
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
        properties = engine_properties(
            precision, threads=threads, performance_hint=performance_hint, cpu_pinning=cpu_pinning
        )
        backend = cls(
            manifest,
            device=device,
            precision=precision,
            graphs=graphs,
            check_finite=check_finite,
            files=files,
            hashes=hashes,
            ov_module=ov,
            core=core,
            properties=properties,
            engine_records=records,
            split_min_batch=split_min_batch(graphs, batch_split, cls.DEFAULT_BATCH_SPLIT),
            split_ways=threads or physical_cores(),
        )
        if preload:
            for graph in graphs:
                backend._model(graph)
        return backend

    # ------------------------------------------------------------------ compiling
    def _model(self, graph: str) -> "_Compiled":
        """The graph's compiled model (compiled on the first call, once, whichever thread gets here first)."""
        entry = self._compiled.get(graph)
        if entry is None:
            with self._create_lock:
                entry = self._compiled.get(graph)
                if entry is None:
                    entry = self._compile(graph)
                    self._compiled[graph] = entry
        return entry

    def _compile(self, graph: str) -> "_Compiled":
        path = self._files[graph]
        try:
            data = resolve_file(path.parent, path.name).read_bytes()  # still there, still inside the bundle
        except OSError as e:
            raise BundleError(f"{path}: cannot be read: {e}") from None
        actual, expected = hashlib.sha256(data).hexdigest(), self._hashes[graph]
        if actual != expected:  # the bytes compiled below are the bytes hashed here
            raise BundleError(
                f"{path}: sha256 {actual[:12]}..., manifest says {expected[:12]}...: "
                "the file changed after export; re-export the bundle"
            )
        spec = self.manifest.graphs[graph]
        model = read_onnx(self._core, data, path)
        check_graph_io(path, spec, _io(model.inputs, spec.inputs), _io(model.outputs, spec.outputs))
        compiled = compile_onnx(self._core, model, self.properties, path)
        # Ports by vae.json's names: a compiled port also carries the names of tensors fused into it (an fp16
        # variant's input is known as "z" and as its Cast's output), so its get_any_name() may be another one.
        # (a compiled port's get_index() is its node's output index, 0 for every output: the position is counted)
        inputs = []
        for t in spec.inputs:
            i = _position(compiled.inputs, t.name)
            dtype = _NP_DTYPES.get(compiled.inputs[i].get_element_type().get_type_name(), np.float32)
            inputs.append((i, t.name, None if dtype is np.float32 else dtype))
        return _Compiled(
            compiled, self._ov.Tensor, inputs, [(_position(compiled.outputs, t.name), t.name) for t in spec.outputs]
        )

    # ------------------------------------------------------------------ running
    def _run(self, graph: str, feeds: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        g = self._compiled.get(graph) or self._model(graph)
        split = self.split_min_batch.get(graph)
        if split is not None:
            n = next(iter(feeds.values())).shape[0]
            if n >= split:
                return self._run_split(g, feeds, n)
        request = g.take()
        try:
            held = g.set_inputs(request, feeds)  # noqa: F841 (alive until infer() is done)
            request.infer()
            # copies: the request's output buffers are overwritten by its next call
            return {name: request.get_output_tensor(i).data.copy() for i, name in g.outputs}
        finally:
            g.idle.append(request)

    def _run_split(self, g: "_Compiled", feeds: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
        """batch_split: one contiguous chunk of rows per request, all started at once, joined, assembled in order."""
        k = min(self.split_ways, n)
        bounds = [n * i // k for i in range(k + 1)]
        requests = [g.take() for _ in range(k)]
        started: list[Any] = []
        held: list[Any] = []  # the input tensors, alive until every request is done
        try:
            for i, request in enumerate(requests):
                held += g.set_inputs(request, {name: v[bounds[i] : bounds[i + 1]] for name, v in feeds.items()})
                request.start_async()
                started.append(request)
            for request in started:
                request.wait()
            out: dict[str, np.ndarray] = {}
            for j, name in g.outputs:
                for i, request in enumerate(requests):
                    part = request.get_output_tensor(j).data
                    if i == 0:
                        out[name] = np.empty((n, *part.shape[1:]), part.dtype)
                    out[name][bounds[i] : bounds[i + 1]] = part  # the only copy; a shape mismatch raises here
            return out
        finally:
            for request in started:  # none goes back to the pool (or outlives the call) still running
                try:
                    request.wait()
                except RuntimeError:
                    pass
            g.idle.extend(requests)

    def _close(self) -> None:
        self._compiled.clear()

    # ------------------------------------------------------------------ provenance
    def describe(self) -> dict[str, Any]:
        compiled = {}
        for graph, entry in sorted(self._compiled.items()):
            model = entry.model
            compiled[graph] = {
                "inference_precision": model.get_property("INFERENCE_PRECISION_HINT").get_type_name(),
                "threads": int(model.get_property("INFERENCE_NUM_THREADS")),
                "streams": int(model.get_property("NUM_STREAMS")),
                "performance_hint": str(model.get_property("PERFORMANCE_HINT")).rsplit(".", 1)[-1],
                "cpu_pinning": bool(model.get_property("ENABLE_CPU_PINNING")),
                "execution_devices": list(model.get_property("EXECUTION_DEVICES")),
                "kernel_precisions": kernel_precisions(model),
            }
        out = {
            **super().describe(),
            "openvino": str(self._ov.__version__),
            "ov_device": OV_DEVICE,
            "properties": dict(self.properties),
            "files": {g: p.name for g, p in self._files.items()},
            "compiled": compiled,
            "batch_split": (
                {"min_batch": dict(self.split_min_batch), "requests": self.split_ways} if self.split_min_batch else None
            ),
        }
        if self._engine_records:
            out["engine_precision"] = {
                g: {"measured_with": r.versions, "sha256": r.sha256, "passed": r.accuracy.get("passed")}
                for g, r in self._engine_records.items()
            }
        return out


class _Compiled:
    """One compiled graph and what a call needs from it, looked up once: input (index, name, dtype to cast to or None)
    and output (index, name) of vae.json's tensors, and a pool of idle inference requests. A call takes requests
    from the pool (or creates them) and puts them back when it is done, so concurrent calls never share one and a
    sequential caller reuses the same one (deque's append / pop are atomic: no lock).

    Inputs are shared, not copied: a request points at the caller's arrays without keeping them alive, so the
    tensors set_inputs returns must be held until the request is done (an idle request's stale pointers are never
    read: every call sets every input first)."""

    __slots__ = ("model", "inputs", "outputs", "idle", "_tensor")

    def __init__(
        self, model: Any, tensor: Any, inputs: list[tuple[int, str, Any]], outputs: list[tuple[int, str]]
    ) -> None:
        self.model = model
        self._tensor = tensor
        self.inputs = inputs
        self.outputs = outputs
        self.idle: deque = deque()

    def take(self) -> Any:
        try:
            return self.idle.pop()
        except IndexError:
            return self.model.create_infer_request()

    def set_inputs(self, request: Any, feeds: Mapping[str, np.ndarray]) -> list[Any]:
        """Each input as a tensor sharing the (validated, C-contiguous) array's memory (no copy unless a cast or a
        read-only array); returns the tensors, which keep that memory alive: hold them until the request is done."""
        tensor = self._tensor
        held = []
        for i, name, dtype in self.inputs:
            v = feeds[name]
            if dtype is not None:
                v = v.astype(dtype)
            elif not v.flags.writeable:  # OpenVINO shares only writeable memory (it never writes inputs)
                v = v.copy()
            t = tensor(v, shared_memory=True)
            request.set_input_tensor(i, t)
            held.append(t)
        return held


def split_min_batch(
    graphs: tuple[str, ...], batch_split: int | bool | None, defaults: Mapping[str, int]
) -> dict[str, int]:
    """The batch_split option per graph: graph -> smallest batch split; graphs never split are left out."""
    if batch_split is False:
        return {}
    if batch_split is None:
        return {g: defaults[g] for g in graphs if g in defaults}
    return {g: batch_split for g in graphs}


def engine_properties(
    precision: str, *, threads: int | None = None, performance_hint: str = "latency", cpu_pinning: bool | None = None
) -> dict[str, Any]:
    """The compile_model properties of a precision: the inference precision always explicit (module docstring)."""
    properties: dict[str, Any] = {
        "INFERENCE_PRECISION_HINT": INFERENCE_PRECISION[precision],
        "PERFORMANCE_HINT": HINTS[performance_hint],
    }
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
        raise BackendUnavailableError(
            f"backend 'openvino': asked OpenVINO for inference precision {asked} for "
            f"{Path(source).name}, the compiled model runs {got}"
        )
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
            f"graph offers {spec.precisions()}); measure it first with `python -m export.precision.bf16 BUNDLE`"
        )
    if record.sha256 != spec.sha256:
        raise BundleError(
            f"graphs.{graph}.engine_precisions.{precision}: measured on {record.file} with sha256 "
            f"{record.sha256[:12]}..., the graph is now {spec.sha256[:12]}...: measure it again with "
            "`python -m export.precision.bf16 BUNDLE`"
        )
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


def _position(ports: Any, name: str) -> int:
    """The position among a compiled model's inputs or outputs of the one known as `name` (check_graph_io has
    checked that each is there)."""
    for i, port in enumerate(ports):
        if name in port.get_names():
            return i
    raise BackendError(f"OpenVINO's compiled model has no port named {name!r}")


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and not ln.strip().startswith("Exception from")]
    return (lines[0] if lines else type(e).__name__)[:300]
