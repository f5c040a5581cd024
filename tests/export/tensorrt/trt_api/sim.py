"""A tiny software TensorRT and CUDA runtime behind the typed proxy (proxy.py), so our code runs end to end.

The proxy decides *whether* a call is valid for the real binding; this module only decides *what it returns*: the
ONNX parser reads the real ONNX file (one network layer per ONNX node, with the parser's "[ONNX Layer: ...]"
metadata), the builder serializes a JSON "plan" (graph file, I/O, profile, flags, DLA core), the runtime deserializes
it, and execute_async_v3 runs the ONNX graph with onnxruntime on the tensors at the addresses our code bound — so the
runtime's real parity check passes only if our code copied, bound, launched and synchronized correctly. Device
memory is host memory (ctypes buffers, bounds-checked); CUDA graph capture records launches and replays them.

The CUDA side (`FakeCudart`) is not checked against cuda-python's real API (out of scope here); it accepts any
function name, records it, and models the ones our backend uses.
"""

from __future__ import annotations

import ctypes
import enum
import itertools
import json
import types
from typing import Any

import numpy as np

from tests.export.tensorrt.trt_api.proxy import Api, InstanceProxy, Recorder, Sim

PLAN_MAGIC = b"VAE-DEPLOY-SIMULATED-PLAN\n"
_ONNX_DTYPES = {1: "float32", 10: "float16", 7: "int64", 6: "int32", 9: "bool", 3: "int8", 2: "uint8"}
_TRT_DTYPES = {
    "float32": "float32",
    "float16": "float16",
    "int64": "int64",
    "int32": "int32",
    "bool": "bool",
    "int8": "int8",
    "uint8": "uint8",
}


def _dt(api: Api, name: str) -> Any:
    """The real DataType member for a numpy dtype name."""
    return getattr(api.real, _TRT_DTYPES[name])


def _np_name(api: Api, trt_dtype: Any) -> str:
    for n in _TRT_DTYPES.values():
        if getattr(api.real, n, None) == trt_dtype:
            return n
    return "float32"


class TrtSim(Sim):
    handlers: dict = {}

    def __init__(self, api: Api, rec: Recorder, gpu: "FakeCudart") -> None:
        self.api, self.rec, self.gpu = api, rec, gpu
        self.notes: list[str] = []
        self.dla_cores = 0
        self._sessions: dict[str, Any] = {}

    def new(self, cls_name: str, state: dict[str, Any]) -> InstanceProxy:
        return InstanceProxy(self.api, self.rec, getattr(self.api.real, cls_name), state)

    def session(self, path: str) -> Any:
        if path not in self._sessions:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = 1
            self._sessions[path] = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        return self._sessions[path]


def on(*keys: str):
    """Register a handler for Class.attr (several names: classes renamed across versions)."""

    def deco(fn):
        for k in keys:
            cls, attr = k.split(".", 1)
            TrtSim.handlers[(cls, attr)] = fn
        return fn

    return deco


# ----------------------------------------------------------------------------------------------- builder side


@on("Builder.create_network")
def _create_network(sim, builder, flags=0):
    strong_bit = getattr(getattr(sim.api.real, "NetworkDefinitionCreationFlag", None), "STRONGLY_TYPED", None)
    strong = strong_bit is not None and bool(int(flags) & (1 << int(strong_bit)))
    return sim.new(
        "INetworkDefinition", {"flags": int(flags), "strongly_typed": strong, "layers": [], "inputs": [], "outputs": []}
    )


@on("Builder.create_builder_config")
def _create_config(sim, builder):
    return sim.new("IBuilderConfig", {"flags": set(), "profiles": [], "pools": {}, "timing_cache": None})


@on("Builder.create_optimization_profile")
def _create_profile(sim, builder):
    return sim.new("IOptimizationProfile", {"shapes": {}})


@on("OnnxParser.__init__")
def _parser_init(sim, parser, network, logger):
    parser._p_state["network"] = network


