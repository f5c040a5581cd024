"""The OpenVINO backend on the tiny bundle, with real OpenVINO: FP32 parity, FP32 really run in f32, bf16 only where
vae.json records it (export.precision.bf16) and only on a CPU that has it, variants, chunking, threads, close, errors.
Skipped where openvino is not installed (the JetPack runtime has none)."""

from __future__ import annotations

import json
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

ov = pytest.importorskip("openvino")

import runtime  # noqa: E402
from runtime import bundle as B  # noqa: E402
from runtime.backends import openvino as ovb  # noqa: E402
from runtime.files import sha256_file  # noqa: E402
from runtime.verify.parity import check_parity  # noqa: E402

NATIVE_BF16 = ovb.cpu_bf16_support().native
needs_bf16 = pytest.mark.skipif(
    not NATIVE_BF16, reason="this CPU cannot run bf16 natively: " + ovb.cpu_bf16_support().refusal()
)


@pytest.fixture(scope="module")
def bf16_bundle(bundle, tmp_path_factory) -> Path:
    """The tiny bundle with bf16 measured and recorded for both graphs by export.precision.bf16 (read-only)."""
    if not NATIVE_BF16:
        pytest.skip("this CPU cannot run bf16 natively")
    pytest.importorskip("onnxruntime")  # the evaluation sets' realistic inputs come from the FP32 graphs on ORT
    from export.precision import bf16

    out = Path(shutil.copytree(bundle, tmp_path_factory.mktemp("bf16") / "bundle"))
    assert bf16.main([str(out), "--samples", "8"]) == 0
    return out


def _kernel_precisions(rt) -> set[str]:
    return {p for g in rt.describe()["compiled"].values() for kinds in g["kernel_precisions"].values() for p in kinds}


# ----------------------------------------------------------------------------------------------- fp32


def test_fp32_matches_the_golden_reference(bundle, reference):
    with runtime.load(bundle, backend="openvino") as rt:
        np.testing.assert_allclose(rt.decode(reference["decoder.z"]), reference["decoder.image"], rtol=0, atol=1e-4)
        np.testing.assert_allclose(rt.encode(reference["encoder.image"]).mu, reference["encoder.mu"], rtol=0, atol=1e-4)
    report = check_parity(bundle, backend="openvino", precision="fp32")
    assert report, report.table()
    assert all(o.tolerance.max_abs == 1e-4 for o in report.comparison.outputs)  # the FP32 tolerance


def test_fp32_really_runs_f32(bundle, reference):
    # OpenVINO's own CPU default is bf16 wherever the CPU has it: the backend must ask for f32 explicitly.
    if NATIVE_BF16:
        assert ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name() == "bf16"
    with runtime.load(bundle, backend="openvino", preload=True) as rt:
        info = rt.describe()
        assert info["properties"]["INFERENCE_PRECISION_HINT"] == "f32"
        assert info["openvino"] == ov.__version__ and info["ov_device"] == "CPU"
        for graph in ("encoder", "decoder"):
            assert info["compiled"][graph]["inference_precision"] == "f32"  # read back from the compiled model
            assert info["compiled"][graph]["execution_devices"] == ["CPU"]
        assert _kernel_precisions(rt) == {"f32"}  # every compute kernel OpenVINO chose


# ----------------------------------------------------------------------------------------------- bf16


def test_bf16_is_refused_without_a_record(bundle):
    for backend in ("openvino", "auto"):  # auto picks openvino for bf16: the only backend that runs it
        with pytest.raises(
            runtime.BackendError,
            match=r"precision 'bf16': vae.json does not record it for graph 'encoder' on backend "
            r"'openvino' \(the graph offers \['fp32'\]\); measure it first with "
            r"`python -m export.precision.bf16",
        ):
            runtime.load(bundle, backend=backend, precision="bf16")
    with pytest.raises(
        runtime.BackendError,
        match=r"backend 'onnxruntime' runs precisions \['fp32', 'fp16', "
        r"'int8'\], got 'bf16' \(bf16 is an engine setting",
    ):
        runtime.load(bundle, backend="onnxruntime", precision="bf16")


@needs_bf16
def test_bf16_after_export_meets_the_fp16_budget(bf16_bundle, reference):
    report = check_parity(bf16_bundle, backend="openvino", precision="bf16")
    assert report, report.table()
    img = next(o for o in report.comparison.outputs if o.name == "decoder.image")
    assert img.tolerance.min_psnr == 40.0 and img.psnr >= 40.0  # the FP16 budget
    with runtime.load(bf16_bundle, backend="auto", precision="bf16") as rt:
        assert rt.backend_name == "openvino"
        out = rt.decode(reference["decoder.z"])
        info = rt.describe()
        assert info["compiled"]["decoder"]["inference_precision"] == "bf16"
        assert _kernel_precisions(rt) == {"bf16"}
        assert info["engine_precision"]["decoder"]["measured_with"] == {"openvino": ov.__version__}
    assert 0 < np.abs(out - reference["decoder.image"]).max() < 0.05  # really bf16: close, not bit-identical
    with runtime.load(bf16_bundle, backend="openvino") as rt:  # fp32 stays fp32 in a bundle that records bf16
        np.testing.assert_allclose(rt.decode(reference["decoder.z"]), reference["decoder.image"], rtol=0, atol=1e-4)


