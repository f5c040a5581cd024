"""vae_model: the VanillaVAE (PyTorch), its config, loss, embedded data, checkpoints and training CLI."""

from .checkpoint import LoadedCheckpoint, infer_config, load_checkpoint, save_checkpoint
from .config import ConfigError, VAEConfig
from .errors import (
    CheckpointError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    ForeignModelError,
    NotACheckpointError,
    ShapeMismatchError,
    VaeModelError,
)
from .model import LossTerms, Posterior, VAEOutput, VanillaVAE, vae_loss

__all__ = [
    "VAEConfig",
    "ConfigError",
    "VanillaVAE",
    "Posterior",
    "VAEOutput",
    "LossTerms",
    "vae_loss",
    "LoadedCheckpoint",
    "load_checkpoint",
    "save_checkpoint",
    "infer_config",
    "CheckpointError",
    "CheckpointNotFoundError",
    "CorruptCheckpointError",
    "NotACheckpointError",
    "ForeignModelError",
    "ShapeMismatchError",
    "VaeModelError",
]
