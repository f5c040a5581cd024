"""ONNX Runtime backend: one InferenceSession per graph, built on the graph's first call; provider from the device.

    device="cpu"                                      -> CPUExecutionProvider
    device="cuda[:N]"                                 -> CUDAExecutionProvider (device_id N), CPU for unsupported ops
    device="cuda[:N]", execution_provider="tensorrt"  -> TensorrtExecutionProvider, then CUDA, then CPU

load() checks that every requested graph's file is there; the file's sha256 (against vae.json) and the session are
done by the graph's first call, once, under a lock (`preload=True`: in load()), so a decoder-only process never pays
for the encoder (docs/performance.md#cold-start). A changed file, one ONNX Runtime cannot load, or one whose inputs /
outputs disagree with vae.json raises BundleError naming the file. Precision variants load by `precision=`; float16
graph inputs are cast here and outputs cast back to float32. fp16 is a GPU precision: the CPU provider has no native
FP16 kernels on x86, so on the CPU an fp16 variant runs slower than fp32 (~2x; docs/performance.md#fp16-variants).
A build that lacks the provider, or a session that silently fell back to the CPU, is refused with
BackendUnavailableError. Options: OrtOptions' docstring.
`onnxruntime` is imported in open(), never at module import.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import numpy as np

from ..bundle import BundleError, Manifest, resolve_file
from ..errors import BackendError, BackendUnavailableError
from .base import Backend, Device, check_graph_io, check_option_types, engine_installed, import_engine

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
OPT_LEVELS = ("disable", "basic", "extended", "all")
_NP_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}
_ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64"}


def _import_ort():
    return import_engine(
        "onnxruntime", "onnxruntime", "pip install onnxruntime (CPU) or onnxruntime-gpu (CUDA / TensorRT providers)"
    )


class OrtSession(NamedTuple):
    """One InferenceSession and what a call needs from it; built once per graph (and per batch_split worker)."""

    session: Any  # onnxruntime.InferenceSession
    input_types: dict[str, Any]  # input name -> the numpy dtype it takes (float16 inputs: feeds are cast to it)
    output_names: list[str]  # in the session's order


@dataclass(frozen=True)
class OrtOptions:
    """The ONNX Runtime backend's options, checked on construction (BackendError naming the option, the expected and
    the actual value). load(..., **options) reaches them through from_mapping; the field names are the option names.

    threads                   intra-op threads (default: ONNX Runtime's choice, one per physical core)
    inter_op_threads          inter-op threads (default: ONNX Runtime's choice)
    graph_optimization_level  "disable" | "basic" | "extended" | "all" (default "all", as deployed)
    execution_provider        "cpu" | "cuda" | "tensorrt" (default: from the device)
    io_binding                bind inputs/outputs explicitly (default: True on CUDA, False on CPU); one binding per
                              call, so thread-safe; it works on CPU too, which is how the code path is tested here
    provider_options          dict of extra options for the chosen provider (e.g. trt_engine_cache_enable)
    max_batch                 largest batch per session call (default: unlimited here); only matters when smaller
                              than load(..., max_chunk=N), which already chunks every call (runtime/backends/base.py)
    spinning                  "session.intra_op.allow_spinning" (default: ONNX Runtime's, on): fastest on cores of
                              one's own; pass False on cores shared with another busy process, where spinning
                              threads steal its time (docs/performance.md#onnx-runtime-session-settings)
    preload                   create every loaded graph's session in load() (default False: on its first call)
    batch_split               CPU only: smallest batch cut into one contiguous chunk per core (`threads`, default
                              one per physical core), each run by its own single-threaded session of the same graph
                              on its own thread (same arithmetic per image). Default: the decoder from batch 32, the
                              encoder never; an integer N >= 2: every graph; False: never. It applies to each chunk
                              of max_chunk / max_batch; the per-core sessions are built on the first split call
                              (docs/performance.md#batch-split).
    """

    threads: int | None = None
    inter_op_threads: int | None = None
    graph_optimization_level: str = "all"
    execution_provider: str | None = None
    io_binding: bool | None = None
    provider_options: Mapping[str, Any] | None = None
    max_batch: int | None = None
    spinning: bool | None = None
    preload: bool | None = False
    batch_split: int | bool | None = None

    def __post_init__(self) -> None:
        check_option_types(
            positive_ints={opt: getattr(self, opt) for opt in ("threads", "inter_op_threads", "max_batch")},
            bools={opt: getattr(self, opt) for opt in ("spinning", "preload", "io_binding")},
            batch_split=self.batch_split,
        )
        if not isinstance(self.graph_optimization_level, str) or self.graph_optimization_level not in OPT_LEVELS:
            raise BackendError(
                f"option graph_optimization_level: expected one of {list(OPT_LEVELS)}, "
                f"got {self.graph_optimization_level!r}"
            )
        ep = self.execution_provider
        if ep is not None and (not isinstance(ep, str) or ep not in PROVIDERS):
            raise BackendError(f"option execution_provider: expected one of {sorted(PROVIDERS)}, got {ep!r}")
        po = self.provider_options
        if po is not None:
            if not isinstance(po, Mapping) or not all(isinstance(k, str) for k in po):
                raise BackendError(
                    f"option provider_options: expected a mapping of provider option names to "
                    f"values, got {type(po).__name__} {po!r}"
                )
            object.__setattr__(
                self, "provider_options", dict(po)
            )  # a copy: later changes to the caller's do not leak in

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The option names, in declaration order (OnnxRuntimeBackend.options)."""
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any]) -> "OrtOptions":
        """The options load(..., **options) was given; an unknown name is a BackendError listing the known ones."""
        unknown = sorted(set(options) - set(cls.names()))
        if unknown:
            raise BackendError(f"backend 'onnxruntime': unknown option(s) {unknown}; it accepts {list(cls.names())}")
        return cls(**options)

    def provider(self, device: Device) -> str:
        """The execution provider key ("cpu" | "cuda" | "tensorrt"): the option, else the device's kind; it must run
        on the device (a GPU provider on the CPU, or the CPU provider on a GPU, is a BackendError)."""
        ep = self.execution_provider or device.kind
        if ep not in PROVIDERS:
            raise BackendError(f"option execution_provider: expected one of {sorted(PROVIDERS)}, got {ep!r}")
        if (ep == "cpu") != (device.kind == "cpu"):
            raise BackendError(f"option execution_provider={ep!r} does not run on device {str(device)!r}")
        return ep

    def split_min_batch(self, graphs: tuple[str, ...], defaults: Mapping[str, int]) -> dict[str, int]:
        """batch_split per graph: graph -> smallest batch cut across the cores; graphs never split are left out."""
        if self.batch_split is False:
            return {}
        split = {g: defaults.get(g) if self.batch_split is None else self.batch_split for g in graphs}
        return {g: n for g, n in split.items() if n}


class OnnxRuntimeBackend(Backend):
    """A bundle's graphs on ONNX Runtime. Options: load(..., **options) with OrtOptions' fields (see there)."""

    name = "onnxruntime"
    options = OrtOptions.names()
    #: Default smallest batch batch_split cuts across the cores, per graph: the decoder gains from 32 up, the encoder
    #: is slower split, so it is not in the default (docs/performance.md#batch-split).
    DEFAULT_BATCH_SPLIT = {"decoder": 32}
    thread_safe = True  # InferenceSession.run is safe to call concurrently; bindings are per call

    def __init__(
        self,
        manifest: Manifest,
        *,
        device: Device,
        precision: str,
        graphs: tuple[str, ...],
        check_finite: bool,
        options: OrtOptions,
        ort_module: Any,
        files: Mapping[str, Path],
        hashes: Mapping[str, str] | None = None,
    ) -> None:
        """open() is the way in: it checks the provider is in this onnxruntime build and the graph files are there."""
        super().__init__(manifest, device=device, precision=precision, graphs=graphs, check_finite=check_finite)
        self.ort_options = options
        self._ort = ort_module
        self._files = dict(files)
        self._hashes = dict(hashes or {})  # graph -> sha256 from vae.json, checked before its session is built
        ep = options.provider(device)
        self._provider_chain = _provider_chain(ep, device, options.provider_options)
        self.providers = [p for p, _ in self._provider_chain]
        self.io_binding = device.is_cuda if options.io_binding is None else options.io_binding
        self.spinning = options.spinning  # None: ONNX Runtime's default (on)
        self._max_batch = options.max_batch
        level = options.graph_optimization_level
        self._so = _session_options(ort_module, level, options.threads, options.inter_op_threads, options.spinning)
        # batch_split: graph -> smallest batch whose chunks run on split_workers single-threaded sessions, one per
        # core; only on the CPU provider, where the cores are the device
        split_min = options.split_min_batch(graphs, self.DEFAULT_BATCH_SPLIT)
        self.split_workers = (options.threads or physical_cores()) if ep == "cpu" and split_min else 1
        self.split_min_batch = split_min if self.split_workers > 1 else {}
        self._worker_so = _session_options(ort_module, level, 1, 1, None) if self.split_workers > 1 else None
        # graph -> its session(s), published whole once built (a dict store is atomic)
        self._sessions: dict[str, OrtSession] = {}
        self._workers: dict[str, list[OrtSession]] = {}
        self._create_lock = threading.Lock()
        self._pool: _ChunkThreads | None = None  # created with the first worker sessions
        state = ort_module.capi.onnxruntime_pybind11_state
        self.engine_errors = tuple(
            v
            for v in vars(state).values()
            if isinstance(v, type) and issubclass(v, Exception) and v.__module__ == state.__name__
        )

    @classmethod
    def unavailable_reason(cls, bundle: Path, manifest: Manifest, device: Device, precision: str) -> str | None:
        if not engine_installed("onnxruntime"):
            return "the onnxruntime package is not installed"
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
    ) -> "OnnxRuntimeBackend":
        """options: OrtOptions' fields by name. Every graph file must be present now; its sha256 is checked, and its
        session built, on first use (preload=True: here)."""
        opts = OrtOptions.from_mapping(options)
        ep = opts.provider(device)
        ort = _import_ort()
        available = ort.get_available_providers()
        if PROVIDERS[ep] not in available:
            raise BackendUnavailableError(
                f"backend 'onnxruntime' on {device}: {PROVIDERS[ep]} is not in this onnxruntime build "
                f"(available: {available}); install onnxruntime-gpu for CUDA / TensorRT"
            )
        files: dict[str, Path] = {}
        hashes: dict[str, str] = {}
        for graph in graphs:
            name, hashes[graph] = manifest.graph_file(graph, precision)
            files[graph] = resolve_file(bundle, name)
        backend = cls(
            manifest,
            device=device,
            precision=precision,
            graphs=graphs,
            check_finite=check_finite,
            options=opts,
            ort_module=ort,
            files=files,
            hashes=hashes,
        )
        if opts.preload:
            for graph in graphs:
                backend._session(graph)
        return backend

    def _session(self, graph: str) -> OrtSession:
        """The graph's session (created on the first call, once, whichever thread gets here first)."""
        entry = self._sessions.get(graph)
        if entry is None:
            with self._create_lock:
                entry = self._sessions.get(graph)
                if entry is None:
                    entry = self._create_session(graph)
                    self._sessions[graph] = entry
        return entry

    def _worker_sessions(self, graph: str) -> list[OrtSession]:
        """batch_split's single-threaded sessions of the graph, one per worker (built on the first split call). The
        file is checked again (sha256, then each session's inputs/outputs): it may have changed since the main
        session was built, and a split batch must never run another model than an unsplit one."""
        entry = self._workers.get(graph)
        if entry is None:
            with self._create_lock:
                entry = self._workers.get(graph)
                if entry is None:  # the file's sha256 once, each session's inputs/outputs in _create_session
                    entry = [
                        self._create_session(graph, self._worker_so, check_hash=i == 0)
                        for i in range(self.split_workers)
                    ]
                    if self._pool is None:
                        import weakref

                        self._pool = _ChunkThreads(self.split_workers - 1)
                        # a runtime dropped without close() still ends its threads
                        self._pool_finalizer = weakref.finalize(self, self._pool.stop)
                    self._workers[graph] = entry
        return entry

    def _create_session(self, graph: str, options: Any = None, check_hash: bool = True) -> OrtSession:
        ort, path = self._ort, self._files[graph]
        if check_hash:
            resolve_file(path.parent, path.name, self._hashes.get(graph))  # unchanged since export, or BundleError
        state = ort.capi.onnxruntime_pybind11_state
        try:
            sess = ort.InferenceSession(str(path), options or self._so, providers=self._provider_chain)
        except (
            state.Fail,
            state.InvalidProtobuf,
            state.InvalidGraph,
            state.NoSuchFile,
            state.NotImplemented,
            state.InvalidArgument,
            state.RuntimeException,
            state.EPFail,
        ) as e:
            raise BundleError(
                f"{path}: ONNX Runtime cannot load it: {type(e).__name__}: {str(e).strip().splitlines()[0][:300]}"
            ) from None
        got = sess.get_providers()
        if got[0] != self.providers[0]:
            raise BackendUnavailableError(
                f"backend 'onnxruntime' on {self.device}: asked for {self.providers[0]} but the session for "
                f"{path.name} runs on {got} (CUDA/TensorRT libraries missing or no GPU?)"
            )
        _check_io(path, sess, self.manifest.graphs[graph])
        return OrtSession(
            sess,
            {i.name: _NP_TYPES.get(i.type, np.float32) for i in sess.get_inputs()},
            [o.name for o in sess.get_outputs()],
        )

    def max_batch(self, graph: str) -> int | None:
        return self._max_batch

    def _run(self, graph: str, feeds: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        n = next(iter(feeds.values())).shape[0]
        if n >= self.split_min_batch.get(graph, n + 1):
            return self._run_split(graph, feeds, n)
        return self._run_one(self._session(graph), feeds)

    def _run_one(self, entry: OrtSession, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        sess, types, names = entry  # unpacked: a plain (session, input_types, output_names) tuple works too
        feeds = {k: (v if types[k] is np.float32 else v.astype(types[k])) for k, v in feeds.items()}
        if not self.io_binding:
            return dict(zip(names, sess.run(names, feeds)))
        binding = sess.io_binding()  # one per call: an IOBinding is not shareable between threads
        for k, v in feeds.items():
            binding.bind_cpu_input(k, v)
        for k in names:
            binding.bind_output(k, self.device.kind, self.device.index)
        sess.run_with_iobinding(binding)
        return dict(zip(names, binding.copy_outputs_to_cpu()))

    def _run_split(self, graph: str, feeds: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
        """batch_split: one contiguous chunk per worker session, the last one on the calling thread."""
        workers = self._worker_sessions(graph)
        k = min(len(workers), n)
        bounds = [n * i // k for i in range(k + 1)]
        chunks = [{name: v[bounds[i] : bounds[i + 1]] for name, v in feeds.items()} for i in range(k)]
        futures = [self._pool.submit(i, self._run_one, workers[i], chunks[i]) for i in range(k - 1)]
        try:
            last = self._run_one(workers[k - 1], chunks[k - 1])
        finally:
            parts = [f.result() for f in futures]  # always joined: no chunk outlives the call (or close())
        parts.append(last)
        return {name: np.concatenate([p[name] for p in parts]) for name in last}

    def _close(self) -> None:
        if self._pool is not None:
            self._pool_finalizer.detach()
            self._pool.shutdown()
        self._workers.clear()
        self._sessions.clear()

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "onnxruntime": self._ort.__version__,
            "providers": self.providers,
            "io_binding": self.io_binding,
            "spinning": self.spinning,
            "files": {g: p.name for g, p in self._files.items()},
            "sessions_created": sorted(self._sessions),
            "batch_split": (
                {
                    "min_batch": dict(self.split_min_batch),
                    "workers": self.split_workers,
                    "sessions_created": sorted(self._workers),
                }
                if self.split_min_batch
                else None
            ),
        }


class _ChunkThreads:
    """batch_split's helper threads: one daemon thread per extra worker, each with its own queue, so chunk i of a
    split call always runs on thread i (a shared pool could hand two chunks of one call to the same thread, one after
    the other). Concurrent split calls queue per worker, which bounds the busy threads by the number of workers.
    Between chunks a thread holds no reference to the backend, so an unclosed runtime can still be garbage-collected;
    its finalizer calls stop()."""

    def __init__(self, n: int) -> None:
        import queue

        self._queues = [queue.SimpleQueue() for _ in range(n)]
        self._threads: list[threading.Thread] = []
        try:
            for i, q in enumerate(self._queues):
                t = threading.Thread(target=_chunk_loop, args=(q,), name=f"vae-split-{i}", daemon=True)
                t.start()
                self._threads.append(t)
        except BaseException:
            self.stop()
            raise

    def submit(self, worker: int, fn: Any, *args: Any) -> Any:
        from concurrent.futures import Future

        future: Future = Future()
        self._queues[worker].put((fn, args, future))
        return future

    def stop(self) -> None:
        """Ask every thread to end after its current chunk (no join: safe from a finalizer on any thread)."""
        for q in self._queues:
            q.put(None)

    def shutdown(self) -> None:
        self.stop()
        for t in self._threads:
            t.join()


def _chunk_loop(q: Any) -> None:
    while (item := q.get()) is not None:
        fn, args, future = item
        del item
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(fn(*args))
            except BaseException as e:  # noqa: BLE001 - handed to the caller through the future
                future.set_exception(e)
        del fn, args, future  # nothing held between chunks: not the backend, not the caller's arrays


def _provider_chain(ep: str, device: Device, provider_options: Mapping[str, Any] | None) -> list[tuple[str, dict]]:
    """(provider, its options) in priority order; on a GPU the CPU provider stays last for ops the GPU providers lack.
    provider_options go to the first (the chosen) provider."""
    chain = {"cpu": ["cpu"], "cuda": ["cuda", "cpu"], "tensorrt": ["tensorrt", "cuda", "cpu"]}[ep]
    providers: list[tuple[str, dict]] = []
    for i, p in enumerate(chain):
        opts: dict[str, Any] = {} if p == "cpu" else {"device_id": device.index}
        if i == 0 and provider_options:
            opts.update(provider_options)
        providers.append((PROVIDERS[p], opts))
    return providers


def _session_options(
    ort: Any, level: str, threads: int | None, inter_op_threads: int | None, spinning: bool | None
) -> Any:
    so = ort.SessionOptions()
    so.log_severity_level = 3  # warnings go to stderr unasked; our own checks below report what matters
    if threads is not None:
        so.intra_op_num_threads = threads
    if inter_op_threads is not None:
        so.inter_op_num_threads = inter_op_threads
    if spinning is not None:
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    return so


def physical_cores() -> int:
    """Cores this process may run on, counting SMT siblings once: ONNX Runtime's default intra-op thread count.
    From /proc/cpuinfo (physical id, core id) restricted to the affinity mask; where that is unavailable (non-Linux,
    ARM kernels that list no core ids, as on Jetson, which has no SMT), the number of usable logical CPUs."""
    try:
        allowed = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        allowed = set(range(os.cpu_count() or 1))
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            blocks = f.read().split("\n\n")
    except OSError:
        return max(1, len(allowed))
    cores = set()
    for block in blocks:
        fields = dict(line.split(":", 1) for line in block.splitlines() if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        proc = fields.get("processor", "")
        if proc.isdigit() and "core id" in fields and int(proc) in allowed:
            cores.add((fields.get("physical id", "0"), fields["core id"]))
    return len(cores) if cores else max(1, len(allowed))


def _check_io(path: Path, sess: Any, spec) -> None:
    """The session's inputs/outputs must be the manifest's (names, ranks, static dims, a float dtype): base's check."""

    def io(args: Any) -> list[tuple[str, tuple[Any, ...], str]]:
        return [
            (a.name, tuple(a.shape), _ORT_DTYPES.get(a.type, a.type.removeprefix("tensor(").rstrip(")"))) for a in args
        ]

    check_graph_io(path, spec, io(sess.get_inputs()), io(sess.get_outputs()))
