#!/usr/bin/env python3
"""Fetch the C++ runtime's third-party build inputs from package registries, at build time (never committed).

    python3 runtime/cpp/scripts/fetch_deps.py [--dest third_party] [--only NAME]... [--print-root]
    (NAME: onnxruntime, nlohmann_json; on request only: cuda_headers)
    python3 runtime/cpp/scripts/fetch_deps.py --only onnxruntime_aarch64 --print-root   # cross builds: make cpp-aarch64

What and why (the registries this project may use are PyPI, npm and Debian; ONNX Runtime publishes its C/C++
release archive only on GitHub, and Debian has no ONNX Runtime package):

- ONNX Runtime 1.29.0, headers AND shared library, from the npm package com.github.asus4.onnxruntime@0.4.9 (an MIT
  repackaging of the official ONNX Runtime release binaries for Unity). The PyPI onnxruntime wheel has a library but
  no headers, and no npm package carries the headers of the wheel's version (1.32.0); this package is the only one
  with a complete header set, and it carries the Linux x64 library of the same release. Taking both from one package
  means the runtime is compiled and run against one and the same ONNX Runtime version; CMake checks that again
  (cmake/ort_version_probe.cpp). Laid out like the official release archive, so ONNXRUNTIME_ROOT can point at
  either: <root>/include/onnxruntime_c_api.h, <root>/lib/libonnxruntime.so -> libonnxruntime.so.1 -> .so.1.29.0.
- nlohmann/json 3.12.0 (header-only, private to the library: parses vae.json and engine sidecars) from the PyPI
  package nlohmann-json==3.12.0. Debian's nlohmann-json3-dev is used instead when CMake finds it installed.
- CUDA 12.6.68 runtime HEADERS only (no library), for the TensorRT compile check (CMake VAE_TENSORRT_COMPILE_CHECK):
  the include/ trees of the PyPI wheels nvidia-cuda-runtime-cu12 (cuda_runtime_api.h) and nvidia-cuda-nvcc-cu12
  (crt/host_defines.h, which cuda_runtime_api.h includes and only the nvcc wheel ships), merged into
  <root>/include. 12.6 is JetPack 6's CUDA. The x86_64 wheels are fetched on any host (the headers are the same).
  Fetched only on request (--only cuda_headers), never by a plain run.

- onnxruntime_aarch64 (only on request, for cross builds: `make cpp-aarch64`): ONNX Runtime 1.29.0 for Linux aarch64
  (glibc), the same release: the library from Microsoft's npm package onnxruntime-node@1.29.0
  (bin/napi-v6/linux/arm64/libonnxruntime.so.1; needs glibc >= 2.28 and GLIBCXX_3.4.22, which JetPack 5 and 6 have),
  the headers from com.github.asus4.onnxruntime@0.4.9 as above (onnxruntime-node carries no C headers). Both pinned
  by sha256; the library is checked to be an aarch64 ELF exporting the symbol version VERS_1.29.0. Laid out like the
  official onnxruntime-linux-aarch64-1.29.0.tgz, in <dest>/onnxruntime-1.29.0-linux-aarch64/.
Every download is pinned by version and sha256. Extraction goes to a temporary folder next to the destination and
is renamed into place only when complete, so an interrupted fetch never leaves a half-populated folder. Standard
library only (runs under any python3 with pip; npm must be on PATH for ONNX Runtime).
Exit codes: 0 ok, 1 a download or check failed (one-line message on stderr).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Callable

ORT_VERSION = "1.29.0"
ORT_NPM = "com.github.asus4.onnxruntime@0.4.9"
ORT_NPM_SHA256 = "e59788788818fdde1b2e522e766a21ba0f7d8391de55737abf81e32cc801785d"
# The platform-independent public headers ship inside the package's iOS framework slice; the Linux library in
# Plugins/Linux/x64. Both come from the same ONNX Runtime release (the package README names it).
ORT_HEADER_DIR = "package/Plugins/iOS~/onnxruntime.xcframework/ios-arm64/onnxruntime.framework/Headers/"
ORT_LINUX_LIBS = {"x86_64": "package/Plugins/Linux/x64/"}
ORT_LICENSE = "package/LICENSE"

NLOHMANN_VERSION = "3.12.0"
NLOHMANN_WHEEL = f"nlohmann_json-{NLOHMANN_VERSION}-py3-none-any.whl"
NLOHMANN_SHA256 = "5f6132720fb25d0d70bf0742f8397b49a540dcc193e7312a914f6aa49f054810"
NLOHMANN_PREFIX = "nlohmann_json/include/nlohmann/"

CUDA_VERSION = "12.6.68"
CUDA_PLATFORM = "manylinux2014_x86_64"
CUDA_WHEELS = (  # (PyPI name, wheel file, sha256, the include/ folder inside the wheel)
    ("nvidia-cuda-runtime-cu12", f"nvidia_cuda_runtime_cu12-{CUDA_VERSION}-py3-none-{CUDA_PLATFORM}.whl",
     "846987485889786d257f6d7bdcf7544a36452936514e20dd710527b896c0fe12", "nvidia/cuda_runtime/include/"),
    ("nvidia-cuda-nvcc-cu12", f"nvidia_cuda_nvcc_cu12-{CUDA_VERSION}-py3-none-{CUDA_PLATFORM}.whl",
     "3999aa4a42ac8723c09a8aafd06bc4a6ec1a0b05c53bc96c8d6cf195e84f6935", "nvidia/cuda_nvcc/include/"),
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


def _run(cmd: list[str], cwd: Path) -> None:
    try:
        proc = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    except FileNotFoundError:
        raise FetchError(f"`{cmd[0]}` not found on PATH; it is needed to run: {' '.join(cmd)}") from None
    if proc.returncode != 0:
        tail = " | ".join(proc.stdout.strip().splitlines()[-3:])
        raise FetchError(f"`{' '.join(cmd)}` failed with exit code {proc.returncode}: {tail}")


def _check_sha(path: Path, expected: str) -> None:
    actual = _sha256(path)
    if actual != expected:
        raise FetchError(f"{path.name}: sha256 {actual}, expected {expected} (the registry served another file)")


def _pip_wheels(wheels: list[tuple[str, str, str]], work: Path, *extra: str) -> list[Path]:
    """`pip download --no-deps` each (requirement, wheel file, sha256) into `work`; the wheel paths, sha256-checked."""
    _run([sys.executable, "-m", "pip", "download", *(req for req, _, _ in wheels), "--no-deps", "--only-binary=:all:",
          *extra, "--disable-pip-version-check", "-q", "-d", str(work)], cwd=work)
    out = []
    for req, name, sha in wheels:
        wheel = work / name
        if not wheel.is_file():
            raise FetchError(f"pip download {req} did not produce {name}")
        _check_sha(wheel, sha)
        out.append(wheel)
    return out


def _extract_tree(wheel: Path, prefix: str, dest: Path, keep: Callable[[str], bool]) -> None:
    """Copy the wheel's members under `prefix` that `keep` accepts to `dest`, keeping their paths below `prefix`."""
    with zipfile.ZipFile(wheel) as z:
        for member in z.namelist():
            if member.startswith(prefix) and keep(member):
                target = dest / member[len(prefix):]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(z.read(member))


