"""EngineRunner's control flow without a GPU: CUDA-graph capture only after a plain run + synchronize at the same
shape, a failed capture falling back to plain runs (remembered per batch size), replay, and a batch below a
fixed-shape (DLA) engine's min batch padded and trimmed.

No TensorRT or GPU exists here, so a small in-process stand-in plays the engine (image = 2 * z + 1) and cuda-python
(host-memory "device" buffers, a stream whose captured launches are recorded and replayed). It checks the order of
calls and the numbers; the names and signatures of the real APIs are checked by test_tensorrt_api_conformance.py."""

from __future__ import annotations

import ctypes
import enum
import types

import numpy as np
import pytest

from runtime.backends.tensorrt import EngineRunner

D = 4


class Err(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorStreamCaptureUnsupported = 900


class FakeCudart:
    """Device memory is host memory; a stream either runs work at once or, while capturing, records it."""

    cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)
    cudaStreamCaptureMode = types.SimpleNamespace(cudaStreamCaptureModeThreadLocal=0)

    def __init__(self, capture_error: bool = False):
        self.buffers, self.log, self.capturing, self.capture_error = {}, [], None, capture_error

    def _alloc(self, n):
        buf = ctypes.create_string_buffer(max(n, 1))
        self.buffers[ctypes.addressof(buf)] = buf
        return Err.cudaSuccess, ctypes.addressof(buf)

    cudaMalloc = cudaMallocHost = _alloc

    def cudaFree(self, p):
        return (Err.cudaSuccess,)

    cudaFreeHost = cudaFree

    def cudaSetDevice(self, i):
        return (Err.cudaSuccess,)

    def cudaStreamCreate(self):
        return Err.cudaSuccess, 7

    def cudaStreamDestroy(self, s):
        return (Err.cudaSuccess,)

    def cudaStreamSynchronize(self, s):
        self.log.append("sync")
        return (Err.cudaSuccess,)

    def cudaMemcpyAsync(self, dst, src, n, kind, stream):
        ctypes.memmove(dst, src, n)
        return (Err.cudaSuccess,)

    def cudaStreamBeginCapture(self, stream, mode):
        if self.capture_error:
            return (Err.cudaErrorStreamCaptureUnsupported,)
        self.log.append("begin")
        self.capturing = []
        return (Err.cudaSuccess,)

    def cudaStreamEndCapture(self, stream):
        graph, self.capturing = self.capturing, None
        self.log.append("end")
        return Err.cudaSuccess, graph

    def cudaGraphInstantiate(self, graph, flags):
        return Err.cudaSuccess, list(graph)

    def cudaGraphDestroy(self, graph):
        return (Err.cudaSuccess,)

    cudaGraphExecDestroy = cudaGraphDestroy

    def cudaGraphLaunch(self, exe, stream):
        self.log.append("replay")
        for op in exe:
            op()
        return (Err.cudaSuccess,)


class FakeContext:
    def __init__(self, engine):
        self.engine, self.shapes, self.addr = engine, {}, {}

    def set_input_shape(self, name, shape):
        lo, _, hi = self.engine.profile
        ok = lo <= shape[0] <= hi
        if ok:
            self.shapes["z"] = tuple(shape)
        return ok

    def get_tensor_shape(self, name):
        return self.shapes["z"]

    def set_tensor_address(self, name, ptr):
        self.addr[name] = ptr
        return True

    def execute_async_v3(self, stream):
        n = self.shapes["z"][0]
        zi, im = self.addr["z"], self.addr["image"]

        def op():
            z = np.frombuffer((ctypes.c_float * (n * D)).from_address(zi), dtype=np.float32)
            out = np.frombuffer((ctypes.c_float * (n * D)).from_address(im), dtype=np.float32)
            out[:] = 2 * z + 1

        cudart = self.engine.cudart
        if cudart.capturing is not None:
            cudart.capturing.append(op)
        else:
            cudart.log.append(f"run{n}")
            op()
        return True


class FakeEngine:
    num_io_tensors = 2
    num_optimization_profiles = 1

    def __init__(self, cudart, profile):
        self.cudart, self.profile = cudart, profile

    def get_tensor_name(self, i):
        return ("z", "image")[i]

    def get_tensor_mode(self, name):
        return "in" if name == "z" else "out"

    def get_tensor_profile_shape(self, name, index):
        return [(b, D) for b in self.profile]

    def get_tensor_dtype(self, name):
        return np.float32

    def create_execution_context(self):
        return FakeContext(self)


def runner(cuda_graph: bool, profile=(1, 8, 16), capture_error=False) -> tuple[EngineRunner, FakeCudart]:
    cudart = FakeCudart(capture_error)
    trt = types.SimpleNamespace(TensorIOMode=types.SimpleNamespace(INPUT="in"), nptype=lambda d: d)
    rt = types.SimpleNamespace(deserialize_cuda_engine=lambda plan: FakeEngine(cudart, profile))
    r = EngineRunner(
        trt,
        cudart,
        rt,
        b"plan",
        graph="decoder",
        inputs=("z",),
        outputs=("image",),
        device_index=0,
        cuda_graph=cuda_graph,
        source="fake.plan",
    )
    return r, cudart


def z(n: int) -> np.ndarray:
    return np.arange(n * D, dtype=np.float32).reshape(n, D)


def test_capture_follows_a_plain_run_at_that_shape_and_replays():
    r, cudart = runner(cuda_graph=True)
    for n in (3, 3, 5, 3, 3, 5, 5):
        np.testing.assert_array_equal(r.run({"z": z(n)})["image"], 2 * z(n) + 1)
    log = [e for e in cudart.log if e != "sync"]
    # batch 3: plain run, then capture, then replay at the same shape; batch 5 the same. Back at a shape after the
    # context ran another one, the first call runs plainly (TensorRT updates shape state inside an enqueue, not in
    # the graph), and the next at that shape replays.
    assert log == ["run3", "begin", "end", "replay", "run5", "begin", "end", "run3", "replay", "run5", "replay"], log
    seq = cudart.log
    assert seq[seq.index("run3") + 1] == "sync" and seq.index("begin") > seq.index("run3")
    assert r.graph_failures == {}
    r.close()


def test_failed_capture_falls_back_to_plain_runs_and_is_remembered():
    r, cudart = runner(cuda_graph=True, capture_error=True)
    with pytest.warns(RuntimeWarning, match="CUDA graph capture failed at batch 2"):
        out = r.run({"z": z(2)})["image"]
    np.testing.assert_array_equal(out, 2 * z(2) + 1)
    for _ in range(3):
        np.testing.assert_array_equal(r.run({"z": z(2)})["image"], 2 * z(2) + 1)
    assert [e for e in cudart.log if e != "sync"] == ["run2"] * 4
    assert "cudaErrorStreamCaptureUnsupported" in r.graph_failures[2]


def test_batch_below_a_fixed_engine_is_padded_and_trimmed():
    r, cudart = runner(cuda_graph=False, profile=(4, 4, 4))
    for n in (1, 3):
        out = r.run({"z": z(n)})["image"]
        assert out.shape == (n, D)
        np.testing.assert_array_equal(out, 2 * z(n) + 1)
    assert [e for e in cudart.log if e != "sync"] == ["run4", "run4"]
