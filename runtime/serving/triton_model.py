"""Triton Python-backend model that hosts this runtime: copied as <model>/1/model.py by runtime.serving.repository.

Runs inside Triton's Python backend stub (which provides triton_python_backend_utils), never imported by the rest of
the package. The model folder carries its bundle (1/bundle/) and a copy of the runtime package (1/runtime/), so it runs
wherever the stub's Python has numpy and onnxruntime. config.pbtxt parameters: graph (encoder | decoder), backend
(runtime.load's), precision, threads (optional), warmup_batches (optional, e.g. "1,64": zero batches run in
initialize(), before Triton marks the model ready - so, unlike Triton's model_warmup, they never reach its metrics).

Dynamic batching hands execute() several requests at once and the Python backend does not merge them, so this model
does: each request is validated on its own (a bad one gets its own error response), the good ones run as ONE batch
through runtime.load(...), and the outputs are split back. Tensors cross the stub boundary through DLPack, not the
stub's NumPy conversions: stubs built against NumPy 1.x (nvidia-pytriton 0.7.0, Triton 2.51) misread NumPy 2's dtype
descriptor (inputs arrive as copies of their first element, outputs are refused); DLPack is right under both.
"""

from __future__ import annotations

import ctypes
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# The runtime copy shipped next to this file wins over any other `runtime` the stub's Python could import (the stub
# appends this folder at the *end* of sys.path, after the working directory and site-packages): the repository runs
# the runtime version that wrote it.
if sys.path[:1] != [str(HERE)]:
    sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

import runtime  # noqa: E402
from runtime.bundle import DECODER, ENCODER, GRAPH_IO, IMAGE, LOGVAR, MU  # noqa: E402
from runtime.errors import BackendError, InputError  # noqa: E402
from runtime.validation import check_input  # noqa: E402

# The stub renames a DLPack capsule it consumed to "used_dlpack"; NumPy's capsule destructor only knows the standard
# "used_dltensor" and would report every output capsule as never consumed (an unraisable ValueError per response).
# The stub frees the tensor itself, so the capsule is marked consumed the standard way after the hand-over.
_USED_CAPSULE = b"used_dltensor"
_set_capsule_name = ctypes.pythonapi.PyCapsule_SetName
_set_capsule_name.argtypes = (ctypes.py_object, ctypes.c_char_p)
_set_capsule_name.restype = ctypes.c_int


def _from_triton(tensor) -> np.ndarray:
    return np.from_dlpack(tensor)


def _to_triton(name: str, array: np.ndarray):
    capsule = np.ascontiguousarray(array).__dlpack__()
    out = pb_utils.Tensor.from_dlpack(name, capsule)
    _set_capsule_name(capsule, _USED_CAPSULE)
    return out


def _error(message: str):
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
    err = pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)
    return pb_utils.InferenceResponse(output_tensors=[], error=err)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        self.graph = params.get("graph", "")
        if self.graph not in (ENCODER, DECODER):
            raise ValueError(
                f"{config.get('name')}: parameter 'graph' must be {ENCODER!r} or {DECODER!r}, got {self.graph!r}"
            )
        device = "cpu"
        if args.get("model_instance_kind") == "GPU":
            device = f"cuda:{args.get('model_instance_device_id', '0')}"
        options = {"threads": int(params["threads"])} if params.get("threads") else {}
        self.vae = runtime.load(
            HERE / "bundle",
            backend=params.get("backend", "onnxruntime"),
            device=device,
            precision=params.get("precision", "fp32"),
            graphs=(self.graph,),
            **options,
        )
        self.spec = self.vae.manifest.graph(self.graph).inputs[0]
        self.outputs = GRAPH_IO[self.graph][1]
        name = args.get("model_instance_name", config.get("name"))
        # provenance in the server log: which runtime copy, engine and bundle this instance runs
        print(
            f"[vae-deploy] {name}: runtime "
            f"{Path(runtime.__file__).parent}, {self.vae.backend_name} {self.vae.precision} on {device}, "
            f"bundle {HERE / 'bundle'}",
            flush=True,
        )
        self._warm_up(name, [int(b) for b in params.get("warmup_batches", "").split(",") if b.strip()])

    def _warm_up(self, name: str, batches: list[int]) -> None:
        """Run zero batches of these sizes here, in initialize(): the first client request then finds the session
        built and its buffers sized, and Triton's metrics (nv_inference_*) count client requests only."""
        if not batches:
            return
        item = tuple(int(d) for d in self.spec.shape[1:])
        t0 = time.perf_counter()
        for b in batches:
            self._run(np.zeros((b, *item), dtype=self.spec.dtype))
        print(
            f"[vae-deploy] {name}: warmed up with zero batches of {batches} in {time.perf_counter() - t0:.2f} s "
            "(in initialize: not in Triton's metrics)",
            flush=True,
        )

    def _run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if self.graph == ENCODER:
            post = self.vae.encode(batch)
            return {MU: post.mu, LOGVAR: post.logvar}
        return {IMAGE: self.vae.decode(batch)}

    def execute(self, requests):
        responses = [None] * len(requests)
        good, arrays = [], []
        for i, request in enumerate(requests):
            try:
                tensor = pb_utils.get_input_tensor_by_name(request, self.spec.name)
                if tensor is None:
                    raise InputError(f"tensor {self.spec.name!r}: missing from the request")
                arrays.append(check_input(self.spec, _from_triton(tensor), check_finite=True))
                good.append(i)
            except InputError as e:
                responses[i] = _error(str(e))
        if good:
            try:
                out = self._run(arrays[0] if len(arrays) == 1 else np.concatenate(arrays))
            except (InputError, BackendError) as e:
                for i in good:
                    responses[i] = _error(f"{self.graph}: {e}")
            else:
                start = 0
                for i, x in zip(good, arrays):
                    n = x.shape[0]
                    responses[i] = pb_utils.InferenceResponse(
                        output_tensors=[_to_triton(name, out[name][start : start + n]) for name in self.outputs]
                    )
                    start += n
        return responses

    def finalize(self):
        self.vae.close()