@needs_bf16
def test_bf16_record_of_another_graph_file_is_refused(bf16_bundle, tmp_path):
    copy = Path(shutil.copytree(bf16_bundle, tmp_path / "b"))
    data = json.loads((copy / B.MANIFEST_NAME).read_text())
    data["graphs"]["decoder"]["engine_precisions"]["bf16"]["sha256"] = "0" * 64  # measured on an older decoder.onnx
    (copy / B.MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(
        B.BundleError,
        match=r"graphs.decoder.engine_precisions.bf16: measured on decoder.onnx with "
        r"sha256 000000000000\.\.\., the graph is now .* measure it again",
    ):
        runtime.load(copy, backend="openvino", precision="bf16")
    with runtime.load(copy, backend="openvino", precision="bf16", graphs="encoder") as rt:  # the encoder's is fine
        assert rt.encode(np.zeros((1, *rt.image_shape), np.float32)).mu.shape == (1, rt.latent_dim)


def test_bf16_is_refused_on_a_cpu_without_it(bundle_copy, monkeypatch):
    data = json.loads((bundle_copy / B.MANIFEST_NAME).read_text())
    for spec in data["graphs"].values():  # a record as export.precision.bf16 writes it, made on another machine
        spec["engine_precisions"] = {
            "bf16": {
                "precision": "bf16",
                "engine": "openvino",
                "file": spec["file"],
                "sha256": spec["sha256"],
                "accuracy": {"passed": True},
            }
        }
    (bundle_copy / B.MANIFEST_NAME).write_text(json.dumps(data))
    monkeypatch.setattr(ovb, "cpu_bf16_support", lambda core=None: ovb.Bf16Support((), ("FP32", "INT8"), "2026.x"))
    with pytest.raises(
        runtime.BackendUnavailableError,
        match=r"precision 'bf16': this CPU cannot run bf16 natively: /proc/cpuinfo flags: none of "
        r"avx512_bf16, amx_bf16 .* OPTIMIZATION_CAPABILITIES: FP32, INT8 \(needed: BF16\)",
    ):
        runtime.load(bundle_copy, backend="openvino", precision="bf16")


# ----------------------------------------------------------------------------------------------- variants


@pytest.mark.parametrize("keep_io_types", [True, False], ids=["fp32-io", "fp16-io"])
def test_fp16_variant_runs_with_f32_arithmetic(bundle_copy, reference, keep_io_types):
    onnx = pytest.importorskip("onnx")
    float16 = pytest.importorskip("onnxconverter_common.float16")
    import dataclasses

    m = B.read_manifest(bundle_copy)
    graphs = {}
    for name, spec in m.graphs.items():
        path = bundle_copy / f"{name}.fp16.onnx"
        onnx.save(
            float16.convert_float_to_float16(onnx.load(str(bundle_copy / spec.file)), keep_io_types=keep_io_types),
            str(path),
        )
        variant = B.VariantSpec(precision="fp16", file=path.name, sha256=sha256_file(path))
        graphs[name] = dataclasses.replace(spec, variants={"fp16": variant})
    B.write_manifest(bundle_copy, dataclasses.replace(m, graphs=graphs))
    # The compiled ports also carry the names of the Casts fused into them: outputs are found by vae.json's names.
    with runtime.load(bundle_copy, backend="openvino", precision="fp16") as rt:
        img = rt.decode(reference["decoder.z"])
        assert img.dtype == np.float32
        assert rt.describe()["files"] == {"encoder": "encoder.fp16.onnx", "decoder": "decoder.fp16.onnx"}
        assert rt.describe()["compiled"]["decoder"]["inference_precision"] == "f32"
    assert 0 < np.abs(img - reference["decoder.image"]).max() < 1e-2  # FP16 weights, not bit-identical
    assert check_parity(bundle_copy, backend="openvino", precision="fp16")


# ----------------------------------------------------------------------------------------------- the protocol


def test_chunks_equal_one_call(bundle):
    z = np.random.default_rng(0).standard_normal((10, 8), dtype=np.float32)
    with runtime.load(bundle, backend="openvino", max_chunk=None) as rt:
        whole = rt.decode(z)
    with runtime.load(bundle, backend="openvino", max_chunk=3) as rt:
        sizes = []
        run = rt.backend._run
        rt.backend._run = lambda graph, feeds: sizes.append(len(feeds["z"])) or run(graph, feeds)
        chunked = rt.decode(z)
    assert sizes == [3, 3, 3, 1]
    np.testing.assert_allclose(chunked, whole, rtol=0, atol=1e-6)


def test_threads_and_hint_reach_the_compiled_model(bundle):
    with runtime.load(bundle, backend="openvino", threads=1, preload=True, graphs="decoder") as rt:
        compiled = rt.describe()["compiled"]["decoder"]
        assert compiled["threads"] == 1 and compiled["performance_hint"] == "LATENCY" and compiled["streams"] == 1
    with runtime.load(
        bundle, backend="openvino", performance_hint="throughput", cpu_pinning=False, preload=True, graphs="decoder"
    ) as rt:
        compiled = rt.describe()["compiled"]["decoder"]
        assert compiled["performance_hint"] == "THROUGHPUT" and compiled["cpu_pinning"] is False


def test_concurrent_calls_equal_serial(bundle):
    threads, calls = 4, 40
    with runtime.load(bundle, backend="openvino", threads=1) as rt:
        rng = np.random.default_rng(0)
        zs = [rng.standard_normal((1 + i % 3, rt.latent_dim), dtype=np.float32) for i in range(threads * calls)]
        serial = [rt.decode(z) for z in zs]
        start = threading.Barrier(threads)

        def worker(t):
            start.wait()
            return [(i, rt.decode(zs[i])) for i in range(t, threads * calls, threads)]

        with ThreadPoolExecutor(threads) as pool:
            results = [r for part in pool.map(worker, range(threads)) for r in part]
    assert len(results) == threads * calls
    for i, out in results:
        np.testing.assert_array_equal(out, serial[i], err_msg=f"call {i}")


def test_requests_are_pooled(bundle):
    # a sequential caller reuses one inference request; concurrent callers each take their own
    with runtime.load(bundle, backend="openvino", threads=1, graphs="decoder") as rt:
        z = np.random.default_rng(1).standard_normal((2, rt.latent_dim), dtype=np.float32)
        first = rt.decode(z)
        for _ in range(5):
            again = rt.decode(z)
            np.testing.assert_array_equal(again, first)
            assert again is not first and not np.shares_memory(again, first)  # fresh outputs, never the request's
        assert len(rt.backend._compiled["decoder"].idle) == 1
        ro = z.copy()
        ro.flags.writeable = False  # OpenVINO cannot share read-only memory: copied
        np.testing.assert_array_equal(rt.decode(ro), first)


@pytest.mark.parametrize("threads", [2, 3])
def test_batch_split_equals_unsplit(bundle, threads):
    rng = np.random.default_rng(2)
    with runtime.load(bundle, backend="openvino", threads=threads, batch_split=False) as rt:
        assert rt.describe()["batch_split"] is None
        z = rng.standard_normal((10, rt.latent_dim), dtype=np.float32)
        x = rng.standard_normal((7, *rt.image_shape), dtype=np.float32)
        whole, post = rt.decode(z), rt.encode(x)
    with runtime.load(bundle, backend="openvino", threads=threads, batch_split=4) as rt:
        assert rt.describe()["batch_split"] == {"min_batch": {"encoder": 4, "decoder": 4}, "requests": threads}
        calls = []
        split = rt.backend._run_split
        rt.backend._run_split = lambda g, feeds, n: calls.append(n) or split(g, feeds, n)
        np.testing.assert_array_equal(rt.decode(z), whole)  # rows are independent: the same numbers
        got = rt.encode(x)
        np.testing.assert_array_equal(got.mu, post.mu)
        np.testing.assert_array_equal(got.logvar, post.logvar)
        np.testing.assert_array_equal(rt.decode(z[:3]), whole[:3])  # below min_batch: one request
        assert calls == [10, 7]
        assert len(rt.backend._compiled["decoder"].idle) == threads  # one request per chunk, back in the pool


def test_default_batch_split(bundle):
    assert ovb.OpenVinoBackend.DEFAULT_BATCH_SPLIT == {}  # measured: no gain on quiet cores (the module docstring)
    with runtime.load(bundle, backend="openvino", threads=2) as rt:
        assert rt.describe()["batch_split"] is None
    with runtime.load(bundle, backend="openvino", threads=2, batch_split=32) as rt:
        assert rt.describe()["batch_split"] == {"min_batch": {"encoder": 32, "decoder": 32}, "requests": 2}
    with runtime.load(bundle, backend="openvino", threads=1) as rt:  # one core: nothing to split across
        assert rt.describe()["batch_split"] is None


@needs_bf16
def test_batch_split_equals_unsplit_bf16(bf16_bundle):
    z = np.random.default_rng(3).standard_normal((64, 8), dtype=np.float32)
    with runtime.load(bf16_bundle, backend="openvino", precision="bf16", threads=2, batch_split=False) as rt:
        whole = rt.decode(z)
    with runtime.load(bf16_bundle, backend="openvino", precision="bf16", threads=2, batch_split=2) as rt:
        np.testing.assert_allclose(rt.decode(z), whole, rtol=0, atol=1e-6)


def test_concurrent_split_calls_equal_serial(bundle):
    threads, calls = 4, 15
    with runtime.load(bundle, backend="openvino", threads=2, batch_split=3) as rt:
        rng = np.random.default_rng(4)
        zs = [rng.standard_normal((1 + i % 6, rt.latent_dim), dtype=np.float32) for i in range(threads * calls)]
        serial = [rt.decode(z) for z in zs]
        start = threading.Barrier(threads)

        def worker(t):
            start.wait()
            return [(i, rt.decode(zs[i])) for i in range(t, threads * calls, threads)]

        with ThreadPoolExecutor(threads) as pool:
            results = [r for part in pool.map(worker, range(threads)) for r in part]
        assert len(rt.backend._compiled["decoder"].idle) <= 2 * threads
    assert len(results) == threads * calls
    for i, out in results:
        np.testing.assert_array_equal(out, serial[i], err_msg=f"call {i}")


def test_close(bundle):
    rt = runtime.load(bundle, backend="openvino")
    rt.decode(np.zeros((1, rt.latent_dim), np.float32))
    rt.close()
    rt.close()  # twice is fine
    assert rt.closed
    with pytest.raises(runtime.ClosedError, match="openvino backend was closed"):
        rt.decode(np.zeros((1, rt.latent_dim), np.float32))


def test_bad_inputs_and_options(bundle):
    with runtime.load(bundle, backend="openvino") as rt:
        with pytest.raises(runtime.ShapeError, match="z"):
            rt.decode(np.zeros((2, rt.latent_dim + 1), np.float32))
        with pytest.raises(runtime.NonFiniteError):
            rt.decode(np.full((1, rt.latent_dim), np.nan, np.float32))
        with pytest.raises(runtime.DTypeError):
            rt.encode(np.zeros((1, *rt.image_shape), np.uint8))
        with pytest.raises(runtime.EmptyBatchError):
            rt.decode(np.zeros((0, rt.latent_dim), np.float32))
    with pytest.raises(runtime.BackendError, match=r"option threads: expected a positive integer, got 0"):
        runtime.load(bundle, backend="openvino", threads=0)
    with pytest.raises(
        runtime.BackendError,
        match=r"option performance_hint: expected one of \['latency', "
        r"'throughput'\], got 'fast'",
    ):
        runtime.load(bundle, backend="openvino", performance_hint="fast")
    with pytest.raises(runtime.BackendError, match=r"option cpu_pinning: expected True or False, got 'no'"):
        runtime.load(bundle, backend="openvino", cpu_pinning="no")
    for bad in (1, True, 2.5, "yes"):
        with pytest.raises(runtime.BackendError, match=r"option batch_split: expected False or a batch size >= 2"):
            runtime.load(bundle, backend="openvino", batch_split=bad)
    with pytest.raises(runtime.BackendError, match=r"unknown option\(s\) \['spinning'\]"):
        runtime.load(bundle, backend="openvino", spinning=False)
    with pytest.raises(runtime.BackendError, match=r"backend 'openvino' runs on \['cpu'\], got device 'cuda:0'"):
        runtime.load(bundle, backend="openvino", device="cuda")


def test_changed_or_broken_file_is_refused(bundle_copy):
    with open(bundle_copy / "decoder.onnx", "ab") as f:
        f.write(b"\0")
    rt = runtime.load(bundle_copy, backend="openvino")  # compiled on first use: checked then
    with pytest.raises(B.BundleError, match=r"decoder.onnx: sha256 .* the file changed after export"):
        rt.decode(np.zeros((1, rt.latent_dim), np.float32))
    rt.close()
    with pytest.raises(B.BundleError, match=r"decoder.onnx: sha256"):
        runtime.load(bundle_copy, backend="openvino", preload=True)
    (bundle_copy / "decoder.onnx").write_bytes(b"not an onnx model")
    data = json.loads((bundle_copy / B.MANIFEST_NAME).read_text())
    data["graphs"]["decoder"]["sha256"] = sha256_file(bundle_copy / "decoder.onnx")
    (bundle_copy / B.MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(B.BundleError, match=r"decoder.onnx: OpenVINO cannot read it"):
        runtime.load(bundle_copy, backend="openvino", preload=True, graphs="decoder")
