"""What the numbers were measured on: CPU/GPU model, threads, library versions, and Jetson power/clock state."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

from runtime.backends.base import cpu_model

_PACKAGES = ("numpy", "onnxruntime", "onnxruntime-gpu", "torch", "tensorrt", "tensorrt-rtx-cu12", "cuda-python", "onnx")


def _cpu_model() -> str:
    return cpu_model() or platform.processor() or platform.machine()


def _run(cmd: list[str]) -> str | None:
    if not shutil.which(cmd[0]):
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def collect(threads: int | None = None) -> dict[str, Any]:
    versions = {}
    for pkg in _PACKAGES:
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            pass
    env: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "threads": threads,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "versions": versions,
    }
    gpu = _run(
        ["nvidia-smi", "--query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit", "--format=csv,noheader"]
    )
    if gpu:
        env["gpu"] = gpu
    tegra = Path("/etc/nv_tegra_release")
    if tegra.exists():  # a Jetson: the power mode and clocks change latency by 2-3x, so they travel with the numbers
        env["l4t"] = tegra.read_text().splitlines()[0].strip()
        env["jetson_power_mode"] = _run(["nvpmodel", "-q"])
        env["jetson_clocks"] = _run(["jetson_clocks", "--show"])
    return env
