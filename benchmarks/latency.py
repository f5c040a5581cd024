"""Latency harness: `python -m benchmarks.latency BUNDLE [--backends ...] [--graphs ...] [--batch 1,8,64] ...`.

Every selected (backend, graph, precision, batch) is measured in one run, on one seeded input set, in interleaved
rounds (the order alternates each round), so machine drift shows up as a spread between rounds instead of as a bias
against whichever configuration ran last. The matmul ceiling of every arithmetic precision the rows run in (fp32,
bf16, int8: benchmarks/ceiling.py) is measured in every round too, and the best value is used: each row's share is
against the ceiling of its own precision. Each row's accuracy is measured too (benchmarks/accuracy.py: the bundle's
reference inputs against the PyTorch FP32 outputs, judged by the precision's recorded budget).

With `--peer-bundle DIR` (or `--peer` and `--checkpoint`) the report has a peer row: OpenVINO's default configuration
on the plain export (benchmarks/peer.py), and every row's speed as a ratio to it.

Outputs: a table on the terminal (benchmarks/report.py: what was not measured is listed once under it, with the
reason, and a legend explains the columns), latency.json, latency.csv, latency_percentiles.png and throughput.png.

Every backend is loaded on `--device` (cpu, cuda or cuda:N; the tensorrt backend needs cuda, torch runs there when it
sees CUDA) with only the graphs in `--graphs`, so a bundle whose engines cover the decoder alone can be measured. A
backend that cannot load there gives skipped rows (and a skipped cold start) that say why. The cold start runs on the
same device and loads the decoder only.

With `--record-auto` the CPU medians of onnxruntime and openvino are written into the bundle's vae.json as this
machine's record, from which `runtime.load(BUNDLE, backend="auto")` then picks on this machine
(benchmarks/auto_record.py, runtime/backends/auto.py); a line per precision says which backend that is and why.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from runtime.cli import HelpFormatter, add_graphs_argument, epilog, prog_name, progress

from . import environment, peer as peer_row
from .ceiling import ENGINE_OF_BACKEND, Probe, build_probes, ceiling_precision
from .errors import BenchError
from .report import check_report_rows, compare_reports, format_table, write_outputs
from .stats import LatencyStats, round_throughput_cv, summarize

BACKENDS = ("torch", "onnxruntime", "tensorrt", "openvino", "cpp")
PRECISIONS = ("fp32", "fp16", "int8", "bf16")
SCHEMA = "vae-deploy/latency"
SCHEMA_VERSION = 1


#: Share of this machine's physical memory the largest batch's inputs and outputs may take (checked before anything
#: is allocated). The runtimes chunk every engine call, so what a batch costs beyond them is bounded by one chunk.
MEMORY_SHARE = 0.5


@dataclass(frozen=True)
class BenchConfig:
    backend: str
    graph: str
    precision: str
    batch: int

    @property
    def key(self) -> str:
        return f"{self.backend}/{self.graph}/{self.precision}/b{self.batch}"

    @property
    def runtime_key(self) -> tuple[str, str, str]:
        """(backend, precision, graph): which loaded runtime runs this config."""
        return (self.backend, self.precision, self.graph)


@dataclass(frozen=True)
class BenchResult:
    config: BenchConfig
    status: str  # "ok", "skipped" or "error"
    reason: str = ""
    stats: LatencyStats | None = None
    round_p50_ms: tuple[float, ...] = ()
    gflop_per_call: float = 0.0  # useful GFLOP per call, from the PyTorch model (see flops.py)
    gflops: float = 0.0  # useful GFLOP/s at the median latency
    ceiling_share: float | None = None  # gflops / the best matmul rate measured at ceiling_precision
    ceiling_precision: str | None = None  # the ceiling it is held against (None: none measured, e.g. a GPU row)

    @property
    def drift(self) -> float:
        """max/min of the per-round medians: how much the machine moved during the run."""
        r = [x for x in self.round_p50_ms if x > 0]
        return max(r) / min(r) if len(r) > 1 else 1.0

    @property
    def round_cv(self) -> float:
        """Coefficient of variation of the per-round throughput (stats.round_throughput_cv)."""
        return round_throughput_cv(self.round_p50_ms)

    def to_dict(self) -> dict[str, Any]:
        d = {
            "key": self.config.key,
            **asdict(self.config),
            "status": self.status,
            "reason": self.reason,
            "round_p50_ms": list(self.round_p50_ms),
            "drift": self.drift,
            "round_cv": self.round_cv,
            "gflop_per_call": self.gflop_per_call,
            "gflops": self.gflops,
            "ceiling_share": self.ceiling_share,
            "ceiling_precision": self.ceiling_precision,
        }
        d["stats"] = self.stats.to_dict() if self.stats else None
        return d


@dataclass
class Plan:
    bundle: Path
    backends: list[str]
    graphs: list[str]
    precisions: list[str]
    batches: list[int]
    warmup_s: float = 1.0
    duration_s: float | None = 3.0
    iterations: int | None = None
    rounds: int = 3
    threads: int | None = None
    checkpoint: Path | None = None
    cold_start: bool = True
    cold_start_runs: int = 3
    spinning: bool | None = None  # ONNX Runtime intra-op spinning (None: its default, on)
    batch_split: int | bool | None = None  # onnxruntime / cpp on the CPU (None: the runtimes' default; False: off)
    device: str = "cpu"  # runtime.load's device for every backend: "cpu", "cuda" or "cuda:N"
    dla_core: int | None = None  # tensorrt: the engines built for this Jetson DLA core (None: the GPU engines)
    cuda_graph: bool = False  # tensorrt: replay each batch size as a captured CUDA graph
    cpp_lib: Path | None = None  # libvae_runtime.so for the cpp backend (default: benchmarks/cpp_runtime.py)
    peer_bundle: Path | None = None  # the plain export for the peer row (benchmarks/peer.py); None: no peer row
    accuracy: bool = True  # measure each row's accuracy on the bundle's reference inputs
    progress: bool = True
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def timed_calls(
    fn: Callable[[], Any], *, duration_s: float | None, iterations: int | None, min_calls: int = 3
) -> list[float]:
    """Call fn repeatedly; return per-call latencies in ms. Stops after `iterations` or once `duration_s` is spent."""
    out: list[float] = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        fn()
        t1 = time.perf_counter()
        out.append((t1 - t0) * 1e3)
        if iterations is not None:
            if len(out) >= iterations:
                return out
        elif len(out) >= min_calls and t1 - start >= (duration_s or 0.0):
            return out


def _inputs(manifest, graph: str, batch: int, seed: int) -> np.ndarray:
    """One seeded input per (graph, batch), shared by every backend. Images are in the bundle's pixel range."""
    rng = np.random.default_rng([seed, batch, 0 if graph == "encoder" else 1])
    m = manifest.model
    if graph == "decoder":
        return rng.standard_normal((batch, m.latent_dim), dtype=np.float32)
    lo, hi = manifest.pixel_range
    return (rng.random((batch, *m.image_shape), dtype=np.float32) * (hi - lo) + lo).astype(np.float32)


