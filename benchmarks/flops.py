"""Useful FLOPs per graph call of the original VanillaVAE, counted from its architecture (no torch needed).

The figure is fixed per (config, graph, batch): it is what the *original* PyTorch model computes, so a graph rewrite
(e.g. a ConvTranspose turned into Conv + DepthToSpace) or a backend that does redundant work cannot inflate its own
GFLOP/s. Only convolutions and matrix products count (2 FLOPs per multiply-add; activations, BatchNorm and Tanh are
negligible and not what the matmul ceiling measures), the same convention as torch.utils.flop_counter, which
tests/benchmarks/test_flops.py checks this count against. Counted analytically so that the benchmark also runs
where torch is not installed (a Jetson with the runtime only).
"""

from __future__ import annotations

import json
from functools import lru_cache


def _conv(batch: int, c_in: int, c_out: int, k: int, positions: int) -> int:
    """2 * MACs of a dense convolution evaluated at `positions` (output pixels; input pixels for a transposed one)."""
    return 2 * batch * c_in * c_out * k * k * positions


@lru_cache(maxsize=64)
def count_flops(config_json: str, graph: str, batch: int) -> int:
    """FLOPs of one call of `graph` ("encoder" or "decoder") at `batch`, for the model config given as JSON.

    The config needs in_channels, out_channels (default: in_channels), image_size, latent_dim and hidden_dims, as in
    VAEConfig.to_dict() and the bundle's model spec.
    """
    cfg = json.loads(config_json)
    c_in, size, latent = int(cfg["in_channels"]), int(cfg["image_size"]), int(cfg["latent_dim"])
    c_out = int(cfg.get("out_channels", c_in))
    hidden = [int(h) for h in cfg["hidden_dims"]]
    bottleneck = size >> len(hidden)
    flat = hidden[-1] * bottleneck * bottleneck
    if graph == "encoder":
        total, ch, side = 0, c_in, size
        for h in hidden:  # Conv2d(k3, s2, p1): output side halves
            side //= 2
            total += _conv(batch, ch, h, 3, side * side)
            ch = h
        return total + 2 * (2 * batch * flat * latent)  # fc_mu and fc_var
    if graph == "decoder":
        total = 2 * batch * latent * flat  # decoder_input
        rev, side = hidden[::-1], bottleneck
        for a, b in zip(rev, rev[1:]):  # ConvTranspose2d(k3, s2, p1, op1) at the input resolution, side doubles
            total += _conv(batch, a, b, 3, side * side)
            side *= 2
        total += _conv(batch, rev[-1], rev[-1], 3, side * side)  # final_layer's ConvTranspose
        side *= 2
        return total + _conv(batch, rev[-1], c_out, 3, side * side)  # final Conv2d(k3, p1) to the image
    raise ValueError(f"count_flops: graph must be 'encoder' or 'decoder', got {graph!r}")
