"""runtime: the lightweight VAE runtime. `import runtime` pulls numpy only; each backend imports its own engine."""
from .bundle import BundleError, Manifest, read_manifest

__all__ = ["BundleError", "Manifest", "read_manifest"]
