#!/usr/bin/env python3
"""Fetch the C++ runtime's third-party build inputs from package registries, at build time (never committed).

    python3 runtime/cpp/scripts/fetch_deps.py [--dest third_party] [--only onnxruntime|nlohmann_json] [--print-root]

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
        _run([sys.executable, "-m", "pip", "download", f"nlohmann-json=={NLOHMANN_VERSION}", "--no-deps",
              "--only-binary=:all:", "--disable-pip-version-check", "-q", "-d", str(work)], cwd=work)
        wheel = work / NLOHMANN_WHEEL
        if not wheel.is_file():
            raise FetchError(f"pip download nlohmann-json=={NLOHMANN_VERSION} did not produce {NLOHMANN_WHEEL}")
        _check_sha(wheel, NLOHMANN_SHA256)
        out = work / "root"
        with zipfile.ZipFile(wheel) as z:
            for name in z.namelist():
                if name.startswith(NLOHMANN_PREFIX) and name.endswith(".hpp"):
                    target = out / "include" / "nlohmann" / name[len(NLOHMANN_PREFIX):]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(z.read(name))
        if not (out / "include" / "nlohmann" / "json.hpp").is_file():
            raise FetchError(f"{NLOHMANN_WHEEL}: no nlohmann/json.hpp inside (layout changed?)")
        (out / "SOURCE.json").write_text(json.dumps(
            {"package": f"nlohmann-json=={NLOHMANN_VERSION}", "registry": "pypi", "sha256": NLOHMANN_SHA256},
            indent=2) + "\n")
        return _install(out, final)


FETCHERS = {"onnxruntime": fetch_onnxruntime, "nlohmann_json": fetch_nlohmann}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dest", type=Path, default=DEFAULT_DEST, help=f"destination folder (default {DEFAULT_DEST})")
    p.add_argument("--only", choices=sorted(FETCHERS), action="append", help="fetch only this (repeatable)")
    p.add_argument("--print-root", action="store_true", help="print '<name>=<folder>' per fetched dependency")
    args = p.parse_args(argv)
    try:
        for name in args.only or sorted(FETCHERS):
            root = FETCHERS[name](args.dest.resolve())
            if args.print_root:
                print(f"{name}={root}")
    except (FetchError, OSError, tarfile.TarError, zipfile.BadZipFile) as e:
        print(f"fetch_deps: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
