"""runtime: the lightweight VAE runtime. `import runtime` pulls numpy only; each backend imports its own engine.

    import runtime
    with runtime.load("bundle/", backend="onnxruntime", device="cpu", precision="fp32") as vae:
        posterior = vae.encode(images)          # float32 NCHW in vae.pixel_range -> Posterior(mu, logvar)
        images = vae.decode(posterior.mu)

See runtime/vae.py (the runtime), runtime/backends/ (the Backend protocol and engines), runtime/verify/parity.py (the
parity tool: `python -m runtime.verify.parity BUNDLE`), runtime/images.py (uint8 helpers), runtime/bundle.py (vae.json).
"""

from .bundle import BundleError, Manifest, read_manifest
from .errors import (
    BackendError,
    BackendUnavailableError,
    ClosedError,
    DTypeError,
    EmptyBatchError,
    InputError,
    NonFiniteError,
    ShapeError,
    VaeError,
)
from .images import from_uint8, to_uint8
from .vae import Posterior, VAERuntime, load

__all__ = [
    "load",
    "VAERuntime",
    "Posterior",
    "from_uint8",
    "to_uint8",
    "BundleError",
    "Manifest",
    "read_manifest",
    "InputError",
    "ShapeError",
    "DTypeError",
    "NonFiniteError",
    "EmptyBatchError",
    "BackendError",
    "BackendUnavailableError",
    "ClosedError",
    "VaeError",
]
