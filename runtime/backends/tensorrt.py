"""Native TensorRT backend: runs the engines built on this machine by `python -m export.tensorrt.build`.

Per graph: the engine is deserialized once, with one execution context, one CUDA stream, device buffers and pinned
host buffers sized for the optimization profile's max batch; a call copies the inputs into pinned memory, enqueues
H2D copy -> execute_async_v3 -> D2H copy and synchronizes. Batches past the profile's max are chunked by the base
class, and calls are serialised by its lock (`thread_safe = False`: a context and its buffers serve one call at a
time). `cuda_graph=True` captures the launch once per batch size (after one plain run) and replays it.

Engines are checked before use: the sidecar must match this machine (TensorRT version, GPU, platform/L4T) and the
bundle's current ONNX file, else EngineMismatchError lists the mismatches and the rebuild command. TensorRT
(`tensorrt`, or `tensorrt_rtx`) and cuda-python are imported only when this backend is opened; without them it raises
BackendUnavailableError naming what to install. open() checks for a GPU first: a TensorRT runtime created without one
crashes the process.
"""

from __future__ import annotations

import ctypes
import dataclasses
import importlib
import importlib.util
import re
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..bundle import Manifest
from ..engines import (
    ENGINES_DIR,
    GpuInfo,
    MachineInfo,
    TrtInfo,
    candidate_engines,
    host_platform,
    locate_engine,
    read_sidecar,
    require_usable,
    sidecar_path,
)
from ..errors import BackendError, BackendUnavailableError, VaeError
from .base import Backend, Device

MODULES = {"trt": "tensorrt", "trt_rtx": "tensorrt_rtx"}
INSTALL_TENSORRT = (
    "install TensorRT's Python bindings: on a Jetson they come with JetPack 6.1+ "
    "(`sudo apt install python3-libnvinfer`); on x86_64 `pip install tensorrt-cu12` from NVIDIA's "
    "package index; for TensorRT for RTX `pip install tensorrt-rtx-cu12`"
)
INSTALL_CUDA = "install cuda-python matching the CUDA major version (e.g. `pip install 'cuda-python>=12,<13'`)"


class CudaError(VaeError, RuntimeError):
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
    for f in [flavour] if flavour else list(MODULES):
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
    except (OSError, RuntimeError) as e:  # a binding that loads but cannot find its CUDA libraries
        raise BackendUnavailableError(f"cuda-python cannot load here ({e}); {INSTALL_CUDA}") from None
    try:
        from cuda import cudart  # type: ignore[import-not-found,attr-defined]

        return cudart
    except (ImportError, OSError, RuntimeError) as e:
        raise BackendUnavailableError(f"cuda-python is not importable here ({e}); {INSTALL_CUDA}") from None


def _call(cudart: Any, name: str, *args: Any) -> Any:
    """Call cudart.<name>(*args); cuda-python returns (error, *values): raise CudaError unless it is cudaSuccess.

    cuda-python 12.x raises RuntimeError ("Failed to dlopen libcuda.so.1") where no NVIDIA driver is installed:
    that is a CudaError too, so no caller ever sees a raw RuntimeError."""
    try:
        result = getattr(cudart, name)(*args)
    except RuntimeError as e:
        raise CudaError(f"{name}: {e}") from None
    err, values = (result[0], result[1:]) if isinstance(result, tuple) else (result, ())
    if int(err) != 0:
        raise CudaError(f"{name}: {getattr(err, 'name', err)} ({int(err)})")
    return values[0] if len(values) == 1 else (values or None)


def gpu_count() -> int:
    """Number of CUDA devices cuda-python sees (0 without cuda-python, a driver or a GPU). Never touches TensorRT."""
    try:
        cudart = import_cudart()
        return int(_call(cudart, "cudaGetDeviceCount"))
    except (BackendUnavailableError, CudaError, OSError):
        return 0


