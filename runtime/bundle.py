"""The bundle contract: `vae.json` (the manifest) and the files it names. Defined once, here (numpy + stdlib only).

Written by export, read by the Python and C++ runtimes, parity and benchmarks. Layout of BUNDLE/:
    vae.json          this manifest (schema "vae-deploy/bundle", schema_version 1)
    encoder.onnx      image (N,C,H,W) float32 -> mu (N,D), logvar (N,D)
    decoder.onnx      z (N,D) float32 -> image (N,C,H,W)
    reference.npz     golden inputs and PyTorch FP32 outputs, keys "<graph>.<tensor>" (e.g. "decoder.z")
    <graph>.<precision>.onnx   reduced-precision variants, listed under graphs.<graph>.variants
    (no file)         precisions an engine applies to the FP32 graph (bf16 on OpenVINO), listed with their measured
                      accuracy under graphs.<graph>.engine_precisions (optional; the C++ runtime ignores the key)
    (no file)         the CPU backends' measured speed per machine, under "auto" (AutoRecord: backend="auto"'s
                      recorded choice; optional, written by `benchmarks.latency --record-auto`; C++ ignores it)
    (no file)         how training prepared its images, under "preprocess" (PreprocessSpec: the centre crop before
                      the resize; optional: bundles without it get TRAIN_CENTER_CROP, 148, as before it was recorded)

read_manifest checks, once for every reader, that each file named is a relative name staying inside the bundle
(resolve_file), each graph and variant carries its sha256, and the model section is bounded (MODEL_BOUNDS) and agrees
with every graph's shapes; errors name the file, the field, the expected and the actual value.
runtime/cpp/src/bundle.cpp applies the same rules.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from .errors import VaeError
from .files import sha256_file, write_json_atomic  # noqa: F401 - re-exported: part of the bundle API
from .images import TRAIN_CENTER_CROP

SCHEMA = "vae-deploy/bundle"
SCHEMA_VERSION = 1
MANIFEST_NAME = "vae.json"
REFERENCE_NAME = "reference.npz"

# Fixed tensor and graph names, shared by export, both runtimes, benchmarks and tests.
ENCODER = "encoder"
DECODER = "decoder"
GRAPHS = (ENCODER, DECODER)
IMAGE = "image"
MU = "mu"
LOGVAR = "logvar"
Z = "z"
BATCH_AXIS = "batch"
GRAPH_IO = {ENCODER: ((IMAGE,), (MU, LOGVAR)), DECODER: ((Z,), (IMAGE,))}
PRECISIONS = ("fp32", "fp16", "int8")
# Precisions an engine applies to the FP32 graph itself (no file of their own), each listed, with the evidence that it
# meets its budget, under graphs.<graph>.engine_precisions (EnginePrecisionSpec): OpenVINO's bf16 on CPUs that have it.
ENGINE_PRECISIONS = ("bf16",)
DTYPES = ("float32", "float16")  # of a graph's inputs/outputs (an FP16 variant may declare float16 I/O)

# Bounds on the model section, checked when vae.json is read, before anything is sized from it (a vae.json claiming
# latent_dim 10**9 made sample(1) allocate 4.8 GB). Far above any real VAE - PyTorch-VAE's models are 64x64 RGB with
# 128 latents; image VAEs of diffusion models code 1024 px into 4-16 channels - and far below sizes whose arrays
# cannot be allocated: one latent is at most 256 KiB of float32, one image at most 1 GiB.
MAX_CHANNELS = 64  # grey, RGB(A), multispectral; a 64-band cube is already not this model's input
MAX_IMAGE_SIZE = 8192  # an 8K square
MAX_LATENT_DIM = 65536  # 256 KiB per float32 latent vector
MAX_IMAGE_ELEMENTS = 1 << 28  # C x S x S of one image: 1 GiB of float32 (3 x 8192 x 8192 fits, 64 x 8192 x 8192 not)
MAX_HIDDEN_DIM = 65536  # channels of one hidden layer
MAX_HIDDEN_LAYERS = 64
MAX_STATIC_AXIS = 1 << 31  # any other static axis (a fixed batch): what an ONNX/TensorRT dimension can hold
MODEL_BOUNDS = {
    "in_channels": MAX_CHANNELS,
    "out_channels": MAX_CHANNELS,
    "image_size": MAX_IMAGE_SIZE,
    "latent_dim": MAX_LATENT_DIM,
}
_SHA256 = re.compile(r"[0-9a-f]{64}")
# "preprocess": the resize filters the runtimes reproduce (Pillow's BILINEAR: runtime/images.py, image_prep.cpp), and
# the largest centre crop, an int32_t in the C ABI (vae_image_prepare's center_crop).
RESIZE_FILTERS = ("bilinear",)
MAX_CENTER_CROP = 2**31 - 1


def is_center_crop(value: object) -> bool:
    """A crop size vae.json can record: an integer (not a bool) in [1, MAX_CENTER_CROP]."""
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_CENTER_CROP


class BundleError(VaeError, ValueError):
    """A bundle is missing, malformed or inconsistent; the message names the file and what is wrong."""


# ----------------------------------------------------------------------------------------------- file names
# Every file a manifest (or an engine sidecar) names is read through the rules below: the name is relative, with '/'
# separators and no '..' component, and the file it reaches - after symlinks - lies inside the bundle folder. A
# manifest must never make a reader (runtime, parity, export's tools, serve) read or overwrite anything elsewhere.


def name_problem(name: object) -> str | None:
    """Why `name` cannot name a file inside a bundle (None: it can). Pure: looks at the string only."""
    if not isinstance(name, str):
        return f"not a string but {_json_type(name)}"
    if not name:
        return "it is empty"
    if "\0" in name:
        return "it holds a NUL character"
    if "\\" in name:
        return "'\\' is not a separator here: use '/'"
    if name.startswith("/") or re.match(r"[A-Za-z]:", name):
        return "it is absolute"
    if ".." in name.split("/"):
        return "'..' leaves the folder"
    return None


def check_name(name: object, *, source: str, field: str) -> str:
    """`name` if it may name a file inside the bundle, else BundleError naming the file and the field."""
    problem = name_problem(name)
    if problem:
        shown = repr(name) if isinstance(name, str) else _show(name)
        raise BundleError(f"{source}: {field}: expected a relative path inside the bundle, got {shown} ({problem})")
    return name  # type: ignore[return-value]


def resolve_inside(root: str | os.PathLike, path: str | os.PathLike) -> Path:
    """`path` (inside the folder `root`) resolved through its symlinks; BundleError if it then lies outside `root`."""
    path = Path(path)
    try:
        base, real = Path(root).resolve(), path.resolve()
    except (OSError, RuntimeError) as e:  # a symlink loop (RuntimeError before Python 3.13)
        raise BundleError(f"{path}: cannot be resolved inside the bundle {root}: {e}") from None
    if real != base and base not in real.parents:
        raise BundleError(
            f"{path}: resolves to {real}, outside the bundle {base}; expected a file inside the bundle "
            "(a symlink out of it is refused)"
        )
    return real


def _json_type(v: object) -> str:
    """The JSON name of a value's type, for messages ('string', 'number', 'list', ...)."""
    if v is None:
        return "null"
    for t, name in (
        (bool, "boolean"),
        (str, "string"),
        (int, "integer"),
        (float, "number"),
        (list, "list"),
        (tuple, "list"),
        (dict, "object"),
    ):
        if isinstance(v, t):
            return name
    return type(v).__name__