def item_bytes(manifest, graph: str) -> int:
    """float32 bytes of one item's input and outputs in `graph`: what each item of a batch costs the benchmark."""
    m = manifest.model
    if graph == "decoder":
        return 4 * (m.latent_dim + math.prod(m.output_shape))
    return 4 * (math.prod(m.image_shape) + 2 * m.latent_dim)


def physical_memory() -> int | None:
    """Bytes of physical memory (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def check_batch_sizes(manifest, graphs: Sequence[str], batches: Sequence[int], memory: int | None) -> None:
    """Refuse, before anything is allocated, a batch whose inputs and outputs alone would not fit in MEMORY_SHARE of
    `memory` (e.g. --batch 100000000 of the default decoder: 4.6 TiB)."""
    if memory is None or not batches:
        return
    budget = int(memory * MEMORY_SHARE)
    for graph in (g for g in graphs if g in manifest.graphs):
        per = item_bytes(manifest, graph)
        if max(batches) * per > budget:
            raise BenchError(
                f"--batch {max(batches)}: the {graph}'s inputs and outputs alone need "
                f"{_fmt_bytes(max(batches) * per)} ({per} bytes per item), more than "
                f"{MEMORY_SHARE:.0%} of this machine's memory ({_fmt_bytes(memory)}); the largest "
                f"{graph} batch allowed here is {budget // per}"
            )


def _fmt_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def _load(plan: Plan, backend: str, precision: str, graphs: Sequence[str]):
    if backend == peer_row.BACKEND:  # OpenVINO's default compile of the plain export
        return peer_row.PeerRuntime(plan.peer_bundle, graphs, threads=plan.threads)
    if backend == "cpp":  # the C++ library through its C ABI, in-process (benchmarks/cpp_runtime.py)
        from .cpp_runtime import CppRuntime

        return CppRuntime(
            plan.bundle,
            device=plan.device,
            precision=precision,
            graphs=",".join(graphs),
            threads=plan.threads,
            batch_split=plan.batch_split,
            library=plan.cpp_lib,
        )
    import runtime

    kwargs: dict[str, Any] = {
        "backend": backend,
        "precision": precision,
        "device": plan.device,
        "graphs": tuple(graphs),
    }
    if plan.threads:
        kwargs["threads"] = plan.threads
    if backend == "torch" and plan.checkpoint:
        kwargs["checkpoint"] = plan.checkpoint
    if backend in ("onnxruntime", "openvino"):
        # Sessions now, not on the first call: a provider that is listed but cannot run here (onnxruntime-gpu
        # without a GPU falls back to the CPU; bf16 on a CPU that would run f32) is then refused by load(), and its
        # rows are skipped with the reason.
        kwargs["preload"] = True
    if backend == "onnxruntime":
        if plan.spinning is not None:
            kwargs["spinning"] = plan.spinning
        if plan.batch_split is not None:
            kwargs["batch_split"] = plan.batch_split
    kwargs.update(_tensorrt_options(plan, backend))
    return runtime.load(plan.bundle, **kwargs)


def _tensorrt_options(plan: Plan, backend: str) -> dict[str, Any]:
    """The tensorrt backend's options from the plan (none for other backends)."""
    if backend != "tensorrt":
        return {}
    out: dict[str, Any] = {}
    if plan.dla_core is not None:
        out["dla_core"] = plan.dla_core
    if plan.cuda_graph:
        out["cuda_graph"] = True
    return out