def cuda_gpu_info(index: int = 0) -> GpuInfo | None:
    """Name, compute capability and SM count of CUDA device `index` (None where there is none). Its dla_cores is 0:
    CUDA knows nothing of DLA; callers holding a TensorRT object fill it in (dla_core_count)."""
    if gpu_count() <= index:
        return None
    cudart = import_cudart()
    try:
        props = _call(cudart, "cudaGetDeviceProperties", index)
    except CudaError:
        return None
    name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
    return GpuInfo(
        name=name.split("\x00", 1)[0].strip(),
        compute_capability=(int(props.major), int(props.minor)),
        sm_count=int(props.multiProcessorCount),
    )


def dla_core_count(trt_object: Any) -> int:
    """DLA cores a TensorRT Builder or Runtime reports (0 for TensorRT-RTX and GPUs without DLA). Only call it on a
    host where a GPU was seen: creating either object without one crashes full TensorRT."""
    return int(getattr(trt_object, "num_DLA_cores", 0) or 0)


# ----------------------------------------------------------------------------------------------- one engine


class _Pinned:
    """A page-locked host buffer seen as a flat numpy array (pinned memory makes async copies truly async)."""

    def __init__(self, cudart: Any, nbytes: int, dtype: np.dtype) -> None:
        self.ptr = int(_call(cudart, "cudaMallocHost", nbytes))
        self.nbytes = nbytes
        raw = (ctypes.c_char * nbytes).from_address(self.ptr)
        self.array = np.frombuffer(raw, dtype=dtype)


