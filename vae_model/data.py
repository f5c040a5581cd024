"""Training data: an embedded, deterministic shapes dataset (the default) and a folder of images (e.g. CelebA).

The embedded set needs no download: coloured circles, squares and triangles that vary in kind, position, size,
colour and background, anti-aliased, generated from a seed. A VAE learns it in minutes on a CPU, and a person can
tell at a glance whether samples show shapes. Images are stored as uint8 NCHW and scaled to the model's pixel range
([-1, 1], the Tanh range) per batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .errors import VaeModelError

SHAPE_KINDS = ("circle", "square", "triangle")
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm"}


class DataError(VaeModelError, ValueError):
    """A dataset folder or file cannot be used; the message names it."""


@dataclass(frozen=True)
class ShapesBatch:
    """uint8 images (N, C, H, W) and the factors that generated them."""

    images: np.ndarray
    kind: np.ndarray  # index into SHAPE_KINDS
    center: np.ndarray  # (N, 2) x, y in pixels
    size: np.ndarray  # radius-like size in pixels
    color: np.ndarray  # (N, 3) uint8 foreground
    background: np.ndarray  # (N, 3) uint8


def make_shapes(n: int, image_size: int = 64, channels: int = 3, seed: int = 0, chunk: int = 512) -> ShapesBatch:
    """Generate n anti-aliased shape images deterministically from `seed`."""
    if n < 1:
        raise DataError(f"make_shapes: n must be >= 1, got {n}")
    if channels not in (1, 3):
        raise DataError(f"make_shapes: channels must be 1 or 3, got {channels}")
    rng = np.random.default_rng(seed)
    s = float(image_size)
    kind = rng.integers(0, len(SHAPE_KINDS), n)
    size = rng.uniform(0.15, 0.32, n) * s
    center = rng.uniform(0.0, 1.0, (n, 2)) * (s - 2.4 * size[:, None]) + 1.2 * size[:, None]
    background = (rng.uniform(0.05, 0.45, (n, 3)) * 255).astype(np.uint8)
    # Foreground: a saturated colour from a random hue, bright enough to stand out against the dark backgrounds.
    hue = rng.uniform(0, 1, n)
    color = (_hsv_to_rgb(hue, rng.uniform(0.6, 1.0, n), rng.uniform(0.75, 1.0, n)) * 255).astype(np.uint8)

    yy, xx = np.mgrid[0:image_size, 0:image_size].astype(np.float32) + 0.5
    out = np.empty((n, 3, image_size, image_size), dtype=np.uint8)
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        dx = xx[None] - center[lo:hi, 0, None, None]
        dy = yy[None] - center[lo:hi, 1, None, None]
        r = size[lo:hi, None, None]
        k = kind[lo:hi, None, None]
        circle = np.sqrt(dx * dx + dy * dy) - r
        square = np.maximum(np.abs(dx), np.abs(dy)) - 0.85 * r
        # Upward triangle as the intersection of three half-planes (edge normals: down, and +-30 deg up).
        tri = np.maximum.reduce([dy, 0.866 * dx - 0.5 * dy, -0.866 * dx - 0.5 * dy]) - 0.6 * r
        dist = np.where(k == 0, circle, np.where(k == 1, square, tri))
        cover = np.clip(0.5 - dist, 0.0, 1.0)[:, None]  # one-pixel anti-aliased edge
        fg = color[lo:hi, :, None, None].astype(np.float32)
        bg = background[lo:hi, :, None, None].astype(np.float32)
        out[lo:hi] = np.rint(bg + cover * (fg - bg)).astype(np.uint8)
    if channels == 1:
        out = np.rint(out.astype(np.float32).transpose(0, 2, 3, 1) @ np.array([0.299, 0.587, 0.114], np.float32))
        out = out.astype(np.uint8)[:, None]
    return ShapesBatch(images=out, kind=kind, center=center, size=size, color=color, background=background)


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    i = np.floor(h * 6).astype(int) % 6
    f = h * 6 - np.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    table = np.stack([np.stack(c, -1) for c in [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]])
    return table[i, np.arange(len(h))]


def to_model_range(
    images_u8: torch.Tensor | np.ndarray, pixel_range: tuple[float, float] = (-1.0, 1.0)
) -> torch.Tensor:
    """uint8 [0, 255] -> float32 in pixel_range."""
    x = torch.as_tensor(images_u8).float() / 255.0
    lo, hi = pixel_range
    return x * (hi - lo) + lo


class ArrayDataset(Dataset):
    """uint8 NCHW images held in memory."""

    def __init__(self, images: np.ndarray) -> None:
        self.images = torch.from_numpy(np.ascontiguousarray(images))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]


class ImageFolderDataset(Dataset):
    """All images under a folder (recursively), centre-cropped and resized like PyTorch-VAE's CelebA pipeline.

    PyTorch-VAE uses CenterCrop(148) then Resize(64) for CelebA's 178x218 img_align_celeba. Images smaller than
    `center_crop` are cropped to their largest centred square instead. Returns uint8 CHW tensors.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        image_size: int = 64,
        center_crop: int = 148,
        channels: int = 3,
        files: list[Path] | None = None,
    ) -> None:
        self.root = Path(root)
        if files is None:
            if not self.root.is_dir():
                raise DataError(f"--data {self.root}: not a directory")
            files = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
            if not files:
                raise DataError(f"--data {self.root}: no images found (looked for {sorted(IMAGE_EXTENSIONS)})")
        self.files = files
        self.image_size, self.center_crop, self.channels = image_size, center_crop, channels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        from PIL import Image, UnidentifiedImageError

        path = self.files[i]
        try:
            with Image.open(path) as im:
                im = im.convert("RGB" if self.channels == 3 else "L")
                w, h = im.size
                c = min(self.center_crop, w, h)
                left, top = (w - c) // 2, (h - c) // 2
                im = im.crop((left, top, left + c, top + c)).resize(
                    (self.image_size, self.image_size), Image.Resampling.BILINEAR
                )
                arr = np.asarray(im, dtype=np.uint8)
        except (OSError, UnidentifiedImageError) as e:
            raise DataError(f"{path}: cannot read image: {e}") from None
        if arr.ndim == 2:
            arr = arr[:, :, None]
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))

    def split(self, val_fraction: float = 0.05) -> tuple["ImageFolderDataset", "ImageFolderDataset"]:
        """Deterministic split: every k-th file goes to validation."""
        step = max(2, int(round(1 / val_fraction)))
        val = [f for j, f in enumerate(self.files) if j % step == 0]
        train = [f for j, f in enumerate(self.files) if j % step != 0] or val
        make = lambda fs: ImageFolderDataset(self.root, self.image_size, self.center_crop, self.channels, fs)  # noqa: E731
        return make(train), make(val)
