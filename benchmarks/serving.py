"""A bounded load test of the local Triton server (python -m runtime.serving.serve): throughput and p50/p99 latency with
dynamic batching on and off, on loopback only.

    python -m benchmarks.serving BUNDLE [--requests 2000] [--concurrency 8] [--batch-per-request 1] [--model decoder]
                                 [--protocol grpc|http] [--modes on,off] [--queue-delay-us 100] [--max-batch 64]
                                 [--instances 1] [--threads N] [--max-seconds 120] [--out runs/serving]

For each mode a fresh server is started on 127.0.0.1 (free ports), warmed up, then `--concurrency` client threads
(one tritonclient each) send `--requests` requests in total, each of `--batch-per-request` rows, as fast as answers
come back (closed loop); the run stops by itself after the count or `--max-seconds`. Per request: client-side latency
(send to answer). Per mode: requests/s and rows/s over the wall time, p50/p90/p99 latency (benchmarks.stats), the
server's own count of executions (rows per execution = the batches dynamic batching formed), and errors.
Clients and server share this machine's CPUs: the numbers include that contention and are comparable between modes,
not with a dedicated client machine. Writes OUT/serving.json and prints a table. Exit codes: 0 ok, 1 a mode had request
errors, 2 bad input or no server.
"""

from __future__ import annotations

import argparse
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from benchmarks.environment import collect
from benchmarks.errors import BenchError
from benchmarks.stats import summarize