@on("OnnxParser.parse_from_file")
def _parse_from_file(sim, parser, model):
    import onnx

    m = onnx.shape_inference.infer_shapes(onnx.load(str(model), load_external_data=False))
    g = m.graph
    elem = {vi.name: vi.type.tensor_type.elem_type for vi in [*g.input, *g.output, *g.value_info]}
    elem.update({t.name: t.data_type for t in g.initializer})

    def io(vi):
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim]
        return {"name": vi.name, "shape": dims, "dtype": _ONNX_DTYPES.get(vi.type.tensor_type.elem_type, "float32")}

    net = parser._p_state["network"]
    api = sim.api
    layers = []
    for node in g.node:
        outs = [
            sim.new("ITensor", {"name": o, "dtype": _dt(api, _ONNX_DTYPES.get(elem.get(o, 1), "float32"))})
            for o in node.output
        ]
        ins = [
            sim.new("ITensor", {"name": i, "dtype": _dt(api, _ONNX_DTYPES.get(elem.get(i, 1), "float32"))})
            for i in node.input
            if i
        ]
        layers.append(
            sim.new(
                "ILayer",
                {
                    "name": node.name,
                    "metadata": f"[ONNX Layer: {node.name}]",
                    "inputs": ins,
                    "outputs": outs,
                    "op": node.op_type,
                },
            )
        )
    inits = {t.name for t in g.initializer}
    net._p_state.update(
        onnx=str(model),
        layers=layers,
        inputs=[io(vi) for vi in g.input if vi.name not in inits],
        outputs=[io(vi) for vi in g.output],
    )
    return True


@on("OnnxParser.num_errors")
def _num_errors(sim, parser):
    return 0


@on("INetworkDefinition.num_layers")
def _num_layers(sim, net):
    return len(net._p_state["layers"])


@on("INetworkDefinition.get_layer")
def _get_layer(sim, net, index):
    return net._p_state["layers"][index]


@on("INetworkDefinition.num_inputs")
def _num_inputs(sim, net):
    return len(net._p_state["inputs"])


@on("INetworkDefinition.num_outputs")
def _num_outputs(sim, net):
    return len(net._p_state["outputs"])


def _io_tensor(sim, spec):
    return sim.new(
        "ITensor",
        {"name": spec["name"], "dtype": _dt(sim.api, spec["dtype"]), "shape": sim.api.real.Dims(tuple(spec["shape"]))},
    )


@on("INetworkDefinition.get_input")
def _get_input(sim, net, index):
    return _io_tensor(sim, net._p_state["inputs"][index])


@on("INetworkDefinition.get_output")
def _get_output(sim, net, index):
    return _io_tensor(sim, net._p_state["outputs"][index])


@on("ILayer.name")
def _layer_name(sim, lay):
    return lay._p_state["name"]


@on("ILayer.num_outputs")
def _layer_num_outputs(sim, lay):
    return len(lay._p_state["outputs"])


@on("ILayer.get_output")
def _layer_output(sim, lay, index):
    return lay._p_state["outputs"][index]


@on("ILayer.set_output_type")
def _set_output_type(sim, lay, index, dtype):
    lay._p_state.setdefault("output_types", {})[int(index)] = dtype


@on("IBuilderConfig.set_flag")
def _set_flag(sim, config, flag):
    config._p_state["flags"].add(str(getattr(flag, "name", flag)))


@on("IBuilderConfig.clear_flag")
def _clear_flag(sim, config, flag):
    config._p_state["flags"].discard(str(getattr(flag, "name", flag)))


@on("IBuilderConfig.get_flag")
def _get_flag(sim, config, flag):
    return str(getattr(flag, "name", flag)) in config._p_state["flags"]


@on("IBuilderConfig.set_memory_pool_limit")
def _set_pool(sim, config, pool, pool_size):
    config._p_state["pools"][str(getattr(pool, "name", pool))] = int(pool_size)


@on("IOptimizationProfile.set_shape")
def _set_shape(sim, profile, input, min, opt, max):
    profile._p_state["shapes"][input] = [list(min), list(opt), list(max)]
    return None


@on("IBuilderConfig.add_optimization_profile")
def _add_profile(sim, config, profile):
    config._p_state["profiles"].append(profile._p_state["shapes"])
    return len(config._p_state["profiles"]) - 1


@on("IBuilderConfig.create_timing_cache")
def _create_cache(sim, config, serialized_timing_cache):
    return sim.new("ITimingCache", {"data": bytes(serialized_timing_cache)})


@on("IBuilderConfig.set_timing_cache")
def _set_cache(sim, config, cache, ignore_mismatch):
    config._p_state["timing_cache"] = cache
    return True


@on("IBuilderConfig.get_timing_cache")
def _get_cache(sim, config):
    return config._p_state["timing_cache"]


