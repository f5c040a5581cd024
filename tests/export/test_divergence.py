"""export.divergence on rewritten and plain decoders: each anchor named by the original PyTorch layer it computes."""

from __future__ import annotations

import dataclasses

import pytest

from export.divergence import locate_divergence, main
from runtime.bundle import BundleError, read_manifest, sha256_file, write_manifest
from runtime.verify.parity import check_parity
from tests.conftest import copy_bundle, make_model, perturb_initializer
from vae_model import VAEConfig, save_checkpoint

# Three upsampling layers: the first is folded into the stem, the last becomes a sub-pixel block, the middle one
# stays a ConvTranspose in the rewritten graph - the case where the finder can still name a single layer.
THREE = VAEConfig(in_channels=3, out_channels=3, image_size=32, latent_dim=8, hidden_dims=(8, 16, 16))


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    from export.to_onnx import export_bundle

    root = tmp_path_factory.mktemp("div")
    ckpt = root / "three.pt"
    save_checkpoint(ckpt, make_model(THREE, seed=4), training={"epoch": 0, "step": 0, "seed": 0})
    quiet = {"log": lambda *a: None}
    return {
        "rewritten": export_bundle(ckpt, root / "rw", **quiet),
        "plain": export_bundle(ckpt, root / "plain", rewrite=False, **quiet),
    }


@pytest.fixture
def copy_of(bundles, tmp_path):
    return lambda kind: copy_bundle(bundles[kind], tmp_path / kind)  # with three.pt beside it, as vae.json says


def test_unchanged_rewritten_decoder_matches_everywhere(bundles):
    div = locate_divergence(bundles["rewritten"], "decoder")
    assert div.first is None and "all 4 mapped intermediate tensors match" in div.describe()
    names = [a.torch_module for a in div.anchors]
    assert names == [
        "decoder_input + decoder.0.0",
        "decoder.1.0",
        "decoder.1.2",
        "final_layer.0 + final_layer.2 + final_layer.3 + final_layer.4",
    ]
    assert [a.onnx_op for a in div.anchors] == ["Gemm", "ConvTranspose", "LeakyRelu", "DepthToSpace"]
    assert [a.fused for a in div.anchors] == [True, False, False, True]
    assert all(a.rel_l2 < 1e-5 for a in div.anchors)


def test_int8_variant_in_the_nhwc_form_is_matched_block_by_block(copy_of, capsys):
    """The INT8 decoder quantized from the "nhwc" sub-pixel form: its middle block ends in a Transpose, not a
    DepthToSpace, and is still compared with its own block (not the next one)."""
    from export.precision import int8

    b = copy_of("rewritten")
    assert (
        int8.main([str(b), "--int8", "--graphs", "decoder", "--samples", "16", "--eval-samples", "4", "--no-progress"])
        == 0
    )
    assert "subpixel[nhwc]" in read_manifest(b).graph("decoder").variants["int8"].source_form["rewrites"]
    div = locate_divergence(b, "decoder", precision="int8")
    assert div.first is None, div.describe()
    assert [a.torch_module for a in div.anchors] == [
        "decoder_input + decoder.0.0",
        "decoder.1.0 + decoder.1.2",
        "final_layer.0 + final_layer.2 + final_layer.3 + final_layer.4",
    ]
    assert [a.onnx_op for a in div.anchors] == ["Gemm", "Transpose", "DepthToSpace"]
    assert all(a.fused for a in div.anchors) and all(a.rel_l2 < 0.1 for a in div.anchors)


def test_rewritten_middle_layer_is_named_exactly(copy_of):
    b = copy_of("rewritten")
    node = perturb_initializer(b, "decoder", "body.0.1.0.weight")
    div = locate_divergence(b, "decoder")
    assert div.first is not None and div.first.onnx_node == node and div.first.onnx_op == "ConvTranspose"
    assert div.first.torch_module == "decoder.1.0" and div.first.rewritten_module == "body.0.1.0"
    assert not div.first.fused and "cannot be told apart" not in div.describe()
    assert not div.anchors[0].diverged  # the stem upstream still matches


