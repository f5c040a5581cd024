"""The Backend protocol: one base class that validates, chunks, locks and closes; each engine adds a small hook.

A backend runs one bundle's graphs on one engine at one device and precision. `run(graph, feeds)` is defined once,
here, so every backend behaves the same:
1. the graph is one this backend loaded, the feeds are exactly its inputs (names from the manifest);
2. each input passes runtime.validation.check_input -> C-contiguous float32;
3. a batch larger than `chunk_size(graph)` (the smaller of `max_chunk` and the engine's own `max_batch(graph)`) runs
   chunk by chunk into one output array allocated once, so memory beyond the inputs and outputs is bounded by one
   chunk (docs/performance.md#bounded-memory);
4. the engine hook `_run(graph, feeds)` is called, under a lock unless `thread_safe`; its `engine_errors` become
   BackendError;
5. outputs are checked against the manifest (names, batch, static dims) and returned as float32 arrays.
`close()` waits for calls in flight, then releases the engine (`_close`) once; later calls raise ClosedError.
`Backend.open(bundle, manifest, ...)`, one per module, imports its engine lazily (never at module import) and accepts
only the names in `options`; a chosen backend whose engine is missing raises BackendUnavailableError.
"""

from __future__ import annotations

import abc
import importlib
import importlib.util
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar, Iterable, Mapping

import numpy as np

from ..bundle import GraphSpec, Manifest
from ..errors import BackendError, BackendUnavailableError, ClosedError, ShapeError
from ..validation import check_input, shape_str

_DEVICE = re.compile(r"^(cpu|cuda)(?::(\d+))?$")

#: Largest batch one engine call gets unless load(..., max_chunk=N) says otherwise: time is flat from 32 to 1024 on a
#: CPU while memory grows with the chunk; why 256: docs/performance.md#bounded-memory.
DEFAULT_MAX_CHUNK = 256
_FLOAT32 = np.dtype(np.float32)


# This CPU as /proc/cpuinfo describes it, parsed one way for the OpenVINO backend (native bf16), backend="auto"'s
# machine fingerprint (auto.py), the bf16 precision tool and the benchmark's environment record.
CPUINFO = "/proc/cpuinfo"
#: Keys that name the CPU model: x86 "model name"; on some aarch64 kernels "Hardware" or "cpu model".
MODEL_KEYS = ("model name", "hardware", "cpu model")
#: Keys that list the feature flags: x86 "flags", aarch64 "Features".
FLAG_KEYS = ("flags", "Features")


def _fields(path: str) -> list[tuple[str, str]]:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            text = f.read()
    except OSError:
        return []
    return [(key.strip(), value.strip()) for key, _, value in (line.partition(":") for line in text.splitlines())]


def cpu_model(path: str = CPUINFO) -> str:
    """The CPU's model name (the first MODEL_KEYS entry); "" where none is listed or the file cannot be read."""
    return next((value for key, value in _fields(path) if key.lower() in MODEL_KEYS), "")


def cpu_flags(path: str = CPUINFO) -> set[str]:
    """The CPU's feature flags (every FLAG_KEYS line); empty where the file cannot be read."""
    return {flag for key, value in _fields(path) if key in FLAG_KEYS for flag in value.split()}


# The one lazy-import idiom for inference engines: a backend module imports its engine (onnxruntime, openvino,
# tensorrt) only through these, when it opens, so `import runtime` stays numpy-only (tests/runtime/test_import.py).
# Everything else is imported at the top of its module.
def engine_installed(module: str) -> bool:
    """Whether `module` could be imported, without importing it (for unavailable_reason)."""
    return importlib.util.find_spec(module) is not None


def import_engine(backend: str, module: str, install: str) -> ModuleType:
    """The engine module `backend` runs on; a missing or broken package is a BackendUnavailableError naming the
    backend, the module, the cause and `install` (how to get it)."""
    try:
        return importlib.import_module(module)
    except (ImportError, OSError) as e:
        raise BackendUnavailableError(
            f"backend {backend!r}: {module} is not importable here ({e}); {install}"
        ) from None


