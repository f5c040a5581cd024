"""Building runtime/cpp for the tests: one CMake build per test session, shared by every test that needs it."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CPP = REPO / "runtime" / "cpp"


@dataclasses.dataclass(frozen=True)
class CppBuild:
    build_dir: Path
    configure_log: str
    seconds: float

    def exe(self, name: str) -> Path:
        return self.build_dir / name

    @property
    def library(self) -> Path:
        return self.build_dir / "libvae_runtime.so"


def cmake_args() -> list[str]:
    args = ["-DCMAKE_BUILD_TYPE=Release", f"-DPython3_EXECUTABLE={sys.executable}"]
    if shutil.which("ninja"):
        args += ["-G", "Ninja"]
    return args


def run_checked(cmd, *, timeout: float = 600, check: bool = True, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        pytest.fail(
            f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc


def build_cpp(build: Path) -> CppBuild:
    """Configure and build runtime/cpp in `build` (deps fetched into third_party/ on first use)."""
    if shutil.which("cmake") is None:
        pytest.fail("cmake is not on PATH: the C++ runtime tests need cmake >= 3.18 and a C/C++ compiler")
    t0 = time.perf_counter()
    conf = run_checked(["cmake", "-S", CPP, "-B", build, *cmake_args()])
    run_checked(["cmake", "--build", build, "-j", str(min(os.cpu_count() or 1, 4))])
    seconds = time.perf_counter() - t0
    # Shown with -rP or on failure; the report records the measured build time.
    print(f"C++ runtime configure+build: {seconds:.1f} s")
    return CppBuild(build, conf.stdout + conf.stderr, seconds)
