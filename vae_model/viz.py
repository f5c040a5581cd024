"""PNG outputs people look at: image grids (samples, reconstructions next to inputs) and loss curves."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from .files import atomic_write


def to_uint8(images: np.ndarray, pixel_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """Float images (N, C, H, W) in pixel_range -> uint8 (N, C, H, W), clipped."""
    lo, hi = pixel_range
    x = (np.asarray(images, dtype=np.float32) - lo) / (hi - lo)
    return np.rint(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def grid(images_u8: np.ndarray, nrow: int, pad: int = 2, pad_value: int = 255) -> np.ndarray:
    """uint8 (N, C, H, W) -> one uint8 (rows*H, nrow*W, C) canvas with `pad` pixels between tiles."""
    n, c, h, w = images_u8.shape
    rows = -(-n // nrow)
    canvas = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), pad_value, dtype=np.uint8)
    for i in range(n):
        r, k = divmod(i, nrow)
        y, x = pad + r * (h + pad), pad + k * (w + pad)
        canvas[y : y + h, x : x + w] = images_u8[i].transpose(1, 2, 0)
    return canvas


def save_grid(
    images: np.ndarray,
    path: str | os.PathLike,
    *,
    nrow: int = 8,
    pixel_range: tuple[float, float] = (-1.0, 1.0),
    scale: int = 2,
    title: str | None = None,
) -> Path:
    """Write float images (N, C, H, W) as a PNG grid, upscaled `scale`x (nearest) so 64px tiles are readable, with
    `title` as a caption above it (what the tiles are: epoch, what the rows and columns hold)."""
    from PIL import Image

    canvas = grid(to_uint8(images, pixel_range), nrow)
    img = Image.fromarray(canvas[:, :, 0] if canvas.shape[2] == 1 else canvas).convert("RGB")
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    if title:
        img = _with_caption(img, title)
    return atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))


def save_pairs(
    inputs: np.ndarray,
    recons: np.ndarray,
    path: str | os.PathLike,
    *,
    pairs_per_row: int = 4,
    pixel_range: tuple[float, float] = (-1.0, 1.0),
    title: str | None = None,
) -> Path:
    """Each input followed by its reconstruction, `pairs_per_row` pairs per row; the caption (`title`, e.g. the
    epoch) says so."""
    inter = np.empty((2 * len(inputs), *inputs.shape[1:]), dtype=np.float32)
    inter[0::2], inter[1::2] = inputs, recons
    layout = (
        f"{len(inputs)} images, {pairs_per_row} pairs per row; in each pair the input (left) and its "
        "reconstruction (right)"
    )
    return save_grid(
        inter, path, nrow=2 * pairs_per_row, pixel_range=pixel_range, title=f"{title}: {layout}" if title else layout
    )


def _with_caption(img, text: str, size: int = 14):
    """`img` with `text` wrapped to its width in a white band above it."""
    import textwrap

    from PIL import Image, ImageDraw, ImageFont

    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one fixed-size bitmap font
        font = ImageFont.load_default()
    char_w = max(1.0, font.getlength("abcdefghijklmnopqrstuvwxyz") / 26)
    lines = textwrap.wrap(text, width=max(20, int((img.width - 8) / char_w)))
    line_h = size + 4
    out = Image.new("RGB", (img.width, img.height + line_h * len(lines) + 8), "white")
    draw = ImageDraw.Draw(out)
    for i, line in enumerate(lines):
        draw.text((4, 4 + i * line_h), line, fill="black", font=font)
    out.paste(img, (0, line_h * len(lines) + 8))
    return out


def plot_losses(
    metrics_csv: str | os.PathLike, path: str | os.PathLike, steps_csv: str | os.PathLike | None = None
) -> Path:
    """Loss curves from the training CSVs: total, reconstruction and KL terms, train and validation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _read_csv(metrics_csv)
    epochs = [int(r["epoch"]) for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    # (CSV key, title, y label): the terms of vae_model.model.vae_loss, per item averaged over the batch.
    panels: Sequence[tuple[str, str, str]] = (
        ("loss", "total loss", "reconstruction + kld_weight x KL (log scale)"),
        ("recon", "reconstruction (MSE)", "pixel MSE, mean over pixels (log scale)"),
        ("kld", "KL divergence", "KL(q(z|x) || N(0, I)), nats per image"),
    )
    steps = _read_csv(steps_csv) if steps_csv and Path(steps_csv).exists() else []
    per_epoch = max(1, len(steps) // max(1, len(rows)))
    for ax, (key, title, ylabel) in zip(axes, panels, strict=True):
        if steps:
            x = [int(s["step"]) / per_epoch for s in steps]
            ax.plot(x, [float(s[key]) for s in steps], color="tab:blue", alpha=0.25, lw=0.8, label="train (per step)")
        ax.plot(epochs, [float(r[f"train_{key}"]) for r in rows], "o-", color="tab:blue", label="train (epoch mean)")
        ax.plot(epochs, [float(r[f"val_{key}"]) for r in rows], "s-", color="tab:orange", label="validation")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        if key != "kld":
            ax.set_yscale("log")
        else:  # the first steps' KL spikes by 100x; scale the axis to the rest of the run so the trend is visible
            later = [float(s["kld"]) for s in steps[len(steps) // 20 :]] + [
                float(r[f"{p}_kld"]) for r in rows for p in ("train", "val")
            ]
            ax.set_ylim(0, 1.2 * max(later))
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    out = atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return out


def _read_csv(path: str | os.PathLike) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