def run(plan: Plan) -> dict[str, Any]:
    """Measure everything in the plan and return the report dict (also what latency.json holds)."""
    from runtime.bundle import read_manifest

    manifest = read_manifest(plan.bundle)
    configs = [
        BenchConfig(b, g, p, n)
        for b, p, g, n in itertools.product(plan.backends, plan.precisions, plan.graphs, plan.batches)
    ]
    if plan.peer_bundle is not None:
        configs += [
            BenchConfig(peer_row.BACKEND, g, peer_row.PRECISION, n)
            for g, n in itertools.product(plan.graphs, plan.batches)
        ]
    results: dict[str, BenchResult] = {}
    loaded = _load_runtimes(plan, manifest, configs)
    active = _runnable_configs(configs, manifest, loaded.errors, results)
    in_effect = {k: rt.in_effect for k, rt in loaded.runtimes.items() if k[0] == peer_row.BACKEND}
    ceiling_of = {c.key: ceiling_precision(c.precision, plan.device, in_effect.get(c.runtime_key)) for c in active}
    accuracy = _accuracies(plan, manifest, loaded.runtimes, active, in_effect) if plan.accuracy else {}
    # fp32 always (the report's headline ceiling, as before), plus every other precision a row runs in.
    measured = _measure(plan, manifest, loaded.runtimes, active, results, {"fp32", *filter(None, ceiling_of.values())})
    best = {p: max(v) for p, v in measured.ceilings.items() if v}
    for c in measured.active:
        results[c.key] = _measured_result(c, measured.samples[c.key], manifest, ceiling_of[c.key], best)
    cold = _ColdStarts([], measured.interrupted)
    if plan.cold_start and not measured.interrupted:
        cold = _run_cold_starts(plan, manifest, loaded.errors)
    env = environment.collect(plan.threads)
    env["device"] = plan.device
    rows = []
    for c in configs:
        row = {
            **results[c.key].to_dict(),
            "device": plan.device,
            "peer": c.backend == peer_row.BACKEND,
            "accuracy": accuracy.get((c.backend, c.precision, c.graph)),
        }
        if row["peer"]:
            row["in_effect"] = in_effect.get(c.runtime_key)
        rows.append(row)
    _add_peer_ratios(rows)
    fp32 = measured.ceilings.get("fp32", [])
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "bundle": str(plan.bundle),
        "plan": _plan_summary(plan),
        "environment": env,
        # best / samples: the FP32 (numpy BLAS) ceiling, as before; by_precision: every ceiling measured, per engine.
        "matmul_ceiling_gflops": {
            "best": best.get("fp32", 0.0),
            "samples": fp32,
            "threads": measured.ceiling_threads,
            "by_precision": {
                p: {"best": best[p], "samples": v, "engines": measured.ceiling_engines.get(p, {})}
                for p, v in measured.ceilings.items()
                if v
            },
            "unavailable": measured.ceilings_unavailable,
        },
        "peer": _peer_summary(plan, loaded.runtimes),
        "interrupted": cold.interrupted,
        "results": rows,
        "cold_start": cold.rows,
    }


def _accuracies(
    plan: Plan,
    manifest,
    runtimes: dict[tuple[str, str, str], Any],
    active: Sequence[BenchConfig],
    in_effect: dict[tuple[str, str, str], str],
) -> dict[tuple[str, str, str], dict[str, Any]]:
    """(backend, precision, graph) -> the row's accuracy (benchmarks/accuracy.py), or {"error": why} where it could
    not be measured; once per loaded runtime and graph, before the timed rounds."""
    from .accuracy import measure_accuracy, runtime_call

    out: dict[tuple[str, str, str], dict[str, Any]] = {}
    for key in dict.fromkeys(c.runtime_key for c in active):
        backend, precision, graph = key
        budget = precision
        if key in in_effect:  # the peer: judged by the budget of what it computes in
            budget = {"bf16": "bf16", "f16": "fp16"}.get(in_effect[key], "fp32")
        try:
            acc = measure_accuracy(runtime_call(runtimes[key]), plan.bundle, manifest, graph, budget)
            out[(backend, precision, graph)] = acc.to_dict()
        except Exception as e:  # noqa: BLE001 - a row whose accuracy cannot be measured is still timed, and says why
            out[(backend, precision, graph)] = {"error": f"{type(e).__name__}: {_first_line(e)}"}
    return out


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else ""


def _add_peer_ratios(rows: list[dict[str, Any]]) -> None:
    """Each ok row's "vs_peer": the peer's median latency / the row's at the same graph and batch (> 1: faster than
    the peer); None where there is no measured peer row. Also per round ("vs_peer_rounds": the same ratio of the
    rounds' medians, round by round): on a machine that drifts, its median and spread say how firm the ratio is."""
    peer = {(r["graph"], r["batch"]): r for r in rows if r["peer"] and r["status"] == "ok"}
    for r in rows:
        base = peer.get((r["graph"], r["batch"]))
        ok = base is not None and r["status"] == "ok"
        r["vs_peer"] = base["stats"]["p50_ms"] / r["stats"]["p50_ms"] if ok else None
        r["vs_peer_rounds"] = (
            [b / x for b, x in zip(base["round_p50_ms"], r["round_p50_ms"], strict=False) if x > 0] if ok else []
        )


