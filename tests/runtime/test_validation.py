"""Boundary validation: every bad input gives a typed error naming the tensor, the expected and the actual value."""

from __future__ import annotations

import numpy as np
import pytest

import runtime


def _images(rt, n=2, seed=0):
    lo, hi = rt.pixel_range
    return np.random.default_rng(seed).uniform(lo, hi, (n, *rt.image_shape)).astype(np.float32)


def test_wrong_rank_single_image(rt):
    with pytest.raises(
        runtime.ShapeError,
        match=r"tensor 'image': expected rank 4 \(N, 3, 32, 32\), got rank 3 \(3, 32, 32\).*x\[None\]",
    ):
        rt.encode(_images(rt)[0])


def test_wrong_channels(rt):
    with pytest.raises(runtime.ShapeError, match=r"tensor 'image'.*got \(2, 1, 32, 32\) \(channels 1, expected 3\)"):
        rt.encode(_images(rt)[:, :1])


def test_wrong_image_size(rt):
    with pytest.raises(
        runtime.ShapeError, match=r"got \(2, 3, 16, 16\) \(height 16, expected 32; width 16, expected 32\)"
    ):
        rt.encode(np.zeros((2, 3, 16, 16), np.float32))


def test_channels_last_gets_a_hint(rt):
    with pytest.raises(runtime.ShapeError, match="channels-last"):
        rt.encode(np.ascontiguousarray(_images(rt).transpose(0, 2, 3, 1)))


def test_wrong_latent_size_and_rank(rt):
    with pytest.raises(
        runtime.ShapeError, match=r"tensor 'z': expected shape \(N, 8\), got \(4, 16\) \(latent size 16, expected 8\)"
    ):
        rt.decode(np.zeros((4, 16), np.float32))
    with pytest.raises(runtime.ShapeError, match=r"tensor 'z': expected rank 2 \(N, 8\), got rank 1 \(8,\)"):
        rt.decode(np.zeros(8, np.float32))


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.bool_])
def test_non_float_dtypes_are_refused(rt, dtype):
    with pytest.raises(
        runtime.DTypeError,
        match=rf"tensor 'z': expected a floating-point array \(float32\), got dtype {np.dtype(dtype)}",
    ):
        rt.decode(np.zeros((1, rt.latent_dim), dtype))


def test_uint8_images_point_to_the_helper(rt):
    with pytest.raises(runtime.DTypeError, match="from_uint8"):
        rt.encode(np.zeros((1, *rt.image_shape), np.uint8))


@pytest.mark.parametrize("dtype", [np.float64, np.float16])
def test_other_floats_are_converted(rt, dtype):
    z = np.random.default_rng(0).standard_normal((3, rt.latent_dim)).astype(dtype)
    np.testing.assert_array_equal(rt.decode(z), rt.decode(z.astype(np.float32)))


def test_non_contiguous_and_byteswapped_inputs_are_copied(rt):
    big = np.random.default_rng(0).standard_normal((6, 2 * rt.latent_dim), dtype=np.float32)
    view = big[::2, ::2]
    assert not view.flags.c_contiguous
    np.testing.assert_array_equal(rt.decode(view), rt.decode(np.ascontiguousarray(view)))
    swapped = np.ascontiguousarray(view).astype(">f4")
    np.testing.assert_array_equal(rt.decode(swapped), rt.decode(np.ascontiguousarray(view)))
    x = _images(rt)
    fortran = np.asfortranarray(x)
    np.testing.assert_array_equal(rt.encode(fortran).mu, rt.encode(x).mu)
    before = view.copy()
    rt.decode(view)
    np.testing.assert_array_equal(view, before)  # the caller's array is never modified


@pytest.mark.parametrize(
    "bad,word", [(np.nan, "1 NaN and 0 Inf"), (np.inf, "0 NaN and 1 Inf"), (-np.inf, "0 NaN and 1 Inf")]
)
def test_non_finite_inputs_are_refused(rt, bad, word):
    z = np.zeros((3, rt.latent_dim), np.float32)
    z[1, 4] = bad
    with pytest.raises(runtime.NonFiniteError, match=rf"tensor 'z': {word} value\(s\), first at index \(1, 4\)"):
        rt.decode(z)


def test_float64_overflowing_float32_is_caught(rt):
    z = np.zeros((1, rt.latent_dim))
    z[0, 0] = 1e300
    with pytest.raises(runtime.NonFiniteError, match="1 Inf"):
        rt.decode(z)


def test_check_finite_false_skips_the_scan(bundle):
    with runtime.load(bundle, check_finite=False) as r:
        z = np.zeros((1, r.latent_dim), np.float32)
        z[0, 0] = np.nan
        assert np.isnan(r.decode(z)).any()


def test_empty_batch(rt):
    with pytest.raises(runtime.EmptyBatchError, match=r"tensor 'image': empty batch, shape \(0, 3, 32, 32\)"):
        rt.encode(np.zeros((0, *rt.image_shape), np.float32))


def test_not_an_array(rt):
    with pytest.raises(runtime.DTypeError, match="tensor 'z'"):
        rt.decode([["a", "b"]])


def test_backend_run_checks_input_names(rt):
    with pytest.raises(runtime.BackendError, match=r"graph 'decoder': expected inputs \['z'\], got \['latent'\]"):
        rt.backend.run("decoder", {"latent": np.zeros((1, rt.latent_dim), np.float32)})


def test_errors_are_value_errors():
    for cls in (
        runtime.InputError,
        runtime.ShapeError,
        runtime.DTypeError,
        runtime.NonFiniteError,
        runtime.EmptyBatchError,
        runtime.BackendError,
        runtime.BackendUnavailableError,
        runtime.BundleError,
    ):
        assert issubclass(cls, ValueError)
