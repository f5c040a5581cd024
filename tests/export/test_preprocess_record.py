"""Export records the centre crop a model was trained with in vae.json's "preprocess" (export.to_onnx.preprocess_record),
read from the checkpoint's training options; the runtime then prepares images with it by default.

Real tiny training runs (vae_model.train) write the checkpoints: one on a folder of non-square images with
--center-crop 100, one on the embedded shapes (no --data: generated at image_size, never cropped). PyTorch-VAE
Lightning checkpoints and bare state_dicts record no options: PyTorch-VAE's / vae_model.train's default 148, saying so.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

import runtime
from export.to_onnx import ExportError, export_bundle, preprocess_record
from runtime import bundle as B
from runtime.images import TRAIN_CENTER_CROP, prepare, read_image
from tests.conftest import TINY, make_model
from vae_model import load_checkpoint, save_checkpoint
from vae_model.data import make_shapes
from vae_model.train import TrainOptions, train

QUIET = {"log": lambda *a: None}


def _options(out, **kw) -> TrainOptions:
    base = TrainOptions(
        out=out, epochs=1, batch_size=8, train_size=32, val_size=16, model=TINY, progress=False, verbose=False
    )
    return replace(base, num_samples=4, **kw)


def _photos(folder, n: int = 16, size: tuple[int, int] = (150, 120)):
    """n non-square PNGs (width x height): the embedded shapes drawn large, then cut to a landscape frame."""
    from PIL import Image

    folder.mkdir()
    w, h = size
    for i, img in enumerate(make_shapes(n, image_size=w, seed=1).images):
        Image.fromarray(img.transpose(1, 2, 0)[:h]).save(folder / f"{i:03d}.png")
    return sorted(folder.iterdir())


@pytest.fixture(scope="module")
def trained_with_crop_100(tmp_path_factory):
    """A real training run on non-square images with --center-crop 100, exported: (bundle, one training image)."""
    pytest.importorskip("PIL.Image")
    root = tmp_path_factory.mktemp("crop100")
    files = _photos(root / "photos")
    result = train(_options(root / "train", data=root / "photos", center_crop=100))
    return export_bundle(result.best, root / "bundle", **QUIET), files[0]


def test_export_records_the_training_crop(trained_with_crop_100):
    bundle, _ = trained_with_crop_100
    recorded = json.loads((bundle / B.MANIFEST_NAME).read_text())["preprocess"]
    assert recorded == {"center_crop": 100, "resize": "bilinear", "source": "training options: --center-crop"}
    assert B.read_manifest(bundle).center_crop == 100


def test_load_image_prepares_as_training_did(trained_with_crop_100):
    bundle, photo = trained_with_crop_100
    pixels = read_image(photo)
    assert pixels.shape[:2] == (120, 150)  # non-square and larger than 100 on both sides: the crop matters
    with runtime.load(bundle, backend="onnxruntime") as rt:
        got = rt.load_image(photo)
        np.testing.assert_array_equal(got, prepare(pixels, TINY.image_size, rt.pixel_range, crop=100))
        assert not np.array_equal(got, prepare(pixels, TINY.image_size, rt.pixel_range, crop=TRAIN_CENTER_CROP))
        np.testing.assert_array_equal(
            rt.load_image(photo, crop=148), prepare(pixels, TINY.image_size, rt.pixel_range, crop=148)
        )
        assert rt.describe()["preprocess"]["center_crop"] == 100


def test_embedded_dataset_records_no_crop(tmp_path):
    """Without --data the images are generated at image_size: no crop applies, and null says so."""
    result = train(_options(tmp_path / "train"))
    assert load_checkpoint(result.best).training["options"]["data"] is None
    bundle = export_bundle(result.best, tmp_path / "bundle", graphs=("encoder",), **QUIET)
    recorded = json.loads((bundle / B.MANIFEST_NAME).read_text())["preprocess"]
    assert recorded["center_crop"] is None and "embedded shapes dataset" in recorded["source"]
    pixels = make_shapes(1, image_size=200, seed=5).images[0].transpose(1, 2, 0)[:150]  # 200 x 150
    with runtime.load(bundle, backend="onnxruntime") as rt:
        assert rt.center_crop is None
        got = rt.prepare(pixels)
        np.testing.assert_array_equal(got, prepare(pixels, TINY.image_size, rt.pixel_range, crop=None))
        assert not np.array_equal(got, prepare(pixels, TINY.image_size, rt.pixel_range, crop=TRAIN_CENTER_CROP))


def _lightning(model) -> dict:
    return {"epoch": 3, "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}


@pytest.mark.parametrize(
    "kind, build, source",
    [
        ("lightning", _lightning, "PyTorch-VAE's default (CenterCrop(148) for CelebA): a Lightning checkpoint records no crop"),
        ("state_dict", lambda m: m.state_dict(), "vae_model.train's default --center-crop: the checkpoint records none"),
    ],
)  # fmt: skip
def test_checkpoints_without_options_record_the_default_and_say_so(tmp_path, kind, build, source):
    path = tmp_path / f"{kind}.ckpt"
    torch.save(build(make_model(TINY)), path)
    ck = load_checkpoint(path)
    assert ck.kind == kind
    assert preprocess_record(ck) == B.PreprocessSpec(TRAIN_CENTER_CROP, "bilinear", source)


def test_a_vae_deploy_checkpoint_without_options_records_the_default(tiny_checkpoint):
    spec = preprocess_record(load_checkpoint(tiny_checkpoint))
    assert spec.center_crop == TRAIN_CENTER_CROP and spec.source.endswith("the checkpoint records none")


@pytest.mark.parametrize("crop", [0, "100", 2.5, True])
def test_a_malformed_recorded_crop_is_refused(tmp_path, crop):
    path = tmp_path / "odd.pt"
    save_checkpoint(path, make_model(TINY), training={"options": {"data": "faces", "center_crop": crop}})
    with pytest.raises(
        ExportError, match=rf"odd\.pt: training\.options\.center_crop: expected an integer .*got {crop!r}"
    ):
        preprocess_record(load_checkpoint(path))
