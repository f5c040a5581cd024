"""Cold start: a new Python process, from exec to the first decoded image, and that process's peak RSS.

Each path runs in a fresh interpreter (so imports, session creation and first-call allocations are all counted) and
is timed from just before spawn to the child's exit (wall). The child also reports, on its own clock, when its first
result was ready; first_result_s adds the bare interpreter start-up (`python -c pass`, best of 3) to that, so
interpreter shutdown is not billed. Peak RSS is the child's own VmHWM.

The runtime path is `runtime.load(BUNDLE, graphs=("decoder",), device=DEVICE)` then one `decode`, what a decoder-only
application does: only the decoder's file is looked at and only its session (or engine) is built. The PyTorch path
loads the checkpoint and decodes on the same device (CUDA work is synchronised before the clock stops). best_of(fn, runs) repeats a path in
fresh processes and keeps the fastest time and the highest peak RSS (the conservative figure for a memory budget).

    python -m benchmarks.coldstart BUNDLE [--checkpoint CKPT] [--runs 5] [--backend onnxruntime] [--precision fp32]
                                          [--device cpu|cuda[:N]]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from runtime.errors import VaeError  # the harness's own process only: each measured child starts bare

# The child prints one JSON line: seconds from its own start to the first decoded image.
# Peak RSS of the child's own image: VmHWM starts afresh at exec. (rusage's ru_maxrss would not do: on Linux it keeps
# the parent's RSS at fork time, so a harness holding torch would bill every child for torch.)
_VMHWM = """
def _vmhwm():
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
"""

_RUNTIME_CHILD = (
    _VMHWM
    + """
import time, json, sys
t0 = time.perf_counter()
import numpy as np
import runtime
options = json.loads(sys.argv[5]) if len(sys.argv) > 5 else {}
rt = runtime.load(sys.argv[1], backend=sys.argv[2], precision=sys.argv[3], device=sys.argv[4], graphs=("decoder",),
                  **options)
z = np.random.default_rng(0).standard_normal((1, rt.latent_dim), dtype=np.float32)
img = rt.decode(z)
assert img.shape[0] == 1
t1 = time.perf_counter() - t0
print(json.dumps({"first_result_s": t1, "vmhwm_kib": _vmhwm()}))
"""
)

_TORCH_CHILD = (
    _VMHWM
    + """
import time, json, sys
t0 = time.perf_counter()
import torch
from vae_model import load_checkpoint
device = torch.device(sys.argv[2])
model = load_checkpoint(sys.argv[1]).model.to(device)
with torch.no_grad():
    img = model.decode(torch.randn(1, model.latent_dim, generator=torch.Generator().manual_seed(0)).to(device)).cpu()
assert img.shape[0] == 1
t1 = time.perf_counter() - t0
print(json.dumps({"first_result_s": t1, "vmhwm_kib": _vmhwm()}))
"""
)


@dataclass(frozen=True)
class ColdStart:
    path: str  # "torch" or "<backend>/<precision>"
    wall_s: float  # spawn -> child exit
    first_result_s: float  # spawn -> first decoded image (child's own clock plus interpreter start-up)
    peak_rss_mib: float
    runs: int = 1  # fresh processes measured (best_of)
    first_result_all_s: tuple[float, ...] = ()  # every run's first_result_s
    peak_rss_all_mib: tuple[float, ...] = ()  # every run's peak RSS

    def to_dict(self) -> dict:
        d = asdict(self)
        d["first_result_all_s"], d["peak_rss_all_mib"] = list(self.first_result_all_s), list(self.peak_rss_all_mib)
        return d


class ColdStartError(VaeError, RuntimeError):
    """A measured child process failed; the message carries its exit code and the last line of its stderr."""


def _run_child(code: str, args: list[str], label: str, env: dict | None = None) -> ColdStart:
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        _, status, _usage = os.wait4(proc.pid, 0)
    except BaseException:  # Ctrl-C: the child must not outlive the harness
        proc.kill()
        proc.wait()
        raise
    wall = time.perf_counter() - t0
    out = proc.stdout.read().decode() if proc.stdout else ""
    err = proc.stderr.read().decode() if proc.stderr else ""
    proc.stdout and proc.stdout.close()
    proc.stderr and proc.stderr.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = err.strip().splitlines()[-1] if err.strip() else "no output"
        raise ColdStartError(f"cold start of {label} failed (exit {proc.returncode}): {tail}")
    child = json.loads(out.strip().splitlines()[-1])
    # The child's clock starts after the interpreter is up: add the bare interpreter start-up, measured here.
    first = child["first_result_s"] + _interpreter_startup()
    return ColdStart(path=label, wall_s=wall, first_result_s=first, peak_rss_mib=child["vmhwm_kib"] / 1024.0)


_STARTUP: float | None = None


def _interpreter_startup() -> float:
    """Time for `python -c pass` here (best of 3): the part of a cold start before the child's own clock runs."""
    global _STARTUP
    if _STARTUP is None:
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", "pass"], check=True)
            best = min(best, time.perf_counter() - t0)
        _STARTUP = best
    return _STARTUP


