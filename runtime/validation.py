"""Boundary checks for the arrays handed to a backend, done once (in Backend.run) for every backend.

Policy, decided once here:
- dtype: float32 is used as is; other floating dtypes (float64 from NumPy's defaults, float16) are converted to
  float32, because a float64 image in the pixel range carries no information float32 loses at these magnitudes.
  Integer, bool, complex and object arrays are refused (DTypeError): uint8 pixels must be mapped to the pixel range
  first (runtime.images.from_uint8), and silently treating 0..255 as model input would give garbage.
- memory layout: non-contiguous or byte-swapped arrays (slices, transposes, big-endian files) are copied into a
  C-contiguous native float32 array; the caller's array is never modified.
- NaN / Inf: refused (NonFiniteError) with the count and the first bad index, unless the runtime was loaded with
  check_finite=False (a full pass over the input; negligible next to a network, but some callers pre-validate).
- an empty batch, a wrong rank, channel count, image size or latent size: ShapeError / EmptyBatchError naming the
  tensor, the expected shape (symbolic batch axis shown as N) and the actual one.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .bundle import IMAGE, LOGVAR, MU, TensorSpec, Z
from .errors import DTypeError, EmptyBatchError, NonFiniteError, ShapeError

_FLOAT32 = np.dtype(np.float32)  # native byte order: a big-endian float32 array compares unequal
_FINITE_BLOCK = 1 << 20  # values per NaN/Inf check: its mask stays ~1 MiB whatever the batch

# What each axis means, for messages ("channels 1, expected 3" reads better than "axis 1").
_AXIS_NAMES = {
    IMAGE: ("batch", "channels", "height", "width"),
    Z: ("batch", "latent size"),
    MU: ("batch", "latent size"),
    LOGVAR: ("batch", "latent size"),
}


def shape_str(shape: tuple[Any, ...]) -> str:
    """(batch, 3, 64, 64) -> '(N, 3, 64, 64)': symbolic axes print as N."""
    return "(" + ", ".join("N" if isinstance(d, str) or d is None else str(d) for d in shape) + ")"


def _hint(spec: TensorSpec, shape: tuple[int, ...]) -> str:
    rank = len(spec.shape)
    if spec.name == IMAGE and len(shape) == rank - 1:
        return "; a single image needs a batch axis (x[None]); uint8 HWC pixels go through runtime.images.from_uint8"
    if spec.name == IMAGE and len(shape) == rank and shape[-1] == spec.shape[1] and shape[1] != spec.shape[1]:
        return (
            "; this looks channels-last (NHWC): transpose to NCHW or use runtime.images.from_uint8(..., layout='NHWC')"
        )
    if len(shape) == rank - 1:
        return "; a single vector needs a batch axis (x[None])"
    return ""


def check_input(spec: TensorSpec, value: Any, *, check_finite: bool = True) -> np.ndarray:
    """Return `value` as a C-contiguous float32 array of the spec's shape, or raise an InputError naming the tensor."""
    if (  # the common case, checked in as few steps as possible (a batch-1 call is dominated by this layer)
        type(value) is np.ndarray
        and value.dtype == _FLOAT32
        and value.ndim == len(spec.shape)
        and value.shape[1:] == spec.shape[1:]  # a symbolic axis after the batch never compares equal: full path
        and value.shape[0] > 0
        and value.flags.c_contiguous
        and not (check_finite and not _all_finite(value))
    ):
        return value
    name = spec.name
    try:
        arr = value if isinstance(value, np.ndarray) else np.asarray(value)
    except (TypeError, ValueError) as e:
        raise DTypeError(f"tensor {name!r}: cannot be read as an array ({type(value).__name__}): {e}") from None
    if arr.dtype.kind != "f":
        hint = " (uint8 pixels: convert with runtime.images.from_uint8)" if arr.dtype.kind in "ui" else ""
        raise DTypeError(f"tensor {name!r}: expected a floating-point array (float32), got dtype {arr.dtype}{hint}")
    expected = tuple(spec.shape)
    if arr.ndim != len(expected):
        raise ShapeError(
            f"tensor {name!r}: expected rank {len(expected)} {shape_str(expected)}, "
            f"got rank {arr.ndim} {tuple(arr.shape)}{_hint(spec, arr.shape)}"
        )
    axes = _AXIS_NAMES.get(name, tuple(f"axis {i}" for i in range(len(expected))))
    bad = [
        f"{axes[i]} {got}, expected {want}"
        for i, (got, want) in enumerate(zip(arr.shape, expected))
        if isinstance(want, int) and got != want
    ]
    if bad:
        raise ShapeError(
            f"tensor {name!r}: expected shape {shape_str(expected)}, got {tuple(arr.shape)} "
            f"({'; '.join(bad)}){_hint(spec, arr.shape)}"
        )
    if arr.shape[0] == 0:
        raise EmptyBatchError(f"tensor {name!r}: empty batch, shape {tuple(arr.shape)}; expected at least 1 item")
    if arr.dtype != _FLOAT32 or not arr.flags.c_contiguous:
        # One copy at most: dtype conversion, byte order and contiguity are fixed together.
        with np.errstate(over="ignore"):  # float64 beyond float32's range becomes Inf, reported just below
            arr = np.ascontiguousarray(arr, dtype=np.float32)
    if check_finite and not _all_finite(arr):
        finite = np.isfinite(arr)
        nan, inf = int(np.isnan(arr).sum()), int(np.isinf(arr).sum())
        first = tuple(int(i) for i in np.argwhere(~finite)[0])
        raise NonFiniteError(
            f"tensor {name!r}: {nan} NaN and {inf} Inf value(s), first at index {first}; expected finite values"
        )
    return arr


def _all_finite(arr: np.ndarray) -> bool:
    """No NaN or Inf in a C-contiguous float32 array. A batch larger than _FINITE_BLOCK values is checked block by
    block, so the mask never grows with the batch (issue 16: memory bounded)."""
    if arr.size <= _FINITE_BLOCK:
        return bool(np.isfinite(arr).all())
    rows = max(1, _FINITE_BLOCK // max(1, arr[0].size))
    return all(np.isfinite(arr[i : i + rows]).all() for i in range(0, arr.shape[0], rows))
