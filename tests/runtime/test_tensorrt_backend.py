"""The native TensorRT backend: clear errors where TensorRT, cuda-python or a GPU is missing (run everywhere), and
on a GPU machine the whole path - build, verify, load, run, chunk, CUDA graphs, threads, refusal, close."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest

import runtime
from runtime import bundle as B
from runtime.backends import backend_class
from runtime.backends.base import Device
from runtime.engines import EngineMismatchError, sidecar_path
from runtime.errors import BackendError, BackendUnavailableError, ClosedError


def test_importing_the_backend_imports_no_engine():
    code = (
        "import sys, runtime.backends.tensorrt as t; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('tensorrt', 'tensorrt_rtx', 'cuda', 'torch', 'onnxruntime', 'onnx')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    assert backend_class("tensorrt").__name__ == "TensorRTBackend"


def test_missing_tensorrt_names_what_to_install():
    from runtime.backends.tensorrt import import_tensorrt

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here")
    with pytest.raises(BackendUnavailableError, match=r"No module named 'tensorrt'.*python3-libnvinfer.*tensorrt-cu12"):
        import_tensorrt("trt")
    with pytest.raises(BackendError, match="flavour"):
        import_tensorrt("tensorflow")


def test_cpu_device_is_refused(bundle):
    with pytest.raises(BackendError, match=r"backend 'tensorrt' runs on \['cuda'\]"):
        runtime.load(bundle, backend="tensorrt", device="cpu")


def test_unavailable_reason_is_cheap_and_specific(bundle):
    cls = backend_class("tensorrt")
    m = B.read_manifest(bundle)
    assert cls.unavailable_reason(bundle, m, Device("cpu"), "fp32") == "runs on CUDA devices only"
    why = cls.unavailable_reason(bundle, m, Device("cuda"), "fp16")
    assert why is not None
    assert ("not installed" in why) or ("no fp16 engine" in why and "export.tensorrt.build" in why)


def _gpu_skip_reason() -> str | None:
    from runtime.backends.tensorrt import gpu_count

    smi = shutil.which("nvidia-smi")
    seen = smi is not None and subprocess.run([smi, "-L"], capture_output=True, timeout=60).returncode == 0
    if not seen and gpu_count() == 0:
        return "no NVIDIA GPU (nvidia-smi -L fails and cuda-python sees no device)"
    if importlib.util.find_spec("tensorrt") is None and importlib.util.find_spec("tensorrt_rtx") is None:
        return "TensorRT's Python package is not installed"
    if importlib.util.find_spec("cuda") is None:
        return "cuda-python is not installed"
    if gpu_count() == 0:
        return "cuda-python sees no CUDA device"
    return None


def test_without_gpu_loading_fails_cleanly(bundle):
    if _gpu_skip_reason() is None:
        pytest.skip("a GPU is usable here")
    with pytest.raises(BackendUnavailableError, match="TensorRT is not importable|cuda-python|no CUDA GPU"):
        runtime.load(bundle, backend="tensorrt", device="cuda")


# ----------------------------------------------------------------------------------------------- GPU only


@pytest.fixture(scope="module")
def gpu_bundle(bundle, tmp_path_factory):
    """A bundle copy with verified fp32 engines built here (profile max batch 4, so chunking is exercised)."""
    reason = _gpu_skip_reason()
    if reason:
        pytest.skip(reason)
    from export.tensorrt.build_plan import BuildOptions, plan_build
    from export.tensorrt.engine import build_engine
    from runtime.backends.tensorrt import cuda_gpu_info, import_tensorrt

    root = shutil.copytree(bundle, tmp_path_factory.mktemp("gpu") / "bundle")
    trt, info = import_tensorrt()
    manifest = B.read_manifest(root)
    for graph in B.GRAPHS:
        plan = plan_build(
            info, graph, "fp32", manifest, BuildOptions(min_batch=1, opt_batch=2, max_batch=4), cuda_gpu_info(0)
        )
        res = build_engine(root, plan, trt=trt, verify=True, log=print)
        assert res.verified and res.report.passed
    return root


@pytest.mark.gpu
def test_engines_match_reference_and_chunk(gpu_bundle, reference):
    with runtime.load(gpu_bundle, backend="tensorrt", device="cuda") as rt:
        be = rt.backend
        assert be.max_batch("decoder") == 4
        z = np.concatenate([reference["decoder.z"]] * 3)  # 12 rows > max batch 4: three chunks
        out = be.run("decoder", {"z": z})["image"]
        np.testing.assert_allclose(out, np.concatenate([reference["decoder.image"]] * 3), atol=1e-4)
        enc = be.run("encoder", {"image": reference["encoder.image"][:1]})
        np.testing.assert_allclose(enc["mu"], reference["encoder.mu"][:1], atol=1e-4)
    with pytest.raises(ClosedError):
        be.run("decoder", {"z": reference["decoder.z"]})


@pytest.mark.gpu
def test_cuda_graph_and_threads_match_serial(gpu_bundle, reference):
    z = reference["decoder.z"]
    with runtime.load(gpu_bundle, backend="tensorrt", device="cuda", cuda_graph=True) as rt:
        first = [rt.backend.run("decoder", {"z": z[i : i + 1 + i % 3]})["image"] for i in range(3)]
        again = [rt.backend.run("decoder", {"z": z[i : i + 1 + i % 3]})["image"] for i in range(3)]  # graph replays
        for a, b in zip(first, again):
            np.testing.assert_array_equal(a, b)
        serial = rt.backend.run("decoder", {"z": z})["image"]
        errors, results = [], []

        def work():
            try:
                for _ in range(20):
                    results.append(rt.backend.run("decoder", {"z": z})["image"])
            except Exception as e:  # noqa: BLE001 - collected and asserted below
                errors.append(e)

        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors and len(results) == 160
        for r in results:
            np.testing.assert_array_equal(r, serial)


@pytest.mark.gpu
def test_mismatching_sidecar_is_refused_with_rebuild_command(gpu_bundle, tmp_path):
    root = shutil.copytree(gpu_bundle, tmp_path / "b")
    engine = next((root / "engines").glob("decoder.fp32.*.plan"))
    data = json.loads(sidecar_path(engine).read_text())
    data["tensorrt"]["version"] = "10.0.0.1"
    sidecar_path(engine).write_text(json.dumps(data))
    with pytest.raises(EngineMismatchError, match=r"TensorRT 10\.0\.0\.1.*python -m export\.tensorrt\.build"):
        runtime.load(root, backend="tensorrt", device="cuda", graphs=("decoder",))
