"""Image helpers: uint8 <-> pixel range (exact round trips in every layout); images of any size -> the model's input
exactly as the training loader prepares them (Pillow's resize reproduced bit for bit in NumPy); the README example."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import runtime
from runtime.images import (
    TRAIN_CENTER_CROP,
    ImageError,
    center_crop_box,
    convert_channels,
    from_uint8,
    load_image,
    prepare,
    read_image,
    resize_bilinear,
    save_image,
    to_pil,
    to_uint8,
)

REPO = Path(__file__).resolve().parents[2]
# (height, width) of the images the any-size tests use: the 128x128, odd sizes, CelebA's 218x178 (cropped to
# 148), images smaller than the crop, one exactly the model's size, and extreme aspect ratios.
ODD_SIZES = [(128, 128), (61, 97), (200, 300), (218, 178), (64, 64), (40, 30), (7, 250), (149, 148)]


@pytest.mark.parametrize("pixel_range", [(-1.0, 1.0), (0.0, 1.0)])
def test_round_trip_is_exact_in_every_layout(pixel_range):
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (2, 3, 5, 7), dtype=np.uint8)  # NCHW
    lo, hi = pixel_range
    for layout, pixels in (
        ("NCHW", batch),
        ("NHWC", batch.transpose(0, 2, 3, 1)),
        ("CHW", batch[0]),
        ("HWC", batch[0].transpose(1, 2, 0)),
    ):
        x = from_uint8(pixels, pixel_range, layout)
        assert x.dtype == np.float32 and x.flags.c_contiguous and x.ndim == 4 and x.shape[1:] == (3, 5, 7)
        assert x.min() >= lo and x.max() <= hi
        np.testing.assert_array_equal(to_uint8(x, pixel_range, layout), pixels)
    x = from_uint8(np.array([[[0, 255]]], np.uint8).reshape(1, 1, 2), pixel_range, "CHW")
    np.testing.assert_allclose(x.ravel(), [lo, hi])


def test_to_uint8_clips_and_handles_nan():
    x = np.array([-3.0, -1.0, 0.0, 1.0, 5.0, np.nan], np.float32).reshape(1, 1, 1, 6)
    np.testing.assert_array_equal(to_uint8(x, (-1, 1), "NCHW").ravel(), [0, 0, 128, 255, 255, 0])


def test_helper_errors():
    with pytest.raises(runtime.DTypeError, match="pixels: expected dtype uint8"):
        from_uint8(np.zeros((4, 4, 3), np.float32), (-1, 1))
    with pytest.raises(
        runtime.ShapeError, match=r"layout 'HWC' expects rank 3, got shape \(4, 4\).*pixels\[..., None\]"
    ):
        from_uint8(np.zeros((4, 4), np.uint8), (-1, 1))
    with pytest.raises(ValueError, match=r"layout: expected one of"):
        from_uint8(np.zeros((4, 4, 3), np.uint8), (-1, 1), "WHC")
    with pytest.raises(ValueError, match=r"pixel_range: expected \(lo, hi\) with hi > lo"):
        to_uint8(np.zeros((1, 3, 4, 4), np.float32), (1, 1))
    with pytest.raises(runtime.ShapeError, match=r"layout 'HWC' is one image, got a batch of 2; use 'NHWC'"):
        to_uint8(np.zeros((2, 3, 4, 4), np.float32), (-1, 1), "HWC")


def test_png_of_any_size_to_latents_and_back(rt, tmp_path):
    """The README / runtime/vae.py example, run on a real PNG twice the model's size (issue 18: the old snippet
    failed with `expected shape (N, 3, 64, 64)` on a 128x128 PNG)."""
    Image = pytest.importorskip("PIL.Image")
    c, h, w = rt.image_shape
    pixels = np.random.default_rng(0).integers(0, 256, (2 * h, 2 * w, c), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "in.png")

    z = rt.encode(rt.load_image(tmp_path / "in.png")).mu
    rt.save_image(rt.decode(z), tmp_path / "out.png")

    assert z.shape == (1, rt.latent_dim)
    with Image.open(tmp_path / "out.png") as im:
        back = np.asarray(im)
    assert back.shape == (h, w, c) and back.dtype == np.uint8
    expected = rt.to_uint8(rt.decode(rt.encode(rt.prepare(pixels)).mu), layout="HWC")
    np.testing.assert_array_equal(back, expected)


# ----------------------------------------------------------------------------------------------- any size


def _pil_resize(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    Image = pytest.importorskip("PIL.Image")
    return np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.BILINEAR))


def _pillow_major() -> int:
    import PIL

    return int(PIL.__version__.split(".")[0])


@pytest.mark.parametrize("channels", [1, 3])
def test_resize_bilinear_is_pillows_bilinear_bit_for_bit(channels):
    """Shrinking (the triangle filter widened by the reduction factor, every input pixel weighted), enlarging, one
    axis only, 1-pixel images and outputs; in both pass orders (Pillow 13 starts vertically when the height loses
    more than twice as many pixels as the width; older Pillow is horizontal first: a level's difference there)."""
    from runtime.images import _vertical_first

    rng = np.random.default_rng(channels)
    sizes = [*ODD_SIZES, (1, 1), (3, 500), (500, 3)]
    outs = [(64, 64), (32, 17), (17, 32), (100, 130), (1, 1), (5, 200), (64, 7)]
    for h, w in sizes:
        pixels = rng.integers(0, 256, (h, w) if channels == 1 else (h, w, 3), dtype=np.uint8)
        for size in [*outs, (w, h), (w, 64), (64, h)]:
            want = _pil_resize(pixels, size)
            got = resize_bilinear(pixels, size)
            assert got.shape == want.shape and got.dtype == np.uint8
            if _vertical_first(w, h, *size) and _pillow_major() < 13:
                assert np.abs(got.astype(int) - want).max() <= 1, (h, w, size)
            else:
                np.testing.assert_array_equal(got, want, err_msg=f"{w}x{h} -> {size[0]}x{size[1]}")
    assert resize_bilinear(pixels, 64).shape[:2] == (64, 64)  # an int: a square


def test_convert_channels_is_pillows_convert():
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(2)
    for c in (1, 2, 3, 4):  # L, LA, RGB, RGBA
        pixels = rng.integers(0, 256, (9, 13, c), dtype=np.uint8)
        im = Image.fromarray(pixels[:, :, 0] if c == 1 else pixels, mode="LA" if c == 2 else None)
        np.testing.assert_array_equal(convert_channels(pixels, 3), np.asarray(im.convert("RGB")))
        np.testing.assert_array_equal(convert_channels(pixels, 1)[:, :, 0], np.asarray(im.convert("L")))


def test_center_crop_box_is_the_training_loaders():
    assert center_crop_box(178, 218) == (15, 35, 163, 183)  # CelebA: 148 x 148 from the middle
    assert center_crop_box(128, 128) == (0, 0, 128, 128)  # smaller than the crop: the largest centred square
    assert center_crop_box(97, 61) == (18, 0, 79, 61)  # odd margins round down on the left/top, as in training
    assert center_crop_box(300, 200, crop=64) == (118, 68, 182, 132)
    assert center_crop_box(300, 200, crop=None) == (50, 0, 250, 200)  # no crop limit: the largest centred square
    assert center_crop_box(178, 218, crop=None) == (0, 20, 178, 198)


def _write_images(folder: Path) -> list[tuple[Path, tuple[int, ...]]]:
    """PNG files of ODD_SIZES (RGB) plus a grey and an RGBA one, with smooth content and noise."""
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(7)
    files = []
    for i, (h, w) in enumerate([*ODD_SIZES, (90, 120), (130, 70)]):
        yy, xx = np.mgrid[0:h, 0:w]
        smooth = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx + yy) % 256], -1)
        pixels = np.clip(smooth + rng.integers(-40, 41, (h, w, 3)), 0, 255).astype(np.uint8)
        if i == len(ODD_SIZES):
            im = Image.fromarray(pixels[:, :, 0])  # grey
        elif i == len(ODD_SIZES) + 1:
            im = Image.fromarray(np.dstack([pixels, rng.integers(0, 256, (h, w), dtype=np.uint8)]))  # RGBA
        else:
            im = Image.fromarray(pixels)
        path = folder / f"img_{i:02d}_{w}x{h}_{im.mode}.png"
        im.save(path)
        files.append(path)
    return files