def check_max_chunk(value: Any) -> int | None:
    """The max_chunk option: a positive integer, or None for no limit (one engine call per batch, memory unbounded)."""
    if value is not None and (not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1):
        raise BackendError(f"option max_chunk: expected a positive integer or None (no limit), got {value!r}")
    return None if value is None else int(value)


def check_option_types(
    positive_ints: Mapping[str, Any] | None = None, bools: Mapping[str, Any] | None = None, batch_split: Any = None
) -> None:
    """The option checks every backend shares: positive integers, True/False flags (None: the engine's default each),
    and batch_split (None, False, or a batch size >= 2). BackendError names the option and the value."""
    for opt, value in (positive_ints or {}).items():
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise BackendError(f"option {opt}: expected a positive integer, got {value!r}")
    for opt, value in (bools or {}).items():
        if value is not None and not isinstance(value, bool):
            raise BackendError(f"option {opt}: expected True or False, got {value!r}")
    split = batch_split
    if (
        split is not None
        and split is not False
        and (not isinstance(split, int) or isinstance(split, bool) or split < 2)
    ):
        raise BackendError(f"option batch_split: expected False or a batch size >= 2, got {split!r}")


@dataclass(frozen=True)
class Device:
    """Where a backend runs: 'cpu', or 'cuda' with a device index ('cuda' means 'cuda:0')."""

    kind: str
    index: int = 0

    @classmethod
    def parse(cls, text: "str | Device") -> "Device":
        if isinstance(text, Device):
            return text
        m = _DEVICE.match(str(text).strip().lower())
        if not m or (m.group(1) == "cpu" and m.group(2) is not None):
            raise BackendError(f"device: expected 'cpu', 'cuda' or 'cuda:N', got {text!r}")
        return cls(m.group(1), int(m.group(2) or 0))

    @property
    def is_cuda(self) -> bool:
        return self.kind == "cuda"

    def __str__(self) -> str:
        return "cpu" if self.kind == "cpu" else f"cuda:{self.index}"


