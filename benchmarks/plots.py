"""PNG plots of a latency report: latency percentiles per configuration, and throughput at each measured batch size.

Both draw only what was measured: a latency is a point (the median) with whiskers (p5-p95), never a bar whose length
on a log axis means nothing; a throughput is a marker at each batch size that ran, with no line implying values in
between. Colours name the graph (latency) or the backend and precision (throughput), and every colour and marker is
in a legend.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

GRAPH_COLOURS = {"decoder": "tab:blue", "encoder": "tab:green"}
PEER_COLOUR = "black"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    from runtime.files import atomic_write

    # bbox "tight": a legend placed beside the axes is kept in the image.
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight"))


_PRECISION_ORDER = {"fp32": 0, "bf16": 1, "fp16": 2, "int8": 3}


def _order(r: dict[str, Any]) -> tuple:
    """Rows as the table lists them: by graph, batch, backend and precision, the peer row last in its group."""
    return (r["graph"], r["batch"], bool(r.get("peer")), r["backend"], _PRECISION_ORDER.get(r["precision"], 9))


def row_label(r: dict[str, Any]) -> str:
    """How a row is named in the plots: its backend and precision (the peer row says what it is)."""
    if r.get("peer"):
        return f"{r['backend']} (peer: OpenVINO default, plain export, runs {r.get('in_effect') or '?'})"
    return f"{r['backend']} {r['precision']}"


def _low(s: dict[str, Any]) -> float:
    """p5, or the minimum for a report written before p5 was recorded."""
    return s["p5_ms"] if s.get("p5_ms") is not None else s["min_ms"]


def plot_percentiles(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """One line per configuration: the p50 as a point, a whisker from p5 to p95, p99 as a tick (log-scaled ms)."""
    plt = _plt()
    from matplotlib.lines import Line2D

    rows = sorted(rows, key=_order)
    fig, ax = plt.subplots(figsize=(10, 0.35 * len(rows) + 1.8))
    for y, r in enumerate(rows):
        s = r["stats"]
        colour = PEER_COLOUR if r.get("peer") else GRAPH_COLOURS.get(r["graph"], "tab:gray")
        p50 = s["p50_ms"]
        ax.errorbar(
            [p50], [y], xerr=[[p50 - _low(s)], [s["p95_ms"] - p50]], fmt="o", color=colour, ms=5, capsize=3, lw=1.2
        )
        ax.plot([s["p99_ms"]], [y], marker="|", ms=10, color="tab:red", ls="none")
    ax.set_yticks(range(len(rows)), [f"{r['graph']} b{r['batch']}  {row_label(r)}" for r in rows], fontsize=8)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("latency per call, ms (log scale): point = p50, whisker = p5 to p95, red tick = p99")
    ax.set_title("latency percentiles per configuration")
    ax.grid(axis="x", alpha=0.3, which="both")
    graphs = sorted({r["graph"] for r in rows})
    handles = [
        Line2D([], [], marker="o", color=GRAPH_COLOURS.get(g, "tab:gray"), ls="-", label=f"{g}: p50, p5-p95")
        for g in graphs
    ]
    if any(r.get("peer") for r in rows):
        handles.append(Line2D([], [], marker="o", color=PEER_COLOUR, ls="-", label="peer row: p50, p5-p95"))
    handles.append(Line2D([], [], marker="|", color="tab:red", ls="none", ms=10, label="p99"))
    ax.legend(handles=handles, loc="best", fontsize=8)
    fig.tight_layout()
    out = _save(fig, path)
    plt.close(fig)
    return out


def plot_throughput(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Images per second (at the median latency) at each measured batch size, one marker per (backend, precision);
    markers only: nothing was measured between two batch sizes."""
    plt = _plt()
    graphs = sorted({r["graph"] for r in rows})
    batches = sorted({r["batch"] for r in rows})
    fig, axes = plt.subplots(1, len(graphs), figsize=(6.5 * len(graphs), 4.5), squeeze=False)
    markers = "osD^v<>ph*"
    names = list(dict.fromkeys(row_label(r) for r in sorted(rows, key=lambda r: _order(r)[2:]) if not r.get("peer")))
    style = {n: (f"C{i % 10}", markers[i % len(markers)]) for i, n in enumerate(names)}
    handles: dict[str, Any] = {}
    for ax, graph in zip(axes[0], graphs, strict=True):
        series: dict[str, list[tuple[int, float]]] = {}
        for r in rows:
            if r["graph"] == graph:
                series.setdefault(row_label(r), []).append((r["batch"], r["stats"]["throughput"]))
        # Side by side within a batch size, so markers of equal value do not hide each other.
        offsets = {n: 1.0 + 0.04 * (i - (len(series) - 1) / 2) for i, n in enumerate(sorted(series))}
        for name, pts in sorted(series.items()):
            peer = name not in style
            colour, marker = (PEER_COLOUR, "*") if peer else style[name]
            (line,) = ax.plot(
                [b * offsets[name] for b, _ in pts],
                [v for _, v in pts],
                ls="none",
                marker=marker,
                ms=11 if peer else 7,
                color=colour,
                label=name,
            )
            handles.setdefault(name, line)
        ax.set_xscale("log", base=2)
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.minorticks_off()
        ax.set_xlim(min(batches) / 1.6, max(batches) * 1.6)
        ax.set_yscale("log")
        ax.set_xlabel("batch size (measured sizes only; markers offset sideways to stay visible)")
        ax.set_ylabel("images / s at the median latency (log scale)")
        ax.set_title(f"{graph} throughput")
        ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    # One legend for both panels (the same colour and marker mean the same option in each), beside them, where it
    # hides no marker.
    order = [n for n in names if n in handles] + [n for n in handles if n not in style]
    fig.legend([handles[n] for n in order], order, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    out = _save(fig, path)
    plt.close(fig)
    return out