@pytest.mark.parametrize("channels", [3, 1])
def test_prepare_equals_the_training_loader(tmp_path, channels):
    """The runtime's preprocessing (NumPy: convert, centre crop 148, Pillow's bilinear) equals vae_model's training
    loader (ImageFolderDataset, Pillow itself) on the same files, pixel for pixel; the float images equal
    vae_model.data.to_model_range's within a float32 rounding."""
    data = pytest.importorskip("vae_model.data", reason="vae_model's training loader needs torch")
    files = _write_images(tmp_path)
    train = data.ImageFolderDataset(
        tmp_path, image_size=64, center_crop=TRAIN_CENTER_CROP, channels=channels, files=files
    )
    worst = 0.0
    for i, path in enumerate(files):
        want_u8 = train[i].numpy()  # uint8 CHW
        pixels = read_image(path, channels)
        got = prepare(pixels, 64, (-1.0, 1.0), channels=channels)  # float32 (1, C, 64, 64)
        np.testing.assert_array_equal(to_uint8(got, (-1.0, 1.0), "NCHW")[0], want_u8, err_msg=path.name)
        want = data.to_model_range(want_u8[None], (-1.0, 1.0)).numpy()
        worst = max(worst, float(np.abs(got - want).max()))
        np.testing.assert_array_equal(load_image(path, 64, (-1.0, 1.0), channels=channels), got)
    print(f"prepare vs the training loader: uint8 identical on {len(files)} images, float max abs diff {worst:.3g}")
    assert worst <= 1e-6


