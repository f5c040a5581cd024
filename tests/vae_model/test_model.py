"""VanillaVAE and VAEConfig: shapes for several configs, the original's parameter layout, loss signs, determinism."""

from __future__ import annotations

import pytest
import torch

from vae_model import ConfigError, LossTerms, Posterior, VAEConfig, VanillaVAE, vae_loss


# PyTorch-VAE's VanillaVAE(in_channels=3, latent_dim=128) state_dict, key for key with shapes (from models/vanilla_vae.py).
def original_layout() -> dict[str, tuple[int, ...]]:
    dims = [32, 64, 128, 256, 512]
    out: dict[str, tuple[int, ...]] = {}
    cin = 3
    for i, h in enumerate(dims):
        out |= {f"encoder.{i}.0.weight": (h, cin, 3, 3), f"encoder.{i}.0.bias": (h,)}
        out |= _bn(f"encoder.{i}.1", h)
        cin = h
    out |= {
        "fc_mu.weight": (128, 2048),
        "fc_mu.bias": (128,),
        "fc_var.weight": (128, 2048),
        "fc_var.bias": (128,),
        "decoder_input.weight": (2048, 128),
        "decoder_input.bias": (2048,),
    }
    rev = dims[::-1]
    for i in range(4):
        out |= {f"decoder.{i}.0.weight": (rev[i], rev[i + 1], 3, 3), f"decoder.{i}.0.bias": (rev[i + 1],)}
        out |= _bn(f"decoder.{i}.1", rev[i + 1])
    out |= {"final_layer.0.weight": (32, 32, 3, 3), "final_layer.0.bias": (32,)}
    out |= _bn("final_layer.1", 32)
    out |= {"final_layer.3.weight": (3, 32, 3, 3), "final_layer.3.bias": (3,)}
    return out


def _bn(prefix: str, n: int) -> dict[str, tuple[int, ...]]:
    return {
        f"{prefix}.weight": (n,),
        f"{prefix}.bias": (n,),
        f"{prefix}.running_mean": (n,),
        f"{prefix}.running_var": (n,),
        f"{prefix}.num_batches_tracked": (),
    }


def test_default_config_reproduces_the_original_exactly():
    model = VanillaVAE()
    assert model.num_parameters() == 3_937_635
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == original_layout()
    assert list(got) == list(original_layout())  # same order too: strict loading and diffing stay trivial


@pytest.mark.parametrize(
    "cfg",
    [
        VAEConfig(),
        VAEConfig(in_channels=1, out_channels=1, image_size=32, latent_dim=16, hidden_dims=(8, 16, 32)),
        VAEConfig(image_size=128, latent_dim=64, hidden_dims=(8, 16, 32, 64, 64)),
        VAEConfig(in_channels=3, out_channels=1, image_size=32, latent_dim=4, hidden_dims=(8, 8, 8, 8, 8)),
    ],
)
def test_shapes_for_several_configs(cfg):
    model = VanillaVAE(cfg).eval()
    x = torch.rand(2, *cfg.image_shape) * 2 - 1
    post = model.encode(x)
    assert isinstance(post, Posterior)
    assert post.mu.shape == post.logvar.shape == (2, cfg.latent_dim)
    y = model.decode(post.mu)
    assert y.shape == (2, *cfg.output_shape)
    assert y.abs().max() <= 1.0
    out = model(x)
    assert out.recons.shape == y.shape and out.z.shape == post.mu.shape
    assert model.sample(3, seed=1).shape == (3, *cfg.output_shape)


def test_config_never_aliases_the_callers_list():
    dims = [8, 16, 32]
    cfg = VAEConfig(image_size=32, hidden_dims=dims)
    VanillaVAE(cfg)
    VanillaVAE(cfg)
    assert dims == [8, 16, 32]
    assert cfg.hidden_dims == (8, 16, 32)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"image_size": 48}, "image_size: expected a power of two >= 32, got 48"),
        ({"image_size": 16}, "image_size: expected a power of two >= 32, got 16"),
        ({"latent_dim": 0}, "latent_dim: expected a positive integer, got 0"),
        ({"hidden_dims": (8,)}, "hidden_dims: expected at least 2 entries"),
        ({"image_size": 32, "hidden_dims": (4, 4, 4, 4, 4, 4)}, "too small for 6 stride-2 encoder blocks"),
    ],
)
def test_bad_config_values_are_named(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        VAEConfig(**kwargs)


def test_config_round_trips_through_a_dict():
    cfg = VAEConfig(in_channels=1, out_channels=1, image_size=32, latent_dim=4, hidden_dims=(8, 16))
    assert VAEConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown field"):
        VAEConfig.from_dict({**cfg.to_dict(), "colour": 3})


def test_loss_terms_have_the_right_sign_and_weight():
    torch.manual_seed(0)
    x = torch.rand(4, 3, 32, 32)
    recons = torch.rand(4, 3, 32, 32)
    post = Posterior(mu=torch.randn(4, 8), logvar=torch.randn(4, 8))
    terms = vae_loss(recons, x, post, kld_weight=0.5)
    assert isinstance(terms, LossTerms)
    assert terms.kld > 0  # KL(q || p) >= 0; the original reported it negated
    assert torch.allclose(terms.reconstruction, torch.mean((recons - x) ** 2))
    assert torch.allclose(terms.loss, terms.reconstruction + 0.5 * terms.kld)
    zero = vae_loss(x, x, Posterior(torch.zeros(4, 8), torch.zeros(4, 8)), kld_weight=1.0)
    assert zero.kld.item() == 0.0 and zero.loss.item() == 0.0


def test_reconstruct_is_deterministic_and_forward_is_not(tiny_config):
    model = VanillaVAE(tiny_config).eval()
    x = torch.rand(2, *tiny_config.image_shape)
    assert torch.equal(model.reconstruct(x), model.reconstruct(x))
    a = model(x, generator=torch.Generator().manual_seed(1)).recons
    b = model(x, generator=torch.Generator().manual_seed(2)).recons
    assert not torch.equal(a, b)


def test_sample_is_reproducible_by_seed(tiny_config):
    model = VanillaVAE(tiny_config).eval()
    assert torch.equal(model.sample(4, seed=3), model.sample(4, seed=3))
    assert torch.equal(model.sample(4, seed=3), model.sample(4, generator=torch.Generator().manual_seed(3)))
    assert not torch.equal(model.sample(4, seed=3), model.sample(4, seed=4))
    with pytest.raises(ValueError, match="seed or generator"):
        model.sample(1, seed=1, generator=torch.Generator())
