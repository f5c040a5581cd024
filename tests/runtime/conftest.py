"""Fixtures for the runtime tests: real bundles exported (once per session) from the tiny checkpoint."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session")
def bundle(tiny_checkpoint, tmp_path_factory) -> Path:
    """A verified encoder+decoder bundle of the tiny model (32x32 RGB, latent 8). Treat it as read-only."""
    from export.to_onnx import export_bundle

    return export_bundle(tiny_checkpoint, tmp_path_factory.mktemp("bundle") / "tiny", log=lambda *a: None)


@pytest.fixture
def bundle_copy(bundle, tmp_path) -> Path:
    """A private copy of the bundle, for tests that change files in it."""
    return Path(shutil.copytree(bundle, tmp_path / "bundle"))


@pytest.fixture(scope="session")
def reference(bundle) -> dict[str, np.ndarray]:
    with np.load(bundle / "reference.npz") as npz:
        return {k: npz[k] for k in npz.files}


@pytest.fixture
def rt(bundle):
    import runtime

    with runtime.load(bundle, backend="onnxruntime") as r:
        yield r


def perturb_initializer(bundle_dir: Path, graph: str, initializer: str, delta: float = 0.05) -> str:
    """Add `delta` to one weight of `graph` in a bundle copy (vae.json's sha256 updated, so it still loads).

    Returns the name of the node that consumes the weight: where a divergence finder must point.
    """
    import dataclasses

    import onnx
    from onnx import numpy_helper

    from runtime.bundle import read_manifest, sha256_file, write_manifest

    path = bundle_dir / f"{graph}.onnx"
    model = onnx.load(str(path))
    init = next(i for i in model.graph.initializer if i.name == initializer)
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) + np.float32(delta), initializer))
    onnx.save(model, str(path))
    m = read_manifest(bundle_dir)
    graphs = dict(m.graphs)
    graphs[graph] = dataclasses.replace(graphs[graph], sha256=sha256_file(path))
    write_manifest(bundle_dir, dataclasses.replace(m, graphs=graphs))
    return next(n.name for n in model.graph.node if initializer in n.input)