def test_prepare_takes_one_a_batch_or_a_list_of_sizes():
    rng = np.random.default_rng(3)
    a = rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (61, 97, 3), dtype=np.uint8)
    one = prepare(a, 64, (0.0, 1.0))
    assert one.shape == (1, 3, 64, 64) and one.dtype == np.float32 and one.min() >= 0 and one.max() <= 1
    both = prepare([a, b], 64, (0.0, 1.0))
    np.testing.assert_array_equal(both[0], one[0])
    np.testing.assert_array_equal(both[1], prepare(b, 64, (0.0, 1.0))[0])
    np.testing.assert_array_equal(prepare(a.transpose(2, 0, 1), 64, (0.0, 1.0), layout="CHW"), one)
    np.testing.assert_array_equal(prepare(np.stack([a, a]), 64, (0.0, 1.0), layout="NHWC")[1], one[0])
    np.testing.assert_array_equal(
        prepare(np.stack([a, a]).transpose(0, 3, 1, 2), 64, (0.0, 1.0), layout="NCHW")[0], one[0]
    )
    grey = prepare(a, 64, (0.0, 1.0), channels=1)
    assert grey.shape == (1, 1, 64, 64)
    # An image of the model's size is only mapped: prepare == from_uint8 there.
    small = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    np.testing.assert_array_equal(prepare(small, 64, (-1.0, 1.0)), from_uint8(small, (-1.0, 1.0)))


def test_prepare_errors_name_the_image():
    rng = np.random.default_rng(4)
    ok = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    with pytest.raises(runtime.DTypeError, match="pixels: expected dtype uint8"):
        prepare(ok.astype(np.float32), 64, (-1, 1))
    with pytest.raises(runtime.DTypeError, match=r"images\[1\]: pixels: expected dtype uint8"):
        prepare([ok, ok.astype(np.float32)], 64, (-1, 1))
    with pytest.raises(runtime.ShapeError, match=r"pixels\[..., None\]"):
        prepare(ok[:, :, 0], 64, (-1, 1))
    with pytest.raises(runtime.ShapeError, match="1-4 channels, got shape"):
        prepare(rng.integers(0, 256, (4, 5, 6), dtype=np.uint8), 64, (-1, 1))
    with pytest.raises(
        ImageError, match=r"crop: expected a size >= 1 \(training's --center-crop\) or None \(no crop\), got 0"
    ):
        prepare(ok, 64, (-1, 1), crop=0)
    with pytest.raises(ImageError, match=r"or None \(no crop\), got '148'"):
        prepare(ok, 64, (-1, 1), crop="148")
    with pytest.raises(ImageError, match="channels: expected 1 \\(grey\\) or 3 \\(RGB\\), got 2"):
        prepare(ok, 64, (-1, 1), channels=2)
    with pytest.raises(runtime.EmptyBatchError, match="an empty list"):
        prepare([], 64, (-1, 1))
    with pytest.raises(ValueError, match="a list holds single images"):
        prepare([ok], 64, (-1, 1), layout="NHWC")
    with pytest.raises(runtime.ShapeError, match="layout 'NHWC' expects rank 4"):
        prepare(ok, 64, (-1, 1), layout="NHWC")
    assert issubclass(ImageError, ValueError)


def test_file_helpers(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(5)
    pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    x = from_uint8(pixels, (-1.0, 1.0))
    path = save_image(x, tmp_path / "a.png", (-1.0, 1.0))
    np.testing.assert_array_equal(read_image(path), pixels)  # uint8 -> float -> PNG -> uint8: exact
    assert to_pil(x[0], (-1.0, 1.0)).size == (64, 64) and to_pil(x[:, :1], (-1.0, 1.0)).mode == "L"
    np.testing.assert_array_equal(load_image(Image.fromarray(pixels), 64, (-1.0, 1.0)), x)  # a PIL image as source
    with pytest.raises(runtime.ShapeError, match=r"got shape \(2, 3, 64, 64\); index the batch: images\[i\]"):
        to_pil(np.concatenate([x, x]), (-1.0, 1.0))
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ImageError, match=r"bad\.png: cannot read image"):
        read_image(tmp_path / "bad.png")
    with pytest.raises(ImageError, match=r"out\.nosuchformat: cannot write image"):
        save_image(x, tmp_path / "out.nosuchformat", (-1.0, 1.0))


NO_PILLOW = r"""
import importlib.abc, sys
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "PIL":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Blocker())
import numpy as np
import runtime
from runtime.images import load_image, prepare
x = prepare(np.zeros((128, 96, 3), np.uint8), 64, (-1.0, 1.0))
try:
    load_image("in.png", 64, (-1.0, 1.0))
except ModuleNotFoundError as e:
    print(x.shape, "PIL" in sys.modules, e)
"""


def test_arrays_need_no_pillow_and_files_say_how_to_get_it():
    proc = subprocess.run([sys.executable, "-c", NO_PILLOW], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("(1, 3, 64, 64) False reading and writing image files needs Pillow"), proc.stdout
    assert "pip install 'vae-deploy[images]'" in proc.stdout
