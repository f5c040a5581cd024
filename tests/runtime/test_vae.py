"""The runtime on real ONNX Runtime sessions: results match the golden PyTorch outputs; every method; lifetime."""

from __future__ import annotations

import numpy as np
import pytest

import runtime
from runtime.bundle import read_manifest
from runtime.rng import standard_normal

ATOL = 1e-4  # FP32 ONNX Runtime vs PyTorch FP32 (reassociation only)


def test_encode_decode_match_golden_reference(rt, reference):
    post = rt.encode(reference["encoder.image"])
    assert isinstance(post, runtime.Posterior)
    np.testing.assert_allclose(post.mu, reference["encoder.mu"], atol=ATOL)
    np.testing.assert_allclose(post.logvar, reference["encoder.logvar"], atol=ATOL)
    np.testing.assert_allclose(rt.decode(reference["decoder.z"]), reference["decoder.image"], atol=ATOL)
    assert post.mu.dtype == np.float32 and rt.decode(reference["decoder.z"]).dtype == np.float32


def test_shapes_come_from_the_manifest(rt, bundle):
    m = read_manifest(bundle).model
    assert rt.latent_dim == m.latent_dim and rt.image_shape == m.image_shape and rt.output_shape == m.output_shape
    assert rt.pixel_range == read_manifest(bundle).pixel_range
    assert rt.backend_name == "onnxruntime" and rt.device == "cpu" and rt.precision == "fp32"


def test_reconstruct_is_decode_of_mu(rt, reference):
    x = reference["realistic.encoder.image"]
    np.testing.assert_array_equal(rt.reconstruct(x), rt.decode(rt.encode(x).mu))


def test_sample_is_seeded(rt):
    a, b, c = rt.sample(3, seed=7), rt.sample(3, seed=7), rt.sample(3, seed=8)
    assert a.shape == (3, *rt.output_shape)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    z = standard_normal(7, (3, rt.latent_dim))  # the portable stream vae_decode --seed 7 draws too (C++)
    np.testing.assert_array_equal(a, rt.decode(z))
    with pytest.raises(runtime.ShapeError, match="n must be a positive integer, got 0"):
        rt.sample(0)
    with pytest.raises(ValueError, match=r"seed: expected an integer in \[0, 2\*\*64\)"):
        rt.sample(1, seed=-1)
    assert rt.sample(2).shape == (2, *rt.output_shape)  # seed=None: a fresh seed


def _reference_stream(seed: int, n: int) -> np.ndarray:
    """runtime/rng.py's definition, value by value, in Python integers and the math module."""
    import math

    mask = (1 << 64) - 1

    def x(i):
        z = (seed + i * 0x9E3779B97F4A7C15) & mask
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        return z ^ (z >> 31)

    out = []
    for k in range((n + 1) // 2):
        u1, u2 = ((x(2 * k + 1) >> 11) + 1) * 2.0**-53, (x(2 * k + 2) >> 11) * 2.0**-53
        r, t = math.sqrt(-2.0 * math.log(u1)), 6.283185307179586 * u2
        out += [r * math.cos(t), r * math.sin(t)]
    return np.array(out[:n]).astype(np.float32)


@pytest.mark.parametrize("seed", [0, 7, 2**63 + 5, 2**64 - 1])
def test_the_seeded_stream_is_its_documented_definition(seed):
    from runtime import rng

    assert int(rng.splitmix64(1234567, 1)[0]) == 6457827717110365317  # SplitMix64's published first output
    z = rng.standard_normal(seed, (3, 67))
    assert z.dtype == np.float32 and z.shape == (3, 67)
    np.testing.assert_array_max_ulp(z.ravel(), _reference_stream(seed, 201), maxulp=1)
    np.testing.assert_array_equal(rng.standard_normal(seed, 7), z.ravel()[:7])  # odd counts: a prefix of longer draws
    big = rng.standard_normal(seed, 200_000)
    assert abs(float(big.mean())) < 0.01 and abs(float(big.std()) - 1) < 0.01


@pytest.mark.parametrize("method", ["linear", "slerp"])
def test_interpolate_ends_are_the_endpoints(rt, method):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, rt.latent_dim), dtype=np.float32)
    out = rt.interpolate(a, b[None], steps=5, method=method)
    assert out.shape == (5, *rt.output_shape)
    np.testing.assert_allclose(out[0], rt.decode(a[None])[0], atol=1e-6)
    np.testing.assert_allclose(out[-1], rt.decode(b[None])[0], atol=1e-6)
    assert not np.allclose(out[2], out[0])


def test_interpolate_rejects_bad_arguments(rt):
    a = np.zeros(rt.latent_dim, np.float32)
    with pytest.raises(runtime.ShapeError, match="steps must be an integer >= 2, got 1"):
        rt.interpolate(a, a, steps=1)
    with pytest.raises(runtime.ShapeError, match=r"b must be one latent"):
        rt.interpolate(a, np.zeros((2, rt.latent_dim)), steps=3)
    with pytest.raises(runtime.ShapeError, match=r"latent size 3, expected"):
        rt.interpolate(a, np.zeros(3), steps=3)


