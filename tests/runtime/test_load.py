"""runtime.load: backend / device / precision / option choice, bundle integrity, each failure typed and named."""

from __future__ import annotations

import json

import numpy as np
import pytest

import runtime


def test_auto_on_cpu_is_onnxruntime(bundle):
    with runtime.load(bundle) as r:
        assert r.backend_name == "onnxruntime"
        assert r.chosen.startswith("auto:")
        info = r.describe()
        assert info["providers"] == ["CPUExecutionProvider"] and info["files"] == {
            "encoder": "encoder.onnx",
            "decoder": "decoder.onnx",
        }


def test_manifest_path_is_accepted(bundle, reference):
    with runtime.load(bundle / "vae.json", backend="onnxruntime") as r:
        r.decode(reference["decoder.z"])


def test_unknown_backend_device_precision_option(bundle):
    with pytest.raises(runtime.BackendError, match=r"backend: expected 'auto' or one of \[.*\], got 'tflite'"):
        runtime.load(bundle, backend="tflite")
    with pytest.raises(runtime.BackendError, match=r"device: expected 'cpu', 'cuda' or 'cuda:N', got 'gpu'"):
        runtime.load(bundle, device="gpu")
    with pytest.raises(runtime.BackendError, match=r"device: .* got 'cpu:1'"):
        runtime.load(bundle, device="cpu:1")
    with pytest.raises(
        runtime.BackendError, match=r"precision: expected one of \['fp32', 'fp16', 'int8', 'bf16'\], got 'fp8'"
    ):
        runtime.load(bundle, precision="fp8")
    with pytest.raises(runtime.BackendError, match=r"unknown option\(s\) \['thread'\]; it accepts \['threads'"):
        runtime.load(bundle, backend="onnxruntime", thread=2)
    with pytest.raises(runtime.BackendError, match=r"option threads: expected a positive integer, got 0"):
        runtime.load(bundle, backend="onnxruntime", threads=0)
    with pytest.raises(runtime.BackendError, match=r"graph_optimization_level: expected one of"):
        runtime.load(bundle, backend="onnxruntime", graph_optimization_level="max")
    with pytest.raises(runtime.BackendError, match=r"graphs: asked for \['vae'\]"):
        runtime.load(bundle, graphs=("vae",))


def test_missing_precision_variant(bundle):
    with pytest.raises(runtime.BundleError, match=r"graph 'encoder' has no 'fp16' variant \(it has \['fp32'\]\)"):
        runtime.load(bundle, backend="onnxruntime", precision="fp16")
    with pytest.raises(runtime.BackendError, match=r"backend 'torch' runs precisions \['fp32'\], got 'int8'"):
        runtime.load(bundle, backend="torch", precision="int8")


def test_cuda_without_a_gpu_build_is_refused(bundle):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime build has the CUDA provider; the refusal is for CPU-only builds")
    with pytest.raises(
        runtime.BackendUnavailableError, match=r"CUDAExecutionProvider is not in this onnxruntime build"
    ):
        runtime.load(bundle, backend="onnxruntime", device="cuda:0")
    with pytest.raises(runtime.BackendError, match=r"execution_provider='tensorrt' does not run on device 'cpu'"):
        runtime.load(bundle, backend="onnxruntime", execution_provider="tensorrt")


def test_tensorrt_backend_without_tensorrt_says_what_to_install(bundle):
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here")
    # Either missing piece is named with its install command (cuda-python is checked first when both are absent).
    with pytest.raises(
        runtime.BackendUnavailableError, match=r"(tensorrt|cuda-python).* install|install.*(tensorrt|cuda-python)"
    ):
        runtime.load(bundle, backend="tensorrt", device="cuda")