class EngineRunner:
    """One deserialized engine with its context, stream and buffers. Not thread-safe: the backend serialises calls.

    CUDA graphs (cuda_graph=True), as trtexec --useCudaGraph does them: for each batch size, one plain
    execute_async_v3 + synchronize at that shape, then capture and replay. A capture that fails is ended, logged
    once in `graph_failures`, and that batch size runs plainly from then on. TensorRT-RTX allocates lazily inside
    enqueue unless the context's memory is the caller's, so under cuda_graph its context is USER_MANAGED.
    A batch below a fixed-shape (DLA) engine's min batch is padded with zero rows, and only the real rows returned:
    the model's rows are independent (eval-mode BatchNorm), so padding changes no number of the real rows.
    """

    def __init__(
        self,
        trt: Any,
        cudart: Any,
        runtime: Any,
        plan: bytes,
        *,
        graph: str,
        inputs: tuple[str, ...],
        outputs: tuple[str, ...],
        device_index: int,
        cuda_graph: bool,
        source: str,
        user_memory: bool = False,
    ) -> None:
        self.trt, self.cudart, self.graph, self.source = trt, cudart, graph, source
        self.device_index = device_index
        self.use_cuda_graph = cuda_graph
        self.user_memory = user_memory
        self._device: dict[str, int] = {}
        self._host: dict[str, _Pinned] = {}
        self._graphs: dict[int, Any] = {}
        self._scratch = 0
        self._last_run: int | None = None  # the batch size the context last ran (plainly or as a graph)
        self.graph_failures: dict[int, str] = {}
        self.stream = None
        self.context = None
        self.engine = runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise BackendError(
                f"{source}: TensorRT could not deserialize this engine (built by another TensorRT "
                "version or for another GPU?); rebuild it with python -m export.tensorrt.build"
            )
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
            raise BackendError(
                f"{self.source}: engine has inputs {list(ins)} and outputs {list(outs)}, "
                f"expected {list(inputs)} and {list(outputs)} for graph {self.graph!r}"
            )
        self.inputs, self.outputs = inputs, outputs
        if eng.num_optimization_profiles < 1:
            raise BackendError(f"{self.source}: engine has no optimization profile")
        lo, _, hi = (tuple(s) for s in eng.get_tensor_profile_shape(inputs[0], 0))
        self.min_batch, self.max_batch = int(lo[0]), int(hi[0])
        _call(self.cudart, "cudaSetDevice", self.device_index)
        if self.user_memory:
            # TensorRT-RTX (1.2+ release notes): stream capture needs application-provided memory; its own CUDA
            # graphs must be off under ours, and kernels specialised up front (lazy specialisation swaps kernels
            # mid-run, which would invalidate a captured graph).
            config = eng.create_runtime_config()
            config.set_execution_context_allocation_strategy(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
            config.cuda_graph_strategy = trt.CudaGraphStrategy.DISABLED
            config.dynamic_shapes_kernel_specialization_strategy = trt.DynamicShapesKernelSpecializationStrategy.EAGER
            self.context = eng.create_execution_context(config)
        else:
            self.context = eng.create_execution_context()
        if self.context is None:
            raise BackendError(f"{self.source}: could not create an execution context (out of GPU memory?)")
        if self.user_memory:
            size = int(eng.device_memory_size_v2)
            self._scratch = int(_call(self.cudart, "cudaMalloc", max(size, 256)))
            self.context.set_device_memory(self._scratch, size)
        self.dtypes = {n: np.dtype(trt.nptype(eng.get_tensor_dtype(n))) for n in names}
        for n in inputs:
            shape = tuple(eng.get_tensor_profile_shape(n, 0)[2])
            if not self.context.set_input_shape(n, shape):
                raise BackendError(f"{self.source}: cannot set input {n!r} to the profile's max shape {shape}")
        shapes = {n: tuple(self.context.get_tensor_shape(n)) for n in names}
        self.item_shapes = {n: s[1:] for n, s in shapes.items()}
        self.stream = _call(self.cudart, "cudaStreamCreate")
        for n in names:
            nbytes = int(np.prod(shapes[n])) * self.dtypes[n].itemsize
            self._device[n] = int(_call(self.cudart, "cudaMalloc", nbytes))
            self._host[n] = _Pinned(self.cudart, nbytes, self.dtypes[n])
            if not self.context.set_tensor_address(n, self._device[n]):
                raise BackendError(f"{self.source}: set_tensor_address failed for {n!r}")

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = next(iter(feeds.values())).shape[0]
        if n >= self.min_batch:
            return self._run(feeds)
        # Pad to the engine's smallest batch; the padded rows are computed and dropped.
        m = self.min_batch
        padded = {k: np.concatenate([v, np.zeros((m - n, *v.shape[1:]), dtype=v.dtype)]) for k, v in feeds.items()}
        return {k: v[:n].copy() for k, v in self._run(padded).items()}

    def _run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        cudart, ctx = self.cudart, self.context
        n = next(iter(feeds.values())).shape[0]
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
            _call(
                cudart,
                "cudaMemcpyAsync",
                self._device[name],
                self._host[name].ptr,
                count * self.dtypes[name].itemsize,
                h2d,
                self.stream,
            )
        self._execute(n)
        shapes = {}
        for name in self.outputs:
            shape = tuple(ctx.get_tensor_shape(name))
            shapes[name] = shape
            _call(
                cudart,
                "cudaMemcpyAsync",
                self._host[name].ptr,
                self._device[name],
                int(np.prod(shape)) * self.dtypes[name].itemsize,
                d2h,
                self.stream,
            )
        _call(cudart, "cudaStreamSynchronize", self.stream)
        # Copy out of the pinned buffers: they are overwritten by the next call.
        return {
            name: self._host[name].array[: int(np.prod(s))].reshape(s).astype(np.float32, copy=True)
            for name, s in shapes.items()
        }

    def _enqueue(self, n: int) -> None:
        if not self.context.execute_async_v3(int(self.stream)):
            raise BackendError(f"{self.source}: execute_async_v3 failed (batch {n})")

    def _execute(self, n: int) -> None:
        if not self.use_cuda_graph or n in self.graph_failures:
            self._enqueue(n)
        elif n in self._graphs and self._last_run == n:
            _call(self.cudart, "cudaGraphLaunch", self._graphs[n], self.stream)
        elif n in self._graphs:
            # The context last ran another shape: TensorRT's shape-dependent updates happen inside an enqueue, not
            # inside the captured graph, so the first call back at this shape runs plainly; the next one replays.
            self._enqueue(n)
        else:
            # First time at this shape: a plain run settles TensorRT's shape-dependent state (and is this call's
            # result if the capture fails); capture starts only after it has finished.
            self._enqueue(n)
            _call(self.cudart, "cudaStreamSynchronize", self.stream)
            try:
                self._graphs[n] = self._capture(n)
            except Exception as e:  # noqa: BLE001 - any capture failure: this call's result is already computed
                self.graph_failures[n] = f"{type(e).__name__}: {e}"
                warnings.warn(
                    f"{self.source}: CUDA graph capture failed at batch {n} ({e}); this batch size runs "
                    "without a CUDA graph from now on",
                    RuntimeWarning,
                    stacklevel=2,
                )
        self._last_run = n

    def _capture(self, n: int) -> Any:
        """Capture one execute_async_v3 at the current shape; returns the instantiated graph (the input is already
        on the device, so the captured launch recomputes this call's result)."""
        cudart = self.cudart
        capturable = getattr(self.context, "is_stream_capturable", None)  # TensorRT-RTX asks first
        if capturable is not None and not capturable(int(self.stream)):
            raise BackendError("the execution context says this stream cannot be captured")
        mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        _call(cudart, "cudaStreamBeginCapture", self.stream, mode)
        ok = False
        try:
            ok = bool(self.context.execute_async_v3(int(self.stream)))
        finally:
            graph = _call(cudart, "cudaStreamEndCapture", self.stream)  # always ends the capture
        try:
            if not ok:
                raise BackendError("execute_async_v3 failed while capturing")
            exe = _call(cudart, "cudaGraphInstantiate", graph, 0)
        finally:
            if graph is not None:
                cudart.cudaGraphDestroy(graph)
        return exe

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
        # Context before engine (a context refers to its engine), and before the memory it was given.
        self.context = None
        if self._scratch:
            cudart.cudaFree(self._scratch)
            self._scratch = 0
        self.engine = None


def _built_for_user_memory(info: TrtInfo, sidecar: Mapping[str, Any] | None) -> bool:
    """A TensorRT-RTX engine built with REQUIRE_USER_ALLOCATION (every plan of this tool): only such an engine can run
    on caller-provided memory of a fixed size, which stream capture needs. Others run plainly under cuda_graph (their
    capture fails and falls back)."""
    flags = ((sidecar or {}).get("build_options") or {}).get("set_flags") or ()
    return info.flavour == "trt_rtx" and "REQUIRE_USER_ALLOCATION" in flags


# ----------------------------------------------------------------------------------------------- the backend


class TensorRTBackend(Backend):
    name = "tensorrt"
    options = ("engines", "cuda_graph", "flavour", "dla_core", "check_sidecar")
    device_kinds = ("cuda",)
    thread_safe = False  # one context and one set of buffers per graph; the base class's lock serialises calls

    def __init__(
        self, manifest: Manifest, *, device: Device, precision: str, graphs: tuple[str, ...], check_finite: bool = True
    ) -> None:
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
            return (
                f"no {precision} engine for {missing} in {Path(bundle) / ENGINES_DIR} "
                f"(build with python -m export.tensorrt.build {bundle} --precision {precision})"
            )
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
        **options: Any,
    ) -> "TensorRTBackend":
        """Find each graph's engine for this machine (or options['engines'][graph]), check its sidecar, load it.

        options: engines {graph: plan file} (default: BUNDLE/engines/<name for this machine>); cuda_graph (bool);
        flavour "trt" | "trt_rtx" (which TensorRT when both are installed); dla_core (int: run the engines built for
        that Jetson DLA core; default None, the GPU engines); check_sidecar (default True; False only for the
        builder, which verifies an engine it has just built and has not yet given a sidecar).
        """
        unknown = sorted(set(options) - set(cls.options))
        if unknown:
            raise BackendError(f"tensorrt backend: unknown option(s) {unknown}; it accepts {list(cls.options)}")
        if not device.is_cuda:
            raise BackendError(f"tensorrt backend runs on CUDA devices; got device {device}")
        dla_core = options.get("dla_core")
        if dla_core is not None and (isinstance(dla_core, bool) or not isinstance(dla_core, int) or dla_core < 0):
            raise BackendError(f"tensorrt backend: dla_core: expected a DLA core index >= 0 or None, got {dla_core!r}")
        trt, info = import_tensorrt(options.get("flavour"))
        cudart = import_cudart()
        gpu = cuda_gpu_info(device.index)
        if gpu is None:
            raise BackendUnavailableError(
                f"tensorrt backend: no CUDA GPU {device} visible (cuda-python sees {gpu_count()} device(s))"
            )
        try:
            _call(cudart, "cudaSetDevice", device.index)
        except CudaError as e:
            raise BackendUnavailableError(f"tensorrt backend: {e}") from None
        runtime = trt.Runtime(trt_logger(trt))  # only ever created after a GPU was seen
        dla_cores = dla_core_count(runtime)
        if dla_core is not None and dla_core >= dla_cores:
            raise BackendUnavailableError(
                f"tensorrt backend: dla_core {dla_core} asked for, this device has {dla_cores} DLA core(s)"
            )
        machine = MachineInfo(trt=info, gpu=dataclasses.replace(gpu, dla_cores=dla_cores), platform=host_platform())
        given = dict(options.get("engines") or {})
        check = bool(options.get("check_sidecar", True))
        files, sidecars = {}, {}
        for g in graphs:
            path = (
                Path(given[g])
                if g in given
                else locate_engine(bundle, machine=machine, graph=g, precision=precision, dla_core=dla_core)
            )
            if check:
                sidecars[g] = require_usable(
                    bundle, path, machine=machine, manifest=manifest, graph=g, precision=precision, dla_core=dla_core
                ).to_dict()
            else:
                sidecars[g] = read_sidecar(sidecar_path(path)).to_dict() if sidecar_path(path).is_file() else {}
            files[g] = path
        return cls._load(
            trt,
            info,
            runtime,
            manifest,
            files,
            sidecars,
            device=device,
            precision=precision,
            check_finite=check_finite,
            cuda_graph=bool(options.get("cuda_graph", False)),
            dla_core=dla_core,
        )

    @classmethod
    def _load(
        cls,
        trt: Any,
        info: TrtInfo,
        runtime: Any,
        manifest: Manifest,
        files: Mapping[str, Path],
        sidecars: Mapping[str, dict],
        *,
        device: Device,
        precision: str,
        check_finite: bool,
        cuda_graph: bool,
        dla_core: int | None,
    ) -> "TensorRTBackend":
        cudart = import_cudart()
        self = cls(manifest, device=device, precision=precision, graphs=tuple(files), check_finite=check_finite)
        self.engine_errors = (CudaError, RuntimeError)
        self.trt_info, self.cuda_graph, self.sidecars = info, cuda_graph, dict(sidecars)
        self._runtime = runtime
        try:
            # A DLA engine is deserialized with the runtime on the DLA core asked for (trtexec's --useDLACore does
            # the same at load); GPU engines leave the runtime's default.
            if dla_core is not None:
                self._runtime.DLA_core = int(dla_core)
            for g, path in files.items():
                spec = manifest.graph(g)
                self.runners[g] = EngineRunner(
                    trt,
                    cudart,
                    self._runtime,
                    Path(path).read_bytes(),
                    graph=g,
                    inputs=tuple(t.name for t in spec.inputs),
                    outputs=tuple(t.name for t in spec.outputs),
                    device_index=device.index,
                    cuda_graph=cuda_graph,
                    source=str(path),
                    user_memory=cuda_graph and _built_for_user_memory(info, sidecars.get(g)),
                )
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
        d.update(
            {
                "tensorrt": None if self.trt_info is None else self.trt_info.to_dict(),
                "cuda_graph": self.cuda_graph,
                "cuda_graph_failures": {g: dict(r.graph_failures) for g, r in self.runners.items() if r.graph_failures},
                "engines": dict(self.engine_files),
                "engine_parity": {g: s.get("parity", {}) for g, s in self.sidecars.items()},
            }
        )
        return d
