"""The machine's matrix-multiply ceilings, measured (not looked up), to put model GFLOP/s in proportion.

One ceiling per arithmetic precision, each the best rate of the engines the rows of that precision run on, so that
a row's share compares like with like (an INT8 row against an FP32 ceiling read "174%"):

    fp32  numpy's BLAS SGEMM (always: the figure docs/performance.md has always quoted), and with rows on them ONNX
          Runtime's MatMul (MLAS SGEMM) and OpenVINO's f32 MatMul
    bf16  OpenVINO's CPU plugin: an FP32 MatMul graph compiled with INFERENCE_PRECISION_HINT=bf16 (what the openvino
          backend's bf16 rows and the OpenVINO-default peer run on CPUs with native bf16)
    int8  ONNX Runtime's MatMulInteger (uint8 x int8: the MLAS integer GEMM its QLinearConv uses) and OpenVINO's int8
          MatMul (a QDQ MatMul graph, which it runs as an int8 FullyConnected kernel), in GOP/s

Each is a square (size x size) @ (size x size) product, timed several times after one warm-up; the best run is the
ceiling. On shared, noisy machines a ceiling moves by tens of percent between runs, so the harness measures every
ceiling it needs in every round, interleaved with the graphs, and keeps the best. Every engine runs with the same
number of threads as the backends (`threads`, default: every core), so a share is work per second on the same cores;
threadpoolctl sets the BLAS's (numpy has no API for it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .errors import BenchError

#: The arithmetic a row's precision runs in on the CPU, i.e. the ceiling it is measured against. An fp16 variant on
#: the CPU runs FP32 arithmetic (no x86 CPU here has FP16 kernels: ONNX Runtime computes its Conv / Gemm in FP32,
#: OpenVINO compiles it with an f32 hint), so it is held against the FP32 ceiling.
CEILING_OF_PRECISION = {"fp32": "fp32", "fp16": "fp32", "bf16": "bf16", "int8": "int8"}
CEILING_PRECISIONS = ("fp32", "bf16", "int8")


@dataclass(frozen=True)
class Ceiling:
    gflops: float  # best observed
    samples: tuple[float, ...]
    size: int
    threads: int | None = None  # BLAS threads used (None: the BLAS default)


def measure_matmul_gflops(size: int = 1024, repeats: int = 5, seed: int = 0, threads: int | None = None) -> Ceiling:
    """Best GFLOP/s of an FP32 (size x size) @ (size x size) product over `repeats` timed runs (after one warm-up),
    with `threads` BLAS threads (None: the BLAS default)."""
    if threads is not None:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=threads, user_api="blas"):
            return _measure(size, repeats, seed, threads)
    return _measure(size, repeats, seed, None)


def _measure(size: int, repeats: int, seed: int, threads: int | None) -> Ceiling:
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    out = np.empty((size, size), dtype=np.float32)
    np.matmul(a, b, out=out)
    flops = 2.0 * size**3
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.matmul(a, b, out=out)
        samples.append(flops / (time.perf_counter() - t0) / 1e9)
    return Ceiling(gflops=max(samples), samples=tuple(samples), size=size, threads=threads)


# ----------------------------------------------------------------------------------------------- per precision


@dataclass
class Probe:
    """One engine's matmul at one precision, built once and measured every round (`measure()`: best GFLOP/s - GOP/s
    for int8 - of `repeats` timed products after one warm-up)."""

    precision: str  # "fp32", "bf16" or "int8"
    engine: str  # e.g. "numpy BLAS sgemm", "openvino bf16 MatMul"
    run: Callable[[], Any]
    size: int
    repeats: int = 5

    def measure(self) -> float:
        self.run()
        flops = 2.0 * self.size**3
        best = 0.0
        for _ in range(self.repeats):
            t0 = time.perf_counter()
            self.run()
            best = max(best, flops / (time.perf_counter() - t0) / 1e9)
        return best


def ceiling_precision(precision: str, device: str = "cpu", in_effect: str | None = None) -> str | None:
    """The ceiling a row is held against: its arithmetic precision on the CPU (`in_effect`, when the engine reports
    what it runs, wins over the nominal `precision`); None off the CPU, where no ceiling is measured."""
    if not device.startswith("cpu"):
        return None
    if in_effect is not None:
        return {"f32": "fp32", "bf16": "bf16", "i8": "int8", "f16": "fp32"}.get(in_effect, in_effect)
    return CEILING_OF_PRECISION.get(precision)


#: Product size per ceiling: the int8 one is the fastest, so a larger product keeps the per-call overheads (the
#: input copy, the int32 output) below a few percent of its time.
PROBE_SIZES = {"fp32": 1024, "bf16": 1024, "int8": 2048}


#: The engines whose matmuls can set a ceiling, by the backend a row runs on ("torch" rows: numpy's BLAS only).
ENGINE_OF_BACKEND = {
    "onnxruntime": "onnxruntime",
    "cpp": "onnxruntime",
    "openvino": "openvino",
    "ov-default": "openvino",
}
_ENGINE_PRECISIONS = {"onnxruntime": ("fp32", "int8"), "openvino": ("fp32", "bf16", "int8")}


def build_probes(
    precisions: set[str] | list[str], threads: int | None, engines: set[str] | None = None, seed: int = 0
) -> tuple[list[Probe], dict[str, str]]:
    """The probes for the ceilings in `precisions` that this machine can measure, on numpy's BLAS (fp32) and on each
    engine of `engines` ("onnxruntime", "openvino"; None: both) that runs the precision; and for each precision none
    can measure here, why (an engine not installed, no native bf16): ([Probe, ...], {precision: reason})."""
    engines = set(_ENGINE_PRECISIONS) if engines is None else set(engines)
    probes: list[Probe] = []
    why: dict[str, list[str]] = {}

    def arrays(precision: str) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        n = PROBE_SIZES[precision]
        return rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)

    makers = {"onnxruntime": _onnxruntime_probe, "openvino": _openvino_probe}
    for precision in CEILING_PRECISIONS:
        if precision not in precisions:
            continue
        if precision == "fp32":
            probes.append(_numpy_probe(*arrays("fp32"), threads))
        for engine in sorted(engines):
            if precision in _ENGINE_PRECISIONS.get(engine, ()):
                try:
                    probes.append(makers[engine](precision, *arrays(precision), threads))
                except _Unavailable as e:
                    why.setdefault(precision, []).append(str(e))
    measured = {p.precision for p in probes}
    missing = {
        p: "; ".join(why.get(p, ["no engine of the rows runs it"]))
        for p in precisions
        if p in CEILING_PRECISIONS and p not in measured
    }
    return probes, missing


class _Unavailable(BenchError):
    """A probe's engine cannot run it here (the message says why)."""


