"""uint8 pixels <-> float images in a bundle's pixel range, and images of any size -> the model's input (NumPy).

Models see float32 NCHW batches in the pixel range recorded in vae.json (e.g. [-1, 1] for our checkpoints,
[0, 1] for PyTorch-VAE's own). Files and displays hold uint8 pixels, usually HWC. These two functions are the only
place the mapping lives:  x = lo + p / 255 * (hi - lo)  and  p = round((x - lo) / (hi - lo) * 255), clipped to 0..255,
so uint8 -> float -> uint8 is exact.

Layouts: "HWC" / "CHW" are one image; "NHWC" / "NCHW" are a batch. from_uint8 always returns an NCHW batch (a single
image gets a batch axis of 1); to_uint8 takes an NCHW batch and returns the layout asked for ("HWC"/"CHW" need a
batch of exactly one).

Images of any size: prepare() (NumPy only) converts, centre-crops and resizes uint8 images exactly like the training
loader (vae_model.data.ImageFolderDataset: Pillow's convert, crop to the largest centred square of at most `crop`
pixels, Pillow's BILINEAR resize), then maps them to the pixel range; resize_bilinear is Pillow's filter bit for bit.
`crop` is training's --center-crop: 148 by default here; a loaded runtime (runtime.load) defaults to the crop its
vae.json records ("preprocess"), and None means no crop limit (the largest centred square: a model trained on images
that were never cropped, like vae_model.train's embedded shapes).
load_image / read_image / to_pil / save_image add file I/O through Pillow (the `images` extra), imported when called.

    x = load_image("photo.png", 64, (-1.0, 1.0))            # any size -> float32 (1, 3, 64, 64)
    save_image(vae.decode(vae.encode(x).mu), "out.png", (-1.0, 1.0))
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DTypeError, EmptyBatchError, ShapeError, VaeError

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


# ---------------------------------------------------------------------------------------------------- any image size
# The training pipeline's geometry (vae_model.data.ImageFolderDataset, after PyTorch-VAE's CelebA transforms): the
# largest centred square of at most `crop` pixels, resized to the model's size with Pillow's BILINEAR filter. When it
# shrinks, that filter is a triangle whose support grows with the reduction factor, so every input pixel counts (an
# antialiased average, unlike torch's 4-tap bilinear interpolate), in 22-bit fixed point (Pillow's Resample.c).
# resize_bilinear reproduces it bit for bit in NumPy, so preparing an image needs neither Pillow nor torch; the C++
# library does the same (runtime/cpp/src/image_prep.cpp).

TRAIN_CENTER_CROP = 148  # vae_model.train --center-crop's default (PyTorch-VAE: CenterCrop(148) for 178x218 CelebA)
_PRECISION_BITS = 32 - 8 - 2  # Pillow's resample.c for 8-bit images: fixed-point weights with 22 fractional bits


class ImageError(VaeError, ValueError):
    """An image file cannot be read, or an image cannot be prepared as asked; the message names it."""


def center_crop_box(width: int, height: int, crop: int | None = TRAIN_CENTER_CROP) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the largest centred square of at most `crop` pixels, as in training (None: no
    limit, the largest centred square)."""
    if width < 1 or height < 1:
        raise ImageError(f"image: expected width and height >= 1, got {width}x{height}")
    if crop is not None and (isinstance(crop, bool) or not isinstance(crop, (int, np.integer)) or crop < 1):
        raise ImageError(f"crop: expected a size >= 1 (training's --center-crop) or None (no crop), got {crop!r}")
    c = min(width, height) if crop is None else min(int(crop), width, height)
    left, top = (width - c) // 2, (height - c) // 2
    return left, top, left + c, top + c


def _bilinear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's precompute_coeffs (BILINEAR, the whole input) + normalize_coeffs_8bpc: per output pixel, the first
    input index and the fixed-point weights of its taps, (out_size,) and (out_size, ksize) int64 (0 past the last)."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale  # the triangle's support (1) stretched by the reduction factor
    ksize = int(math.ceil(support)) * 2 + 1
    ss = 1.0 / filterscale
    starts = np.zeros(out_size, np.int64)
    weights = np.zeros((out_size, ksize), np.int64)
    for xx in range(out_size):
        center = 0.0 + (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)  # int(): C's truncating cast, as in resample.c
        xmax = min(int(center + support + 0.5), in_size) - xmin
        w = [max(0.0, 1.0 - abs((x + xmin - center + 0.5) * ss)) for x in range(xmax)]
        total = 0.0
        for v in w:  # summed in order, like the C loop (the float sum must match to the last bit)
            total += v
        if total != 0.0:
            w = [v / total for v in w]
        starts[xx] = xmin
        weights[xx, :xmax] = [int(0.5 + v * (1 << _PRECISION_BITS)) for v in w]
    return starts, weights


