"""backend="auto"'s recorded choice on the CPU: which CPU backend was faster, as measured on this machine.

`python -m benchmarks.latency BUNDLE --record-auto` writes the measured medians into vae.json (runtime.bundle's
AutoRecord, one per machine). For a load on the CPU, runtime.backends.resolve uses a record only when all of these
hold, and otherwise keeps the fixed order, saying why:
- its machine (runtime.bundle.MachineSpec: CPU model, ISA flags, usable CPUs, threads option) is this one;
- it measured the precision asked for on every graph being loaded, on the files that would run now (same name and
  sha256 as vae.json lists: the variant's file, or the FP32 graph's for an engine precision such as bf16);
- the backend it picks runs that precision here and its engine's version is the one measured.
The pick is the backend with the best geometric mean, over the recorded (graph, batch) points, of its median / the
best median at that point, unless the fixed order's backend is within LEAD_MARGIN of it: a pure function of the
recorded numbers (rank).

Imported only when vae.json holds a record: a load without one reads no /proc/cpuinfo and imports nothing more.
"""

from __future__ import annotations

import importlib
import math
import os
from dataclasses import dataclass
from typing import Sequence

from ..bundle import ENGINE_PRECISIONS, AutoRecord, BundleError, MachineSpec, Manifest
from .base import CPUINFO, cpu_flags, cpu_model

#: CPU flags that change which kernels the engines run (x86: vector widths, VNNI / bf16 / fp16 dot products, AMX;
#: aarch64: dot products, SVE, bf16, int8 matmul). A record applies only where the same ones are present.
ISA_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "asimddp",
    "sve",
    "sve2",
    "bf16",
    "i8mm",
)
#: How far ahead (geometric mean) another backend must be to displace the fixed order's: on 2 shared cores two
#: back-to-back recordings swung by up to 12% between the backends (docs/performance.md#precision-and-backend-on-the-cpu),
#: so a smaller lead is not a measured difference.
LEAD_MARGIN = 0.15
#: The module whose __version__ is a backend's engine version (what a record's "versions" holds).
ENGINE_MODULES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}


def this_machine(threads: int | None, cpuinfo: str = CPUINFO) -> MachineSpec:
    """This machine as a record names it: the CPU model and ISA_FLAGS from `cpuinfo`, the CPUs this process may run
    on (its affinity, not the host's count), and the threads option (None: the backends' default)."""
    model, flags = cpu_model(cpuinfo), cpu_flags(cpuinfo)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return MachineSpec(model or os.uname().machine, tuple(sorted(flags & set(ISA_FLAGS))), cpus, threads)


def measured_file(manifest: Manifest, graph: str, precision: str) -> tuple[str, str]:
    """(file, sha256) of what runs `graph` at `precision`: its variant, or the FP32 graph for an engine precision."""
    return manifest.graph_file(graph, "fp32" if precision in ENGINE_PRECISIONS else precision)


def engine_version(backend: str) -> str:
    """The version of `backend`'s engine, read from its module (imported here: the backend imports it on open)."""
    return str(importlib.import_module(ENGINE_MODULES[backend]).__version__)


def describe_machine(m: MachineSpec) -> str:
    threads = "" if m.threads is None else f", threads {m.threads}"
    return f"{m.cpu}, {m.cpus} CPU{'s' if m.cpus != 1 else ''}{threads}"


def record_for(manifest: Manifest, machine: MachineSpec) -> AutoRecord | str:
    """The record of `machine`, or why there is none (the nearest record's differences from this machine)."""
    if not manifest.auto:
        return "no record in vae.json"
    for r in manifest.auto:
        if r.machine == machine:
            return r
    nearest = min(manifest.auto, key=lambda r: len(_differences(r.machine, machine)))
    differences = "; ".join(_differences(nearest.machine, machine))
    return f"other machine (recorded vs here): {differences}"


def _differences(recorded: MachineSpec, here: MachineSpec) -> list[str]:
    out = []
    if recorded.cpu != here.cpu:
        out.append(f"model {recorded.cpu!r} vs {here.cpu!r}")
    if recorded.isa != here.isa:
        out.append(f"ISA flags {list(recorded.isa)} vs {list(here.isa)}")
    if recorded.cpus != here.cpus:
        out.append(f"usable CPUs {recorded.cpus} vs {here.cpus}")
    if recorded.threads != here.threads:
        out.append(f"threads option {recorded.threads} vs {here.threads} (None: the backends' default)")
    return out


