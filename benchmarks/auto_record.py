"""`python -m benchmarks.latency BUNDLE --record-auto`: this run's CPU medians into vae.json, for backend="auto".

The record (runtime.bundle.AutoRecord) holds the median latency of every built-in CPU backend measured (those of
runtime.backends.AUTO_ORDER["cpu"]: onnxruntime, openvino; not the peer row, torch or cpp) per precision, graph,
batch and backend, with this machine's fingerprint (runtime/backends/auto.py: this_machine), the engine versions, the
sha256 of each file measured, the date and the harness's command line and settings. Recording again on the same
machine replaces that machine's record; other machines' records are kept. A precision only one backend was measured
at is recorded too (there is no choice then; the printed line says so). runtime/backends/auto.py is how "auto"
reads it.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

from runtime.backends import AUTO_ORDER, auto
from runtime.bundle import AutoRecord, MeasuredGraph, read_manifest, resolve_file, write_manifest

from .errors import BenchError

CPU_BACKENDS = AUTO_ORDER["cpu"]


def check_options(backends: Sequence[str], device: str, spinning: str | None, batch_split: Any) -> None:
    """Before measuring: the run must measure what load(backend="auto") would run on the CPU."""
    if device != "cpu":
        raise BenchError(f"--record-auto: records the CPU backends' speed, got --device {device}")
    if not set(backends) & set(CPU_BACKENDS):
        raise BenchError(
            f"--record-auto: needs some of {list(CPU_BACKENDS)} in --backends (what 'auto' chooses between on the "
            f"CPU), got {list(backends)}"
        )
    if spinning is not None or batch_split is not None:
        raise BenchError(
            "--record-auto: records what load(backend='auto') runs, with the backends' defaults; drop --spinning "
            "and --batch-split"
        )


def build_record(report: dict[str, Any], plan: Any, command: str) -> AutoRecord | None:
    """The record of this run's ok CPU rows (None: there are none, or the run was interrupted). Each file measured
    is checked against the sha256 vae.json lists for it (BundleError if it changed since)."""
    rows = [r for r in report["results"] if r["status"] == "ok" and not r["peer"] and r["backend"] in CPU_BACKENDS]
    if report["interrupted"] or not rows:
        return None
    manifest = read_manifest(plan.bundle)
    times: dict[tuple[str, str], dict[int, dict[str, float]]] = defaultdict(dict)
    for r in rows:
        times[(r["precision"], r["graph"])].setdefault(r["batch"], {})[r["backend"]] = round(r["stats"]["p50_ms"], 4)
    precisions: dict[str, dict[str, MeasuredGraph]] = {}
    for (precision, graph), median_ms in sorted(times.items()):
        file, sha = auto.measured_file(manifest, graph, precision)
        resolve_file(plan.bundle, file, sha)
        precisions.setdefault(precision, {})[graph] = MeasuredGraph(file, sha, median_ms)
    harness = {
        "command": command,
        "warmup_s": plan.warmup_s,
        "duration_s": plan.duration_s,
        "iterations": plan.iterations,
        "rounds": plan.rounds,
        "seed": plan.seed,
    }
    return AutoRecord(
        machine=auto.this_machine(plan.threads),
        versions={b: auto.engine_version(b) for b in sorted({r["backend"] for r in rows})},
        precisions=precisions,
        measured=report["created"],
        harness=harness,
    )


def record(bundle: Path, rec: AutoRecord) -> list[str]:
    """Write `rec` into the bundle's vae.json (atomically, over the manifest as it is now); the lines that say what
    was recorded: per precision, the backend "auto" takes there and the geomean ratios."""
    root = bundle if bundle.is_dir() else bundle.parent
    manifest = read_manifest(root)
    replaced = any(r.machine == rec.machine for r in manifest.auto)
    try:
        path = write_manifest(root, manifest.with_auto_record(rec))
    except OSError as e:
        raise BenchError(f"--record-auto: cannot write {root / 'vae.json'}: {e}") from None
    versions = ", ".join(f"{b} {v}" for b, v in sorted(rec.versions.items()))
    lines = [
        f"recorded for backend='auto' in {path} ({'replaced' if replaced else 'added'} the record of this machine: "
        f"{auto.describe_machine(rec.machine)}; {versions}):"
    ]
    for precision, graphs in sorted(rec.precisions.items()):
        ranking = auto.rank(rec, precision, tuple(graphs), CPU_BACKENDS)
        if isinstance(ranking, str):
            lines.append(f"  {precision}: no choice: {ranking}")
        else:
            lines.append(f"  {precision}: {ranking.order[0]} ({ranking.describe()})")
    return lines
