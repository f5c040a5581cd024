"""Training: a short real run lowers the loss on the embedded data, is reproducible, resumes exactly, writes PNGs."""

from __future__ import annotations

import csv
from dataclasses import replace

import pytest
import torch

from tests.conftest import TINY
from vae_model import load_checkpoint
from vae_model.data import make_shapes
from vae_model.train import TrainError, TrainOptions, main, train


def opts(out, **kw) -> TrainOptions:
    base = TrainOptions(
        out=out,
        epochs=3,
        batch_size=32,
        train_size=256,
        val_size=64,
        model=TINY,
        seed=3,
        progress=False,
        verbose=False,
        num_samples=16,
        lr=0.005,
    )
    return replace(base, **kw)


@pytest.fixture(scope="module")
def run3(tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    return out, train(opts(out))


def test_loss_goes_down_and_outputs_exist(run3):
    out, result = run3
    h = result.history
    assert len(h) == 3
    assert h[-1].train_loss < h[0].train_loss
    assert h[-1].val_recon < h[0].val_recon
    for name in [
        "last.pt",
        "best.pt",
        "metrics.csv",
        "steps.csv",
        "loss_curve.png",
        "samples_e001.png",
        "samples_e003.png",
        "recons_e003.png",
    ]:
        assert (out / name).is_file(), name
    assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert len(list(csv.DictReader(open(out / "steps.csv")))) == 3 * (256 // 32)
    assert not list(out.glob("*.tmp"))


def test_checkpoint_records_range_config_and_metadata(run3):
    out, result = run3
    ck = load_checkpoint(out / "last.pt")
    assert ck.config == TINY and ck.pixel_range == (-1.0, 1.0)
    assert ck.training["epoch"] == 3 and ck.training["step"] == 24 and ck.training["seed"] == 3
    assert ck.training["metrics"]["val_loss"] == pytest.approx(result.history[-1].val_loss)
    assert ck.optimizer_state is not None and ck.scheduler_state is not None
    best = load_checkpoint(out / "best.pt")
    assert best.training["best_val"] == pytest.approx(min(m.val_loss for m in result.history))


def test_same_seed_same_result(run3, tmp_path):
    _, first = run3
    again = train(opts(tmp_path))
    assert [m.train_loss for m in again.history] == [m.train_loss for m in first.history]
    a, b = load_checkpoint(first.last).model.state_dict(), load_checkpoint(again.last).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_continues_exactly(run3, tmp_path):
    _, full = run3
    train(opts(tmp_path, epochs=2))
    resumed = train(opts(tmp_path, epochs=3, resume=tmp_path / "last.pt"))
    assert [round(m.train_loss, 10) for m in resumed.history] == [round(m.train_loss, 10) for m in full.history]
    a, b = load_checkpoint(full.last).model.state_dict(), load_checkpoint(resumed.last).model.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert len(list(csv.DictReader(open(tmp_path / "metrics.csv")))) == 3


def test_resume_with_another_config_is_refused(run3, tmp_path):
    out, _ = run3
    with pytest.raises(TrainError, match="model config .* differs"):
        train(opts(tmp_path, resume=out / "last.pt", model=replace(TINY, latent_dim=4)))


def test_folder_data(tmp_path):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, img in enumerate(make_shapes(40, image_size=80, seed=1).images):
        Image.fromarray(img.transpose(1, 2, 0)).save(folder / f"{i:03d}.png")
    result = train(opts(tmp_path / "out", data=folder, epochs=1, batch_size=8, center_crop=70))
    assert len(result.history) == 1 and result.last.is_file()


def test_cli_errors_exit_2_with_a_message(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--data", str(tmp_path / "nope"), "--no-progress"]) == 2
    assert "nope: not a directory" in capsys.readouterr().err
    assert main(["--out", str(tmp_path), "--image-size", "48", "--no-progress"]) == 2
    assert "image_size: expected a power of two" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["--out", str(tmp_path), "--data", str(tmp_path / "empty"), "--no-progress"]) == 2
    assert "no images found" in capsys.readouterr().err
    assert main(["--out", str(tmp_path), "--resume", str(tmp_path / "x.pt"), "--no-progress"]) == 2
    assert "x.pt: no such checkpoint file" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--lr", "-1"], "--lr must be a finite number > 0, got -1.0"),
        (["--gamma", "0"], "--gamma must be a finite number in (0, 1]"),
        (["--kld-weight", "nan"], "--kld-weight must be a finite number >= 0, got nan"),
        (["--weight-decay", "-0.1"], "--weight-decay must be a finite number >= 0"),
        (["--seed", "-1"], "--seed must be >= 0"),
        (["--center-crop", "0"], "--center-crop must be >= 1"),
    ],
)
def test_bad_hyper_parameters_exit_2_before_training(tmp_path, capsys, args, message):
    assert main(["--out", str(tmp_path / "out"), *args, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_out_that_is_a_file_exits_2(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert (
        main(
            [
                "--out",
                str(tmp_path / "file"),
                "--epochs",
                "1",
                "--train-size",
                "8",
                "--val-size",
                "8",
                "--batch-size",
                "8",
                "--image-size",
                "32",
                "--hidden-dims",
                "8,16",
                "--latent-dim",
                "8",
                "--no-progress",
            ]
        )
        == 2
    )
    assert "cannot create the output folder" in capsys.readouterr().err
