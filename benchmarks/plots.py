"""PNG plots of a latency report: percentiles per configuration, and throughput versus batch size."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    from runtime.files import atomic_write

    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))


def plot_percentiles(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Horizontal bars per configuration: p50 with whiskers to p90 / p99 (log-scaled ms)."""
    plt = _plt()
    rows = sorted(rows, key=lambda r: (r["graph"], r["batch"], r["precision"], r["backend"]))
    fig, ax = plt.subplots(figsize=(10, 0.35 * len(rows) + 1.5))
    labels = [f"{r['graph']} b{r['batch']} {r['backend']} {r['precision']}" for r in rows]
    y = range(len(rows))
    p50 = [r["stats"]["p50_ms"] for r in rows]
    ax.barh(y, p50, color=["tab:blue" if r["graph"] == "decoder" else "tab:green" for r in rows], alpha=0.7,
            label="p50")
    ax.scatter([r["stats"]["p90_ms"] for r in rows], y, marker="|", s=120, color="k", label="p90")
    ax.scatter([r["stats"]["p99_ms"] for r in rows], y, marker="x", color="tab:red", label="p99")
    ax.set_yticks(list(y), labels, fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("latency per call (ms, log scale)")
    ax.set_title("latency percentiles (bars: p50; |: p90; x: p99)")
    ax.grid(axis="x", alpha=0.3, which="both")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    out = _save(fig, path)
    plt.close(fig)
    return out


def plot_throughput(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Images per second versus batch size, one line per (backend, precision, graph)."""
    plt = _plt()
    graphs = sorted({r["graph"] for r in rows})
    fig, axes = plt.subplots(1, len(graphs), figsize=(6 * len(graphs), 4), squeeze=False)
    for ax, graph in zip(axes[0], graphs):
        series: dict[str, list[tuple[int, float]]] = {}
        for r in rows:
            if r["graph"] == graph:
                series.setdefault(f"{r['backend']} {r['precision']}", []).append((r["batch"], r["stats"]["throughput"]))
        for name, pts in sorted(series.items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=name)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_ylabel("images / s (at p50)")
        ax.set_title(f"{graph} throughput")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.tight_layout()
    out = _save(fig, path)
    plt.close(fig)
    return out