@on("ITimingCache.serialize")
def _serialize_cache(sim, cache):
    return sim.new("IHostMemory", {"data": b"simulated timing cache\n" + cache._p_state["data"][:64]})


@on("IHostMemory.__bytes__")
def _host_bytes(sim, mem):
    return mem._p_state["data"]


@on("IHostMemory.nbytes")
def _host_nbytes(sim, mem):
    return len(mem._p_state["data"])


@on("Builder.build_serialized_network")
def _build(sim, builder, network, config):
    n, c = network._p_state, config._p_state
    if "onnx" not in n or len(c["profiles"]) != 1:
        sim.notes.append("build_serialized_network: no parsed network or not exactly one profile -> None")
        return None
    flags = sorted(c["flags"])
    reduced = "FP16" in flags or "INT8" in flags or n["strongly_typed"]
    plan = {
        "onnx": n["onnx"],
        "inputs": n["inputs"],
        "outputs": n["outputs"],
        "profile": c["profiles"][0],
        "flags": flags,
        "strongly_typed": n["strongly_typed"],
        "dla_core": c.get("DLA_core")
        if "default_device_type" in c and c["default_device_type"].name == "DLA"
        else None,
        "layers": [
            {
                "Name": lay._p_state["name"],
                "LayerType": lay._p_state["op"],
                "Metadata": lay._p_state["metadata"],
                "Inputs": [
                    {
                        "Format/Datatype": "Row major linear FP32 format (kLINEAR)"
                        if not reduced or "precision" in lay._p_state
                        else "Row major linear FP16 format (kLINEAR)"
                    }
                ],
            }
            for lay in n["layers"]
        ],
    }
    data = PLAN_MAGIC + json.dumps(plan).encode()
    return sim.new("IHostMemory", {"data": data + b"\0" * max(0, 8192 - len(data))})


# ----------------------------------------------------------------------------------------------- runtime side


@on("Runtime.deserialize_cuda_engine")
def _deserialize(sim, runtime, data):
    raw = bytes(data)
    if not raw.startswith(PLAN_MAGIC):
        return None
    plan = json.loads(raw[len(PLAN_MAGIC) :].rstrip(b"\0"))
    core = runtime._p_state.get("DLA_core")
    if plan["dla_core"] is not None and core != plan["dla_core"]:
        sim.notes.append(
            f"a DLA engine built for core {plan['dla_core']} was deserialized on a runtime whose "
            f"DLA_core is {core!r} (not set: TensorRT's default)"
        )
    return sim.new("ICudaEngine", {"plan": plan, "names": [t["name"] for t in plan["inputs"] + plan["outputs"]]})


@on("ICudaEngine.num_io_tensors")
def _num_io(sim, eng):
    return len(eng._p_state["names"])


@on("ICudaEngine.get_tensor_name")
def _tensor_name(sim, eng, index):
    return eng._p_state["names"][index]


def _spec(eng, name):
    plan = eng._p_state["plan"]
    for t in plan["inputs"] + plan["outputs"]:
        if t["name"] == name:
            return t
    raise KeyError(name)


@on("ICudaEngine.get_tensor_mode")
def _tensor_mode(sim, eng, name):
    inputs = {t["name"] for t in eng._p_state["plan"]["inputs"]}
    mode = sim.api.real.TensorIOMode
    return mode.INPUT if name in inputs else mode.OUTPUT if name in eng._p_state["names"] else mode.NONE


@on("ICudaEngine.num_optimization_profiles")
def _num_profiles(sim, eng):
    return 1


@on("ICudaEngine.get_tensor_profile_shape")
def _profile_shape(sim, eng, name, profile_index):
    shapes = eng._p_state["plan"]["profile"].get(name)
    return [] if shapes is None or profile_index != 0 else [sim.api.real.Dims(tuple(s)) for s in shapes]


@on("ICudaEngine.get_tensor_dtype")
def _tensor_dtype(sim, eng, name):
    return _dt(sim.api, _spec(eng, name)["dtype"])


@on("ICudaEngine.get_tensor_shape")
def _engine_shape(sim, eng, name):
    return sim.api.real.Dims(tuple(_spec(eng, name)["shape"]))


@on("ICudaEngine.create_execution_context")
def _create_context(sim, eng, *strategy):
    return sim.new("IExecutionContext", {"engine": eng, "shapes": {}, "addresses": {}, "strategy": strategy})


