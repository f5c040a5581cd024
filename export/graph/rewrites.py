"""Speed rewrites of the decoder, applied to the BN-folded PyTorch copy before export: exact module swaps, tested.

rewrite_decoder(vae, layers="last", form="phases", absorb_head=True, fold_stem=True) -> DecoderRewrite is the pass
export.to_onnx applies by default; its defaults measured fastest on ONNX Runtime CPU
(docs/performance.md#decoder-rewrites):
  - fold_stem: decoder_input (Linear) -> view -> first ConvTranspose2d, linear with nothing between: one Linear;
  - the last upsampling ConvTranspose2d + LeakyReLU (and, with absorb_head, the final 3x3 Conv2d + Tanh) become a
    sub-pixel block computed at the low resolution, ending in one DepthToSpace of 4 * 3 channels (layers="last";
    "all" rewrites every upsampling layer). The middle ConvTranspose2d layers stay.
Forms of a sub-pixel block (SubPixelUpsample; subpixel_upsampling swaps it in for any ConvTranspose2d(kernel 3,
stride 2, padding 1, output_padding 1)): "phases" (four small convs, exactly the useful multiply-adds), "dense" (one
2x2 conv to 4 * C_out channels) and "nhwc" (dense, phase-major channels, channels-last pixel shuffles; made for the
INT8 decoder, docs/performance.md#int8-decoder-form). The exported graph holds only Gemm / Conv / Add / LeakyRelu /
Tanh / DepthToSpace (nhwc adds Transpose / Reshape / Slice / Concat), which ONNX Runtime, TensorRT's ONNX parser and
the C++ runtime all take.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from runtime.errors import VaeError

FORMS = ("dense", "phases", "nhwc")
LAYER_CHOICES = ("last", "all", "none")

# Pointwise activations: they commute with DepthToSpace, so they may move to the low-resolution side of it.
POINTWISE = (nn.LeakyReLU, nn.ReLU, nn.ReLU6, nn.Tanh, nn.Sigmoid, nn.ELU, nn.SiLU, nn.GELU, nn.Hardtanh)

# Output phase a (0: even output index, 1: odd) and input offset d (0: x[m], 1: x[m + 1]) -> the transposed kernel's
# tap, or None where that phase does not see that input. From y[o] = sum_k x[i] w[k], o = 2 i - 1 + k (padding 1).
_TAP = {(0, 0): 1, (0, 1): None, (1, 0): 2, (1, 1): 0}


class RewriteError(VaeError, ValueError):
    """A rewrite cannot be applied (unsupported layer, bad option); the message names the layer and the value."""


@dataclass(frozen=True)
class RewriteResult:
    """What a pass did: the rewritten copy and, per replaced layer, its qualified name and what it absorbed."""

    model: nn.Module
    replaced: tuple[str, ...]
    absorbed: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # replaced name -> qualified names taken


def is_subpixel_candidate(m: nn.Module) -> bool:
    """True for the ConvTranspose2d the sub-pixel form reproduces exactly: k3, s2, p1, output_padding 1, plain."""
    return (
        isinstance(m, nn.ConvTranspose2d)
        and tuple(m.kernel_size) == (3, 3)
        and tuple(m.stride) == (2, 2)
        and tuple(m.padding) == (1, 1)
        and tuple(m.output_padding) == (1, 1)
        and tuple(m.dilation) == (1, 1)
        and m.groups == 1
        and m.padding_mode == "zeros"
    )


def is_head_candidate(m: nn.Module) -> bool:
    """True for a Conv2d that phase space reproduces exactly: k3, stride 1, padding 1 ("same"), plain."""
    return (
        isinstance(m, nn.Conv2d)
        and tuple(m.kernel_size) == (3, 3)
        and tuple(m.stride) == (1, 1)
        and tuple(m.padding) == (1, 1)
        and tuple(m.dilation) == (1, 1)
        and m.groups == 1
        and m.padding_mode == "zeros"
    )


def _crd_to_dcr(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Reorder axis `dim` from CRD (c * 4 + phase) to DCR (phase * C + c)."""
    shape = t.shape
    t = t.reshape(*shape[:dim], shape[dim] // 4, 4, *shape[dim + 1 :]).transpose(dim, dim + 1)
    return t.reshape(shape).contiguous()


def subpixel_kernels(conv_t: nn.ConvTranspose2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense sub-pixel weight (4 C_out, C_in, 2, 2) and bias (4 C_out) of a k3/s2/p1/op1 ConvTranspose2d.

    Output channel c * 4 + a * 2 + b is phase (a, b) of channel c: the order pixel_shuffle and ONNX DepthToSpace
    mode CRD read. The input must be padded by one zero row at the bottom and one zero column on the right.
    """
    w = conv_t.weight.detach()  # (C_in, C_out, 3, 3): no flip, see _TAP
    c_in, c_out = w.shape[:2]
    k = w.new_zeros(c_out, 2, 2, c_in, 2, 2)  # (c, a, b, ci, dy, dx)
    for a in (0, 1):
        for b in (0, 1):
            for dy in (0, 1):
                for dx in (0, 1):
                    ky, kx = _TAP[(a, dy)], _TAP[(b, dx)]
                    if ky is not None and kx is not None:
                        k[:, a, b, :, dy, dx] = w[:, :, ky, kx].t()
    bias = conv_t.bias.detach() if conv_t.bias is not None else w.new_zeros(c_out)
    return k.reshape(4 * c_out, c_in, 2, 2), bias.repeat_interleave(4)


def phase_space_kernels(conv: nn.Conv2d) -> tuple[torch.Tensor, torch.Tensor]:
    """A 3x3 "same" Conv2d on a 2x-upsampled image, as a 3x3 "same" conv on its four phases at the low resolution.

    Input channel ci * 4 + p * 2 + q holds phase (p, q) of channel ci, output channel co * 4 + a * 2 + b phase (a, b)
    of channel co (CRD order on both sides). High-res row 2m + a + ky - 1 is phase p = (a + ky - 1) mod 2 of low-res
    row m + e, e = floor((a + ky - 1) / 2), so the tap (ky, kx) of the original lands at phase-space tap (e + 1, f + 1).
    High-res zero padding of one pixel is low-res zero padding of one pixel, so "same" stays "same".
    """
    w = conv.weight.detach()  # (C_out, C_in, 3, 3)
    c_out, c_in = w.shape[:2]
    k = w.new_zeros(c_out, 2, 2, c_in, 2, 2, 3, 3)  # (co, a, b, ci, p, q, ey, ex)
    for a in (0, 1):
        for b in (0, 1):
            for ky in range(3):
                for kx in range(3):
                    ry, rx = a + ky - 1, b + kx - 1
                    k[:, a, b, :, ry % 2, rx % 2, ry // 2 + 1, rx // 2 + 1] = w[:, :, ky, kx]
    bias = conv.bias.detach() if conv.bias is not None else w.new_zeros(c_out)
    return k.reshape(4 * c_out, 4 * c_in, 3, 3), bias.repeat_interleave(4)


class SubPixelUpsample(nn.Module):
    """Exact replacement of ConvTranspose2d(k3, s2, p1, op1) -> [activation] [-> Conv2d(k3, p1) -> [activation]].

    Computed at the input resolution; one DepthToSpace(2) (mode CRD, as pixel_shuffle) at the end.
    form="phases": four Conv2d (1x1, 1x2, 2x1, 2x2); with a head, the head sums 2x2 convs over those four phases.
    form="dense": one 2x2 Conv2d to 4 * C_out channels; with a head, one 3x3 phase-space Conv2d.
    form="nhwc": as dense, phase-major channels and a channels-last pixel shuffle; with a head, one 2x2 Conv2d over
    the phases to 4 * C_head channels, each phase cropped at its own offset, then one DepthToSpace.

    The identity: a stride-2 transposed convolution scatters each input pixel into a 3x3 output window, so output
    pixel (2m + a, 2n + b) only sees input rows m (and m + 1 when a = 1) and columns n (and n + 1 when b = 1). Along
    one axis, y[2m] = w[1] x[m] and y[2m + 1] = w[2] x[m] + w[0] x[m + 1] (x[H] = 0: output_padding's row), so each
    output phase (a, b) is an ordinary 1x1, 1x2, 2x1 or 2x2 convolution of x (padded bottom / right only), and
    DepthToSpace interleaves the phases. Pointwise activations commute with DepthToSpace, so they run per phase, fused
    into each Conv. A head's input phase p only reaches low-res rows {m, m+1} (p = 0) or {m-1, m} (p = 1), hence the
    phases form's sum of 2x2 convs (4/9 of the dense head's multiply-adds); 3 output channels x 4 phases fill 12 of
    a 16-wide SIMD block instead of 3 of 16.
    """

    def __init__(
        self,
        conv_t: nn.ConvTranspose2d,
        activation: nn.Module | None = None,
        *,
        form: str = "phases",
        head: nn.Conv2d | None = None,
        head_activation: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if form not in FORMS:
            raise RewriteError(f"sub-pixel form: expected one of {list(FORMS)}, got {form!r}")
        if not is_subpixel_candidate(conv_t):
            raise RewriteError(
                "sub-pixel rewrite needs ConvTranspose2d(kernel 3, stride 2, padding 1, "
                f"output_padding 1, dilation 1, groups 1, zero padding), got {conv_t}"
            )
        for what, act in (("activation", activation), ("head_activation", head_activation)):
            if act is not None and not isinstance(act, POINTWISE):
                raise RewriteError(
                    f"sub-pixel rewrite: {what} must be pointwise ({[t.__name__ for t in POINTWISE]}), got {act}"
                )
        if head is not None:
            if not is_head_candidate(head):
                raise RewriteError(
                    f"sub-pixel rewrite: head must be Conv2d(kernel 3, stride 1, padding 1, dilation 1,"
                    f" groups 1, zero padding), got {head}"
                )
            if head.in_channels != conv_t.out_channels:
                raise RewriteError(
                    f"sub-pixel rewrite: head takes {head.in_channels} channels, the ConvTranspose2d "
                    f"gives {conv_t.out_channels}"
                )
        elif head_activation is not None:
            raise RewriteError("sub-pixel rewrite: head_activation given without a head")
        self.form = form
        self.in_channels, self.out_channels = conv_t.in_channels, conv_t.out_channels
        self.activation = activation if activation is not None else nn.Identity()
        weight, bias = subpixel_kernels(conv_t)
        if form == "nhwc":  # phase-major (DCR) output channels: phase (a, b) of channel c is (a * 2 + b) * C + c
            weight, bias = _crd_to_dcr(weight, 0), _crd_to_dcr(bias, 0)
        if form in ("dense", "nhwc"):
            self.weight = nn.Parameter(weight.clone(), requires_grad=False)
        else:
            # Phase (a, b) sees rows m..m+a and columns n..n+b: crop its kernel to (1 + a) x (1 + b).
            w6 = weight.reshape(self.out_channels, 2, 2, self.in_channels, 2, 2)
            for a in (0, 1):
                for b in (0, 1):
                    k = w6[:, a, b, :, : 1 + a, : 1 + b].clone()
                    self.register_parameter(f"weight_{a}{b}", nn.Parameter(k, requires_grad=False))
        self.bias = nn.Parameter(bias.clone(), requires_grad=False)
        self.head_channels = None
        if head is not None:
            hw, hb = phase_space_kernels(head)
            self.head_activation = head_activation if head_activation is not None else nn.Identity()
            self.head_channels = head.out_channels
            if form == "dense":
                self.head_weight = nn.Parameter(hw.clone(), requires_grad=False)
            elif form == "nhwc":
                # Output phase (a, b) only reads phase-space taps ey in {a, a + 1}, ex in {b, b + 1}
                # (phase_space_kernels), so it is a 2x2 conv; with one zero pixel of padding on every side all four
                # phases come from one 2x2 conv over (H + 1) x (W + 1) positions, phase (a, b) at offset (a, b).
                # 4/9 of the dense head's taps (and im2col) per position; input channels in DCR order like `h`.
                hw = _crd_to_dcr(hw, 1)
                k = hw.new_zeros(4, self.head_channels, hw.shape[1], 2, 2)
                for a in (0, 1):
                    for b in (0, 1):
                        k[a * 2 + b] = hw[a * 2 + b :: 4, :, a : a + 2, b : b + 2]
                self.head_weight = nn.Parameter(k.reshape(4 * self.head_channels, -1, 2, 2), requires_grad=False)
                hb = _crd_to_dcr(hb, 0)
            else:
                # Input phase p only ever feeds low-res rows m, m + 1 (p = 0) or m - 1, m (p = 1) of the phase-space
                # kernel (phase_space_kernels), so the head is a sum over the four input phases of 2x2 convs, each
                # padded on one side: 4/9 of the dense head's multiply-adds, and the up-sampled phases never need
                # to be concatenated. ONNX Runtime fuses each Add into the next Conv (NCHWc "Sum").
                w6 = hw.reshape(hw.shape[0], self.out_channels, 2, 2, 3, 3)
                for p in (0, 1):
                    for q in (0, 1):
                        k = w6[:, :, p, q, 1 - p : 3 - p, 1 - q : 3 - q].clone()
                        self.register_parameter(f"head_weight_{p}{q}", nn.Parameter(k, requires_grad=False))
            self.head_bias = nn.Parameter(hb.clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.form == "nhwc":
            return self._forward_nhwc(x)
        if self.form == "dense":
            h = F.conv2d(F.pad(x, (0, 1, 0, 1)), self.weight, self.bias)
        else:
            bias = self.bias.reshape(self.out_channels, 4)
            phases = []
            for a in (0, 1):
                for b in (0, 1):
                    xp = F.pad(x, (0, b, 0, a)) if a or b else x
                    # the activation on each phase, so it fuses into that phase's Conv
                    phases.append(self.activation(F.conv2d(xp, getattr(self, f"weight_{a}{b}"), bias[:, a * 2 + b])))
            if self.head_channels is not None:
                h = None
                for p in (0, 1):
                    for q in (0, 1):
                        y = F.conv2d(
                            F.pad(phases[p * 2 + q], (q, 1 - q, p, 1 - p)),
                            getattr(self, f"head_weight_{p}{q}"),
                            self.head_bias if h is None else None,
                        )
                        h = y if h is None else y + h
                return F.pixel_shuffle(self.head_activation(h), 2)
            return F.pixel_shuffle(torch.stack(phases, dim=2).flatten(1, 2), 2)  # channel c * 4 + phase: CRD
        h = self.activation(h)
        if self.head_channels is not None:
            h = self.head_activation(F.conv2d(h, self.head_weight, self.head_bias, padding=1))
        return F.pixel_shuffle(h, 2)

    def _forward_nhwc(self, x: torch.Tensor) -> torch.Tensor:
        h = self.activation(F.conv2d(F.pad(x, (0, 1, 0, 1)), self.weight, self.bias))  # (N, 4 C, H, W), DCR
        _, c4, hh, ww = h.shape  # static; the batch axis is written -1 so that every Reshape has a constant shape
        if self.head_channels is None:
            # Pixel shuffle written channels-last: (N, H, W, [a, b, c]) -> (N, H, a, W, [b, c]) moves blocks of
            # 2 C contiguous values. ONNX Runtime runs INT8 convs in NHWC and cancels the outer Transposes against
            # its own, so only the block Transpose is left (no NCHW DepthToSpace between two layout Transposes).
            y = h.permute(0, 2, 3, 1).reshape(-1, hh, ww, 2, c4 // 2).permute(0, 1, 3, 2, 4)
            return y.reshape(-1, 2 * hh, 2 * ww, c4 // 4).permute(0, 3, 1, 2)
        co = self.head_channels
        # The activation before the crops (pointwise, so exact): then the quantized graph's DequantizeLinear after
        # the head conv has one consumer, which ONNX Runtime needs to fuse the conv into QLinearConv.
        z = self.head_activation(F.conv2d(h, self.head_weight, self.head_bias, padding=1))  # (N, 4 Co, H+1, W+1)
        y = torch.cat([z[:, k * co : (k + 1) * co, k // 2 : k // 2 + hh, k % 2 : k % 2 + ww] for k in range(4)], dim=1)
        # DCR -> CRD is a Transpose of whole H x W planes, then DepthToSpace: measured 2x faster on ONNX Runtime than
        # one 6-D Transpose of single pixels.
        return F.pixel_shuffle(y.reshape(-1, 4, co, hh, ww).transpose(1, 2).reshape(-1, 4 * co, hh, ww), 2)

    def extra_repr(self) -> str:
        head = f", head -> {self.head_channels}" if self.head_channels is not None else ""
        return f"{self.in_channels}, {self.out_channels}, form={self.form!r}{head}"


def _skip_identity(children: list, j: int) -> int:
    while j < len(children) and isinstance(children[j][1], nn.Identity):
        j += 1
    return j


@torch.no_grad()
def subpixel_upsampling(
    model: nn.Module, form: str = "phases", absorb_head: bool = False, only: Sequence[str] | None = None
) -> RewriteResult:
    """Return a deep copy of `model` with every sub-pixel candidate ConvTranspose2d replaced; `model` is untouched.

    Inside an nn.Sequential, a pointwise activation right after the layer (Identity left by BatchNorm folding is
    skipped) moves into the SubPixelUpsample, and with absorb_head a following 3x3 "same" Conv2d and its pointwise
    activation too; the modules it took over become nn.Identity, so indices and state_dict names of the rest stay.
    A ConvTranspose2d of another shape is left as it is and not listed in `replaced`; so is a candidate whose
    qualified name is not in `only` (when given).
    """
    if form not in FORMS:
        raise RewriteError(f"sub-pixel form: expected one of {list(FORMS)}, got {form!r}")
    out = copy.deepcopy(model)
    replaced, taken = [], {}
    for prefix, parent in list(out.named_modules()):
        children = list(parent.named_children())
        is_seq = isinstance(parent, nn.Sequential)
        for i, (name, child) in enumerate(children):
            qual = f"{prefix}.{name}" if prefix else name
            if not is_subpixel_candidate(child) or (only is not None and qual not in only):
                continue
            absorbed, act, head, head_act = [], None, None, None
            if is_seq:
                j = _skip_identity(children, i + 1)
                if j < len(children) and isinstance(children[j][1], POINTWISE):
                    act = children[j][1]
                    absorbed.append(children[j][0])
                    j = _skip_identity(children, j + 1)
                    if (
                        absorb_head
                        and j < len(children)
                        and is_head_candidate(children[j][1])
                        and children[j][1].in_channels == child.out_channels
                    ):
                        head = children[j][1]
                        absorbed.append(children[j][0])
                        j = _skip_identity(children, j + 1)
                        if j < len(children) and isinstance(children[j][1], POINTWISE):
                            head_act = children[j][1]
                            absorbed.append(children[j][0])
            setattr(parent, name, SubPixelUpsample(child, act, form=form, head=head, head_activation=head_act))
            for other in absorbed:
                setattr(parent, other, nn.Identity())
            replaced.append(qual + (f" (+{'+'.join(absorbed)})" if absorbed else ""))
            taken[qual] = tuple(f"{prefix}.{o}" if prefix else o for o in absorbed)
    out.train(model.training)
    return RewriteResult(out, tuple(replaced), taken)


# ----------------------------------------------------------------------------------------------- the decoder graph


@torch.no_grad()
def compose_linear_upsample(linear: nn.Linear, shape: tuple[int, int, int], conv_t: nn.ConvTranspose2d) -> nn.Linear:
    """One Linear equal to `linear` -> view(-1, *shape) -> `conv_t` (both linear maps, nothing between them).

    Composed in float64 (the result's rounding is then one FP32 rounding of the exact product), by running the
    transposed convolution on the columns of the Linear's weight.
    """
    c, hgt, wid = shape
    if linear.out_features != c * hgt * wid:
        raise RewriteError(f"compose: Linear gives {linear.out_features} features, shape {shape} needs {c * hgt * wid}")
    if conv_t.in_channels != c:
        raise RewriteError(f"compose: ConvTranspose2d takes {conv_t.in_channels} channels, the Linear gives {c}")
    ct = copy.deepcopy(conv_t).double()
    w = linear.weight.detach().double().t().reshape(linear.in_features, c, hgt, wid)  # one basis vector per row
    cols = F.conv_transpose2d(w, ct.weight, None, ct.stride, ct.padding, ct.output_padding, ct.groups, ct.dilation)
    b = linear.bias.detach().double() if linear.bias is not None else w.new_zeros(linear.out_features)
    bias = ct(b.reshape(1, c, hgt, wid))
    out = nn.Linear(linear.in_features, cols[0].numel(), dtype=linear.weight.dtype, device=linear.weight.device)
    out.weight.copy_(cols.reshape(linear.in_features, -1).t())
    out.bias.copy_(bias.reshape(-1))
    return out


class RewrittenDecoder(nn.Module):
    """z (N, latent_dim) -> image: a VanillaVAE's decode() after the rewrites, as one module to export."""

    def __init__(self, stem: nn.Linear, stem_shape: tuple[int, int, int], body: nn.Sequential) -> None:
        super().__init__()
        self.stem = stem
        self.stem_shape = tuple(int(s) for s in stem_shape)
        self.body = body

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # the argument name becomes the ONNX input name
        return self.body(self.stem(z).view(-1, *self.stem_shape))


@dataclass(frozen=True)
class DecoderRewrite:
    """The rewritten decoder and what was done, in order (for the log and the graph's metadata).

    options: the keyword arguments of rewrite_decoder that built it; export records them in the decoder graph's
    metadata ("rewrite_options", JSON), so a debugging tool can rebuild the same module from the checkpoint.
    sources: rewritten module name -> the original VanillaVAE module(s) it computes, e.g. "body.0.1.0" ->
    "decoder.1.0", "stem" -> "decoder_input + decoder.0.0", a sub-pixel block -> "final_layer.0 + final_layer.2 +
    final_layer.3 + final_layer.4". A module that fuses several layers can only be compared as a whole.
    """

    module: RewrittenDecoder
    applied: tuple[str, ...]
    options: Mapping[str, Any] = field(default_factory=dict)
    sources: Mapping[str, str] = field(default_factory=dict)

    def metadata(self) -> dict[str, str]:
        """The decoder graph's metadata props for this rewrite: "rewrites" (what was done) and "rewrite_options"
        (JSON of the options), which export.divergence reads to rebuild the same module."""
        return {
            "rewrites": "; ".join(self.applied) or "none",
            "rewrite_options": json.dumps(dict(self.options), sort_keys=True),
        }

    @property
    def fused(self) -> dict[str, str]:
        """The rewritten modules that stand for more than one original layer (name -> their original names)."""
        return {k: v for k, v in self.sources.items() if " + " in v}

    @property
    def blocks(self) -> tuple[str, ...]:
        """The SubPixelUpsample modules in execution order; each ends in exactly one DepthToSpace in the graph."""
        return tuple(n for n, m in self.module.named_modules() if isinstance(m, SubPixelUpsample))


def _has_batchnorm(m: nn.Module) -> bool:
    return any(isinstance(x, nn.BatchNorm2d) for x in m.modules())


@torch.no_grad()
def rewrite_decoder(
    vae: nn.Module, *, layers: str = "last", form: str = "phases", absorb_head: bool = True, fold_stem: bool = True
) -> DecoderRewrite:
    """Build the fast, exact decoder of a BN-folded VanillaVAE (see the module docstring); `vae` is untouched.

    fold_stem: the decoder_input Linear, the view and the first upsampling ConvTranspose2d are all linear with
    nothing between them, so they compose into one Linear (latent_dim -> C_1 * (2 b)^2). For the default model that
    is 0.5 M multiply-adds per image instead of 0.26 M + 4.7 M, and it removes the least efficient convolution of the
    graph (a 2x2 feature map). Applied only where it lowers the multiply-add count.
    layers: which upsampling ConvTranspose2d become sub-pixel blocks: "last" (the default, fastest measured on ONNX
    Runtime CPU), "all" or "none". form / absorb_head: see SubPixelUpsample and the module docstring.
    """
    for attr in ("config", "decoder_input", "decoder", "final_layer"):
        if not hasattr(vae, attr):
            raise RewriteError(f"rewrite_decoder: expected a VanillaVAE (with .{attr}), got {type(vae).__name__}")
    if _has_batchnorm(vae.decoder) or _has_batchnorm(vae.final_layer):
        raise RewriteError(
            "rewrite_decoder: fold BatchNorm first (export.graph.passes.fold_batchnorm); "
            "the rewrites assume each ConvTranspose2d is followed directly by its activation"
        )
    cfg = vae.config
    stem_shape = (cfg.hidden_dims[-1], cfg.bottleneck_size, cfg.bottleneck_size)
    stem = copy.deepcopy(vae.decoder_input)
    decoder = copy.deepcopy(vae.decoder)
    applied, stem_folded = [], False
    first = decoder[0][0] if len(decoder) and isinstance(decoder[0], nn.Sequential) else None
    if fold_stem and isinstance(first, nn.ConvTranspose2d):
        c0, s, _ = stem_shape
        before = stem.in_features * stem.out_features + first.in_channels * first.out_channels * 9 * s * s
        composed = compose_linear_upsample(stem, stem_shape, first)
        if composed.in_features * composed.out_features < before:
            out_side = (s - 1) * first.stride[0] - 2 * first.padding[0] + first.kernel_size[0] + first.output_padding[0]
            stem, stem_shape = composed, (first.out_channels, out_side, out_side)
            decoder[0][0] = nn.Identity()
            stem_folded = True
            applied.append(
                f"fold_stem: decoder_input + decoder.0.0 -> Linear({composed.in_features}, "
                f"{composed.out_features}) ({before / 1e6:.2f} -> "
                f"{composed.in_features * composed.out_features / 1e6:.2f} M MAC/image)"
            )
    if layers not in LAYER_CHOICES:
        raise RewriteError(f"rewrite_decoder: layers must be one of {list(LAYER_CHOICES)}, got {layers!r}")
    body = nn.Sequential(decoder, copy.deepcopy(vae.final_layer))
    candidates = [n for n, m in body.named_modules() if is_subpixel_candidate(m)]
    only = {"all": candidates, "last": candidates[-1:], "none": []}[layers]
    result = subpixel_upsampling(body, form=form, absorb_head=absorb_head, only=only)
    applied += [f"subpixel[{form}]: {name}" for name in result.replaced]
    out = RewrittenDecoder(stem, stem_shape, result.model).eval()
    options = {"layers": layers, "form": form, "absorb_head": bool(absorb_head), "fold_stem": bool(fold_stem)}
    return DecoderRewrite(
        out, tuple(applied), options, _sources(out, folded_stem=stem_folded, absorbed=result.absorbed)
    )


def _original_name(name: str) -> str:
    """body.0.X -> decoder.X, body.1.X -> final_layer.X (RewrittenDecoder keeps the original indices)."""
    for new, old in (("body.0", "decoder"), ("body.1", "final_layer")):
        if name == new or name.startswith(new + "."):
            return old + name[len(new) :]
    return name


def _sources(module: RewrittenDecoder, *, folded_stem: bool, absorbed: Mapping[str, tuple[str, ...]]) -> dict[str, str]:
    out = {"stem": "decoder_input + decoder.0.0" if folded_stem else "decoder_input"}
    for name, m in module.body.named_modules():
        if not name or isinstance(m, nn.Identity) or any(name.startswith(r + ".") for r in absorbed):
            continue
        parts = [name, *absorbed.get(name, ())]
        out[f"body.{name}"] = " + ".join(_original_name(f"body.{p}") for p in parts)
    return out
