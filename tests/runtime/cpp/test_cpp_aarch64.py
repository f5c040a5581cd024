"""The C++ runtime cross-built for Linux aarch64 (the Jetson path) and run under user-mode QEMU.

`make cpp-aarch64` in a fresh folder: Debian's g++-aarch64-linux-gnu with runtime/cpp/cmake/toolchains/
aarch64-linux-gnu.cmake, against ONNX Runtime 1.32.0 for aarch64 (the x86 build's and the Python runtime's release: the
library from the PyPI wheel onnxruntime==1.32.0 for manylinux_2_28_aarch64, the C API 29 headers as for x86_64,
fetched by scripts/fetch_deps.py onnxruntime_aarch64). CMake's header/library ABI probe itself runs under QEMU
(CMAKE_CROSSCOMPILING_EMULATOR). Then the aarch64
programs run under qemu-aarch64 (toolchains/qemu-aarch64-run: the aarch64 sysroot as -L prefix, a Cortex-A76 CPU and
an aarch64 /proc/cpuinfo, without which ONNX Runtime crashes under QEMU 7.2):

- vae_decode on the bundle's golden latents (reference.npz "decoder.z", and the realistic set on the tiny bundle)
  gives the PyTorch FP32 images ("decoder.image") within 1e-4, on the tiny bundle and on the default-size model;
- the C ABI from the plain C program: decode and encode against the golden outputs, and the misuse battery;
- the image preparation (vae_image.h) on aarch64 equals runtime.images.prepare on x86 (integer arithmetic: exactly).

Needs the Debian packages of .ci/apt-packages.txt (`make apt-deps`; .ci/run installs them): without them these tests
skip, saying so, unless VAE_REQUIRE_AARCH64=1 (set by .ci/run), which turns the skip into a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.cpp_support import CppBuild, cmake_args, run_checked

REPO = Path(__file__).resolve().parents[3]
CPP = REPO / "runtime" / "cpp"
TOOLCHAIN = CPP / "cmake" / "toolchains" / "aarch64-linux-gnu.cmake"
QEMU_RUN = CPP / "cmake" / "toolchains" / "qemu-aarch64-run"
FETCH = CPP / "scripts" / "fetch_deps.py"
SYSROOT = Path(os.environ.get("VAE_AARCH64_SYSROOT", "/usr/aarch64-linux-gnu"))
TOL = 1e-4  # vs PyTorch FP32 on x86 (measured here: ~3e-7)
EM_AARCH64 = 183
ORT_VERSION = "1.32.0"  # fetch_deps.ORT_VERSION = constraints.txt's onnxruntime (test_cpp_runtime.py checks that)

pytestmark = pytest.mark.slow  # cross build 36-156 s on 2 cores, then ~30 s of emulated runs


def _missing_tools() -> list[str]:
    missing = [t for t in ("aarch64-linux-gnu-gcc", "aarch64-linux-gnu-g++", "qemu-aarch64") if not shutil.which(t)]
    if not (SYSROOT / "lib" / "ld-linux-aarch64.so.1").exists():
        missing.append(f"{SYSROOT}/lib/ld-linux-aarch64.so.1")
    return missing


@pytest.fixture(scope="session", autouse=True)  # session: checked before the session-scoped bundles are built
def _cross_tools():
    missing = _missing_tools()
    if missing:
        msg = (
            f"aarch64 cross toolchain / QEMU not installed (missing: {', '.join(missing)}): install the Debian "
            "packages of .ci/apt-packages.txt with `make apt-deps` (as root)"
        )
        if os.environ.get("VAE_REQUIRE_AARCH64") == "1":
            pytest.fail(msg + " [VAE_REQUIRE_AARCH64=1: required here]")
        pytest.skip(msg)
    if shutil.which("cmake") is None:
        pytest.fail("cmake is not on PATH: the C++ runtime tests need cmake >= 3.18")


def qemu(*args, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run an aarch64 program (first argument) under QEMU the way CMake's probe ran."""
    return run_checked(["bash", QEMU_RUN, "--sysroot", SYSROOT, *args], check=check, timeout=timeout)