def test_plain_decoder_is_matched_against_the_unfolded_model(copy_of):
    b = copy_of("plain")
    node = perturb_initializer(b, "decoder", "vae.decoder.1.0.weight")
    div = locate_divergence(b, "decoder")
    assert div.first.onnx_node == node and div.first.torch_module == "decoder.1.1"  # its BatchNorm, folded in
    assert div.first.rewritten_module == "" and not div.notes
    assert [a.torch_module for a in div.anchors][:2] == ["decoder_input", "decoder.0.1"]


def test_rewrite_that_cannot_be_rebuilt_is_a_bundle_error(copy_of):
    import onnx

    b = copy_of("rewritten")
    path = b / "decoder.onnx"
    model = onnx.load(str(path))
    for p in model.metadata_props:
        if p.key == "rewrite_options":
            p.value = '{"layers": "first"}'
    onnx.save(model, str(path))
    m = read_manifest(b)
    graphs = {**m.graphs, "decoder": dataclasses.replace(m.graphs["decoder"], sha256=sha256_file(path))}
    write_manifest(b, dataclasses.replace(m, graphs=graphs))
    with pytest.raises(BundleError, match=r"records rewrites .* cannot be rebuilt here: .*layers must be one of"):
        locate_divergence(b, "decoder")


def test_perturbed_encoder_fails_and_the_finder_points_at_it(bundle_copy):
    node = perturb_initializer(bundle_copy, "encoder", "vae.encoder.1.0.weight")
    report = check_parity(bundle_copy, backend="onnxruntime", locate=locate_divergence)
    assert not report
    failing = {o.name.split(".")[-2] for o in report.comparison.outputs if not o.passed}
    assert failing == {"encoder"}
    (div,) = report.divergences
    assert div.graph == "encoder" and div.first is not None
    assert div.first.onnx_node == node
    assert div.first.torch_module == "encoder.1.1"  # the BatchNorm after encoder.1.0: folded into its Conv
    assert not div.first.fused and not div.notes
    before = div.anchors[: div.anchors.index(div.first)]
    assert before and not any(a.diverged for a in before)  # everything upstream still matches
    assert f"first divergence at ONNX node {node!r}" in report.table()


def test_perturbed_rewritten_decoder_is_located_at_its_fused_block(bundle_copy):
    """The default bundle's decoder is rewritten: its last block (final_layer's ConvTranspose, LeakyReLU, Conv, Tanh)
    runs as sub-pixel phases, so a weight inside it is located at the block's end, named by the original layers."""
    perturb_initializer(bundle_copy, "decoder", "body.1.0.weight_01")
    report = check_parity(bundle_copy, backend="onnxruntime", locate=locate_divergence)
    assert not report
    (div,) = report.divergences
    assert div.graph == "decoder" and div.first is not None
    assert div.first.onnx_op == "DepthToSpace" and div.first.fused and div.first.rewritten_module == "body.1.0"
    assert div.first.torch_module == "final_layer.0 + final_layer.2 + final_layer.3 + final_layer.4"
    stem = div.anchors[0]
    assert stem.torch_module == "decoder_input + decoder.0.0" and stem.onnx_op == "Gemm" and not stem.diverged
    assert any("rewritten at export" in n for n in div.notes)
    assert "cannot be told apart" in report.table() and "compared only as whole blocks" in report.table()


def test_cli_runs_parity_then_locates(bundle_copy, capsys):
    """python -m export.divergence is the parity CLI with the finder plugged in."""
    perturb_initializer(bundle_copy, "decoder", "stem.weight")  # the rewritten decoder's stem Linear
    assert main([str(bundle_copy), "--backend", "onnxruntime", "--graphs", "decoder"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "first divergence at ONNX node 'node_linear'" in out
    assert "'decoder_input + decoder.0.0'" in out
    assert main([str(bundle_copy), "--backend", "onnxruntime", "--graphs", "decoder", "--no-locate"]) == 1
    assert "first divergence" not in capsys.readouterr().out
