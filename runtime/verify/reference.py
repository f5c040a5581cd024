"""The bundle's golden reference (reference.npz): read it, find its input sets, run them through a runtime.

Shared by the parity tool, its Polygraphy files and the development tools that compare against it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..bundle import GRAPH_IO, REFERENCE_NAME, BundleError, Manifest, resolve_file


def load_reference(bundle: Path, manifest: Manifest) -> dict[str, np.ndarray]:
    """reference.npz as a dict, checked against the sha256 recorded in vae.json."""
    ref = manifest.reference or {}
    path = resolve_file(bundle, ref.get("file", REFERENCE_NAME), ref.get("sha256"))
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as e:
        raise BundleError(f"{path}: cannot be read as an .npz of arrays: {e}") from None


def reference_inputs(reference: Mapping[str, np.ndarray], graphs: Sequence[str]) -> dict[str, tuple[str, str]]:
    """{input key: (prefix, graph)} for every input set in the reference, e.g. 'realistic.decoder.z' -> ('realistic.', 'decoder')."""
    out = {}
    for key in reference:
        for graph in graphs:
            suffix = f"{graph}.{GRAPH_IO[graph][0][0]}"
            if key == suffix or key.endswith("." + suffix):
                out[key] = (key[: -len(suffix)], graph)
    return out


def run_reference_set(
    rt, reference: Mapping[str, np.ndarray], inputs: Mapping[str, tuple[str, str]]
) -> dict[str, np.ndarray]:
    """Run every reference input through a runtime's backend; outputs keyed like reference.npz."""
    out = {}
    for key, (prefix, graph) in inputs.items():
        (in_name,), outs = GRAPH_IO[graph]
        result = rt.backend.run(graph, {in_name: reference[key]})
        for name in outs:
            out[f"{prefix}{graph}.{name}"] = result[name]
    return out
