"""The C++ runtime (runtime/cpp): built from scratch with CMake once per session, then driven through its programs.

- parity: the C ABI's decoder and encoder outputs equal the Python runtime's (runtime.load(...), onnxruntime) within
  1e-5 on the default-size bundle (64x64 RGB, latent 128), for the golden and for fresh random inputs;
- the C ABI from a plain C program (runtime/cpp/tests/c_abi_check.c): a battery of misuse cases, each checking the
  status code and the message, the thread-local last error, a decoder-only runtime;
- bad paths, malformed vae.json, a graph file that changed after export, a corrupt ONNX file, wrong sizes and NaN in
  the vae_decode example (one-line errors, exit 1);
- ONNX Runtime is the Python runtime's release (constraints.txt), for x86_64 and aarch64; headers whose C API the
  library does not serve are refused at configure time, naming both; a relative -DPython3_EXECUTABLE is resolved;
- the installed package is consumable by a downstream CMake project through find_package(vae_runtime).

The build needs cmake and a C/C++ compiler (on the machine image); ONNX Runtime and nlohmann/json are fetched by
runtime/cpp/scripts/fetch_deps.py (the library from PyPI, its headers from npm; nlohmann/json from PyPI) into
third_party/ the first time.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from runtime.version import pyproject_version
from tests.cpp_support import CppBuild, cmake_args as _cmake_args, run_checked as _run

REPO = Path(__file__).resolve().parents[3]
CPP = REPO / "runtime" / "cpp"
TOL = 1e-5


@pytest.fixture(scope="session")
def default_bundle(default_checkpoint, tmp_path_factory) -> Path:
    """A verified bundle of the default-size model (64x64 RGB, latent 128). Read-only."""
    from export.to_onnx import export_bundle

    return export_bundle(default_checkpoint, tmp_path_factory.mktemp("bundle") / "default", log=lambda *a: None)


def c_check(build: CppBuild, *args, check: bool = True) -> subprocess.CompletedProcess:
    return _run([build.exe("vae_c_abi_check"), *args], check=check)


def open_status(build: CppBuild, bundle, *options: str) -> tuple[str, str]:
    """(status name, error message) of vae_runtime_create on BUNDLE with key=value options."""
    proc = c_check(build, "open", bundle, *options, check=False)
    lines = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    assert proc.returncode in (0, 1), proc.stderr
    return lines["status"], lines["error"]


def python_runtime(bundle):
    import runtime

    return runtime.load(bundle, backend="onnxruntime")


# ----------------------------------------------------------------------------------------------- build


def _fetch_deps():
    import importlib.util

    spec = importlib.util.spec_from_file_location("fetch_deps", CPP / "scripts" / "fetch_deps.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cpp_onnxruntime_is_the_python_runtimes_release():
    """Issue 18: the C++ library used ONNX Runtime 1.29 (npm) while Python pinned 1.32. fetch_deps.py now takes the
    library from the PyPI wheel of the version constraints.txt pins, for x86_64 and aarch64 alike."""
    pins = dict(
        line.split("==", 1)
        for line in (REPO / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    fd = _fetch_deps()
    assert fd.ORT_VERSION == pins["onnxruntime"].strip()
    assert sorted(fd.ORT_WHEELS) == ["aarch64", "x86_64"]
    for _, wheel, _ in fd.ORT_WHEELS.values():
        assert wheel.startswith(f"onnxruntime-{fd.ORT_VERSION}-")


def test_build_links_the_python_runtimes_onnxruntime(cpp_build):
    fd = _fetch_deps()
    log = cpp_build.configure_log
    api = fd.ORT_HEADERS_VERSION.split(".")[1]
    assert (
        f"ONNX Runtime {fd.ORT_VERSION} (headers API {api}): ABI checked: the {fd.ORT_VERSION} library serves "
        f"C API {api}" in log
    ), log
    assert f"onnxruntime-{fd.ORT_VERSION}-linux-" in log, log
    info = c_check(cpp_build, "info", "/nonexistent", check=False)
    assert info.returncode == 1 and "VAE_ERR_BUNDLE" in info.stderr


def _cached(build: CppBuild, name: str) -> str:
    cache = (build.build_dir / "CMakeCache.txt").read_text()
    return next(line.split("=", 1)[1] for line in cache.splitlines() if line.startswith(name + ":"))


def test_headers_newer_than_the_library_are_refused(cpp_build, tmp_path):
    """The configure-time ABI check: headers whose C API the library does not serve (here the fetched headers with
    ORT_API_VERSION raised past the library's release) stop CMake with both versions named; with
    VAE_ORT_ALLOW_NEWER_LIBRARY=OFF, even the fetched (older) headers with the newer library are refused."""
    include = Path(_cached(cpp_build, "ONNXRUNTIME_INCLUDE_DIR"))
    library = _cached(cpp_build, "ONNXRUNTIME_LIBRARY")
    future = tmp_path / "include"
    future.mkdir()
    for header in include.glob("*.h"):
        text = header.read_text(errors="replace")
        if header.name == "onnxruntime_c_api.h":
            text, n = re.subn(r"^#define ORT_API_VERSION \d+", "#define ORT_API_VERSION 99", text, flags=re.M)
            assert n == 1
        (future / header.name).write_text(text)
    args = [
        "cmake",
        "-S",
        CPP,
        "-B",
        tmp_path / "b",
        *_cmake_args(),
        f"-DONNXRUNTIME_LIBRARY={library}",
        "-DVAE_BUILD_EXAMPLES=OFF",
        "-DVAE_BUILD_TESTS=OFF",
    ]
    refused = _run([*args, f"-DONNXRUNTIME_INCLUDE_DIR={future}"], check=False)
    said = " ".join(refused.stderr.split())  # CMake wraps its messages
    assert refused.returncode != 0
    assert "version mismatch: the library does not serve the headers' C API 99" in said, refused.stderr
    assert f"{future} (C API 99, release 1.99), library {library} (" in said, refused.stderr
    strict = _run([*args, f"-DONNXRUNTIME_INCLUDE_DIR={include}", "-DVAE_ORT_ALLOW_NEWER_LIBRARY=OFF"], check=False)
    assert strict.returncode != 0 and "VAE_ORT_ALLOW_NEWER_LIBRARY=OFF" in strict.stderr, strict.stderr


def test_relative_python_executable_is_resolved_or_refused(tmp_path):
    """The Makefile passed -DPython3_EXECUTABLE=.venv/bin/python, which FindPython ignored (it took another
    interpreter): a relative path is now resolved against the directory cmake runs in, or refused by name. Only the
    start of a configure is needed: a missing interpreter stops it at once."""
    proc = _run(
        ["cmake", "-S", CPP, "-B", tmp_path / "b", "-DPython3_EXECUTABLE=no/such/python"], check=False, cwd=tmp_path
    )
    assert proc.returncode != 0
    assert (
        f"Python3_EXECUTABLE='no/such/python' is a relative path and '{tmp_path}/no/such/python' "
        f"(relative to {tmp_path}, where cmake was started) does not exist"
    ) in " ".join(proc.stderr.split())


# ----------------------------------------------------------------------------------------------- parity


def _inputs(bundle: Path, graph: str, tensor: str, shape_tail: tuple[int, ...], extra: int, lo=-1.0, hi=1.0):
    with np.load(bundle / "reference.npz") as ref:
        golden = ref[f"{graph}.{tensor}"]
    rng = np.random.default_rng(1234)
    fresh = (
        rng.standard_normal((extra, *shape_tail)) if tensor == "z" else rng.uniform(lo, hi, (extra, *shape_tail))
    ).astype(np.float32)
    return np.ascontiguousarray(np.concatenate([golden, fresh]), dtype=np.float32)


def test_decoder_matches_python_runtime_on_default_bundle(cpp_build, default_bundle, tmp_path):
    with python_runtime(default_bundle) as rt:
        z = _inputs(default_bundle, "decoder", "z", (rt.manifest.model.latent_dim,), 12)
        expected = rt.decode(z)
    z.tofile(tmp_path / "z.f32")
    c_check(cpp_build, "decode", default_bundle, tmp_path / "z.f32", tmp_path / "out.f32")
    got = np.fromfile(tmp_path / "out.f32", dtype=np.float32).reshape(expected.shape)
    err = float(np.abs(got - expected).max())
    assert err <= TOL, f"C ABI decode vs Python runtime: max abs error {err:.3g} > {TOL}"

    # The C++ API through the example, with latents from a .npy file.
    np.save(tmp_path / "z.npy", z)
    proc = _run(
        [
            cpp_build.exe("vae_decode"),
            default_bundle,
            "--latents",
            tmp_path / "z.npy",
            "--format",
            "none",
            "--save-npy",
            tmp_path / "images.npy",
        ]
    )
    got_api = np.load(tmp_path / "images.npy")
    assert got_api.shape == expected.shape and got_api.dtype == np.float32
    err_api = float(np.abs(got_api - expected).max())
    assert err_api <= TOL, f"vae_decode vs Python runtime: max abs error {err_api:.3g} > {TOL}"
    for stage in ("load", "latents", "decode", "to_uint8", "write"):
        assert f"  {stage} " in proc.stdout, proc.stdout


def test_vae_decode_never_overwrites_the_users_files_unasked(cpp_build, bundle, tmp_path):
    """vae_decode --out DIR used to replace DIR/image_000.png silently (issue 16): it stops before decoding, exit 2."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "image_001.png").write_bytes(b"the user's picture")
    (tmp_path / "images.npy").write_bytes(b"the user's array")
    exe = cpp_build.exe("vae_decode")
    proc = _run([exe, bundle, "--count", "3", "--out", out, "--save-npy", tmp_path / "images.npy"], check=False)
    assert proc.returncode == 2, proc
    assert proc.stderr == (
        f"vae_decode: error: would overwrite 2 existing file(s): {out}/image_001.png, "
        f"{tmp_path}/images.npy; pass --overwrite to replace them, or choose another --out / "
        "--save-npy / --save-latents\n"
    )
    assert sorted(p.name for p in out.iterdir()) == ["image_001.png"]  # nothing written, nothing replaced
    assert (out / "image_001.png").read_bytes() == b"the user's picture"
    assert (tmp_path / "images.npy").read_bytes() == b"the user's array"
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    proc = _run([exe, bundle, "--count", "1", "--out", a_file], check=False)
    assert proc.returncode == 2 and f"--out {a_file}: exists and is not a folder" in proc.stderr
    _run([exe, bundle, "--count", "3", "--out", out, "--overwrite"])  # asked for: replaced
    assert sorted(p.name for p in out.iterdir()) == ["image_000.png", "image_001.png", "image_002.png"]
    assert (out / "image_001.png").read_bytes().startswith(b"\x89PNG")


def test_encoder_matches_python_runtime_on_default_bundle(cpp_build, default_bundle, tmp_path):
    with python_runtime(default_bundle) as rt:
        m = rt.manifest
        images = _inputs(default_bundle, "encoder", "image", m.model.image_shape, 6, *m.pixel_range)
        post = rt.encode(images)
    images.tofile(tmp_path / "img.f32")
    c_check(cpp_build, "encode", default_bundle, tmp_path / "img.f32", tmp_path / "mu.f32", tmp_path / "lv.f32")
    failures = []
    for name, expected in (("mu", post.mu), ("logvar", post.logvar)):
        got = np.fromfile(tmp_path / ("mu.f32" if name == "mu" else "lv.f32"), dtype=np.float32)
        got = got.reshape(expected.shape)
        err = float(np.abs(got - expected).max())
        if err > TOL:
            failures.append(f"{name}: max abs error {err:.3g} > {TOL}")
    assert not failures, "C ABI encode vs Python runtime: " + "; ".join(failures)


# ----------------------------------------------------------------------------------------------- the C ABI


def test_c_abi_misuse_battery(cpp_build, bundle):
    proc = c_check(cpp_build, "errors", bundle, check=False)
    lines = proc.stdout.splitlines()
    failed = [line for line in lines if line.startswith("FAIL")]
    assert proc.returncode == 0 and not failed, proc.stdout + proc.stderr
    assert sum(line.startswith("ok ") for line in lines) >= 30, proc.stdout  # the battery really ran
    assert lines[-1] == "0 check(s) failed"


def test_large_decode_peak_memory_is_the_output_plus_one_chunk(cpp_build, bundle):
    """Every ONNX Runtime call gets at most 256 rows, as in the Python runtime (issue 16): 10,000 tiny latents in one
    call peaked ~530 MiB above their 117 MiB output; chunked, the same bound as tests/runtime/test_memory.py holds."""
    import runtime
    from benchmarks.cpp_runtime import CppRuntime
    from tests.runtime.test_memory import BOUND_MIB, N, peak_memory

    r = peak_memory(bundle, "decoder", library=cpp_build.library)
    assert r["shape"] == [N, 3, 32, 32]
    assert r["extra_mib"] < BOUND_MIB, r
    z = np.random.default_rng(5).standard_normal((2 * 256 + 5, 8), dtype=np.float32)
    with (
        CppRuntime(bundle, library=cpp_build.library, graphs="decoder") as rt,
        runtime.load(bundle, backend="onnxruntime", max_chunk=None, batch_split=False) as whole,
    ):
        assert "max_chunk 256)" in rt.backend
        np.testing.assert_allclose(rt.decode(z), whole.decode(z), rtol=0, atol=TOL)  # rows in order across chunks


@pytest.mark.parametrize("threads", [2, 3])
def test_batch_split_equals_one_call(cpp_build, bundle, threads):
    """A batch >= batch_split is cut into one chunk per core, each on its own single-threaded session writing into
    the caller's buffer at the chunk's offset: the same numbers as one call, in the same order, uneven chunks too."""
    from benchmarks.cpp_runtime import CppRuntime

    rng = np.random.default_rng(3)
    with (
        CppRuntime(bundle, library=cpp_build.library, batch_split=False) as whole,
        CppRuntime(bundle, library=cpp_build.library, threads=threads, batch_split=2) as split,
    ):
        assert "batch_split" not in whole.backend
        assert f"batch_split decoder >= 2, encoder >= 2 over {threads} cores" in split.backend
        for n in (1, 2, 5, 7):
            z = rng.standard_normal((n, split.latent_dim), dtype=np.float32)
            x = rng.uniform(-1, 1, (n, *split.image_shape)).astype(np.float32)
            np.testing.assert_allclose(split.decode(z), whole.decode(z), rtol=0, atol=1e-6)
            for a, b in zip(split.encode(x), whole.encode(x)):
                np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def test_dla_core_option_and_the_second_struct_layout(cpp_build, bundle):
    """dla_core (appended to vae_options with reserved2) is checked, applies to the tensorrt backend only, and a
    caller built against the previous header (struct ending at reserved, garbage after it) still gets its
    batch_split honoured and dla_core's default."""
    status, error = open_status(cpp_build, bundle, "dla_core=0")
    assert status == "VAE_ERR_INVALID_ARGUMENT" and "DLA engines run on backend 'tensorrt'" in error
    status, error = open_status(cpp_build, bundle, "dla_core=-2")
    assert status == "VAE_ERR_INVALID_ARGUMENT" and "expected -1 (the GPU engines) or a DLA core index" in error
    proc = c_check(cpp_build, "open", bundle, "second_layout=1", "batch_split=-1")
    out = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    assert out["status"] == "VAE_OK" and "batch_split" not in out["backend"], proc.stdout
    assert int(out["second_layout_size"]) not in (0,)
    proc = c_check(cpp_build, "open", bundle, f"struct_size={out['second_layout_size']}", "threads=2")
    assert "status=VAE_OK" in proc.stdout, proc.stdout


def test_batch_split_option_checks_and_old_struct_layout(cpp_build, bundle):
    from runtime.backends.onnxruntime import physical_cores

    for bad in ("1", "-2"):
        status, error = open_status(cpp_build, bundle, f"batch_split={bad}")
        assert status == "VAE_ERR_INVALID_ARGUMENT"
        assert f"option batch_split: expected 0 (default), -1 (never) or a batch size >= 2, got {bad}" in error
    proc = c_check(cpp_build, "open", bundle, "batch_split=-1")
    assert "batch_split" not in proc.stdout
    # A caller compiled against the layout without batch_split (its own sizeof, garbage in the bytes after it) is
    # accepted and gets the default: nothing past verify_sha256 is read.
    proc = c_check(cpp_build, "open", bundle, "first_layout=1", "threads=2")
    assert "status=VAE_OK" in proc.stdout and "batch_split decoder >= 32 over 2 cores" in proc.stdout, proc.stdout
    proc = c_check(cpp_build, "open", bundle, "first_layout=1", "threads=2", "graphs=decoder", "verify_sha256=0")
    assert "status=VAE_OK" in proc.stdout, proc.stdout
    # ... and that binary's vae_options_init (the exported symbol, not the macro) writes only the first layout.
    proc = c_check(cpp_build, "open", bundle, "first_layout=2")
    out = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    assert out["status"] == "VAE_OK" and out["init_struct_size"] == out["first_layout_size"], proc.stdout
    status, error = open_status(cpp_build, bundle, "struct_size=12")
    assert status == "VAE_ERR_INVALID_ARGUMENT" and "vae_options.struct_size is 12, expected" in error
    proc = c_check(cpp_build, "open", bundle)  # default: one worker per physical core, like the Python backend
    cores = physical_cores()
    assert (
        (f"batch_split decoder >= 32 over {cores} cores" in proc.stdout)
        if cores > 1
        else "batch_split" not in proc.stdout
    ), proc.stdout
    assert "encoder" not in proc.stdout.split("backend=", 1)[1]  # the encoder is not split by default


def test_split_batches_run_on_per_core_sessions_that_recheck_the_file(cpp_build, bundle_copy):
    """The per-core sessions are built by the first split call, from the file as it is then: it is checked again
    (sha256, inputs/outputs), so a split batch never runs another model than an unsplit one. This also shows that
    batches >= batch_split take that path and smaller ones do not."""
    from benchmarks.cpp_runtime import CppRuntime, CppRuntimeError

    with CppRuntime(bundle_copy, library=cpp_build.library, threads=2, batch_split=4) as rt:
        z = np.zeros((4, rt.latent_dim), np.float32)
        path = bundle_copy / "decoder.onnx"
        path.write_bytes(path.read_bytes() + b"\0")  # changed after load
        rt.decode(z[:3])  # below batch_split: the session built at load, unaffected
        with pytest.raises(CppRuntimeError, match=r"VAE_ERR_BUNDLE: .*decoder\.onnx.*sha256"):
            rt.decode(z)


def test_c_abi_info_matches_manifest(cpp_build, bundle):
    from runtime.bundle import read_manifest

    m = read_manifest(bundle)
    out = dict(line.split("=", 1) for line in c_check(cpp_build, "info", bundle).stdout.splitlines())
    assert (int(out["in_channels"]), int(out["out_channels"]), int(out["image_size"]), int(out["latent_dim"])) == (
        m.model.in_channels,
        m.model.out_channels,
        m.model.image_size,
        m.model.latent_dim,
    )
    assert (float(out["pixel_min"]), float(out["pixel_max"])) == m.pixel_range
    assert int(out["center_crop"]) == m.center_crop == 148  # exported from a checkpoint without training options
    assert out["backend"].startswith(f"onnxruntime {_fetch_deps().ORT_VERSION} (CPUExecutionProvider")
    assert out["version"] == pyproject_version()  # the library's vae_version(): pyproject.toml's, through CMake


# ----------------------------------------------------------------------------------------------- bad bundles


def _edit_manifest(bundle: Path, edit) -> None:
    data = json.loads((bundle / "vae.json").read_text())
    edit(data)
    (bundle / "vae.json").write_text(json.dumps(data))


def test_bad_paths(cpp_build, bundle_copy, tmp_path):
    status, err = open_status(cpp_build, tmp_path / "nowhere")
    assert status == "VAE_ERR_BUNDLE" and str(tmp_path / "nowhere") in err
    empty = tmp_path / "empty"
    empty.mkdir()
    status, err = open_status(cpp_build, empty)
    assert status == "VAE_ERR_BUNDLE" and "no bundle manifest here" in err and str(empty) in err
    (bundle_copy / "decoder.onnx").unlink()
    status, err = open_status(cpp_build, bundle_copy)
    assert status == "VAE_ERR_BUNDLE" and "decoder.onnx: listed in" in err and "but missing" in err
    # The encoder alone still opens: a missing graph only matters to the runtime that asks for it.
    assert open_status(cpp_build, bundle_copy, "graphs=encoder")[0] == "VAE_OK"


@pytest.mark.parametrize(
    "edit, needle",
    [
        (lambda d: d.update(schema="something/else"), "schema: 'something/else', expected 'vae-deploy/bundle'"),
        (lambda d: d.update(schema_version=2), "schema_version: 2, this runtime reads 1"),
        (lambda d: d["model"].update(latent_dim="eight"), "model.latent_dim: expected an integer, got string"),
        (lambda d: d["model"].update(latent_dim=9), "the model config implies (N, 9)"),
        (lambda d: d.update(pixel_range=[1, -1]), "pixel_range: expected low < high"),
        (lambda d: d["graphs"]["decoder"].update(file="../decoder.onnx"), "must be a relative path inside the bundle"),
        (lambda d: d["graphs"].update(flow=d["graphs"]["decoder"]), "unknown graph 'flow'"),
        (
            lambda d: d["preprocess"].update(center_crop=0),
            "preprocess.center_crop: expected an integer in [1, 2147483647] (training's --center-crop) or null "
            "(no crop), got 0",
        ),
        (lambda d: d["preprocess"].update(center_crop="100"), "preprocess.center_crop: expected an integer"),
        (lambda d: d["preprocess"].update(center_crop=2**31), "(no crop), got 2147483648"),
        (lambda d: d["preprocess"].update(center_crop=2**64 - 1), "(no crop), got 18446744073709551615"),
        (lambda d: d["preprocess"].pop("center_crop"), "preprocess.center_crop: missing"),
        (lambda d: d["preprocess"].update(resize="bicubic"), "preprocess.resize: expected one of [bilinear]"),
        (lambda d: d["preprocess"].update(source=7), "preprocess.source: expected a string, got number"),
        (lambda d: d.update(preprocess=[148]), "preprocess: expected an object, got array"),
    ],
)
def test_malformed_manifest(cpp_build, bundle_copy, edit, needle):
    _edit_manifest(bundle_copy, edit)
    status, err = open_status(cpp_build, bundle_copy)
    assert status == "VAE_ERR_BUNDLE" and needle in err and "vae.json" in err, err


@pytest.mark.parametrize(
    "preprocess, expected",
    [
        ({"center_crop": 100, "resize": "bilinear", "source": "training options: --center-crop"}, 100),
        ({"center_crop": None, "resize": "bilinear", "source": "training options: the embedded shapes"}, 2**31 - 1),
        ({"center_crop": 64}, 64),  # resize and source are optional
        (None, 148),  # a bundle exported before vae.json recorded the crop
    ],
)
def test_vae_runtime_center_crop_is_the_recorded_one(cpp_build, bundle_copy, preprocess, expected):
    """vae_runtime_center_crop (vae_image.h): vae.json's preprocess.center_crop; VAE_IMAGE_NO_CENTER_CROP (INT32_MAX)
    for null, VAE_IMAGE_TRAIN_CENTER_CROP (148) without the key. The Python runtime reads the same."""
    from runtime.bundle import read_manifest

    _edit_manifest(bundle_copy, lambda d: d.update(preprocess=preprocess) if preprocess else d.pop("preprocess"))
    out = dict(line.split("=", 1) for line in c_check(cpp_build, "info", bundle_copy).stdout.splitlines())
    assert int(out["center_crop"]) == expected
    python = read_manifest(bundle_copy).center_crop
    assert (2**31 - 1 if python is None else python) == expected


def test_recorded_auto_choice_is_ignored(cpp_build, bundle_copy):
    """vae.json's "auto" records (benchmarks.latency --record-auto: the Python runtime's backend="auto" on the CPU)
    are not the C++ runtime's business: it opens and runs such a bundle as before."""
    from runtime import bundle as B

    m = B.read_manifest(bundle_copy)
    spec = m.graphs["decoder"]
    measured = B.MeasuredGraph(spec.file, spec.sha256, {1: {"onnxruntime": 1.0, "openvino": 0.5}})
    record = B.AutoRecord(
        B.MachineSpec("Some CPU", ("avx2",), 2), {"openvino": "2026.4.1"}, {"fp32": {"decoder": measured}}, "2026-12-03"
    )
    B.write_manifest(bundle_copy, m.with_auto_record(record))
    assert json.loads((bundle_copy / "vae.json").read_text())["auto"][0]["machine"]["cpu"] == "Some CPU"
    assert open_status(cpp_build, bundle_copy) == ("VAE_OK", "")
    out = dict(line.split("=", 1) for line in c_check(cpp_build, "info", bundle_copy).stdout.splitlines())
    assert int(out["latent_dim"]) == m.model.latent_dim


def _escape_by_symlink(bundle: Path) -> None:
    outside = bundle.parent / "outside.onnx"
    (bundle / "decoder.onnx").rename(outside)
    os.symlink(outside, bundle / "decoder.onnx")


def _latent(n: int):
    def edit(d):
        d["model"]["latent_dim"] = n
        for t in (*d["graphs"]["encoder"]["outputs"], *d["graphs"]["decoder"]["inputs"]):
            t["shape"] = ["batch", n]

    return edit


@pytest.mark.parametrize(
    "edit, needle",
    [
        (
            lambda d: d["graphs"]["decoder"].update(file="/etc/passwd"),
            "file name '/etc/passwd' must be a relative path",
        ),
        (_escape_by_symlink, "outside.onnx, outside the bundle"),
        (
            lambda d: d["graphs"]["decoder"].update(sha256=""),
            "graphs.decoder.sha256: expected the file's sha256 (64 hex digits), got ''",
        ),
        (
            lambda d: d["graphs"]["decoder"].update(variants={"fp16": {"file": "decoder.onnx", "sha256": ""}}),
            "graphs.decoder.variants.fp16.sha256: expected the file's sha256 (64 hex digits), got ''",
        ),
        (_latent(100_000), "model.latent_dim: expected an integer in [1, 65536], got 100000"),
    ],
)
def test_bundle_contract_files_inside_sha256_required_model_bounded(cpp_build, bundle_copy, edit, needle):
    """Issue 16, the C++ reader: names stay inside the bundle (also through symlinks), graph and variant sha256 are
    required (an empty one used to turn the check off), the model section is bounded as in runtime/bundle.py."""
    if edit is _escape_by_symlink:
        edit(bundle_copy)
    else:
        _edit_manifest(bundle_copy, edit)
    status, err = open_status(cpp_build, bundle_copy)
    assert status == "VAE_ERR_BUNDLE" and needle in err, err


def test_manifest_not_json(cpp_build, bundle_copy):
    (bundle_copy / "vae.json").write_text('{"schema": "vae-deploy/bundle", ')
    status, err = open_status(cpp_build, bundle_copy)
    assert status == "VAE_ERR_BUNDLE" and "vae.json: not valid JSON" in err


def test_changed_graph_file_is_refused_by_sha256(cpp_build, bundle_copy):
    path = bundle_copy / "decoder.onnx"
    path.write_bytes(path.read_bytes()[:-100])
    status, err = open_status(cpp_build, bundle_copy)
    assert status == "VAE_ERR_BUNDLE" and "decoder.onnx: sha256" in err and "changed after export" in err


def test_corrupt_onnx_is_a_clear_bundle_error(cpp_build, bundle_copy):
    """A damaged graph whose hash was (wrongly) updated gets past the sha256 check: ONNX Runtime's refusal must
    still come back as a bundle error naming the file, not a crash."""
    import runtime.bundle as B

    path = bundle_copy / "decoder.onnx"
    path.write_bytes(b"\x08\x07not an onnx model" + path.read_bytes()[:200])
    m = B.read_manifest(bundle_copy)
    graphs = dict(m.graphs)
    graphs["decoder"] = dataclasses.replace(graphs["decoder"], sha256=B.sha256_file(path))
    B.write_manifest(bundle_copy, dataclasses.replace(m, graphs=graphs))
    status, err = open_status(cpp_build, bundle_copy)
    assert status == "VAE_ERR_BUNDLE", err
    assert str(path) in err and "ONNX Runtime cannot load this graph" in err


# ----------------------------------------------------------------------------------------------- the example


def _decode_cli(build: CppBuild, *args) -> subprocess.CompletedProcess:
    return _run([build.exe("vae_decode"), *args], check=False)


@pytest.mark.parametrize(
    "make, needle",
    [
        (lambda d: np.zeros((2, d + 1), np.float32), "shape (2, {w}), expected (N, {d})"),
        (lambda d: np.zeros((d,), np.float32), "a single latent needs a batch axis"),
        (lambda d: np.zeros((2, d), np.int64), "dtype '<i8', expected float32"),
        (lambda d: np.asfortranarray(np.zeros((3, d), np.float32)), "Fortran-ordered"),
        (
            lambda d: np.where(np.arange(2 * d).reshape(2, d) == d + 1, np.nan, 0).astype(np.float32),
            "tensor 'z': 1 NaN and 0 Inf value(s), first at index (1, 1)",
        ),
    ],
)
def test_vae_decode_rejects_bad_latents(cpp_build, bundle, tmp_path, make, needle):
    from runtime.bundle import read_manifest

    d = read_manifest(bundle).model.latent_dim
    np.save(tmp_path / "z.npy", make(d))
    proc = _decode_cli(cpp_build, bundle, "--latents", tmp_path / "z.npy", "--format", "none")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith("vae_decode: error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert needle.format(w=d + 1, d=d) in proc.stderr


def test_vae_decode_usage_and_missing_file(cpp_build, bundle, tmp_path):
    proc = _decode_cli(cpp_build, bundle, "--format", "none")
    assert proc.returncode == 2 and "give exactly one of --latents FILE or --count N" in proc.stderr
    proc = _decode_cli(cpp_build, bundle, "--latents", tmp_path / "none.npy", "--format", "none")
    assert proc.returncode == 2 and f"{tmp_path / 'none.npy'}: cannot be opened" in proc.stderr


def test_vae_decode_writes_images_like_to_uint8(cpp_build, bundle, tmp_path):
    from PIL import Image

    from runtime.bundle import read_manifest
    from runtime.images import to_uint8

    m = read_manifest(bundle)
    outs = []
    for fmt in ("png", "ppm"):
        out = tmp_path / fmt
        proc = _decode_cli(
            cpp_build,
            bundle,
            "--count",
            "3",
            "--seed",
            "7",
            "--out",
            out,
            "--format",
            fmt,
            "--save-npy",
            tmp_path / f"{fmt}.npy",
        )
        assert proc.returncode == 0, proc.stderr
        outs.append(sorted(out.iterdir()))
    images = np.load(tmp_path / "png.npy")
    np.testing.assert_array_equal(images, np.load(tmp_path / "ppm.npy"))  # the same seed, the same latents
    expected = to_uint8(images, m.pixel_range)
    for files in outs:
        assert [f.name[-3:] for f in files] == [files[0].name[-3:]] * 3
        for i, f in enumerate(files):
            with Image.open(f) as im:
                assert im.size == (m.model.image_size, m.model.image_size)
                np.testing.assert_array_equal(np.asarray(im.convert("RGB")), expected[i])


@pytest.mark.parametrize("seed", ["0", "7", "18446744073709551615"])
def test_vae_decode_seed_draws_the_latents_python_sample_draws(cpp_build, bundle, tmp_path, seed):
    """`vae_decode --count N --seed S` and `sample(N, seed=S)`: the same portable stream (runtime/rng.py), so the same
    latents - bit for bit here; the contract allows 1 ulp (two math libraries' log / cos / sin) - and images."""
    import runtime
    from runtime.rng import standard_normal

    n = 300
    proc = _decode_cli(
        cpp_build,
        bundle,
        "--count",
        n,
        "--seed",
        seed,
        "--format",
        "none",
        "--save-latents",
        tmp_path / "z.npy",
        "--save-npy",
        tmp_path / "images.npy",
    )
    assert proc.returncode == 0, proc.stderr
    z = np.load(tmp_path / "z.npy")
    with runtime.load(bundle, backend="onnxruntime") as vae:
        assert z.shape == (n, vae.latent_dim) and z.dtype == np.float32
        want = standard_normal(int(seed), (n, vae.latent_dim))
        np.testing.assert_array_max_ulp(z, want, maxulp=1)
        assert np.count_nonzero(z != want) <= 1, "more than a rare last-bit difference"
        np.testing.assert_allclose(np.load(tmp_path / "images.npy"), vae.sample(n, seed=int(seed)), rtol=0, atol=TOL)
    assert (
        _decode_cli(
            cpp_build, bundle, "--count", 1, "--seed", seed, "--format", "none", "--save-latents", tmp_path / "z.npy"
        ).returncode
        == 2
    )  # never replaced without --overwrite
    for bad in ("-1", "18446744073709551616", "1e3"):
        proc = _decode_cli(cpp_build, bundle, "--count", 1, "--seed", bad, "--format", "none")
        assert proc.returncode == 2 and "--seed: expected an integer in [0, 18446744073709551615]" in proc.stderr


# ----------------------------------------------------------------------------------------------- install

VERSION = pyproject_version()  # the one version (tests/test_version.py)
DOWNSTREAM_CMAKE = """cmake_minimum_required(VERSION 3.18)
project(downstream LANGUAGES C CXX)
find_package(vae_runtime @MAJOR_MINOR@ REQUIRED)
add_executable(app app.cpp)
target_link_libraries(app PRIVATE vae_runtime::vae_runtime)
add_executable(capp capp.c)
target_link_libraries(capp PRIVATE vae_runtime::vae_runtime)
add_executable(old_order EXCLUDE_FROM_ALL old_order.cpp)
target_link_libraries(old_order PRIVATE vae_runtime::vae_runtime)
""".replace("@MAJOR_MINOR@", ".".join(VERSION.split(".")[:2]))

DOWNSTREAM_APP = r"""#include <cstdio>
#include <vae/runtime.hpp>
int main(int argc, char** argv) {
    vae::Runtime rt(argv[1]);
    std::vector<float> z(rt.latent_elements(2), 0.5f);
    std::vector<float> img = rt.decode(z);
    try {
        rt.decode(z.data(), 2, z.size() - 1, img.data(), img.size());  // batch, then count: as vae_decode
        return 3;
    } catch (const vae::ShapeError& e) {  // caught by type across the shared-library boundary
        std::printf("caught ShapeError: %s\n", e.what());
    }
    std::printf("decoded %zu floats, first %.6f\n", img.size(), img[0]);
    return 0;
}
"""

# A caller written for 0.1.0's C++ order (count, then batch): it must not compile, or batch and count would swap.
OLD_ORDER_APP = r"""#include <vae/runtime.hpp>
int main(int argc, char** argv) {
    vae::Runtime rt(argv[argc - 1]);
    std::int64_t n = 2;
    std::vector<float> z(rt.latent_elements(n)), img(rt.image_elements(n));
    rt.decode(z.data(), z.size(), n, img.data(), img.size());
    return 0;
}
"""

DOWNSTREAM_C = r"""#include <stdio.h>
#include <vae_runtime.h>
int main(int argc, char** argv) {
    vae_runtime* rt = NULL;
    (void)argc;
    if (vae_runtime_create(argv[1], NULL, &rt) != VAE_OK) { fprintf(stderr, "%s\n", vae_last_error()); return 1; }
    printf("c ok %s abi %d\n", vae_version(), vae_abi_version());
    vae_runtime_destroy(rt);
    return 0;
}
"""


def test_installed_package_is_consumable_by_find_package(cpp_build, bundle, tmp_path):
    prefix = tmp_path / "prefix"
    _run(["cmake", "--install", cpp_build.build_dir, "--prefix", prefix])
    lib = prefix / "lib"
    assert (prefix / "include" / "vae_runtime.h").is_file() and (prefix / "include" / "vae" / "runtime.hpp").is_file()
    assert (prefix / "include" / "vae_image.h").is_file() and (prefix / "include" / "vae" / "image.hpp").is_file()
    assert (lib / "cmake" / "vae_runtime" / "vae_runtimeConfig.cmake").is_file()
    assert (lib / "libonnxruntime.so.1").exists(), sorted(p.name for p in lib.iterdir())
    app = tmp_path / "app"
    app.mkdir()
    (app / "CMakeLists.txt").write_text(DOWNSTREAM_CMAKE)
    (app / "app.cpp").write_text(DOWNSTREAM_APP)
    (app / "capp.c").write_text(DOWNSTREAM_C)
    (app / "old_order.cpp").write_text(OLD_ORDER_APP)
    # A clean environment: nothing but the prefix tells CMake or the loader where the runtime lives.
    env = {k: v for k, v in os.environ.items() if k not in ("LD_LIBRARY_PATH", "CMAKE_PREFIX_PATH")}
    _run(
        [
            "cmake",
            "-S",
            app,
            "-B",
            app / "build",
            f"-DCMAKE_PREFIX_PATH={prefix}",
            *(["-G", "Ninja"] if shutil.which("ninja") else []),
        ],
        env=env,
    )
    _run(["cmake", "--build", app / "build"], env=env)
    out = _run([app / "build" / "app", bundle], env=env).stdout
    assert "caught ShapeError: tensor 'z'" in out and "decoded" in out, out
    assert f"c ok {VERSION} abi 1" in _run([app / "build" / "capp", bundle], env=env).stdout
    old = _run(["cmake", "--build", app / "build", "--target", "old_order"], env=env, check=False)
    assert old.returncode != 0 and "deleted function" in old.stdout + old.stderr, old.stdout + old.stderr
    # The installed example runs from the prefix too (RPATH $ORIGIN/../lib).
    proc = _run([prefix / "bin" / "vae_decode", bundle, "--count", "2", "--format", "none"], env=env)
    assert "decode" in proc.stdout