def _peer_summary(plan: Plan, runtimes: dict[tuple[str, str, str], Any]) -> dict[str, Any] | None:
    """What the peer row ran: the plain bundle, OpenVINO's version, the properties given (none but threads) and what
    it made of them."""
    if plan.peer_bundle is None:
        return None
    rt = next((rt for k, rt in runtimes.items() if k[0] == peer_row.BACKEND), None)
    return {"bundle": str(plan.peer_bundle), **(rt.describe() if rt is not None else {"status": "not loaded"})}


@dataclass(frozen=True)
class _LoadedRuntimes:
    runtimes: dict[tuple[str, str, str], Any]  # (backend, precision) -> runtime
    errors: dict[tuple[str, str, str], str]  # (backend, precision, graph) -> why it did not load


@dataclass(frozen=True)
class _Measurement:
    """The timed rounds: the configs that ran (warm-up failures removed), their per-round samples and the matmul
    ceilings; partial when interrupted."""

    active: list[BenchConfig]
    samples: dict[str, list[list[float]]]
    ceilings: dict[str, list[float]]  # precision -> per round, the best of its engines
    ceiling_engines: dict[str, dict[str, list[float]]]  # precision -> engine -> per round
    ceilings_unavailable: dict[str, str]  # precision -> why it could not be measured here
    ceiling_threads: int | None
    interrupted: bool


@dataclass(frozen=True)
class _ColdStarts:
    rows: list[dict[str, Any]]
    interrupted: bool  # the run as a whole: interrupted during the rounds or the cold starts


def _load_runtimes(plan: Plan, manifest, configs: Sequence[BenchConfig]) -> _LoadedRuntimes:
    """One runtime per (backend, precision) for every graph; where that fails, one per graph, so a graph the
    failure is not about is still measured (an int8 encoder beside a decoder whose int8 variant missed its budget).
    A load failure is kept, per graph, as the reason to skip its rows."""
    runtimes: dict[tuple[str, str, str], Any] = {}
    load_errors: dict[tuple[str, str, str], str] = {}
    # Only the requested graphs the bundle has are loaded: a decoder-only engine set must not fail on the encoder.
    graphs = [g for g in plan.graphs if g in manifest.graphs]
    for backend, precision in dict.fromkeys((c.backend, c.precision) for c in configs):
        if not graphs:
            break
        try:
            rt = _load(plan, backend, precision, graphs)
            runtimes.update({(backend, precision, g): rt for g in graphs})
            continue
        except Exception as e:  # noqa: BLE001 - any load failure means "skip this backend", with its message
            if len(graphs) == 1:
                load_errors[(backend, precision, graphs[0])] = _load_error(e)
                continue
        for g in graphs:
            try:
                runtimes[(backend, precision, g)] = _load(plan, backend, precision, [g])
            except Exception as e:  # noqa: BLE001 - as above, for this graph alone
                load_errors[(backend, precision, g)] = _load_error(e)
    return _LoadedRuntimes(runtimes, load_errors)


def _load_error(e: BaseException) -> str:
    return f"{type(e).__name__}: {_first_line(e)}"


def _runnable_configs(
    configs: Sequence[BenchConfig],
    manifest,
    load_errors: dict[tuple[str, str, str], str],
    results: dict[str, BenchResult],
) -> list[BenchConfig]:
    """The configs that can be measured; the others get their skipped row in `results`."""
    active = []
    for c in configs:
        if c.graph not in manifest.graphs:
            results[c.key] = BenchResult(c, "skipped", f"bundle has no {c.graph} graph")
        elif c.runtime_key in load_errors:
            results[c.key] = BenchResult(c, "skipped", load_errors[c.runtime_key])
        else:
            active.append(c)
    return active


def _measure(
    plan: Plan,
    manifest,
    runtimes: dict[tuple[str, str, str], Any],
    active: list[BenchConfig],
    results: dict[str, BenchResult],
    ceiling_precisions: set[str],
) -> _Measurement:
    """Warm up, then time every active config in interleaved rounds, with the matmul ceilings of
    `ceiling_precisions`; closes the runtimes. Ctrl-C stops early."""
    samples: dict[str, list[list[float]]] = {c.key: [] for c in active}
    interrupted = False
    # Every ceiling engine on as many threads as the backends use, so the share compares work on the same cores.
    ceiling_threads = plan.threads or os.cpu_count()
    engines = {ENGINE_OF_BACKEND[c.backend] for c in active if c.backend in ENGINE_OF_BACKEND}
    probes, unavailable = build_probes(ceiling_precisions, ceiling_threads, engines)
    by_engine: dict[str, dict[str, list[float]]] = {}
    ceilings: dict[str, list[float]] = {}
    bar = progress(total=len(active) * plan.rounds, desc="benchmark", enabled=plan.progress)
    try:
        _warm_up(plan, manifest, runtimes, active, samples, results)
        bar.total = len(active) * plan.rounds
        _timed_rounds(plan, manifest, runtimes, active, samples, probes, by_engine, ceilings, bar)
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: reporting what was measured so far", file=sys.stderr)
    finally:
        bar.close()
        for rt in {id(rt): rt for rt in runtimes.values()}.values():  # a runtime may serve several graphs
            rt.close()
    return _Measurement(active, samples, ceilings, by_engine, unavailable, ceiling_threads, interrupted)


