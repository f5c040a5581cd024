"""The C++ runtime (runtime/cpp, `libvae_runtime.so`) driven through its C ABI with ctypes, as a benchmark backend.

The harness times every backend the same way: per-call wall time of `encode` / `decode` from Python. Calling the
C ABI in-process (ctypes adds a few microseconds per call) measures the library an application links, on the same
seeded inputs and in the same interleaved rounds as the other backends. The library is found at `--cpp-lib`, else
$VAE_RUNTIME_LIB, else runtime/cpp/build/libvae_runtime.so (what `make cpp` builds).
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import VaeError

REPO = Path(__file__).resolve().parents[1]
DEFAULT_LIB = REPO / "runtime" / "cpp" / "build" / "libvae_runtime.so"
ABI_VERSION = 1


class CppRuntimeError(VaeError, RuntimeError):
    """The C++ library is missing or refused a call; the message carries its status name and last error."""


class _Options(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("backend", ctypes.c_char_p),
        ("device", ctypes.c_char_p),
        ("precision", ctypes.c_char_p),
        ("execution_provider", ctypes.c_char_p),
        ("graphs", ctypes.c_char_p),
        ("threads", ctypes.c_int32),
        ("check_finite", ctypes.c_int32),
        ("verify_sha256", ctypes.c_int32),
        ("batch_split", ctypes.c_int32),
        ("reserved", ctypes.c_int32),
        ("dla_core", ctypes.c_int32),
        ("reserved2", ctypes.c_int32),
    ]


class _Info(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("in_channels", ctypes.c_int32),
        ("out_channels", ctypes.c_int32),
        ("image_size", ctypes.c_int32),
        ("latent_dim", ctypes.c_int32),
        ("pixel_min", ctypes.c_float),
        ("pixel_max", ctypes.c_float),
        ("has_encoder", ctypes.c_int32),
        ("has_decoder", ctypes.c_int32),
    ]


def find_library(path: str | os.PathLike | None = None) -> Path:
    lib = Path(path or os.environ.get("VAE_RUNTIME_LIB") or DEFAULT_LIB)
    if not lib.is_file():
        raise CppRuntimeError(
            f"{lib}: the C++ runtime library is not built (run `make cpp`, or pass --cpp-lib / "
            "set VAE_RUNTIME_LIB to a libvae_runtime.so)"
        )
    return lib


def _load_library(path: Path) -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL(str(path))  # RTLD_LOCAL: its ONNX Runtime stays apart from the Python wheel's
    except OSError as e:
        raise CppRuntimeError(f"{path}: cannot load the C++ runtime library: {e}") from None
    f = ctypes.POINTER(ctypes.c_float)
    lib.vae_abi_version.restype = ctypes.c_int32
    lib.vae_version.restype = ctypes.c_char_p
    lib.vae_last_error.restype = ctypes.c_char_p
    lib.vae_status_name.restype = ctypes.c_char_p
    lib.vae_status_name.argtypes = [ctypes.c_int]
    lib.vae_options_init_sized.argtypes = [ctypes.POINTER(_Options), ctypes.c_size_t]
    lib.vae_runtime_create.argtypes = [ctypes.c_char_p, ctypes.POINTER(_Options), ctypes.POINTER(ctypes.c_void_p)]
    lib.vae_runtime_create.restype = ctypes.c_int
    lib.vae_runtime_destroy.argtypes = [ctypes.c_void_p]
    lib.vae_runtime_info.argtypes = [ctypes.c_void_p, ctypes.POINTER(_Info)]
    lib.vae_runtime_info.restype = ctypes.c_int
    lib.vae_runtime_backend.argtypes = [ctypes.c_void_p]
    lib.vae_runtime_backend.restype = ctypes.c_char_p
    lib.vae_decode.argtypes = [ctypes.c_void_p, f, ctypes.c_int64, ctypes.c_size_t, f, ctypes.c_size_t]
    lib.vae_decode.restype = ctypes.c_int
    lib.vae_encode.argtypes = [
        ctypes.c_void_p,
        f,
        ctypes.c_int64,
        ctypes.c_size_t,
        f,
        ctypes.c_size_t,
        f,
        ctypes.c_size_t,
    ]
    lib.vae_encode.restype = ctypes.c_int
    if lib.vae_abi_version() != ABI_VERSION:
        raise CppRuntimeError(f"{path}: C ABI version {lib.vae_abi_version()}, this binding speaks {ABI_VERSION}")
    return lib


def _ptr(a: np.ndarray):
    return a.ctypes.data_as(ctypes.POINTER(ctypes.c_float))


class CppRuntime:
    """encode / decode / close over one `vae_runtime` handle (numpy float32 in and out, like runtime.load's)."""

    def __init__(
        self,
        bundle: str | os.PathLike,
        *,
        backend: str = "onnxruntime",
        device: str = "cpu",
        precision: str = "fp32",
        graphs: str | None = None,
        threads: int | None = None,
        batch_split: int | bool | None = None,
        library: str | os.PathLike | None = None,
    ) -> None:
        """batch_split: None = the library's default (32), False = never, N >= 2 = split batches >= N."""
        self.library = find_library(library)
        self._lib = _load_library(self.library)
        opts = _Options()
        self._lib.vae_options_init_sized(ctypes.byref(opts), ctypes.sizeof(opts))  # what the C macro does
        keep = [s.encode() for s in (backend, device, precision)]  # alive until create returns
        opts.backend, opts.device, opts.precision = keep
        if graphs:
            opts.graphs = graphs.encode()
        if threads:
            opts.threads = int(threads)
        if batch_split is not None:
            opts.batch_split = -1 if batch_split is False else int(batch_split)
        handle = ctypes.c_void_p()
        self._check(
            self._lib.vae_runtime_create(str(bundle).encode(), ctypes.byref(opts), ctypes.byref(handle)),
            f"{bundle}: vae_runtime_create",
        )
        self._h = handle
        info = _Info()
        info.struct_size = ctypes.sizeof(_Info)
        self._check(self._lib.vae_runtime_info(self._h, ctypes.byref(info)), "vae_runtime_info")
        self.latent_dim = info.latent_dim
        self.image_shape = (info.in_channels, info.image_size, info.image_size)
        self.output_shape = (info.out_channels, info.image_size, info.image_size)
        self.version = self._lib.vae_version().decode()
        self.backend = self._lib.vae_runtime_backend(self._h).decode()

    def _check(self, status: int, what: str) -> None:
        if status != 0:
            name = self._lib.vae_status_name(status).decode()
            raise CppRuntimeError(f"{what}: {name}: {self._lib.vae_last_error().decode(errors='replace')}")

    def decode(self, z: np.ndarray) -> np.ndarray:
        z = np.ascontiguousarray(z, dtype=np.float32)
        out = np.empty((z.shape[0], *self.output_shape), dtype=np.float32)
        self._check(self._lib.vae_decode(self._h, _ptr(z), z.shape[0], z.size, _ptr(out), out.size), "vae_decode")
        return out

    def encode(self, images: np.ndarray) -> Any:
        x = np.ascontiguousarray(images, dtype=np.float32)
        mu = np.empty((x.shape[0], self.latent_dim), dtype=np.float32)
        logvar = np.empty_like(mu)
        self._check(
            self._lib.vae_encode(self._h, _ptr(x), x.shape[0], x.size, _ptr(mu), mu.size, _ptr(logvar), logvar.size),
            "vae_encode",
        )
        return mu, logvar

    def close(self) -> None:
        h, self._h = getattr(self, "_h", None), None
        if h:
            self._lib.vae_runtime_destroy(h)

    def __enter__(self) -> "CppRuntime":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # a forgotten close() must not leak the sessions
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass
