"""Parity tool: does a backend reproduce the model's numbers?

    python -m runtime.verify.parity BUNDLE [--backend B] [--precision P] [--device D] [--checkpoint CKPT] [--json FILE]

Runs the backend on the bundle's seeded inputs (reference.npz: golden inputs, plus the realistic ones - dataset
images, decoded prior samples, encoder means - when the bundle has them) and compares every output with
  - the golden PyTorch FP32 outputs stored in reference.npz (default; needs no torch, e.g. on a Jetson), or
  - the live PyTorch model (--checkpoint CKPT, run through the torch reference backend on the same inputs).
Per output: max / mean / p99 absolute error, relative L2, cosine, PSNR (decoded images, over the Tanh range
[-1, 1]), NaN/Inf counts and the smallest tolerance that would pass; default tolerances per precision come from
runtime.verify.metrics. Prints a table, optionally writes JSON; exit 0 pass, 1 fail, 2 bad input (one line on stderr).

`check_parity(...) -> ParityReport` is the same thing as a function for export, benchmarks and tests.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..bundle import DECODER, IMAGE, MANIFEST_NAME, REFERENCE_NAME, BundleError, read_manifest
from ..cli import HelpFormatter, add_graphs_argument, epilog, prog_name
from ..errors import BackendError, BackendUnavailableError, VaeError
from ..files import write_json_atomic
from .metrics import ComparisonReport, Tolerance, compare_outputs, default_tolerance
from .reference import load_reference, reference_inputs, run_reference_set

# Decoded images are Tanh outputs: PSNR is measured over [-1, 1] (the convention of export and the FP16 budget).
IMAGE_RANGE = (-1.0, 1.0)


@dataclass(frozen=True)
class ParityReport:
    """One backend at one precision against one reference; true when every output passed."""

    bundle: str
    backend: str
    device: str
    precision: str
    reference: str  # "golden" or "pytorch"
    comparison: ComparisonReport
    backend_info: dict[str, Any] = field(default_factory=dict)
    reference_info: dict[str, Any] = field(default_factory=dict)
    divergences: tuple[Any, ...] = ()  # export.divergence.Divergence per failing graph (when it could be located)
    notes: tuple[str, ...] = ()  # why a failing graph could not be located, and similar

    @property
    def passed(self) -> bool:
        return self.comparison.passed

    def __bool__(self) -> bool:
        return self.passed

    def failures(self) -> list[str]:
        return self.comparison.failures()

    def table(self) -> str:
        ref = self.reference if self.reference == "golden" else f"pytorch {self.reference_info.get('checkpoint', '')}"
        head = (
            f"parity: {self.bundle}  backend={self.backend} device={self.device} precision={self.precision} "
            f"reference={ref}"
        )
        verdict = "PASS" if self.passed else "FAIL\n  " + "\n  ".join(self.failures())
        where = [line for d in self.divergences for line in (f"  {d.describe()}", *(f"    note: {n}" for n in d.notes))]
        where += [f"  note: {n}" for n in self.notes]
        tail = ("\nwhere:\n" + "\n".join(where)) if where else ""
        return f"{head}\n{self.comparison.table()}\n{self.smallest_passing_table()}\n{verdict}{tail}"

    def smallest_passing(self) -> dict[str, dict[str, float]]:
        """Per output, the tightest value of each checked tolerance kind that it would still pass."""
        out = {}
        for o in self.comparison.outputs:
            needed = o.needed()
            checked = [
                k for k in ("max_abs", "rel_l2", "min_psnr", "min_cosine") if getattr(o.tolerance, k) is not None
            ]
            out[o.name] = {k: needed[k] for k in (checked or needed) if k in needed}
        return out

    def smallest_passing_table(self) -> str:
        lines = ["smallest passing tolerance:"]
        for name, needed in self.smallest_passing().items():
            lines.append(f"  {name:<28} " + ", ".join(f"{k} {v:.3g}" for k, v in needed.items()))
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "bundle": self.bundle,
            "backend": self.backend,
            "device": self.device,
            "precision": self.precision,
            "reference": self.reference,
            "passed": self.passed,
            "failures": self.failures(),
            "smallest_passing": {
                k: {m: (v if np.isfinite(v) else None) for m, v in d.items()}
                for k, d in self.smallest_passing().items()
            },
            "divergences": [d.to_dict() for d in self.divergences],
            "notes": list(self.notes),
            "backend_info": self.backend_info,
            "reference_info": self.reference_info,
            "comparison": self.comparison.to_dict(),
        }


def _tolerance(precision: str, key: str, overrides: Mapping[str, Tolerance] | None) -> Tolerance:
    if overrides:
        for k in (key, key.rsplit(".", 1)[-1]):
            if k in overrides:
                return overrides[k]
    return default_tolerance(precision, key)


def check_parity(
    bundle: str | os.PathLike,
    *,
    backend: str = "auto",
    device: str = "cpu",
    precision: str = "fp32",
    checkpoint: str | os.PathLike | None = None,
    graphs: Sequence[str] | None = None,
    tolerances: Mapping[str, Tolerance] | None = None,
    backend_options: Mapping[str, Any] | None = None,
    locate: Callable[..., Any] | None = None,
) -> ParityReport:
    """Compare a backend with the golden reference (or the live PyTorch model when `checkpoint` is given).

    Args:
        bundle: The bundle folder, or its vae.json.
        backend: runtime.load's backend ("auto", "onnxruntime", "tensorrt", ...).
        device: "cpu", "cuda" or "cuda:N".
        precision: The precision to check, as runtime.load takes it ("fp32", "fp16", "int8", ...); it also picks
            the default tolerances.
        checkpoint: Compare with this PyTorch checkpoint run live (torch backend, CPU, FP32) on the same inputs,
            instead of the golden outputs stored in reference.npz.
        graphs: The graphs to check (default: every graph in the bundle).
        tolerances: Overrides keyed by output key ("realistic.decoder.image") or tensor name ("image"); the rest
            use runtime.verify.metrics' defaults for `precision`.
        backend_options: Extra keyword options for runtime.load (e.g. {"threads": 2}).
        locate: Called as locate(root, graph, precision=, checkpoint=) for each failing graph to find its first
            intermediate tensor that diverges from PyTorch (pass export.divergence.locate_divergence; it needs
            torch, onnx and the checkpoint, so the runtime never imports it).

    Returns:
        A ParityReport, true when every output passed: per-output metrics, backend and reference provenance, and
        for failing graphs the located divergences or a note saying how to locate them.

    Raises:
        BundleError: The bundle, or its reference.npz, is missing, malformed or lacks the inputs / outputs needed.
        BackendError: runtime.load refused the backend, device, precision or options (BackendUnavailableError
            when the engine is not usable here).
        InputError: A reference input was refused by the runtime's validation.
    """
    from ..vae import load

    path = Path(bundle)
    root = path.parent if path.name == MANIFEST_NAME else path
    manifest = read_manifest(root)
    graphs = tuple(graphs) if graphs else tuple(manifest.graphs)
    unknown = [g for g in graphs if g not in manifest.graphs]
    if unknown:
        raise BackendError(f"graphs: asked for {list(graphs)}, the bundle {root} has {sorted(manifest.graphs)}")
    reference = load_reference(root, manifest)
    inputs = reference_inputs(reference, graphs)
    if not inputs:
        raise BundleError(f"{root / REFERENCE_NAME}: no inputs for graphs {list(graphs)} (keys: {sorted(reference)})")
    with load(
        root, backend=backend, device=device, precision=precision, graphs=graphs, **dict(backend_options or {})
    ) as rt:
        actual = run_reference_set(rt, reference, inputs)
        info = rt.describe()
    if checkpoint is not None:
        with load(
            root, backend="torch", device="cpu", precision="fp32", graphs=graphs, checkpoint=checkpoint
        ) as ref_rt:
            expected = run_reference_set(ref_rt, reference, inputs)
            ref_info = {
                "checkpoint": str(checkpoint),
                "sha256": ref_rt.backend.sha256,
                "torch": ref_rt.describe().get("torch"),
            }
        kind = "pytorch"
    else:
        missing = sorted(k for k in actual if k not in reference)
        if missing:
            raise BundleError(f"{root / REFERENCE_NAME}: has inputs but no golden outputs {missing}")
        expected = {k: reference[k] for k in actual}
        ref_info = {
            "file": REFERENCE_NAME,
            "sha256": (manifest.reference or {}).get("sha256", ""),
            "torch": manifest.versions.get("torch", ""),
        }
        kind = "golden"
    tol = {k: _tolerance(precision, k, tolerances) for k in expected}
    image_keys = {k: IMAGE_RANGE for k in expected if k.endswith(f"{DECODER}.{IMAGE}")}
    comparison = compare_outputs(
        actual, expected, tol, image_outputs=image_keys, label=f"{info['backend']} {precision} vs {kind}"
    )
    divergences, notes = [], []
    if not comparison.passed:
        failing = sorted({o.name.split(".")[-2] for o in comparison.outputs if not o.passed})
        if locate is not None:
            divergences, notes = _locate(locate, root, failing, precision, checkpoint)
        else:
            notes = [
                f"to find the first diverging tensor: python -m export.divergence {shlex.quote(str(root))} "
                f"--precision {precision} --graphs {','.join(failing)} (needs torch and onnx)"
            ]
    return ParityReport(
        bundle=str(root),
        backend=info["backend"],
        device=info["device"],
        precision=precision,
        reference=kind,
        comparison=comparison,
        backend_info=info,
        reference_info=ref_info,
        divergences=tuple(divergences),
        notes=tuple(notes),
    )


def _locate(
    locate: Callable[..., Any], root: Path, graphs: Sequence[str], precision: str, checkpoint
) -> tuple[list[Any], list[str]]:
    found, notes = [], []
    for graph in graphs:
        try:
            found.append(locate(root, graph, precision=precision, checkpoint=checkpoint))
        except ImportError as e:
            return found, notes + [f"cannot locate the divergence here: {e} (needs torch, onnx and vae_model)"]
        except (BackendUnavailableError, BundleError) as e:
            notes.append(f"cannot locate the divergence in {graph}: {e}")
    return found, notes


def build_parser(prog: str | None = None, *, locate: bool = False) -> argparse.ArgumentParser:
    """The parity CLI's options; with `locate`, export.divergence's --no-locate too."""
    p = argparse.ArgumentParser(
        prog=prog or prog_name("runtime.verify.parity"),
        description=__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter,
        epilog=epilog(
            {
                0: "every output within its tolerance",
                1: "parity failed (the table says which output, by how much)",
                2: "bad input or option, or the backend unavailable (one line on stderr)",
            },
            "%(prog)s runs/bundle",
            "%(prog)s runs/bundle --backend tensorrt --device cuda --precision fp16 --json parity.json",
            "%(prog)s runs/bundle --graphs decoder --checkpoint runs/train/best.pt",
        ),
    )
    p.add_argument("bundle", type=Path, metavar="BUNDLE", help="bundle folder (holding vae.json)")
    p.add_argument("--backend", default="auto", help="auto | onnxruntime | tensorrt | openvino | torch (default auto)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    p.add_argument(
        "--precision",
        default="fp32",
        help="fp32 | fp16 | int8 | bf16 (bf16: openvino, where vae.json records it; default fp32)",
    )
    p.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        metavar="CKPT",
        help="compare with the live PyTorch model from this checkpoint instead of reference.npz",
    )
    add_graphs_argument(p, what="graphs to check")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="intra-op threads for the backend")
    p.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the report as JSON here")
    p.add_argument(
        "--save-polygraphy",
        type=Path,
        default=None,
        metavar="DIR",
        help="also write the inputs and reference outputs as Polygraphy --load-inputs/--load-outputs files",
    )
    if locate:
        p.add_argument(
            "--no-locate",
            action="store_true",
            help="on failure, do not search for the first diverging intermediate tensor",
        )
    return p


def main(
    argv: Sequence[str] | None = None, *, locate: Callable[..., Any] | None = None, prog: str | None = None
) -> int:
    """The parity CLI; export.divergence runs it with `locate` set (the runtime cannot import that finder) and its
    own `prog` (None: as invoked, see runtime.cli.prog_name)."""
    args = build_parser(prog, locate=locate is not None).parse_args(argv)
    options = {"threads": args.threads} if args.threads is not None else {}
    try:
        report = check_parity(
            args.bundle,
            backend=args.backend,
            device=args.device,
            precision=args.precision,
            checkpoint=args.checkpoint,
            graphs=args.graphs,
            backend_options=options,
            locate=None if getattr(args, "no_locate", True) else locate,
        )
    except VaeError as e:  # BundleError, BackendError, InputError, ...; anything else is a bug: its traceback shows
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report.table())
    if args.json is not None:
        try:
            write_json_atomic(args.json, report.to_dict())
        except OSError as e:
            print(f"error: --json {args.json}: {e}", file=sys.stderr)
            return 2
        print(f"report written to {args.json}")
    if args.save_polygraphy is not None:
        from .polygraphy_io import polygraphy_command, write_polygraphy_files

        try:
            written = write_polygraphy_files(args.bundle, args.save_polygraphy, graphs=args.graphs)
        except (OSError, VaeError) as e:
            print(f"error: --save-polygraphy {args.save_polygraphy}: {e}", file=sys.stderr)
            return 2
        for graph, (ins, outs) in written.items():
            print(f"polygraphy files for {graph}: {shlex.join(polygraphy_command(args.bundle, graph, ins, outs))}")
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
