"""VAEConfig: every shape of the VanillaVAE, derived from a handful of numbers.

PyTorch-VAE's VanillaVAE hard-codes a 64x64 RGB input (`hidden_dims[-1] * 4`, `view(-1, 512, 2, 2)`, 3 output
channels). Here those numbers are derived from the config, so a 32x32 greyscale model or a 128x128 one is the same
class, and the default config reproduces the original exactly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from .errors import VaeModelError

DEFAULT_HIDDEN_DIMS: tuple[int, ...] = (32, 64, 128, 256, 512)


class ConfigError(VaeModelError, ValueError):
    """A VAEConfig value is out of range; the message names the field, the expected and the actual value."""


@dataclass(frozen=True)
class VAEConfig:
    """Architecture of a VanillaVAE. The defaults are the original: 64x64 RGB, latent 128, 3,937,635 parameters."""

    in_channels: int = 3
    out_channels: int = 3
    image_size: int = 64
    latent_dim: int = 128
    hidden_dims: tuple[int, ...] = field(default=DEFAULT_HIDDEN_DIMS)

    def __post_init__(self) -> None:
        # A list from a caller (or JSON) becomes a tuple: the config is immutable and never aliases the caller's list.
        object.__setattr__(self, "hidden_dims", tuple(int(h) for h in self.hidden_dims))
        for name in ("in_channels", "out_channels", "latent_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"VAEConfig.{name}: expected a positive integer, got {value!r}")
        size = self.image_size
        if not isinstance(size, int) or isinstance(size, bool) or size < 32 or size & (size - 1):
            raise ConfigError(f"VAEConfig.image_size: expected a power of two >= 32, got {size!r}")
        if len(self.hidden_dims) < 2:
            raise ConfigError(f"VAEConfig.hidden_dims: expected at least 2 entries, got {list(self.hidden_dims)}")
        if any(h < 1 for h in self.hidden_dims):
            raise ConfigError(f"VAEConfig.hidden_dims: expected positive integers, got {list(self.hidden_dims)}")
        if size >> len(self.hidden_dims) < 1:
            raise ConfigError(
                f"VAEConfig: image_size {size} is too small for {len(self.hidden_dims)} stride-2 encoder blocks "
                f"(needs image_size >= {2 ** len(self.hidden_dims)})"
            )

    @property
    def bottleneck_size(self) -> int:
        """Side of the feature map after the encoder (2 for the original 64x64 with five blocks)."""
        return self.image_size >> len(self.hidden_dims)

    @property
    def flat_dim(self) -> int:
        """Flattened encoder output: hidden_dims[-1] * bottleneck_size**2 (the original's `hidden_dims[-1] * 4`)."""
        return self.hidden_dims[-1] * self.bottleneck_size**2

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.image_size, self.image_size)

    @property
    def output_shape(self) -> tuple[int, int, int]:
        return (self.out_channels, self.image_size, self.image_size)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["hidden_dims"] = list(self.hidden_dims)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "VAEConfig":
        known = {"in_channels", "out_channels", "image_size", "latent_dim", "hidden_dims"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"VAEConfig: unknown field(s) {unknown}; expected some of {sorted(known)}")
        return cls(**dict(data))
