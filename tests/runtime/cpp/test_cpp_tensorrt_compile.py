"""The C++ runtime compiles with its native TensorRT backend against TensorRT's published headers (10.3 and 11.1).

No TensorRT library and no GPU here, so nothing is linked or run: CMake's compile check
(-DVAE_TENSORRT_COMPILE_CHECK=<TensorRT include>, target vae_runtime_trt_compile_check) compiles every library
source with VAE_RUNTIME_HAS_TENSORRT=1 and -Wall -Wextra -Wpedantic -Werror, against the headers in
../shared/third_party/tensorrt/<version>/include (used in place) and the CUDA 12.6 runtime headers that
runtime/cpp/scripts/fetch_deps.py takes from PyPI wheels. A call to a TensorRT method that a release lacks, a changed
signature, or a new warning in our code fails the test with the compiler's messages. What it cannot catch: link
errors, ABI or behaviour differences, anything that happens at run time.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cpp_support import cmake_args

pytestmark = pytest.mark.slow  # 25-35 s per TensorRT version on 2 idle cores, ~60 s shared (every source at -O3)

REPO = Path(__file__).resolve().parents[3]
CPP = REPO / "runtime" / "cpp"
TRT_HEADERS = "../shared/third_party/tensorrt"  # relative to the repo root, as CI lays shared/ beside the clone
FETCH = CPP / "scripts" / "fetch_deps.py"
TARGET = "vae_runtime_trt_compile_check"
# Symbols that only exist in the object when the real TensorRT / CUDA calls were compiled in.
TRT_CALLS = ("createInferRuntime_INTERNAL", "getInferLibVersion", "cudaMalloc", "cudaMemcpyAsync")


def _run(cmd, what: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `cmd` from the repo root; on failure, fail with every compiler diagnostic first, then the output's tail."""
    proc = subprocess.run([str(c) for c in cmd], cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        out = proc.stdout + proc.stderr
        diagnostics = [line for line in out.splitlines() if re.search(r"(error|warning)[:\]]", line)]
        pytest.fail(
            f"{what} failed (exit {proc.returncode}): {' '.join(map(str, cmd))}\n"
            f"--- diagnostics ({len(diagnostics)}):\n"
            + "\n".join(diagnostics[:60])
            + f"\n--- output tail:\n{out[-6000:]}"
        )
    return proc


@pytest.fixture(scope="module")
def cuda_include() -> Path:
    """The CUDA 12.6 runtime headers (nvidia-cuda-runtime-cu12 + nvidia-cuda-nvcc-cu12 include/ trees)."""
    proc = _run([sys.executable, FETCH, "--only", "cuda_headers", "--print-root"], "fetch_deps.py --only cuda_headers")
    root = Path(proc.stdout.strip().split("cuda_headers=", 1)[1])
    return root / "include"


@pytest.mark.parametrize("version", ["10.3", "11.1"])
def test_runtime_compiles_with_tensorrt_backend(version, cuda_include, tmp_path):
    if shutil.which("cmake") is None or shutil.which("nm") is None:
        pytest.fail("this test needs cmake >= 3.18, a C++17 compiler and nm (binutils) on PATH")
    trt_include = f"{TRT_HEADERS}/{version}/include"
    if not (REPO / trt_include / "NvInfer.h").is_file():
        pytest.fail(
            f"{REPO / trt_include}: no NvInfer.h; expected TensorRT {version}'s published headers in shared/ "
            "beside the repository (../shared/third_party/tensorrt/<version>/include)"
        )
    build = tmp_path / "build"
    t0 = time.perf_counter()
    _run(
        [
            "cmake",
            "-S",
            CPP,
            "-B",
            build,
            *cmake_args(),
            "-DCMAKE_EXPORT_COMPILE_COMMANDS=ON",
            "-DVAE_BUILD_EXAMPLES=OFF",
            "-DVAE_BUILD_TESTS=OFF",
            f"-DVAE_TENSORRT_COMPILE_CHECK={trt_include}",
            f"-DVAE_CUDA_INCLUDE_DIR={cuda_include}",
        ],
        f"configure (TensorRT {version} headers)",
    )
    t1 = time.perf_counter()
    _run(["cmake", "--build", build, "--target", TARGET, "-j", "2"], f"compile check against TensorRT {version}")
    print(f"TensorRT {version} compile check: configure {t1 - t0:.1f} s, compile {time.perf_counter() - t1:.1f} s")

    # The right headers and flags reached tensorrt_backend.cpp ...
    commands = json.loads((build / "compile_commands.json").read_text())
    ours = {Path(c["file"]).name: c["command"] for c in commands if f"{TARGET}.dir" in c["command"]}
    assert sorted(ours) == sorted(p.name for p in (CPP / "src").glob("*.cpp")), sorted(ours)
    cmd = ours["tensorrt_backend.cpp"]
    assert re.search(rf"-isystem \S*tensorrt/{re.escape(version)}/include(\s|$)", cmd), cmd
    assert f"-isystem {cuda_include}" in cmd and "-Werror" in cmd and "-DVAE_RUNTIME_HAS_TENSORRT=1" in cmd, cmd

    # ... and the TensorRT code was really compiled, not left out by the preprocessor: the backend object defines
    # open_tensorrt and calls into libnvinfer / libcudart; runtime.cpp takes open_tensorrt from it (no stub).
    objects = {o.name.removesuffix(".o"): o for o in build.rglob(f"{TARGET}.dir/**/*.o")}
    assert len(objects) == len(ours), sorted(objects)
    trt_syms = _run(["nm", "-C", objects["tensorrt_backend.cpp"]], "nm").stdout
    assert re.search(r" T vae::detail::open_tensorrt\(", trt_syms), "tensorrt_backend.cpp.o defines no open_tensorrt"
    undefined = {line.split()[-1] for line in trt_syms.splitlines() if line.lstrip().startswith("U ")}
    assert set(TRT_CALLS) <= undefined, f"missing TensorRT/CUDA calls: {set(TRT_CALLS) - undefined}"
    runtime_syms = _run(["nm", "-C", objects["runtime.cpp"]], "nm").stdout
    assert re.search(r" U vae::detail::open_tensorrt\(", runtime_syms), "runtime.cpp compiled its no-TensorRT stub"
