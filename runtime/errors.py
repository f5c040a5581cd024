"""The runtime's error types: small, typed, each message naming the tensor or file, the expected and the actual value.

    ValueError
    ├── InputError            an array handed to encode/decode/run is unusable
    │   ├── ShapeError        wrong rank, channels, image size, latent size or batch
    │   ├── DTypeError        not a floating-point array (e.g. uint8 pixels: use runtime.images.from_uint8)
    │   ├── NonFiniteError    NaN or Inf in an input
    │   └── EmptyBatchError   a batch of zero items
    └── BackendError          unknown backend / device / precision / option, or the engine failed a call
        └── BackendUnavailableError   the engine (onnxruntime, tensorrt, torch) or the device is not there
    RuntimeError
    └── ClosedError           the runtime was used after close()

BundleError (runtime.bundle) covers the bundle's files and manifest.
"""
from __future__ import annotations


class InputError(ValueError):
    """An input array cannot be run; the message names the tensor, the expected and the actual value."""


class ShapeError(InputError):
    pass


class DTypeError(InputError):
    pass


class NonFiniteError(InputError):
    pass


class EmptyBatchError(InputError):
    pass


class BackendError(ValueError):
    """A backend cannot be chosen or configured as asked, or its engine failed a call."""


class BackendUnavailableError(BackendError):
    """The engine a backend needs (a Python package, a device, an engine file) is not available here."""


class ClosedError(RuntimeError):
    """A runtime or backend was used after close()."""
