"""Atomic file writes and hashing, shared by every package (standard library only).

Write to a temporary file in the target's folder, fsync, then rename over the target: a crash or Ctrl-C leaves
either the old file or the new one, never half of one.

Output folders (bundles, Triton repositories) are built in a temporary folder next to the target and swapped in by
replace_dir, which replaces only what the writer can prove it wrote (the files its manifest lists, with their
sha256) and refuses anything else, naming it. Temporary names carry the writer's pid, so the next run can tell a
dead run's leftovers from a live one's and clean them up (clean_stale, clean_stale_inside). Files staged under a
content-addressed name (write_staged) let a manifest be committed before a file it replaces is touched.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from .errors import VaeError


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `target`; on success it is renamed to `target`, on error it is removed."""
    import tempfile  # here, not at the top: loading a bundle never writes, and tempfile + shutil cost a cold start ~4 ms

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(target.name), suffix=".tmp", dir=target.parent)
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


# ----------------------------------------------------------------------------------------------- temporary names
#
# Every temporary file or folder this toolkit makes is named .<target name>.<pid>.<8 random chars>.tmp (a folder
# swapped out of the way: .old), next to its target. A later run can then tell its own leftovers from the user's
# files (the name pattern) and a dead run's from a live one's (the pid), and clean them up.

_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[a-z0-9_]{8}\.(?P<kind>tmp|old)$")
# Names of the versions before pids were recorded (mkstemp / mkdtemp's 8 random characters): stale only when old.
_LEGACY_RE = re.compile(r"^\.(?P<name>.+?)\.[a-z0-9_]{8}(?P<kind>\.tmp|\.old|)$")
# A legacy name counts as ours only for a file kind this toolkit writes (or .quantize.*): a user's own
# `.notes.20240101.tmp` has the same shape and must never be taken for a leftover.
_LEGACY_TARGETS = (".onnx", ".json", ".npz", ".plan", ".cache", ".pbtxt", ".py", ".data")
MANIFEST_NAMES = ("vae.json", "vae-triton.json")
LEGACY_STALE_SECONDS = 3600.0
# A variant or other file staged under a content-addressed name: <stem>.staged-<first 16 hex of its sha256><suffix>
_STAGED_RE = re.compile(r"^(?P<stem>.+)\.staged-(?P<sha>[0-9a-f]{16})(?P<suffix>\.[A-Za-z0-9]+)$")


def temp_prefix(name: str) -> str:
    return f".{name}.{os.getpid()}."


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def is_temp_name(name: str) -> bool:
    """A name this toolkit gives its temporary files and folders (current or legacy form)."""
    if _TEMP_RE.match(name):
        return True
    m = _LEGACY_RE.match(name)
    return bool(m and (m["kind"] or m["name"] == "quantize") and _legacy_ours(m, None))


def _legacy_ours(m: re.Match, name: str | None) -> bool:
    """A legacy-shaped name is ours for the target the caller names, else only for a file kind we write."""
    if name is not None:
        return m["name"] == name
    return m["name"] == "quantize" or m["name"].endswith(_LEGACY_TARGETS)


def stale_temp(path: Path, name: str | None = None) -> bool:
    """Is `path` a temporary file or folder of ours (for target `name`, if given) whose run is over?

    Current names carry the pid of the run that made them: stale when that process is gone. Legacy names (no pid):
    stale when untouched for LEGACY_STALE_SECONDS."""
    m = _TEMP_RE.match(path.name)
    if m:
        return (name is None or m["name"] == name) and not _pid_alive(int(m["pid"]))
    m = _LEGACY_RE.match(path.name)
    if m and (m["kind"] or m["name"] == "quantize") and _legacy_ours(m, name):
        try:
            return time.time() - path.lstat().st_mtime > LEGACY_STALE_SECONDS
        except OSError:
            return False
    return False


