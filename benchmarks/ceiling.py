"""The machine's FP32 matrix-multiply ceiling, measured (not looked up), to put model GFLOP/s in proportion.

A square SGEMM through numpy's BLAS is timed several times; the best run is the ceiling. On shared, noisy machines
the ceiling moves by tens of percent between runs, so the harness calls this repeatedly, interleaved with the graphs,
and keeps the best. The BLAS runs with the same number of threads as the backends (`threads`, default: every
core), so a share is work per second on the same cores; threadpoolctl sets it (numpy has no API for it).
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
    threads: int | None = None   # BLAS threads used (None: the BLAS default)


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
