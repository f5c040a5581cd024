"""Graph passes applied to a copy of the PyTorch model before export. Each is exact in FP32 and tested.

fold_batchnorm: folds every eval-mode BatchNorm2d into the Conv2d / ConvTranspose2d before it, so the exported graph
has no BatchNormalization node on any exporter version and TensorRT / ONNX Runtime see plain convolutions.
The axis matters: a Conv2d weight is (C_out, C_in/g, kH, kW), so the per-channel BN scale multiplies axis 0; a
ConvTranspose2d weight is (C_in, C_out/g, kH, kW), so it multiplies axis 1. Scaling axis 0 of a ConvTranspose
(a known bug in some tools) is silently wrong whenever C_in == C_out, as in the VanillaVAE's final layer.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def _fold_into(conv: nn.Conv2d | nn.ConvTranspose2d, bn: nn.BatchNorm2d) -> None:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (C_out,)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    w = conv.weight
    if isinstance(conv, nn.ConvTranspose2d):
        g = conv.groups
        cin, cout_g = w.shape[0], w.shape[1]
        # (C_in, C_out/g, k, k) -> (g, C_in/g, C_out/g, k, k); output channel = group * C_out/g + j
        w5 = w.reshape(g, cin // g, cout_g, *w.shape[2:])
        w5 = w5 * scale.reshape(g, 1, cout_g, 1, 1)
        new_w = w5.reshape(w.shape)
    else:
        new_w = w * scale.reshape(-1, 1, 1, 1)
    conv.weight = nn.Parameter(new_w.detach().clone())
    conv.bias = nn.Parameter(((bias - bn.running_mean) * scale + bn.bias).detach().clone())


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Return an eval-mode deep copy of `model` with each (Conv|ConvTranspose)2d -> BatchNorm2d pair folded.

    The caller's model is never modified (not its weights, not its train/eval mode).
    """
    folded = copy.deepcopy(model).eval()
    for parent in folded.modules():
        if not isinstance(parent, nn.Sequential):
            continue
        children = list(parent._modules.items())
        for (_, a), (name_b, b) in zip(children, children[1:]):
            if isinstance(a, (nn.Conv2d, nn.ConvTranspose2d)) and isinstance(b, nn.BatchNorm2d):
                if not b.track_running_stats or b.running_mean is None:
                    raise ValueError(f"BatchNorm {name_b} has no running statistics to fold")
                _fold_into(a, b)
                parent._modules[name_b] = nn.Identity()
    return folded


def count_batchnorm(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
