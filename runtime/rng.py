"""The seeded standard-normal stream shared by both runtimes: `VAERuntime.sample(n, seed=S)` (and
`Posterior.sample(seed=S)`) in Python and `vae_decode --count N --seed S` in C++
(runtime/cpp/examples/normal_stream.hpp, the same definition line for line) draw the same latents for the same seed.

NumPy's own generators (PCG64 + its ziggurat) and C++'s (std::mt19937 + std::normal_distribution, which differs
between standard libraries) cannot be reproduced across languages, so the stream is defined here, small enough to
implement anywhere:

    SplitMix64 (Steele, Lea & Flood 2014), seed S in [0, 2**64):   for i = 1, 2, ...
        z = (S + i * 0x9E3779B97F4A7C15) mod 2**64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) mod 2**64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) mod 2**64
        x_i = z ^ (z >> 31)
    Box-Muller on consecutive pairs (x_1, x_2), (x_3, x_4), ..., in IEEE double:
        u1 = ((x_odd >> 11) + 1) * 2**-53        in (0, 1]  (never 0: no log(0))
        u2 = (x_even >> 11) * 2**-53             in [0, 1)
        r = sqrt(-2 * log(u1)),  t = 6.283185307179586 * u2
        two values: r * cos(t), then r * sin(t); each rounded once to float32
    Values fill the output in C order (row after row); an odd count drops the last sine, so a longer draw from the
    same seed starts with the shorter one.

Integer steps, sqrt, products and the float32 rounding are exact or correctly rounded in IEEE arithmetic everywhere;
log, cos and sin come from each platform's math library (NumPy's SIMD loops here, the C library's in C++), which may
differ in the last bit of a double. After the rounding to float32 the two streams are identical except where such a
last-bit difference straddles a float32 rounding boundary (about one value in 10**8): within 1 ulp of float32,
always (tests/runtime/cpp/test_cpp_runtime.py compares them).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

GOLDEN = 0x9E3779B97F4A7C15
MIX1 = 0xBF58476D1CE4E5B9
MIX2 = 0x94D049BB133111EB
TWO_PI = 6.283185307179586
SEED_LIMIT = 1 << 64


def check_seed(seed: Any) -> int:
    """`seed` as an int in [0, 2**64); None draws a fresh one from the OS (os.urandom: not `secrets`, which imports
    `random` - a cold start imports nothing it does not use). ValueError otherwise."""
    if seed is None:
        return int.from_bytes(os.urandom(8), "little")
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < SEED_LIMIT:
        raise ValueError(f"seed: expected an integer in [0, 2**64) or None, got {seed!r}")
    return int(seed)


BLOCK_PAIRS = 1 << 18  # pairs drawn per step: the float64 temporaries stay a few MiB, whatever the output size


def splitmix64(seed: int, count: int, start: int = 0) -> np.ndarray:
    """SplitMix64 outputs x_(start+1)..x_(start+count) of `seed` (uint64), vectorized (each output depends only on
    its index, so no state is carried)."""
    seed = check_seed(seed)
    z = np.arange(start + 1, start + count + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps modulo 2**64, as defined
        z *= np.uint64(GOLDEN)
        z += np.uint64(seed)
        z ^= z >> np.uint64(30)
        z *= np.uint64(MIX1)
        z ^= z >> np.uint64(27)
        z *= np.uint64(MIX2)
        z ^= z >> np.uint64(31)
    return z


def standard_normal(seed: int | None, shape: int | tuple[int, ...]) -> np.ndarray:
    """float32 array of `shape` filled (C order) with the seeded standard-normal stream defined above."""
    shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(d) for d in shape)
    count = int(np.prod(shape, dtype=np.int64))
    if count < 0 or any(d < 0 for d in shape):
        raise ValueError(f"shape: expected non-negative sizes, got {shape}")
    seed = check_seed(seed)
    out = np.empty(count + (count & 1), dtype=np.float32)
    pairs = len(out) // 2
    for first in range(0, pairs, BLOCK_PAIRS):
        n = min(BLOCK_PAIRS, pairs - first)
        x = splitmix64(seed, 2 * n, start=2 * first)
        u1 = ((x[0::2] >> np.uint64(11)) + np.uint64(1)).astype(np.float64) * 2.0**-53
        u2 = (x[1::2] >> np.uint64(11)).astype(np.float64) * 2.0**-53
        r = np.sqrt(-2.0 * np.log(u1))
        t = TWO_PI * u2
        out[2 * first : 2 * (first + n) : 2] = r * np.cos(t)  # float64 -> float32: one rounding, to nearest
        out[2 * first + 1 : 2 * (first + n) : 2] = r * np.sin(t)
    return out[:count].reshape(shape)