class Backend(abc.ABC):
    """Base of every backend; see the module docstring. Subclasses implement open(), _run() and usually _close()."""

    name: ClassVar[str] = ""
    #: Option names open() accepts (load(**options) is checked against this before anything is imported).
    options: ClassVar[tuple[str, ...]] = ()
    precisions: ClassVar[tuple[str, ...]] = ("fp32", "fp16", "int8")
    device_kinds: ClassVar[tuple[str, ...]] = ("cpu", "cuda")
    #: False: the base serialises _run with a lock (e.g. one TensorRT execution context shared by all threads).
    thread_safe: ClassVar[bool] = True

    def __init__(
        self, manifest: Manifest, *, device: Device, precision: str, graphs: Iterable[str], check_finite: bool = True
    ) -> None:
        self.manifest = manifest
        self.device = device
        self.precision = precision
        self.graphs = tuple(graphs)
        self.check_finite = check_finite
        #: The engine's exception types, turned into BackendError at the boundary (set by open()).
        self.engine_errors: tuple[type[BaseException], ...] = ()
        self._lock = threading.Lock()  # serialises _run when not thread_safe
        self._state = threading.Condition()  # guards _closed and _in_flight
        self._in_flight = 0
        self._closed = False
        self._max_chunk: int | None = DEFAULT_MAX_CHUNK

    @property
    def max_chunk(self) -> int | None:
        """Largest batch one engine call gets (None: no limit); see DEFAULT_MAX_CHUNK. Settable, checked."""
        return self._max_chunk

    @max_chunk.setter
    def max_chunk(self, value: int | None) -> None:
        self._max_chunk = check_max_chunk(value)

    # ------------------------------------------------------------------ to implement
    @classmethod
    @abc.abstractmethod
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
    ) -> "Backend":
        """Build a ready backend for `graphs` of the bundle at `bundle` (a folder holding vae.json)."""

    @classmethod
    def unavailable_reason(cls, bundle: Path, manifest: Manifest, device: Device, precision: str) -> str | None:
        """Why backend="auto" must not pick this backend here (None: it can). Must be cheap and import nothing heavy."""
        return None

    @abc.abstractmethod
    def _run(self, graph: str, feeds: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        """Run one validated chunk: C-contiguous float32 inputs, batch <= max_batch(graph). Returns every output."""

    def _close(self) -> None:  # noqa: B027 - an optional hook: a backend with nothing to release keeps it
        """Release the engine (sessions, contexts, buffers). Called once."""

    def max_batch(self, graph: str) -> int | None:
        """Largest batch the engine itself takes in one _run call (None: unlimited). Bigger batches are chunked."""
        return None

    def chunk_size(self, graph: str) -> int | None:
        """Largest batch one _run call gets: the smaller of max_chunk and max_batch(graph) (None: no limit)."""
        limits = [x for x in (self._max_chunk, self.max_batch(graph)) if x is not None]
        return min(limits) if limits else None

    def describe(self) -> dict[str, Any]:
        """Provenance for reports: engine versions, providers, files. Subclasses extend it."""
        return {
            "backend": self.name,
            "device": str(self.device),
            "precision": self.precision,
            "graphs": list(self.graphs),
            "max_batch": {g: self.max_batch(g) for g in self.graphs},
            "max_chunk": self._max_chunk,
        }

    # ------------------------------------------------------------------ the protocol
    @property
    def closed(self) -> bool:
        return self._closed

    def spec(self, graph: str) -> GraphSpec:
        if graph not in self.graphs:
            raise BackendError(
                f"graph {graph!r} is not loaded by this {self.name} backend "
                f"(loaded: {list(self.graphs)}; the bundle has {sorted(self.manifest.graphs)})"
            )
        return self.manifest.graphs[graph]

    def run(self, graph: str, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Validate `feeds`, run `graph` (in chunks of chunk_size(graph)), return {output name: float32 array}."""
        spec = self.spec(graph)
        if len(spec.inputs) == 1 and len(feeds) == 1 and spec.inputs[0].name in feeds:  # one input: fewer steps
            t = spec.inputs[0]
            arrays = {t.name: check_input(t, feeds[t.name], check_finite=self.check_finite)}
            n = arrays[t.name].shape[0]
        else:
            arrays, n = self._checked_inputs(graph, spec, feeds)
        limit = self.chunk_size(graph)
        self._enter()
        try:
            if limit is None or n <= limit:
                return self._checked_run(graph, spec, arrays, n)
            return self._chunked_run(graph, spec, arrays, n, limit)
        finally:
            self._leave()

    def _checked_inputs(
        self, graph: str, spec: GraphSpec, feeds: Mapping[str, Any]
    ) -> tuple[dict[str, np.ndarray], int]:
        want = [t.name for t in spec.inputs]
        if set(feeds) != set(want):
            raise BackendError(f"graph {graph!r}: expected inputs {want}, got {sorted(feeds)}")
        arrays = {t.name: check_input(t, feeds[t.name], check_finite=self.check_finite) for t in spec.inputs}
        sizes = {n: a.shape[0] for n, a in arrays.items()}
        if len(set(sizes.values())) > 1:
            raise ShapeError(f"graph {graph!r}: inputs have different batch sizes {sizes}")
        return arrays, next(iter(sizes.values()))

    def _chunked_run(
        self, graph: str, spec: GraphSpec, arrays: dict[str, np.ndarray], n: int, limit: int
    ) -> dict[str, np.ndarray]:
        """Run `limit` rows at a time (views of the inputs, no copies), each chunk's outputs written straight into
        outputs allocated once for all n rows: no list of parts and no concatenation, which would double the output."""
        outs: dict[str, np.ndarray] = {}
        for i in range(0, n, limit):
            m = min(limit, n - i)
            part = self._checked_run(graph, spec, {k: v[i : i + m] for k, v in arrays.items()}, m)
            for k, a in part.items():
                if k not in outs:
                    outs[k] = np.empty((n, *a.shape[1:]), np.float32)
                elif a.shape[1:] != outs[k].shape[1:]:
                    raise BackendError(
                        f"{self.name} backend: output {k!r} of graph {graph!r} has shape "
                        f"{tuple(a.shape)} for rows {i}..{i + m - 1}, but {tuple(outs[k].shape)} "
                        f"for the rows before"
                    )
                outs[k][i : i + m] = a
            del part  # this chunk's outputs go before the next chunk runs
        return outs

    def _checked_run(self, graph: str, spec: GraphSpec, feeds: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
        try:
            if self.thread_safe:
                raw = self._run(graph, feeds)
            else:
                with self._lock:
                    raw = self._run(graph, feeds)
        except self.engine_errors as e:
            first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
            raise BackendError(
                f"{self.name} backend failed on graph {graph!r} (batch {n}): {type(e).__name__}: {first}"
            ) from None
        out: dict[str, np.ndarray] = {}
        for t in spec.outputs:
            if t.name not in raw:
                raise BackendError(f"{self.name} backend: graph {graph!r} returned {sorted(raw)}, missing {t.name!r}")
            arr = raw[t.name]
            if (
                type(arr) is np.ndarray
                and arr.dtype == _FLOAT32
                and arr.ndim == len(t.shape)
                and arr.shape[0] == n
                and arr.shape[1:] == t.shape[1:]
            ):
                out[t.name] = arr  # the common case, in as few steps as possible
                continue
            arr = np.asarray(arr)
            ok = (
                arr.ndim == len(t.shape)
                and arr.shape[0] == n
                and all(not isinstance(w, int) or g == w for g, w in zip(arr.shape[1:], t.shape[1:]))
            )
            if not ok:
                raise BackendError(
                    f"{self.name} backend: output {t.name!r} of graph {graph!r} has shape "
                    f"{tuple(arr.shape)}, expected {shape_str(t.shape)} with N={n}"
                )
            out[t.name] = arr if arr.dtype == np.float32 else arr.astype(np.float32)
        return out

    def _enter(self) -> None:
        with self._state:
            if self._closed:
                raise ClosedError(f"{self.name} backend was closed; load the bundle again")
            self._in_flight += 1

    def _leave(self) -> None:
        with self._state:
            self._in_flight -= 1
            if self._closed:  # only close() waits on it, and it sets _closed (under the lock) before waiting
                self._state.notify_all()

    def close(self) -> None:
        """Wait for calls in flight, then release the engine. Safe to call twice."""
        with self._state:
            if self._closed:
                return
            self._closed = True
            self._state.wait_for(lambda: self._in_flight == 0)
        self._close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<{type(self).__name__} {self.name} {self.device} {self.precision} graphs={list(self.graphs)} {state}>"


#: Dtypes a backend accepts for a loaded graph's inputs/outputs: the backends cast float feeds and outputs (an FP16
#: variant may take float16 where vae.json, written for the FP32 graph, says float32); anything else is another model.
FLOAT_DTYPES = ("float32", "float16", "float64")


def check_graph_io(
    source: str | Path,
    spec: GraphSpec,
    inputs: Iterable[tuple[str, tuple[Any, ...], str | None]],
    outputs: Iterable[tuple[str, tuple[Any, ...], str | None]],
) -> None:
    """A loaded graph's own inputs/outputs, as (name, shape, dtype) with symbolic axes as str or None and dtype as a
    NumPy name (None: not known), against vae.json's: the same names in order, the same rank, the same static dims,
    a floating dtype. Every backend calls it when it loads a graph, so a graph file swapped for another model (its
    sha256 updated) is refused there, naming the file, the tensor, the expected and the actual value."""
    from ..bundle import BundleError

    for kind, actual, declared in (("inputs", list(inputs), spec.inputs), ("outputs", list(outputs), spec.outputs)):
        got, want = [a[0] for a in actual], [t.name for t in declared]
        if got != want:
            raise BundleError(f"{source}: graph {kind} are {got}, vae.json says {want}")
        for (name, shape, dtype), t in zip(actual, declared):
            shape = tuple(shape)
            static = [
                i
                for i, (d, w) in enumerate(zip(shape, t.shape))
                if isinstance(w, int) and d != w and not (isinstance(d, str) or d is None)
            ]
            if len(shape) != len(t.shape) or static:
                raise BundleError(
                    f"{source}: {kind[:-1]} {name!r} has shape {list(shape)}, vae.json says {list(t.shape)}"
                )
            if dtype is not None and dtype not in FLOAT_DTYPES:
                raise BundleError(f"{source}: {kind[:-1]} {name!r} has dtype {dtype}, vae.json says {t.dtype}")
