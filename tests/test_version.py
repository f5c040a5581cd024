"""One version number: pyproject.toml's [project] version, and every reader of it agrees.

Python reads it from the installed metadata (runtime/version.py; export stamps it into the ONNX files and vae.json),
the C++ runtime's CMake from pyproject.toml (runtime/cpp/cmake/VaeVersion.cmake; the built library's vae_version() is
checked in tests/runtime/cpp/test_cpp_runtime.py). No other file may carry its own copy.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from runtime import version as V

REPO = Path(__file__).resolve().parents[1]
VERSION_CMAKE = REPO / "runtime" / "cpp" / "cmake" / "VaeVersion.cmake"

if sys.version_info >= (3, 11):
    import tomllib
else:  # JetPack's Python 3.10: runtime.version's own reader is then the only one
    tomllib = None


def toml_version() -> str:
    if tomllib is None:
        return V.pyproject_version(REPO / "pyproject.toml")
    with open(REPO / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["version"]


def cmake_version(pyproject: Path) -> subprocess.CompletedProcess:
    if shutil.which("cmake") is None:
        pytest.fail("cmake is not on PATH (the C++ runtime's build needs cmake >= 3.18)")
    return subprocess.run(
        ["cmake", f"-DVAE_PYPROJECT={pyproject}", "-P", str(VERSION_CMAKE)], capture_output=True, text=True, timeout=60
    )


def test_pyproject_version_is_semver():
    assert re.fullmatch(r"\d+\.\d+\.\d+", toml_version()), toml_version()


def test_installed_metadata_is_pyproject_version():
    """A stale install (pyproject.toml edited, not reinstalled; or a stale vae_deploy.egg-info beside it) fails here."""
    installed = metadata.version(V.DISTRIBUTION)
    assert installed == toml_version(), (
        f"installed {V.DISTRIBUTION} {installed} but pyproject.toml says {toml_version()}: reinstall "
        "(make venv, or pip install -e .)"
    )


def test_python_readers_agree():
    from export.to_onnx import PRODUCER_VERSION

    assert V.pyproject_version() == toml_version()
    assert V.package_version() == toml_version()
    assert PRODUCER_VERSION == toml_version()


def test_cmake_reads_pyproject():
    proc = cmake_version(REPO / "pyproject.toml")
    assert proc.returncode == 0, proc.stderr
    assert f"VAE_VERSION={toml_version()}" in proc.stdout + proc.stderr
    cmakelists = (REPO / "runtime" / "cpp" / "CMakeLists.txt").read_text()
    assert "include(cmake/VaeVersion.cmake)" in cmakelists
    assert re.search(r"project\(vae_runtime VERSION \$\{VAE_VERSION\}", cmakelists), "project() has its own version"


TRICKY = """[tool.other]
version = "9.9.9"

[project]  # the table that counts
name = "vae-deploy"
description = "version = \\"8.8.8\\" in a string is not the key"
version = "1.2.3"
dependencies = [
    "numpy>=1.24",
]

[project.optional-dependencies]
version = ["7.7.7"]
"""


@pytest.mark.parametrize("reader", ["python", "cmake"])
def test_readers_take_the_project_table_only(reader, tmp_path):
    p = tmp_path / "pyproject.toml"
    p.write_text(TRICKY)
    if reader == "python":
        assert V.pyproject_version(p) == "1.2.3"
    else:
        proc = cmake_version(p)
        assert proc.returncode == 0 and "VAE_VERSION=1.2.3" in proc.stdout + proc.stderr, proc.stderr


def test_cmake_refuses_a_version_it_cannot_use(tmp_path):
    p = tmp_path / "pyproject.toml"
    p.write_text('[project]\nname = "vae-deploy"\nversion = "1.2.0rc1"\n')
    proc = cmake_version(p)
    assert proc.returncode != 0 and "'1.2.0rc1' is not MAJOR.MINOR.PATCH" in " ".join(proc.stderr.split()), proc.stderr
    proc = cmake_version(tmp_path / "missing.toml")
    assert proc.returncode != 0 and "missing.toml: not found" in " ".join(proc.stderr.split()), proc.stderr


SKIP_DIRS = {".git", ".venv", ".venv-jetpack", "third_party", "runs", "node_modules", "__pycache__"}
SOURCE_SUFFIXES = {".py", ".c", ".h", ".cpp", ".hpp", ".cmake", ".in", ".toml", ".cfg", ".txt", ".json"}


def test_no_other_copy_of_the_version():
    """The version appears as a literal in pyproject.toml only (docs may mention it in prose)."""
    version = toml_version()
    literal = re.compile(rf"""(["']){re.escape(version)}\1|VERSION\s+{re.escape(version)}\b""")
    copies = []
    for root, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.startswith("build") and not d.endswith(".egg-info")]
        for name in files:
            path = Path(root, name)
            rel = path.relative_to(REPO)
            if (path.suffix not in SOURCE_SUFFIXES and name != "CMakeLists.txt") or rel == Path("pyproject.toml"):
                continue
            try:
                text = path.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            copies += [f"{rel}:{text.count(chr(10), 0, m.start()) + 1}" for m in literal.finditer(text)]
    assert not copies, f"version {version} written out in {copies}: read it from pyproject.toml instead"
