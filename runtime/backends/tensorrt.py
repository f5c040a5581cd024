"""Native TensorRT backend: runs the engines built on this machine by `python -m export.to_tensorrt`.

Per graph: the engine is deserialized once, with one execution context, one CUDA stream, device buffers and pinned
(page-locked) host buffers sized for the optimization profile's max batch; a call copies the inputs into pinned
memory, sets the input shape and tensor addresses, enqueues H2D copy -> execute_async_v3 -> D2H copy on the stream,
and synchronizes. Batches past the profile's max are chunked by the base class; calls are serialised by the base
class's lock (`thread_safe = False`) because a context and its buffers serve one call at a time. With
`cuda_graph=True` the engine launch is captured once per batch size (after one plain run, which TensorRT needs to
settle a new shape) and replayed as a CUDA graph.

Engines are checked before use: the sidecar must match this machine (TensorRT version, GPU, platform/L4T) and the
bundle's current ONNX file, else EngineMismatchError lists the mismatches and the rebuild command.

TensorRT (module `tensorrt`, or `tensorrt_rtx` for TensorRT for RTX) and cuda-python are imported only when this
backend is opened; without them, choosing it raises BackendUnavailableError naming what to install.
Never create a TensorRT runtime without a GPU (it crashes the process): open() checks for a device first.
"""
from __future__ import annotations

import ctypes
import importlib
import importlib.util
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..bundle import Manifest
from ..engines import (ENGINES_DIR, GpuInfo, MachineInfo, TrtInfo, candidate_engines, host_platform, locate_engine,
                       read_sidecar, require_usable, sidecar_path)
from ..errors import BackendError, BackendUnavailableError
from .base import Backend, Device

MODULES = {"trt": "tensorrt", "trt_rtx": "tensorrt_rtx"}
INSTALL_TENSORRT = ("install TensorRT's Python bindings: on a Jetson they come with JetPack 6.1+ "
                    "(`sudo apt install python3-libnvinfer`); on x86_64 `pip install tensorrt-cu12` from NVIDIA's "
                    "package index; for TensorRT for RTX `pip install tensorrt-rtx-cu12`")
INSTALL_CUDA = "install cuda-python matching the CUDA major version (e.g. `pip install 'cuda-python>=12,<13'`)"


class CudaError(RuntimeError):
    """A CUDA runtime call failed; the message names the call and the CUDA error."""


# ----------------------------------------------------------------------------------------------- imports

def _version(text: str) -> str:
    m = re.match(r"\d+(\.\d+)*", str(text))
    if not m:
        raise BackendUnavailableError(f"TensorRT reports version {text!r}, which is not a version number")
    return m.group(0)


def import_tensorrt(flavour: str | None = None) -> tuple[Any, TrtInfo]:
    """(module, TrtInfo) of the installed TensorRT; flavour None tries TensorRT, then TensorRT for RTX."""
    if flavour is not None and flavour not in MODULES:
        raise BackendError(f"flavour: expected one of {sorted(MODULES)}, got {flavour!r}")
    errors = []
    for f in ([flavour] if flavour else list(MODULES)):
        try:
            mod = importlib.import_module(MODULES[f])
        except ImportError as e:  # also OSError-like failures of the shared libraries surface as ImportError
            errors.append(f"{MODULES[f]}: {e}")
            continue
        return mod, TrtInfo(f, _version(getattr(mod, "__version__", "")))
    raise BackendUnavailableError("TensorRT is not importable here (" + "; ".join(errors) + "); " + INSTALL_TENSORRT)


_LOGGERS: dict[str, Any] = {}


def trt_logger(trt: Any) -> Any:
    """One logger per TensorRT module for the whole process: TensorRT keeps the first logger it is given and warns
    when builders or runtimes are created with another."""
    if trt.__name__ not in _LOGGERS:
        _LOGGERS[trt.__name__] = trt.Logger(trt.Logger.WARNING)
    return _LOGGERS[trt.__name__]


def import_cudart() -> Any:
    """cuda-python's runtime API module (cuda.bindings.runtime in cuda-python >= 12.6, cuda.cudart before)."""
    try:
        from cuda.bindings import runtime as cudart  # type: ignore[import-not-found]
        return cudart
    except ImportError:
        pass
    try:
        from cuda import cudart  # type: ignore[import-not-found,attr-defined]
        return cudart
    except ImportError as e:
        raise BackendUnavailableError(f"cuda-python is not importable here ({e}); {INSTALL_CUDA}") from None


def _call(cudart: Any, name: str, *args: Any) -> Any:
    """Call cudart.<name>(*args); cuda-python returns (error, *values): raise CudaError unless it is cudaSuccess."""
    result = getattr(cudart, name)(*args)
    err, values = (result[0], result[1:]) if isinstance(result, tuple) else (result, ())
    if int(err) != 0:
        raise CudaError(f"{name}: {getattr(err, 'name', err)} ({int(err)})")
    return values[0] if len(values) == 1 else (values or None)


