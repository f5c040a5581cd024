"""Chunk size vs time and peak memory of one large batch: `python -m benchmarks.chunking BUNDLE [--n 10000] ...`.

How runtime.load's default `max_chunk` was chosen (docs/performance.md#bounded-memory). Each (chunk size, round) runs in
a fresh process - peak RSS is a process's high-water mark, and ONNX Runtime's arena keeps what one call grew it to -
which loads the bundle's decoder (sessions created before the clock starts), then decodes the same N seeded latents
twice: the first call (what a one-off large batch costs, arena growth included) and the second (warm). Reported per
chunk size: the median and best of the rounds' times, the highest peak RSS (VmHWM, Linux) after each call, and the
peak above the output array, which no chunk size can avoid. Rounds alternate the order of the chunk sizes, so drift
on a shared machine spreads over all of them instead of biasing the last.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _child(bundle: str, graph: str, n: int, chunk: str) -> None:
    import runtime

    max_chunk = None if chunk == "none" else int(chunk)
    with runtime.load(bundle, backend="onnxruntime", graphs=[graph], preload=True, max_chunk=max_chunk) as rt:
        rng = np.random.default_rng(0)
        if graph == "decoder":
            x = rng.standard_normal((n, rt.latent_dim), dtype=np.float32)
        else:
            x = rng.random((n, *rt.image_shape), dtype=np.float32)
        before = _status_kib("VmRSS")
        times, peaks = [], []
        for _ in range(2):
            t0 = time.perf_counter()
            out = rt.decode(x) if graph == "decoder" else rt.encode(x).mu
            times.append(time.perf_counter() - t0)
            peaks.append(_status_kib("VmHWM"))
            out_bytes = out.nbytes
            del out
        print(
            json.dumps(
                {
                    "first_s": times[0],
                    "second_s": times[1],
                    "before_kib": before,
                    "first_peak_kib": peaks[0],
                    "peak_kib": peaks[1],
                    "output_bytes": out_bytes,
                }
            )
        )


def measure(bundle: Path, graph: str, n: int, chunks: Sequence[str], rounds: int) -> dict[str, list[dict]]:
    results: dict[str, list[dict]] = {c: [] for c in chunks}
    for r in range(rounds):
        for c in chunks if r % 2 == 0 else chunks[::-1]:
            proc = subprocess.run(
                [sys.executable, "-m", "benchmarks.chunking", "--child", str(bundle), graph, str(n), c],
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode != 0:
                raise SystemExit(f"chunk {c}: child failed:\n{proc.stderr[-2000:]}")
            results[c].append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(f"round {r + 1} chunk {c}: {results[c][-1]}", file=sys.stderr)
    return results


def table(results: dict[str, list[dict]], n: int, graph: str) -> str:
    lines = [
        "| max_chunk | 1st call s (median, best) | 2nd call s (median, best) | peak RSS MiB after 1st | "
        "after 2nd | 2nd peak above the output MiB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for c, runs in results.items():
        first, peak = (max(r[k] for r in runs) / 1024 for k in ("first_peak_kib", "peak_kib"))
        out = runs[0]["output_bytes"] / 2**20
        t1, t2 = ([r[k] for r in runs] for k in ("first_s", "second_s"))
        lines.append(
            f"| {'none (one call)' if c == 'none' else c} | {np.median(t1):.2f}, {min(t1):.2f} | "
            f"{np.median(t2):.2f}, {min(t2):.2f} | {first:.0f} | {peak:.0f} | {peak - out:.0f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        _child(argv[1], argv[2], int(argv[3]), argv[4])
        return 0
    from runtime.cli import HelpFormatter, epilog, prog_name

    p = argparse.ArgumentParser(
        prog=prog_name("benchmarks.chunking"),
        description=__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter,
        epilog=epilog(
            {0: "measured (a Markdown table on stdout)", 2: "bad option (one line on stderr)"},
            "%(prog)s runs/bundle",
            "%(prog)s runs/bundle --graph encoder --n 2000 --chunks 32,64,none --rounds 3",
        ),
    )
    p.add_argument("bundle", type=Path, metavar="BUNDLE", help="bundle folder written by export.to_onnx")
    p.add_argument("--graph", choices=("decoder", "encoder"), default="decoder", help="graph to run")
    p.add_argument("--n", type=int, default=10_000, help="batch size (default 10000)")
    p.add_argument(
        "--chunks",
        default="64,128,256,512,1024,none",
        metavar="LIST",
        help="max_chunk values, comma-separated; 'none' = one call for the whole batch",
    )
    p.add_argument("--rounds", type=int, default=2, metavar="N", help="fresh-process rounds per chunk size")
    args = p.parse_args(argv)
    chunks = [c.strip() for c in args.chunks.split(",") if c.strip()]
    bad = [c for c in chunks if c != "none" and not (c.isdigit() and int(c) >= 1)]
    if bad or not chunks or args.n < 1 or args.rounds < 1:
        print(
            f"error: --chunks must be positive integers or 'none' (got {bad or chunks}), --n and --rounds >= 1",
            file=sys.stderr,
        )
        return 2
    print(table(measure(args.bundle, args.graph, args.n, chunks, args.rounds), args.n, args.graph))
    return 0


if __name__ == "__main__":
    sys.exit(main())
