"""Shared fixtures: tiny model configs and real checkpoints written to temporary directories."""
from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from vae_model import VAEConfig, VanillaVAE, save_checkpoint  # noqa: E402

TINY = VAEConfig(in_channels=3, out_channels=3, image_size=32, latent_dim=8, hidden_dims=(8, 16))


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
    return TINY


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A vae-deploy checkpoint of a tiny model (32x32 RGB, latent 8) with randomized BatchNorm statistics."""
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, make_model(TINY), training={"epoch": 0, "step": 0, "seed": 0})
    return path


@pytest.fixture(scope="session")
def default_checkpoint(tmp_path_factory) -> Path:
    """A checkpoint of the default (original-size) model: 64x64 RGB, latent 128, randomized BatchNorm."""
    path = tmp_path_factory.mktemp("ckpt") / "default.pt"
    save_checkpoint(path, make_model(VAEConfig()), training={"epoch": 0, "step": 0, "seed": 0})
    return path


@pytest.fixture(scope="session")
def cpp_build(tmp_path_factory):
    """runtime/cpp configured and built once per session in a fresh folder (tests/cpp_support.py)."""
    from tests.cpp_support import build_cpp

    return build_cpp(tmp_path_factory.mktemp("cpp-build"))