def gpu_count() -> int:
    """Number of CUDA devices cuda-python sees (0 without cuda-python, a driver or a GPU). Never touches TensorRT."""
    try:
        cudart = import_cudart()
        return int(_call(cudart, "cudaGetDeviceCount"))
    except (BackendUnavailableError, CudaError):
        return 0


def cuda_gpu_info(index: int = 0) -> GpuInfo | None:
    """Name and compute capability of CUDA device `index`, or None where there is none."""
    if gpu_count() <= index:
        return None
    cudart = import_cudart()
    props = _call(cudart, "cudaGetDeviceProperties", index)
    name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
    return GpuInfo(name=name.split("\x00", 1)[0].strip(), compute_capability=(int(props.major), int(props.minor)))


def machine_info(trt: TrtInfo, device_index: int = 0) -> MachineInfo:
    return MachineInfo(trt=trt, gpu=cuda_gpu_info(device_index), platform=host_platform())


# ----------------------------------------------------------------------------------------------- one engine

class _Pinned:
    """A page-locked host buffer seen as a flat numpy array (pinned memory makes async copies truly async)."""

    def __init__(self, cudart: Any, nbytes: int, dtype: np.dtype) -> None:
        self.ptr = int(_call(cudart, "cudaMallocHost", nbytes))
        self.nbytes = nbytes
        raw = (ctypes.c_char * nbytes).from_address(self.ptr)
        self.array = np.frombuffer(raw, dtype=dtype)


