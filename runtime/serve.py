"""Serve a bundle through a real Triton Inference Server on this machine: encode and decode with dynamic batching.

    python -m runtime.serve BUNDLE [--host 127.0.0.1] [--port 8000] [--grpc-port 8001] [--metrics-port 8002]
                            [--max-batch 64] [--queue-delay-us 100] [--no-dynamic-batching] [--instances 1] [--threads N]
    python -m runtime.serve --install-server WHEEL|DIR  # unpack tritonserver from an nvidia-pytriton wheel (make venv)

What runs: runtime.triton_repo writes a `python`-platform model repository (vae_encoder, vae_decoder; model.py =
runtime/triton_model.py hosting runtime.load(backend="onnxruntime")) into a temporary folder, and the `tritonserver`
binary serves it over HTTP and gRPC (KServe v2 protocol; any tritonclient, curl, perf_analyzer). Malformed requests
(wrong shape or dtype: refused by Triton against config.pbtxt; NaN / Inf: refused by the runtime's validation) get an
error response and the server keeps serving. Ctrl-C / SIGTERM stop it gracefully; the repository is removed.

Where tritonserver comes from: PyPI's nvidia-pytriton wheel carries a CPU-capable Triton server (2.51) with the Python
backend and stubs for Python 3.8-3.13. The PyTriton *library* pins numpy<2 (its stubs mishandle NumPy 2 arrays; see
runtime/triton_model.py for how the model sidesteps that), which conflicts with this project's numpy pin, so it is not
pip-installed: `make venv` downloads the pinned wheel (constraints.txt) with `pip download --no-deps` and
`--install-server` checks its sha256 and unpacks only the server into $VENV/triton. Also found: $VAE_TRITONSERVER
(a folder with bin/tritonserver and backends/, e.g. /opt/tritonserver in NVIDIA's container), an installed pytriton.

Exit codes: 0 stopped on request, 1 the server failed (its log tail is printed), 2 bad input or no server here.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .bundle import BundleError
from .files import sha256_file
from .triton_repo import RepoOptions, RepositoryError, parse_batches, write_repository

PYTRITON_VERSION = "0.7.0"
# sha256 of nvidia_pytriton-0.7.0-py3-none-manylinux_2_35_x86_64.whl as published on PyPI
PYTRITON_WHEEL_SHA256 = "21f063ff93bb426d0c06b7a55e7eb9efcfe62c0dddd9a908e9877e18710128df"
ENV_VAR = "VAE_TRITONSERVER"
INSTALL_DIR = "triton"  # under sys.prefix (the virtual environment)
STUB = "triton_python_backend_stub"
DEFAULT_STARTUP_TIMEOUT = 120.0


class ServerUnavailableError(RuntimeError):
    """No usable tritonserver on this machine (not installed, no stub for this Python); the message says how to fix."""


class ServerError(RuntimeError):
    """tritonserver failed to start or exited; the message carries the tail of its log."""


# ----------------------------------------------------------------------------------------------- the distribution

@dataclass(frozen=True)
class TritonDist:
    """A Triton server installation: home/bin/tritonserver, home/backends (python/ with a stub), extra library dir."""

    home: Path
    libs: Path | None = None
    stubs: Path | None = None   # pytriton layout: stubs per Python version, copied into backends/python at start

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
            tried.append(f"{label}: {dist.home} has no Python backend stub for Python "
                         f"{sys.version_info[0]}.{sys.version_info[1]}")
            continue
        return dist
    raise ServerUnavailableError(
        "no usable tritonserver: " + "; ".join(tried) + ". Install it with `make venv` (or: pip download --no-deps "
        "-c constraints.txt -d WHEELS nvidia-pytriton && python -m runtime.serve --install-server WHEELS), "
        f"or point ${ENV_VAR} at a Triton installation")


def install_server(wheel: str | os.PathLike, dest: str | os.PathLike | None = None, *,
                   sha256: str | None = PYTRITON_WHEEL_SHA256) -> TritonDist:
    """Unpack the Triton server (not the PyTriton library) of an nvidia-pytriton wheel into dest (default
    $VENV/triton), checking the wheel's sha256 first; the stub for this Python goes into backends/python."""
    wheel = Path(wheel)
    if wheel.is_dir():  # a download folder: the pinned version's wheel in it
        found = sorted(wheel.glob(f"nvidia_pytriton-{PYTRITON_VERSION}-*.whl"))
        if len(found) != 1:
            raise ServerUnavailableError(f"{wheel}: expected one nvidia_pytriton-{PYTRITON_VERSION}-*.whl, found "
                                         f"{[p.name for p in found]}")
        wheel = found[0]
    if not wheel.is_file():
        raise ServerUnavailableError(f"{wheel}: no such wheel")
    if sha256:
        actual = sha256_file(wheel)
        if actual != sha256:
            raise ServerUnavailableError(f"{wheel}: sha256 {actual}, expected {sha256} "
                                         f"(nvidia-pytriton {PYTRITON_VERSION} from PyPI)")
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
            raise ServerUnavailableError(f"{wheel}: no Python backend stub for Python "
                                         f"{sys.version_info[0]}.{sys.version_info[1]}")
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