def _warm_up(
    plan: Plan,
    manifest,
    runtimes: dict[tuple[str, str, str], Any],
    active: list[BenchConfig],
    samples: dict[str, list[list[float]]],
    results: dict[str, BenchResult],
) -> None:
    """Warm-up once per config (first-call allocations, thread pools, lazy init). A config that fails gets its
    error row and leaves `active` and `samples`; the others are measured."""
    for c in list(active):
        fn = _call(runtimes[c.runtime_key], c.graph, _inputs(manifest, c.graph, c.batch, plan.seed))
        try:
            timed_calls(fn, duration_s=plan.warmup_s, iterations=None, min_calls=2)
        except Exception as e:  # noqa: BLE001 - a config that cannot run is reported; the others are measured
            first = str(e).splitlines()[0] if str(e) else ""
            results[c.key] = BenchResult(c, "error", f"{type(e).__name__}: {first}")
            active.remove(c)
            samples.pop(c.key)


def _timed_rounds(
    plan: Plan,
    manifest,
    runtimes: dict[tuple[str, str, str], Any],
    active: list[BenchConfig],
    samples: dict[str, list[list[float]]],
    probes: Sequence[Probe],
    engines: dict[str, dict[str, list[float]]],
    ceilings: dict[str, list[float]],
    bar,
) -> None:
    """Each round: the matmul ceilings, then every config (order reversed every other round). Appends to `samples`,
    `engines` and `ceilings` as it goes, so an interrupt keeps what was measured."""
    per_round_s = plan.duration_s / plan.rounds if plan.duration_s is not None else None
    per_round_n = max(1, math.ceil(plan.iterations / plan.rounds)) if plan.iterations is not None else None
    for r in range(plan.rounds):
        this_round: dict[str, float] = {}
        for probe in probes:
            value = probe.measure()
            engines.setdefault(probe.precision, {}).setdefault(probe.engine, []).append(value)
            this_round[probe.precision] = max(this_round.get(probe.precision, 0.0), value)
        for precision, value in this_round.items():
            ceilings.setdefault(precision, []).append(value)
        order = active if r % 2 == 0 else active[::-1]
        for c in order:
            bar.set_postfix_str(c.key)
            fn = _call(runtimes[c.runtime_key], c.graph, _inputs(manifest, c.graph, c.batch, plan.seed))
            samples[c.key].append(timed_calls(fn, duration_s=per_round_s, iterations=per_round_n))
            bar.update(1)


def _measured_result(
    c: BenchConfig, samples: list[list[float]], manifest, ceiling: str | None, best: dict[str, float]
) -> BenchResult:
    """The ok row of one config from its rounds' samples (skipped if interrupted before any); its share is against
    the best ceiling of its own precision `ceiling` (none when that ceiling was not measured)."""
    from .flops import count_flops

    rounds = [s for s in samples if s]
    if not rounds:
        return BenchResult(c, "skipped", "interrupted before it was measured")
    cfg_json = json.dumps({k: v for k, v in manifest.model.to_dict().items() if k != "family"}, sort_keys=True)
    stats = summarize([x for s in rounds for x in s], c.batch)
    gflop = count_flops(cfg_json, c.graph, c.batch) / 1e9
    gflops = gflop / (stats.p50_ms / 1e3)
    rate = best.get(ceiling) if ceiling else None
    return BenchResult(
        c,
        "ok",
        stats=stats,
        round_p50_ms=tuple(float(np.median(s)) for s in rounds),
        gflop_per_call=gflop,
        gflops=gflops,
        ceiling_share=gflops / rate if rate else None,
        ceiling_precision=ceiling if rate else None,
    )


def _run_cold_starts(plan: Plan, manifest, load_errors: dict[tuple[str, str, str], str]) -> _ColdStarts:
    cold: list[dict[str, Any]] = []
    try:
        _cold_starts(plan, manifest, load_errors, cold)
    except KeyboardInterrupt:
        print("\ninterrupted during the cold starts: reporting what was measured so far", file=sys.stderr)
        return _ColdStarts(cold, True)
    return _ColdStarts(cold, False)


def _plan_summary(plan: Plan) -> dict[str, Any]:
    """The report's "plan": the options the numbers were measured with."""
    return {
        "backends": plan.backends,
        "graphs": plan.graphs,
        "precisions": plan.precisions,
        "batches": plan.batches,
        "warmup_s": plan.warmup_s,
        "duration_s": plan.duration_s,
        "iterations": plan.iterations,
        "rounds": plan.rounds,
        "threads": plan.threads,
        "seed": plan.seed,
        "spinning": plan.spinning,
        "batch_split": plan.batch_split,
        "dla_core": plan.dla_core,
        "cuda_graph": plan.cuda_graph,
        "cold_start_runs": plan.cold_start_runs,
        "device": plan.device,
        "peer_bundle": str(plan.peer_bundle) if plan.peer_bundle else None,
        "accuracy": plan.accuracy,
    }


