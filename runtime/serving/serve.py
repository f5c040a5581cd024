"""Serve a bundle through a real Triton Inference Server on this machine: encode and decode with dynamic batching.

    python -m runtime.serving.serve BUNDLE [--host 127.0.0.1] [--port 8000] [--grpc-port 8001] [--metrics-port 8002]
        [--max-batch 64] [--queue-delay-us 100] [--no-dynamic-batching] [--instances 1] [--threads N]
    python -m runtime.serving.serve --install-server WHEEL|DIR  # unpack tritonserver from an nvidia-pytriton wheel

runtime.serving.repository writes a `python` model repository (vae_encoder, vae_decoder: runtime.load hosted by
runtime/serving/triton_model.py) into a temporary folder; `tritonserver` serves it over HTTP and gRPC (KServe v2).
A malformed request gets an error response and the server keeps serving. HTTP goes through runtime/serving/guard.py,
which refuses what would crash Triton 2.51; a supervisor thread restarts a tritonserver that dies (backoff 0.5 s
doubling to 30 s; 5 failed starts in a row: exit 1; HTTP answers 503 meanwhile), and tritonserver dies with this
process (PR_SET_PDEATHSIG). Ctrl-C / SIGTERM stop it and remove the repository; the server log (--log, default
tritonserver.log in the temporary work folder) is kept, its path printed at start and at stop. Triton's metrics count
client requests only: the models warm up inside their own initialize (runtime/serving/triton_model.py), before
Triton serves and counts. tritonserver is found in $VENV/triton
(the server of the pinned nvidia-pytriton wheel, unpacked by --install-server; the PyTriton library pins numpy<2, so
it is not pip-installed), $VAE_TRITONSERVER (a folder with bin/tritonserver and backends/) or an installed pytriton.
Exit codes: 0 stopped on request, 1 the server failed (its log tail is printed), 2 bad input or no server here.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ..cli import HelpFormatter, epilog, prog_name
from ..errors import VaeError
from ..files import sha256_file
from .guard import DEFAULT_MAX_CONCURRENT, DEFAULT_MAX_REQUEST_BYTES, HttpFront, Upstream
from .repository import RepoOptions, parse_batches, write_repository

PYTRITON_VERSION = "0.7.0"
# sha256 of nvidia_pytriton-0.7.0-py3-none-manylinux_2_35_x86_64.whl as published on PyPI
PYTRITON_WHEEL_SHA256 = "21f063ff93bb426d0c06b7a55e7eb9efcfe62c0dddd9a908e9877e18710128df"
ENV_VAR = "VAE_TRITONSERVER"
INSTALL_DIR = "triton"  # under sys.prefix (the virtual environment)
STUB = "triton_python_backend_stub"
DEFAULT_STARTUP_TIMEOUT = 120.0
PR_SET_PDEATHSIG = 1  # linux/prctl.h

log = logging.getLogger("runtime.serving.serve")


class ServerUnavailableError(VaeError, RuntimeError):
    """No usable tritonserver on this machine (not installed, no stub for this Python); the message says how to fix."""


class ServerError(VaeError, RuntimeError):
    """tritonserver failed to start or exited; the message carries the tail of its log."""


# ----------------------------------------------------------------------------------------------- the distribution


@dataclass(frozen=True)
class TritonDist:
    """A Triton server installation: home/bin/tritonserver, home/backends (python/ with a stub), extra library dir."""

    home: Path
    libs: Path | None = None
    stubs: Path | None = None  # pytriton layout: stubs per Python version, copied into backends/python at start

    @property
    def binary(self) -> Path:
        return self.home / "bin" / "tritonserver"

    @property
    def stub(self) -> Path | None:
        """The Python-backend stub for this Python: in backends/python, or among the per-version stubs."""
        placed = self.home / "backends" / "python" / STUB
        if placed.is_file():
            return placed
        if self.stubs is not None:
            candidate = self.stubs / f"{sys.version_info[0]}.{sys.version_info[1]}" / STUB
            if candidate.is_file():
                return candidate
        return None


def _pytriton_layout(home: Path) -> TritonDist:
    """home = .../pytriton/tritonserver (a wheel's layout): libraries in .../nvidia_pytriton.libs."""
    libs = home.parent.parent / "nvidia_pytriton.libs"
    stubs = home / "python_backend_stubs"
    return TritonDist(home, libs if libs.is_dir() else None, stubs if stubs.is_dir() else None)


def find_server(explicit: str | os.PathLike | None = None) -> TritonDist:
    """The first usable server of: `explicit`, $VAE_TRITONSERVER, $VENV/triton (make venv), an installed pytriton."""
    tried = []
    candidates: list[tuple[str, Path]] = []
    if explicit:  # asked for one: only that one
        candidates.append(("--tritonserver", Path(explicit)))
    else:
        if os.environ.get(ENV_VAR):
            candidates.append((f"${ENV_VAR}", Path(os.environ[ENV_VAR])))
        candidates.append(("make venv", Path(sys.prefix) / INSTALL_DIR / "pytriton" / "tritonserver"))
        try:
            import importlib.util

            spec = importlib.util.find_spec("pytriton")  # locates the package without importing it
            if spec is not None and spec.submodule_search_locations:
                candidates.append(("nvidia-pytriton", Path(list(spec.submodule_search_locations)[0]) / "tritonserver"))
        except (ImportError, ValueError):
            pass
    for label, path in candidates:
        dist = _pytriton_layout(path) if (path / "python_backend_stubs").is_dir() else TritonDist(path)
        if not dist.binary.is_file():
            tried.append(f"{label}: {dist.binary} not found")
            continue
        if dist.stub is None:
            tried.append(
                f"{label}: {dist.home} has no Python backend stub for Python "
                f"{sys.version_info[0]}.{sys.version_info[1]}"
            )
            continue
        return dist
    raise ServerUnavailableError(
        "no usable tritonserver: " + "; ".join(tried) + ". Install it with `make venv` (or: pip download --no-deps "
        "-c constraints.txt -d WHEELS nvidia-pytriton && python -m runtime.serving.serve --install-server WHEELS), "
        f"or point ${ENV_VAR} at a Triton installation"
    )


def install_server(
    wheel: str | os.PathLike, dest: str | os.PathLike | None = None, *, sha256: str | None = PYTRITON_WHEEL_SHA256
) -> TritonDist:
    """Unpack the Triton server (not the PyTriton library) of an nvidia-pytriton wheel into dest (default
    $VENV/triton), checking the wheel's sha256 first; the stub for this Python goes into backends/python."""
    wheel = Path(wheel)
    if wheel.is_dir():  # a download folder: the pinned version's wheel in it
        found = sorted(wheel.glob(f"nvidia_pytriton-{PYTRITON_VERSION}-*.whl"))
        if len(found) != 1:
            raise ServerUnavailableError(
                f"{wheel}: expected one nvidia_pytriton-{PYTRITON_VERSION}-*.whl, found {[p.name for p in found]}"
            )
        wheel = found[0]
    if not wheel.is_file():
        raise ServerUnavailableError(f"{wheel}: no such wheel")
    if sha256:
        actual = sha256_file(wheel)
        if actual != sha256:
            raise ServerUnavailableError(
                f"{wheel}: sha256 {actual}, expected {sha256} (nvidia-pytriton {PYTRITON_VERSION} from PyPI)"
            )
    dest = Path(dest) if dest else Path(sys.prefix) / INSTALL_DIR
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        with zipfile.ZipFile(wheel) as zf:
            for info in zf.infolist():
                if not info.filename.startswith(("pytriton/tritonserver/", "nvidia_pytriton.libs/")):
                    continue
                target = tmp / info.filename
                if ".." in Path(info.filename).parts:
                    raise ServerUnavailableError(f"{wheel}: unsafe member {info.filename!r}")
                zf.extract(info, tmp)
                mode = (info.external_attr >> 16) & 0o777
                if mode and not info.is_dir():
                    os.chmod(target, mode)
        dist = _pytriton_layout(tmp / "pytriton" / "tritonserver")
        stub = dist.stub
        if stub is None:
            raise ServerUnavailableError(
                f"{wheel}: no Python backend stub for Python {sys.version_info[0]}.{sys.version_info[1]}"
            )
        placed = dist.home / "backends" / "python" / STUB
        shutil.copy2(stub, placed)
        os.chmod(placed, 0o755)
        os.chmod(tmp, 0o755)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return _pytriton_layout(dest / "pytriton" / "tritonserver")


def server_env(dist: TritonDist) -> dict[str, str]:
    """Environment for tritonserver: the stub embeds libpython and finds this environment's `python3` on PATH (its
    pyvenv.cfg gives the stub this venv's site-packages: numpy, onnxruntime, this runtime)."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    libs = [str(dist.libs)] if dist.libs else []
    if sysconfig.get_config_var("Py_ENABLE_SHARED"):
        libs.insert(0, str(sysconfig.get_config_var("LIBDIR")))
    if env.get("LD_LIBRARY_PATH"):
        libs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(libs)
    env.pop("PYTHONHOME", None)
    return env


# ----------------------------------------------------------------------------------------------- the server


@dataclass(frozen=True)
class RestartPolicy:
    """How runtime.serving.serve brings tritonserver back after it exits by itself: after `first_delay` s, doubling up to
    `max_delay`; a server that ran `stable_after` s counts as healthy again (the delay starts over). Gives up after
    `max_failed_starts` restarts in a row that never became ready (a fault that a restart cannot cure)."""

    first_delay: float = 0.5
    max_delay: float = 30.0
    stable_after: float = 60.0
    max_failed_starts: int = 5
    startup_timeout: float = DEFAULT_STARTUP_TIMEOUT


def describe_exit(code: int | None) -> str:
    """'exit code 1' / 'killed by signal 6 (SIGABRT)' for a Popen return code."""
    if code is None:
        return "still running"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "unknown"
        return f"killed by signal {-code} ({name})"
    return f"exit code {code}"


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn making the child receive SIGKILL when the thread that started it ends (Linux PR_SET_PDEATHSIG):
    a `kill -9` of runtime.serving.serve takes tritonserver with it instead of leaving it on the ports. libc is loaded here, in
    the parent, so that the child between fork and exec only makes two system calls."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    prctl, parent = libc.prctl, os.getpid()

    def preexec() -> None:
        if prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            os._exit(126)
        if os.getppid() != parent:  # the parent died before the request took effect: nobody would stop us
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


class TritonServer:
    """One supervised tritonserver serving `repository`, behind an HTTP front (runtime.serving.guard) on `http_port`.

    start() claims the HTTP port, starts tritonserver (its own HTTP endpoint on a private 127.0.0.1 port; gRPC on
    `grpc_port`) and waits until ready. From then on a supervisor thread restarts tritonserver whenever it exits by
    itself (a crash, a kill, the OOM killer), with backoff, logging each event on the `runtime.serving.serve` logger and in
    the server log. The supervisor thread is also the one that starts every tritonserver process: PR_SET_PDEATHSIG
    fires when the *thread* that forked the child ends, so the children must come from a thread that lives exactly as
    long as the service. stop() ends it gracefully (SIGINT, then SIGKILL to its whole process group after `timeout`),
    leaving no process behind. A context manager."""

    def __init__(
        self,
        repository: str | os.PathLike,
        *,
        dist: TritonDist | None = None,
        host: str = "127.0.0.1",
        http_port: int = 8000,
        grpc_port: int = 8001,
        metrics_port: int | None = None,
        log_file: str | os.PathLike | None = None,
        cleanup: Sequence[Path] = (),
        restart: RestartPolicy | None = RestartPolicy(),
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        max_concurrent: int = DEFAULT_MAX_CONCURRENT,
    ) -> None:
        self.repository = Path(repository)
        self.dist = dist or find_server()
        self.host, self.http_port, self.grpc_port, self.metrics_port = host, http_port, grpc_port, metrics_port
        self.restart_policy = restart
        self.max_request_bytes, self.max_concurrent = max_request_bytes, max_concurrent
        self._cleanup = list(cleanup)
        if log_file is None:  # kept after stop(), like every server log: it is what explains a failure afterwards
            log_file = Path(tempfile.mkdtemp(prefix="vae-triton-log.")) / "tritonserver.log"
        self.log_file = Path(log_file)
        self._workspace: Path | None = None
        self._backends: Path | None = None
        self.proc: subprocess.Popen | None = None
        self.returncode: int | None = None
        self.restarts = 0
        self.internal_http_port: int | None = None
        self._front: HttpFront | None = None
        self._lock = threading.Lock()  # spawning vs stopping
        self._stopping = threading.Event()
        self._started = threading.Event()  # the first start finished (ready, or failed: _start_error)
        self._start_error: BaseException | None = None
        self._supervisor: threading.Thread | None = None
        self._down: str | None = None  # why tritonserver is not serving right now (None: it is)
        # Python-backend shared memory regions of this server: /dev/shm/<prefix>*, unique per server
        self.shm_prefix = f"vae{os.getpid()}_{secrets.token_hex(3)}_"

    @property
    def _client_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host

    @property
    def http_url(self) -> str:
        return f"{self._client_host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self._client_host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str | None:
        return None if self.metrics_port is None else f"http://{self._client_host}:{self.metrics_port}/metrics"

    def _backends_dir(self) -> Path:
        placed = self.dist.home / "backends" / "python" / STUB
        if placed.is_file():
            return self.dist.home / "backends"
        # pytriton's layout keeps stubs per Python version: give this server a backends folder with ours in place
        self._workspace = Path(tempfile.mkdtemp(prefix="vae-triton-backends."))
        backends = self._workspace / "backends"
        shutil.copytree(self.dist.home / "backends", backends)
        stub = self.dist.stub
        if stub is None:
            raise ServerUnavailableError(f"{self.dist.home}: no Python backend stub for this Python")
        shutil.copy2(stub, backends / "python" / STUB)
        return backends

    def command(self, backends: Path) -> list[str]:
        shm_prefix = self.shm_prefix
        http_port = self.internal_http_port or self.http_port
        cmd = [
            str(self.dist.binary),
            f"--model-repository={self.repository}",
            f"--backend-directory={backends}",
            # Triton's HTTP endpoint is private: clients reach it through the front, which refuses requests that
            # would make it allocate by a claimed shape (runtime/serving/guard.py)
            "--http-address=127.0.0.1",
            f"--http-port={http_port}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            "--disable-auto-complete-config",
            "--strict-readiness=true",
            "--exit-on-error=true",
            "--exit-timeout-secs=10",
            "--model-control-mode=none",
            "--allow-gpu-metrics=false",
            f"--backend-config=python,shm-region-prefix-name={shm_prefix}",
        ]
        if (self.dist.home / "caches").is_dir():
            cmd.append(f"--cache-directory={self.dist.home / 'caches'}")
        if self.metrics_port is None:
            cmd.append("--allow-metrics=false")
        else:
            cmd += ["--allow-metrics=true", f"--metrics-address={self.host}", f"--metrics-port={self.metrics_port}"]
        return cmd

    def _event(self, level: int, message: str) -> None:
        """A supervision event: on the runtime.serving.serve logger and in the server log, where Triton's own lines are."""
        log.log(level, message)
        with contextlib.suppress(OSError), open(self.log_file, "a") as f:
            f.write(f"[runtime.serving.serve] {time.strftime('%Y-%m-%dT%H:%M:%S')} {message}\n")

    def start(self, timeout: float = DEFAULT_STARTUP_TIMEOUT) -> "TritonServer":
        if self._supervisor is not None:
            raise ServerError("this server was already started")
        self._backends = self._backends_dir()
        try:
            self.internal_http_port = _free_port()
            self._front = HttpFront(
                self.host,
                self.http_port,
                Upstream("127.0.0.1", self.internal_http_port, lambda: self._down),
                max_request_bytes=self.max_request_bytes,
                max_concurrent=self.max_concurrent,
            ).start()
        except OSError as e:
            self.stop()
            raise ServerError(f"HTTP port {self.host}:{self.http_port}: cannot listen ({e.strerror or e})") from None
        self._supervisor = threading.Thread(target=self._run, args=(timeout,), name="vae-serve-supervisor", daemon=True)
        self._supervisor.start()
        try:
            self._started.wait()
        except BaseException:
            self.stop()
            raise
        if self._start_error is not None:
            self.stop()
            raise self._start_error
        return self

    def _spawn(self) -> subprocess.Popen:
        with self._lock:
            if self._stopping.is_set():
                raise ServerError("stopping")
            with open(self.log_file, "ab") as out:
                # Own session: a Ctrl-C in the terminal reaches us, not the server, and stop() can end the whole
                # group (the server and its Python-backend stubs) by the group id of the process it started.
                self.proc = subprocess.Popen(
                    self.command(self._backends),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=server_env(self.dist),
                    start_new_session=True,
                    preexec_fn=_die_with_parent(),
                )
            self.returncode = None
            return self.proc

    def _run(self, timeout: float) -> None:
        """The supervisor thread: the first start, then restarts for as long as the service lives."""
        try:
            self._spawn()
            self.wait_ready(timeout)
        except BaseException as e:  # noqa: BLE001 - handed to start(), which raises it in the caller's thread
            self._start_error = e
            self._started.set()
            return
        self._started.set()
        if self.restart_policy is not None:
            self._supervise(self.restart_policy)
        else:
            self._watch()

    def _watch(self) -> None:
        """restart=None: no restarts, but this thread must still live as long as tritonserver does. It forked the
        process with PR_SET_PDEATHSIG, which fires when the forking *thread* ends: returning here would SIGKILL the
        server the moment it became ready."""
        proc = self.proc
        code = proc.wait()
        if self._stopping.is_set():
            return
        self._down = f"tritonserver {describe_exit(code)}; not restarted (restart=None)"
        self._event(logging.ERROR, f"tritonserver (pid {proc.pid}) {describe_exit(code)}; not restarted (restart=None)")
        self._reap(proc)

    def _supervise(self, policy: RestartPolicy) -> None:
        delay, failed, since = policy.first_delay, 0, time.monotonic()
        reaped: subprocess.Popen | None = None
        while True:
            proc = self.proc  # still the old, reaped one when the last restart failed before a process existed
            code = proc.wait()
            if self._stopping.is_set():
                return
            if self._down is None:  # the first exit of this outage (not a failed restart)
                down_since = time.monotonic()
            ran = time.monotonic() - since
            if ran >= policy.stable_after:
                delay, failed = policy.first_delay, 0
            self._down = f"tritonserver {describe_exit(code)}; restarting"
            if proc is not reaped:  # never twice: its pid (the group id) may belong to another process by now
                self._reap(proc)
                reaped = proc
            if failed >= policy.max_failed_starts:
                self._down = f"tritonserver {describe_exit(code)}; gave up after {failed} failed restarts"
                self._event(
                    logging.ERROR,
                    f"tritonserver (pid {proc.pid}) {describe_exit(code)}; {failed} restarts "
                    "in a row never became ready: giving up. Its log ends:\n" + self.log_tail(15),
                )
                return
            self._event(
                logging.ERROR,
                f"tritonserver (pid {proc.pid}) {describe_exit(code)} after serving "
                f"{ran:.1f} s; restarting in {delay:.1f} s (restart {self.restarts + 1})",
            )
            if self._stopping.wait(delay):
                return
            delay = min(delay * 2, policy.max_delay)
            since = time.monotonic()
            self.restarts += 1
            try:
                new = self._spawn()
                self.wait_ready(policy.startup_timeout)
            except Exception as e:  # noqa: BLE001 - OSError from fork/exec/the log file too: this thread must live on
                if self._stopping.is_set():
                    return
                failed += 1
                first_line = (str(e) or type(e).__name__).splitlines()[0]
                self._event(logging.ERROR, f"restart {self.restarts} failed ({type(e).__name__}): {first_line}")
                if self.proc is not None and self.proc.poll() is None:  # hung while starting: end it
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(self.proc.pid, signal.SIGKILL)
                continue
            failed = 0
            self._event(
                logging.WARNING,
                f"tritonserver restarted (pid {new.pid}, restart {self.restarts}): "
                f"serving again {time.monotonic() - down_since:.1f} s after the exit",
            )
            self._down = None

    @property
    def down(self) -> str | None:
        """Why tritonserver is not serving now (restarting, or given up); None while it serves."""
        return self._down

    @property
    def supervising(self) -> bool:
        """Whether the service is up or being brought back (False once stopped or given up)."""
        return self._supervisor is not None and self._supervisor.is_alive()

    def wait(self, poll: float = 0.5) -> None:
        """Block until the service ends (stopped, or the supervisor gave up); KeyboardInterrupt gets through."""
        while self.supervising:
            self._supervisor.join(poll)

    def ready(self) -> bool:
        """HTTP health says ready and, when metrics are served, the metrics endpoint answers too: Triton starts its
        metrics service after the HTTP one, so a scrape right after an HTTP-only check could be refused."""
        port = self.internal_http_port or self.http_port
        urls = [f"http://127.0.0.1:{port}/v2/health/ready"] + ([self.metrics_url] if self.metrics_url else [])
        try:
            for url in urls:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status != 200:
                        return False
            return True
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return False

    def wait_ready(self, timeout: float = DEFAULT_STARTUP_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                raise ServerError(
                    f"tritonserver exited with code {code} while starting; its log "
                    f"({self.log_file}) ends:\n" + self.log_tail()
                )
            if self.ready():
                return
            time.sleep(0.2)
        raise ServerError(
            f"tritonserver not ready after {timeout:.0f} s; its log ({self.log_file}) ends:\n" + self.log_tail()
        )

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def _reap(self, proc: subprocess.Popen) -> None:
        """After `proc` exited: end the stubs that outlived it (its process group), wait until none is left, and
        remove the shared memory regions Triton leaves behind (even after a clean exit; the prefix is ours alone)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        for region in Path("/dev/shm").glob(self.shm_prefix + "*"):
            with contextlib.suppress(OSError):
                region.unlink()

    def stop(self, timeout: float = 30.0) -> int | None:
        """Stop the server (idempotent); returns its exit code: 0, or 1 when Triton's exit timeout (10 s) expired,
        e.g. because a client kept an HTTP connection open (close clients first for a prompt, clean stop)."""
        self._stopping.set()
        with self._lock:
            proc = self.proc
            if proc is not None and self.returncode is None:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGINT)
                    try:
                        proc.wait(timeout)
                    except subprocess.TimeoutExpired:
                        with contextlib.suppress(ProcessLookupError):
                            os.killpg(proc.pid, signal.SIGKILL)
                        proc.wait()
                self._reap(proc)
                self.returncode = proc.returncode
        if self._supervisor is not None and self._supervisor is not threading.current_thread():
            self._supervisor.join()
        if self._front is not None:
            self._front.close()
            self._front = None
        for path in [*self._cleanup, *([self._workspace] if self._workspace else [])]:
            shutil.rmtree(path, ignore_errors=True)
        self._cleanup, self._workspace = [], None
        return self.returncode

    def __enter__(self) -> "TritonServer":
        if self._supervisor is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _free_port() -> int:
    """A port free on 127.0.0.1 now (for Triton's private HTTP endpoint; kept across restarts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def group_alive(pgid: int) -> bool:
    """Whether any live (not zombie) process is left in process group `pgid`."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # killpg also succeeds for zombies awaiting their parent (init here); look at their states.
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def serve(
    bundle: str | os.PathLike,
    *,
    host: str = "127.0.0.1",
    http_port: int = 8000,
    grpc_port: int = 8001,
    metrics_port: int | None = None,
    max_batch: int = 64,
    queue_delay_us: int = 100,
    dynamic_batching: bool = True,
    preferred_batch: Sequence[int] = (),
    instances: int = 1,
    threads: int | None = None,
    precision: str = "fp32",
    tritonserver: str | os.PathLike | None = None,
    log_file: str | os.PathLike | None = None,
    timeout: float = DEFAULT_STARTUP_TIMEOUT,
    restart: RestartPolicy | None = RestartPolicy(),
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    max_concurrent: int = DEFAULT_MAX_CONCURRENT,
) -> TritonServer:
    """Write a python-platform repository for `bundle` into a temporary work folder and start Triton on it (ready on
    return), supervised (`restart`; None: not restarted) behind the HTTP front (requests over `max_request_bytes`
    refused; at most `max_concurrent` HTTP requests in flight, more get 503). Call .stop() (or use it as a context
    manager): the repository is removed with the server; the server log (`log_file`, default tritonserver.log in the
    work folder: .log_file) is kept."""
    dist = find_server(tritonserver)
    options = RepoOptions(
        platform="python",
        kind="cpu",
        precision=precision,
        max_batch=max_batch,
        instances=instances,
        dynamic_batching=dynamic_batching,
        preferred_batch=tuple(preferred_batch),
        queue_delay_us=queue_delay_us,
        threads=threads,
    )
    work = Path(tempfile.mkdtemp(prefix="vae-triton."))
    try:
        repo = write_repository(bundle, work / "models", options, validate=False)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    # The repository goes with the server (stop() removes work/models); the log stays in `work` for the user, who is
    # told where (the CLI prints it at start and at stop).
    server = TritonServer(
        repo.path,
        dist=dist,
        host=host,
        http_port=http_port,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        log_file=log_file or work / "tritonserver.log",
        cleanup=[work] if log_file else [repo.path],
        restart=restart,
        max_request_bytes=max_request_bytes,
        max_concurrent=max_concurrent,
    )
    return server.start(timeout)


# ----------------------------------------------------------------------------------------------- CLI


def _port(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 1..65535, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    if args.install_server is not None:
        return _install_server_cli(args.install_server)
    if args.bundle is None:
        p.error("BUNDLE is required (or --install-server WHEEL)")
    problem = _bad_arguments(args)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    _log_events_to_stderr()
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        return _serve_until_stopped(args)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog_name("runtime.serving.serve"),
        formatter_class=HelpFormatter,
        description="Serve a bundle's encoder and decoder (models vae_encoder, vae_decoder) through a local Triton\n"
        "Inference Server on the CPU, with dynamic batching, over HTTP and gRPC.",
        epilog=epilog(
            {
                0: "stopped on request (Ctrl-C, SIGTERM), or --install-server done",
                1: "the server failed and could not be brought back",
                2: "bad input or option, or no tritonserver here (one line on stderr)",
            },
            "%(prog)s runs/bundle --port 8000 --grpc-port 8001",
            "%(prog)s runs/bundle --precision int8 --instances 2 --preferred-batch 8,16",
            "%(prog)s --install-server ~/Downloads   # the folder holding the nvidia-pytriton wheel",
        ),
    )
    p.add_argument("bundle", nargs="?", type=Path, metavar="BUNDLE", help="bundle folder written by export.to_onnx")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=_port, default=8000, metavar="PORT", help="HTTP port (default 8000)")
    p.add_argument("--grpc-port", type=_port, default=8001, metavar="PORT", help="gRPC port (default 8001)")
    p.add_argument(
        "--metrics-port", type=_port, default=8002, metavar="PORT", help="Prometheus metrics port (default 8002)"
    )
    p.add_argument("--no-metrics", action="store_true", help="do not serve metrics")
    p.add_argument("--max-batch", type=int, default=64, metavar="N", help="max_batch_size of each model (default 64)")
    p.add_argument(
        "--queue-delay-us",
        type=int,
        default=100,
        metavar="US",
        help="dynamic batching: longest wait for more requests to join a batch (default 100)",
    )
    p.add_argument(
        "--preferred-batch",
        type=parse_batches,
        default=(),
        metavar="LIST",
        help="dynamic batching: preferred batch sizes, e.g. 8,16 (default: none)",
    )
    p.add_argument("--no-dynamic-batching", action="store_true", help="run each request on its own")
    p.add_argument("--instances", type=int, default=1, metavar="N", help="model instances per model (default 1)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="ONNX Runtime intra-op threads per instance (default: ONNX Runtime's choice)",
    )
    p.add_argument(
        "--precision", default="fp32", choices=("fp32", "fp16", "int8"), help="bundle variant to serve (default fp32)"
    )
    p.add_argument(
        "--tritonserver",
        type=Path,
        default=None,
        metavar="DIR",
        help=f"Triton installation (bin/tritonserver, backends/); default ${ENV_VAR}, then $VENV/{INSTALL_DIR}",
    )
    p.add_argument(
        "--log",
        type=Path,
        default=None,
        metavar="FILE",
        help="server log file (default: tritonserver.log in the temporary work folder); kept after the "
        "server stops, its path printed at start and at stop",
    )
    p.add_argument(
        "--max-request-bytes",
        type=int,
        default=DEFAULT_MAX_REQUEST_BYTES,
        metavar="N",
        help=f"largest HTTP request body accepted (default {DEFAULT_MAX_REQUEST_BYTES >> 20} MiB)",
    )
    p.add_argument(
        "--install-server",
        type=Path,
        default=None,
        metavar="WHEEL",
        help=f"unpack tritonserver from an nvidia-pytriton {PYTRITON_VERSION} wheel (or the folder holding it) "
        f"into $VENV/{INSTALL_DIR} and exit",
    )
    return p


def _install_server_cli(wheel: Path) -> int:
    try:
        dist = install_server(wheel)
    except (ServerUnavailableError, OSError, zipfile.BadZipFile) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"tritonserver installed: {dist.binary}")
    return 0


def _bad_arguments(args: argparse.Namespace) -> str | None:
    """What is wrong with the serving options argparse cannot check, or None."""
    ports = [args.port, args.grpc_port] + ([] if args.no_metrics else [args.metrics_port])
    if len(set(ports)) != len(ports):
        return f"--port, --grpc-port and --metrics-port must differ, got {ports}"
    if args.max_request_bytes < 1:
        return f"--max-request-bytes must be >= 1, got {args.max_request_bytes}"
    return None


def _log_events_to_stderr() -> None:
    if not log.handlers:  # supervision events (restarts) go to stderr, with a time stamp
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s runtime.serving.serve: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)


def _stop_on_sigterm(signum, _frame):
    raise KeyboardInterrupt  # SIGTERM stops the server like Ctrl-C


def _serve_until_stopped(args: argparse.Namespace) -> int:
    """Serve until Ctrl-C / SIGTERM (0) or until the supervisor gives up (1); 1 or 2 when it cannot start."""
    server = None
    try:
        server = serve(
            args.bundle,
            host=args.host,
            http_port=args.port,
            grpc_port=args.grpc_port,
            metrics_port=None if args.no_metrics else args.metrics_port,
            max_batch=args.max_batch,
            queue_delay_us=args.queue_delay_us,
            dynamic_batching=not args.no_dynamic_batching,
            preferred_batch=args.preferred_batch,
            instances=args.instances,
            threads=args.threads,
            precision=args.precision,
            tritonserver=args.tritonserver,
            log_file=args.log,
            max_request_bytes=args.max_request_bytes,
        )
        print(
            f"serving {args.bundle} as vae_encoder, vae_decoder: HTTP {server.http_url}, gRPC {server.grpc_url}"
            + (f", metrics {server.metrics_url}" if server.metrics_url else "")
            + f"\nserver log: {server.log_file}\ntritonserver pid {server.proc.pid} (restarted if it exits)"
            + "\nCtrl-C stops it",
            flush=True,
        )
        server.wait()  # returns only when the supervisor gives up (it has logged why)
        print(
            f"error: tritonserver could not be brought back; its log ({server.log_file}) ends:\n{server.log_tail()}",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        if server is not None:
            code = server.stop()
            print(f"stopped (tritonserver exit code {code}); server log kept: {server.log_file}")
        return 0
    except ServerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except VaeError as e:  # BundleError, RepositoryError, ServerUnavailableError, ...
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