def _remove(path: Path) -> None:
    import shutil

    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def clean_stale(target: str | os.PathLike) -> list[Path]:
    """Recover from a run that was killed while writing `target`, before a new run starts. Returns what it removed.

    - `target` missing while a dead run's .<name>.<pid>.*.old exists: the swap was cut between its two renames (the
      fallback where an atomic exchange is not available); the old folder is put back, so nothing is lost.
    - every other temporary folder or file of a dead run next to `target` is removed.
    """
    target = Path(target)
    parent = target.parent
    if not parent.is_dir():
        return []
    stale = sorted(
        (p for p in parent.iterdir() if p.name.startswith(f".{target.name}.") and stale_temp(p, target.name)),
        key=lambda p: p.lstat().st_mtime,
    )
    # The folder that was at `target` when the run died: a swapped-out .old that holds something, one with a manifest
    # first (an empty .old of a run killed right after making it must never win), then the newest. The mtime alone
    # would not do: a renamed folder keeps its own.
    olds = [p for p in stale if p.name.endswith(".old") and p.is_dir() and any(p.iterdir())]
    olds.sort(key=lambda p: (any((p / m).is_file() for m in MANIFEST_NAMES), p.lstat().st_mtime))
    if olds and not os.path.lexists(target):
        os.rename(olds[-1], target)
        stale.remove(olds[-1])
    for p in stale:
        _remove(p)
    return stale


def clean_stale_inside(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files and folders that dead runs left inside `folder` (not recursive)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.iterdir() if p.name.startswith(".") and stale_temp(p)]
    for p in stale:
        _remove(p)
    return stale


# ----------------------------------------------------------------------------------------------- content-addressed staging


def staged_name(name: str, sha256: str) -> str:
    """decoder.fp16.onnx + sha256 -> decoder.fp16.staged-<16 hex>.onnx: a name no other content can have."""
    stem, dot, suffix = name.rpartition(".")
    return f"{stem}.staged-{sha256[:16]}.{suffix}" if dot else f"{name}.staged-{sha256[:16]}"


def staged_target(name: str) -> str | None:
    """The name a staged file stands in for (decoder.fp16.staged-<hex>.onnx -> decoder.fp16.onnx), else None."""
    m = _STAGED_RE.match(name)
    return f"{m['stem']}{m['suffix']}" if m else None


def is_provably_staged(path: str | os.PathLike) -> bool:
    """A staged file whose content still hashes to the prefix in its name: it can only have been written by us."""
    path = Path(path)
    m = _STAGED_RE.match(path.name)
    return bool(m) and path.is_file() and not path.is_symlink() and sha256_file(path).startswith(m["sha"])


def write_staged(folder: str | os.PathLike, name: str, write: Callable[[Path], None]) -> tuple[Path, str]:
    """write(tmp_path) in `folder`, then move the result to its content-addressed staged name (see staged_name)
    without touching `name` or any other file; returns (staged path, sha256)."""
    import tempfile

    folder = Path(folder)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(name), suffix=".tmp", dir=folder)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())
        sha = sha256_file(tmp_path)
        staged = folder / staged_name(name, sha)
        os.replace(tmp_path, staged)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
    return staged, sha