def test_posterior_sample_reparameterises(rt, reference):
    post = rt.encode(reference["encoder.image"])
    z1, z2 = post.sample(seed=1), post.sample(seed=1)
    np.testing.assert_array_equal(z1, z2)
    eps = standard_normal(1, post.mu.shape)
    np.testing.assert_allclose(z1, post.mu + eps * np.exp(0.5 * post.logvar), rtol=1e-6)
    gen = post.sample(seed=np.random.default_rng(1))  # a NumPy generator: its own stream
    eps = np.random.default_rng(1).standard_normal(post.mu.shape, dtype=np.float32)
    np.testing.assert_allclose(gen, post.mu + eps * np.exp(0.5 * post.logvar), rtol=1e-6)


def test_torch_reference_backend_matches_onnxruntime(bundle, reference, tiny_checkpoint):
    with runtime.load(bundle, backend="torch", checkpoint=tiny_checkpoint) as ref:
        assert ref.backend_name == "torch"
        np.testing.assert_allclose(ref.decode(reference["decoder.z"]), reference["decoder.image"], atol=1e-6)
        np.testing.assert_allclose(ref.encode(reference["encoder.image"]).mu, reference["encoder.mu"], atol=1e-6)


def test_torch_backend_finds_the_source_checkpoint_from_the_manifest(bundle, reference):
    # export_bundle recorded the checkpoint's absolute path and sha256 in vae.json
    with runtime.load(bundle, backend="torch") as ref:
        np.testing.assert_allclose(ref.decode(reference["decoder.z"]), reference["decoder.image"], atol=1e-6)


def test_torch_backend_refuses_a_different_checkpoint(bundle, tmp_path):
    from tests.conftest import TINY, make_model
    from vae_model import save_checkpoint

    other = save_checkpoint(tmp_path / "other.pt", make_model(TINY, seed=1))
    with pytest.raises(
        runtime.BundleError, match=r"other.pt: (sha256 .*|\d+ bytes), but the bundle was exported from tiny.pt"
    ):
        runtime.load(bundle, backend="torch", checkpoint=other)


def test_onnxruntime_options_give_the_same_numbers(bundle, reference):
    z = reference["realistic.decoder.z"]
    with runtime.load(bundle, backend="onnxruntime") as base:
        expected = base.decode(z)
    variants = [
        dict(threads=1),
        dict(threads=2, inter_op_threads=1),
        dict(graph_optimization_level="disable"),
        dict(graph_optimization_level="basic"),
        dict(io_binding=True),
        dict(execution_provider="cpu"),
    ]
    for opts in variants:
        with runtime.load(bundle, backend="onnxruntime", **opts) as r:
            np.testing.assert_allclose(r.decode(z), expected, atol=1e-5, err_msg=str(opts))
            if "io_binding" in opts:
                assert r.describe()["io_binding"] is True


def test_large_batches_are_chunked_transparently(bundle, reference):
    from runtime.backends.onnxruntime import OnnxRuntimeBackend

    seen: list[int] = []

    class Recording(OnnxRuntimeBackend):  # a real ORT backend that also records each engine call's batch
        def _run(self, graph, feeds):
            seen.append(next(iter(feeds.values())).shape[0])
            return super()._run(graph, feeds)

    m = read_manifest(bundle)
    from runtime.backends import Device

    be = Recording.open(
        bundle, m, device=Device.parse("cpu"), precision="fp32", graphs=("encoder", "decoder"), max_batch=3
    )
    vae = runtime.VAERuntime(be, m, bundle)
    z = np.random.default_rng(0).standard_normal((8, vae.latent_dim), dtype=np.float32)
    out = vae.decode(z)
    assert seen == [3, 3, 2]
    with runtime.load(bundle, backend="onnxruntime") as whole:
        np.testing.assert_allclose(out, whole.decode(z), atol=1e-6)
    assert be.describe()["max_batch"] == {"encoder": 3, "decoder": 3}
    vae.close()


def test_decoder_only_runtime(bundle, reference):
    with runtime.load(bundle, graphs=("decoder",)) as r:
        assert r.graphs == ("decoder",)
        r.decode(reference["decoder.z"])
        with pytest.raises(runtime.BackendError, match=r"graph 'encoder' is not loaded .*\(loaded: \['decoder'\]"):
            r.encode(reference["encoder.image"])


def test_close_releases_and_later_calls_fail(bundle, reference):
    with runtime.load(bundle) as r:
        r.decode(reference["decoder.z"])
    assert r.closed
    r.close()  # twice is fine
    with pytest.raises(runtime.ClosedError, match="closed"):
        r.decode(reference["decoder.z"])
