"""The VAE runtime applications embed: `runtime.load(BUNDLE)` -> encode / decode / reconstruct / sample / interpolate.

From an image file of any size to latents and back (Pillow for the file I/O: the `images` extra)::

    with runtime.load("bundle/") as vae:                                     # ONNX Runtime, CPU, FP32
        z = vae.encode(vae.load_image("in.png")).mu     # centre-cropped and resized like the training data
        vae.save_image(vae.decode(z), "out.png")        # (1, latent_dim) -> image_size x image_size PNG

vae.prepare(pixels) does the same for uint8 arrays of any size without Pillow; vae.from_uint8 / to_uint8 map
pixels that already have the model's size. The centre crop is the one vae.json records (vae.center_crop: training's
--center-crop; 148 for bundles that record none); crop=N or crop=None (no crop limit) overrides it per call.

Arrays in and out are NumPy: images are float32 NCHW batches in the bundle's pixel range (vae.pixel_range, from
vae.json), latents are float32 (N, latent_dim). Inputs are checked once at the boundary (runtime.validation: float64
is converted, non-contiguous arrays are copied, integers / NaN / Inf / empty batches / wrong shapes are refused with
an error naming the tensor, the expected and the actual value). Every engine call gets at most `max_chunk` items
(load's option, default 256) or the engine's own limit; a bigger batch is run chunk by chunk into one output array.
One runtime may be shared by many threads. close() (or leaving a `with` block) releases the engine.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from . import images as _images, rng as _rng
from .backends import Backend, Device, resolve
from .backends.base import DEFAULT_MAX_CHUNK, check_max_chunk
from .bundle import (
    DECODER,
    ENCODER,
    ENGINE_PRECISIONS,
    IMAGE,
    LOGVAR,
    MANIFEST_NAME,
    MU,
    PRECISIONS,
    Manifest,
    Z,
    bundle_path,
    read_manifest,
)
from .errors import BackendError, ShapeError
from .validation import check_input

# prepare / load_image's default crop: the one the bundle's vae.json records (VAERuntime.center_crop).
BUNDLE_CROP = "bundle"


@dataclass(frozen=True)
class Posterior:
    """The encoder's diagonal Gaussian q(z|x): mu and logvar, each float32 (N, latent_dim)."""

    mu: np.ndarray
    logvar: np.ndarray

    @property
    def std(self) -> np.ndarray:
        return np.exp(0.5 * self.logvar)

    def sample(self, seed: int | np.random.Generator | None = None) -> np.ndarray:
        """z = mu + eps * std with eps ~ N(0, I) (reparameterisation, outside graphs). An int seed in [0, 2**64) draws
        eps from runtime.rng's portable stream (the one the C++ vae_decode --seed uses); a np.random.Generator draws
        from that generator; None: a fresh seed."""
        if isinstance(seed, np.random.Generator):
            eps = seed.standard_normal(self.mu.shape, dtype=np.float32)
        else:
            eps = _rng.standard_normal(seed, self.mu.shape)
        return (self.mu + eps * self.std).astype(np.float32)