def _resample_axis(pixels: np.ndarray, axis: int, out_size: int) -> np.ndarray:
    """One pass of Pillow's two-pass resize along `axis` (0: rows, 1: columns) of an (H, W, C) uint8 array, in
    Pillow's integer arithmetic (int64 here: no overflow, the same sums)."""
    in_size = pixels.shape[axis]
    starts, weights = _bilinear_taps(in_size, out_size)
    shape = list(pixels.shape)
    shape[axis] = out_size
    acc = np.full(shape, 1 << (_PRECISION_BITS - 1), np.int64)  # + one half: round to nearest on the shift
    bcast = (slice(None), None, None) if axis == 0 else (None, slice(None), None)
    for j in range(weights.shape[1]):  # one tap at a time: memory stays one output image
        idx = np.minimum(starts + j, in_size - 1)  # taps past a pixel's last carry weight 0
        acc += np.take(pixels, idx, axis=axis) * weights[:, j][bcast]
    return np.clip(acc >> _PRECISION_BITS, 0, 255).astype(np.uint8)  # Pillow's clip8


def _vertical_first(in_w: int, in_h: int, out_w: int, out_h: int) -> bool:
    """Pillow >= 13's choice of pass order (ImagingResampleInner)."""
    return out_h < in_h and in_h - out_h > 2 * (in_w - out_w)


def resize_bilinear(pixels: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """uint8 HWC (or HW) pixels -> resized to `size` (an int: a square; or (width, height), Pillow's order) exactly as
    Pillow's Image.resize(size, Image.Resampling.BILINEAR) does it, bit for bit, in NumPy alone."""
    arr = np.asarray(pixels)
    if arr.dtype != np.uint8:
        raise DTypeError(f"pixels: expected dtype uint8 (0..255), got {arr.dtype}")
    if arr.ndim not in (2, 3) or 0 in arr.shape:
        raise ShapeError(f"pixels: expected one non-empty HWC (or HW) image, got shape {arr.shape}")
    out_w, out_h = (size, size) if isinstance(size, (int, np.integer)) else size
    if out_w < 1 or out_h < 1:
        raise ImageError(f"size: expected a width and height >= 1, got {size!r}")
    img = arr[:, :, None] if arr.ndim == 2 else arr
    # Two passes, rounded to 8 bits in between; a pass at the same size is skipped. Pillow 13 runs the vertical pass
    # first when the height loses more than twice as many pixels as the width (python-pillow/Pillow#9549), older
    # Pillow always starts horizontally: the two differ by a level at some pixels of such resizes only. Training's
    # square crop -> square image is horizontal first in every version.
    passes = [(1, out_w), (0, out_h)]
    if _vertical_first(img.shape[1], img.shape[0], out_w, out_h):
        passes.reverse()
    for axis, n in passes:
        if img.shape[axis] != n:
            img = _resample_axis(img, axis, n)
    img = np.ascontiguousarray(img)
    return img[:, :, 0] if arr.ndim == 2 else img


def convert_channels(pixels: np.ndarray, channels: int) -> np.ndarray:
    """uint8 HWC pixels with 1 (grey), 2 (grey + alpha), 3 (RGB) or 4 (RGBA) channels -> `channels` (1 or 3) channels,
    as Pillow's convert("L") / convert("RGB") does it (the training loader's conversion): alpha is dropped, grey is
    repeated, RGB -> grey is ITU-R 601-2 luma in Pillow's fixed point."""
    arr = np.asarray(pixels)
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4):
        raise ShapeError(f"pixels: expected an HWC image with 1-4 channels, got shape {arr.shape}")
    if channels not in (1, 3):
        raise ImageError(f"channels: expected 1 (grey) or 3 (RGB), got {channels}")
    have = arr.shape[2]
    colour = arr[:, :, :3] if have >= 3 else arr[:, :, :1]  # alpha (channel 2 of LA, 4 of RGBA) is dropped
    if colour.shape[2] == channels:
        return np.ascontiguousarray(colour)
    if channels == 3:
        return np.ascontiguousarray(np.repeat(colour, 3, axis=2))
    rgb = colour.astype(np.int64)
    luma = (rgb[:, :, 0] * 19595 + rgb[:, :, 1] * 38470 + rgb[:, :, 2] * 7471 + 0x8000) >> 16
    return luma.astype(np.uint8)[:, :, None]


def crop_and_resize(
    pixels: np.ndarray, size: int, crop: int | None = TRAIN_CENTER_CROP, layout: str = "HWC"
) -> np.ndarray:
    """One uint8 image of any size (HWC or CHW) -> uint8 (size, size, C), cropped and resized as in training (crop
    None: the largest centred square)."""
    if layout not in ("HWC", "CHW"):
        raise ValueError(f"layout: expected 'HWC' or 'CHW' for one image, got {layout!r}")
    arr = np.asarray(pixels)
    if arr.dtype != np.uint8:
        raise DTypeError(f"pixels: expected dtype uint8 (0..255), got {arr.dtype}")
    if arr.ndim != 3:
        hint = " (a greyscale HxW image needs a channel axis: pixels[..., None])" if arr.ndim == 2 else ""
        raise ShapeError(f"pixels: layout {layout!r} expects rank 3, got shape {arr.shape}{hint}")
    if layout == "CHW":
        arr = arr.transpose(1, 2, 0)
    h, w = arr.shape[:2]
    left, top, right, bottom = center_crop_box(w, h, crop)
    return resize_bilinear(arr[top:bottom, left:right], size)