@pytest.fixture(scope="module")
def aarch64_build(tmp_path_factory) -> CppBuild:
    """What `make cpp-aarch64` does, in a fresh folder: fetch ONNX Runtime for aarch64, configure, build."""
    build = tmp_path_factory.mktemp("cpp-build-aarch64")
    t0 = time.perf_counter()
    fetched = run_checked([sys.executable, FETCH, "--only", "onnxruntime_aarch64", "--print-root"])
    ort_root = fetched.stdout.strip().split("onnxruntime_aarch64=", 1)[1].splitlines()[0]
    conf = run_checked(
        [
            "cmake",
            "-S",
            CPP,
            "-B",
            build,
            *cmake_args(),
            f"-DCMAKE_TOOLCHAIN_FILE={TOOLCHAIN}",
            f"-DONNXRUNTIME_ROOT={ort_root}",
            f"-DVAE_AARCH64_SYSROOT={SYSROOT}",
        ]
    )
    run_checked(["cmake", "--build", build, "-j", str(min(os.cpu_count() or 1, 4))])
    seconds = time.perf_counter() - t0
    print(f"aarch64 cross build (fetch + configure + build): {seconds:.1f} s")
    return CppBuild(build, conf.stdout + conf.stderr, seconds)


@pytest.fixture(scope="module")
def default_size_bundle(default_checkpoint, tmp_path_factory) -> Path:
    """A bundle of the default-size model (64x64 RGB, latent 128, hidden dims 32..512). Read-only."""
    from export.to_onnx import export_bundle

    return export_bundle(default_checkpoint, tmp_path_factory.mktemp("bundle-aarch64") / "default", log=lambda *a: None)


def _elf_machine(path: Path) -> int:
    head = path.read_bytes()[:20]
    assert head[:4] == b"\x7fELF", f"{path} is not an ELF file"
    return int.from_bytes(head[18:20], "little")


def _golden(bundle: Path, *names: str) -> dict[str, np.ndarray]:
    with np.load(bundle / "reference.npz") as ref:
        return {n: ref[n] for n in names}


def _max_err(got: np.ndarray, want: np.ndarray, what: str) -> float:
    assert got.shape == want.shape and got.dtype == np.float32, (what, got.shape, got.dtype, want.shape)
    assert np.isfinite(got).all(), f"{what}: non-finite values"
    return float(np.abs(got.astype(np.float64) - want).max())


# ----------------------------------------------------------------------------------------------- build


def test_cross_build_is_aarch64_against_the_python_runtimes_onnxruntime(aarch64_build):
    log = aarch64_build.configure_log
    # The ABI probe compiled with the C API 29 headers ran (under QEMU) against the aarch64 1.32 library and agreed.
    assert f"ONNX Runtime {ORT_VERSION} (headers API 29): ABI checked" in log, log
    assert f"onnxruntime-{ORT_VERSION}-linux-aarch64" in log, log
    for name in ("vae_decode", "vae_roundtrip", "vae_c_abi_check", "vae_image_check", "libvae_runtime.so"):
        assert _elf_machine(aarch64_build.exe(name)) == EM_AARCH64, name


# ----------------------------------------------------------------------------------------------- decoder parity


def _decode_under_qemu(build: CppBuild, bundle: Path, z: np.ndarray, tmp_path: Path) -> tuple[np.ndarray, float]:
    np.save(tmp_path / "z.npy", np.ascontiguousarray(z, dtype=np.float32))
    t0 = time.perf_counter()
    proc = qemu(
        build.exe("vae_decode"),
        bundle,
        "--latents",
        tmp_path / "z.npy",
        "--format",
        "none",
        "--save-npy",
        tmp_path / "images.npy",
    )
    seconds = time.perf_counter() - t0
    assert f"onnxruntime {ORT_VERSION}" in proc.stdout, proc.stdout
    return np.load(tmp_path / "images.npy"), seconds


