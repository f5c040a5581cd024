"""The latency report as people read it: the terminal table (with what was not measured, notes where a figure needs
one, and a legend of the columns under it), the CSV and PNG files, and the comparison of two reports.

Pure functions of the report dict that benchmarks/latency.py builds (and latency.json holds), so an old report can
be re-read and re-printed.
"""

from __future__ import annotations

import csv
import textwrap
from pathlib import Path
from typing import Any, Sequence

from .errors import BenchError
from .peer import BACKEND as PEER_BACKEND
from .stats import LatencyStats, compare

WIDTH = 118
CEILING_ENGINES = {
    "fp32": "numpy's BLAS and the rows' engines' MatMul",
    "bf16": "OpenVINO's bf16 MatMul",
    "int8": "the rows' engines' int8 MatMul (ONNX Runtime MatMulInteger, OpenVINO), GOP/s",
}
FP16_CPU_NOTE = (
    "fp16 on the ONNX Runtime CPU provider runs slower than fp32: no native FP16 kernels on this CPU; use "
    "fp16 for TensorRT/GPU"
)
_GRAPH_ORDER = {"decoder": 0, "encoder": 1}
_PRECISION_ORDER = {"fp32": 0, "bf16": 1, "fp16": 2, "int8": 3}


def _wrap(text: str, indent: str = "  ") -> list[str]:
    return textwrap.wrap(text, width=WIDTH, initial_indent=indent, subsequent_indent=indent + "  ")


def _ceiling_of(r: dict[str, Any]) -> str | None:
    """The ceiling a row's share is against; a report written before rows named it held every row against fp32."""
    return r["ceiling_precision"] if "ceiling_precision" in r else "fp32"


