"""ONNX export: graph hygiene, the BatchNorm fold (ConvTranspose axis included), parity gate, atomicity, bad input."""

from __future__ import annotations

import collections
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from export.graph.passes import count_batchnorm, fold_batchnorm
from export.to_onnx import ExportError, ParityError, export_bundle, export_model, main
from runtime import bundle as B
from runtime.verify.metrics import Tolerance
from tests.conftest import TINY, make_model
from vae_model import VAEConfig, load_checkpoint

QUIET = {"log": lambda *a: None}


def _ops(path) -> collections.Counter:
    return collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def _ort_matches_pytorch(bundle, model, batch: int, seed: int, atol: float = 1e-4) -> None:
    """Both graphs of `bundle` on ONNX Runtime CPU against `model` in PyTorch, at one batch size."""
    cfg = model.config
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((batch, cfg.latent_dim), dtype=np.float32)
    img = rng.uniform(-1, 1, (batch, *cfg.image_shape)).astype(np.float32)
    dec = ort.InferenceSession(str(bundle / "decoder.onnx"), providers=["CPUExecutionProvider"])
    enc = ort.InferenceSession(str(bundle / "encoder.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        np.testing.assert_allclose(dec.run(None, {"z": z})[0], model.decode(torch.from_numpy(z)).numpy(), atol=atol)
        mu, logvar = enc.run(None, {"image": img})
        post = model.encode(torch.from_numpy(img))
    np.testing.assert_allclose(mu, post.mu.numpy(), atol=atol)
    np.testing.assert_allclose(logvar, post.logvar.numpy(), atol=atol)


def _save_on_cuda1(obj, path, monkeypatch) -> None:
    """torch.save as if every tensor lived on cuda:1 (what PyTorch-VAE's multi-GPU runs wrote)."""
    monkeypatch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:1")
    torch.save(obj, path)
    monkeypatch.undo()


@pytest.fixture(scope="module")
def tiny_bundle(tiny_checkpoint, tmp_path_factory):
    return export_bundle(tiny_checkpoint, tmp_path_factory.mktemp("exp") / "bundle", **QUIET)


def test_bundle_layout_and_manifest(tiny_bundle, tiny_checkpoint):
    assert sorted(p.name for p in tiny_bundle.iterdir()) == [
        "decoder.onnx",
        "encoder.onnx",
        "reference.npz",
        "vae.json",
    ]
    m = B.read_manifest(tiny_bundle)
    assert m.model.latent_dim == TINY.latent_dim and m.model.image_size == TINY.image_size
    assert m.model.hidden_dims == TINY.hidden_dims and m.pixel_range == (-1.0, 1.0)
    assert m.source["sha256"] == load_checkpoint(tiny_checkpoint).sha256 and m.source["kind"] == "vae-deploy"
    # the checkpoint lies outside the bundle's parent folder: its name, size and sha256 only, no path at all
    assert m.source == {
        "checkpoint": "tiny.pt",
        "sha256": m.source["sha256"],
        "size": tiny_checkpoint.stat().st_size,
        "kind": "vae-deploy",
    }
    assert str(tiny_checkpoint.parent) not in (tiny_bundle / "vae.json").read_text()
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
    _ort_matches_pytorch(tiny_bundle, load_checkpoint(tiny_checkpoint).model, batch, seed=batch, atol=1e-5)


@pytest.mark.parametrize("cout_equals_cin", [True, False])
def test_fold_scales_the_convtranspose_output_axis(cout_equals_cin):
    """ConvTranspose weights are (C_in, C_out, k, k): BN must scale axis 1. With C_in == C_out a wrong axis still
    has the right shape, so only the numbers can catch it."""
    cout = 6 if cout_equals_cin else 4
    seq = torch.nn.Sequential(
        torch.nn.ConvTranspose2d(6, cout, 3, stride=2, padding=1, output_padding=1), torch.nn.BatchNorm2d(cout)
    )
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


@pytest.mark.parametrize("mode", ["train", "eval", "mixed"])
def test_export_never_changes_the_callers_model(tmp_path, mode):
    """torch.onnx.export of a train-mode wrapper flips the wrapped model back to train mode afterwards (TorchScript
    exporter), and exporting in train mode would bake batch statistics in: the exporter must work on a copy."""
    model = make_model(TINY)
    model.train(mode != "eval")
    if mode == "mixed":  # per-module modes must survive too, not just the top-level flag
        model.encoder.eval()
    modes = {name: m.training for name, m in model.named_modules()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = export_model(model, tmp_path / "b", pixel_range=(-1.0, 1.0), **QUIET)
    assert {name: m.training for name, m in model.named_modules()} == modes
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    # Exported as it runs in inference: BatchNorm with running statistics, whatever mode the caller's model is in.
    _ort_matches_pytorch(result.bundle, make_model(TINY).eval(), batch=3, seed=0)


def test_single_graph_export(tiny_checkpoint, tmp_path):
    out = export_bundle(tiny_checkpoint, tmp_path / "dec", graphs=["decoder"], **QUIET)
    assert sorted(B.read_manifest(out).graphs) == ["decoder"]
    assert not (out / "encoder.onnx").exists()
    assert set(k.split(".")[-2] for k in np.load(out / "reference.npz").files) == {"decoder"}


def test_source_records_a_relative_path_under_the_bundles_parent_only(tmp_path):
    from export.to_onnx import source_record

    (tmp_path / "runs" / "train").mkdir(parents=True)
    ckpt = tmp_path / "runs" / "train" / "best.pt"
    ckpt.write_bytes(b"12345")
    rec = lambda out: source_record(ckpt, out, sha256="ab" * 32, kind="vae-deploy")  # noqa: E731
    assert rec(tmp_path / "runs" / "bundle") == {
        "checkpoint": "best.pt",
        "sha256": "ab" * 32,
        "size": 5,
        "kind": "vae-deploy",
        "relative_path": "../train/best.pt",
    }
    assert rec(tmp_path / "runs" / "train" / "bundle")["relative_path"] == "../best.pt"
    assert rec(tmp_path / "runs" / "demo" / "bundle").get("relative_path") is None  # runs/demo/ does not hold it
    assert rec(tmp_path / "elsewhere" / "bundle").get("relative_path") is None


def test_a_bundle_moved_with_its_checkpoint_finds_it_and_old_absolute_paths_still_work(tiny_checkpoint, tmp_path):
    """runs/train/best.pt + runs/bundle: vae.json says "../train/best.pt", so the pair moved anywhere still works;
    a changed checkpoint there is refused by its size / sha256; an older export's absolute "path" is still followed."""
    import shutil

    import runtime

    (tmp_path / "runs" / "train").mkdir(parents=True)
    ckpt = shutil.copy2(tiny_checkpoint, tmp_path / "runs" / "train" / "best.pt")
    export_bundle(ckpt, tmp_path / "runs" / "bundle", graphs=["decoder"], verify=False, **QUIET)
    raw = json.loads((tmp_path / "runs" / "bundle" / "vae.json").read_text())
    assert raw["source"]["relative_path"] == "../train/best.pt" and "path" not in raw["source"]
    assert str(tmp_path) not in json.dumps(raw)
    moved = tmp_path / "device" / "runs"
    shutil.move(tmp_path / "runs", moved)
    z = np.zeros((1, TINY.latent_dim), np.float32)
    with runtime.load(moved / "bundle", backend="torch") as ref, runtime.load(moved / "bundle") as ort_rt:
        assert ref.backend.checkpoint == moved / "bundle" / "../train/best.pt"
        np.testing.assert_allclose(ref.decode(z), ort_rt.decode(z), atol=1e-5)
    from vae_model import save_checkpoint

    save_checkpoint(moved / "train" / "best.pt", make_model(TINY, seed=5))  # changed in place since export
    with pytest.raises(
        B.BundleError,
        match=r"best.pt: (sha256 .*|\d+ bytes), but the bundle was exported from "
        r"best.pt",
    ):
        runtime.load(moved / "bundle", backend="torch")
    # an older export: an absolute path and no relative_path (nor size) - still found and checked by its sha256
    old = {k: v for k, v in raw["source"].items() if k not in ("relative_path", "size")}
    old["path"] = str(tiny_checkpoint)
    (moved / "bundle" / "vae.json").write_text(json.dumps({**raw, "source": old}))
    with runtime.load(moved / "bundle", backend="torch") as ref:
        assert ref.backend.checkpoint == tiny_checkpoint


def test_failed_parity_gate_leaves_no_bundle(tiny_checkpoint, tmp_path):
    impossible = {"image": Tolerance(max_abs=0.0), "mu": Tolerance(max_abs=0.0), "logvar": Tolerance(max_abs=0.0)}
    with pytest.raises(ParityError, match=r"decoder.image: max_abs .* > 0") as err:
        export_bundle(tiny_checkpoint, tmp_path / "b", tolerances=impossible, **QUIET)
    assert len(err.value.report.failures()) == 6  # every failing output is listed, not just the first
    assert list(tmp_path.iterdir()) == []


def test_failed_export_keeps_the_previous_bundle(tiny_checkpoint, tmp_path):
    out = export_bundle(tiny_checkpoint, tmp_path / "b", **QUIET)
    before = (out / "vae.json").read_text()
    impossible = {k: Tolerance(max_abs=0.0) for k in ("image", "mu", "logvar")}
    with pytest.raises(ParityError):
        export_bundle(tiny_checkpoint, out, tolerances=impossible, **QUIET)
    assert (out / "vae.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def _lightning(model) -> dict:
    sd = collections.OrderedDict(("model." + k, v) for k, v in model.state_dict().items())
    return {
        "epoch": 9,
        "global_step": 99,
        "pytorch-lightning_version": "1.5.6",
        "state_dict": sd,
        "optimizer_states": [],
        "lr_schedulers": [],
    }


@pytest.mark.parametrize(
    "kind, build, pixel_range",
    [
        ("lightning", _lightning, (0.0, 1.0)),  # PyTorch-VAE trained on [0, 1] images
        ("state_dict", lambda m: m.state_dict(), (-1.0, 1.0)),
    ],
)
def test_foreign_checkpoint_saved_on_cuda1_exports_on_cpu(tmp_path, monkeypatch, kind, build, pixel_range):
    path = tmp_path / f"{kind}.ckpt"
    _save_on_cuda1(build(make_model(TINY)), path, monkeypatch)
    if torch.cuda.device_count() < 2:  # the file really cannot be loaded here without map_location
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(path, weights_only=False)
    out = export_bundle(path, tmp_path / "b", **QUIET)
    m = B.read_manifest(out)
    assert m.pixel_range == pixel_range and m.source["kind"] == kind and m.parity["passed"]
    ref = np.load(out / "reference.npz")
    assert pixel_range[0] <= ref["encoder.image"].min() and ref["encoder.image"].max() <= pixel_range[1]
    _ort_matches_pytorch(out, make_model(TINY), batch=2, seed=1)


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
    with pytest.raises(
        ExportError,
        match=r"docs: refusing to replace it: 1 file\(s\) there were not written by this "
        r"tool \(not listed in vae.json with a matching sha256\): notes.txt",
    ):
        export_bundle(tiny_checkpoint, tmp_path / "docs", **QUIET)
    assert (tmp_path / "docs" / "notes.txt").read_text() == "mine"


def test_decoder_rewrite_is_default_recorded_and_no_rewrite_opts_out(tiny_bundle, tiny_checkpoint, tmp_path, capsys):
    model = load_checkpoint(tiny_checkpoint).model
    n_convt = sum(isinstance(m, torch.nn.ConvTranspose2d) for m in model.modules())
    # Default: the rewritten decoder, recorded in its metadata (text and the options to rebuild it), exact.
    meta = {p.key: p.value for p in onnx.load(str(tiny_bundle / "decoder.onnx")).metadata_props}
    assert meta["rewrites"].startswith("fold_stem") and "subpixel" in meta["rewrites"]
    assert json.loads(meta["rewrite_options"]) == {
        "layers": "last",
        "form": "phases",
        "absorb_head": True,
        "fold_stem": True,
    }
    assert "rewrites" not in {p.key for p in onnx.load(str(tiny_bundle / "encoder.onnx")).metadata_props}
    ops = _ops(tiny_bundle / "decoder.onnx")
    assert ops["DepthToSpace"] == 1 and ops["ConvTranspose"] < n_convt and "BatchNormalization" not in ops
    assert B.read_manifest(tiny_bundle).parity["passed"]
    _ort_matches_pytorch(tiny_bundle, model, batch=3, seed=3, atol=1e-5)
    # --no-rewrite: every ConvTranspose (each followed by a randomized BatchNorm in the model) is there, folded.
    assert main([str(tiny_checkpoint), "--out", str(tmp_path / "plain"), "--no-rewrite"]) == 0
    assert "decoder rewrites" not in capsys.readouterr().out
    ops = _ops(tmp_path / "plain" / "decoder.onnx")
    assert ops["ConvTranspose"] == n_convt and "BatchNormalization" not in ops and "DepthToSpace" not in ops
    assert "rewrites" not in {p.key for p in onnx.load(str(tmp_path / "plain" / "decoder.onnx")).metadata_props}
    _ort_matches_pytorch(tmp_path / "plain", model, batch=3, seed=3, atol=1e-5)


def test_default_size_model_exports_with_parity(default_checkpoint, tmp_path):
    result_dir = export_bundle(default_checkpoint, tmp_path / "b", **QUIET)
    m = B.read_manifest(result_dir)
    assert m.model.image_size == 64 and m.model.latent_dim == 128 and m.parity["passed"]
    assert len(m.parity["outputs"]) == 6 and all(o["max_abs"] <= 1e-4 for o in m.parity["outputs"].values())
    for graph in B.GRAPHS:
        assert "BatchNormalization" not in _ops(result_dir / f"{graph}.onnx")
    _ort_matches_pytorch(result_dir, load_checkpoint(default_checkpoint).model, batch=17, seed=17)


def test_requested_opset_is_the_exported_opset(tiny_checkpoint, tmp_path):
    out = export_bundle(tiny_checkpoint, tmp_path / "b", opset=20, graphs=["decoder"], **QUIET)
    assert B.read_manifest(out).graph("decoder").opset == 20
    m = onnx.load(str(out / "decoder.onnx"))
    assert [o.version for o in m.opset_import if o.domain in ("", "ai.onnx")] == [20]


def test_interrupted_export_keeps_the_previous_bundle_and_leaves_no_temp_files(tiny_checkpoint, tmp_path):
    out = export_bundle(tiny_checkpoint, tmp_path / "b", graphs=["decoder"], **QUIET)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def interrupt_after_decoder(msg: str) -> None:  # Ctrl-C arrives once a graph file has been written
        if msg.startswith("exported decoder.onnx"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        export_bundle(tiny_checkpoint, out, seed=1, log=interrupt_after_decoder)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_cli_parity_failure_exits_1_with_the_numbers_and_no_bundle(tiny_checkpoint, tmp_path, capsys):
    assert main([str(tiny_checkpoint), "--out", str(tmp_path / "b"), "--max-abs", "0"]) == 1
    cap = capsys.readouterr()
    assert "FAIL" in cap.out  # the table is printed
    for output in ("decoder.image", "encoder.mu", "encoder.logvar", "realistic.decoder.image"):
        assert f"{output}: max_abs" in cap.err and "> 0" in cap.err
    assert "no bundle was written" in cap.err and "Traceback" not in cap.err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "args, message",
    [
        (["--opset", "29"], "--opset 29: unsupported; expected 18 to"),
        (["--opset", "17"], "--opset 17: unsupported"),
        (["--max-abs", "-1"], "--max-abs must be >= 0"),
        (["--reference-batch", "0"], "--reference-batch must be >= 1"),
        (["--graphs", ""], "--graphs: expected some of"),
    ],
)
def test_cli_bad_options_exit_2(tiny_checkpoint, tmp_path, capsys, args, message):
    assert main([str(tiny_checkpoint), "--out", str(tmp_path / "b"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_cli_unwritable_output_exits_2(tiny_checkpoint, tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    assert main([str(tiny_checkpoint), "--out", str(blocker / "bundle")]) == 2
    err = capsys.readouterr().err
    assert f"--out {blocker / 'bundle'}: cannot write there" in err and str(blocker) in err
    assert main([str(tiny_checkpoint), "--out", str(blocker)]) == 2
    assert f"--out {blocker}: exists and is not a folder" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"] and blocker.read_text() == "not a folder"


def test_cli_truncated_checkpoint_exits_2(tiny_checkpoint, tmp_path, capsys):
    cut = tmp_path / "cut.pt"
    cut.write_bytes(tiny_checkpoint.read_bytes()[:1000])
    assert main([str(cut), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "cut.pt" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.pt"]


def test_cli_negative_seed_is_a_usage_error(tiny_checkpoint, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main([str(tiny_checkpoint), "--out", str(tmp_path / "b"), "--seed", "-1"])
    assert e.value.code == 2 and "--seed: expected an integer >= 0, got -1" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
