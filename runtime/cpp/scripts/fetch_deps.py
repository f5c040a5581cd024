#!/usr/bin/env python3
"""Fetch the C++ runtime's third-party build inputs from package registries, at build time (never committed).

    python3 runtime/cpp/scripts/fetch_deps.py [--dest third_party] [--only NAME]... [--print-root]
    (NAME: onnxruntime, nlohmann_json; on request only: onnxruntime_aarch64, cuda_headers)
    python3 runtime/cpp/scripts/fetch_deps.py --only onnxruntime_aarch64 --print-root   # cross builds: make cpp-aarch64

What and why (the registries this project may use are PyPI, npm and Debian; ONNX Runtime publishes its C/C++
release archive only on GitHub, and Debian 12 has no ONNX Runtime package):

- onnxruntime: ONNX Runtime 1.32.0 for this machine (linux x86_64, or aarch64 on a Jetson), the SAME release as the
  Python runtime (constraints.txt pins onnxruntime==1.32.0; tests/runtime/cpp/test_cpp_runtime.py checks the two
  pins agree): the shared library onnxruntime/capi/libonnxruntime.so.1.32.0 out of the PyPI wheel onnxruntime==1.32.0
  (manylinux_2_28, glibc >= 2.28; the cp311 wheel: the C library does not depend on the Python version). It is the
  official C API library (SONAME libonnxruntime.so.1, OrtGetApiBase exported, symbols versioned VERS_1.32.0), so one
  ONNX Runtime serves Python and C++, and a process that loads both (benchmarks.cpp_runtime) loads one release.
- Its C/C++ headers: no registry carries ONNX Runtime 1.32's headers (no wheel ships them, npm's onnxruntime-node /
  -common / -web have none, NuGet is not reachable). The newest complete official header set on a reachable registry
  is ONNX Runtime 1.29.0's (C API 29), inside the npm package com.github.asus4.onnxruntime@0.4.9 (an MIT repackaging
  of the official release for Unity; the headers sit in its iOS framework slice and are platform-independent).
  ONNX Runtime's C API is versioned and append-only: a library of release 1.N serves every API version <= N through
  OrtGetApiBase()->GetApi(version), and code compiled against API 29 calls only the functions of API 29. CMake checks
  exactly that at configure time (cmake/ort_version_probe.cpp, compiled with these headers and run against this
  library: headers' ORT_API_VERSION <= the library's minor version, and GetApi(ORT_API_VERSION) != NULL), and the
  library checks it again when it loads (src/onnxruntime_backend.cpp).
- onnxruntime_aarch64 (only on request, for cross builds: `make cpp-aarch64`): the same for Linux aarch64, from the
  manylinux_2_28_aarch64 wheel of the same release; checked to be an aarch64 ELF with the symbol version VERS_1.32.0.
  JetPack 5 (glibc 2.31) and 6 (2.35) can load it.
  Both land in <dest>/onnxruntime-1.32.0-linux-<arch>/, laid out like the official release archive, so
  ONNXRUNTIME_ROOT can point at either: include/onnxruntime_c_api.h, lib/libonnxruntime.so -> libonnxruntime.so.1 ->
  libonnxruntime.so.1.32.0, LICENSE and ThirdPartyNotices.txt (from the wheel), VERSION_NUMBER and SOURCE.json
  (each file's package, version and sha256, and the headers' release and C API version).
- nlohmann/json 3.12.0 (header-only, private to the library: parses vae.json and engine sidecars) from the PyPI
  package nlohmann-json==3.12.0. Debian's nlohmann-json3-dev is used instead when CMake finds it installed.
- CUDA 12.6.68 runtime HEADERS only (no library), for the TensorRT compile check (CMake VAE_TENSORRT_COMPILE_CHECK):
  the include/ trees of the PyPI wheels nvidia-cuda-runtime-cu12 (cuda_runtime_api.h) and nvidia-cuda-nvcc-cu12
  (crt/host_defines.h, which cuda_runtime_api.h includes and only the nvcc wheel ships), merged into
  <root>/include. 12.6 is JetPack 6's CUDA. The x86_64 wheels are fetched on any host (the headers are the same).
  Fetched only on request (--only cuda_headers), never by a plain run.
Every download is pinned by version and sha256. Extraction goes to a temporary folder next to the destination and
is renamed into place only when complete, so an interrupted fetch never leaves a half-populated folder. Standard
library only (runs under any python3 with pip; npm must be on PATH for the ONNX Runtime headers).
Exit codes: 0 ok, 1 a download or check failed: one line on stderr naming the package, its version, the registry
client's command and exit code and the end of its output.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Callable

# The library: the Python runtime's release (constraints.txt), from its PyPI wheel, per architecture.
ORT_VERSION = "1.32.0"
ORT_WHEEL_PYTHON = "311"  # any CPython tag carries the same C library; one is pinned
ORT_WHEELS = {  # machine -> (wheel platform, wheel file, sha256)
    "x86_64": (
        "manylinux_2_28_x86_64",
        f"onnxruntime-{ORT_VERSION}-cp311-cp311-manylinux_2_28_x86_64.whl",
        "5a34fc4dfeb5a7b4a74c95dcba1e773d722abda720b474edf1b0c419dc6d163d",
    ),
    "aarch64": (
        "manylinux_2_28_aarch64",
        f"onnxruntime-{ORT_VERSION}-cp311-cp311-manylinux_2_28_aarch64.whl",
        "2303372a85299b6757b0e11e1cbf13e410ddf7e10c37f4b37e99d1c90e7daf7c",
    ),
}
ORT_WHEEL_LIB = f"onnxruntime/capi/libonnxruntime.so.{ORT_VERSION}"
ORT_WHEEL_NOTICES = ("onnxruntime/LICENSE", "onnxruntime/ThirdPartyNotices.txt")
_ELF_MACHINES = {"x86_64": 62, "aarch64": 183}  # EM_X86_64, EM_AARCH64

# The headers: the newest complete official set on a reachable registry (see the docstring), C API 29.
ORT_HEADERS_VERSION = "1.29.0"
ORT_HEADERS_NPM = "com.github.asus4.onnxruntime@0.4.9"
ORT_HEADERS_NPM_SHA256 = "e59788788818fdde1b2e522e766a21ba0f7d8391de55737abf81e32cc801785d"
ORT_HEADER_DIR = "package/Plugins/iOS~/onnxruntime.xcframework/ios-arm64/onnxruntime.framework/Headers/"
ORT_REQUIRED_HEADERS = ("onnxruntime_c_api.h", "onnxruntime_cxx_api.h", "onnxruntime_cxx_inline.h")

NLOHMANN_VERSION = "3.12.0"
NLOHMANN_WHEEL = f"nlohmann_json-{NLOHMANN_VERSION}-py3-none-any.whl"
NLOHMANN_SHA256 = "5f6132720fb25d0d70bf0742f8397b49a540dcc193e7312a914f6aa49f054810"
NLOHMANN_PREFIX = "nlohmann_json/include/nlohmann/"

CUDA_VERSION = "12.6.68"
CUDA_PLATFORM = "manylinux2014_x86_64"
CUDA_WHEELS = (  # (PyPI name, wheel file, sha256, the include/ folder inside the wheel)
    (
        "nvidia-cuda-runtime-cu12",
        f"nvidia_cuda_runtime_cu12-{CUDA_VERSION}-py3-none-{CUDA_PLATFORM}.whl",
        "846987485889786d257f6d7bdcf7544a36452936514e20dd710527b896c0fe12",
        "nvidia/cuda_runtime/include/",
    ),
    (
        "nvidia-cuda-nvcc-cu12",
        f"nvidia_cuda_nvcc_cu12-{CUDA_VERSION}-py3-none-{CUDA_PLATFORM}.whl",
        "3999aa4a42ac8723c09a8aafd06bc4a6ec1a0b05c53bc96c8d6cf195e84f6935",
        "nvidia/cuda_nvcc/include/",
    ),
)
CUDA_REQUIRED_HEADERS = ("cuda_runtime_api.h", "crt/host_defines.h")

DEFAULT_DEST = Path(__file__).resolve().parents[3] / "third_party"


class FetchError(RuntimeError):
    pass


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _run(cmd: list[str], cwd: Path, what: str) -> None:
    """Run a registry client; on failure a FetchError saying what was fetched (`what`: package, version, registry),
    the command, its exit code and the end of its output (or that it printed nothing)."""
    try:
        proc = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    except FileNotFoundError:
        raise FetchError(f"{what}: `{cmd[0]}` is not on PATH; it is needed to run: {' '.join(cmd)}") from None
    if proc.returncode != 0:
        lines = [line.strip() for line in proc.stdout.splitlines() if line.strip()]
        # The client's error lines (npm: code, syscall, the failed request; pip: what it could not find), without
        # stack frames; else the end of what it printed.
        errors = [
            line for line in lines if "error" in line.lower() and not line.split("error", 1)[-1].startswith("     at ")
        ]
        said = " | ".join(errors[:4] if errors else lines[-4:]) or "(it printed nothing)"
        raise FetchError(f"{what}: `{' '.join(cmd)}` failed with exit code {proc.returncode}: {said}")


def _check_sha(path: Path, expected: str) -> None:
    actual = _sha256(path)
    if actual != expected:
        raise FetchError(f"{path.name}: sha256 {actual}, expected {expected} (the registry served another file)")


def _pip_wheels(wheels: list[tuple[str, str, str]], work: Path, *extra: str) -> list[Path]:
    """`pip download --no-deps` each (requirement, wheel file, sha256) into `work`; the wheel paths, sha256-checked."""
    reqs = [req for req, _, _ in wheels]
    what = f"downloading {', '.join(reqs)} ({' '.join(extra) or 'any platform'}) from PyPI (pip's configured index)"
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            *reqs,
            "--no-deps",
            "--only-binary=:all:",
            *extra,
            "--disable-pip-version-check",
            "-q",
            "-d",
            str(work),
        ],
        cwd=work,
        what=what,
    )
    out = []
    for req, name, sha in wheels:
        wheel = work / name
        if not wheel.is_file():
            found = sorted(p.name for p in work.glob("*.whl"))
            raise FetchError(f"pip download {req} did not produce {name} (got: {', '.join(found) or 'nothing'})")
        _check_sha(wheel, sha)
        out.append(wheel)
    return out


def _extract_tree(wheel: Path, prefix: str, dest: Path, keep: Callable[[str], bool]) -> None:
    """Copy the wheel's members under `prefix` that `keep` accepts to `dest`, keeping their paths below `prefix`."""
    with zipfile.ZipFile(wheel) as z:
        for member in z.namelist():
            if member.startswith(prefix) and keep(member):
                target = dest / member[len(prefix) :]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(z.read(member))


