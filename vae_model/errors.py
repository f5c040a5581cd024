"""Checkpoint errors: each names the file and what is wrong, and subclasses ValueError (or FileNotFoundError)."""
from __future__ import annotations


class CheckpointError(ValueError):
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