@on("ICudaEngine.device_memory_size_v2", "ICudaEngine.device_memory_size")
def _device_memory_size(sim, eng):
    return 1 << 16


@on("IExecutionContext.set_device_memory")
def _set_device_memory(sim, ctx, memory, size):
    if not sim.gpu.span(int(memory), int(size)):
        raise AssertionError(f"set_device_memory: {size} bytes at {int(memory):#x} are not one allocation")


@on("ICudaEngine.create_engine_inspector")
def _create_inspector(sim, eng):
    cls = "IEngineInspector" if hasattr(sim.api.real, "IEngineInspector") else "EngineInspector"
    return sim.new(cls, {"engine": eng})


@on("EngineInspector.get_engine_information", "IEngineInspector.get_engine_information")
def _engine_information(sim, inspector, format):
    return json.dumps({"Layers": inspector._p_state["engine"]._p_state["plan"]["layers"]})


@on("IExecutionContext.set_input_shape")
def _set_input_shape(sim, ctx, name, shape):
    plan = ctx._p_state["engine"]._p_state["plan"]
    prof = plan["profile"].get(name)
    shape = [int(d) for d in shape]
    if (
        prof is None
        or len(shape) != len(prof[0])
        or not all(lo <= d <= hi for lo, d, hi in zip(prof[0], shape, prof[2]))
    ):
        return False
    ctx._p_state["shapes"][name] = shape
    return True


@on("IExecutionContext.get_tensor_shape")
def _context_shape(sim, ctx, name):
    eng = ctx._p_state["engine"]
    if name in ctx._p_state["shapes"]:
        return sim.api.real.Dims(tuple(ctx._p_state["shapes"][name]))
    spec = _spec(eng, name)
    inputs = eng._p_state["plan"]["inputs"]
    batch = ctx._p_state["shapes"].get(inputs[0]["name"], [-1])[0]
    return sim.api.real.Dims((batch, *spec["shape"][1:]))


@on("IExecutionContext.set_tensor_address")
def _set_address(sim, ctx, name, memory):
    ctx._p_state["addresses"][name] = int(memory)
    return True


@on("IExecutionContext.execute_async_v3")
def _execute(sim, ctx, stream_handle):
    return sim.gpu.enqueue(int(stream_handle), lambda: _run_engine(sim, ctx))


def _run_engine(sim, ctx):
    eng = ctx._p_state["engine"]
    plan, shapes, addr = eng._p_state["plan"], ctx._p_state["shapes"], ctx._p_state["addresses"]
    feeds = {}
    for t in plan["inputs"]:
        shape, dt = shapes[t["name"]], np.dtype(t["dtype"])
        raw = sim.gpu.read(addr[t["name"]], int(np.prod(shape)) * dt.itemsize)
        feeds[t["name"]] = np.frombuffer(raw, dt).reshape(shape)
    outs = sim.session(plan["onnx"]).run(None, feeds)
    for t, y in zip(plan["outputs"], outs):
        y = np.ascontiguousarray(y, dtype=np.dtype(t["dtype"]))
        sim.gpu.write(addr[t["name"]], y.tobytes())


# ----------------------------------------------------------------------------------------------- CUDA