def _show(v: object) -> str:
    """A value for a message, with its JSON type unless it is a plain integer: 8, string '8', number 8.5, null."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return f"boolean {json.dumps(v)}"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, (str, float)):
        return f"{_json_type(v)} {v!r}"
    return _json_type(v)


def reference_key(graph: str, tensor: str) -> str:
    return f"{graph}.{tensor}"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int | str, ...]  # str entries are symbolic axes ("batch")
    dtype: str = "float32"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TensorSpec":
        return cls(name=str(d["name"]), shape=tuple(d["shape"]), dtype=str(d.get("dtype", "float32")))


@dataclass(frozen=True)
class VariantSpec:
    """A reduced-precision graph (fp16 / int8) with the evidence that it meets its accuracy budget."""

    precision: str
    file: str
    sha256: str
    kept_fp32_nodes: tuple[str, ...] = ()
    accuracy: dict[str, Any] = field(default_factory=dict)
    budget: dict[str, Any] = field(default_factory=dict)
    # Optional: the FP32 form the variant was made from when it is not the bundle's own graph file (e.g. INT8
    # quantized from an all-sub-pixel rewrite of the decoder: {"form": "subpixel", "rewrites": ..., "rewrite_options":
    # {...}, ...}). Empty (and absent from vae.json) when the variant was made from the graph file itself.
    source_form: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["kept_fp32_nodes"] = list(self.kept_fp32_nodes)
        if not self.source_form:  # bundles without it read and write exactly as before
            del d["source_form"]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "VariantSpec":
        return cls(
            precision=str(d["precision"]),
            file=str(d["file"]),
            sha256=str(d["sha256"]),
            kept_fp32_nodes=tuple(d.get("kept_fp32_nodes", ())),
            accuracy=dict(d.get("accuracy", {})),
            budget=dict(d.get("budget", {})),
            source_form=dict(d.get("source_form") or {}),
        )


@dataclass(frozen=True)
class EnginePrecisionSpec:
    """A precision an engine applies to the FP32 graph itself (bf16: OpenVINO's INFERENCE_PRECISION_HINT), with the
    evidence that it meets its budget: which graph file (and sha256) it was measured on, with which engine version,
    device and properties. No file of its own, so it lives beside the variants, not among them: readers that list
    variant files (recovery, TensorRT build plans, the C++ runtime) never see it, and readers that predate it ignore
    the key."""

    precision: str
    engine: str  # the backend that applies it ("openvino")
    file: str  # the FP32 graph file it was measured on (the graph's own file)
    sha256: str  # that file's sha256 when measured: a changed graph must be measured again
    device: str = ""  # the engine's device name ("CPU")
    properties: dict[str, Any] = field(default_factory=dict)  # engine properties it means, e.g. the precision hint
    versions: dict[str, str] = field(default_factory=dict)  # engine version(s) it was measured with
    accuracy: dict[str, Any] = field(default_factory=dict)
    budget: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "EnginePrecisionSpec":
        return cls(
            precision=str(d["precision"]),
            engine=str(d["engine"]),
            file=str(d["file"]),
            sha256=str(d["sha256"]),
            device=str(d.get("device", "")),
            properties=dict(d.get("properties", {})),
            versions={str(k): str(v) for k, v in dict(d.get("versions", {})).items()},
            accuracy=dict(d.get("accuracy", {})),
            budget=dict(d.get("budget", {})),
        )


@dataclass(frozen=True)
class GraphSpec:
    name: str
    file: str
    sha256: str
    opset: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    variants: dict[str, VariantSpec] = field(default_factory=dict)
    engine_precisions: dict[str, EnginePrecisionSpec] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = {
            "file": self.file,
            "sha256": self.sha256,
            "opset": self.opset,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "variants": {p: v.to_dict() for p, v in sorted(self.variants.items())},
        }
        if self.engine_precisions:  # bundles without any read and write exactly as before
            d["engine_precisions"] = {p: e.to_dict() for p, e in sorted(self.engine_precisions.items())}
        return d

    @classmethod
    def from_dict(cls, name: str, d: Mapping[str, Any]) -> "GraphSpec":
        return cls(
            name=name,
            file=str(d["file"]),
            sha256=str(d["sha256"]),
            opset=int(d["opset"]),
            inputs=tuple(TensorSpec.from_dict(t) for t in d["inputs"]),
            outputs=tuple(TensorSpec.from_dict(t) for t in d["outputs"]),
            variants={p: VariantSpec.from_dict(v) for p, v in dict(d.get("variants", {})).items()},
            engine_precisions={
                p: EnginePrecisionSpec.from_dict(e) for p, e in dict(d.get("engine_precisions", {})).items()
            },
        )

    def precisions(self) -> list[str]:
        """Every precision the bundle offers for this graph: fp32, its variants, then its engine precisions."""
        return ["fp32", *sorted(self.variants), *sorted(self.engine_precisions)]


@dataclass(frozen=True)
class ModelSpec:
    in_channels: int
    out_channels: int
    image_size: int
    latent_dim: int
    hidden_dims: tuple[int, ...]
    family: str = "VanillaVAE"

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.image_size, self.image_size)

    @property
    def output_shape(self) -> tuple[int, int, int]:
        return (self.out_channels, self.image_size, self.image_size)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["hidden_dims"] = list(self.hidden_dims)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ModelSpec":
        return cls(
            in_channels=int(d["in_channels"]),
            out_channels=int(d["out_channels"]),
            image_size=int(d["image_size"]),
            latent_dim=int(d["latent_dim"]),
            hidden_dims=tuple(int(h) for h in d["hidden_dims"]),
            family=str(d.get("family", "VanillaVAE")),
        )


@dataclass(frozen=True)
class PreprocessSpec:
    """How training turned its images into the model's input, so that inference does the same (runtime/images.py
    prepare, vae/image.hpp prepare_image): the largest centred square of at most `center_crop` pixels, resized to
    image_size with `resize` (Pillow's BILINEAR). center_crop None (JSON null): training cropped nothing - e.g.
    vae_model.train's embedded shapes, generated at image_size - so an image of any size gives its largest centred
    square. `source` says where the values came from (the checkpoint's training options, or the default used because
    the checkpoint records none): for people, not checked beyond being a string.

    A top-level section, not part of "model" (the network's shape) or of a graph: it describes the data the model
    was trained on, which every graph and both runtimes share."""

    center_crop: int | None
    resize: str = "bilinear"
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"center_crop": self.center_crop, "resize": self.resize, "source": self.source}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PreprocessSpec":
        crop = d["center_crop"]
        return cls(None if crop is None else int(crop), str(d.get("resize", "bilinear")), str(d.get("source", "")))


@dataclass(frozen=True)
class MachineSpec:
    """What a CPU speed measurement depends on besides the bundle: the CPU model (/proc/cpuinfo), the ISA flags the
    engines pick kernels by, the CPUs this process may run on (its affinity) and the threads option (None: the
    backends' default). Two records are for the same machine when all four are equal."""

    cpu: str
    isa: tuple[str, ...]
    cpus: int
    threads: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"cpu": self.cpu, "isa": list(self.isa), "cpus": self.cpus, "threads": self.threads}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "MachineSpec":
        threads = d.get("threads")
        isa = tuple(sorted({str(f) for f in d["isa"]}))  # a set of flags: equal machines compare equal
        return cls(str(d["cpu"]), isa, int(d["cpus"]), None if threads is None else int(threads))


@dataclass(frozen=True)
class MeasuredGraph:
    """One graph at one precision as measured for an AutoRecord: the file that ran (the FP32 graph for an engine
    precision) with its sha256 then, and the median latency per batch and backend."""

    file: str
    sha256: str
    median_ms: dict[int, dict[str, float]]  # batch -> backend -> median ms

    def to_dict(self) -> dict[str, Any]:
        times = {str(n): dict(sorted(by.items())) for n, by in sorted(self.median_ms.items())}
        return {"file": self.file, "sha256": self.sha256, "median_ms": times}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "MeasuredGraph":
        times = {int(n): {str(b): float(ms) for b, ms in by.items()} for n, by in dict(d["median_ms"]).items()}
        return cls(str(d["file"]), str(d["sha256"]), times)


@dataclass(frozen=True)
class AutoRecord:
    """The CPU backends' speed measured on one machine, from which backend="auto" picks there
    (runtime/backends/auto.py): precision -> graph -> MeasuredGraph, with the engine versions, when, and how
    (the harness's command line and settings). Written by `python -m benchmarks.latency BUNDLE --record-auto`."""

    machine: MachineSpec
    versions: dict[str, str]  # backend -> its engine's version ("onnxruntime": "1.32.0")
    precisions: dict[str, dict[str, MeasuredGraph]]
    measured: str  # ISO 8601 date and time of the run
    harness: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "machine": self.machine.to_dict(),
            "versions": dict(sorted(self.versions.items())),
            "measured": self.measured,
            "harness": self.harness,
            "precisions": {
                p: {g: m.to_dict() for g, m in sorted(graphs.items())} for p, graphs in sorted(self.precisions.items())
            },
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "AutoRecord":
        return cls(
            machine=MachineSpec.from_dict(d["machine"]),
            versions={str(k): str(v) for k, v in dict(d["versions"]).items()},
            precisions={
                p: {g: MeasuredGraph.from_dict(m) for g, m in dict(graphs).items()}
                for p, graphs in dict(d["precisions"]).items()
            },
            measured=str(d["measured"]),
            harness=dict(d.get("harness", {})),
        )


@dataclass(frozen=True)
class Manifest:
    model: ModelSpec
    pixel_range: tuple[float, float]
    graphs: dict[str, GraphSpec]
    source: dict[str, Any] = field(default_factory=dict)  # checkpoint name, sha256, size, kind, relative_path
    versions: dict[str, str] = field(default_factory=dict)  # torch / onnx / onnxruntime / vae-deploy used
    reference: dict[str, Any] = field(default_factory=dict)  # {"file": "reference.npz", "sha256": ...}
    parity: dict[str, Any] = field(default_factory=dict)  # export-time parity summary
    created: str = ""
    schema_version: int = SCHEMA_VERSION
    auto: tuple[AutoRecord, ...] = ()  # measured CPU speeds, one record per machine (optional)
    preprocess: PreprocessSpec | None = None  # None: vae.json has no "preprocess" (exported before it was recorded)

    @property
    def center_crop(self) -> int | None:
        """The centre crop images get before the resize: preprocess.center_crop (None: no crop, the largest centred
        square), or TRAIN_CENTER_CROP (148) for a bundle that records none, as before vae.json carried it."""
        return self.preprocess.center_crop if self.preprocess is not None else TRAIN_CENTER_CROP

    def to_dict(self) -> dict[str, Any]:
        d = {
            "schema": SCHEMA,
            "schema_version": self.schema_version,
            "created": self.created,
            "model": self.model.to_dict(),
            "pixel_range": list(self.pixel_range),
            # bundles without it read and write exactly as before
            **({"preprocess": self.preprocess.to_dict()} if self.preprocess is not None else {}),
            "source": self.source,
            "versions": self.versions,
            "graphs": {g: s.to_dict() for g, s in self.graphs.items()},
            "reference": self.reference,
            "parity": self.parity,
        }
        if self.auto:  # bundles without records read and write exactly as before
            d["auto"] = [r.to_dict() for r in self.auto]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, source: str = MANIFEST_NAME) -> "Manifest":
        """Read a manifest, checking every field it uses (the contract, once, for every reader); see _Checker."""
        if d.get("schema") != SCHEMA:
            raise BundleError(f"{source}: 'schema' is {d.get('schema')!r}, expected {SCHEMA!r}")
        version = d.get("schema_version")
        if version != SCHEMA_VERSION:
            raise BundleError(f"{source}: schema_version {version!r}, this runtime reads {SCHEMA_VERSION}")
        _Checker(source).document(d)
        try:
            lo, hi = (float(v) for v in d["pixel_range"])
            graphs = {g: GraphSpec.from_dict(g, s) for g, s in dict(d["graphs"]).items()}
            m = cls(
                model=ModelSpec.from_dict(d["model"]),
                pixel_range=(lo, hi),
                graphs=graphs,
                source=dict(d.get("source", {})),
                versions=dict(d.get("versions", {})),
                reference=dict(d.get("reference", {})),
                parity=dict(d.get("parity", {})),
                created=str(d.get("created", "")),
                schema_version=int(version),
                auto=tuple(AutoRecord.from_dict(r) for r in d.get("auto", [])),
                preprocess=PreprocessSpec.from_dict(d["preprocess"]) if "preprocess" in d else None,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise BundleError(f"{source}: malformed manifest: {type(e).__name__}: {e}") from None
        _check_shapes(m, source)
        return m

    def with_auto_record(self, record: AutoRecord) -> "Manifest":
        """This manifest with `record` in place of the one for the same machine (appended if there is none); the
        records of other machines are kept."""
        records = [r for r in self.auto if r.machine != record.machine]
        at = next((i for i, r in enumerate(self.auto) if r.machine == record.machine), len(records))
        return replace(self, auto=(*records[:at], record, *records[at:]))

    def graph(self, name: str) -> GraphSpec:
        if name not in self.graphs:
            raise BundleError(f"bundle has no {name!r} graph (it has {sorted(self.graphs)})")
        return self.graphs[name]

    def graph_file(self, name: str, precision: str = "fp32") -> tuple[str, str]:
        """(file name relative to the bundle, expected sha256) of a graph at a precision."""
        spec = self.graph(name)
        if precision == "fp32":
            return spec.file, spec.sha256
        if precision not in spec.variants:
            have = ["fp32", *sorted(spec.variants)]
            raise BundleError(
                f"graph {name!r} has no {precision!r} variant (it has {have}); "
                f"create it with `python -m export.precision.fp16` or `python -m export.precision.int8`"
            )
        v = spec.variants[precision]
        return v.file, v.sha256


def bundle_path(bundle: object) -> Path:
    """`bundle` (a folder or its vae.json, as str or os.PathLike) as a Path, or BundleError saying what was expected."""
    if isinstance(bundle, (str, os.PathLike)):
        path = os.fspath(bundle)
        if isinstance(path, str) and path:
            return Path(path)
    got = repr(bundle) if bundle is None or isinstance(bundle, str) else f"{type(bundle).__name__} {bundle!r}"
    raise BundleError(f"bundle: expected a bundle folder or its {MANIFEST_NAME} (str or os.PathLike), got {got}")


def read_manifest(bundle: str | os.PathLike) -> Manifest:
    """Read and validate BUNDLE/vae.json (or a path to the json itself)."""
    path = bundle_path(bundle)
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.is_file():
        raise BundleError(f"{path}: no bundle manifest here (expected {MANIFEST_NAME} written by export.to_onnx)")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise BundleError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return Manifest.from_dict(data, source=str(path))


def resolve_file(bundle: str | os.PathLike, name: str, sha256: str | None = None) -> Path:
    """Path of a file named by the manifest, checked: `name` is relative and stays inside the bundle, also after
    symlinks; the file exists; and, with `sha256`, it is unchanged. sha256=None checks presence only (for a caller
    that hashes the file itself later, e.g. a lazily built session); any string must be a sha256 ('' is refused)."""
    bundle = bundle_path(bundle)
    root = bundle if bundle.is_dir() else bundle.parent
    check_name(name, source=str(root / MANIFEST_NAME), field="file name")
    path = root / name
    if not path.is_file():
        raise BundleError(f"{path}: listed in {root / MANIFEST_NAME} but missing")
    resolve_inside(root, path)
    if sha256 is not None:
        if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
            raise BundleError(f"{path}: expected the file's sha256 (64 hex digits), got {_show(sha256)}")
        actual = sha256_file(path)
        if actual != sha256:
            raise BundleError(
                f"{path}: sha256 {actual[:12]}..., manifest says {sha256[:12]}...: "
                "the file changed after export; re-export the bundle"
            )
    return path


# ----------------------------------------------------------------------------------------------- the source checkpoint
# vae.json's "source" names the checkpoint the bundle was exported from, for the tools that rebuild the PyTorch model
# (the torch reference backend, the INT8 sub-pixel form, the divergence finder; never the runtime itself):
#     {"checkpoint": "best.pt", "sha256": "...", "size": 2457856, "kind": "vae-deploy",
#      "relative_path": "../train/best.pt"}
# relative_path (from the bundle folder, "/"-separated) is written only when the checkpoint lay under the bundle's
# parent folder at export; elsewhere only the name is kept, so a shipped bundle never carries the build machine's
# layout. Bundles exported before held an absolute "path" instead: still read.


def source_checkpoint_candidates(bundle: str | os.PathLike, source: Mapping[str, Any]) -> list[Path]:
    """Where the checkpoint vae.json's `source` names may be, in the order to try: its relative_path from the bundle
    folder, the absolute `path` older exports recorded, then its file name inside the bundle folder. Malformed values
    are skipped (the checkpoint is then not found, and the caller asks for it explicitly)."""
    root = Path(bundle)
    out: list[Path] = []
    rel = source.get("relative_path")
    if isinstance(rel, str) and rel and "\x00" not in rel and not Path(rel).is_absolute():
        out.append(root / rel)
    legacy = source.get("path")
    if isinstance(legacy, str) and legacy and "\x00" not in legacy and Path(legacy).is_absolute():
        out.append(Path(legacy))
    name = source.get("checkpoint")
    if isinstance(name, str) and name and "\x00" not in name:
        out.append(root / Path(name).name)
    return list(dict.fromkeys(out))


def source_checkpoint_mismatch(
    path: str | os.PathLike, source: Mapping[str, Any], sha256: str | None = None
) -> str | None:
    """Why the file at `path` is not the checkpoint vae.json's `source` records (its size, then its sha256: `sha256`
    when the caller already hashed it), or None when it is (or when the manifest records neither)."""
    size, want = source.get("size"), source.get("sha256")
    if isinstance(size, int) and not isinstance(size, bool):
        actual = Path(path).stat().st_size
        if actual != size:
            return (
                f"{actual} bytes, but the bundle was exported from {source.get('checkpoint', '?')} of {size} bytes"
                + (f" with sha256 {want[:12]}..." if isinstance(want, str) and want else "")
            )
    if isinstance(want, str) and want:
        actual_sha = sha256 if sha256 is not None else sha256_file(path)
        if actual_sha != want:
            return (
                f"sha256 {actual_sha[:12]}..., but the bundle was exported from {source.get('checkpoint', '?')} "
                f"with sha256 {want[:12]}..."
            )
    return None


def write_manifest(bundle: str | os.PathLike, manifest: Manifest) -> Path:
    return write_json_atomic(Path(bundle) / MANIFEST_NAME, manifest.to_dict())


# ----------------------------------------------------------------------------------------------- the checks
class _Checker:
    """Checks the raw JSON of a manifest field by field, before any of it is used; each error names the file, the
    field (as a path: graphs.decoder.inputs[0].shape), what was expected and what was found. The C++ reader
    (runtime/cpp/src/bundle.cpp) applies the same rules."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, what: str) -> "BundleError":
        return BundleError(f"{self.source}: {where}: {what}")

    def get(self, obj: Any, key: str, where: str) -> Any:
        if not isinstance(obj, Mapping):
            raise self.fail(where or "top level", f"expected an object, got {_json_type(obj)}")
        if key not in obj:
            raise self.fail(f"{where}.{key}" if where else key, "missing")
        return obj[key]

    def integer(self, v: Any, lo: int, hi: int, where: str) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise self.fail(where, f"expected an integer in [{lo}, {hi}], got {_show(v)}")
        return v

    def sha256(self, obj: Mapping[str, Any], where: str) -> None:
        if "sha256" not in obj:
            raise self.fail(
                f"{where}.sha256", "expected the file's sha256 (64 hex digits), got nothing (the field is missing)"
            )
        v = obj["sha256"]
        if not isinstance(v, str) or not _SHA256.fullmatch(v):
            raise self.fail(f"{where}.sha256", f"expected the file's sha256 (64 hex digits), got {_show(v)}")

    def file(self, obj: Mapping[str, Any], where: str) -> None:
        check_name(self.get(obj, "file", where), source=self.source, field=f"{where}.file")

    def tensor(self, t: Any, where: str) -> None:
        name = self.get(t, "name", where)
        if not isinstance(name, str):
            raise self.fail(f"{where}.name", f"expected a string, got {_show(name)}")
        shape = self.get(t, "shape", where)
        axes = "expected a list of axes (positive integers or axis names), got "
        if not isinstance(shape, list):
            raise self.fail(f"{where}.shape", axes + _show(shape))
        for i, d in enumerate(shape):
            ok = (isinstance(d, str) and d != "") or (
                isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= MAX_STATIC_AXIS
            )
            if not ok:
                raise self.fail(f"{where}.shape", axes + f"axis {i}: {_show(d)}")
        dtype = t.get("dtype", "float32")
        if dtype not in DTYPES:
            raise self.fail(f"{where}.dtype", f"expected one of {list(DTYPES)}, got {_show(dtype)}")

    def document(self, d: Mapping[str, Any]) -> None:
        model = self.get(d, "model", "")
        for key, hi in MODEL_BOUNDS.items():
            self.integer(self.get(model, key, "model"), 1, hi, f"model.{key}")
        elements = model["in_channels"] * model["image_size"] ** 2
        if elements > MAX_IMAGE_ELEMENTS:
            raise self.fail(
                "model",
                f"in_channels x image_size^2 = {elements} values per image, expected at most {MAX_IMAGE_ELEMENTS}",
            )
        hidden = self.get(model, "hidden_dims", "model")
        if not isinstance(hidden, list) or len(hidden) > MAX_HIDDEN_LAYERS:
            raise self.fail(
                "model.hidden_dims",
                f"expected a list of at most {MAX_HIDDEN_LAYERS} integers, got "
                f"{_json_type(hidden)}" + (f" of {len(hidden)}" if isinstance(hidden, list) else ""),
            )
        for i, h in enumerate(hidden):
            self.integer(h, 1, MAX_HIDDEN_DIM, f"model.hidden_dims[{i}]")
        pr = self.get(d, "pixel_range", "")
        if (
            not isinstance(pr, list)
            or len(pr) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in pr)
            or not pr[0] < pr[1]
        ):
            raise self.fail("pixel_range", f"expected [low, high] with finite low < high, got {json.dumps(pr)}")
        graphs = self.get(d, "graphs", "")
        if not isinstance(graphs, Mapping) or not graphs:
            raise self.fail(
                "graphs", f"expected an object with one or both of {list(GRAPHS)}, got {json.dumps(graphs)[:80]}"
            )
        for g, spec in graphs.items():
            where = f"graphs.{g}"
            if g not in GRAPHS:
                raise self.fail("graphs", f"unknown graph {g!r}; expected one or both of {list(GRAPHS)}")
            self.file(spec, where)
            self.sha256(spec, where)
            self.integer(self.get(spec, "opset", where), 1, 1000, f"{where}.opset")
            for side in ("inputs", "outputs"):
                tensors = self.get(spec, side, where)
                if not isinstance(tensors, list):
                    raise self.fail(f"{where}.{side}", f"expected a list, got {_json_type(tensors)}")
                for i, t in enumerate(tensors):
                    self.tensor(t, f"{where}.{side}[{i}]")
            variants = spec.get("variants", {})
            if not isinstance(variants, Mapping):
                raise self.fail(f"{where}.variants", f"expected an object, got {_json_type(variants)}")
            for p, v in variants.items():
                vwhere = f"{where}.variants.{p}"
                if p not in PRECISIONS:
                    raise self.fail(vwhere, f"unknown precision; expected one of {list(PRECISIONS)}")
                self.file(v, vwhere)
                self.sha256(v, vwhere)
            engine = spec.get("engine_precisions", {})
            if not isinstance(engine, Mapping):
                raise self.fail(f"{where}.engine_precisions", f"expected an object, got {_json_type(engine)}")
            for p, e in engine.items():
                ewhere = f"{where}.engine_precisions.{p}"
                if p not in ENGINE_PRECISIONS:
                    raise self.fail(ewhere, f"unknown engine precision; expected one of {list(ENGINE_PRECISIONS)}")
                if self.get(e, "precision", ewhere) != p:
                    raise self.fail(f"{ewhere}.precision", f"expected {p!r}, got {_show(e['precision'])}")
                name = self.get(e, "engine", ewhere)
                if not isinstance(name, str) or not name:
                    raise self.fail(f"{ewhere}.engine", f"expected a backend name, got {_show(name)}")
                self.file(e, ewhere)
                self.sha256(e, ewhere)
                if e["file"] != spec["file"]:  # measured on the FP32 graph: it applies to no other file
                    raise self.fail(
                        f"{ewhere}.file",
                        f"expected the graph's own file {spec['file']!r} (an engine "
                        f"precision runs the FP32 graph), got {e['file']!r}",
                    )
                for key in ("properties", "versions", "accuracy", "budget"):
                    if not isinstance(e.get(key, {}), Mapping):
                        raise self.fail(f"{ewhere}.{key}", f"expected an object, got {_json_type(e[key])}")
        ref = d.get("reference", {})
        if not isinstance(ref, Mapping):
            raise self.fail("reference", f"expected an object, got {_json_type(ref)}")
        if ref:  # the golden data parity is judged by: named, and hashed, like the graphs
            check_name(ref.get("file", REFERENCE_NAME), source=self.source, field="reference.file")
            self.sha256(ref, "reference")
        if "preprocess" in d:
            self.preprocess(d["preprocess"])
        if "auto" in d:
            self.auto_records(d["auto"])

    def preprocess(self, p: Any) -> None:
        """The optional "preprocess" section (PreprocessSpec)."""
        crop = self.get(p, "center_crop", "preprocess")
        if crop is not None and not is_center_crop(crop):
            raise self.fail(
                "preprocess.center_crop",
                f"expected an integer in [1, {MAX_CENTER_CROP}] (training's --center-crop) or null (no crop), "
                f"got {_show(crop)}",
            )
        resize = p.get("resize", "bilinear")
        if resize not in RESIZE_FILTERS:
            raise self.fail(
                "preprocess.resize",
                f"expected one of {list(RESIZE_FILTERS)} (the filter the runtimes reproduce), got {_show(resize)}",
            )
        if not isinstance(p.get("source", ""), str):
            raise self.fail("preprocess.source", f"expected a string, got {_show(p['source'])}")

    # ---------------------------------------------------------------- "auto": measured CPU speeds (AutoRecord)
    def auto_records(self, records: Any) -> None:
        if not isinstance(records, list):
            raise self.fail("auto", f"expected a list of records, one per machine, got {_json_type(records)}")
        machines: dict[str, int] = {}
        for i, r in enumerate(records):
            where = f"auto[{i}]"
            key = self.machine(self.get(r, "machine", where), f"{where}.machine")
            if key in machines:
                raise self.fail(
                    f"{where}.machine",
                    f"expected one record per machine, got the machine of auto[{machines[key]}] again",
                )
            machines[key] = i
            self.auto_record(r, where)

    def machine(self, m: Any, where: str) -> str:
        """Checks a MachineSpec; returns a key equal for equal machines."""
        cpu = self.get(m, "cpu", where)
        if not isinstance(cpu, str) or not cpu:
            raise self.fail(f"{where}.cpu", f"expected the CPU model name, got {_show(cpu)}")
        isa = self.get(m, "isa", where)
        if not isinstance(isa, list) or not all(isinstance(f, str) and f for f in isa):
            raise self.fail(f"{where}.isa", f"expected a list of CPU flag names, got {json.dumps(isa)[:80]}")
        self.integer(self.get(m, "cpus", where), 1, MAX_STATIC_AXIS, f"{where}.cpus")
        threads = self.get(m, "threads", where)
        if threads is not None:
            self.integer(threads, 1, MAX_STATIC_AXIS, f"{where}.threads")
        return json.dumps([cpu, sorted(set(isa)), m["cpus"], threads])

    def auto_record(self, r: Mapping[str, Any], where: str) -> None:
        versions = self.get(r, "versions", where)
        if not isinstance(versions, Mapping) or not all(isinstance(v, str) for v in versions.values()):
            raise self.fail(
                f"{where}.versions", f"expected an object backend -> engine version string, got {_show(versions)}"
            )
        measured = self.get(r, "measured", where)
        if not isinstance(measured, str) or not measured:
            raise self.fail(f"{where}.measured", f"expected the date and time it was measured, got {_show(measured)}")
        if not isinstance(r.get("harness", {}), Mapping):
            raise self.fail(f"{where}.harness", f"expected an object, got {_json_type(r['harness'])}")
        precisions = self.get(r, "precisions", where)
        if not isinstance(precisions, Mapping) or not precisions:
            raise self.fail(
                f"{where}.precisions", f"expected an object precision -> graph -> measurement, got {_show(precisions)}"
            )
        known = PRECISIONS + ENGINE_PRECISIONS
        for p, graphs in precisions.items():
            pwhere = f"{where}.precisions.{p}"
            if p not in known:
                raise self.fail(pwhere, f"unknown precision; expected one of {list(known)}")
            if not isinstance(graphs, Mapping) or not graphs:
                raise self.fail(pwhere, f"expected an object with one or both of {list(GRAPHS)}, got {_show(graphs)}")
            for g, m in graphs.items():
                if g not in GRAPHS:
                    raise self.fail(pwhere, f"unknown graph {g!r}; expected one or both of {list(GRAPHS)}")
                self.measured_graph(m, f"{pwhere}.{g}")

    def measured_graph(self, m: Any, where: str) -> None:
        self.file(m, where)
        self.sha256(m, where)
        times = self.get(m, "median_ms", where)
        if not isinstance(times, Mapping) or not times:
            raise self.fail(
                f"{where}.median_ms", f"expected an object batch -> backend -> median ms, got {_show(times)}"
            )
        for n, by in times.items():
            if not re.fullmatch(r"[1-9][0-9]{0,9}", n):
                raise self.fail(f"{where}.median_ms", f"expected batch sizes (positive integers) as keys, got {n!r}")
            if not isinstance(by, Mapping) or not by:
                raise self.fail(f"{where}.median_ms.{n}", f"expected an object backend -> median ms, got {_show(by)}")
            for b, ms in by.items():
                number = isinstance(ms, (int, float)) and not isinstance(ms, bool)
                if not b or not number or not (math.isfinite(ms) and ms > 0):
                    raise self.fail(
                        f"{where}.median_ms.{n}.{b}",
                        f"expected a backend name and a positive number of milliseconds, got {b!r}: {_show(ms)}",
                    )


def _check_shapes(m: Manifest, source: str) -> None:
    """Each graph's tensors are those of GRAPH_IO with the shapes the model section implies: image (N, C, S, S),
    latents (N, latent_dim); axis 0 is the batch (named, or a fixed size)."""
    ms = m.model
    image_in, image_out, latent = ("batch", *ms.image_shape), ("batch", *ms.output_shape), ("batch", ms.latent_dim)
    implied = {ENCODER: ((image_in,), (latent, latent)), DECODER: ((latent,), (image_out,))}
    for g, spec in m.graphs.items():
        ins, outs = GRAPH_IO[g]
        got = (tuple(t.name for t in spec.inputs), tuple(t.name for t in spec.outputs))
        if got != (ins, outs):
            raise BundleError(f"{source}: graph {g!r} has inputs/outputs {got}, expected {(ins, outs)}")
        for side, tensors, shapes in (("inputs", spec.inputs, implied[g][0]), ("outputs", spec.outputs, implied[g][1])):
            for t, want in zip(tensors, shapes):
                ok = len(t.shape) == len(want) and all(w == "batch" or d == w for d, w in zip(t.shape, want))
                if not ok:
                    raise BundleError(
                        f"{source}: graphs.{g}.{side} {t.name!r}: shape {_shape_str(t.shape)}, "
                        f"the model config implies {_shape_str(want)}"
                    )


def _shape_str(shape: tuple[Any, ...]) -> str:
    return "(" + ", ".join("N" if isinstance(d, str) else str(d) for d in shape) + ")"
