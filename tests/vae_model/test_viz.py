"""The PNGs people look at say what they show: grids carry a caption, loss panels label their y axes."""

from __future__ import annotations

import csv

import numpy as np
from PIL import Image

from vae_model import viz


def test_grid_caption_sits_above_the_tiles(tmp_path):
    images = np.zeros((16, 3, 8, 8), dtype=np.float32)
    plain = Image.open(viz.save_grid(images, tmp_path / "plain.png", nrow=8))
    titled = Image.open(viz.save_grid(images, tmp_path / "titled.png", nrow=8, title="epoch 3: 16 samples, 8 per row"))
    assert titled.width == plain.width and titled.height > plain.height
    band = np.asarray(titled.convert("L"))[: titled.height - plain.height]
    assert band.min() < 128  # dark text on the white band
    # the tiles themselves are unchanged below the caption
    assert np.array_equal(
        np.asarray(titled.convert("RGB"))[titled.height - plain.height :], np.asarray(plain.convert("RGB"))
    )


def test_pairs_caption_says_which_column_is_which(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(viz, "_with_caption", lambda img, text: seen.setdefault("text", text) and img)
    x = np.zeros((4, 3, 8, 8), dtype=np.float32)
    viz.save_pairs(x, x, tmp_path / "pairs.png", pairs_per_row=2, title="epoch 2: reconstructions")
    assert seen["text"] == (
        "epoch 2: reconstructions: 4 images, 2 pairs per row; in each pair the input (left) and "
        "its reconstruction (right)"
    )


def test_loss_panels_have_y_labels(tmp_path, monkeypatch):
    import matplotlib.figure

    path = tmp_path / "metrics.csv"
    fields = ["epoch", "train_loss", "train_recon", "train_kld", "val_loss", "val_recon", "val_kld"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for e in (1, 2):
            w.writerow({"epoch": e, **{k: 1.0 / e for k in fields[1:]}})
    labels = []
    real = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(
        matplotlib.figure.Figure,
        "savefig",
        lambda fig, *a, **k: (labels.extend(ax.get_ylabel() for ax in fig.axes), real(fig, *a, **k)),
    )
    viz.plot_losses(path, tmp_path / "loss.png")
    assert len(labels) == 3 and all(labels)
    assert "KL" in labels[2] and "MSE" in labels[1]
