// normal_stream.hpp - the seeded standard-normal stream of vae-deploy, the same as Python's runtime.rng (runtime/rng.py
// defines it): `vae_decode --count N --seed S` and Python's `sample(N, seed=S)` draw the same latents.
//
//   SplitMix64, seed S in [0, 2^64): x_i = mix(S + i * 0x9E3779B97F4A7C15), i = 1, 2, ... (mod 2^64)
//   Box-Muller on pairs (x_1, x_2), (x_3, x_4), ... in double: u1 = ((x_odd >> 11) + 1) * 2^-53 in (0, 1],
//   u2 = (x_even >> 11) * 2^-53, r = sqrt(-2 log u1), t = 6.283185307179586 * u2 -> r cos t, r sin t, each rounded
//   once to float. Values fill the output in order; an odd count drops the last sine.
//
// Integer steps, sqrt, products and the float rounding are exact or correctly rounded everywhere; log, cos and sin
// come from the C library (NumPy uses its own loops), which may differ in a double's last bit: the floats agree
// except, rarely, by 1 ulp. Header-only, no dependency: copy it into an application that wants the same draws.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>

namespace normal_stream {

// The i-th SplitMix64 output of `seed` (i = 1, 2, ...).
inline std::uint64_t splitmix64(std::uint64_t seed, std::uint64_t i) {
    std::uint64_t z = seed + i * 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

// Fill out[0 .. count) with the stream of `seed`.
inline void standard_normal(std::uint64_t seed, float* out, std::size_t count) {
    const double scale = 1.0 / 9007199254740992.0;  // 2^-53, exact
    const double two_pi = 6.283185307179586;
    for (std::size_t k = 0; 2 * k < count; ++k) {
        const std::uint64_t a = splitmix64(seed, 2 * static_cast<std::uint64_t>(k) + 1);
        const std::uint64_t b = splitmix64(seed, 2 * static_cast<std::uint64_t>(k) + 2);
        const double u1 = static_cast<double>((a >> 11) + 1) * scale;
        const double u2 = static_cast<double>(b >> 11) * scale;
        const double r = std::sqrt(-2.0 * std::log(u1));
        const double t = two_pi * u2;
        const double c = r * std::cos(t);
        out[2 * k] = static_cast<float>(c);
        if (2 * k + 1 < count) {
            const double s = r * std::sin(t);
            out[2 * k + 1] = static_cast<float>(s);
        }
    }
}

}  // namespace normal_stream
