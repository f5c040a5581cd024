"""Write the parity tool's inputs and golden outputs as files Polygraphy reads, so any backend can be cross-checked:

    python -m runtime.verify.parity BUNDLE --save-polygraphy DIR
    polygraphy run BUNDLE/decoder.onnx --onnxrt --load-inputs DIR/decoder.inputs.json \
        --load-outputs DIR/decoder.outputs.json --atol 1e-4 --rtol 1e-4        # or --trt on a GPU box

Per graph: `<graph>.inputs.json` (what `--load-inputs` reads: a JSON list of {input name: array}, one per iteration)
and `<graph>.outputs.json` (what `--load-outputs` reads: Polygraphy's RunResults with one runner holding one
IterationResult per input). Each input set of reference.npz (golden, realistic) is one iteration. The encoding is
Polygraphy's own (arrays as base64 of np.save, tagged with "polygraphy_class"), written here with the standard
library and numpy so the runtime does not need Polygraphy installed; a test reads the files with `polygraphy run`.
"""

from __future__ import annotations

import base64
import io
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..bundle import GRAPH_IO, read_manifest
from ..files import atomic_write
from .reference import load_reference, reference_inputs

RUNNER_NAME = "vae-deploy-reference"
_TYPE = "polygraphy_class"


def _array(a: np.ndarray) -> dict[str, Any]:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return {"array": base64.b64encode(buf.getvalue()).decode(), _TYPE: "ndarray"}


def _write(path: Path, obj: Any) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=1) + "\n"))


def write_polygraphy_files(
    bundle: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    graphs: Sequence[str] | None = None,
    expected: Mapping[str, np.ndarray] | None = None,
) -> dict[str, tuple[Path, Path]]:
    """Write DIR/<graph>.inputs.json and DIR/<graph>.outputs.json; returns {graph: (inputs path, outputs path)}.

    expected: reference outputs keyed like reference.npz (default: the golden outputs stored in reference.npz).
    """
    root = Path(bundle)
    manifest = read_manifest(root)
    reference = load_reference(root, manifest)
    expected = reference if expected is None else expected
    graphs = tuple(graphs) if graphs else tuple(manifest.graphs)
    out = Path(out_dir)
    written = {}
    for graph in graphs:
        (in_name,), outs = GRAPH_IO[graph]
        sets = [(key, prefix) for key, (prefix, g) in reference_inputs(reference, (graph,)).items()]
        feeds = [{in_name: _array(reference[key])} for key, _ in sets]
        iterations = [
            {
                "outputs": {
                    name: {"values": _array(expected[f"{prefix}{graph}.{name}"]), _TYPE: "LazyArray"} for name in outs
                },
                "runtime": 0.0,
                "runner_name": RUNNER_NAME,
                _TYPE: "IterationResult",
            }
            for _, prefix in sets
        ]
        results = {"lst": [[RUNNER_NAME, iterations]], _TYPE: "RunResults"}
        written[graph] = (_write(out / f"{graph}.inputs.json", feeds), _write(out / f"{graph}.outputs.json", results))
    return written


def polygraphy_command(
    bundle: str | os.PathLike,
    graph: str,
    inputs: Path,
    outputs: Path,
    atol: float = 1e-4,
    rtol: float = 1e-4,
    runner: str = "--onnxrt",
) -> list[str]:
    """The `polygraphy run` command that checks `graph` against the written files."""
    manifest = read_manifest(bundle)
    return [
        "polygraphy",
        "run",
        str(Path(bundle) / manifest.graphs[graph].file),
        runner,
        "--load-inputs",
        str(inputs),
        "--load-outputs",
        str(outputs),
        "--atol",
        f"{atol:g}",
        "--rtol",
        f"{rtol:g}",
    ]