def prepare(
    images: Any,
    size: int,
    pixel_range: tuple[float, float],
    *,
    channels: int = 3,
    crop: int | None = TRAIN_CENTER_CROP,
    layout: str = "HWC",
) -> np.ndarray:
    """uint8 images of any size -> the model's input: a float32 NCHW batch (N, channels, size, size) in pixel_range.

    `images`: one image ("HWC" / "CHW"), a batch of equal-sized images ("NHWC" / "NCHW"), or a list of single images
    in `layout` ("HWC" / "CHW"), each of its own size. Each is converted to `channels` like Pillow's convert, centre-
    cropped to at most `crop` pixels (None: no limit) and resized with Pillow's BILINEAR filter (crop_and_resize):
    the training loader's pipeline, in NumPy alone.
    """
    _check_layout(layout)
    per_image = layout[-3:]
    if isinstance(images, (list, tuple)):
        if len(layout) == 4:
            raise ValueError(f"layout: a list holds single images, expected 'HWC' or 'CHW', got {layout!r}")
        items = list(images)
    else:
        arr = np.asarray(images)
        if len(layout) == 4 and arr.ndim != 4:
            raise ShapeError(f"images: layout {layout!r} expects rank 4, got shape {arr.shape}")
        items = list(arr) if len(layout) == 4 else [arr]
    if not items:
        raise EmptyBatchError("images: an empty list; expected at least one image")
    out = []
    for i, item in enumerate(items):
        arr = np.asarray(item)
        if arr.ndim == 3 and per_image == "CHW":
            arr = arr.transpose(1, 2, 0)
        try:
            hwc = convert_channels(arr, channels) if arr.ndim == 3 else arr
            out.append(crop_and_resize(hwc, size, crop))
        except (ShapeError, DTypeError, ImageError) as e:
            raise type(e)(f"images[{i}]: {e}" if len(items) > 1 else str(e)) from None
    return from_uint8(np.stack(out), pixel_range, "NHWC")


def _pillow():
    try:
        from PIL import Image
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "reading and writing image files needs Pillow, which is not installed: "
            "pip install 'vae-deploy[images]' (runtime.images.prepare works on arrays "
            "without it)",
            name="PIL",
        ) from None
    return Image


def read_image(source: Any, channels: int = 3) -> np.ndarray:
    """An image file (path) or a PIL image -> uint8 HWC pixels with `channels` (1 or 3), converted like the training
    loader (Pillow's convert("L") / convert("RGB")). Needs Pillow (the `images` extra)."""
    if channels not in (1, 3):
        raise ImageError(f"channels: expected 1 (grey) or 3 (RGB), got {channels}")
    Image = _pillow()
    mode = "RGB" if channels == 3 else "L"
    if isinstance(source, Image.Image):
        pixels = np.asarray(source.convert(mode), dtype=np.uint8)
    else:
        try:
            with Image.open(source) as im:
                pixels = np.asarray(im.convert(mode), dtype=np.uint8)
        except (OSError, Image.UnidentifiedImageError) as e:  # UnidentifiedImageError is an OSError; named for clarity
            raise ImageError(f"{source}: cannot read image: {e}") from None
    return pixels[:, :, None] if pixels.ndim == 2 else pixels


def load_image(
    source: Any,
    size: int,
    pixel_range: tuple[float, float],
    *,
    channels: int = 3,
    crop: int | None = TRAIN_CENTER_CROP,
) -> np.ndarray:
    """An image file (path) or a PIL image of any size -> the model's input, a float32 (1, channels, size, size)
    batch in pixel_range: read and converted like the training loader, then prepare(). Needs Pillow."""
    return prepare(read_image(source, channels), size, pixel_range, channels=channels, crop=crop)


def to_pil(image: np.ndarray, pixel_range: tuple[float, float]):
    """One float image in pixel_range (CHW, or an NCHW batch of one, e.g. decode()'s output) -> a PIL image ("RGB"
    for 3 channels, "L" for 1). Needs Pillow."""
    arr = np.asarray(image)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[0] != 1 or arr.shape[1] not in (1, 3):
        raise ShapeError(
            f"image: expected one image, CHW or (1, C, H, W) with C 1 or 3, got shape {np.shape(image)}"
            + ("; index the batch: images[i]" if arr.ndim == 4 and arr.shape[0] > 1 else "")
        )
    pixels = to_uint8(arr, pixel_range, "HWC")
    Image = _pillow()
    return Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)


def save_image(image: np.ndarray, path: str | os.PathLike, pixel_range: tuple[float, float]) -> Path:
    """Write one float image in pixel_range (CHW or a batch of one) to `path` (format from the suffix: .png, .jpg,
    .ppm ...). Needs Pillow. Returns the path."""
    pil = to_pil(image, pixel_range)
    path = Path(path)
    try:
        pil.save(path)
    except (OSError, ValueError) as e:  # ValueError: an unknown suffix
        raise ImageError(f"{path}: cannot write image: {e}") from None
    return path