def _call(rt, graph: str, x: np.ndarray) -> Callable[[], Any]:
    return (lambda: rt.decode(x)) if graph == "decoder" else (lambda: rt.encode(x))


def _cold_starts(plan: Plan, manifest, load_errors: dict[tuple[str, str, str], str], out: list[dict[str, Any]]) -> None:
    """New process -> first decoded image, per backend, on the plan's device (decoder only, first precision).

    Results are appended to `out` as they come, so an interrupt keeps the ones already measured.
    """
    from .coldstart import ColdStartError, best_of, cold_start_cpp, cold_start_runtime, cold_start_torch

    precision = plan.precisions[0]
    for backend in plan.backends:
        if "decoder" not in manifest.graphs:
            break
        path = "torch" if backend == "torch" else f"{backend}/{precision}"
        if backend == "torch" and plan.checkpoint is None:
            out.append({"path": path, "status": "skipped", "reason": "needs --checkpoint", "device": plan.device})
            continue
        # A backend that could not load in this process would fail the same way in a fresh one: say why, once.
        why = load_errors.get((backend, "fp32" if backend == "torch" else precision, "decoder"))
        if why is not None:
            out.append({"path": path, "status": "skipped", "reason": why, "device": plan.device})
            continue
        try:
            if backend == "torch":
                r = best_of(lambda: cold_start_torch(plan.checkpoint, plan.device), plan.cold_start_runs)
            elif backend == "cpp":
                from .cpp_runtime import find_library

                exe = find_library(plan.cpp_lib).parent / "vae_decode"
                r = best_of(partial(cold_start_cpp, plan.bundle, exe, precision, plan.device), plan.cold_start_runs)
            else:
                opts = _tensorrt_options(plan, backend)
                run = partial(cold_start_runtime, plan.bundle, backend, precision, plan.device, opts)
                r = best_of(run, plan.cold_start_runs)
            out.append({**r.to_dict(), "status": "ok", "device": plan.device})
        except ColdStartError as e:
            out.append({"path": path, "status": "error", "reason": str(e), "device": plan.device})


# ----------------------------------------------------------------------------------------------- outputs

OUTPUT_FILES = ("latency.json", "latency.csv", "latency_percentiles.png", "throughput.png")


