"""uint8 pixels <-> float images in a bundle's pixel range (pure NumPy).

Models see float32 NCHW batches in the pixel range recorded in vae.json (e.g. [-1, 1] for our checkpoints,
[0, 1] for PyTorch-VAE's own). Files and displays hold uint8 pixels, usually HWC. These two functions are the only
place the mapping lives:  x = lo + p / 255 * (hi - lo)  and  p = round((x - lo) / (hi - lo) * 255), clipped to 0..255,
so uint8 -> float -> uint8 is exact.

Layouts: "HWC" / "CHW" are one image; "NHWC" / "NCHW" are a batch. from_uint8 always returns an NCHW batch (a single
image gets a batch axis of 1); to_uint8 takes an NCHW batch and returns the layout asked for ("HWC"/"CHW" need a
batch of exactly one).
"""
from __future__ import annotations

import numpy as np

from .errors import DTypeError, ShapeError

LAYOUTS = ("HWC", "CHW", "NHWC", "NCHW")


def _check_range(pixel_range: tuple[float, float]) -> tuple[float, float]:
    lo, hi = (float(v) for v in pixel_range)
    if not hi > lo:
        raise ValueError(f"pixel_range: expected (lo, hi) with hi > lo, got {pixel_range!r}")
    return lo, hi


def _check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"layout: expected one of {list(LAYOUTS)}, got {layout!r}")


def from_uint8(pixels: np.ndarray, pixel_range: tuple[float, float], layout: str = "HWC") -> np.ndarray:
    """uint8 pixels (0..255) in `layout` -> float32 NCHW batch in `pixel_range`."""
    _check_layout(layout)
    lo, hi = _check_range(pixel_range)
    arr = np.asarray(pixels)
    if arr.dtype != np.uint8:
        raise DTypeError(f"pixels: expected dtype uint8 (0..255), got {arr.dtype}")
    if arr.ndim != len(layout):
        hint = " (a greyscale HxW image needs a channel axis: pixels[..., None])" if arr.ndim == 2 else ""
        raise ShapeError(f"pixels: layout {layout!r} expects rank {len(layout)}, got shape {arr.shape}{hint}")
    if len(layout) == 3:
        arr = arr[None]
    if layout.endswith("HWC"):
        arr = arr.transpose(0, 3, 1, 2)
    out = arr.astype(np.float32) * np.float32((hi - lo) / 255.0) + np.float32(lo)
    return np.ascontiguousarray(out)


def to_uint8(images: np.ndarray, pixel_range: tuple[float, float], layout: str = "NHWC") -> np.ndarray:
    """float NCHW batch in `pixel_range` -> uint8 pixels in `layout` (values outside the range are clipped)."""
    _check_layout(layout)
    lo, hi = _check_range(pixel_range)
    arr = np.asarray(images)
    if arr.dtype.kind != "f":
        raise DTypeError(f"images: expected a floating-point NCHW array in {[lo, hi]}, got dtype {arr.dtype}")
    if arr.ndim != 4:
        raise ShapeError(f"images: expected an NCHW batch (rank 4), got shape {arr.shape}")
    if len(layout) == 3 and arr.shape[0] != 1:
        raise ShapeError(f"images: layout {layout!r} is one image, got a batch of {arr.shape[0]}; use 'N{layout}'")
    scaled = (np.nan_to_num(arr.astype(np.float32), nan=lo) - np.float32(lo)) * np.float32(255.0 / (hi - lo))
    out = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    if layout.endswith("HWC"):
        out = out.transpose(0, 2, 3, 1)
    if len(layout) == 3:
        out = out[0]
    return np.ascontiguousarray(out)
