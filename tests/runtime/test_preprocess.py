"""vae.json's "preprocess" (runtime.bundle.PreprocessSpec): the centre crop a model was trained with, read once with the
manifest and applied by default by the runtime's prepare / load_image; an explicit crop= still wins.

Real bundles copied into tmp_path and edited as another training run's export would have written them (export's side,
from real checkpoints, is tests/export/test_preprocess_record.py; the C++ side, tests/runtime/cpp/). Bundles without
the key (exported before it) get 148, as before, and read and write byte for byte the same; a malformed value is a
BundleError naming vae.json, the field, what was expected and what was found.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

import runtime
from runtime import bundle as B
from runtime.images import TRAIN_CENTER_CROP, ImageError, prepare

# Non-square images larger than every crop tried here, so 100, 148 and "none" each cut a different square.
SIZES = [(170, 230), (161, 203)]  # (height, width)


def _edit(bundle: Path, edit) -> None:
    data = json.loads((bundle / B.MANIFEST_NAME).read_text())
    edit(data)
    (bundle / B.MANIFEST_NAME).write_text(json.dumps(data))


def _set_crop(bundle: Path, crop, source: str = "training options: --center-crop") -> None:
    _edit(bundle, lambda d: d.update(preprocess={"center_crop": crop, "resize": "bilinear", "source": source}))


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    out = []
    for h, w in SIZES:
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([xx * 255 // (w - 1), yy * 255 // (h - 1), (3 * xx + yy) % 256], -1)
        out.append(np.clip(base + rng.integers(-30, 31, (h, w, 3)), 0, 255).astype(np.uint8))
    return out


def test_exported_bundles_record_it(bundle):
    """The fixture bundle comes from a checkpoint saved without training options: the default, saying so."""
    data = json.loads((bundle / B.MANIFEST_NAME).read_text())
    assert data["preprocess"]["center_crop"] == TRAIN_CENTER_CROP and data["preprocess"]["resize"] == "bilinear"
    assert "records none" in data["preprocess"]["source"]
    assert list(data).index("preprocess") == list(data).index("pixel_range") + 1  # beside the other data fact


def test_recorded_crop_is_the_default_and_an_explicit_crop_wins(bundle_copy):
    _set_crop(bundle_copy, 100)
    images = _images()
    with runtime.load(bundle_copy, backend="onnxruntime") as rt:
        assert rt.center_crop == 100
        assert rt.manifest.preprocess == B.PreprocessSpec(100, "bilinear", "training options: --center-crop")
        assert rt.describe()["preprocess"]["center_crop"] == 100
        size, lo_hi = rt.image_shape[1], rt.pixel_range
        got = rt.prepare(images)
        np.testing.assert_array_equal(got, prepare(images, size, lo_hi, crop=100))
        assert not np.array_equal(got, prepare(images, size, lo_hi, crop=TRAIN_CENTER_CROP))  # the crop matters here
        np.testing.assert_array_equal(rt.prepare(images, crop="bundle"), got)
        np.testing.assert_array_equal(rt.prepare(images, crop=148), prepare(images, size, lo_hi, crop=148))
        np.testing.assert_array_equal(rt.prepare(images, crop=None), prepare(images, size, lo_hi, crop=None))
        with pytest.raises(ImageError, match=r"crop: expected 'bundle' \(the crop vae\.json records\).*got 'bundel'"):
            rt.prepare(images, crop="bundel")


def test_load_image_uses_the_recorded_crop(bundle_copy, tmp_path):
    Image = pytest.importorskip("PIL.Image", reason="load_image reads files through Pillow (the images extra)")
    _set_crop(bundle_copy, 100)
    pixels = _images()[0]
    path = tmp_path / "photo.png"
    Image.fromarray(pixels).save(path)
    with runtime.load(bundle_copy, backend="onnxruntime") as rt:
        size, lo_hi = rt.image_shape[1], rt.pixel_range
        got = rt.load_image(path)
        np.testing.assert_array_equal(got, prepare(pixels, size, lo_hi, crop=100))
        assert not np.array_equal(got, prepare(pixels, size, lo_hi, crop=148))
        np.testing.assert_array_equal(rt.load_image(path, crop=148), prepare(pixels, size, lo_hi, crop=148))


def test_null_crop_means_the_largest_centred_square(bundle_copy):
    """A model trained on images that were never cropped (vae_model.train's embedded shapes)."""
    _set_crop(bundle_copy, None, "training options: the embedded shapes dataset (generated at image_size, not cropped)")
    images = _images()
    with runtime.load(bundle_copy, backend="onnxruntime") as rt:
        assert rt.center_crop is None and rt.describe()["preprocess"]["center_crop"] is None
        size, lo_hi = rt.image_shape[1], rt.pixel_range
        got = rt.prepare(images)
        np.testing.assert_array_equal(got, prepare(images, size, lo_hi, crop=None))
        np.testing.assert_array_equal(got, prepare(images, size, lo_hi, crop=max(max(s) for s in SIZES)))
        assert not np.array_equal(got, prepare(images, size, lo_hi, crop=TRAIN_CENTER_CROP))


def test_bundle_without_the_key_gets_148_and_is_written_back_byte_for_byte(bundle_copy):
    """Bundles exported before vae.json recorded the crop: 148 as before, and a manifest rewrite (FP16/INT8 variants,
    --record-auto) adds nothing to them."""
    _edit(bundle_copy, lambda d: d.pop("preprocess"))
    old = B.read_manifest(bundle_copy)
    B.write_manifest(bundle_copy, old)  # the exporter's own formatting, as any older bundle has it
    before = (bundle_copy / B.MANIFEST_NAME).read_bytes()
    m = B.read_manifest(bundle_copy)
    assert m.preprocess is None and m.center_crop == TRAIN_CENTER_CROP
    B.write_manifest(bundle_copy, m)
    assert (bundle_copy / B.MANIFEST_NAME).read_bytes() == before
    with runtime.load(bundle_copy, backend="onnxruntime") as rt:
        assert rt.center_crop == TRAIN_CENTER_CROP
        assert rt.describe()["preprocess"]["source"].startswith("default: vae.json records no preprocess")
        size, lo_hi = rt.image_shape[1], rt.pixel_range
        np.testing.assert_array_equal(rt.prepare(_images()), prepare(_images(), size, lo_hi, crop=148))


def test_recorded_crop_round_trips(bundle_copy):
    _set_crop(bundle_copy, 100)
    before = json.loads((bundle_copy / B.MANIFEST_NAME).read_text())
    B.write_manifest(bundle_copy, B.read_manifest(bundle_copy))
    assert json.loads((bundle_copy / B.MANIFEST_NAME).read_text()) == before


@pytest.mark.parametrize(
    "value, field, message",
    [
        ({"center_crop": 0}, "preprocess.center_crop", "expected an integer in [1, 2147483647] (training's --center-crop)"
         " or null (no crop), got 0"),
        ({"center_crop": "100"}, "preprocess.center_crop", "or null (no crop), got string '100'"),
        ({"center_crop": 100.0}, "preprocess.center_crop", "or null (no crop), got number 100.0"),
        ({"center_crop": True}, "preprocess.center_crop", "or null (no crop), got boolean true"),
        ({"center_crop": 2**31}, "preprocess.center_crop", "got 2147483648"),
        ({"resize": "bilinear"}, "preprocess.center_crop", "missing"),
        ({"center_crop": 100, "resize": "bicubic"}, "preprocess.resize",
         "expected one of ['bilinear'] (the filter the runtimes reproduce), got string 'bicubic'"),
        ({"center_crop": 100, "source": 7}, "preprocess.source", "expected a string, got 7"),
        ([148], "preprocess", "expected an object, got list"),
        (None, "preprocess", "expected an object, got null"),
    ],
)  # fmt: skip
def test_malformed_preprocess_is_refused_naming_the_field(bundle_copy, value, field, message):
    _edit(bundle_copy, lambda d: d.update(preprocess=value))
    expected = rf"vae\.json: {re.escape(field)}: (.*){re.escape(message)}$"
    with pytest.raises(B.BundleError, match=expected):
        B.read_manifest(bundle_copy)
    with pytest.raises(B.BundleError, match=expected):
        runtime.load(bundle_copy, backend="onnxruntime")
