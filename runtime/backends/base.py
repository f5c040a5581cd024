"""The Backend protocol: one base class that validates, chunks, locks and closes; each engine adds a small hook.

A backend runs one bundle's graphs (encoder, decoder) on one engine at one device and precision. The public
`run(graph, feeds)` is defined once, here, and every backend gets the same behaviour:

1. the graph is one this backend loaded, the feeds are exactly the graph's inputs (names from the manifest);
2. each input passes runtime.validation.check_input (rank, shape, channels, latent size, dtype, contiguity, NaN/Inf,
   empty batch) -> C-contiguous float32;
3. a batch larger than `max_batch(graph)` (e.g. a TensorRT optimization profile's max) is split into chunks and the
   outputs concatenated, so callers never see the engine's limit;
4. `_run(graph, feeds)` - the engine hook - is called, under a lock if the class says it is not thread-safe
   (`thread_safe = False`), and any of the engine's own exception types (`engine_errors`) becomes a BackendError;
5. outputs are checked against the manifest (names, batch, static dims) and returned as float32 arrays.

`close()` waits for calls in flight, then releases the engine (`_close`) exactly once; later calls raise ClosedError.

Loading is separate from running: `Backend.open(bundle, manifest, ...)` is a classmethod each module implements;
it imports its engine lazily (a module of this package never imports onnxruntime/tensorrt/torch at top level) and
accepts only the option names in `options`. A backend module that is chosen but whose engine is missing raises
BackendUnavailableError; nothing else breaks.
"""
from __future__ import annotations

import abc
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterable, Mapping

import numpy as np

from ..bundle import GraphSpec, Manifest
from ..errors import BackendError, ClosedError, ShapeError
from ..validation import check_input, shape_str

_DEVICE = re.compile(r"^(cpu|cuda)(?::(\d+))?$")


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

    def __init__(self, manifest: Manifest, *, device: Device, precision: str, graphs: Iterable[str],
                 check_finite: bool = True) -> None:
        self.manifest = manifest
        self.device = device
        self.precision = precision
        self.graphs = tuple(graphs)
        self.check_finite = check_finite
        #: The engine's exception types, turned into BackendError at the boundary (set by open()).
        self.engine_errors: tuple[type[BaseException], ...] = ()
        self._lock = threading.Lock()            # serialises _run when not thread_safe
        self._state = threading.Condition()      # guards _closed and _in_flight
        self._in_flight = 0
        self._closed = False

    # ------------------------------------------------------------------ to implement
    @classmethod
    @abc.abstractmethod
    def open(cls, bundle: Path, manifest: Manifest, *, device: Device, precision: str, graphs: tuple[str, ...],
             check_finite: bool = True, **options: Any) -> "Backend":
        """Build a ready backend for `graphs` of the bundle at `bundle` (a folder holding vae.json)."""

    @classmethod
    def unavailable_reason(cls, bundle: Path, manifest: Manifest, device: Device, precision: str) -> str | None:
        """Why backend="auto" must not pick this backend here (None: it can). Must be cheap and import nothing heavy."""
        return None

    @abc.abstractmethod
    def _run(self, graph: str, feeds: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        """Run one validated chunk: C-contiguous float32 inputs, batch <= max_batch(graph). Returns every output."""

    def _close(self) -> None:
        """Release the engine (sessions, contexts, buffers). Called once."""

    def max_batch(self, graph: str) -> int | None:
        """Largest batch one _run call takes (None: unlimited). Bigger batches are chunked by run()."""
        return None

    def describe(self) -> dict[str, Any]:
        """Provenance for reports: engine versions, providers, files. Subclasses extend it."""
        return {"backend": self.name, "device": str(self.device), "precision": self.precision,
                "graphs": list(self.graphs), "max_batch": {g: self.max_batch(g) for g in self.graphs}}

    # ------------------------------------------------------------------ the protocol
    @property
    def closed(self) -> bool:
        return self._closed

    def spec(self, graph: str) -> GraphSpec:
        if graph not in self.graphs:
            raise BackendError(f"graph {graph!r} is not loaded by this {self.name} backend "
                               f"(loaded: {list(self.graphs)}; the bundle has {sorted(self.manifest.graphs)})")
        return self.manifest.graphs[graph]

    def run(self, graph: str, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Validate `feeds`, run `graph` (in chunks of max_batch), return {output name: float32 array}."""
        spec = self.spec(graph)
        want = [t.name for t in spec.inputs]
        if set(feeds) != set(want):
            raise BackendError(f"graph {graph!r}: expected inputs {want}, got {sorted(feeds)}")
        arrays = {t.name: check_input(t, feeds[t.name], check_finite=self.check_finite) for t in spec.inputs}
        sizes = {n: a.shape[0] for n, a in arrays.items()}
        if len(set(sizes.values())) > 1:
            raise ShapeError(f"graph {graph!r}: inputs have different batch sizes {sizes}")
        n = next(iter(sizes.values()))
        limit = self.max_batch(graph)
        self._enter()
        try:
            if limit is None or n <= limit:
                outs = self._checked_run(graph, spec, arrays, n)
            else:
                parts = [self._checked_run(graph, spec, {k: v[i:i + limit] for k, v in arrays.items()},
                                           min(limit, n - i)) for i in range(0, n, limit)]
                outs = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        finally:
            self._leave()
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
            raise BackendError(f"{self.name} backend failed on graph {graph!r} (batch {n}): "
                               f"{type(e).__name__}: {first}") from None
        out: dict[str, np.ndarray] = {}
        for t in spec.outputs:
            if t.name not in raw:
                raise BackendError(f"{self.name} backend: graph {graph!r} returned {sorted(raw)}, missing {t.name!r}")
            arr = np.asarray(raw[t.name])
            ok = arr.ndim == len(t.shape) and arr.shape[0] == n and all(
                not isinstance(w, int) or g == w for g, w in zip(arr.shape[1:], t.shape[1:]))
            if not ok:
                raise BackendError(f"{self.name} backend: output {t.name!r} of graph {graph!r} has shape "
                                   f"{tuple(arr.shape)}, expected {shape_str(t.shape)} with N={n}")
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