def stale(record: AutoRecord, manifest: Manifest, precision: str, graphs: Sequence[str]) -> str | None:
    """Why `record` does not speak for loading `graphs` at `precision` from this manifest (None: it does)."""
    measured = record.precisions.get(precision)
    if measured is None:
        return f"precision {precision!r} not measured (the record has {sorted(record.precisions)})"
    for g in graphs:
        if g not in measured:
            return f"{g} not measured at {precision} (the record has {sorted(measured)})"
        try:
            file, sha = measured_file(manifest, g, precision)
        except BundleError as e:
            return f"graph changed: {e}"
        m = measured[g]
        if (m.file, m.sha256) != (file, sha):
            return (
                f"graph changed: {g} {precision} was measured on {m.file} (sha256 {m.sha256[:12]}...), "
                f"vae.json now lists {file} (sha256 {sha[:12]}...)"
            )
    return None


@dataclass(frozen=True)
class Ranking:
    """The backends of a record at one precision, fastest first, by geometric mean of median / best median."""

    precision: str
    points: tuple[tuple[str, int], ...]  # (graph, batch) compared
    scores: tuple[tuple[str, float], ...]  # (backend, geomean ratio vs the best at each point), best first
    incomplete: tuple[str, ...] = ()  # backends missing at some point: not compared
    margin_kept: str | None = None  # the fixed order's backend, kept first though up to LEAD_MARGIN slower

    @property
    def order(self) -> tuple[str, ...]:
        return tuple(b for b, _ in self.scores)

    def describe(self) -> str:
        """'openvino 1.00, onnxruntime 1.18 geomean vs best over decoder b1,b64, encoder b1,b64'."""
        graphs = dict.fromkeys(g for g, _ in self.points)
        where = ", ".join(f"{g} " + ",".join(f"b{n}" for h, n in self.points if h == g) for g in graphs)
        if len(self.scores) == 1:
            text = f"{self.scores[0][0]} the only backend measured (no choice) over {where}"
        else:
            text = ", ".join(f"{b} {s:.2f}" for b, s in self.scores) + f" geomean vs best over {where}"
        if self.margin_kept:
            text += f"; {self.margin_kept} kept: a lead under {LEAD_MARGIN:.0%} is within the noise"
        if self.incomplete:
            text += f"; not measured at every point: {', '.join(self.incomplete)}"
        return text


def rank(
    record: AutoRecord, precision: str, graphs: Sequence[str], backends: Sequence[str], margin: float = LEAD_MARGIN
) -> Ranking | str:
    """Rank `backends` (in their order of preference, which breaks ties) at `precision` over every recorded batch
    of `graphs`; a backend must be measured at every point to be ranked. The most preferred ranked backend stays
    first unless another's geometric mean is more than `margin` better. A string says why none can be ranked."""
    measured = record.precisions.get(precision, {})
    points = tuple((g, n) for g in sorted(graphs) if g in measured for n in sorted(measured[g].median_ms))
    if not points:
        return f"precision {precision!r} not measured for {list(graphs)}"
    times = {p: measured[p[0]].median_ms[p[1]] for p in points}
    seen = [b for b in backends if any(b in t for t in times.values())]
    complete = [b for b in seen if all(b in t for t in times.values())]
    if not complete:
        return f"no backend of {list(backends)} measured at every point of {precision} {list(graphs)}"
    scores = []
    for b in complete:
        logs = [math.log(t[b] / min(t[c] for c in complete)) for t in times.values()]
        scores.append((b, math.exp(sum(logs) / len(logs))))
    scores.sort(key=lambda s: (round(s[1], 12), list(backends).index(s[0])))
    preferred = next(s for s in scores if s[0] == complete[0])
    kept = None
    if preferred is not scores[0] and preferred[1] <= scores[0][1] * (1 + margin):
        scores.remove(preferred)
        scores.insert(0, preferred)
        kept = preferred[0]
    return Ranking(precision, points, tuple(scores), tuple(b for b in seen if b not in complete), kept)
