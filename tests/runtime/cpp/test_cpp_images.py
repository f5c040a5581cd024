"""The C++ image preparation (vae/image.hpp, its C ABI vae_image.h) against the Python runtime's (runtime/images.py,
itself proven equal to Pillow and to the training loader in tests/runtime/test_images.py).

- vae_image_resize is Pillow's BILINEAR resize: equal to runtime.images.resize_bilinear byte for byte;
- vae_image_prepare (channels, centre crop, resize, pixel range) equals runtime.images.prepare within 1/255 (in fact
  exactly) on odd sizes: 128x128, 97x61, 300x200 ..., grey / RGB / RGBA in, grey / RGB models;
- vae_image_to_pixels equals runtime.images.to_uint8, NaN and Inf included; the C ABI's misuse battery;
- the vae_roundtrip example (PPM files of any size -> encode -> decode -> PNG) equals the Python runtime's
  prepare + reconstruct on the same bundle.
"""

from __future__ import annotations

import numpy as np
import pytest

from runtime.images import prepare, resize_bilinear, to_uint8
from tests.cpp_support import CppBuild, run_checked

ODD_SIZES = [(128, 128), (61, 97), (200, 300), (218, 178), (40, 30), (7, 250), (149, 148)]  # (height, width)
TOL = 1 / 255  # the bound for C++ vs Python; measured: 0


def _check(build: CppBuild, *args, check: bool = True):
    return run_checked([build.exe("vae_image_check"), *args], check=check)


def _pixels(rng, h: int, w: int, c: int) -> np.ndarray:
    """Smooth gradients plus noise: resizing real content, not only noise."""
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (3 * xx + yy) % 256, xx * yy % 256], -1)
    return np.clip(base[:, :, :c] + rng.integers(-30, 31, (h, w, c)), 0, 255).astype(np.uint8)


def test_resize_equals_pythons_bilinear(cpp_build, tmp_path):
    rng = np.random.default_rng(0)
    cases = 0
    for h, w in ODD_SIZES:
        for c in (1, 3, 4):
            pixels = _pixels(rng, h, w, c)
            pixels.tofile(tmp_path / "in.u8")
            for ow, oh in ((64, 64), (32, 17), (17, 32), (w, 64), (100, 130), (1, 1)):
                _check(cpp_build, "resize", tmp_path / "in.u8", w, h, c, ow, oh, tmp_path / "out.u8")
                got = np.fromfile(tmp_path / "out.u8", np.uint8).reshape(oh, ow, c)
                np.testing.assert_array_equal(
                    got, resize_bilinear(pixels, (ow, oh)), err_msg=f"{w}x{h}x{c} -> {ow}x{oh}"
                )
                cases += 1
    assert cases == len(ODD_SIZES) * 3 * 6


@pytest.mark.parametrize("pixel_range", [(-1.0, 1.0), (0.0, 1.0)])
def test_prepare_equals_python_within_one_level(cpp_build, tmp_path, pixel_range):
    rng = np.random.default_rng(1)
    lo, hi = pixel_range
    worst = 0.0
    for h, w in ODD_SIZES:
        for c in (1, 3, 4):
            pixels = _pixels(rng, h, w, c)
            pixels.tofile(tmp_path / "in.u8")
            for model_c, crop in ((3, 148), (1, 148), (3, 64)):
                _check(
                    cpp_build, "prepare", tmp_path / "in.u8", w, h, c, 64, model_c, crop, lo, hi, tmp_path / "out.f32"
                )
                got = np.fromfile(tmp_path / "out.f32", np.float32).reshape(1, model_c, 64, 64)
                want = prepare(pixels, 64, pixel_range, channels=model_c, crop=crop)
                worst = max(worst, float(np.abs(got - want).max()) / (hi - lo))
    print(f"C++ vae_image_prepare vs runtime.images.prepare: max abs diff {worst * 255:.3g} levels of 255")
    assert worst <= TOL


def test_to_pixels_equals_to_uint8(cpp_build, tmp_path):
    rng = np.random.default_rng(2)
    x = rng.uniform(-1.2, 1.2, (3, 16, 16)).astype(np.float32)
    x[0, 0, :4] = [np.nan, np.inf, -np.inf, 0.0]
    x[1, 0, :4] = np.float32([-1 + 0.5 / 127.5, -1 + 1.5 / 127.5, 1.0, -1.0])  # ties: rounded half to even
    x.tofile(tmp_path / "x.f32")
    _check(cpp_build, "to_pixels", tmp_path / "x.f32", 3, 16, -1, 1, tmp_path / "p.u8")
    got = np.fromfile(tmp_path / "p.u8", np.uint8).reshape(16, 16, 3)
    with np.errstate(over="ignore"):
        want = to_uint8(x[None], (-1.0, 1.0), "HWC")
    np.testing.assert_array_equal(got, want)