class VAERuntime:
    """A loaded bundle on one backend. Build it with runtime.load(); see the module docstring."""

    def __init__(self, backend: Backend, manifest: Manifest, bundle: Path, *, chosen: str = "requested") -> None:
        self.backend = backend
        self.manifest = manifest
        self.bundle = bundle
        self.chosen = chosen  # why this backend (for backend="auto")

    # ------------------------------------------------------------------ facts from the manifest
    @property
    def latent_dim(self) -> int:
        return self.manifest.model.latent_dim

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of encoder inputs."""
        return self.manifest.model.image_shape

    @property
    def output_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of decoded images."""
        return self.manifest.model.output_shape

    @property
    def pixel_range(self) -> tuple[float, float]:
        return self.manifest.pixel_range

    @property
    def backend_name(self) -> str:
        return self.backend.name

    @property
    def device(self) -> str:
        return str(self.backend.device)

    @property
    def precision(self) -> str:
        return self.backend.precision

    @property
    def graphs(self) -> tuple[str, ...]:
        return self.backend.graphs

    @property
    def center_crop(self) -> int | None:
        """The centre crop prepare / load_image apply by default: vae.json's preprocess.center_crop (training's
        --center-crop; None: training cropped nothing, so the largest centred square), or 148 (TRAIN_CENTER_CROP)
        for a bundle that records none."""
        return self.manifest.center_crop

    def describe(self) -> dict[str, Any]:
        return {
            **self.backend.describe(),
            "bundle": str(self.bundle),
            "chosen": self.chosen,
            "source_sha256": self.manifest.source.get("sha256", ""),
            "preprocess": self._preprocess_record(),
        }

    def _preprocess_record(self) -> dict[str, Any]:
        """describe()'s "preprocess": vae.json's, or what a bundle without one gets and why."""
        if self.manifest.preprocess is not None:
            return self.manifest.preprocess.to_dict()
        return {
            "center_crop": _images.TRAIN_CENTER_CROP,
            "resize": "bilinear",
            "source": f"default: {MANIFEST_NAME} records no preprocess (exported before it was recorded)",
        }

    # ------------------------------------------------------------------ the model
    def encode(self, images: Any) -> Posterior:
        """float images (N, C, H, W) in pixel_range -> Posterior(mu, logvar), each (N, latent_dim)."""
        out = self.backend.run(ENCODER, {IMAGE: images})
        return Posterior(mu=out[MU], logvar=out[LOGVAR])

    def decode(self, z: Any) -> np.ndarray:
        """latents (N, latent_dim) -> float32 images (N, C, H, W) (the decoder's Tanh range)."""
        return self.backend.run(DECODER, {Z: z})[IMAGE]

    def reconstruct(self, images: Any) -> np.ndarray:
        """Decode the posterior mean: deterministic (no sampling)."""
        return self.decode(self.encode(images).mu)

    def sample(self, n: int, seed: int | None = None) -> np.ndarray:
        """Decode n latents drawn from the prior N(0, I): runtime.rng.standard_normal(seed, (n, latent_dim)), the
        portable stream `vae_decode --count n --seed S` (C++) draws too, so both decode the same latents for one seed
        (within 1 ulp of float32: runtime/rng.py). seed: an integer in [0, 2**64); None: a fresh one."""
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
            raise ShapeError(f"sample: n must be a positive integer, got {n!r}")
        z = _rng.standard_normal(seed, (int(n), self.latent_dim))
        return self.decode(z)

    def interpolate(self, a: Any, b: Any, steps: int = 8, *, method: str = "linear") -> np.ndarray:
        """Decode `steps` latents from a to b, both ends included. a, b: (latent_dim,) or (1, latent_dim).

        method "linear" walks the straight line; "slerp" follows the great circle, which keeps the norm typical of
        Gaussian latents (a straight line between two prior draws passes through low-norm, atypical latents).
        """
        if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or steps < 2:
            raise ShapeError(f"interpolate: steps must be an integer >= 2, got {steps!r}")
        if method not in ("linear", "slerp"):
            raise ValueError(f"interpolate: method must be 'linear' or 'slerp', got {method!r}")
        spec = self.manifest.graph(DECODER).inputs[0]
        ends = []
        for label, v in (("a", a), ("b", b)):
            arr = np.asarray(v)
            if arr.ndim == 1:
                arr = arr[None]
            if arr.ndim != 2 or arr.shape[0] != 1:
                raise ShapeError(
                    f"interpolate: {label} must be one latent, shape ({self.latent_dim},) or "
                    f"(1, {self.latent_dim}), got {np.shape(v)}"
                )
            ends.append(check_input(spec, arr, check_finite=True)[0].astype(np.float64))
        t = np.linspace(0.0, 1.0, int(steps))[:, None]
        za, zb = ends
        if method == "slerp":
            na, nb = np.linalg.norm(za), np.linalg.norm(zb)
            omega = np.arccos(np.clip(np.dot(za, zb) / (na * nb), -1.0, 1.0)) if na > 0 and nb > 0 else 0.0
            if omega > 1e-6:
                s = np.sin(omega)
                z = np.sin((1 - t) * omega) / s * za + np.sin(t * omega) / s * zb
            else:  # (anti)parallel or zero: the great circle is undefined, the line is the answer
                z = (1 - t) * za + t * zb
        else:
            z = (1 - t) * za + t * zb
        return self.decode(z.astype(np.float32))

    # ------------------------------------------------------------------ uint8 helpers in this bundle's range
    def from_uint8(self, pixels: np.ndarray, layout: str = "HWC") -> np.ndarray:
        """uint8 pixels (HWC / CHW image or NHWC / NCHW batch) -> float32 NCHW batch in pixel_range."""
        return _images.from_uint8(pixels, self.pixel_range, layout)

    def to_uint8(self, images: np.ndarray, layout: str = "NHWC") -> np.ndarray:
        """Decoded float NCHW batch -> uint8 pixels in `layout` (HWC / CHW: a batch of one -> one image).

        Decoded images are mapped from the bundle's pixel range, the range the model was trained to reproduce.
        """
        return _images.to_uint8(images, self.pixel_range, layout)

    # ------------------------------------------------------------------ images of any size (runtime/images.py)
    def prepare(self, images: Any, layout: str = "HWC", *, crop: int | None | str = BUNDLE_CROP) -> np.ndarray:
        """uint8 images of any size (one, a batch, or a list of differently sized ones) -> the encoder's input:
        converted to in_channels, centre-cropped and resized like the training data (NumPy only). crop: "bundle"
        (the default: center_crop, as vae.json records it), a size in pixels, or None (no crop limit)."""
        c, size, _ = self.image_shape
        return _images.prepare(images, size, self.pixel_range, channels=c, crop=self._crop(crop), layout=layout)

    def load_image(self, source: Any, *, crop: int | None | str = BUNDLE_CROP) -> np.ndarray:
        """An image file or PIL image of any size -> the encoder's input (1, C, H, W), as in training; crop as for
        prepare. Needs Pillow."""
        c, size, _ = self.image_shape
        return _images.load_image(source, size, self.pixel_range, channels=c, crop=self._crop(crop))

    def _crop(self, crop: int | None | str) -> int | None:
        """The crop to apply: the bundle's for BUNDLE_CROP, else the caller's (checked by runtime.images)."""
        if isinstance(crop, str):
            if crop != BUNDLE_CROP:
                raise _images.ImageError(
                    f"crop: expected {BUNDLE_CROP!r} (the crop {MANIFEST_NAME} records), a size >= 1 or None "
                    f"(no crop), got {crop!r}"
                )
            return self.center_crop
        return crop

    def to_pil(self, image: np.ndarray):
        """One decoded image (CHW or a batch of one) -> a PIL image. Needs Pillow."""
        return _images.to_pil(image, self.pixel_range)

    def save_image(self, image: np.ndarray, path: str | os.PathLike) -> Path:
        """Write one decoded image (CHW or a batch of one) to `path` (.png, .jpg ...). Needs Pillow."""
        return _images.save_image(image, path, self.pixel_range)

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        self.backend.close()

    @property
    def closed(self) -> bool:
        return self.backend.closed

    def __enter__(self) -> "VAERuntime":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<VAERuntime {self.bundle} {self.backend!r}>"