SCHEMA = "vae-deploy/serving-benchmark"
MODELS = {"decoder": ("vae_decoder", "z", "image"), "encoder": ("vae_encoder", "image", "mu")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _client(protocol: str, url: str):
    if protocol == "grpc":
        import tritonclient.grpc as m
    else:
        import tritonclient.http as m
    return m, m.InferenceServerClient(url)


def _rows_served(protocol: str, url: str, model: str) -> tuple[int, int]:
    """(inference_count, execution_count) from Triton's statistics: rows inferred, and model executions."""
    m, c = _client(protocol, url)
    with c:
        stats = (
            c.get_inference_statistics(model) if protocol == "http" else c.get_inference_statistics(model, as_json=True)
        )
    s = stats["model_stats"][0]
    return int(s.get("inference_count", 0)), int(s.get("execution_count", 0))


def _settled_count(
    protocol: str, url: str, model: str, expect: int | None = None, timeout: float = 5.0
) -> tuple[int, int]:
    """Triton's counts once they have caught up: the Python backend reports a batch's statistics after it has sent
    the responses, so a read right after the last answer can miss the last batch. Waits (bounded) until the rows
    count reaches `expect`, or, without `expect`, until two reads agree."""
    deadline = time.monotonic() + timeout
    last = _rows_served(protocol, url, model)
    while time.monotonic() < deadline:
        if expect is not None and last[0] >= expect:
            return last
        time.sleep(0.05)
        now = _rows_served(protocol, url, model)
        if expect is None and now == last:
            return now
        last = now
    return last


def run_load(
    url: str,
    *,
    protocol: str,
    model: str,
    shape: tuple[int, ...],
    requests: int,
    concurrency: int,
    max_seconds: float,
    seed: int = 0,
) -> dict[str, Any]:
    """Send `requests` requests from `concurrency` threads (closed loop) and measure. Returns the mode's numbers."""
    name, input_name, _ = MODELS[model]
    lock = threading.Lock()
    state = {"next": 0}
    latencies: list[float] = []
    errors: list[str] = []
    deadline = time.monotonic() + max_seconds
    start = threading.Barrier(concurrency + 1)

    def worker(k: int) -> None:
        m, c = _client(protocol, url)
        x = np.random.default_rng(seed + k).standard_normal(shape).astype(np.float32)
        if model == "encoder":
            x = np.tanh(x)  # images in [-1, 1]
        inp = m.InferInput(input_name, list(shape), "FP32")
        inp.set_data_from_numpy(x)
        mine = []
        with c:
            start.wait()
            while time.monotonic() < deadline:
                with lock:
                    if state["next"] >= requests:
                        break
                    state["next"] += 1
                t0 = time.perf_counter()
                try:
                    c.infer(name, [inp])
                    mine.append((time.perf_counter() - t0) * 1e3)
                except Exception as e:  # noqa: BLE001 - counted and reported, the load goes on
                    with lock:
                        errors.append(str(e)[:200])
        with lock:
            latencies.extend(mine)

    before = _settled_count(protocol, url, name)
    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(concurrency)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    done = len(latencies)
    after = _settled_count(protocol, url, name, expect=before[0] + done * shape[0])
    rows, executions = after[0] - before[0], after[1] - before[1]
    out: dict[str, Any] = {
        "requests": done,
        "errors": len(errors),
        "error_samples": errors[:3],
        "wall_s": wall,
        "requests_per_s": done / wall if wall > 0 else 0.0,
        "rows_per_s": done * shape[0] / wall if wall > 0 else 0.0,
        "server_rows": rows,
        "server_executions": executions,
        "rows_per_execution": rows / executions if executions else None,
        "stopped_by_time": done + len(errors) < requests,
    }
    if latencies:
        out["latency"] = summarize(latencies, shape[0]).to_dict()
    return out


def run(
    bundle: Path,
    *,
    modes: Sequence[str],
    requests: int,
    concurrency: int,
    batch_per_request: int,
    model: str,
    protocol: str,
    max_batch: int,
    queue_delay_us: int,
    instances: int,
    threads: int | None,
    max_seconds: float,
    warmup: int,
    log=print,
) -> dict[str, Any]:
    from runtime.bundle import read_manifest
    from runtime.serving.serve import serve

    manifest = read_manifest(bundle)
    shape = (
        (batch_per_request, manifest.model.latent_dim)
        if model == "decoder"
        else (batch_per_request, *manifest.model.image_shape)
    )
    results = {}
    for mode in modes:
        server = serve(
            bundle,
            http_port=free_port(),
            grpc_port=free_port(),
            max_batch=max_batch,
            queue_delay_us=queue_delay_us,
            dynamic_batching=mode == "on",
            instances=instances,
            threads=threads,
        )
        try:
            url = server.grpc_url if protocol == "grpc" else server.http_url
            if warmup:
                run_load(
                    url,
                    protocol=protocol,
                    model=model,
                    shape=shape,
                    requests=warmup,
                    concurrency=min(concurrency, warmup),
                    max_seconds=max_seconds,
                    seed=1000,
                )
            log(f"dynamic batching {mode}: {requests} requests from {concurrency} clients ...")
            results[mode] = run_load(
                url,
                protocol=protocol,
                model=model,
                shape=shape,
                requests=requests,
                concurrency=concurrency,
                max_seconds=max_seconds,
            )
        finally:
            server.stop()
    return {
        "schema": SCHEMA,
        "schema_version": 1,
        "bundle": str(bundle),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": model,
        "protocol": protocol,
        "requests": requests,
        "concurrency": concurrency,
        "batch_per_request": batch_per_request,
        "max_batch": max_batch,
        "queue_delay_us": queue_delay_us,
        "instances": instances,
        "threads": threads,
        "warmup": warmup,
        "max_seconds": max_seconds,
        "environment": collect(threads),
        "modes": results,
    }


def format_table(report: dict[str, Any]) -> str:
    head = (
        f"{report['model']} over {report['protocol']}: {report['requests']} requests x "
        f"{report['batch_per_request']} rows, {report['concurrency']} concurrent clients, "
        f"max_batch {report['max_batch']}, queue delay {report['queue_delay_us']} us, "
        f"{report['instances']} instance(s)"
    )
    cols = (
        f"{'dynamic batching':<17}{'req/s':>9}{'rows/s':>10}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}"
        f"{'rows/exec':>11}{'errors':>8}"
    )
    lines = [head, cols, "-" * len(cols)]
    for mode, r in report["modes"].items():
        lat = r.get("latency", {})
        rpe = r["rows_per_execution"]
        lines.append(
            f"{mode:<17}{r['requests_per_s']:>9.1f}{r['rows_per_s']:>10.1f}"
            f"{lat.get('p50_ms', float('nan')):>9.2f}{lat.get('p90_ms', float('nan')):>9.2f}"
            f"{lat.get('p99_ms', float('nan')):>9.2f}{(rpe if rpe is not None else float('nan')):>11.2f}"
            f"{r['errors']:>8}" + ("  (stopped by --max-seconds)" if r["stopped_by_time"] else "")
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    from runtime.cli import HelpFormatter, epilog, prog_name

    p = argparse.ArgumentParser(
        prog=prog_name("benchmarks.serving"),
        formatter_class=HelpFormatter,
        description="Bounded load test of the local Triton server: throughput and p50/p99 latency with dynamic\n"
        "batching on and off (127.0.0.1 only).",
        epilog=epilog(
            {
                0: "measured, every request answered",
                1: "some requests failed, or the server did",
                2: "bad input or option, or no tritonserver / tritonclient (one line on stderr)",
            },
            "%(prog)s runs/bundle --requests 2000 --concurrency 8",
            "%(prog)s runs/bundle --model encoder --protocol http --modes on --instances 2",
        ),
    )
    p.add_argument("bundle", type=Path, metavar="BUNDLE", help="bundle folder written by export.to_onnx")
    p.add_argument("--requests", type=int, default=2000, metavar="N", help="requests per mode (default 2000)")
    p.add_argument("--concurrency", type=int, default=8, metavar="C", help="concurrent clients (default 8)")
    p.add_argument("--batch-per-request", type=int, default=1, metavar="B", help="rows per request (default 1)")
    p.add_argument("--model", choices=sorted(MODELS), default="decoder", help="graph to load (default decoder)")
    p.add_argument("--protocol", choices=("grpc", "http"), default="grpc", help="client protocol (default grpc)")
    p.add_argument("--modes", default="on,off", metavar="LIST", help="dynamic batching modes to run (default on,off)")
    p.add_argument("--max-batch", type=int, default=64, metavar="N", help="server max_batch_size (default 64)")
    p.add_argument("--queue-delay-us", type=int, default=100, metavar="US", help="dynamic batching delay (default 100)")
    p.add_argument("--instances", type=int, default=1, metavar="N", help="model instances (default 1)")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="ONNX Runtime threads per instance")
    p.add_argument("--warmup", type=int, default=20, metavar="N", help="warm-up requests per mode (default 20)")
    p.add_argument(
        "--max-seconds",
        type=float,
        default=120.0,
        metavar="S",
        help="stop a mode after S seconds even if requests remain (default 120)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("runs/serving"),
        metavar="DIR",
        help="folder for serving.json (default runs/serving)",
    )
    args = p.parse_args(argv)
    from runtime.errors import VaeError
    from runtime.serving.serve import ServerError, find_server

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    try:
        if not modes or any(m not in ("on", "off") for m in modes):
            raise BenchError(f"--modes: expected on and/or off, got {args.modes!r}")
        for opt in ("requests", "concurrency", "batch_per_request", "instances"):
            if getattr(args, opt) < 1:
                raise BenchError(f"--{opt.replace('_', '-')} must be >= 1, got {getattr(args, opt)}")
        if args.batch_per_request > args.max_batch:
            raise BenchError(f"--batch-per-request {args.batch_per_request} exceeds --max-batch {args.max_batch}")
        if args.warmup < 0 or not args.max_seconds > 0:
            raise BenchError("--warmup must be >= 0 and --max-seconds > 0")
        try:
            import tritonclient.grpc  # noqa: F401
        except ImportError:
            raise BenchError("tritonclient is not installed: pip install -c constraints.txt -e '.[serve]'") from None
        find_server()
        report = run(
            args.bundle,
            modes=modes,
            requests=args.requests,
            concurrency=args.concurrency,
            batch_per_request=args.batch_per_request,
            model=args.model,
            protocol=args.protocol,
            max_batch=args.max_batch,
            queue_delay_us=args.queue_delay_us,
            instances=args.instances,
            threads=args.threads,
            max_seconds=args.max_seconds,
            warmup=args.warmup,
        )
    except ServerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except VaeError as e:  # BenchError, BundleError, RepositoryError, ServerUnavailableError, ...
        print(f"error: {e}", file=sys.stderr)
        return 2
    from runtime.files import write_json_atomic

    path = write_json_atomic(args.out / "serving.json", report)
    print(format_table(report))
    print(f"wrote {path}")
    return 1 if any(r["errors"] for r in report["modes"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