def check_out_dir(out: Path) -> None:
    """Before any measuring: `out` must be (or become) a folder this user can write, whose output names are free for
    files, so a whole run is never measured only to be lost at the end. Creates the folder."""
    if out.exists() and not out.is_dir():
        raise BenchError(
            f"--out {out}: exists and is not a folder (--out names the folder for {', '.join(OUTPUT_FILES)})"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BenchError(f"--out {out}: cannot create the folder: {e.strerror or e}") from None
    blocked = [n for n in OUTPUT_FILES if (out / n).exists() and not (out / n).is_file()]
    if blocked:
        raise BenchError(f"--out {out}: {blocked} exist and are not files; the results are written under these names")
    if not os.access(out, os.W_OK | os.X_OK):
        raise BenchError(f"--out {out}: this user cannot write in the folder")


# ----------------------------------------------------------------------------------------------- CLI


def _csv_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _int_list(text: str) -> list[int]:
    try:
        vals = [int(t) for t in _csv_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"batch sizes must be >= 1, got {text!r}")
    return vals


def _dla_core(text: str) -> int:
    try:
        core = int(text)
    except ValueError:
        core = -1
    if core < 0:
        raise argparse.ArgumentTypeError(f"expected a DLA core index >= 0, got {text!r}")
    return core


def _batch_split(text: str) -> int | bool:
    if text.strip().lower() == "off":
        return False
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 2:
        raise argparse.ArgumentTypeError(f"expected 'off' or a batch size >= 2, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:

    p = argparse.ArgumentParser(
        prog=prog_name("benchmarks.latency"),
        description=__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter,
        epilog=epilog(
            {
                0: "measured and reported (also when interrupted, or when --compare finds regressions: said on stderr)",
                1: "--record-auto recorded nothing: the run was interrupted, or no onnxruntime / openvino row was "
                "measured (said on stderr)",
                2: "bad input or option (one line on stderr)",
            },
            "%(prog)s runs/bundle --out runs/latency",
            "%(prog)s runs/bundle --backends onnxruntime --graphs decoder --batch 1,64 --precision fp32,int8",
            "%(prog)s runs/bundle --backends tensorrt --device cuda --precision fp16 --compare "
            "runs/latency/latency.json",
        ),
    )
    p.add_argument("bundle", type=Path, metavar="BUNDLE", help="bundle folder written by export.to_onnx")
    p.add_argument(
        "--backends",
        type=_csv_list,
        default=["torch", "onnxruntime"],
        metavar="LIST",
        help=f"comma-separated, some of {', '.join(BACKENDS)}",
    )
    add_graphs_argument(
        p, what="graphs to time", default="encoder,decoder; a graph the bundle lacks gives skipped rows"
    )
    p.add_argument(
        "--batch",
        type=_int_list,
        default=[1, 8, 64],
        metavar="LIST",
        help="comma-separated batch sizes, each timed for every backend, graph and precision",
    )
    p.add_argument(
        "--precision",
        type=_csv_list,
        default=["fp32"],
        metavar="LIST",
        help="comma-separated, some of fp32, fp16, int8, bf16 (fp16 / int8: the bundle's variants, or "
        "engines for tensorrt; bf16: openvino's bf16 execution where vae.json records it; a backend "
        "without one gives skipped rows)",
    )
    p.add_argument("--warmup", type=float, default=1.0, metavar="S", help="seconds of warm-up per configuration")
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--duration", type=float, default=None, metavar="S", help="seconds of timed calls per configuration (default 3)"
    )
    g.add_argument(
        "--iterations",
        type=int,
        default=None,
        metavar="N",
        help="timed calls per configuration (instead of --duration)",
    )
    p.add_argument("--rounds", type=int, default=3, metavar="N", help="interleaved rounds the time is split into")
    p.add_argument(
        "--device",
        default="cpu",
        help="device for every backend: cpu (default), cuda or cuda:N (the tensorrt backend needs cuda; "
        "torch runs there when it sees CUDA)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="intra-op threads for every backend (default: each backend's choice)",
    )
    p.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        metavar="CKPT",
        help="checkpoint for the torch backend and its cold start",
    )
    p.add_argument("--no-cold-start", action="store_true", help="skip the cold-start measurement")
    p.add_argument(
        "--cold-start-runs",
        type=int,
        default=3,
        metavar="N",
        help="fresh processes per cold-start path: best time, highest peak RSS (default 3)",
    )
    p.add_argument(
        "--spinning",
        choices=("on", "off"),
        default=None,
        help="ONNX Runtime intra-op thread spinning (default: ONNX Runtime's, on). 'off' is slower on "
        "cores of one's own, kinder to other processes on shared cores",
    )
    p.add_argument(
        "--batch-split",
        type=_batch_split,
        default=None,
        metavar="N|off",
        help="onnxruntime and cpp on the CPU: smallest batch cut into one chunk per core, each run by a "
        "single-threaded session (default: the runtimes', 32); 'off' runs every batch as one call",
    )
    p.add_argument(
        "--dla-core",
        type=_dla_core,
        default=None,
        metavar="N",
        help="tensorrt on a Jetson: measure the engines built for DLA core N (python -m export.tensorrt.build "
        "--dla-core N); default: the GPU engines",
    )
    p.add_argument(
        "--cuda-graph",
        action="store_true",
        help="tensorrt: replay each batch size as a captured CUDA graph (after one plain run)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="folder for latency.json/.csv and the PNG plots (default: none written, the table only)",
    )
    p.add_argument(
        "--compare", type=Path, default=None, metavar="JSON", help="an earlier latency.json to compare against"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the input set every backend is timed on")
    p.add_argument(
        "--cpp-lib",
        type=Path,
        default=None,
        metavar="LIB",
        help="libvae_runtime.so for --backends cpp (default: $VAE_RUNTIME_LIB, else what `make cpp` builds); "
        "its vae_decode beside it is used for the cold start",
    )
    p.add_argument(
        "--peer-bundle",
        type=Path,
        default=None,
        metavar="PLAIN_BUNDLE",
        help="add the peer row: OpenVINO's default configuration (no properties: bf16 on CPUs that have "
        "it) on this plain export of the same checkpoint (python -m export.to_onnx CKPT --no-rewrite), "
        "and every row's speed as a ratio to it (benchmarks/peer.py)",
    )
    p.add_argument(
        "--peer",
        action="store_true",
        help="add the peer row, exporting the plain bundle from --checkpoint first (into OUT/peer-bundle "
        "with --out, else a temporary folder); --peer-bundle names an existing one instead",
    )
    p.add_argument(
        "--no-accuracy",
        action="store_true",
        help="skip each row's accuracy check on the bundle's reference inputs (default: measured once "
        "per backend, precision and graph, before the timed rounds)",
    )
    p.add_argument(
        "--record-auto",
        action="store_true",
        help="write the CPU medians of onnxruntime and openvino into the bundle's vae.json as this machine's record "
        "(CPU model, ISA flags, usable CPUs, --threads): runtime.load(backend='auto') then picks the backend with "
        "the best geometric mean of median / best median at the precision and graphs it loads, on this machine "
        "only; needs --device cpu and the backends' defaults (no --spinning, --batch-split)",
    )
    p.add_argument(
        "--no-progress", action="store_true", help="no progress output (a bar on a terminal, a few lines in a log)"
    )
    return p


def _peer_bundle(args: argparse.Namespace, manifest) -> Path | None:
    """The plain bundle of the peer row: --peer-bundle, checked; or with --peer, exported from --checkpoint (into
    OUT/peer-bundle, else a temporary folder removed at exit); None without either."""
    if args.peer_bundle is not None:
        peer_row.check_peer_bundle(args.peer_bundle, manifest, args.graphs)
        return args.peer_bundle
    if not args.peer:
        return None
    if args.checkpoint is None:
        raise BenchError("--peer: needs --checkpoint CKPT to export the plain bundle from (or --peer-bundle DIR)")
    if args.out is not None:
        out = args.out / "peer-bundle"
    else:
        import atexit
        import shutil
        import tempfile

        tmp = tempfile.mkdtemp(prefix="vae-peer-")
        atexit.register(shutil.rmtree, tmp, True)
        out = Path(tmp) / "peer-bundle"
    from vae_model.errors import VaeModelError

    print(f"exporting the plain bundle for the peer row: {out}", file=sys.stderr)
    try:
        graphs = [g for g in args.graphs if g in manifest.graphs]
        out = peer_row.export_peer_bundle(args.checkpoint, out, graphs)
    except VaeModelError as e:  # the checkpoint (CheckpointError); export errors are VaeErrors
        raise BenchError(f"--peer: cannot export {args.checkpoint}: {e}") from None
    peer_row.check_peer_bundle(out, manifest, args.graphs)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.graphs = list(args.graphs or ("encoder", "decoder"))  # omitted (or 'both'): both graphs
    from runtime.backends.base import Device
    from runtime.bundle import read_manifest
    from runtime.errors import VaeError

    try:
        manifest = read_manifest(args.bundle)
        device = str(Device.parse(args.device))
        bad = [b for b in args.backends if b not in BACKENDS]
        if bad:
            raise BenchError(f"--backends: unknown {bad}; expected some of {list(BACKENDS)}")
        bad = [g for g in args.graphs if g not in ("encoder", "decoder")]
        if bad:
            raise BenchError(f"--graphs: unknown {bad}; expected encoder and/or decoder")
        bad = [p for p in args.precision if p not in PRECISIONS]
        if bad:
            raise BenchError(f"--precision: unknown {bad}; expected some of {', '.join(PRECISIONS)}")
        if args.rounds < 1 or (args.iterations is not None and args.iterations < 1) or args.cold_start_runs < 1:
            raise BenchError("--rounds, --iterations and --cold-start-runs must be >= 1")
        if args.threads is not None and args.threads < 1:
            raise BenchError(f"--threads must be >= 1, got {args.threads}")
        if args.warmup < 0 or (args.duration is not None and not args.duration > 0):
            raise BenchError(f"--warmup must be >= 0 and --duration > 0, got {args.warmup} and {args.duration}")
        check_batch_sizes(manifest, args.graphs, args.batch, physical_memory())
        if args.record_auto:
            from .auto_record import check_options

            check_options(args.backends, device, args.spinning, args.batch_split)
        if args.out is not None:
            check_out_dir(args.out)
        old = None
        if args.compare is not None:
            try:
                old = json.loads(args.compare.read_text())
            except (OSError, json.JSONDecodeError) as e:
                raise BenchError(f"--compare {args.compare}: cannot read a latency.json: {e}") from None
            if not isinstance(old, dict) or old.get("schema") != SCHEMA:
                got = old.get("schema") if isinstance(old, dict) else type(old).__name__
                raise BenchError(f"--compare {args.compare}: schema {got!r}, expected {SCHEMA!r}")
            check_report_rows(old, args.compare)
        peer_bundle = _peer_bundle(args, manifest)
    except VaeError as e:  # BundleError, BenchError, BackendError, ...
        print(f"error: {e}", file=sys.stderr)
        return 2
    duration = args.duration if args.duration is not None else (None if args.iterations else 3.0)
    plan = Plan(
        bundle=args.bundle,
        backends=args.backends,
        graphs=args.graphs,
        precisions=args.precision,
        batches=args.batch,
        warmup_s=args.warmup,
        duration_s=duration,
        iterations=args.iterations,
        rounds=args.rounds,
        threads=args.threads,
        checkpoint=args.checkpoint,
        cold_start=not args.no_cold_start,
        cold_start_runs=args.cold_start_runs,
        spinning=None if args.spinning is None else args.spinning == "on",
        batch_split=args.batch_split,
        device=device,
        dla_core=args.dla_core,
        cuda_graph=args.cuda_graph,
        cpp_lib=args.cpp_lib,
        progress=not args.no_progress,
        seed=args.seed,
        peer_bundle=peer_bundle,
        accuracy=not args.no_accuracy,
    )
    report = run(plan)
    print(format_table(report))
    if args.out is not None:
        paths = write_outputs(report, args.out)
        print("wrote " + ", ".join(str(p) for p in paths))
    if old is not None:
        text, changes = compare_reports(old, report)
        print(text)
        if any(c.verdict == "regression" for c in changes):
            print("regressions beyond the measured noise were found", file=sys.stderr)
    if args.record_auto:
        command = shlex.join(["python", "-m", "benchmarks.latency", *(sys.argv[1:] if argv is None else argv)])
        return _record_auto(report, plan, command)
    return 0


def _record_auto(report: dict[str, Any], plan: Plan, command: str) -> int:
    """--record-auto after the run: write the record and print what it says; 1 when there is nothing to record."""
    from runtime.errors import VaeError

    from .auto_record import build_record, record

    try:
        rec = build_record(report, plan, command)
        if rec is None:
            why = "the run was interrupted" if report["interrupted"] else "no onnxruntime / openvino row was measured"
            print(f"--record-auto: nothing recorded: {why}", file=sys.stderr)
            return 1
        print("\n".join(record(plan.bundle, rec)))
    except VaeError as e:  # the bundle changed during the run, or vae.json cannot be written
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