def _ceilings_shown(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The ceiling precisions the ok rows are held against, in a fixed order: one %ceil column each."""
    used = {_ceiling_of(r) for r in rows if r["status"] == "ok"}
    return [p for p in ("fp32", "bf16", "int8") if p in used]


def _sorted_ok(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The measured rows by graph, then batch; within each, this toolkit's options first and the peer row last."""
    backends = list(report.get("plan", {}).get("backends", []))
    return sorted(
        (r for r in report["results"] if r["status"] == "ok"),
        key=lambda r: (
            _GRAPH_ORDER.get(r["graph"], 9),
            r["batch"],
            bool(r.get("peer")),
            backends.index(r["backend"]) if r["backend"] in backends else 99,
            _PRECISION_ORDER.get(r["precision"], 9),
        ),
    )


def _accuracy_cell(r: dict[str, Any]) -> str:
    acc = r.get("accuracy")
    if not acc:
        return "-"
    if "error" in acc:
        return "n/a"
    value = acc.get("value")
    if value is None:  # identical outputs: infinite PSNR
        return f"exact {'ok' if acc['passed'] else 'MISS'}"
    fig = f"{value:.1f}dB" if acc["metric"] == "min_psnr_db" else f"{value:.1e}"
    return f"{fig} {'ok' if acc['passed'] else 'MISS'}"


def format_table(report: dict[str, Any]) -> str:
    rows = _sorted_ok(report)
    ceilings = _ceilings_shown(rows)
    has_peer = any(r.get("peer") for r in rows)
    head = (
        f"{'backend':<12} {'graph':<8} {'prec':<7} {'batch':>5} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} "
        f"{'cv':>5} {'drift':>5} {'img/s':>9} {'GFLOP/s':>8}"
        + "".join(f" {'%ceil(' + p + ')':>11}" for p in ceilings)
        + f" {'accuracy':>11}"
        + (f" {'vs peer':>7}" if has_peer else "")
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        s = r["stats"]
        cells = "".join(
            f" {100 * r['ceiling_share']:>10.1f}%"
            if _ceiling_of(r) == p and r.get("ceiling_share") is not None
            else f" {'-':>11}"
            for p in ceilings
        )
        peer = ""
        if has_peer:
            peer = f" {r['vs_peer']:>6.2f}x" if r.get("vs_peer") is not None else f" {'-':>7}"
        lines.append(
            f"{r['backend']:<12} {r['graph']:<8} {r['precision']:<7} {r['batch']:>5} {s['p50_ms']:>9.3f} "
            f"{s['p90_ms']:>9.3f} {s['p99_ms']:>9.3f} {r.get('round_cv', 0.0):>5.2f} {r['drift']:>5.2f} "
            f"{s['throughput']:>9.1f} {r['gflops']:>8.2f}{cells} {_accuracy_cell(r):>11}{peer}"
        )
    if not rows:
        lines.append("(nothing measured)")
    lines += _not_measured(report)
    lines += _notes(report, rows)
    lines += _legend(ceilings, has_peer, rows)
    lines += _ceiling_lines(report)
    lines += _cold_start_lines(report)
    return "\n".join(lines)


def _coverage(cells: set[tuple[str, int]], graphs: Sequence[str], batches: Sequence[int]) -> str:
    """Which (graph, batch) cells a group of rows covers, in words."""
    if cells == {(g, b) for g in graphs for b in batches}:
        return "every graph and batch"
    parts = []
    for g in [g for g in graphs if any(c[0] == g for c in cells)]:
        bs = sorted(b for gg, b in cells if gg == g)
        parts.append(f"{g} " + ("every batch" if bs == sorted(batches) else ", ".join(f"b{b}" for b in bs)))
    return "; ".join(parts)


def _not_measured(report: dict[str, Any]) -> list[str]:
    """The combinations that were skipped or failed, once each, grouped by reason: not as table rows."""
    plan = report.get("plan", {})
    missing = [r for r in report["results"] if r["status"] != "ok"]
    if not missing:
        return []
    graphs = plan.get("graphs") or sorted({r["graph"] for r in report["results"]})
    batches = plan.get("batches") or sorted({r["batch"] for r in report["results"]})
    per_option: dict[tuple[str, str, str, str], set[tuple[str, int]]] = {}
    for r in missing:
        per_option.setdefault((r["backend"], r["precision"], r["status"], r["reason"]), set()).add(
            (r["graph"], r["batch"])
        )
    grouped: dict[tuple[str, str, str], list[str]] = {}
    for (backend, precision, status, reason), cells in per_option.items():
        grouped.setdefault((status, reason, _coverage(cells, graphs, batches)), []).append(f"{backend} {precision}")
    lines = [f"not measured: {len(missing)} of {len(report['results'])} combinations"]
    for (status, reason, where), options in grouped.items():
        lines += _wrap(f"{', '.join(options)} ({where}): {status}: {reason}")
    return lines


def _notes(report: dict[str, Any], rows: Sequence[dict[str, Any]]) -> list[str]:
    """Notes a figure needs where it is shown: fp16 on a CPU, and what the peer row is."""
    lines = []
    by_key = {(r["backend"], r["graph"], r["batch"], r["precision"]): r for r in rows}
    cpu = str(report.get("environment", {}).get("device", "cpu")).startswith("cpu")
    for backends, text in (
        (("onnxruntime", "cpp"), FP16_CPU_NOTE),
        (
            ("openvino",),
            "fp16 on OpenVINO's CPU plugin runs the fp16 variant in fp32 arithmetic "
            "(f32 precision hint): its speed is not an fp16 speed",
        ),
    ):
        ratios = []
        for r in rows:
            if cpu and r["backend"] in backends and r["precision"] == "fp16":
                base = by_key.get((r["backend"], r["graph"], r["batch"], "fp32"))
                if base is not None:
                    ratios.append(
                        f"{r['backend']} {r['graph']} b{r['batch']} "
                        f"{r['stats']['p50_ms'] / base['stats']['p50_ms']:.2f}x"
                    )
        if any(r["backend"] in backends and r["precision"] == "fp16" for r in rows) and cpu:
            measured = f" (fp16 / fp32 median latency here: {', '.join(ratios)})" if ratios else ""
            lines += _wrap(f"note: {text}{measured}.", indent="")
    peer = report.get("peer")
    if peer and any(r.get("peer") for r in rows):
        props = peer.get("properties") or {}
        lines += _wrap(
            f"peer row ({PEER_BACKEND}): OpenVINO {peer.get('openvino')} "
            f"compile_model(CPU) of the plain export {peer.get('bundle')} with "
            f"{'properties ' + str(props) if props else 'no properties'} (its defaults: inference "
            f"precision in effect {peer.get('inference_precision')}); this toolkit's options are beside it "
            "at the same graph and batch.",
            indent="",
        )
    return lines


def _legend(ceilings: Sequence[str], has_peer: bool, rows: Sequence[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    parts = [
        "p50/p90/p99 ms: per-call latency percentiles over every timed call of every round",
        "cv: coefficient of variation (stdev / mean) of the per-round throughput",
        "drift: max / min of the per-round median latencies (1.00 = steady; a change between two runs is "
        "believable only beyond it)",
        "img/s: batch / p50",
        "GFLOP/s: the original PyTorch model's useful FLOPs per call (benchmarks/flops.py) / p50",
    ]
    if ceilings:
        which = "; ".join(f"{p}: {CEILING_ENGINES[p]}" for p in ceilings)
        parts.append(
            f"%ceil(P): GFLOP/s as a share of the best P matmul rate measured in this run on the same "
            f"threads ({which}); each row only against the precision it computes in (fp16 on a CPU: fp32), "
            "'-' elsewhere"
        )
    parts.append(
        "accuracy: worst decoder PSNR (dB over [-1, 1]) or worst encoder rel L2 on the bundle's reference "
        "inputs against PyTorch FP32; ok / MISS against the budget vae.json records for the precision "
        "(fp32: the export's parity gate)"
    )
    if has_peer:
        parts.append(
            "vs peer: the peer row's p50 / this row's p50 at the same graph and batch (> 1: faster than the peer)"
        )
    return _wrap("columns: " + "; ".join(parts) + ".", indent="")


def _ceiling_lines(report: dict[str, Any]) -> list[str]:
    c = report["matmul_ceiling_gflops"]
    threads = c.get("threads")
    on = f", {threads} thread{'s' if threads != 1 else ''}" if threads else ""
    by = c.get("by_precision") or {
        "fp32": {"best": c["best"], "samples": c["samples"], "engines": {"numpy BLAS sgemm": c["samples"]}}
    }
    lines = []
    for p in ("fp32", "bf16", "int8"):
        if p not in by:
            continue
        unit = "GOP/s" if p == "int8" else "GFLOP/s"
        engines = "; ".join(f"{e}: {', '.join(f'{x:.1f}' for x in v)}" for e, v in by[p].get("engines", {}).items())
        lines += _wrap(
            f"{p} matmul ceiling: best {by[p]['best']:.1f} {unit} over {len(by[p]['samples'])} rounds{on} ({engines})",
            indent="",
        )
    for p, why in (c.get("unavailable") or {}).items():
        lines += _wrap(f"{p} matmul ceiling: not measured: {why}", indent="")
    return lines


def _cold_start_lines(report: dict[str, Any]) -> list[str]:
    lines = []
    cold = {cs["path"]: cs for cs in report.get("cold_start", []) if cs.get("status") == "ok"}
    for cs in report.get("cold_start", []):
        if cs.get("status") == "ok":
            runs = cs.get("runs", 1)
            ratio = (
                f", torch / this {cold['torch']['first_result_s'] / cs['first_result_s']:.1f}x"
                if "torch" in cold and cs["path"] != "torch"
                else ""
            )
            lines.append(
                f"cold start {cs['path']:<20} first image {cs['first_result_s']:.3f} s, "
                f"peak RSS {cs['peak_rss_mib']:.1f} MiB (best time, highest RSS of {runs} run"
                f"{'s' if runs != 1 else ''}){ratio}"
            )
        else:
            lines.append(f"cold start {cs['path']:<20} {cs['status']}: {cs.get('reason', '')}")
    return lines


# ----------------------------------------------------------------------------------------------- comparing


def check_report_rows(report: Any, source: Path) -> None:
    """Refuse (BenchError) an earlier report whose rows compare_reports could not read."""
    from dataclasses import MISSING, fields

    # Fields added later have defaults (p1_ms, p5_ms): reports written before them still compare.
    need = {f.name for f in fields(LatencyStats) if f.default is MISSING}
    rows = report.get("results")
    if not isinstance(rows, list):
        raise BenchError(f"--compare {source}: no 'results' list")
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or "key" not in r or "status" not in r:
            raise BenchError(f"--compare {source}: results[{i}] is not a result row (needs 'key' and 'status')")
        if r["status"] == "ok":
            missing = sorted(need - set(r.get("stats") or {}))
            if missing:
                raise BenchError(f"--compare {source}: results[{i}] ({r['key']}): stats lack {missing}")


def compare_reports(old: dict[str, Any], new: dict[str, Any]) -> tuple[str, list]:
    """Per-row change of the median between two reports, flagged where it is beyond the rows' measured noise."""
    known = {f for f in LatencyStats.__dataclass_fields__}
    old_rows = {r["key"]: r for r in old.get("results", []) if r.get("status") == "ok"}
    changes = []
    lines = [f"{'config':<36} {'old p50':>9} {'new p50':>9} {'change':>8} {'noise':>7}  verdict"]
    for r in new["results"]:
        if r["status"] != "ok" or r["key"] not in old_rows:
            continue
        o = old_rows[r["key"]]
        ch = compare(
            r["key"],
            LatencyStats(**{k: v for k, v in o["stats"].items() if k in known}),
            LatencyStats(**{k: v for k, v in r["stats"].items() if k in known}),
            old_drift=o.get("drift", 1.0),
            new_drift=r.get("drift", 1.0),
        )
        changes.append(ch)
        flag = "  <-- " + ch.verdict.upper() if ch.significant else ""
        lines.append(
            f"{ch.key:<36} {ch.old_p50_ms:>9.3f} {ch.new_p50_ms:>9.3f} {100 * (ch.ratio - 1):>+7.1f}% "
            f"{100 * ch.noise:>6.1f}%  {ch.verdict}{flag}"
        )
    return "\n".join(lines), changes


# ----------------------------------------------------------------------------------------------- files

CSV_FIELDS = [
    "key",
    "backend",
    "device",
    "graph",
    "precision",
    "batch",
    "status",
    "reason",
    "peer",
    "in_effect",
    "n",
    "mean_ms",
    "stdev_ms",
    "cv",
    "min_ms",
    "p1_ms",
    "p5_ms",
    "p50_ms",
    "p90_ms",
    "p95_ms",
    "p99_ms",
    "max_ms",
    "throughput",
    "gflops",
    "ceiling_precision",
    "ceiling_share",
    "drift",
    "round_cv",
    "accuracy_metric",
    "accuracy_value",
    "accuracy_passed",
    "vs_peer",
]


def write_outputs(report: dict[str, Any], out: Path) -> list[Path]:
    from runtime.files import atomic_path, write_json_atomic

    out.mkdir(parents=True, exist_ok=True)
    paths = [write_json_atomic(out / "latency.json", report)]
    csv_path = out / "latency.csv"
    with atomic_path(csv_path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in report["results"]:
            acc = r.get("accuracy") or {}
            w.writerow(
                {
                    **r,
                    **(r["stats"] or {}),
                    "accuracy_metric": acc.get("metric"),
                    "accuracy_value": acc.get("value"),
                    "accuracy_passed": acc.get("passed"),
                }
            )
    paths.append(csv_path)
    from .plots import plot_percentiles, plot_throughput

    ok = [r for r in report["results"] if r["status"] == "ok"]
    if ok:
        paths.append(plot_percentiles(ok, out / "latency_percentiles.png"))
        paths.append(plot_throughput(ok, out / "throughput.png"))
    return paths
