"""Speed rewrites (export/graph/rewrites.py): each is exact against the layers it replaces, on randomized weights."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from export.graph.passes import fold_batchnorm
from export.graph.rewrites import (
    RewriteError,
    SubPixelUpsample,
    compose_linear_upsample,
    phase_space_kernels,
    rewrite_decoder,
    subpixel_kernels,
    subpixel_upsampling,
)
from export.to_onnx import export_graph
from tests.conftest import TINY, make_model
from vae_model import VAEConfig

TOL = 1e-4  # the FP32 parity gate of the export, for whole models
EXACT = 1e-9  # layer tests run in float64 with N(0, 1) weights: a wrong tap shows up as O(1), rounding as ~1e-14


def _convt(c_in: int, c_out: int, seed: int, bias: bool = True) -> nn.ConvTranspose2d:
    torch.manual_seed(seed)
    m = nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=1, bias=bias)
    with torch.no_grad():  # weights well away from PyTorch's small init, so a wrong tap cannot hide in rounding
        m.weight.normal_(0, 1)
        if bias:
            m.bias.normal_(0, 1)
    return m.double().eval()


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


@pytest.mark.parametrize("form", ["dense", "phases", "nhwc"])
@pytest.mark.parametrize("c_in,c_out,h,w", [(1, 1, 1, 1), (5, 7, 3, 4), (16, 16, 6, 5), (32, 32, 8, 8), (24, 3, 2, 7)])
def test_subpixel_matches_convtranspose(form, c_in, c_out, h, w):
    ct = _convt(c_in, c_out, seed=c_in * 100 + c_out)
    x = torch.randn(3, c_in, h, w, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        ref = ct(x)
        got = SubPixelUpsample(ct, form=form)(x)
    assert got.shape == (3, c_out, 2 * h, 2 * w)
    assert _max_err(got, ref) <= EXACT  # FP32 reassociation only: orders of magnitude under the gate


@pytest.mark.parametrize("form", ["dense", "phases", "nhwc"])
def test_subpixel_without_bias_and_with_activation(form):
    ct = _convt(8, 8, seed=3, bias=False)
    act = nn.LeakyReLU(0.2)
    x = torch.randn(2, 8, 5, 5, dtype=torch.float64)
    with torch.no_grad():
        assert _max_err(SubPixelUpsample(ct, act, form=form)(x), act(ct(x))) <= EXACT


@pytest.mark.parametrize("form", ["dense", "phases", "nhwc"])
@pytest.mark.parametrize("c_mid,c_head", [(16, 3), (8, 8), (6, 1)])
def test_head_in_phase_space_matches(form, c_mid, c_head):
    ct = _convt(12, c_mid, seed=c_mid)
    torch.manual_seed(c_head)
    head = nn.Conv2d(c_mid, c_head, 3, padding=1).double()
    with torch.no_grad():
        head.weight.normal_(0, 1)
        head.bias.normal_(0, 1)
    x = torch.randn(2, 12, 5, 7, dtype=torch.float64)
    ref_net = nn.Sequential(ct, nn.LeakyReLU(), head, nn.Tanh()).eval()
    with torch.no_grad():
        ref = ref_net(x)
        got = SubPixelUpsample(ct, nn.LeakyReLU(), form=form, head=head, head_activation=nn.Tanh())(x)
    assert _max_err(got, ref) <= EXACT


def test_phase_space_kernel_places_every_tap_once():
    conv = nn.Conv2d(2, 3, 3, padding=1)
    k, b = phase_space_kernels(conv)
    assert k.shape == (12, 8, 3, 3) and b.shape == (12,)
    # each of the 9 taps of each (co, ci) appears exactly once per output phase: 4 phases x 9 taps of 36 slots
    nonzero = (k.reshape(3, 4, 2, 4, 3, 3) != 0).sum(dim=(3, 4, 5))
    assert torch.equal(nonzero, torch.full((3, 4, 2), 9))
    assert torch.allclose(k.abs().sum(), conv.weight.abs().sum() * 4)


def test_dense_kernel_shape_and_sparsity():
    w, b = subpixel_kernels(_convt(4, 6, seed=0))
    assert w.shape == (24, 4, 2, 2) and b.shape == (24,)
    # phases (0,0), (0,1), (1,0), (1,1) see 1, 2, 2 and 4 taps: 9 of 16 per (c_out, c_in)
    assert int((w != 0).sum()) == 9 * 4 * 6


def test_pass_swaps_only_the_selected_layers():
    model = nn.Sequential(_convt(4, 8, 0), nn.ReLU(), _convt(8, 8, 1), nn.ReLU()).eval()
    res = subpixel_upsampling(model, only=["2"])
    assert res.replaced == ("2 (+3)",)
    assert isinstance(res.model[0], nn.ConvTranspose2d) and isinstance(res.model[2], SubPixelUpsample)
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    with torch.no_grad():
        assert _max_err(res.model(x), model(x)) <= EXACT


def test_pass_swaps_candidates_only_and_leaves_the_model_alone():
    model = (
        nn.Sequential(
            nn.Sequential(_convt(4, 8, 0), nn.Identity(), nn.LeakyReLU()),
            nn.ConvTranspose2d(8, 8, 4, stride=2, padding=1),  # k4: not the k3/s2/p1/op1 layer
            nn.Sequential(_convt(8, 8, 1), nn.LeakyReLU(), nn.Conv2d(8, 3, 3, padding=1), nn.Tanh()),
        )
        .double()
        .eval()
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    for absorb in (False, True):
        res = subpixel_upsampling(model, "phases", absorb_head=absorb)
        assert res.replaced == ("0.0 (+2)", "2.0 (+1+2+3)" if absorb else "2.0 (+1)")
        assert isinstance(res.model[1], nn.ConvTranspose2d)
        assert isinstance(res.model[2][3], nn.Identity if absorb else nn.Tanh)
        with torch.no_grad():
            assert _max_err(res.model(x), model(x)) <= EXACT
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert isinstance(model[0][0], nn.ConvTranspose2d) and isinstance(model[2][3], nn.Tanh)


@pytest.mark.parametrize(
    "bad,match",
    [
        (nn.ConvTranspose2d(4, 4, 3, stride=2, padding=1), "output_padding 1"),
        (nn.ConvTranspose2d(4, 4, 3, stride=2, padding=1, output_padding=1, groups=2), "groups 1"),
        (nn.Conv2d(4, 4, 3), "ConvTranspose2d"),
    ],
)
def test_unsupported_layer_is_refused(bad, match):
    with pytest.raises(RewriteError, match=match):
        SubPixelUpsample(bad)


def test_bad_options_are_refused():
    ct = _convt(4, 4, 0)
    with pytest.raises(RewriteError, match="expected one of .*'dense'.*got 'sparse'"):
        SubPixelUpsample(ct, form="sparse")
    with pytest.raises(RewriteError, match="expected one of"):
        subpixel_upsampling(nn.Sequential(ct), form="sparse")
    with pytest.raises(RewriteError, match="pointwise"):
        SubPixelUpsample(ct, nn.Conv2d(4, 4, 1))
    with pytest.raises(RewriteError, match="head takes 5 channels, the ConvTranspose2d gives 4"):
        SubPixelUpsample(ct, head=nn.Conv2d(5, 3, 3, padding=1))
    with pytest.raises(RewriteError, match="head must be"):
        SubPixelUpsample(ct, head=nn.Conv2d(4, 3, 3, padding=0))
    with pytest.raises(RewriteError, match="without a head"):
        SubPixelUpsample(ct, head_activation=nn.Tanh())


def test_compose_linear_upsample_matches():
    torch.manual_seed(0)
    lin = nn.Linear(6, 8 * 2 * 3).double()
    ct = _convt(8, 5, seed=2)
    z = torch.randn(4, 6, dtype=torch.float64)
    with torch.no_grad():
        ref = ct(lin(z).view(-1, 8, 2, 3))
        got = compose_linear_upsample(lin, (8, 2, 3), ct)(z).view(-1, 5, 4, 6)
    assert _max_err(got, ref) <= EXACT
    with pytest.raises(RewriteError, match="Linear gives 48 features, shape \\(8, 3, 3\\) needs 72"):
        compose_linear_upsample(lin, (8, 3, 3), ct)


GREY = VAEConfig(in_channels=1, out_channels=1, image_size=32, latent_dim=4, hidden_dims=(4, 4, 8))


@pytest.mark.parametrize("config", [TINY, GREY], ids=["tiny", "grey-cin-eq-cout"])
@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"form": "dense"},
        {"layers": "all"},
        {"layers": "all", "form": "dense"},
        {"form": "nhwc"},
        {"layers": "all", "form": "nhwc"},
        {"layers": "all", "form": "nhwc", "absorb_head": False},
        {"layers": "none", "fold_stem": False},
        {"layers": "all", "absorb_head": False, "fold_stem": False},
    ],
)
def test_rewrite_decoder_matches_the_original_model(config, kw):
    model = make_model(config, seed=5)
    res = rewrite_decoder(fold_batchnorm(model), **kw)
    z = torch.randn(5, config.latent_dim, generator=torch.Generator().manual_seed(0)) * 3
    with torch.no_grad():
        assert _max_err(res.module(z), model.decode(z)) <= TOL
    n_convt = sum(isinstance(m, nn.ConvTranspose2d) for m in res.module.modules())
    n_up = len(config.hidden_dims)  # upsampling layers: len(hidden_dims) - 1 decoder blocks + the final layer's
    stem = kw.get("fold_stem", True)
    layers = kw.get("layers", "last")
    assert n_convt == {"all": 0, "last": n_up - 1 - stem, "none": n_up - stem}[layers]
    assert any(a.startswith("fold_stem") for a in res.applied) == stem
    heads = [a for a in res.applied if a.endswith("(+2+3+4)")]
    assert len(heads) == (layers != "none" and kw.get("absorb_head", True))


def test_rewrite_decoder_default_model():
    model = make_model(VAEConfig(), seed=1)
    res = rewrite_decoder(fold_batchnorm(model))
    assert res.applied == (
        "fold_stem: decoder_input + decoder.0.0 -> Linear(128, 4096) (4.98 -> 0.52 M MAC/image)",
        "subpixel[phases]: 1.0 (+2+3+4)",
    )
    z = torch.randn(4, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert _max_err(res.module(z), model.decode(z)) <= TOL


def test_rewrite_decoder_needs_folded_batchnorm():
    with pytest.raises(RewriteError, match="fold BatchNorm first"):
        rewrite_decoder(make_model(TINY))
    with pytest.raises(RewriteError, match="expected a VanillaVAE"):
        rewrite_decoder(nn.Linear(2, 2))
    with pytest.raises(RewriteError, match="layers must be one of \\['last', 'all', 'none'\\], got 'first'"):
        rewrite_decoder(fold_batchnorm(make_model(TINY)), layers="first")


PLAIN = {"Gemm", "Reshape", "LeakyRelu", "Conv", "Add", "DepthToSpace", "Tanh"}


@pytest.mark.parametrize(
    "config,kw,allowed",
    [
        (TINY, {}, PLAIN),
        (GREY, {}, PLAIN | {"ConvTranspose"}),  # the middle layer stays a ConvTranspose
        (GREY, {"layers": "all"}, PLAIN | {"Unsqueeze", "Concat"}),  # a phases block without a head stacks its phases
        (GREY, {"layers": "all", "form": "dense"}, PLAIN),
        # channels-last pixel shuffles and the cropped head: one DepthToSpace, at the end
        (GREY, {"layers": "all", "form": "nhwc"}, PLAIN | {"Transpose", "Slice", "Concat"}),
    ],
    ids=["tiny-default", "grey-default", "grey-all-phases", "grey-all-dense", "grey-all-nhwc"],
)
def test_exported_graph_is_plain_ops_and_matches_on_onnxruntime(tmp_path, config, kw, allowed):
    model = make_model(config, seed=2)
    res = rewrite_decoder(fold_batchnorm(model), **kw)
    path = tmp_path / "decoder.onnx"
    export_graph(res.module, "decoder", torch.zeros(2, config.latent_dim), path, 18, {})
    graph = onnx.load(str(path)).graph
    ops = {n.op_type for n in graph.node}
    assert "Pad" not in ops  # the pads went into the Convs' asymmetric pads
    assert ops <= allowed, ops
    assert ("ConvTranspose" in ops) == ("ConvTranspose" in allowed)
    assert ("DepthToSpace" in ops) == ("DepthToSpace" in allowed)
    assert all(
        onnx.helper.get_attribute_value(a) == b"CRD"
        for n in graph.node
        if n.op_type == "DepthToSpace"
        for a in n.attribute
        if a.name == "mode"
    )
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):  # the batch axis stayed dynamic
        z = np.random.default_rng(batch).standard_normal((batch, config.latent_dim), dtype=np.float32) * 3
        (got,) = sess.run(None, {"z": z})
        with torch.no_grad():
            ref = model.decode(torch.from_numpy(z)).numpy()
        assert got.shape == ref.shape and float(np.abs(got - ref).max()) <= TOL


def test_rewrite_decoder_records_options_and_original_names():
    """What export.divergence needs to rebuild the module and name each part by the layers it replaced."""
    res = rewrite_decoder(fold_batchnorm(make_model(GREY, seed=3)))
    assert res.options == {"layers": "last", "form": "phases", "absorb_head": True, "fold_stem": True}
    assert res.sources["stem"] == "decoder_input + decoder.0.0"
    assert res.sources["body.0.1.0"] == "decoder.1.0" and res.sources["body.0.1.2"] == "decoder.1.2"
    assert res.blocks == ("body.1.0",)
    assert res.fused == {
        "stem": "decoder_input + decoder.0.0",
        "body.1.0": "final_layer.0 + final_layer.2 + final_layer.3 + final_layer.4",
    }
    # every parameter belongs to a named module; names inside a block are not offered
    assert not any(k.startswith("body.1.0.") for k in res.sources)
    assert {n.rsplit(".", 1)[0] for n, _ in res.module.named_parameters()} <= set(res.sources)
    everything = rewrite_decoder(fold_batchnorm(make_model(GREY, seed=3)), layers="all", fold_stem=False)
    assert everything.blocks == ("body.0.0.0", "body.0.1.0", "body.1.0")
    assert (
        everything.sources["body.0.0.0"] == "decoder.0.0 + decoder.0.2"
        and everything.sources["stem"] == "decoder_input"
    )
