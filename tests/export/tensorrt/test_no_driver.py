"""Every TensorRT entry point on a host with cuda-python but no NVIDIA driver (this machine, CI): exit 2 with one line,
never a raw traceback. The real cuda-python wheels behave differently there: 12.6 raises RuntimeError("Failed to
dlopen libcuda.so.1") from cudaGetDeviceCount, 13.x returns cudaErrorInsufficientDriver. Both are downloaded (pinned,
sha256-checked) into third_party/ and put on PYTHONPATH of a subprocess only: the test process never imports them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
CACHE = REPO / "third_party" / "cuda-python-wheels"
# (requirement, wheel file, sha256) per Python tag; x86_64 Linux.
WHEELS = {
    ("12.6", "cp311"): (
        "cuda-python==12.6.2.post1",
        "cuda_python-12.6.2.post1-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
        "d47ba3464fd890025a6d1929dac5e71f2d8c16d0abfe461123cf8be1f975d3a0",
    ),
    ("13.0", "cp311"): (
        "cuda-bindings==13.0.0",
        "cuda_bindings-13.0.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl",
        "d74f0f6de5006a4ffd2dd30544b10359488d9af71d1cb755205cb3094102a2d9",
    ),
}

pytestmark = pytest.mark.slow


def cuda_python(line: str) -> Path:
    """The extracted wheel folder (holding cuda/bindings) for cuda-python `line`; downloaded once."""
    from tests.export.tensorrt.trt_api.wheels import Unavailable, pinned_wheel, python_tag

    tag = python_tag()
    if (line, tag) not in WHEELS or os.uname().machine != "x86_64":
        pytest.skip(f"no pinned cuda-python {line} wheel for {tag} on {os.uname().machine}")
    req, name, sha = WHEELS[(line, tag)]
    try:
        return pinned_wheel(req, name, sha, "cuda/bindings", cache=CACHE)
    except Unavailable as e:
        pytest.fail(str(e))


def run(site: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=600)


@pytest.fixture(scope="module")
def bundle(tiny_checkpoint, tmp_path_factory) -> Path:
    from export.to_onnx import export_bundle

    return export_bundle(tiny_checkpoint, tmp_path_factory.mktemp("nodriver") / "tiny", log=lambda *a: None)


@pytest.mark.parametrize("line", ["12.6", "13.0"])
def test_no_driver_is_no_gpu_and_every_entry_point_exits_2(line, bundle):
    site = cuda_python(line)
    if shutil.which("nvidia-smi") and subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0:
        pytest.skip("an NVIDIA driver is installed here")
    probe = run(
        site,
        "-c",
        "import cuda.bindings.runtime as r; print(r.__file__); "
        "from runtime.backends.tensorrt import gpu_count, cuda_gpu_info; "
        "print(gpu_count(), cuda_gpu_info(0))",
    )
    assert probe.returncode == 0, probe.stderr
    assert str(site) in probe.stdout and probe.stdout.splitlines()[-1] == "0 None", probe.stdout

    cases = {
        # TensorRT-RTX is installed here: its build needs no GPU, its verification does
        "build": (
            "-m",
            "export.tensorrt.build",
            str(bundle),
            "--flavour",
            "trt_rtx",
            "--graphs",
            "decoder",
            "--precision",
            "fp32",
        ),
        "runtime.verify.parity": (
            "-m",
            "runtime.verify.parity",
            str(bundle),
            "--backend",
            "tensorrt",
            "--device",
            "cuda",
        ),
        "runtime.load": (
            "-c",
            f"import runtime, sys\ntry:\n    runtime.load({str(bundle)!r}, backend='tensorrt', "
            "device='cuda')\nexcept runtime.BackendUnavailableError as e:\n"
            "    print(e, file=sys.stderr); sys.exit(2)",
        ),
    }
    for name, args in cases.items():
        proc = run(site, *args)
        err = proc.stderr.strip()
        assert proc.returncode == 2, f"{name}: exit {proc.returncode}\n{proc.stdout}\n{err}"
        assert "Traceback" not in err and "RuntimeError" not in err, f"{name}:\n{err}"
        lines = [ln for ln in err.splitlines() if not ln.startswith("[")]  # TensorRT's own log lines start with [
        assert len(lines) == 1, f"{name}: expected one line on stderr, got:\n{err}"
        assert "GPU" in lines[0] or "CUDA" in lines[0] or "cuda" in lines[0], lines[0]