class TritonServer:
    """One tritonserver process serving `repository`. start() waits until ready; stop() ends it gracefully (SIGINT,
    then SIGKILL to its whole process group after `timeout`), leaving no process behind. A context manager."""

    def __init__(self, repository: str | os.PathLike, *, dist: TritonDist | None = None, host: str = "127.0.0.1",
                 http_port: int = 8000, grpc_port: int = 8001, metrics_port: int | None = None,
                 log_file: str | os.PathLike | None = None, cleanup: Sequence[Path] = ()) -> None:
        self.repository = Path(repository)
        self.dist = dist or find_server()
        self.host, self.http_port, self.grpc_port, self.metrics_port = host, http_port, grpc_port, metrics_port
        self._cleanup = list(cleanup)
        if log_file is None:
            own = Path(tempfile.mkdtemp(prefix="vae-triton-log."))
            self._cleanup.append(own)
            log_file = own / "tritonserver.log"
        self.log_file = Path(log_file)
        self._workspace: Path | None = None
        self.proc: subprocess.Popen | None = None
        self.returncode: int | None = None
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
        cmd = [str(self.dist.binary), f"--model-repository={self.repository}", f"--backend-directory={backends}",
               f"--http-address={self.host}", f"--http-port={self.http_port}",
               f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
               "--disable-auto-complete-config", "--strict-readiness=true", "--exit-on-error=true",
               "--exit-timeout-secs=10", "--model-control-mode=none", "--allow-gpu-metrics=false",
               f"--backend-config=python,shm-region-prefix-name={shm_prefix}"]
        if (self.dist.home / "caches").is_dir():
            cmd.append(f"--cache-directory={self.dist.home / 'caches'}")
        if self.metrics_port is None:
            cmd.append("--allow-metrics=false")
        else:
            cmd += ["--allow-metrics=true", f"--metrics-address={self.host}", f"--metrics-port={self.metrics_port}"]
        return cmd

    def start(self, timeout: float = DEFAULT_STARTUP_TIMEOUT) -> "TritonServer":
        if self.proc is not None:
            raise ServerError("this server was already started")
        cmd = self.command(self._backends_dir())
        with open(self.log_file, "ab") as log:
            # Own session: a Ctrl-C in the terminal reaches us, not the server, and stop() can end the whole group
            # (the server and its Python-backend stubs) by the group id of the process it started.
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=server_env(self.dist), start_new_session=True)
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return False

    def wait_ready(self, timeout: float = DEFAULT_STARTUP_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                raise ServerError(f"tritonserver exited with code {code} while starting; its log ends:\n"
                                  + self.log_tail())
            if self.ready():
                return
            time.sleep(0.2)
        raise ServerError(f"tritonserver not ready after {timeout:.0f} s; its log ends:\n" + self.log_tail())

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 30.0) -> int | None:
        """Stop the server (idempotent); returns its exit code: 0, or 1 when Triton's exit timeout (10 s) expired,
        e.g. because a client kept an HTTP connection open (close clients first for a prompt, clean stop)."""
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
            # Stubs that outlived the server (a crash, or still exiting) are in its process group: end them too, and
            # wait until the group is gone, so that no process of this server survives stop().
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while group_alive(proc.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            self.returncode = proc.returncode
            # Triton leaves its stubs' shared memory regions behind (even after a clean exit); they are this
            # server's alone (unique prefix), so remove them once no process of it is left.
            for region in Path("/dev/shm").glob(self.shm_prefix + "*"):
                with contextlib.suppress(OSError):
                    region.unlink()
        for path in [*self._cleanup, *([self._workspace] if self._workspace else [])]:
            shutil.rmtree(path, ignore_errors=True)
        self._cleanup, self._workspace = [], None
        return self.returncode

    def __enter__(self) -> "TritonServer":
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


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


def serve(bundle: str | os.PathLike, *, host: str = "127.0.0.1", http_port: int = 8000, grpc_port: int = 8001,
          metrics_port: int | None = None, max_batch: int = 64, queue_delay_us: int = 100,
          dynamic_batching: bool = True, preferred_batch: Sequence[int] = (), instances: int = 1,
          threads: int | None = None, precision: str = "fp32", tritonserver: str | os.PathLike | None = None,
          log_file: str | os.PathLike | None = None, timeout: float = DEFAULT_STARTUP_TIMEOUT) -> TritonServer:
    """Write a python-platform repository for `bundle` into a temporary folder and start Triton on it (ready on
    return). Call .stop() (or use it as a context manager): the repository folder is removed with the server."""
    dist = find_server(tritonserver)
    options = RepoOptions(platform="python", kind="cpu", precision=precision, max_batch=max_batch,
                          instances=instances, dynamic_batching=dynamic_batching,
                          preferred_batch=tuple(preferred_batch), queue_delay_us=queue_delay_us, threads=threads)
    work = Path(tempfile.mkdtemp(prefix="vae-triton."))
    try:
        repo = write_repository(bundle, work / "models", options, validate=False)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    # The repository (and the log, unless log_file says otherwise) goes with the server: stop() removes `work`.
    server = TritonServer(repo.path, dist=dist, host=host, http_port=http_port, grpc_port=grpc_port,
                          metrics_port=metrics_port, log_file=log_file or work / "tritonserver.log", cleanup=[work])
    return server.start(timeout)


# ----------------------------------------------------------------------------------------------- CLI

def _port(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 1..65535, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m runtime.serve", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Serve a bundle's encoder and decoder (models vae_encoder, vae_decoder) through a local Triton\n"
                    "Inference Server on the CPU, with dynamic batching, over HTTP and gRPC.",
        epilog="exit status: 0 stopped on request, 1 the server failed, 2 bad input or no tritonserver here.\n"
               "example: python -m runtime.serve runs/bundle --port 8000 --grpc-port 8001\n"
               "         curl -s localhost:8000/v2/models/vae_decoder/config")
    p.add_argument("bundle", nargs="?", type=Path, metavar="BUNDLE", help="bundle folder written by export.to_onnx")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=_port, default=8000, help="HTTP port (default 8000)")
    p.add_argument("--grpc-port", type=_port, default=8001, help="gRPC port (default 8001)")
    p.add_argument("--metrics-port", type=_port, default=8002, help="Prometheus metrics port (default 8002)")
    p.add_argument("--no-metrics", action="store_true", help="do not serve metrics")
    p.add_argument("--max-batch", type=int, default=64, metavar="N", help="max_batch_size of each model (default 64)")
    p.add_argument("--queue-delay-us", type=int, default=100, metavar="US",
                   help="dynamic batching: longest wait for more requests to join a batch (default 100)")
    p.add_argument("--preferred-batch", type=parse_batches, default=(), metavar="LIST",
                   help="dynamic batching: preferred batch sizes, e.g. 8,16 (default: none)")
    p.add_argument("--no-dynamic-batching", action="store_true", help="run each request on its own")
    p.add_argument("--instances", type=int, default=1, metavar="N", help="model instances per model (default 1)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="ONNX Runtime intra-op threads per instance (default: ONNX Runtime's choice)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "int8"),
                   help="bundle variant to serve (default fp32)")
    p.add_argument("--tritonserver", type=Path, default=None, metavar="DIR",
                   help=f"Triton installation (bin/tritonserver, backends/); default ${ENV_VAR}, then $VENV/{INSTALL_DIR}")
    p.add_argument("--log", type=Path, default=None, metavar="FILE", help="server log file (default: a temporary file)")
    p.add_argument("--install-server", type=Path, default=None, metavar="WHEEL",
                   help=f"unpack tritonserver from an nvidia-pytriton {PYTRITON_VERSION} wheel (or the folder holding it) "
                        f"into $VENV/{INSTALL_DIR} and exit")
    args = p.parse_args(argv)
    if args.install_server is not None:
        try:
            dist = install_server(args.install_server)
        except (ServerUnavailableError, OSError, zipfile.BadZipFile) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"tritonserver installed: {dist.binary}")
        return 0
    if args.bundle is None:
        p.error("BUNDLE is required (or --install-server WHEEL)")
    ports = [args.port, args.grpc_port] + ([] if args.no_metrics else [args.metrics_port])
    if len(set(ports)) != len(ports):
        print(f"error: --port, --grpc-port and --metrics-port must differ, got {ports}", file=sys.stderr)
        return 2

    def on_signal(signum, _frame):
        raise KeyboardInterrupt  # SIGTERM stops the server like Ctrl-C

    previous = signal.signal(signal.SIGTERM, on_signal)
    server = None
    try:
        server = serve(args.bundle, host=args.host, http_port=args.port, grpc_port=args.grpc_port,
                       metrics_port=None if args.no_metrics else args.metrics_port, max_batch=args.max_batch,
                       queue_delay_us=args.queue_delay_us, dynamic_batching=not args.no_dynamic_batching,
                       preferred_batch=args.preferred_batch, instances=args.instances, threads=args.threads,
                       precision=args.precision, tritonserver=args.tritonserver, log_file=args.log)
        print(f"serving {args.bundle} as vae_encoder, vae_decoder: HTTP {server.http_url}, gRPC {server.grpc_url}"
              + (f", metrics {server.metrics_url}" if server.metrics_url else "")
              + f"\nserver log: {server.log_file}\nCtrl-C stops it", flush=True)
        code = server.proc.wait()
        print(f"error: tritonserver exited by itself with code {code}; its log:\n{server.log_tail()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if server is not None:
            code = server.stop()
            print(f"stopped (tritonserver exit code {code})")
        return 0
    except (BundleError, RepositoryError, ServerUnavailableError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ServerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        if server is not None:
            server.stop()
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
