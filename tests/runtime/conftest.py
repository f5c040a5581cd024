"""Fixtures for the runtime tests: real bundles exported (once per session) from the tiny checkpoint.

Without torch (JetPack 6's Python: `make test-jetpack`, with numpy, onnxruntime and pytest only) the bundle comes
prebuilt from VAE_TEST_BUNDLES (tests/make_bundles.py), and exactly the tests listed in JETPACK_SKIPS skip, each with
its reason: they need torch, the onnx package or the C++ toolchain, or assume numpy 2. Everything else in tests/runtime
runs there.
"""

from __future__ import annotations

import fnmatch
import importlib.util

import numpy as np
import pytest

_TORCH_REF = "the PyTorch reference backend needs torch (a development-machine tool, not the deployed runtime)"
_ONNX_EDIT = "edits an ONNX graph with the onnx package, which the deployed runtime does not need"
# "file" (a glob) skips a whole module without importing it, "file::test" one test with all its parameters.
JETPACK_SKIPS = {
    "test_cpp*.py": "the C++ library (runtime/cpp: CMake builds, cross builds; parity on a bundle exported with torch) "
    "is tested by `make test`",
    "test_serve.py": "Triton serving (the serve extra: tritonclient, tritonserver) is not part of the JetPack runtime",
    "test_precision.py::test_fp16_variant_loads_by_precision": "makes its FP16 variant with onnx and "
    "onnxconverter-common (make test-jetpack checks "
    "export's own FP16/INT8 variants with runtime.verify.parity)",
    "test_vae.py::test_torch_reference_backend_matches_onnxruntime": _TORCH_REF,
    "test_vae.py::test_torch_backend_finds_the_source_checkpoint_from_the_manifest": _TORCH_REF,
    "test_vae.py::test_torch_backend_refuses_a_different_checkpoint": _TORCH_REF,
    "test_parity.py::test_passes_against_the_live_pytorch_model": _TORCH_REF,
    "test_parity.py::test_torch_backend_reproduces_the_golden_reference": _TORCH_REF,
    "test_parity.py::test_cli_fail_exit_1_and_names_the_finder": _ONNX_EDIT,
    "test_parity.py::test_polygraphy_reads_our_files": "Polygraphy (and onnx) is a development-machine tool",
    "test_load.py::test_engine_failure_becomes_a_backend_error": _ONNX_EDIT,
    "test_bundle_contract.py::test_swapped_graph_with_another_input_dtype_is_refused_at_load": _ONNX_EDIT,
    "test_images.py::test_prepare_equals_the_training_loader": "compares with vae_model's training loader, which "
    "needs torch (the NumPy resize is checked against "
    "Pillow itself there too)",
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
def reference(bundle) -> dict[str, np.ndarray]:
    with np.load(bundle / "reference.npz") as npz:
        return {k: npz[k] for k in npz.files}


@pytest.fixture
def rt(bundle):
    import runtime

    with runtime.load(bundle, backend="onnxruntime") as r:
        yield r
