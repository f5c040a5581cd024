"""uint8 <-> pixel-range helpers: exact round trips in every layout, and the three-line PNG example for real."""
from __future__ import annotations

import numpy as np
import pytest

import runtime
from runtime.images import from_uint8, to_uint8


@pytest.mark.parametrize("pixel_range", [(-1.0, 1.0), (0.0, 1.0)])
def test_round_trip_is_exact_in_every_layout(pixel_range):
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (2, 3, 5, 7), dtype=np.uint8)  # NCHW
    lo, hi = pixel_range
    for layout, pixels in (("NCHW", batch), ("NHWC", batch.transpose(0, 2, 3, 1)),
                           ("CHW", batch[0]), ("HWC", batch[0].transpose(1, 2, 0))):
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
    with pytest.raises(runtime.ShapeError, match=r"layout 'HWC' expects rank 3, got shape \(4, 4\).*pixels\[..., None\]"):
        from_uint8(np.zeros((4, 4), np.uint8), (-1, 1))
    with pytest.raises(ValueError, match=r"layout: expected one of"):
        from_uint8(np.zeros((4, 4, 3), np.uint8), (-1, 1), "WHC")
    with pytest.raises(ValueError, match=r"pixel_range: expected \(lo, hi\) with hi > lo"):
        to_uint8(np.zeros((1, 3, 4, 4), np.float32), (1, 1))
    with pytest.raises(runtime.ShapeError, match=r"layout 'HWC' is one image, got a batch of 2; use 'NHWC'"):
        to_uint8(np.zeros((2, 3, 4, 4), np.float32), (-1, 1), "HWC")


def test_png_to_latents_and_back_in_three_lines(rt, tmp_path):
    """The example of runtime/vae.py's docstring, run on a real PNG file."""
    Image = pytest.importorskip("PIL.Image")
    c, h, w = rt.image_shape
    pixels = np.random.default_rng(0).integers(0, 256, (h, w, c), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "in.png")

    z = rt.encode(rt.from_uint8(np.asarray(Image.open(tmp_path / "in.png").convert("RGB")))).mu
    Image.fromarray(rt.to_uint8(rt.decode(z), layout="HWC")).save(tmp_path / "out.png")

    assert z.shape == (1, rt.latent_dim)
    back = np.asarray(Image.open(tmp_path / "out.png"))
    assert back.shape == (h, w, c) and back.dtype == np.uint8
    expected = rt.to_uint8(rt.decode(rt.encode(from_uint8(pixels, rt.pixel_range)).mu), layout="HWC")
    np.testing.assert_array_equal(back, expected)