def cold_start_runtime(
    bundle: str | os.PathLike,
    backend: str = "onnxruntime",
    precision: str = "fp32",
    device: str = "cpu",
    options: dict[str, Any] | None = None,
) -> ColdStart:
    """options: backend options passed to runtime.load in the child (JSON-serialisable, e.g. {"dla_core": 0})."""
    return _run_child(
        _RUNTIME_CHILD, [str(bundle), backend, precision, device, json.dumps(options or {})], f"{backend}/{precision}"
    )


def cold_start_torch(checkpoint: str | os.PathLike, device: str = "cpu") -> ColdStart:
    return _run_child(_TORCH_CHILD, [str(checkpoint), device], "torch")


def cold_start_cpp(
    bundle: str | os.PathLike, executable: str | os.PathLike, precision: str = "fp32", device: str = "cpu"
) -> ColdStart:
    """The C++ runtime's example `vae_decode` (one seeded latent, nothing written) in a new process.

    first_result_s is spawn -> exit measured here (an upper bound: it includes the process's tear-down); the peak RSS
    is the VmHWM that vae_decode prints itself.
    """
    exe = Path(executable)
    if not exe.is_file():
        raise ColdStartError(f"{exe}: vae_decode is not built (run `make cpp`)")
    label = f"cpp/{precision}"
    t0 = time.perf_counter()
    proc = subprocess.run(
        [str(exe), str(bundle), "--count", "1", "--format", "none", "--precision", precision, "--device", device],
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "no output"
        raise ColdStartError(f"cold start of {label} failed (exit {proc.returncode}): {tail}")
    rss = [float(line.split()[1]) for line in proc.stdout.splitlines() if line.split()[:1] == ["peak_rss"]]
    if not rss:
        raise ColdStartError(f"cold start of {label}: vae_decode printed no peak_rss line (rebuild it: make cpp)")
    return ColdStart(path=label, wall_s=wall, first_result_s=wall, peak_rss_mib=rss[0])


def best_of(measure: Callable[[], ColdStart], runs: int) -> ColdStart:
    """Run a cold-start path `runs` times: the fastest first result and wall time, the highest peak RSS."""
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    got = [measure() for _ in range(runs)]
    return replace(
        min(got, key=lambda c: c.first_result_s),
        wall_s=min(c.wall_s for c in got),
        peak_rss_mib=max(c.peak_rss_mib for c in got),
        runs=runs,
        first_result_all_s=tuple(c.first_result_s for c in got),
        peak_rss_all_mib=tuple(c.peak_rss_mib for c in got),
    )


def main(argv: Sequence[str] | None = None) -> int:
    from runtime.cli import HelpFormatter, epilog, prog_name

    p = argparse.ArgumentParser(
        prog=prog_name("benchmarks.coldstart"),
        formatter_class=HelpFormatter,
        description="Cold start: new process -> first decoded image, time and peak RSS.",
        epilog=epilog(
            {
                0: "measured",
                1: "a cold-start process failed (its error is shown)",
                2: "bad input or option (one line on stderr)",
            },
            "%(prog)s runs/bundle",
            "%(prog)s runs/bundle --checkpoint runs/train/best.pt --runs 3",
            "%(prog)s runs/bundle --backend tensorrt --precision fp16 --device cuda",
        ),
    )
    p.add_argument("bundle", type=Path, metavar="BUNDLE", help="bundle folder written by export.to_onnx")
    p.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        metavar="CKPT",
        help="also measure the PyTorch path from this checkpoint",
    )
    p.add_argument(
        "--runs", type=int, default=5, metavar="N", help="fresh processes per path; best time, highest RSS (default 5)"
    )
    p.add_argument("--backend", default="onnxruntime", help="runtime backend of the measured path")
    p.add_argument("--precision", default="fp32", help="bundle variant (or engine) the runtime loads")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N, for both paths")
    args = p.parse_args(argv)
    if args.runs < 1:
        print(f"error: --runs must be >= 1, got {args.runs}", file=sys.stderr)
        return 2
    from runtime.backends.base import Device
    from runtime.bundle import BundleError, read_manifest
    from runtime.errors import BackendError

    try:
        device = str(Device.parse(args.device))
    except BackendError as e:
        print(f"error: --device: {e}", file=sys.stderr)
        return 2
    try:  # bad input is said here, once, rather than by every child process
        read_manifest(args.bundle)
        if args.checkpoint is not None and not args.checkpoint.is_file():
            raise BundleError(f"--checkpoint {args.checkpoint}: no such file")
    except BundleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        rt = best_of(lambda: cold_start_runtime(args.bundle, args.backend, args.precision, device), args.runs)
        results = [rt]
        if args.checkpoint is not None:
            results.insert(0, best_of(lambda: cold_start_torch(args.checkpoint, device), args.runs))
    except ColdStartError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for r in results:
        print(
            f"{r.path:<20} first image {r.first_result_s:.3f} s (runs: "
            f"{', '.join(f'{x:.3f}' for x in r.first_result_all_s)}), peak RSS {r.peak_rss_mib:.1f} MiB (runs: "
            f"{', '.join(f'{x:.1f}' for x in r.peak_rss_all_mib)})"
        )
    if len(results) == 2:
        print(f"torch / {rt.path}: {results[0].first_result_s / rt.first_result_s:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