def link_or_copy_atomic(src: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Make `target` a file with `src`'s content, atomically (a hard link where the file system has them, else a
    copy); `src` stays."""
    import shutil

    src, target = Path(src), Path(target)

    def put(tmp: Path) -> None:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)

    with atomic_path(target) as tmp:
        put(tmp)
    return target


# ----------------------------------------------------------------------------------------------- output folders


class OutputError(VaeError, ValueError):
    """An output folder cannot be written or replaced as asked; the message names the folder and the files."""

    def __init__(self, message: str, files: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.files = files


Owned = Callable[[Path], Mapping[str, "str | None"]]


def _walk(root: Path) -> Iterator[str]:
    """Relative paths of the files and links under `root` (links are not followed; our temporary folders are
    not entered)."""
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath)
        for d in list(dirnames):
            if (base / d).is_symlink() or is_temp_name(d):
                dirnames.remove(d)
                if (base / d).is_symlink():
                    yield (base / d).relative_to(root).as_posix()
        for f in filenames:
            yield (base / f).relative_to(root).as_posix()


def foreign_files(target: str | os.PathLike, owned: Mapping[str, str | None], keep: Sequence[str] = ()) -> list[str]:
    """Files under `target` that the writer cannot prove it wrote, sorted.

    Proof: the path is in `owned` (from the manifest the writer left there) with the same sha256 (None: the manifest
    itself, proven by parsing), or it is a leftover of ours (a temporary name, a provably staged file). Paths under
    a `keep` entry are not looked at: they are carried into the new folder (see replace_dir)."""
    import posixpath

    target = Path(target)
    owned = {posixpath.normpath(k): v for k, v in owned.items()}
    out = []
    for rel in _walk(target):
        top = rel.split("/", 1)[0].rstrip("/")
        if top in keep:
            continue
        path = target / rel
        if rel in owned and path.is_file() and not path.is_symlink():
            want = owned[rel]
            if want is None or sha256_file(path) == want:
                continue
        elif not path.is_symlink() and path.is_file() and (is_temp_name(path.name) or is_provably_staged(path)):
            continue
        out.append(rel)
    return sorted(out)


def _describe(files: Sequence[str], limit: int = 12) -> str:
    shown = ", ".join(files[:limit])
    return shown + (f" and {len(files) - limit} more" if len(files) > limit else "")


def _real(target: str | os.PathLike) -> Path:
    """A --out that is a link to a folder means that folder: it is replaced there, and the link keeps pointing to it."""
    target = Path(target)
    return Path(os.path.realpath(target)) if target.is_symlink() else target


def check_output_dir(
    target: str | os.PathLike,
    owned: Owned,
    *,
    keep: Sequence[str] = (),
    what: str = "--out",
    manifest: str = "its manifest",
) -> None:
    """Before any work: `target` is absent, an empty folder, or a folder holding only what `owned` proves the writer
    wrote (plus `keep` entries); otherwise OutputError naming every other file."""
    shown, target = Path(target), _real(target)
    if os.path.lexists(target) and (target.is_symlink() or not target.is_dir()):
        raise OutputError(f"{what} {shown}: exists and is not a folder; refusing to replace it")
    if not target.is_dir():
        return
    foreign = foreign_files(target, owned(target), keep)
    if foreign:
        raise OutputError(
            f"{what} {shown}: refusing to replace it: {len(foreign)} file(s) there were not written by "
            f"this tool (not listed in {manifest} with a matching sha256): {_describe(foreign)}; move "
            f"them away or choose another {what}",
            tuple(foreign),
        )


def begin_output_dir(
    target: str | os.PathLike,
    owned: Owned,
    *,
    keep: Sequence[str] = (),
    what: str = "--out",
    manifest: str = "its manifest",
) -> Path:
    """Check `target` (check_output_dir), clean up after killed runs (clean_stale), and return a new empty
    temporary folder next to it to build the new content in; OutputError (one line) if that cannot be done."""
    import tempfile

    shown, target = Path(target), _real(target)
    try:
        clean_stale(target)
        check_output_dir(target, owned, keep=keep, what=what, manifest=manifest)
        target.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=temp_prefix(target.name), suffix=".tmp", dir=target.parent))
    except OSError as e:
        where = f"{e.strerror}: {e.filename}" if e.filename else str(e)
        raise OutputError(f"{what} {shown}: cannot write there ({where})") from None


def _carry(src: Path, dst: Path) -> None:
    """Copy the tree `src` to `dst` with hard links (copies where links are not possible); links stay links."""
    import shutil

    if src.is_symlink():
        os.symlink(os.readlink(src), dst)
    elif src.is_dir():
        dst.mkdir()
        shutil.copystat(src, dst)
        for child in src.iterdir():
            _carry(child, dst / child.name)
    else:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes
    import errno

    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # glibc < 2.28, musl without it
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):  # a file system without it
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def replace_dir(
    new: str | os.PathLike,
    target: str | os.PathLike,
    *,
    owned: Owned | None = None,
    keep: Sequence[str] = (),
    what: str = "--out",
    manifest: str = "its manifest",
) -> None:
    """Move a finished folder into place. An existing `target` is replaced only if it holds nothing but what
    `owned(target)` proves the writer wrote (checked again here: OutputError naming the others); each `keep` entry
    of it is carried into the new folder (hard links: a crash at any point leaves it in a folder that stays).

    The swap is one atomic exchange where the OS has it (Linux renameat2), so `target` is never missing; elsewhere
    two renames, and a run killed between them leaves the old folder as .<name>.<pid>.*.old, which clean_stale
    (called by begin_output_dir) puts back. `new` must be a folder next to `target` (begin_output_dir makes one).
    """
    import tempfile

    new, target = Path(new), _real(target)
    if not os.path.lexists(target):
        os.rename(new, target)
        return
    check_output_dir(target, owned or (lambda _t: {}), keep=keep, what=what, manifest=manifest)
    for entry in keep:
        if os.path.lexists(target / entry) and not os.path.lexists(new / entry):
            _carry(target / entry, new / entry)
    if _exchange(new, target):
        _remove(new)  # now the old folder
        return
    old = Path(tempfile.mkdtemp(prefix=temp_prefix(target.name), suffix=".old", dir=target.parent))
    os.replace(target, old)  # renaming a folder over an empty one is allowed on POSIX
    try:
        os.replace(new, target)
    except OSError:
        os.replace(old, target)
        raise
    _remove(old)