def test_changed_graph_file_is_refused(bundle_copy):
    with open(bundle_copy / "decoder.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(runtime.BundleError, match=r"decoder.onnx: sha256 .* the file changed after export"):
        runtime.load(bundle_copy, preload=True)
    # lazily: checked before the decoder's session is built, so it never runs; the encoder is unaffected
    with runtime.load(bundle_copy) as rt:
        rt.encode(np.zeros((1, *rt.image_shape), np.float32))
        with pytest.raises(runtime.BundleError, match=r"decoder.onnx: sha256 .* the file changed after export"):
            rt.decode(np.zeros((1, rt.latent_dim), np.float32))


def test_missing_graph_file(bundle_copy):
    (bundle_copy / "encoder.onnx").unlink()
    with pytest.raises(runtime.BundleError, match=r"encoder.onnx: listed in .*vae.json but missing"):
        runtime.load(bundle_copy)


def test_corrupt_graph_file_names_the_file(bundle_copy):
    import dataclasses

    from runtime.bundle import read_manifest, sha256_file, write_manifest

    path = bundle_copy / "decoder.onnx"
    path.write_bytes(b"this is not an onnx model")
    m = read_manifest(bundle_copy)
    graphs = {**m.graphs, "decoder": dataclasses.replace(m.graphs["decoder"], sha256=sha256_file(path))}
    write_manifest(bundle_copy, dataclasses.replace(m, graphs=graphs))
    with pytest.raises(runtime.BundleError, match=r"decoder.onnx: ONNX Runtime cannot load it"):
        runtime.load(bundle_copy, backend="onnxruntime", preload=True)
    # Sessions are lazy by default: the encoder still works, the decoder's first call names the file.
    with runtime.load(bundle_copy, backend="onnxruntime") as rt:
        assert rt.encode(np.zeros((1, *rt.image_shape), np.float32)).mu.shape == (1, rt.latent_dim)
        with pytest.raises(runtime.BundleError, match=r"decoder.onnx: ONNX Runtime cannot load it"):
            rt.decode(np.zeros((1, rt.latent_dim), np.float32))


def test_manifest_that_disagrees_with_the_graph(bundle_copy):
    """A vae.json consistent in itself (latent 16 everywhere) whose graph files say 8: the session's I/O check."""
    data = json.loads((bundle_copy / "vae.json").read_text())
    data["model"]["latent_dim"] = 16
    for t in (*data["graphs"]["encoder"]["outputs"], *data["graphs"]["decoder"]["inputs"]):
        t["shape"] = ["batch", 16]
    (bundle_copy / "vae.json").write_text(json.dumps(data))
    with pytest.raises(
        runtime.BundleError, match=r"decoder.onnx: input 'z' has shape \['batch', 8\], vae.json says \['batch', 16\]"
    ):
        runtime.load(bundle_copy, backend="onnxruntime", graphs="decoder", preload=True)


def test_not_a_bundle(tmp_path):
    with pytest.raises(runtime.BundleError, match="no bundle manifest here"):
        runtime.load(tmp_path)


def test_torch_backend_needs_a_checkpoint_it_can_find(bundle_copy):
    data = json.loads((bundle_copy / "vae.json").read_text())
    data["source"]["relative_path"] = "../gone.pt"
    data["source"]["checkpoint"] = "gone.pt"
    data["source"].pop("path", None)  # the absolute path of bundles exported before relative_path (prebuilt ones)
    (bundle_copy / "vae.json").write_text(json.dumps(data))
    with pytest.raises(runtime.BackendUnavailableError, match=r"source checkpoint is not here .*pass checkpoint=PATH"):
        runtime.load(bundle_copy, backend="torch")
    with pytest.raises(runtime.BackendError, match=r"option checkpoint: .*nope.pt is not a file"):
        runtime.load(bundle_copy, backend="torch", checkpoint=bundle_copy / "nope.pt")


def test_source_checkpoint_is_looked_for_relative_to_the_bundle_then_inside_it(tmp_path):
    """vae.json's source: relative_path first (from the bundle folder), an older export's absolute path next, then the
    name inside the bundle; malformed values are skipped. The manifest never needs an absolute path."""
    from pathlib import Path

    from runtime.bundle import source_checkpoint_candidates, source_checkpoint_mismatch
    from runtime.files import sha256_file

    b = tmp_path / "b"
    assert source_checkpoint_candidates(b, {"checkpoint": "best.pt", "relative_path": "../train/best.pt"}) == [
        b / "../train/best.pt",
        b / "best.pt",
    ]
    old = {"checkpoint": "best.pt", "path": "/old/machine/runs/train/best.pt"}  # bundles exported before
    assert source_checkpoint_candidates(b, old) == [Path("/old/machine/runs/train/best.pt"), b / "best.pt"]
    assert source_checkpoint_candidates(
        b, {"checkpoint": "../x/best.pt", "relative_path": "/abs/best.pt", "path": "relative/best.pt"}
    ) == [b / "best.pt"]
    assert source_checkpoint_candidates(b, {}) == []
    ckpt = tmp_path / "best.pt"
    ckpt.write_bytes(b"weights")
    good = {"checkpoint": "best.pt", "size": 7, "sha256": sha256_file(ckpt)}
    assert source_checkpoint_mismatch(ckpt, good) is None
    assert "8 bytes" in source_checkpoint_mismatch(ckpt, {**good, "size": 8})
    assert "sha256" in source_checkpoint_mismatch(ckpt, {**good, "sha256": "0" * 64})
    assert source_checkpoint_mismatch(ckpt, {"checkpoint": "best.pt"}) is None  # an in-memory export: nothing to check


def test_engine_failure_becomes_a_backend_error(bundle_copy):
    """A graph that loads but fails at run time (a Reshape to an impossible shape) gives BackendError, not ORT's own."""
    import dataclasses

    import onnx
    from onnx import numpy_helper

    from runtime.bundle import read_manifest, sha256_file, write_manifest

    path = bundle_copy / "decoder.onnx"
    model = onnx.load(str(path))
    reshape = next(n for n in model.graph.node if n.op_type == "Reshape")
    shape_init = next(i for i in model.graph.initializer if i.name == reshape.input[1])
    target = numpy_helper.to_array(shape_init).copy()
    target[1] += 1  # channels that the Gemm output cannot fill
    shape_init.CopyFrom(numpy_helper.from_array(target, shape_init.name))
    onnx.save(model, str(path))
    m = read_manifest(bundle_copy)
    write_manifest(
        bundle_copy,
        dataclasses.replace(
            m, graphs={**m.graphs, "decoder": dataclasses.replace(m.graphs["decoder"], sha256=sha256_file(path))}
        ),
    )
    with runtime.load(bundle_copy, backend="onnxruntime", graph_optimization_level="disable") as r:
        with pytest.raises(runtime.BackendError, match=r"onnxruntime backend failed on graph 'decoder' \(batch 2\)"):
            r.decode(np.zeros((2, r.latent_dim), np.float32))


def test_sessions_are_created_on_first_use(bundle):
    with runtime.load(bundle, backend="onnxruntime") as rt:
        assert rt.describe()["sessions_created"] == []
        rt.decode(np.zeros((1, rt.latent_dim), np.float32))
        assert rt.describe()["sessions_created"] == ["decoder"]  # a decode never builds the encoder's session
        rt.encode(np.zeros((1, *rt.image_shape), np.float32))
        assert rt.describe()["sessions_created"] == ["decoder", "encoder"]
    with runtime.load(bundle, backend="onnxruntime", preload=True) as rt:
        assert rt.describe()["sessions_created"] == ["decoder", "encoder"]
    with runtime.load(bundle, backend="onnxruntime", graphs=["decoder"], preload=True) as rt:
        assert rt.describe()["sessions_created"] == ["decoder"]


def test_concurrent_first_calls_share_one_session(bundle):
    import threading

    with runtime.load(bundle, backend="onnxruntime") as rt:
        start, sessions = threading.Barrier(8), []

        def first_call():
            start.wait()
            rt.decode(np.zeros((1, rt.latent_dim), np.float32))
            sessions.append(id(rt.backend._sessions["decoder"][0]))

        threads = [threading.Thread(target=first_call) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(sessions) == 8 and len(set(sessions)) == 1


@pytest.mark.parametrize("spinning,entry", [(None, ""), (True, "1"), (False, "0")])
def test_spinning_option_reaches_the_session(bundle, spinning, entry):
    options = {} if spinning is None else {"spinning": spinning}
    with runtime.load(bundle, backend="onnxruntime", preload=True, **options) as rt:
        so = rt.backend._sessions["decoder"][0].get_session_options()
        try:
            got = so.get_session_config_entry("session.intra_op.allow_spinning")
        except RuntimeError:  # not set: ONNX Runtime's default
            got = ""
        assert got == entry
        assert rt.describe()["spinning"] is spinning
        assert rt.decode(np.zeros((2, rt.latent_dim), np.float32)).shape[0] == 2


@pytest.mark.parametrize("option", [{"spinning": 1}, {"preload": "yes"}])
def test_boolean_options_are_checked(bundle, option):
    ((name, value),) = option.items()
    with pytest.raises(runtime.BackendError, match=f"option {name}: expected True or False, got {value!r}"):
        runtime.load(bundle, backend="onnxruntime", **option)


@pytest.mark.parametrize("threads", [2, 3])
def test_batch_split_cuts_large_batches_across_single_threaded_sessions(bundle, threads):
    rng = np.random.default_rng(1)
    with (
        runtime.load(bundle, backend="onnxruntime", batch_split=False) as whole,
        runtime.load(bundle, backend="onnxruntime", threads=threads, batch_split=4) as split,
    ):
        assert whole.describe()["batch_split"] is None
        info = split.describe()["batch_split"]
        assert info == {"min_batch": {"encoder": 4, "decoder": 4}, "workers": threads, "sessions_created": []}
        z3 = rng.standard_normal((3, split.latent_dim), dtype=np.float32)
        np.testing.assert_array_equal(split.decode(z3), whole.decode(z3))  # below min_batch: the main session
        assert split.describe()["batch_split"]["sessions_created"] == []
        for n in (4, 7, 11):  # uneven chunks keep their order
            z = rng.standard_normal((n, split.latent_dim), dtype=np.float32)
            x = rng.uniform(-1, 1, (n, *split.image_shape)).astype(np.float32)
            np.testing.assert_allclose(split.decode(z), whole.decode(z), rtol=0, atol=1e-6)
            a, b = split.encode(x), whole.encode(x)
            np.testing.assert_allclose(a.mu, b.mu, rtol=0, atol=1e-6)
            np.testing.assert_allclose(a.logvar, b.logvar, rtol=0, atol=1e-6)
        assert split.describe()["batch_split"]["sessions_created"] == ["decoder", "encoder"]
        workers = split.backend._workers["decoder"]
        assert len(workers) == threads
        assert all(w[0].get_session_options().intra_op_num_threads == 1 for w in workers)

        # Each worker session runs exactly one contiguous chunk of a split call, each on its own thread.
        import threading

        calls = []

        class Recorder:
            def __init__(self, sess, index):
                self.sess, self.index = sess, index

            def run(self, names, feeds):
                calls.append((self.index, len(next(iter(feeds.values()))), threading.get_ident()))
                return self.sess.run(names, feeds)

        split.backend._workers["decoder"] = [(Recorder(s, i), t, o) for i, (s, t, o) in enumerate(workers)]
        z = rng.standard_normal((10, split.latent_dim), dtype=np.float32)
        np.testing.assert_allclose(split.decode(z), whole.decode(z), rtol=0, atol=1e-6)
        assert sorted(c[:2] for c in calls) == [
            (i, 10 * (i + 1) // threads - 10 * i // threads) for i in range(threads)
        ]
        assert len({c[2] for c in calls}) == threads
    assert not any(t.is_alive() for t in split.backend._pool._threads)  # close() stopped the helper threads


def test_batch_split_default_and_off(bundle):
    from runtime.backends.onnxruntime import physical_cores

    with runtime.load(bundle, backend="onnxruntime") as rt:  # default: the decoder from 32, the encoder never
        cores = physical_cores()
        info = rt.describe()["batch_split"]
        if cores > 1:
            assert info["min_batch"] == {"decoder": 32} and info["workers"] == cores
            x = np.zeros((40, *rt.image_shape), np.float32)
            rt.encode(x)
            assert rt.describe()["batch_split"]["sessions_created"] == []
        else:
            assert info is None
    with runtime.load(bundle, backend="onnxruntime", graphs=["encoder"]) as rt:  # nothing to split by default
        assert rt.describe()["batch_split"] is None
    with runtime.load(bundle, backend="onnxruntime", threads=1) as rt:  # one core: nothing to split across
        assert rt.describe()["batch_split"] is None
    with runtime.load(bundle, backend="onnxruntime", threads=2, graphs=["decoder"], batch_split=8) as rt:
        assert rt.describe()["batch_split"]["min_batch"] == {"decoder": 8}


def test_unclosed_split_runtime_is_collected_and_its_threads_end(bundle):
    import gc
    import weakref

    rt = runtime.load(bundle, backend="onnxruntime", threads=3, batch_split=2, graphs=["decoder"])
    rt.decode(np.zeros((6, rt.latent_dim), np.float32))
    threads = list(rt.backend._pool._threads)
    assert len(threads) == 2 and all(t.is_alive() for t in threads)
    backend = weakref.ref(rt.backend)
    del rt
    gc.collect()
    assert backend() is None  # the helper threads held no reference to it between chunks
    for t in threads:
        t.join(timeout=10)
    assert not any(t.is_alive() for t in threads)


def test_split_batches_recheck_the_file(bundle_copy):
    """The per-core sessions are built by the first split call from the file as it is then, checked again: a split
    batch never runs another model than the unsplit one that was checked at its own first call."""
    with runtime.load(bundle_copy, backend="onnxruntime", threads=2, batch_split=4, graphs=["decoder"]) as rt:
        z = np.zeros((4, rt.latent_dim), np.float32)
        rt.decode(z[:3])  # the main session, checked now
        path = bundle_copy / "decoder.onnx"
        path.write_bytes(path.read_bytes() + b"\0")
        rt.decode(z[:3])
        with pytest.raises(runtime.BundleError, match=r"decoder\.onnx.*sha256"):
            rt.decode(z)


@pytest.mark.parametrize("value", [1, 0, -3, 2.5, "32", True])
def test_batch_split_option_is_checked(bundle, value):
    with pytest.raises(
        runtime.BackendError,
        match=rf"option batch_split: expected False or a batch size >= 2, "
        rf"got {value!r}",
    ):
        runtime.load(bundle, backend="onnxruntime", batch_split=value)


def test_physical_cores_is_within_the_affinity_mask():
    import os

    from runtime.backends.onnxruntime import physical_cores

    assert 1 <= physical_cores() <= len(os.sched_getaffinity(0))