def _install(tmp: Path, final: Path) -> Path:
    """Move a completed tmp folder to its final name (replacing an older, incomplete or stale copy)."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def fetch_onnxruntime(dest: Path) -> Path:
    final = dest / f"onnxruntime-{ORT_VERSION}"
    if (final / "SOURCE.json").is_file():
        return final
    arch = platform.machine()
    if arch == "aarch64":  # a native build on a Jetson: the same release's aarch64 library
        return fetch_onnxruntime_aarch64(dest)
    if arch not in ORT_LINUX_LIBS:
        raise FetchError(f"no ONNX Runtime library for {arch} in {ORT_NPM}; on a Jetson use JetPack's ONNX Runtime "
                         "build or the release archive, and pass -DONNXRUNTIME_ROOT=<folder with include/ and lib/>")
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest, prefix=".fetch-ort-") as work:
        work = Path(work)
        _run(["npm", "pack", ORT_NPM, "--silent"], cwd=work)
        tgz = next(work.glob("*.tgz"), None)
        if tgz is None:
            raise FetchError(f"npm pack {ORT_NPM} produced no tarball")
        _check_sha(tgz, ORT_NPM_SHA256)
        out = work / "root"
        (out / "include").mkdir(parents=True)
        (out / "lib").mkdir()
        lib_dir = ORT_LINUX_LIBS[arch]
        found: dict[str, str] = {}
        with tarfile.open(tgz, "r:gz") as tar:
            for m in tar:
                if not m.isfile() or m.name.endswith(".meta"):
                    continue
                if m.name.startswith(ORT_HEADER_DIR) and m.name.endswith(".h"):
                    target = out / "include" / m.name[len(ORT_HEADER_DIR):]
                elif m.name.startswith(lib_dir) and m.name.endswith(".so"):
                    target = out / "lib" / m.name[len(lib_dir):]
                elif m.name == ORT_LICENSE:
                    target = out / "LICENSE"
                else:
                    continue
                src = tar.extractfile(m)
                assert src is not None
                with open(target, "wb") as f:
                    shutil.copyfileobj(src, f)
                found[m.name] = target.name
        if not (out / "include" / "onnxruntime_c_api.h").is_file() or not (out / "lib" / "libonnxruntime.so").is_file():
            raise FetchError(f"{ORT_NPM}: the tarball lacks onnxruntime_c_api.h or libonnxruntime.so (layout changed?)")
        # The release archive's layout: the real file carries the full version, the SONAME link the major.
        lib = out / "lib"
        os.replace(lib / "libonnxruntime.so", lib / f"libonnxruntime.so.{ORT_VERSION}")
        os.symlink(f"libonnxruntime.so.{ORT_VERSION}", lib / "libonnxruntime.so.1")
        os.symlink("libonnxruntime.so.1", lib / "libonnxruntime.so")
        (out / "VERSION_NUMBER").write_text(ORT_VERSION + "\n")
        (out / "SOURCE.json").write_text(json.dumps(
            {"package": ORT_NPM, "registry": "npm", "sha256": ORT_NPM_SHA256, "onnxruntime": ORT_VERSION,
             "files": found}, indent=2) + "\n")
        return _install(out, final)


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
        (out / "SOURCE.json").write_text(json.dumps(
            {"package": f"nlohmann-json=={NLOHMANN_VERSION}", "registry": "pypi", "sha256": NLOHMANN_SHA256},
            indent=2) + "\n")
        return _install(out, final)


def fetch_cuda_headers(dest: Path) -> Path:
    """<dest>/cuda-headers-<version>/include: CUDA runtime headers to compile (never link) the TensorRT backend."""
    final = dest / f"cuda-headers-{CUDA_VERSION}"
    if (final / "SOURCE.json").is_file():
        return final
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest, prefix=".fetch-cuda-") as work:
        work = Path(work)
        wheels = _pip_wheels([(f"{name}=={CUDA_VERSION}", w, sha) for name, w, sha, _ in CUDA_WHEELS], work,
                             "--platform", CUDA_PLATFORM)
        out = work / "root"
        (out / "include").mkdir(parents=True)
        for wheel, (*_, prefix) in zip(wheels, CUDA_WHEELS):
            _extract_tree(wheel, prefix, out / "include", lambda m: not m.endswith(("/", ".py")))
        missing = [h for h in CUDA_REQUIRED_HEADERS if not (out / "include" / h).is_file()]
        if missing:
            raise FetchError(f"the CUDA {CUDA_VERSION} wheels lack include/{', include/'.join(missing)} "
                             "(layout changed?)")
        (out / "SOURCE.json").write_text(json.dumps(
            {"packages": [f"{name}=={CUDA_VERSION}" for name, *_ in CUDA_WHEELS], "registry": "pypi",
             "platform": CUDA_PLATFORM, "sha256": {w: sha for _, w, sha, _ in CUDA_WHEELS},
             "contents": "headers only (the wheels' include/ trees)"}, indent=2) + "\n")
        return _install(out, final)


ORT_AARCH64_NPM = f"onnxruntime-node@{ORT_VERSION}"
ORT_AARCH64_NPM_SHA256 = "cfdfb45ec4044b1fdca43e5d2e180fb6817e649ff8ad1e0dfc90e18e51b67037"
ORT_AARCH64_LIB = "package/bin/napi-v6/linux/arm64/libonnxruntime.so.1"
_ELF_MACHINE_AARCH64 = 183  # EM_AARCH64


def _npm_pack(spec: str, sha256: str, work: Path) -> Path:
    """`npm pack SPEC` into a new folder `work` (npm's cache makes a repeat cheap): the tarball, sha256-checked."""
    work.mkdir(parents=True)
    _run(["npm", "pack", spec, "--silent"], cwd=work)
    tgz = next(work.glob("*.tgz"), None)
    if tgz is None:
        raise FetchError(f"npm pack {spec} produced no tarball")
    _check_sha(tgz, sha256)
    return tgz


def fetch_onnxruntime_aarch64(dest: Path) -> Path:
    """ONNX Runtime 1.29.0 for Linux aarch64 (cross builds): headers of the asus4 package, library of onnxruntime-node."""
    final = dest / f"onnxruntime-{ORT_VERSION}-linux-aarch64"
    if (final / "SOURCE.json").is_file():
        return final
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest, prefix=".fetch-ort-aarch64-") as work:
        work = Path(work)
        out = work / "root"
        (out / "include").mkdir(parents=True)
        (out / "lib").mkdir()
        headers = []
        with tarfile.open(_npm_pack(ORT_NPM, ORT_NPM_SHA256, work / "headers"), "r:gz") as tar:
            for m in tar:
                if m.isfile() and m.name.startswith(ORT_HEADER_DIR) and m.name.endswith(".h"):
                    (out / "include" / m.name[len(ORT_HEADER_DIR):]).write_bytes(tar.extractfile(m).read())
                    headers.append(m.name[len(ORT_HEADER_DIR):])
                elif m.isfile() and m.name == ORT_LICENSE:
                    (out / "LICENSE").write_bytes(tar.extractfile(m).read())
        if not (out / "include" / "onnxruntime_c_api.h").is_file():
            raise FetchError(f"{ORT_NPM}: the tarball lacks onnxruntime_c_api.h (layout changed?)")
        lib = out / "lib" / f"libonnxruntime.so.{ORT_VERSION}"
        with tarfile.open(_npm_pack(ORT_AARCH64_NPM, ORT_AARCH64_NPM_SHA256, work / "lib"), "r:gz") as tar:
            try:
                member = tar.getmember(ORT_AARCH64_LIB)
            except KeyError:
                raise FetchError(f"{ORT_AARCH64_NPM}: no {ORT_AARCH64_LIB} in the tarball (layout changed?)") from None
            with tar.extractfile(member) as src, open(lib, "wb") as f:
                shutil.copyfileobj(src, f)
        data = lib.read_bytes()
        machine = int.from_bytes(data[18:20], "little") if data[:4] == b"\x7fELF" else None
        versioned = f"VERS_{ORT_VERSION}".encode() in data
        if machine != _ELF_MACHINE_AARCH64 or not versioned:
            raise FetchError(f"{ORT_AARCH64_NPM}: {ORT_AARCH64_LIB} is not an aarch64 ONNX Runtime {ORT_VERSION} "
                             f"library (ELF machine {machine}, expected {_ELF_MACHINE_AARCH64}; symbol version "
                             f"VERS_{ORT_VERSION} {'present' if versioned else 'absent'})")
        os.symlink(lib.name, out / "lib" / "libonnxruntime.so.1")
        os.symlink("libonnxruntime.so.1", out / "lib" / "libonnxruntime.so")
        (out / "VERSION_NUMBER").write_text(ORT_VERSION + "\n")
        (out / "SOURCE.json").write_text(json.dumps(
            {"onnxruntime": ORT_VERSION, "platform": "linux-aarch64",
             "library": {"package": ORT_AARCH64_NPM, "registry": "npm", "sha256": ORT_AARCH64_NPM_SHA256,
                         "file": ORT_AARCH64_LIB, "license": "MIT"},
             "headers": {"package": ORT_NPM, "registry": "npm", "sha256": ORT_NPM_SHA256, "files": sorted(headers)}},
            indent=2) + "\n")
        return _install(out, final)


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
