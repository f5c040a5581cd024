"""Checkpoints: our format round trip, PyTorch-VAE Lightning and bare layouts, and every bad input's error."""

from __future__ import annotations

import collections
import os
import pickle

import pytest
import torch

from tests.conftest import TINY, make_model
from vae_model import (
    CheckpointNotFoundError,
    CorruptCheckpointError,
    ForeignModelError,
    NotACheckpointError,
    ShapeMismatchError,
    VAEConfig,
    VanillaVAE,
    load_checkpoint,
    save_checkpoint,
)
from vae_model.checkpoint import UnsafeCheckpointError, infer_config


def _same_weights(a: VanillaVAE, b: VanillaVAE) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def save_on_cuda1(obj, path, monkeypatch):
    """torch.save as if every tensor lived on cuda:1 (what PyTorch-VAE's multi-GPU runs wrote)."""
    monkeypatch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:1")
    torch.save(obj, path)
    monkeypatch.undo()


def lightning_checkpoint(model: VanillaVAE) -> dict:
    sd = collections.OrderedDict(("model." + k, v) for k, v in model.state_dict().items())
    opt = torch.optim.Adam(model.parameters(), lr=0.005)
    model(torch.rand(2, *model.config.image_shape)).recons.mean().backward()
    opt.step()
    return {
        "epoch": 99,
        "global_step": 12345,
        "pytorch-lightning_version": "1.5.6",
        "state_dict": sd,
        "callbacks": {
            "ModelCheckpoint{'monitor': 'val_loss'}": {
                "best_model_score": torch.tensor(0.01),
                "best_model_path": "logs/x.ckpt",
            }
        },
        "optimizer_states": [opt.state_dict()],
        "lr_schedulers": [{"gamma": 0.95, "base_lrs": [0.005], "last_epoch": 99}],
    }


def test_round_trip_keeps_config_weights_range_and_metadata(tmp_path):
    model = make_model(TINY)
    path = save_checkpoint(
        tmp_path / "a.pt",
        model,
        pixel_range=(0.0, 1.0),
        training={"epoch": 3, "step": 30, "seed": 7, "metrics": {"val_loss": 0.5}},
    )
    ck = load_checkpoint(path)
    assert ck.kind == "vae-deploy" and ck.config == TINY and ck.pixel_range == (0.0, 1.0)
    assert ck.training["epoch"] == 3 and ck.training["metrics"]["val_loss"] == 0.5
    assert _same_weights(ck.model, model) and not ck.model.training
    assert len(ck.sha256) == 64
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]  # no temp file left behind


def test_lightning_checkpoint_saved_on_cuda1_loads_on_cpu(tmp_path, monkeypatch):
    model = make_model(VAEConfig())  # the original architecture, as PyTorch-VAE trains it
    path = tmp_path / "last.ckpt"
    save_on_cuda1(lightning_checkpoint(model), path, monkeypatch)
    with pytest.raises(RuntimeError):  # proof the file really is cuda-tagged: a naive load fails on this machine
        torch.load(path, weights_only=True)
    ck = load_checkpoint(path)
    assert ck.kind == "lightning" and ck.config == VAEConfig() and ck.pixel_range == (0.0, 1.0)
    assert ck.training["epoch"] == 99
    assert all(p.device.type == "cpu" for p in ck.model.parameters())
    assert _same_weights(ck.model, model)


def test_bare_state_dict_infers_the_config(tmp_path):
    cfg = VAEConfig(in_channels=1, out_channels=1, image_size=64, latent_dim=16, hidden_dims=(8, 16, 32, 64))
    model = make_model(cfg)
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    ck = load_checkpoint(tmp_path / "sd.pt")
    assert ck.kind == "state_dict" and ck.config == cfg and ck.pixel_range == (-1.0, 1.0)
    assert _same_weights(ck.model, model)
    assert load_checkpoint(tmp_path / "sd.pt", pixel_range=(0.0, 1.0)).pixel_range == (0.0, 1.0)


def test_infer_config_for_the_original():
    assert infer_config(VanillaVAE().state_dict()) == VAEConfig()


class Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