class cudaError_t(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorStreamCaptureUnsupported = 900


class _Handle:
    def __init__(self, kind: str, n: int) -> None:
        self.kind, self.n = kind, n

    def __int__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return f"<{self.kind} {self.n}>"


class _Names:
    """cudart's enum namespaces (cudaMemcpyKind.cudaMemcpyHostToDevice ...): any member name is a string."""

    def __getattr__(self, name: str) -> str:
        return name


ORIN = {
    "name": b"Simulated Orin\x00",
    "major": 8,
    "minor": 7,
    "multiProcessorCount": 16,
    "integrated": 1,
    "totalGlobalMem": 8 << 30,
}
ADA = {
    "name": b"Simulated RTX 4090\x00",
    "major": 8,
    "minor": 9,
    "multiProcessorCount": 128,
    "integrated": 0,
    "totalGlobalMem": 24 << 30,
}


class _DeviceProp:
    """cudaDeviceProp of the simulated GPU; other fields read as 0 (and are recorded)."""

    def __init__(self, calls: list[str], fields: dict[str, Any]) -> None:
        self._calls, self.FIELDS = calls, fields

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        self._calls.append(f"cudaDeviceProp.{name}")
        return self.FIELDS.get(name, 0)


class FakeCudart(types.ModuleType):
    """cuda-python's runtime module, modelled on host memory; records every function our code calls."""

    def __init__(self, gpu: dict[str, Any]) -> None:
        super().__init__("cuda.bindings.runtime")
        self.gpu = gpu
        self._allocs: dict[int, ctypes.Array] = {}
        self._ids = itertools.count(0x1000)
        self._capturing: dict[int, list] = {}
        self.calls: list[str] = []
        self.cudaMemcpyKind = _Names()
        self.cudaStreamCaptureMode = _Names()
        self.cudaError_t = cudaError_t

    def __getattr__(self, name: str) -> Any:
        if not name.startswith("cuda"):
            raise AttributeError(name)
        fn = getattr(self, "_" + name, None)

        def call(*args: Any) -> tuple:
            self.calls.append(name)
            out = fn(*args) if fn else ()
            return (
                out
                if isinstance(out, tuple) and out and isinstance(out[0], cudaError_t)
                else (cudaError_t.cudaSuccess, *((out,) if not isinstance(out, tuple) else out))
            )

        return call

    # memory (device memory is host memory here)
    def _alloc(self, nbytes: int) -> int:
        buf = ctypes.create_string_buffer(max(int(nbytes), 1))
        self._allocs[ctypes.addressof(buf)] = buf
        return ctypes.addressof(buf)

    def span(self, ptr: int, nbytes: int) -> bool:
        return any(base <= ptr and ptr + nbytes <= base + len(buf) for base, buf in self._allocs.items())

    def read(self, ptr: int, nbytes: int) -> bytes:
        if not self.span(ptr, nbytes):
            raise AssertionError(f"engine read of {nbytes} bytes at {ptr:#x} is outside every allocation")
        return ctypes.string_at(ptr, nbytes)

    def write(self, ptr: int, data: bytes) -> None:
        if not self.span(ptr, len(data)):
            raise AssertionError(f"engine write of {len(data)} bytes at {ptr:#x} is outside every allocation")
        ctypes.memmove(ptr, data, len(data))

    def enqueue(self, stream: int, op) -> bool:
        if stream in self._capturing:
            self._capturing[stream].append(op)
        else:
            op()
        return True

    def _cudaGetDeviceCount(self):
        return 1

    def _cudaGetDeviceProperties(self, index):
        return _DeviceProp(self.calls, self.gpu)

    def _cudaMalloc(self, nbytes):
        return self._alloc(nbytes)

    _cudaMallocHost = _cudaMalloc

    def _cudaFree(self, ptr):
        return () if self._allocs.pop(int(ptr), None) is not None else (cudaError_t.cudaErrorInvalidValue,)

    _cudaFreeHost = _cudaFree

    def _cudaMemcpyAsync(self, dst, src, count, kind, stream):
        dst, src, count = int(dst), int(src), int(count)
        if not (self.span(dst, count) and self.span(src, count)):
            return (cudaError_t.cudaErrorInvalidValue,)
        self.enqueue(int(stream), lambda: ctypes.memmove(dst, src, count))
        return ()

    def _cudaStreamCreate(self):
        return _Handle("stream", next(self._ids))

    def _cudaStreamBeginCapture(self, stream, mode):
        self._capturing[int(stream)] = []
        return ()

    def _cudaStreamEndCapture(self, stream):
        ops = self._capturing.pop(int(stream), None)
        if ops is None:
            return (cudaError_t.cudaErrorInvalidValue,)
        graph = _Handle("graph", next(self._ids))
        graph.ops = ops
        return graph

    def _cudaGraphInstantiate(self, graph, *flags):
        exe = _Handle("graphExec", next(self._ids))
        exe.ops = list(graph.ops)
        return exe

    def _cudaGraphLaunch(self, exe, stream):
        for op in exe.ops:
            self.enqueue(int(stream), op)
        return ()


@on("Builder.num_DLA_cores", "Runtime.num_DLA_cores")
def _dla_cores(sim, obj):
    return sim.dla_cores


@on("ILayer.num_inputs")
def _layer_num_inputs(sim, lay):
    return len(lay._p_state.get("inputs", ()))


@on("ILayer.get_input")
def _layer_input(sim, lay, index):
    return lay._p_state["inputs"][index]
