"""VanillaVAE (AntixK/PyTorch-VAE models/vanilla_vae.py) with the seed's typos fixed and its shapes generalised.

Parameter names are identical to the original (encoder.{i}.0, fc_mu, fc_var, decoder_input, decoder.{i}.0,
final_layer.{0,1,3}), so PyTorch-VAE state_dicts load with strict=True.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import VAEConfig


@dataclass(frozen=True)
class Posterior:
    """The encoder's diagonal Gaussian q(z|x): mean and log-variance, each (N, latent_dim)."""

    mu: Tensor
    logvar: Tensor


@dataclass(frozen=True)
class VAEOutput:
    """One forward pass: the reconstruction of the sampled z, the posterior it came from, and z itself."""

    recons: Tensor
    posterior: Posterior
    z: Tensor


@dataclass(frozen=True)
class LossTerms:
    """loss = reconstruction + kld_weight * kld. kld is KL(q(z|x) || N(0, I)), so it is >= 0."""

    loss: Tensor
    reconstruction: Tensor
    kld: Tensor
    kld_weight: float


def vae_loss(recons: Tensor, target: Tensor, posterior: Posterior, *, kld_weight: float) -> LossTerms:
    """PyTorch-VAE's loss: pixel MSE (mean) + kld_weight * KL, the KL summed over latents and averaged over the batch."""
    reconstruction = F.mse_loss(recons, target)
    mu, logvar = posterior.mu, posterior.logvar
    kld = torch.mean(-0.5 * torch.sum(1 + logvar - mu**2 - logvar.exp(), dim=1), dim=0)
    return LossTerms(
        loss=reconstruction + kld_weight * kld, reconstruction=reconstruction, kld=kld, kld_weight=float(kld_weight)
    )


class VanillaVAE(nn.Module):
    """Convolutional VAE: five stride-2 conv blocks -> (mu, logvar); ConvTranspose blocks -> Tanh image."""

    def __init__(self, config: VAEConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else VAEConfig()
        cfg = self.config
        dims = list(cfg.hidden_dims)  # our own copy: the original reversed the caller's list in place

        blocks = []
        channels = cfg.in_channels
        for h in dims:
            blocks.append(
                nn.Sequential(
                    nn.Conv2d(channels, h, kernel_size=3, stride=2, padding=1),
                    nn.BatchNorm2d(h),
                    nn.LeakyReLU(),
                )
            )
            channels = h
        self.encoder = nn.Sequential(*blocks)
        self.fc_mu = nn.Linear(cfg.flat_dim, cfg.latent_dim)
        self.fc_var = nn.Linear(cfg.flat_dim, cfg.latent_dim)

        self.decoder_input = nn.Linear(cfg.latent_dim, cfg.flat_dim)
        rev = dims[::-1]
        self.decoder = nn.Sequential(
            *[
                nn.Sequential(
                    nn.ConvTranspose2d(rev[i], rev[i + 1], kernel_size=3, stride=2, padding=1, output_padding=1),
                    nn.BatchNorm2d(rev[i + 1]),
                    nn.LeakyReLU(),
                )
                for i in range(len(rev) - 1)
            ]
        )
        self.final_layer = nn.Sequential(
            nn.ConvTranspose2d(rev[-1], rev[-1], kernel_size=3, stride=2, padding=1, output_padding=1),
            nn.BatchNorm2d(rev[-1]),
            nn.LeakyReLU(),
            nn.Conv2d(rev[-1], cfg.out_channels, kernel_size=3, padding=1),
            nn.Tanh(),
        )

    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    def encode(self, images: Tensor) -> Posterior:
        """images (N, C, H, W) in the model's pixel range -> Posterior(mu, logvar), each (N, latent_dim)."""
        h = torch.flatten(self.encoder(images), start_dim=1)
        return Posterior(mu=self.fc_mu(h), logvar=self.fc_var(h))

    def decode(self, z: Tensor) -> Tensor:
        """z (N, latent_dim) -> images (N, out_channels, H, W) in [-1, 1] (Tanh)."""
        cfg = self.config
        h = self.decoder_input(z).view(-1, cfg.hidden_dims[-1], cfg.bottleneck_size, cfg.bottleneck_size)
        return self.final_layer(self.decoder(h))

    @staticmethod
    def reparameterize(posterior: Posterior, generator: torch.Generator | None = None) -> Tensor:
        """z = mu + eps * exp(logvar / 2), eps ~ N(0, I) drawn from `generator` (or torch's global RNG)."""
        std = torch.exp(0.5 * posterior.logvar)
        eps = torch.randn(std.shape, generator=generator, dtype=std.dtype, device=std.device)
        return posterior.mu + eps * std

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> VAEOutput:
        posterior = self.encode(images)
        z = self.reparameterize(posterior, generator)
        return VAEOutput(recons=self.decode(z), posterior=posterior, z=z)

    def loss(self, out: VAEOutput, target: Tensor, *, kld_weight: float) -> LossTerms:
        return vae_loss(out.recons, target, out.posterior, kld_weight=kld_weight)

    @torch.no_grad()
    def sample(self, n: int, seed: int | None = None, generator: torch.Generator | None = None) -> Tensor:
        """Decode n draws from the prior N(0, I). Pass a seed or a generator for reproducible samples."""
        if seed is not None and generator is not None:
            raise ValueError("sample: pass seed or generator, not both")
        if seed is not None:
            generator = torch.Generator().manual_seed(seed)
        device = next(self.parameters()).device
        z = torch.randn(n, self.config.latent_dim, generator=generator).to(device)
        return self.decode(z)

    @torch.no_grad()
    def reconstruct(self, images: Tensor) -> Tensor:
        """Decode the posterior mean: deterministic, unlike forward()."""
        return self.decode(self.encode(images).mu)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
