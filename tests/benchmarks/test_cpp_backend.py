"""The C++ runtime as a benchmark backend: its C ABI driven in-process through ctypes (benchmarks/cpp_runtime.py)."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.cpp_runtime import CppRuntime, CppRuntimeError


@pytest.fixture(scope="module")
def bundle(tiny_checkpoint, tmp_path_factory):
    from export.to_onnx import export_bundle

    return export_bundle(tiny_checkpoint, tmp_path_factory.mktemp("cppb") / "bundle", log=lambda *a: None)


def test_same_numbers_as_the_python_runtime(cpp_build, bundle):
    import runtime

    rng = np.random.default_rng(3)
    with runtime.load(bundle, backend="onnxruntime") as py, CppRuntime(bundle, library=cpp_build.library) as cpp:
        assert cpp.backend.startswith("onnxruntime") and cpp.latent_dim == py.latent_dim
        z = rng.standard_normal((5, py.latent_dim), dtype=np.float32)
        np.testing.assert_allclose(cpp.decode(z), py.decode(z), atol=1e-5, rtol=0)
        x = py.decode(z)
        mu, logvar = cpp.encode(x)
        post = py.encode(x)
        np.testing.assert_allclose(mu, post.mu, atol=1e-5, rtol=0)
        np.testing.assert_allclose(logvar, post.logvar, atol=1e-5, rtol=0)


def test_errors_carry_the_status_and_the_message(cpp_build, bundle, tmp_path):
    with CppRuntime(bundle, library=cpp_build.library) as cpp:
        with pytest.raises(CppRuntimeError, match=r"VAE_ERR_SHAPE: tensor 'z'"):
            cpp.decode(np.zeros((2, cpp.latent_dim + 1), np.float32))
        with pytest.raises(CppRuntimeError, match="VAE_ERR_NON_FINITE"):
            cpp.decode(np.full((1, cpp.latent_dim), np.nan, np.float32))
    with pytest.raises(CppRuntimeError, match="VAE_ERR_BUNDLE.*no bundle manifest"):
        CppRuntime(tmp_path / "nothing", library=cpp_build.library)
    with pytest.raises(CppRuntimeError, match="not built.*make cpp"):
        CppRuntime(bundle, library=tmp_path / "libvae_runtime.so")


def test_harness_measures_the_cpp_backend_and_its_cold_start(cpp_build, bundle, tmp_path, capsys):
    import json

    from benchmarks.latency import main

    out = tmp_path / "bench"
    assert (
        main(
            [
                str(bundle),
                "--backends",
                "onnxruntime,cpp",
                "--graphs",
                "decoder,encoder",
                "--batch",
                "2",
                "--iterations",
                "6",
                "--warmup",
                "0",
                "--rounds",
                "2",
                "--cold-start-runs",
                "1",
                "--cpp-lib",
                str(cpp_build.library),
                "--no-progress",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    report = json.loads((out / "latency.json").read_text())
    rows = {(r["backend"], r["graph"]): r for r in report["results"]}
    for graph in ("decoder", "encoder"):
        assert rows[("cpp", graph)]["status"] == "ok", rows[("cpp", graph)]
        assert rows[("cpp", graph)]["stats"]["n"] == 6
    cold = {c["path"]: c for c in report["cold_start"]}
    assert cold["cpp/fp32"]["status"] == "ok" and cold["cpp/fp32"]["peak_rss_mib"] > 1
    assert "cold start cpp/fp32" in capsys.readouterr().out


def test_harness_skips_cpp_with_the_reason_when_the_library_is_missing(bundle, tmp_path):
    import json

    from benchmarks.latency import main

    out = tmp_path / "bench"
    assert (
        main(
            [
                str(bundle),
                "--backends",
                "cpp",
                "--graphs",
                "decoder",
                "--batch",
                "1",
                "--iterations",
                "2",
                "--cpp-lib",
                str(tmp_path / "nope.so"),
                "--no-progress",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    report = json.loads((out / "latency.json").read_text())
    assert report["results"][0]["status"] == "skipped" and "make cpp" in report["results"][0]["reason"]
