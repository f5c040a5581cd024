"""Shared fixtures: tiny model configs and real checkpoints written to temporary directories.

Without torch (JetPack 6's Python, `make test-jetpack`) only the runtime tests run, on bundles prebuilt by
tests/make_bundles.py in a folder named by VAE_TEST_BUNDLES (see tests/runtime/conftest.py); the fixtures here that
need torch skip there with that reason, and `--min-passed N` keeps such a run from passing by skipping nearly all.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.make_bundles import BUNDLE, CHECKPOINT, ENV

try:
    import torch
except ModuleNotFoundError as e:
    if e.name != "torch":
        raise
    torch = None  # the torch-less runtime environment

if torch is not None:
    from vae_model import VAEConfig, VanillaVAE, save_checkpoint

    TINY = VAEConfig(in_channels=3, out_channels=3, image_size=32, latent_dim=8, hidden_dims=(8, 16))
else:
    TINY = None  # the model helpers below need torch; importing them must still work

NO_TORCH_REASON = (
    f"torch is not installed (the runtime tests run on prebuilt bundles instead: {ENV}=DIR, "
    f"python -m tests.make_bundles DIR)"
)


def prebuilt_bundles() -> Path | None:
    """The folder of prebuilt bundles named by VAE_TEST_BUNDLES (None: unset, export them here with torch)."""
    value = os.environ.get(ENV)
    if not value:
        return None
    root = Path(value).resolve()
    missing = [p for p in (root / CHECKPOINT, root / BUNDLE / "vae.json") if not p.is_file()]
    if missing:
        raise pytest.UsageError(
            f"{ENV}={value}: {', '.join(map(str, missing))} missing; "
            f"build them with: .venv/bin/python -m tests.make_bundles {value}"
        )
    return root


def randomize_batchnorm(model: VanillaVAE, seed: int = 0) -> VanillaVAE:
    """Give every BatchNorm non-trivial running stats and affine params, so BN folding is actually exercised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.25)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.2)
    return model.eval()


def make_model(config: VAEConfig = TINY, seed: int = 0) -> VanillaVAE:
    torch.manual_seed(seed)
    return randomize_batchnorm(VanillaVAE(config), seed)


@pytest.fixture(scope="session")
def tiny_config() -> VAEConfig:
    if torch is None:
        pytest.skip(NO_TORCH_REASON)
    return TINY


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A vae-deploy checkpoint of a tiny model (32x32 RGB, latent 8) with randomized BatchNorm statistics.

    With VAE_TEST_BUNDLES: the prebuilt one the prebuilt bundles were exported from (no torch needed for the path)."""
    prebuilt = prebuilt_bundles()
    if prebuilt is not None:
        return prebuilt / CHECKPOINT
    if torch is None:
        pytest.skip(NO_TORCH_REASON)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, make_model(TINY), training={"epoch": 0, "step": 0, "seed": 0})
    return path


@pytest.fixture(scope="session")
def default_checkpoint(tmp_path_factory) -> Path:
    """A checkpoint of the default (original-size) model: 64x64 RGB, latent 128, randomized BatchNorm."""
    if torch is None:
        pytest.skip(NO_TORCH_REASON)
    path = tmp_path_factory.mktemp("ckpt") / "default.pt"
    save_checkpoint(path, make_model(VAEConfig()), training={"epoch": 0, "step": 0, "seed": 0})
    return path


@pytest.fixture(scope="session")
def cpp_build(tmp_path_factory):
    """runtime/cpp configured and built once per session in a fresh folder (tests/cpp_support.py)."""
    from tests.cpp_support import build_cpp

    return build_cpp(tmp_path_factory.mktemp("cpp-build"))


# ----------------------------------------------------------------------------------------------- run-level checks


def pytest_addoption(parser):
    parser.addoption(
        "--min-passed",
        type=int,
        default=0,
        metavar="N",
        help="fail the run when fewer than N tests passed (a run that skips nearly everything fails)",
    )


def pytest_configure(config):
    prebuilt_bundles()  # a wrong VAE_TEST_BUNDLES stops the run here, once, with the command that builds the folder


_passed: list[str] = []


def pytest_runtest_logreport(report):
    if report.when == "call" and report.passed:
        _passed.append(report.nodeid)


def _too_few(config) -> str | None:
    floor = config.getoption("min_passed")
    if floor and len(_passed) < floor:
        return f"--min-passed {floor}: only {len(_passed)} test(s) passed"
    return None


def pytest_sessionfinish(session):
    if _too_few(session.config) and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, config):
    message = _too_few(config)
    if message:
        terminalreporter.write_line(f"FAILED {message}", red=True, bold=True)


@pytest.fixture(scope="session")
def bundle(tiny_checkpoint, tmp_path_factory) -> Path:
    """A verified encoder+decoder bundle of the tiny model (32x32 RGB, latent 8). Treat it as read-only.

    Exported beside tiny_checkpoint (vae.json: relative_path "../tiny.pt", which the torch backend, the divergence
    finder and INT8's sub-pixel form follow). With VAE_TEST_BUNDLES: a copy of the prebuilt one (exported from
    tiny_checkpoint by tests/make_bundles.py), with that checkpoint beside it as well."""
    prebuilt = prebuilt_bundles()
    if prebuilt is not None:
        return copy_bundle(prebuilt / BUNDLE, tmp_path_factory.mktemp("bundle") / "tiny")
    from export.to_onnx import export_bundle

    return export_bundle(tiny_checkpoint, tiny_checkpoint.parent / "tiny", log=lambda *a: None)


def copy_bundle(src: Path, dest: Path) -> Path:
    """A copy of bundle `src` at `dest`, with the source checkpoint vae.json's relative_path names (when it exists)
    copied to the same place relative to `dest`: a bundle moved together with its checkpoint."""
    import json

    shutil.copytree(src, dest)
    rel = json.loads((src / "vae.json").read_text()).get("source", {}).get("relative_path")
    if rel and (src / rel).is_file():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / rel, target)
    return Path(dest)


@pytest.fixture
def bundle_copy(bundle, tmp_path) -> Path:
    """A private copy of the bundle (and of its checkpoint, at the same relative place), for tests that change files
    in it."""
    return copy_bundle(bundle, tmp_path / "bundle")


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
