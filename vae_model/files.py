"""Atomic writes and hashing for vae_model: the one implementation lives in runtime.files (stdlib only)."""
from runtime.files import atomic_path, atomic_write, sha256_file, write_json_atomic

__all__ = ["atomic_path", "atomic_write", "sha256_file", "write_json_atomic"]