class Payload:
    """What a hostile checkpoint carries: a call that, if it ever ran, would leave a file behind."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize(
    "save",
    [
        pytest.param(lambda obj, p: torch.save({"state_dict": obj}, p), id="torch-zip"),
        pytest.param(lambda obj, p: torch.save(obj, p, _use_new_zipfile_serialization=False), id="torch-legacy"),
        *[
            pytest.param(
                lambda obj, p, k=k: p.write_bytes(pickle.dumps({"state_dict": obj}, protocol=k)), id=f"pickle-{k}"
            )
            for k in (0, 2, 4, 5)
        ],
    ],
)
def test_a_pickle_that_would_run_code_is_refused_plainly(tmp_path, save):
    marker, path = tmp_path / "PWNED", tmp_path / "model.pt"
    save(Payload(marker), path)
    with pytest.raises(UnsafeCheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert not marker.exists()  # the payload never ran
    assert message.startswith(f"{path}: refused: loading this file would run code it carries (it calls ")
    assert "system" in message and "torch.save(model.state_dict(), path)" in message
    assert "weights_only" not in message and "False" not in message  # never advice to turn the guard off
    assert isinstance(info.value, NotACheckpointError)


@pytest.mark.parametrize(
    "name, write, error, match",
    [
        ("missing.pt", None, CheckpointNotFoundError, "missing.pt: no such checkpoint file"),
        ("empty.pt", lambda p: p.write_bytes(b""), CorruptCheckpointError, "empty.pt: the file is empty"),
        (
            "text.pt",
            lambda p: p.write_text("hello, not a checkpoint\n" * 10),
            CorruptCheckpointError,
            r"text.pt: not a torch checkpoint \(240 bytes; neither a torch zip archive nor a pickle",
        ),
        (
            "evil.pt",
            lambda p: torch.save({"state_dict": Evil()}, p),
            NotACheckpointError,
            r"evil.pt: refused: loading this file would run code it carries \(it calls .*print\)",
        ),
        (
            "pickle.pt",
            lambda p: p.write_bytes(pickle.dumps({"a": 1})),
            CorruptCheckpointError,
            r"pickle.pt: not a torch checkpoint \(\d+ bytes; unpickling failed: Unsupported operand",
        ),
        ("list.pt", lambda p: torch.save([1, 2, 3], p), NotACheckpointError, "list.pt: not a VAE checkpoint"),
        (
            "nostate.pt",
            lambda p: torch.save({"epoch": 1, "optimizer_states": []}, p),
            NotACheckpointError,
            r"nostate.pt: not a VAE checkpoint.*\['epoch', 'optimizer_states'\]",
        ),
        (
            "resnet.pt",
            lambda p: torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(10, 512)}, p),
            ForeignModelError,
            r"resnet.pt: not a VanillaVAE state_dict: missing \['encoder.0.0.weight'",
        ),
    ],
)
def test_bad_files_get_a_clear_error_naming_the_file(tmp_path, name, write, error, match):
    path = tmp_path / name
    if write is not None:
        write(path)
    with pytest.raises(error, match=match):
        load_checkpoint(path)


def test_truncated_checkpoint(tmp_path):
    good = save_checkpoint(tmp_path / "good.pt", make_model(TINY))
    data = good.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(
        CorruptCheckpointError, match=r"cut.pt: cannot be read as a torch checkpoint \(\d+ bytes; truncated"
    ):
        load_checkpoint(tmp_path / "cut.pt")


def test_directory_is_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="not a file"):
        load_checkpoint(tmp_path)


def test_shape_mismatch_names_the_key_expected_and_actual(tmp_path):
    model = make_model(TINY)
    path = save_checkpoint(tmp_path / "a.pt", model)
    obj = torch.load(path, weights_only=True)
    obj["state_dict"]["fc_mu.weight"] = torch.zeros(8, 99)
    torch.save(obj, tmp_path / "bad.pt")
    with pytest.raises(
        ShapeMismatchError, match=r"bad.pt: tensor 'fc_mu.weight' has shape \(8, 99\), expected \(8, 1024\)"
    ):
        load_checkpoint(tmp_path / "bad.pt")


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    sd = make_model(TINY).state_dict()
    del sd["fc_var.bias"]
    sd["extra.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "odd.pt")
    with pytest.raises(ForeignModelError, match=r"1 missing key\(s\), e.g. \['fc_var.bias'\]; 1 unexpected key\(s\)"):
        load_checkpoint(tmp_path / "odd.pt")


def test_unknown_format_version(tmp_path):
    path = save_checkpoint(tmp_path / "a.pt", make_model(TINY))
    obj = torch.load(path, weights_only=True)
    obj["format_version"] = 99
    torch.save(obj, tmp_path / "future.pt")
    with pytest.raises(NotACheckpointError, match="format_version 99"):
        load_checkpoint(tmp_path / "future.pt")


def test_failed_save_leaves_the_old_file_intact(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "a.pt", make_model(TINY))
    before = path.read_bytes()

    def boom(obj, f, *a, **k):
        open(f, "wb").write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, make_model(TINY, seed=1))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]
