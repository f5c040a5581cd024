"""Atomic file writes and hashing, shared by every package (standard library only).

Write to a temporary file in the target's folder, fsync, then rename over the target: a crash or Ctrl-C leaves
either the old file or the new one, never half of one.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `target`; on success it is renamed to `target`, on error it is removed."""
    import tempfile  # here, not at the top: loading a bundle never writes, and tempfile + shutil cost a cold start ~4 ms

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_dir_public(path: str | os.PathLike) -> None:
    """mkdtemp makes 0700 folders; give a finished output folder the usual permissions."""
    os.chmod(path, 0o777 & ~_umask())


def atomic_write(target: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call write(tmp_path), then move the result to `target` atomically. Returns `target` as a Path."""
    with atomic_path(target) as tmp:
        write(tmp)
    return Path(target)


def write_json_atomic(path: str | os.PathLike, data: Mapping[str, Any]) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n"))


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def replace_dir(new: str | os.PathLike, target: str | os.PathLike) -> None:
    """Move a finished folder into place; an old folder at `target` is removed only after the new one is there.

    `new` must be on the same file system as `target` (build it in a temporary folder next to it).
    """
    import shutil
    import tempfile

    new, target = Path(new), Path(target)
    if not target.exists():
        os.replace(new, target)
        return
    # A fresh empty folder to rename the old one onto (renaming a folder over an empty one is allowed on POSIX).
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
    os.replace(target, old)
    try:
        os.replace(new, target)
    except OSError:
        os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)
