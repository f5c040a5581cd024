"""ONNX export: graph hygiene, the BatchNorm fold (ConvTranspose axis included), parity gate, atomicity, bad input."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from export.passes import count_batchnorm, fold_batchnorm
from export.to_onnx import ExportError, ParityError, export_bundle, export_model, main
from runtime import bundle as B
from runtime.metrics import Tolerance
from tests.conftest import TINY, make_model
from vae_model import VAEConfig, load_checkpoint


@pytest.fixture(scope="module")
def tiny_bundle(tiny_checkpoint, tmp_path_factory):
    return export_bundle(tiny_checkpoint, tmp_path_factory.mktemp("exp") / "bundle", log=lambda *a: None)


def test_bundle_layout_and_manifest(tiny_bundle, tiny_checkpoint):
    assert sorted(p.name for p in tiny_bundle.iterdir()) == ["decoder.onnx", "encoder.onnx", "reference.npz", "vae.json"]
    m = B.read_manifest(tiny_bundle)
    assert m.model.latent_dim == TINY.latent_dim and m.model.image_size == TINY.image_size
    assert m.model.hidden_dims == TINY.hidden_dims and m.pixel_range == (-1.0, 1.0)
    assert m.source["sha256"] == load_checkpoint(tiny_checkpoint).sha256 and m.source["kind"] == "vae-deploy"
    assert m.parity["verified"] and m.parity["passed"]
    assert {"torch", "onnx", "onnxruntime"} <= set(m.versions)
    enc, dec = m.graph("encoder"), m.graph("decoder")
    assert [t.name for t in enc.inputs] == ["image"] and [t.name for t in enc.outputs] == ["mu", "logvar"]
    assert enc.inputs[0].shape == ("batch", 3, 32, 32) and enc.outputs[0].shape == ("batch", 8)
    assert dec.inputs[0].shape == ("batch", 8) and dec.outputs[0].shape == ("batch", 3, 32, 32)
    for g in (enc, dec):
        B.resolve_file(tiny_bundle, g.file, g.sha256)  # hashes match the files


def test_graph_hygiene(tiny_bundle, tiny_checkpoint):
    sha = load_checkpoint(tiny_checkpoint).sha256
    for graph in ("encoder", "decoder"):
        model = onnx.load(str(tiny_bundle / f"{graph}.onnx"))
        onnx.checker.check_model(model, full_check=True)
        onnx.shape_inference.infer_shapes(model, strict_mode=True)
        ops = {n.op_type for n in model.graph.node}
        assert "BatchNormalization" not in ops
        assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
        meta = {p.key: p.value for p in model.metadata_props}
        assert meta["producer"] == "vae-deploy" and meta["latent_dim"] == "8" and meta["image_size"] == "32"
        assert meta["pixel_range"] == "-1,1" and meta["source_sha256"] == sha and meta["graph"] == graph
        for vi in list(model.graph.input) + list(model.graph.output):
            assert vi.type.tensor_type.shape.dim[0].dim_param == "batch"


def test_reference_npz_holds_golden_and_realistic_sets(tiny_bundle):
    ref = np.load(tiny_bundle / "reference.npz")
    for prefix in ("", "realistic."):
        for key in ("encoder.image", "encoder.mu", "encoder.logvar", "decoder.z", "decoder.image"):
            assert prefix + key in ref.files
            assert ref[prefix + key].dtype == np.float32
    assert ref["decoder.z"].shape == (4, 8) and ref["realistic.encoder.image"].shape == (8, 3, 32, 32)


@pytest.mark.parametrize("batch", [1, 3, 17])
def test_dynamic_batch_matches_pytorch(tiny_bundle, tiny_checkpoint, batch):
    model = load_checkpoint(tiny_checkpoint).model
    rng = np.random.default_rng(batch)
    z = rng.standard_normal((batch, 8), dtype=np.float32)
    img = rng.uniform(-1, 1, (batch, 3, 32, 32)).astype(np.float32)
    dec = ort.InferenceSession(str(tiny_bundle / "decoder.onnx"), providers=["CPUExecutionProvider"])
    enc = ort.InferenceSession(str(tiny_bundle / "encoder.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        np.testing.assert_allclose(dec.run(None, {"z": z})[0], model.decode(torch.from_numpy(z)).numpy(), atol=1e-5)
        mu, logvar = enc.run(None, {"image": img})
        post = model.encode(torch.from_numpy(img))
    np.testing.assert_allclose(mu, post.mu.numpy(), atol=1e-5)
    np.testing.assert_allclose(logvar, post.logvar.numpy(), atol=1e-5)


@pytest.mark.parametrize("cout_equals_cin", [True, False])
def test_fold_scales_the_convtranspose_output_axis(cout_equals_cin):
    """ConvTranspose weights are (C_in, C_out, k, k): BN must scale axis 1. With C_in == C_out a wrong axis still
    has the right shape, so only the numbers can catch it."""
    cout = 6 if cout_equals_cin else 4
    seq = torch.nn.Sequential(torch.nn.ConvTranspose2d(6, cout, 3, stride=2, padding=1, output_padding=1),
                              torch.nn.BatchNorm2d(cout))
    with torch.no_grad():
        seq[1].running_mean.uniform_(-1, 1)
        seq[1].running_var.uniform_(0.2, 3)
        seq[1].weight.uniform_(0.1, 3)
        seq[1].bias.uniform_(-1, 1)
    seq.eval()
    folded = fold_batchnorm(seq)
    x = torch.randn(2, 6, 5, 5)
    assert count_batchnorm(folded) == 0 and count_batchnorm(seq) == 1
    torch.testing.assert_close(folded(x), seq(x), atol=1e-5, rtol=1e-5)
    # The wrong axis (the bug this guards against) really does give different numbers:
    wrong = fold_batchnorm(seq)
    scale = seq[1].weight / torch.sqrt(seq[1].running_var + seq[1].eps)
    with torch.no_grad():
        w = seq[0].weight
        if cout_equals_cin:
            wrong[0].weight.copy_(w * scale.reshape(-1, 1, 1, 1))
            assert not torch.allclose(wrong(x), seq(x), atol=1e-3)


def test_fold_on_the_whole_model_is_exact():
    model = make_model(VAEConfig(image_size=32, latent_dim=16, hidden_dims=(8, 16, 16)))
    folded = fold_batchnorm(model)
    z = torch.randn(3, 16)
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(folded.decode(z), model.decode(z), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(folded.encode(x).mu, model.encode(x).mu, atol=1e-5, rtol=1e-4)


def test_export_never_changes_the_callers_model(tmp_path):
    model = make_model(TINY).train()  # train mode: the wrapper pitfall would flip it / export would freeze it
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export_model(model, tmp_path / "b", pixel_range=(-1.0, 1.0), log=lambda *a: None)
    assert model.training and all(m.training for m in model.modules())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    model.eval()
    export_model(model, tmp_path / "c", pixel_range=(-1.0, 1.0), log=lambda *a: None)
    assert not model.training and not any(m.training for m in model.modules())


def test_single_graph_export(tiny_checkpoint, tmp_path):
    out = export_bundle(tiny_checkpoint, tmp_path / "dec", graphs=["decoder"], log=lambda *a: None)
    assert sorted(B.read_manifest(out).graphs) == ["decoder"]
    assert not (out / "encoder.onnx").exists()
    assert set(k.split(".")[-2] for k in np.load(out / "reference.npz").files) == {"decoder"}


def test_failed_parity_gate_leaves_no_bundle(tiny_checkpoint, tmp_path):
    impossible = {"image": Tolerance(max_abs=0.0), "mu": Tolerance(max_abs=0.0), "logvar": Tolerance(max_abs=0.0)}
    with pytest.raises(ParityError, match=r"decoder.image: max_abs .* > 0") as err:
        export_bundle(tiny_checkpoint, tmp_path / "b", tolerances=impossible, log=lambda *a: None)
    assert len(err.value.report.failures()) == 6  # every failing output is listed, not just the first
    assert list(tmp_path.iterdir()) == []


def test_failed_export_keeps_the_previous_bundle(tiny_checkpoint, tmp_path):
    out = export_bundle(tiny_checkpoint, tmp_path / "b", log=lambda *a: None)
    before = (out / "vae.json").read_text()
    impossible = {k: Tolerance(max_abs=0.0) for k in ("image", "mu", "logvar")}
    with pytest.raises(ParityError):
        export_bundle(tiny_checkpoint, out, tolerances=impossible, log=lambda *a: None)
    assert (out / "vae.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_lightning_checkpoint_on_cuda1_exports_on_cpu(tmp_path, monkeypatch):
    from tests.vae_model.test_checkpoint import lightning_checkpoint, save_on_cuda1

    path = tmp_path / "pl.ckpt"
    save_on_cuda1(lightning_checkpoint(make_model(TINY)), path, monkeypatch)
    out = export_bundle(path, tmp_path / "b", log=lambda *a: None)
    m = B.read_manifest(out)
    assert m.pixel_range == (0.0, 1.0) and m.source["kind"] == "lightning"
    ref = np.load(out / "reference.npz")
    assert ref["encoder.image"].min() >= 0.0  # golden images are drawn in the model's own pixel range


def test_cli_ok_and_bad_inputs(tiny_checkpoint, tmp_path, capsys):
    assert main([str(tiny_checkpoint), "--out", str(tmp_path / "ok")]) == 0
    out = capsys.readouterr().out
    assert "decoder.image" in out and "PASS" in out
    assert main([str(tmp_path / "missing.pt"), "--out", str(tmp_path / "x")]) == 2
    assert "missing.pt: no such checkpoint file" in capsys.readouterr().err
    (tmp_path / "junk.pt").write_bytes(b"\x00" * 100)
    assert main([str(tmp_path / "junk.pt"), "--out", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err
    assert "junk.pt" in err and "Traceback" not in err
    assert main([str(tiny_checkpoint), "--out", str(tmp_path / "z"), "--graphs", "encoder,middle"]) == 2
    assert "--graphs: expected some of" in capsys.readouterr().err
    assert main([str(tiny_checkpoint), "--out", str(tmp_path / "z"), "--opset", "13"]) == 2
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists() and not (tmp_path / "z").exists()


def test_cli_no_verify_warns(tiny_checkpoint, tmp_path, capsys):
    assert main([str(tiny_checkpoint), "--out", str(tmp_path / "nv"), "--no-verify"]) == 0
    assert "WARNING: --no-verify" in capsys.readouterr().out
    assert json.loads((tmp_path / "nv" / "vae.json").read_text())["parity"] == {"verified": False}


def test_refuses_to_replace_a_folder_that_is_not_a_bundle(tiny_checkpoint, tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="not a bundle; refusing to replace it"):
        export_bundle(tiny_checkpoint, tmp_path / "docs", log=lambda *a: None)
    assert (tmp_path / "docs" / "notes.txt").read_text() == "mine"
