"""The pinned TensorRT binding wheels, stub libraries they can import against, and the driver subprocess.

`tensorrt-cu12-bindings` holds only the pybind11 module (`tensorrt_bindings/tensorrt.so`); it links libnvinfer,
libnvonnxparser and libnvinfer_plugin, which come from NVIDIA's own index and need a GPU driver. Importing the module
needs only the `extern "C"` factory symbols it references, so one stub library per needed soname (read from the .so
with readelf/nm, compiled with gcc at test time) exporting them with empty bodies is enough: they are never called,
because the driver never calls a real pybind11 method (proxy.py). Wheels are downloaded once with
`pip download --no-deps` into the git-ignored third_party/ and checked against the hashes below.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from runtime.files import sha256_file

REPO = Path(__file__).resolve().parents[4]
CACHE = REPO / "third_party" / "trt-api-wheels"
REPORT_MARK = "@@REPORT@@"

# (version, CPython tag) -> (wheel file, sha256), as published on PyPI for x86_64 Linux.
WHEELS: dict[tuple[str, str], tuple[str, str]] = {
    ("10.3.0", "cp310"): (
        "tensorrt_cu12_bindings-10.3.0-cp310-none-manylinux_2_17_x86_64.whl",
        "1d6e4cf08ef1f54f6fd44a33cf6b253050af2fc6e9a1d92e40e1436a1d858eb0",
    ),
    ("10.3.0", "cp311"): (
        "tensorrt_cu12_bindings-10.3.0-cp311-none-manylinux_2_17_x86_64.whl",
        "59ace22d7f2ca1e9dcde2cb0cb5916912cb3cd5a9d72dd7852be0160d9b3a0ee",
    ),
    ("10.3.0", "cp312"): (
        "tensorrt_cu12_bindings-10.3.0-cp312-none-manylinux_2_17_x86_64.whl",
        "f5c2582aeaa7f5628d2c4d4148a701ebe97be78f7ff3b46a617f0ee0cb5460f2",
    ),
    ("11.4.0.106", "cp310"): (
        "tensorrt_cu12_bindings-11.4.0.106-cp310-none-manylinux_2_28_x86_64.whl",
        "d9f927d7337c360c3947d99fc0db17c3b3b935e677237f0475c7b054f28d2540",
    ),
    ("11.4.0.106", "cp311"): (
        "tensorrt_cu12_bindings-11.4.0.106-cp311-none-manylinux_2_28_x86_64.whl",
        "e2ab48f316bbff6a7a44a30e94a9ceb0d2cf6645ff39feadecfa68d7cb7a94bf",
    ),
    ("11.4.0.106", "cp312"): (
        "tensorrt_cu12_bindings-11.4.0.106-cp312-none-manylinux_2_28_x86_64.whl",
        "6490518c9e072d57e0a815ad80b103596933efe776ffa61766ef31c25dbd8b39",
    ),
}
# Undefined symbols of the binding that the C/C++ runtime provides, not TensorRT.
_SYSTEM_SYMBOL = re.compile(
    r"^(_ITM_|__gmon_start__|__pthread_key_create|pthread_|dl(open|close|sym|error)$|_ZGTt|Py|_Py)"
)


class Unavailable(Exception):
    """Why the real bindings cannot be prepared here (the test skips with this reason)."""


def python_tag() -> str:
    return f"cp{sys.version_info.major}{sys.version_info.minor}"


def pinned_wheel(requirement: str, wheel: str, sha256: str, marker: str, cache: Path = CACHE) -> Path:
    """Download `requirement` once (pip download --no-deps) into `cache`, check the wheel file's sha256, extract it
    next to it and return that folder (`marker`, a path inside it, shows a finished extraction)."""
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / wheel
    if not path.is_file() or sha256_file(path) != sha256:
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "--disable-pip-version-check",
                "-d",
                str(cache),
                requirement,
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if r.returncode != 0 or not path.is_file():
            raise Unavailable(f"pip download {requirement} failed: {r.stderr.strip()[-500:]}")
        if sha256_file(path) != sha256:
            path.unlink()
            raise AssertionError(f"{wheel}: sha256 differs from the pinned {sha256}; the download was removed")
    out = cache / f"{wheel[:-4]}.{sha256[:12]}"
    if not (out / marker).exists():
        tmp = out.with_suffix(".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        with zipfile.ZipFile(path) as z:
            z.extractall(tmp)
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    return out


def bindings(version: str) -> Path:
    """The extracted wheel (a folder holding `tensorrt_bindings/`) for this interpreter; downloads it once."""
    key = (version, python_tag())
    if key not in WHEELS or not sys.platform.startswith("linux") or os.uname().machine != "x86_64":
        raise Unavailable(
            f"no pinned tensorrt-cu12-bindings=={version} wheel for {python_tag()} on "
            f"{sys.platform}/{os.uname().machine}"
        )
    name, sha = WHEELS[key]
    return pinned_wheel(f"tensorrt-cu12-bindings=={version}", name, sha, "tensorrt_bindings/tensorrt.so")


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise Unavailable(f"`{name}` is not installed (needed to build stub TensorRT libraries)")
    return path


def stub_libraries(extension: Path, out: Path) -> Path:
    """A folder with one stub shared library per TensorRT soname the extension needs, each exporting every
    non-system symbol the extension leaves undefined (trivial bodies; never called)."""
    dynamic = subprocess.run(
        [_tool("readelf"), "-d", str(extension)], capture_output=True, text=True, check=True
    ).stdout
    sonames = [s for s in re.findall(r"\(NEEDED\).*\[(.+?)\]", dynamic) if s.startswith("libnv")]
    undefined = subprocess.run(
        [_tool("nm"), "-D", "--undefined-only", str(extension)], capture_output=True, text=True, check=True
    ).stdout
    symbols = sorted({ln.split()[-1] for ln in undefined.splitlines() if ln.strip()})
    symbols = [s for s in symbols if "@" not in s and not _SYSTEM_SYMBOL.match(s)]
    if not sonames or not symbols:
        raise AssertionError(f"{extension}: found no TensorRT libraries ({sonames}) or symbols ({symbols}) to stub")
    out.mkdir(parents=True, exist_ok=True)
    src = out / "stub.c"
    src.write_text(
        "/* generated by tests/export/tensorrt/trt_api/wheels.py: never called */\n"
        + "".join(f"void *{s}(void) {{ return 0; }}\n" for s in symbols)
    )
    for soname in sonames:
        subprocess.run(
            [_tool("gcc"), "-shared", "-fPIC", "-o", str(out / soname), f"-Wl,-soname,{soname}", str(src)],
            check=True,
            capture_output=True,
            text=True,
        )
    (out / "symbols.json").write_text(json.dumps({"sonames": sonames, "symbols": symbols}))
    return out


def run_driver(
    *,
    real: str,
    as_name: str,
    bundle: Path,
    work: Path,
    pythonpath: list[Path] = (),
    ld_path: Path | None = None,
    control: bool = False,
    timeout: float = 300,
) -> dict:
    """Run drive.py in a fresh interpreter and return its JSON report (fails with the driver's output)."""
    env = dict(os.environ)
    paths = [*map(str, pythonpath), str(REPO), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    if ld_path is not None:
        env["LD_LIBRARY_PATH"] = os.pathsep.join([str(ld_path), env.get("LD_LIBRARY_PATH", "")]).rstrip(os.pathsep)
    env.setdefault("OMP_NUM_THREADS", "1")
    work.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "tests.export.tensorrt.trt_api.drive",
        "--real",
        real,
        "--as",
        as_name,
        "--bundle",
        str(bundle),
        "--work",
        str(work),
    ] + (["--control"] if control else [])
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0 or REPORT_MARK not in r.stdout:
        raise AssertionError(f"driver for {real} failed (exit {r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}")
    return json.loads(r.stdout.split(REPORT_MARK, 1)[1])