def _numpy_probe(a: np.ndarray, b: np.ndarray, threads: int | None) -> Probe:
    out = np.empty_like(a)

    def run() -> None:
        if threads is None:
            np.matmul(a, b, out=out)
            return
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=threads, user_api="blas"):
            np.matmul(a, b, out=out)

    return Probe("fp32", "numpy BLAS sgemm", run, a.shape[0])


def _matmul_onnx(kind: str, b: np.ndarray) -> bytes:
    """A one-MatMul ONNX graph A @ B with B a constant (as a layer's weights are): "f32" (MatMul), "integer"
    (MatMulInteger, uint8 A x int8 B -> int32) or "qdq" (Q/DQ on A and B around a float MatMul)."""
    from onnx import TensorProto, helper, numpy_helper

    n = b.shape[0]
    q = np.clip(np.rint(b * 32), -127, 127).astype(np.int8)
    if kind == "f32":
        nodes = [helper.make_node("MatMul", ["A", "B"], ["C"])]
        inits, a_type, c_type = [numpy_helper.from_array(b, "B")], TensorProto.FLOAT, TensorProto.FLOAT
    elif kind == "integer":
        nodes = [helper.make_node("MatMulInteger", ["A", "B"], ["C"])]
        inits, a_type, c_type = [numpy_helper.from_array(q, "B")], TensorProto.UINT8, TensorProto.INT32
    else:
        nodes = [
            helper.make_node("QuantizeLinear", ["A", "sa", "zero"], ["Aq"]),
            helper.make_node("DequantizeLinear", ["Aq", "sa", "zero"], ["Ad"]),
            helper.make_node("DequantizeLinear", ["Bq", "sb", "zero"], ["Bd"]),
            helper.make_node("MatMul", ["Ad", "Bd"], ["C"]),
        ]
        inits = [
            numpy_helper.from_array(q, "Bq"),
            numpy_helper.from_array(np.array(0.03, np.float32), "sa"),
            numpy_helper.from_array(np.array(1 / 32, np.float32), "sb"),
            numpy_helper.from_array(np.array(0, np.int8), "zero"),
        ]
        a_type, c_type = TensorProto.FLOAT, TensorProto.FLOAT
    graph = helper.make_graph(
        nodes,
        "matmul_ceiling",
        [helper.make_tensor_value_info("A", a_type, [n, n])],
        [helper.make_tensor_value_info("C", c_type, [n, n])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model.SerializeToString()


def _onnxruntime_probe(precision: str, a: np.ndarray, b: np.ndarray, threads: int | None) -> Probe:
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise _Unavailable(f"onnxruntime: not installed ({e})") from None
    try:
        graph = _matmul_onnx("f32" if precision == "fp32" else "integer", b)
    except ImportError as e:
        raise _Unavailable(f"onnxruntime {precision} MatMul: needs the onnx package to build its graph ({e})") from None
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
    if precision == "fp32":
        return Probe("fp32", "onnxruntime MatMul", lambda: session.run(None, {"A": a}), a.shape[0])
    x = np.clip(np.rint(a * 32 + 128), 0, 255).astype(np.uint8)
    return Probe("int8", "onnxruntime MatMulInteger u8s8", lambda: session.run(None, {"A": x}), a.shape[0])


def _openvino_probe(precision: str, a: np.ndarray, b: np.ndarray, threads: int | None) -> Probe:
    try:
        import openvino as ov
    except ImportError as e:
        raise _Unavailable(f"openvino: not installed ({e})") from None
    core = ov.Core()
    if precision == "bf16":
        from runtime.backends.openvino import cpu_bf16_support

        support = cpu_bf16_support(core)
        if not support.native:
            raise _Unavailable(f"openvino bf16: {support.refusal()}")
    try:
        graph = _matmul_onnx("qdq" if precision == "int8" else "f32", b)
    except ImportError as e:
        raise _Unavailable(f"openvino {precision} MatMul: needs the onnx package to build its graph ({e})") from None
    properties: dict[str, Any] = {
        "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
        "PERFORMANCE_HINT": "LATENCY",
    }
    if threads:
        properties["INFERENCE_NUM_THREADS"] = threads
    try:
        compiled = core.compile_model(core.read_model(graph), "CPU", properties)
    except RuntimeError as e:
        raise _Unavailable(f"openvino {precision} MatMul: cannot compile: {str(e).splitlines()[0]}") from None
    # What the kernel runs, read back: an engine that quietly ran another precision would set the wrong ceiling.
    from runtime.backends.openvino import kernel_precisions

    want = {"fp32": "f32", "bf16": "bf16", "int8": "i8"}[precision]
    kernels = kernel_precisions(compiled)
    if not any(want in kernels.get(k, {}) for k in ("FullyConnected", "MatMul")):
        raise _Unavailable(f"openvino {precision} MatMul: compiled to {kernels}, not a {want} kernel")
    request = compiled.create_infer_request()
    return Probe(
        precision,
        f"openvino {precision} MatMul",
        lambda: request.infer({"A": a}, share_inputs=True, share_outputs=True),
        a.shape[0],
    )
