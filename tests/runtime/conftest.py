"""Fixtures for the runtime tests: real bundles exported (once per session) from the tiny checkpoint.

Without torch (JetPack 6's Python: `make test-jetpack`, with numpy, onnxruntime and pytest only) the bundle comes
prebuilt from VAE_TEST_BUNDLES (tests/make_bundles.py), and exactly the tests listed in JETPACK_SKIPS skip, each with
its reason: they need torch, the onnx package or the C++ toolchain, or assume numpy 2. Everything else in tests/runtime
runs there.
"""
from __future__ import annotations

import fnmatch
import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import prebuilt_bundles
from tests.make_bundles import BUNDLE

_TORCH_REF = "the PyTorch reference backend needs torch (a development-machine tool, not the deployed runtime)"
_ONNX_EDIT = "edits an ONNX graph with the onnx package, which the deployed runtime does not need"
_FINDER = "perturbs a weight with onnx and names it with the divergence finder, which rebuilds the PyTorch model"
# "file" (a glob) skips a whole module without importing it, "file::test" one test with all its parameters.
JETPACK_SKIPS = {
    "test_cpp*.py": "the C++ library (runtime/cpp: CMake builds, cross builds; parity on a bundle exported with torch) "
                    "is tested by `make test`",
    "test_divergence.py": "the divergence finder rebuilds the PyTorch model (torch, vae_model, export)",
    "test_serve.py": "Triton serving (the serve extra: tritonclient, tritonserver) is not part of the JetPack runtime",
    "test_precision.py::test_fp16_variant_loads_by_precision": "makes its FP16 variant with onnx and "
                                                              "onnxconverter-common (make test-jetpack checks "
                                                              "export's own FP16/INT8 variants with runtime.parity)",
    "test_vae.py::test_torch_reference_backend_matches_onnxruntime": _TORCH_REF,
    "test_vae.py::test_torch_backend_finds_the_source_checkpoint_from_the_manifest": _TORCH_REF,
    "test_vae.py::test_torch_backend_refuses_a_different_checkpoint": _TORCH_REF,
    "test_parity.py::test_passes_against_the_live_pytorch_model": _TORCH_REF,
    "test_parity.py::test_torch_backend_reproduces_the_golden_reference": _TORCH_REF,
    "test_parity.py::test_perturbed_encoder_fails_and_the_finder_points_at_it": _FINDER,
    "test_parity.py::test_perturbed_rewritten_decoder_is_located_at_its_fused_block": _FINDER,
    "test_parity.py::test_cli_fail_exit_1": _FINDER,
    "test_parity.py::test_polygraphy_reads_our_files": "Polygraphy (and onnx) is a development-machine tool",
    "test_load.py::test_engine_failure_becomes_a_backend_error": _ONNX_EDIT,
    "test_bundle_contract.py::test_swapped_graph_with_another_input_dtype_is_refused_at_load": _ONNX_EDIT,
}
NO_TORCH = importlib.util.find_spec("torch") is None


class _SkippedModule(pytest.Module):
    """A test module that is not imported at all: its collection itself is reported as skipped, with the reason."""

    skip_reason = ""

    def collect(self):
        pytest.skip(self.skip_reason)


def pytest_pycollect_makemodule(module_path, parent):
    if not NO_TORCH:
        return None
    reason = next((r for k, r in JETPACK_SKIPS.items() if "::" not in k and fnmatch.fnmatch(module_path.name, k)), None)
    if reason is None:
        return None
    module = _SkippedModule.from_parent(parent, path=module_path)
    module.skip_reason = f"JetPack run: {module_path.name}: {reason}"
    return module


def pytest_collection_modifyitems(config, items):
    if not NO_TORCH:
        return
    for item in items:
        reason = JETPACK_SKIPS.get(f"{item.path.name}::{getattr(item, 'originalname', item.name)}")
        if reason:
            item.add_marker(pytest.mark.skip(reason=f"JetPack run: {reason}"))


@pytest.fixture(scope="session")
def bundle(tiny_checkpoint, tmp_path_factory) -> Path:
    """A verified encoder+decoder bundle of the tiny model (32x32 RGB, latent 8). Treat it as read-only.

    With VAE_TEST_BUNDLES: a copy of the prebuilt one (exported from tiny_checkpoint by tests/make_bundles.py)."""
    prebuilt = prebuilt_bundles()
    if prebuilt is not None:
        return Path(shutil.copytree(prebuilt / BUNDLE, tmp_path_factory.mktemp("bundle") / "tiny"))
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
