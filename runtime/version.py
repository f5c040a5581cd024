"""vae-deploy's version. pyproject.toml's [project] version is its one source.

Python reads it from the installed distribution's metadata (importlib.metadata), which pip writes from pyproject.toml
when it installs the project (`make venv` reinstalls whenever pyproject.toml changes; after editing the version by
hand elsewhere, `pip install -e .` again). The C++ runtime's CMake reads pyproject.toml itself
(runtime/cpp/cmake/VaeVersion.cmake). tests/test_version.py checks that all of them agree.

From a source checkout that is not installed (no metadata), the version is read from that checkout's pyproject.toml;
with neither, package_version() raises VersionError rather than invent one.
"""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

from .errors import VaeError

DISTRIBUTION = "vae-deploy"
PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


class VersionError(VaeError, RuntimeError):
    """No version could be found: the distribution is not installed and there is no readable pyproject.toml."""


def pyproject_version(path: str | Path = PYPROJECT) -> str:
    """The [project] version of a pyproject.toml, read without tomllib (Python 3.10 on JetPack has none)."""
    text = Path(path).read_text(encoding="utf-8").replace("\r", "")
    m = re.search(r"^\[project\][ \t]*(?:#[^\n]*)?$(.*?)(?=^\[|\Z)", text, re.M | re.S)  # up to the next table
    v = m and re.search(r"^version[ \t]*=[ \t]*\"([^\"\n]*)\"", m.group(1), re.M)
    if not v:
        raise VersionError(f'{path}: no version = "..." in its [project] table')
    return v.group(1)


def package_version() -> str:
    """The installed vae-deploy's version; from a source checkout that is not installed, its pyproject.toml's."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        pass
    try:
        return pyproject_version()
    except (OSError, VersionError) as e:
        raise VersionError(
            f"{DISTRIBUTION} is not installed (pip install -e .) and its pyproject.toml could not give the version: {e}"
        ) from None