def test_image_c_abi_misuse_battery(cpp_build):
    proc = _check(cpp_build, "errors", check=False)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0 and not [x for x in lines if x.startswith("FAIL")], proc.stdout + proc.stderr
    assert sum(x.startswith("ok ") for x in lines) >= 18 and lines[-1] == "0 check(s) failed", proc.stdout


def _write_pnm(path, pixels: np.ndarray) -> None:
    h, w, c = pixels.shape
    path.write_bytes(f"P{6 if c == 3 else 5}\n# a comment\n{w} {h}\n255\n".encode() + pixels.tobytes())


def test_vae_roundtrip_example_equals_the_python_runtime(cpp_build, bundle, tmp_path):
    import runtime

    rng = np.random.default_rng(3)
    images = [_pixels(rng, 128, 128, 3), _pixels(rng, 61, 97, 3), _pixels(rng, 200, 300, 1)]
    files = []
    for i, pixels in enumerate(images):
        files.append(tmp_path / f"in_{i}.{'ppm' if pixels.shape[2] == 3 else 'pgm'}")
        _write_pnm(files[-1], pixels)
    out = tmp_path / "out"
    exe = cpp_build.exe("vae_roundtrip")
    proc = run_checked(
        [exe, bundle, *files, "--out", out, "--save-input", tmp_path / "x.npy", "--save-npy", tmp_path / "y.npy"]
    )
    for stage in ("load", "read", "prepare", "encode", "decode", "to_pixels", "write"):
        assert f"  {stage} " in proc.stdout, proc.stdout
    with runtime.load(bundle, backend="onnxruntime") as rt:
        want_x = rt.prepare(images)
        want_y = rt.reconstruct(want_x)
        x, y = np.load(tmp_path / "x.npy"), np.load(tmp_path / "y.npy")
        assert x.shape == want_x.shape and y.shape == want_y.shape
        assert float(np.abs(x - want_x).max()) <= TOL * 2  # pixel range [-1, 1]: one level is 2/255
        err = float(np.abs(y - want_y).max())
        assert err <= 1e-5, f"vae_roundtrip vs the Python runtime: max abs error {err:.3g}"
        Image = pytest.importorskip("PIL.Image")
        for i in range(len(images)):
            with Image.open(out / f"recon_{i:03d}.png") as im:
                np.testing.assert_array_equal(np.asarray(im.convert("RGB")), rt.to_uint8(y[i : i + 1], "HWC"))

    # Files it would write exist: nothing happens without --overwrite (exit 2); PNG input is refused clearly.
    proc = run_checked([exe, bundle, files[0], "--out", out], check=False)
    assert proc.returncode == 2 and "would overwrite 1 existing file(s)" in proc.stderr, proc.stderr
    png = tmp_path / "a.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n")
    proc = run_checked([exe, bundle, png, "--format", "none"], check=False)
    assert proc.returncode == 2, proc.stderr
    assert f"{png}: not a binary PPM (P6) or PGM (P5) file" in proc.stderr and "convert PNG" in proc.stderr


@pytest.mark.parametrize("recorded, shown", [(100, "<= 100"), (None, "none")])
def test_vae_roundtrip_uses_the_bundles_recorded_crop(cpp_build, bundle_copy, tmp_path, recorded, shown):
    """vae.json's preprocess.center_crop (100, as a run with --center-crop 100 exports it; null, as a run on the
    embedded shapes does) is vae_roundtrip's default, as it is the Python runtime's; --crop still wins."""
    import json

    import runtime

    manifest = bundle_copy / "vae.json"
    data = json.loads(manifest.read_text())
    data["preprocess"] = {"center_crop": recorded, "resize": "bilinear", "source": "training options"}
    manifest.write_text(json.dumps(data))
    rng = np.random.default_rng(5)
    images = [_pixels(rng, 170, 230, 3), _pixels(rng, 161, 203, 3)]  # larger than 100 and 148 both ways
    files = [tmp_path / f"in_{i}.ppm" for i in range(len(images))]
    for path, pixels in zip(files, images):
        _write_pnm(path, pixels)
    exe = cpp_build.exe("vae_roundtrip")
    run = [exe, bundle_copy, *files, "--format", "none", "--save-input"]
    proc = run_checked([*run, tmp_path / "x.npy"])
    assert f"centre crop {shown} from the bundle" in proc.stdout, proc.stdout
    proc = run_checked([*run, tmp_path / "x148.npy", "--crop", "148"])
    assert "centre crop <= 148 from --crop" in proc.stdout, proc.stdout
    with runtime.load(bundle_copy, backend="onnxruntime") as rt:
        assert rt.center_crop == recorded
        want, want_148 = rt.prepare(images), rt.prepare(images, crop=148)
    x, x148 = np.load(tmp_path / "x.npy"), np.load(tmp_path / "x148.npy")
    np.testing.assert_array_equal(x, want)  # integer arithmetic, then the same float32 mapping: exactly
    np.testing.assert_array_equal(x148, want_148)
    assert not np.array_equal(x, x148)  # the crops differ on these images