class EngineRunner:
    """One deserialized engine with its context, stream and buffers. Not thread-safe: the backend serialises calls."""

    def __init__(self, trt: Any, cudart: Any, runtime: Any, plan: bytes, *, graph: str, inputs: tuple[str, ...],
                 outputs: tuple[str, ...], device_index: int, cuda_graph: bool, source: str) -> None:
        self.trt, self.cudart, self.graph, self.source = trt, cudart, graph, source
        self.device_index = device_index
        self.use_cuda_graph = cuda_graph
        self._device: dict[str, int] = {}
        self._host: dict[str, _Pinned] = {}
        self._graphs: dict[int, Any] = {}
        self._seen: set[int] = set()
        self.stream = None
        self.engine = runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise BackendError(f"{source}: TensorRT could not deserialize this engine (built by another TensorRT "
                               "version or for another GPU?); rebuild it with python -m export.to_tensorrt")
        try:
            self._setup(inputs, outputs)
        except BaseException:
            self.close()
            raise

    def _setup(self, inputs: tuple[str, ...], outputs: tuple[str, ...]) -> None:
        trt, eng = self.trt, self.engine
        names = [eng.get_tensor_name(i) for i in range(eng.num_io_tensors)]
        ins = tuple(n for n in names if eng.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        outs = tuple(n for n in names if n not in ins)
        if set(ins) != set(inputs) or set(outs) != set(outputs):
            raise BackendError(f"{self.source}: engine has inputs {list(ins)} and outputs {list(outs)}, "
                               f"expected {list(inputs)} and {list(outputs)} for graph {self.graph!r}")
        self.inputs, self.outputs = inputs, outputs
        if eng.num_optimization_profiles < 1:
            raise BackendError(f"{self.source}: engine has no optimization profile")
        lo, _, hi = (tuple(s) for s in eng.get_tensor_profile_shape(inputs[0], 0))
        self.min_batch, self.max_batch = int(lo[0]), int(hi[0])
        self.context = eng.create_execution_context()
        if self.context is None:
            raise BackendError(f"{self.source}: could not create an execution context (out of GPU memory?)")
        self.dtypes = {n: np.dtype(trt.nptype(eng.get_tensor_dtype(n))) for n in names}
        for n in inputs:
            shape = tuple(eng.get_tensor_profile_shape(n, 0)[2])
            if not self.context.set_input_shape(n, shape):
                raise BackendError(f"{self.source}: cannot set input {n!r} to the profile's max shape {shape}")
        shapes = {n: tuple(self.context.get_tensor_shape(n)) for n in names}
        self.item_shapes = {n: s[1:] for n, s in shapes.items()}
        _call(self.cudart, "cudaSetDevice", self.device_index)
        self.stream = _call(self.cudart, "cudaStreamCreate")
        for n in names:
            nbytes = int(np.prod(shapes[n])) * self.dtypes[n].itemsize
            self._device[n] = int(_call(self.cudart, "cudaMalloc", nbytes))
            self._host[n] = _Pinned(self.cudart, nbytes, self.dtypes[n])
            if not self.context.set_tensor_address(n, self._device[n]):
                raise BackendError(f"{self.source}: set_tensor_address failed for {n!r}")

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        cudart, ctx = self.cudart, self.context
        n = next(iter(feeds.values())).shape[0]
        if n < self.min_batch:
            fixed = self.min_batch == self.max_batch
            raise BackendError(f"{self.source}: batch {n} is below the engine profile's min batch {self.min_batch}; "
                               + (f"this engine takes exactly {self.min_batch} rows (a fixed-shape engine, e.g. for "
                                  f"DLA): pad the batch to {self.min_batch}" if fixed
                                  else "rebuild with --min-batch 1"))
        # The device is per host thread in CUDA; a call may come from any thread.
        _call(cudart, "cudaSetDevice", self.device_index)
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name in self.inputs:
            x = feeds[name]
            count = x.size
            host = self._host[name].array[:count]
            host[...] = x.reshape(-1)  # casts to the engine's input dtype (FP16 I/O engines)
            if not ctx.set_input_shape(name, x.shape):
                raise BackendError(f"{self.source}: input {name!r} shape {x.shape} is outside the engine's profile")
            _call(cudart, "cudaMemcpyAsync", self._device[name], self._host[name].ptr,
                  count * self.dtypes[name].itemsize, h2d, self.stream)
        self._execute(n)
        shapes = {}
        for name in self.outputs:
            shape = tuple(ctx.get_tensor_shape(name))
            shapes[name] = shape
            _call(cudart, "cudaMemcpyAsync", self._host[name].ptr, self._device[name],
                  int(np.prod(shape)) * self.dtypes[name].itemsize, d2h, self.stream)
        _call(cudart, "cudaStreamSynchronize", self.stream)
        # Copy out of the pinned buffers: they are overwritten by the next call.
        return {name: self._host[name].array[: int(np.prod(s))].reshape(s).astype(np.float32, copy=True)
                for name, s in shapes.items()}

    def _execute(self, n: int) -> None:
        cudart = self.cudart
        if self.use_cuda_graph and n in self._graphs:
            _call(cudart, "cudaGraphLaunch", self._graphs[n], self.stream)
            return
        if self.use_cuda_graph and n in self._seen:
            mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
            _call(cudart, "cudaStreamBeginCapture", self.stream, mode)
            ok = self.context.execute_async_v3(int(self.stream))
            graph = _call(cudart, "cudaStreamEndCapture", self.stream)
            if not ok:
                _call(cudart, "cudaGraphDestroy", graph)
                raise BackendError(f"{self.source}: execute_async_v3 failed while capturing a CUDA graph")
            try:
                self._graphs[n] = _call(cudart, "cudaGraphInstantiate", graph, 0)
            finally:
                _call(cudart, "cudaGraphDestroy", graph)
            _call(cudart, "cudaGraphLaunch", self._graphs[n], self.stream)
            return
        if not self.context.execute_async_v3(int(self.stream)):
            raise BackendError(f"{self.source}: execute_async_v3 failed (batch {n})")
        self._seen.add(n)

    def close(self) -> None:
        """Release graphs, buffers, stream, context and engine; errors while releasing are not raised."""
        cudart = self.cudart
        for exe in self._graphs.values():
            cudart.cudaGraphExecDestroy(exe)
        self._graphs.clear()
        if self.stream is not None:
            cudart.cudaStreamSynchronize(self.stream)
        for ptr in self._device.values():
            cudart.cudaFree(ptr)
        self._device.clear()
        for buf in self._host.values():
            buf.array = None
            cudart.cudaFreeHost(buf.ptr)
        self._host.clear()
        if self.stream is not None:
            cudart.cudaStreamDestroy(self.stream)
            self.stream = None
        # Context before engine: a context refers to its engine.
        self.context = None
        self.engine = None


# ----------------------------------------------------------------------------------------------- the backend

class TensorRTBackend(Backend):
    name = "tensorrt"
    options = ("engines", "cuda_graph", "flavour", "check_sidecar")
    device_kinds = ("cuda",)
    thread_safe = False  # one context and one set of buffers per graph; the base class's lock serialises calls

    def __init__(self, manifest: Manifest, *, device: Device, precision: str, graphs: tuple[str, ...],
                 check_finite: bool = True) -> None:
        super().__init__(manifest, device=device, precision=precision, graphs=graphs, check_finite=check_finite)
        self.runners: dict[str, EngineRunner] = {}
        self.engine_files: dict[str, str] = {}
        self.sidecars: dict[str, dict[str, Any]] = {}
        self.trt_info: TrtInfo | None = None
        self.cuda_graph = False
        self._runtime = None

    @classmethod
    def unavailable_reason(cls, bundle: Path, manifest: Manifest, device: Device, precision: str) -> str | None:
        if not device.is_cuda:
            return "runs on CUDA devices only"
        if not any(importlib.util.find_spec(m) for m in MODULES.values()):
            return "TensorRT's Python package is not installed"
        if importlib.util.find_spec("cuda") is None:
            return "cuda-python is not installed"
        missing = [g for g in manifest.graphs if not candidate_engines(bundle, g, precision)]
        if missing:
            return (f"no {precision} engine for {missing} in {Path(bundle) / ENGINES_DIR} "
                    f"(build with python -m export.to_tensorrt {bundle} --precision {precision})")
        return None

    @classmethod
    def open(cls, bundle: Path, manifest: Manifest, *, device: Device, precision: str, graphs: tuple[str, ...],
             check_finite: bool = True, **options: Any) -> "TensorRTBackend":
        """Find each graph's engine for this machine (or options['engines'][graph]), check its sidecar, load it.

        options: engines {graph: plan file} (default: BUNDLE/engines/<name for this machine>); cuda_graph (bool);
        flavour "trt" | "trt_rtx" (which TensorRT when both are installed); check_sidecar (default True; False
        only for the builder, which verifies an engine it has just built and has not yet given a sidecar).
        """
        unknown = sorted(set(options) - set(cls.options))
        if unknown:
            raise BackendError(f"tensorrt backend: unknown option(s) {unknown}; it accepts {list(cls.options)}")
        if not device.is_cuda:
            raise BackendError(f"tensorrt backend runs on CUDA devices; got device {device}")
        trt, info = import_tensorrt(options.get("flavour"))
        import_cudart()
        machine = machine_info(info, device.index)
        if machine.gpu is None:
            raise BackendUnavailableError(f"tensorrt backend: no CUDA GPU {device} visible "
                                          f"(cuda-python sees {gpu_count()} device(s))")
        given = dict(options.get("engines") or {})
        check = bool(options.get("check_sidecar", True))
        files, sidecars = {}, {}
        for g in graphs:
            path = Path(given[g]) if g in given else locate_engine(bundle, machine=machine, graph=g,
                                                                  precision=precision)
            if check:
                sidecars[g] = require_usable(bundle, path, machine=machine, manifest=manifest, graph=g,
                                             precision=precision).to_dict()
            else:
                sidecars[g] = read_sidecar(sidecar_path(path)).to_dict() if sidecar_path(path).is_file() else {}
            files[g] = path
        return cls._load(trt, info, manifest, files, sidecars, device=device, precision=precision,
                         check_finite=check_finite, cuda_graph=bool(options.get("cuda_graph", False)))

    @classmethod
    def _load(cls, trt: Any, info: TrtInfo, manifest: Manifest, files: Mapping[str, Path],
              sidecars: Mapping[str, dict], *, device: Device, precision: str, check_finite: bool,
              cuda_graph: bool) -> "TensorRTBackend":
        cudart = import_cudart()
        self = cls(manifest, device=device, precision=precision, graphs=tuple(files), check_finite=check_finite)
        self.engine_errors = (CudaError, RuntimeError)
        self.trt_info, self.cuda_graph, self.sidecars = info, cuda_graph, dict(sidecars)
        try:
            _call(cudart, "cudaSetDevice", device.index)
            self._runtime = trt.Runtime(trt_logger(trt))  # only ever created after a GPU was seen
            for g, path in files.items():
                spec = manifest.graph(g)
                # A DLA engine must be deserialized with the runtime on the DLA core it was built for (as trtexec's
                # --useDLACore does at load); GPU engines leave the runtime's default.
                dla = ((sidecars.get(g) or {}).get("build_options") or {}).get("dla_core")
                if dla is not None:
                    self._runtime.DLA_core = int(dla)
                self.runners[g] = EngineRunner(trt, cudart, self._runtime, Path(path).read_bytes(), graph=g,
                                               inputs=tuple(t.name for t in spec.inputs),
                                               outputs=tuple(t.name for t in spec.outputs),
                                               device_index=device.index, cuda_graph=cuda_graph, source=str(path))
                self.engine_files[g] = str(path)
        except (CudaError, OSError) as e:
            self._close()
            raise BackendError(f"tensorrt backend: loading engines failed: {type(e).__name__}: {e}") from None
        except BaseException:
            self._close()
            raise
        return self

    def max_batch(self, graph: str) -> int | None:
        return self.runners[graph].max_batch if graph in self.runners else None

    def _run(self, graph: str, feeds: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        return self.runners[graph].run(feeds)

    def _close(self) -> None:
        for runner in self.runners.values():
            runner.close()
        self.runners.clear()
        self._runtime = None  # the runtime outlives its engines

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update({"tensorrt": None if self.trt_info is None else self.trt_info.to_dict(), "cuda_graph": self.cuda_graph,
                  "engines": dict(self.engine_files),
                  "engine_parity": {g: s.get("parity", {}) for g, s in self.sidecars.items()}})
        return d