def _install(tmp: Path, final: Path) -> Path:
    """Move a completed tmp folder to its final name (replacing an older, incomplete or stale copy)."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def fetch_nlohmann(dest: Path) -> Path:
    final = dest / f"nlohmann_json-{NLOHMANN_VERSION}"
    if (final / "SOURCE.json").is_file():
        return final
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest, prefix=".fetch-json-") as work:
        work = Path(work)
        [wheel] = _pip_wheels([(f"nlohmann-json=={NLOHMANN_VERSION}", NLOHMANN_WHEEL, NLOHMANN_SHA256)], work)
        out = work / "root"
        _extract_tree(wheel, NLOHMANN_PREFIX, out / "include" / "nlohmann", lambda m: m.endswith(".hpp"))
        if not (out / "include" / "nlohmann" / "json.hpp").is_file():
            raise FetchError(f"{NLOHMANN_WHEEL}: no nlohmann/json.hpp inside (layout changed?)")
        (out / "SOURCE.json").write_text(
            json.dumps(
                {"package": f"nlohmann-json=={NLOHMANN_VERSION}", "registry": "pypi", "sha256": NLOHMANN_SHA256},
                indent=2,
            )
            + "\n"
        )
        return _install(out, final)


def fetch_cuda_headers(dest: Path) -> Path:
    """<dest>/cuda-headers-<version>/include: CUDA runtime headers to compile (never link) the TensorRT backend."""
    final = dest / f"cuda-headers-{CUDA_VERSION}"
    if (final / "SOURCE.json").is_file():
        return final
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest, prefix=".fetch-cuda-") as work:
        work = Path(work)
        wheels = _pip_wheels(
            [(f"{name}=={CUDA_VERSION}", w, sha) for name, w, sha, _ in CUDA_WHEELS], work, "--platform", CUDA_PLATFORM
        )
        out = work / "root"
        (out / "include").mkdir(parents=True)
        for wheel, (*_, prefix) in zip(wheels, CUDA_WHEELS, strict=True):
            _extract_tree(wheel, prefix, out / "include", lambda m: not m.endswith(("/", ".py")))
        missing = [h for h in CUDA_REQUIRED_HEADERS if not (out / "include" / h).is_file()]
        if missing:
            raise FetchError(
                f"the CUDA {CUDA_VERSION} wheels lack include/{', include/'.join(missing)} (layout changed?)"
            )
        (out / "SOURCE.json").write_text(
            json.dumps(
                {
                    "packages": [f"{name}=={CUDA_VERSION}" for name, *_ in CUDA_WHEELS],
                    "registry": "pypi",
                    "platform": CUDA_PLATFORM,
                    "sha256": {w: sha for _, w, sha, _ in CUDA_WHEELS},
                    "contents": "headers only (the wheels' include/ trees)",
                },
                indent=2,
            )
            + "\n"
        )
        return _install(out, final)


def _npm_pack(spec: str, sha256: str, work: Path, what: str) -> Path:
    """`npm pack SPEC` into a new folder `work` (npm's cache makes a repeat cheap): the tarball, sha256-checked."""
    work.mkdir(parents=True)
    try:
        _run(["npm", "pack", spec, "--loglevel=error"], cwd=work, what=what)
    except FetchError as e:
        raise FetchError(f"{e} [npm registry in use: {_npm_registry()}]") from None
    tgz = next(work.glob("*.tgz"), None)
    if tgz is None:
        raise FetchError(f"{what}: npm pack {spec} produced no tarball")
    _check_sha(tgz, sha256)
    return tgz


def _npm_registry() -> str:
    try:
        proc = subprocess.run(
            ["npm", "config", "get", "registry"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            timeout=60,
        )
        return proc.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown (npm config get registry failed)"


def _ort_headers(work: Path, include: Path) -> list[str]:
    """ONNX Runtime's C/C++ headers (release ORT_HEADERS_VERSION) into `include`; their names."""
    what = f"fetching the ONNX Runtime {ORT_HEADERS_VERSION} C/C++ headers (npm package {ORT_HEADERS_NPM})"
    names = []
    with tarfile.open(_npm_pack(ORT_HEADERS_NPM, ORT_HEADERS_NPM_SHA256, work, what), "r:gz") as tar:
        for m in tar:
            if m.isfile() and m.name.startswith(ORT_HEADER_DIR) and m.name.endswith(".h"):
                name = m.name[len(ORT_HEADER_DIR) :]
                src = tar.extractfile(m)
                assert src is not None
                (include / name).write_bytes(src.read())
                names.append(name)
    missing = [h for h in ORT_REQUIRED_HEADERS if h not in names]
    if missing:
        raise FetchError(f"{ORT_HEADERS_NPM}: the tarball lacks {', '.join(missing)} (layout changed?)")
    return sorted(names)


def _header_api_version(include: Path) -> int:
    text = (include / "onnxruntime_c_api.h").read_text(errors="replace")
    match = re.search(r"^#define ORT_API_VERSION (\d+)", text, re.M)
    if not match:
        raise FetchError(f"{include / 'onnxruntime_c_api.h'}: no #define ORT_API_VERSION")
    return int(match.group(1))


def _fetch_onnxruntime_for(machine: str, dest: Path) -> Path:
    """<dest>/onnxruntime-<version>-linux-<machine>: the PyPI wheel's library + the npm headers (see the docstring)."""
    final = dest / f"onnxruntime-{ORT_VERSION}-linux-{machine}"
    if (final / "SOURCE.json").is_file():
        return final
    platform_tag, wheel_name, wheel_sha = ORT_WHEELS[machine]
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest, prefix=f".fetch-ort-{machine}-") as work:
        work = Path(work)
        out = work / "root"
        (out / "include").mkdir(parents=True)
        (out / "lib").mkdir()
        headers = _ort_headers(work / "npm", out / "include")
        api = _header_api_version(out / "include")
        (work / "pypi").mkdir()
        [wheel] = _pip_wheels(
            [(f"onnxruntime=={ORT_VERSION}", wheel_name, wheel_sha)],
            work / "pypi",
            "--platform",
            platform_tag,
            "--python-version",
            ORT_WHEEL_PYTHON,
        )
        lib = out / "lib" / f"libonnxruntime.so.{ORT_VERSION}"
        with zipfile.ZipFile(wheel) as z:
            try:
                lib.write_bytes(z.read(ORT_WHEEL_LIB))
                for member in ORT_WHEEL_NOTICES:
                    (out / Path(member).name).write_bytes(z.read(member))
            except KeyError as e:
                raise FetchError(f"{wheel_name}: no {e.args[0]} inside (layout changed?)") from None
        data = lib.read_bytes()
        elf = int.from_bytes(data[18:20], "little") if data[:4] == b"\x7fELF" else None
        versioned = f"VERS_{ORT_VERSION}".encode() in data
        if elf != _ELF_MACHINES[machine] or not versioned:
            raise FetchError(
                f"{wheel_name}: {ORT_WHEEL_LIB} is not a {machine} ONNX Runtime {ORT_VERSION} library "
                f"(ELF machine {elf}, expected {_ELF_MACHINES[machine]}; symbol version "
                f"VERS_{ORT_VERSION} {'present' if versioned else 'absent'})"
            )
        lib.chmod(0o755)
        os.symlink(lib.name, out / "lib" / "libonnxruntime.so.1")
        os.symlink("libonnxruntime.so.1", out / "lib" / "libonnxruntime.so")
        (out / "VERSION_NUMBER").write_text(ORT_VERSION + "\n")
        (out / "SOURCE.json").write_text(
            json.dumps(
                {
                    "onnxruntime": ORT_VERSION,
                    "platform": f"linux-{machine}",
                    "library": {
                        "package": f"onnxruntime=={ORT_VERSION}",
                        "registry": "pypi",
                        "wheel": wheel_name,
                        "sha256": wheel_sha,
                        "file": ORT_WHEEL_LIB,
                        "license": "MIT",
                    },
                    "headers": {
                        "package": ORT_HEADERS_NPM,
                        "registry": "npm",
                        "sha256": ORT_HEADERS_NPM_SHA256,
                        "onnxruntime": ORT_HEADERS_VERSION,
                        "c_api_version": api,
                        "files": headers,
                    },
                    "abi": f"headers of C API {api} with the {ORT_VERSION} library: ONNX Runtime's C API is append-only; "
                    "CMake's probe checks that the library serves API version "
                    f"{api} (cmake/ort_version_probe.cpp)",
                },
                indent=2,
            )
            + "\n"
        )
        return _install(out, final)


def fetch_onnxruntime(dest: Path) -> Path:
    """ONNX Runtime for this machine (x86_64, or aarch64 when building natively on a Jetson)."""
    machine = platform.machine()
    if machine not in ORT_WHEELS:
        raise FetchError(
            f"no ONNX Runtime {ORT_VERSION} wheel is pinned for {machine} (only "
            f"{', '.join(sorted(ORT_WHEELS))}); pass -DONNXRUNTIME_ROOT=<folder with include/ and lib/>"
        )
    return _fetch_onnxruntime_for(machine, dest)


def fetch_onnxruntime_aarch64(dest: Path) -> Path:
    """ONNX Runtime for Linux aarch64 (cross builds: make cpp-aarch64)."""
    return _fetch_onnxruntime_for("aarch64", dest)


FETCHERS = {"onnxruntime": fetch_onnxruntime, "nlohmann_json": fetch_nlohmann, "cuda_headers": fetch_cuda_headers}
ON_REQUEST = {"cuda_headers"}  # not needed by the ordinary build: fetched only when named with --only
FETCHERS["onnxruntime_aarch64"] = fetch_onnxruntime_aarch64  # cross builds (make cpp-aarch64)
ON_REQUEST.add("onnxruntime_aarch64")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dest", type=Path, default=DEFAULT_DEST, help=f"destination folder (default {DEFAULT_DEST})")
    p.add_argument("--only", choices=sorted(FETCHERS), action="append", help="fetch only this (repeatable)")
    p.add_argument("--print-root", action="store_true", help="print '<name>=<folder>' per fetched dependency")
    args = p.parse_args(argv)
    try:
        for name in args.only or sorted(set(FETCHERS) - ON_REQUEST):
            root = FETCHERS[name](args.dest.resolve())
            if args.print_root:
                print(f"{name}={root}")
    except (FetchError, OSError, tarfile.TarError, zipfile.BadZipFile) as e:
        print(f"fetch_deps: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