def test_vae_decode_matches_golden_reference_tiny(aarch64_build, bundle, tmp_path):
    ref = _golden(bundle, "decoder.z", "decoder.image", "realistic.decoder.z", "realistic.decoder.image")
    z = np.concatenate([ref["decoder.z"], ref["realistic.decoder.z"]])
    want = np.concatenate([ref["decoder.image"], ref["realistic.decoder.image"]])
    got, seconds = _decode_under_qemu(aarch64_build, bundle, z, tmp_path)
    err = _max_err(got, want, "vae_decode (aarch64, tiny bundle)")
    print(f"aarch64 vae_decode, tiny bundle, {len(z)} latents: max abs error {err:.3g}, {seconds:.1f} s under QEMU")
    assert err <= TOL, f"aarch64 vae_decode vs PyTorch FP32 golden (tiny bundle): max abs error {err:.3g} > {TOL}"


def test_vae_decode_matches_golden_reference_default_size(aarch64_build, default_size_bundle, tmp_path):
    ref = _golden(default_size_bundle, "decoder.z", "decoder.image")
    got, seconds = _decode_under_qemu(aarch64_build, default_size_bundle, ref["decoder.z"], tmp_path)
    err = _max_err(got, ref["decoder.image"], "vae_decode (aarch64, default-size bundle)")
    print(
        f"aarch64 vae_decode, default-size bundle, {len(ref['decoder.z'])} latents: max abs error {err:.3g}, "
        f"{seconds:.1f} s under QEMU"
    )
    assert err <= TOL, f"aarch64 vae_decode vs PyTorch FP32 golden (64x64 model): max abs error {err:.3g} > {TOL}"


# ----------------------------------------------------------------------------------------------- the C ABI


def test_c_abi_decode_and_encode_match_golden(aarch64_build, bundle, tmp_path):
    ref = _golden(bundle, "decoder.z", "decoder.image", "encoder.image", "encoder.mu", "encoder.logvar")
    ref["decoder.z"].astype(np.float32).tofile(tmp_path / "z.f32")
    ref["encoder.image"].astype(np.float32).tofile(tmp_path / "img.f32")
    exe = aarch64_build.exe("vae_c_abi_check")
    qemu(exe, "decode", bundle, tmp_path / "z.f32", tmp_path / "out.f32")
    qemu(exe, "encode", bundle, tmp_path / "img.f32", tmp_path / "mu.f32", tmp_path / "lv.f32")
    errors = {}
    for name, file in (("decoder.image", "out.f32"), ("encoder.mu", "mu.f32"), ("encoder.logvar", "lv.f32")):
        got = np.fromfile(tmp_path / file, dtype=np.float32).reshape(ref[name].shape)
        errors[name] = _max_err(got, ref[name], f"C ABI {name}")
    print("aarch64 C ABI vs golden: " + ", ".join(f"{k} {v:.3g}" for k, v in errors.items()))
    assert all(e <= TOL for e in errors.values()), f"aarch64 C ABI vs PyTorch FP32 golden: {errors} (tol {TOL})"


def test_c_abi_misuse_battery(aarch64_build, bundle):
    proc = qemu(aarch64_build.exe("vae_c_abi_check"), "errors", bundle, check=False)
    lines = proc.stdout.splitlines()
    failed = [line for line in lines if line.startswith("FAIL")]
    assert proc.returncode == 0 and not failed, proc.stdout + proc.stderr
    assert sum(line.startswith("ok ") for line in lines) >= 30, proc.stdout


# ----------------------------------------------------------------------------------------------- images


def test_image_prepare_on_aarch64_equals_python(aarch64_build, tmp_path):
    from runtime.images import prepare

    rng = np.random.default_rng(9)
    for (h, w), c in (((128, 128), 3), ((61, 97), 3), ((200, 300), 4), ((218, 178), 1)):
        pixels = rng.integers(0, 256, (h, w, c), dtype=np.uint8)
        pixels.tofile(tmp_path / "in.u8")
        qemu(
            aarch64_build.exe("vae_image_check"),
            "prepare",
            tmp_path / "in.u8",
            w,
            h,
            c,
            64,
            3,
            148,
            -1,
            1,
            tmp_path / "out.f32",
        )
        got = np.fromfile(tmp_path / "out.f32", np.float32).reshape(1, 3, 64, 64)
        np.testing.assert_array_equal(got, prepare(pixels, 64, (-1.0, 1.0)), err_msg=f"{w}x{h}x{c}")