def load(
    bundle: str | os.PathLike,
    backend: str = "auto",
    device: str = "cpu",
    precision: str = "fp32",
    *,
    graphs: str | Iterable[str] | None = None,
    check_finite: bool = True,
    max_chunk: int | None = DEFAULT_MAX_CHUNK,
    **options: Any,
) -> VAERuntime:
    """Load a bundle on a backend and return a runtime for it.

    The ONNX Runtime backend checks every graph file here but creates a graph's session on its first call
    (preload=True: here), so a process that only decodes never builds the encoder's session.

    Args:
        bundle: The bundle folder, or its vae.json.
        backend: "auto", "onnxruntime", "tensorrt", "openvino" (CPU) or "torch" (the PyTorch reference; parity and
            benchmarks only). "auto" on the CPU takes the backend vae.json's record for this machine measured
            fastest at this precision over the graphs loaded (`python -m benchmarks.latency BUNDLE --record-auto`
            writes it; used only for the same CPU, ISA flags, usable CPUs and threads option, unchanged graph files
            and engine version), else the fixed order: onnxruntime, or openvino for bf16; on cuda: tensorrt when
            its engines are usable here, else onnxruntime. describe()["chosen"] says which applied and why
            (runtime/backends/__init__.py).
        device: "cpu", "cuda" or "cuda:N".
        precision: "fp32", "fp16" or "int8" (a variant listed in vae.json), or "bf16" (OpenVINO's bf16 execution of
            the FP32 graph, where vae.json records it met its budget). fp16 is for GPUs (TensorRT, CUDA), not a CPU
            speed option: the ONNX Runtime CPU provider has no native FP16 kernels on x86 and runs an fp16 variant
            about 2x slower than fp32; OpenVINO computes it in fp32. The CPU's faster precisions are int8 (where
            its variant met the budget) and bf16 (openvino, on CPUs with AVX512_BF16 or AMX);
            docs/performance.md#precision-and-backend-on-the-cpu has the measurements.
        graphs: The graphs to load (default: all in the bundle): names, e.g. ("decoder",) for a decoder-only app,
            or one string, "decoder" or "encoder,decoder" (comma-separated, as the CLIs' --graphs take them).
        check_finite: Refuse inputs holding NaN or Inf (NonFiniteError); False skips that pass over each input.
        max_chunk: Largest batch one engine call gets, on every backend (default DEFAULT_MAX_CHUNK, 256); a bigger
            batch runs chunk by chunk into one output array, so memory beyond the inputs and outputs stays bounded
            by one chunk (docs/performance.md#bounded-memory). None: one call per batch, whatever its size.
            Changeable later through `runtime.backend.max_chunk`.
        **options: Backend options, checked by name (onnxruntime: threads, inter_op_threads,
            graph_optimization_level, execution_provider, io_binding, provider_options, max_batch, spinning,
            preload, batch_split - see OnnxRuntimeBackend; openvino: threads, performance_hint, cpu_pinning,
            preload - see runtime/backends/openvino.py; torch: checkpoint, threads; tensorrt: its own).

    Returns:
        A VAERuntime (encode / decode / reconstruct / sample / interpolate); close it, or use it in a `with` block.

    Raises:
        BundleError: The bundle's files or manifest are missing, malformed or inconsistent.
        BackendError: A bad backend, device, precision, graph or option for this bundle.
        BackendUnavailableError: The chosen backend's engine is not installed or usable here.
    """
    path = bundle_path(bundle)  # BundleError naming what was expected for None, bytes, ''
    root = path if path.is_dir() or path.name != MANIFEST_NAME else path.parent
    manifest = read_manifest(root)
    dev = Device.parse(device)
    if precision not in PRECISIONS + ENGINE_PRECISIONS:
        raise BackendError(f"precision: expected one of {list(PRECISIONS + ENGINE_PRECISIONS)}, got {precision!r}")
    wanted = _graph_names(graphs) if graphs is not None else tuple(manifest.graphs)
    missing = [g for g in wanted if g not in manifest.graphs]
    if missing or not wanted:
        raise BackendError(f"graphs: asked for {list(wanted)}, the bundle {root} has {sorted(manifest.graphs)}")
    cls, chosen = resolve(backend, root, manifest, dev, precision, wanted, options.get("threads"))
    if precision not in cls.precisions:
        hint = (
            f" ({precision} is an engine setting on the FP32 graph, not a graph file: backend 'openvino' runs it "
            "where vae.json records it)"
            if precision in ENGINE_PRECISIONS
            else ""
        )
        raise BackendError(f"backend {cls.name!r} runs precisions {list(cls.precisions)}, got {precision!r}{hint}")
    if dev.kind not in cls.device_kinds:
        raise BackendError(f"backend {cls.name!r} runs on {list(cls.device_kinds)}, got device {str(dev)!r}")
    unknown = sorted(set(options) - set(cls.options))
    if unknown:
        raise BackendError(f"backend {cls.name!r}: unknown option(s) {unknown}; it accepts {list(cls.options)}")
    max_chunk = check_max_chunk(max_chunk)
    be = cls.open(root, manifest, device=dev, precision=precision, graphs=wanted, check_finite=check_finite, **options)
    be.max_chunk = max_chunk
    return VAERuntime(be, manifest, root, chosen=chosen)


def _graph_names(graphs: Any) -> tuple[str, ...]:
    """load()'s `graphs` as a tuple of names, duplicates dropped: a string is one name or a comma-separated list
    ("decoder", "encoder,decoder"), never its characters; anything else must be an iterable of strings."""
    if isinstance(graphs, str):
        return tuple(dict.fromkeys(g.strip() for g in graphs.split(",") if g.strip()))
    if isinstance(graphs, (bytes, Mapping)) or not isinstance(graphs, Iterable):
        raise BackendError(
            f"graphs: expected a graph name, a comma-separated string or a list of names, got "
            f"{type(graphs).__name__} {graphs!r}"
        )
    names = tuple(graphs)
    bad = [g for g in names if not isinstance(g, str)]
    if bad:
        raise BackendError(f"graphs: expected graph names (strings), got {type(bad[0]).__name__} {bad[0]!r}")
    return tuple(dict.fromkeys(names))
