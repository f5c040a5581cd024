"""The project's error root and the runtime's error types; each message names the tensor or file, the expected and
the actual value.

VaeError is the root of every error runtime/, export/ and benchmarks/ raise (vae_model, which cannot import the
runtime, has its own root: vae_model.errors.VaeModelError). A CLI catches the root, never a bare ValueError, so a
bug (a numpy ValueError, a TypeError) still shows its traceback instead of passing for bad input. Each class keeps
the built-in base it had before the root existed (ValueError for bad input, options and files; RuntimeError for
closed / failed processes) as a second base, so existing `except ValueError` code still works:

    VaeError
    ├── InputError (ValueError)   an array handed to encode/decode/run is unusable
    │   ├── ShapeError            wrong rank, channels, image size, latent size or batch
    │   ├── DTypeError            not a floating-point array (e.g. uint8 pixels: use runtime.images.from_uint8)
    │   ├── NonFiniteError        NaN or Inf in an input
    │   └── EmptyBatchError       a batch of zero items
    ├── BackendError (ValueError) unknown backend / device / precision / option, or the engine failed a call
    │   └── BackendUnavailableError   the engine (onnxruntime, tensorrt, torch) or the device is not there
    └── ClosedError (RuntimeError)    the runtime was used after close()

Elsewhere: BundleError (runtime.bundle), EngineError (runtime.engines), OutputError (runtime.files), the serving
errors (runtime.serving), the export errors (export.*) and BenchError (benchmarks.errors), all under VaeError.
"""

from __future__ import annotations


class VaeError(Exception):
    """Root of the project's errors (runtime, export, benchmarks): a CLI reports one as a line and exits 2 (or 1)."""


class InputError(VaeError, ValueError):
    """An input array cannot be run; the message names the tensor, the expected and the actual value."""


class ShapeError(InputError):
    pass


class DTypeError(InputError):
    pass


class NonFiniteError(InputError):
    pass


class EmptyBatchError(InputError):
    pass


class BackendError(VaeError, ValueError):
    """A backend cannot be chosen or configured as asked, or its engine failed a call."""


class BackendUnavailableError(BackendError):
    """The engine a backend needs (a Python package, a device, an engine file) is not available here."""


class ClosedError(VaeError, RuntimeError):
    """A runtime or backend was used after close()."""
