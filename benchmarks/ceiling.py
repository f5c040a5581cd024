"""The machine's FP32 matrix-multiply ceiling, measured (not looked up), to put model GFLOP/s in proportion.

A square SGEMM through numpy's BLAS is timed several times; the best run is the ceiling. On shared, noisy machines
the ceiling moves by tens of percent between runs, so the harness calls this repeatedly, interleaved with the graphs,
and keeps the best.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Ceiling:
    gflops: float      # best observed
    samples: tuple[float, ...]
    size: int


def measure_matmul_gflops(size: int = 1024, repeats: int = 5, seed: int = 0) -> Ceiling:
    """Best GFLOP/s of an FP32 (size x size) @ (size x size) product over `repeats` timed runs (after one warm-up)."""
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
    return Ceiling(gflops=max(samples), samples=tuple(samples), size=size)
