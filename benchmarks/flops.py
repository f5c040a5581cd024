"""Useful FLOPs per graph call, counted once from the original PyTorch model.

Counted with torch.utils.flop_counter on VanillaVAE.encode / decode in FP32 for a given batch, so the figure is fixed
per (config, graph, batch): a graph rewrite (e.g. a ConvTranspose turned into Conv + DepthToSpace) or a backend that
does redundant work cannot inflate its own GFLOP/s. Only convolutions and matrix products are counted (activations,
BatchNorm and Tanh are negligible and not what the ceiling measures).
"""
from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=64)
def count_flops(config_json: str, graph: str, batch: int) -> int:
    """FLOPs of one call of `graph` ("encoder" or "decoder") at `batch`, for the VAEConfig given as JSON."""
    import json

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from vae_model import VAEConfig, VanillaVAE

    cfg = VAEConfig.from_dict(json.loads(config_json))
    model = VanillaVAE(cfg).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        if graph == "encoder":
            model.encode(torch.zeros(batch, *cfg.image_shape))
        elif graph == "decoder":
            model.decode(torch.zeros(batch, cfg.latent_dim))
        else:
            raise ValueError(f"count_flops: graph must be 'encoder' or 'decoder', got {graph!r}")
    return int(counter.get_total_flops())
