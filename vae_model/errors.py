"""vae_model's error root and the checkpoint errors: each names the file and what is wrong.

VaeModelError is the root of every error vae_model raises (it cannot import the runtime, whose root is
runtime.errors.VaeError; export code that calls vae_model catches both). Each class keeps ValueError (and
CheckpointNotFoundError FileNotFoundError) as a second base, as before the root existed:

    VaeModelError
    ├── CheckpointError (ValueError)  a checkpoint file could not be used
    │   ├── CheckpointNotFoundError (FileNotFoundError), CorruptCheckpointError, ForeignModelError,
    │   │   ShapeMismatchError
    │   └── NotACheckpointError
    │       └── UnsafeCheckpointError (vae_model.checkpoint)
    ├── ConfigError (ValueError, vae_model.config)
    ├── DataError (ValueError, vae_model.data)
    └── TrainError (ValueError, vae_model.train)
"""

from __future__ import annotations


class VaeModelError(Exception):
    """Root of vae_model's errors: the training CLI reports one as a line and exits 2."""


class CheckpointError(VaeModelError, ValueError):
    """Base class: a checkpoint file could not be used. The message names the file."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The path does not exist or is not a file."""


class CorruptCheckpointError(CheckpointError):
    """The file exists but is empty, truncated or not a torch archive at all."""


class NotACheckpointError(CheckpointError):
    """The file loads, but holds no state_dict of tensors (or holds objects weights_only loading refuses)."""


class ForeignModelError(CheckpointError):
    """The state_dict belongs to some other model: keys missing or unexpected for a VanillaVAE."""


class ShapeMismatchError(CheckpointError):
    """A tensor has the wrong shape for the config: the message names the key, expected and actual shape."""
