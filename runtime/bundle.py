"""The bundle contract: `vae.json` (the manifest) and the files it names. Defined once, here.

export writes bundles through this module; the Python runtime, the C++ runtime, parity and benchmarks read them.
Imports numpy and the standard library only.

Layout of BUNDLE/:
    vae.json          this manifest (schema "vae-deploy/bundle", schema_version 1)
    encoder.onnx      image (N,C,H,W) float32 -> mu (N,D), logvar (N,D)
    decoder.onnx      z (N,D) float32 -> image (N,C,H,W)
    reference.npz     golden inputs and PyTorch FP32 outputs, keys "<graph>.<tensor>" (e.g. "decoder.z")
    <graph>.<precision>.onnx   reduced-precision variants, listed under graphs.<graph>.variants
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .files import sha256_file, write_json_atomic  # noqa: F401 - re-exported: part of the bundle API

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


class BundleError(ValueError):
    """A bundle is missing, malformed or inconsistent; the message names the file and what is wrong."""


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
        return cls(precision=str(d["precision"]), file=str(d["file"]), sha256=str(d["sha256"]),
                   kept_fp32_nodes=tuple(d.get("kept_fp32_nodes", ())), accuracy=dict(d.get("accuracy", {})),
                   budget=dict(d.get("budget", {})), source_form=dict(d.get("source_form") or {}))


@dataclass(frozen=True)
class GraphSpec:
    name: str
    file: str
    sha256: str
    opset: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    variants: dict[str, VariantSpec] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "sha256": self.sha256, "opset": self.opset,
                "inputs": [t.to_dict() for t in self.inputs], "outputs": [t.to_dict() for t in self.outputs],
                "variants": {p: v.to_dict() for p, v in sorted(self.variants.items())}}

    @classmethod
    def from_dict(cls, name: str, d: Mapping[str, Any]) -> "GraphSpec":
        return cls(name=name, file=str(d["file"]), sha256=str(d["sha256"]), opset=int(d["opset"]),
                   inputs=tuple(TensorSpec.from_dict(t) for t in d["inputs"]),
                   outputs=tuple(TensorSpec.from_dict(t) for t in d["outputs"]),
                   variants={p: VariantSpec.from_dict(v) for p, v in dict(d.get("variants", {})).items()})


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
        return cls(in_channels=int(d["in_channels"]), out_channels=int(d["out_channels"]),
                   image_size=int(d["image_size"]), latent_dim=int(d["latent_dim"]),
                   hidden_dims=tuple(int(h) for h in d["hidden_dims"]), family=str(d.get("family", "VanillaVAE")))


@dataclass(frozen=True)
class Manifest:
    model: ModelSpec
    pixel_range: tuple[float, float]
    graphs: dict[str, GraphSpec]
    source: dict[str, Any] = field(default_factory=dict)     # checkpoint name, sha256, kind
    versions: dict[str, str] = field(default_factory=dict)   # torch / onnx / onnxruntime / vae-deploy used
    reference: dict[str, Any] = field(default_factory=dict)  # {"file": "reference.npz", "sha256": ...}
    parity: dict[str, Any] = field(default_factory=dict)     # export-time parity summary
    created: str = ""
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "schema_version": self.schema_version, "created": self.created,
                "model": self.model.to_dict(), "pixel_range": list(self.pixel_range),
                "source": self.source, "versions": self.versions,
                "graphs": {g: s.to_dict() for g, s in self.graphs.items()},
                "reference": self.reference, "parity": self.parity}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, source: str = MANIFEST_NAME) -> "Manifest":
        if d.get("schema") != SCHEMA:
            raise BundleError(f"{source}: 'schema' is {d.get('schema')!r}, expected {SCHEMA!r}")
        version = d.get("schema_version")
        if version != SCHEMA_VERSION:
            raise BundleError(f"{source}: schema_version {version!r}, this runtime reads {SCHEMA_VERSION}")
        try:
            lo, hi = (float(v) for v in d["pixel_range"])
            graphs = {g: GraphSpec.from_dict(g, s) for g, s in dict(d["graphs"]).items()}
            m = cls(model=ModelSpec.from_dict(d["model"]), pixel_range=(lo, hi), graphs=graphs,
                    source=dict(d.get("source", {})), versions=dict(d.get("versions", {})),
                    reference=dict(d.get("reference", {})), parity=dict(d.get("parity", {})),
                    created=str(d.get("created", "")), schema_version=int(version))
        except (KeyError, TypeError, ValueError) as e:
            raise BundleError(f"{source}: malformed manifest: {type(e).__name__}: {e}") from None
        unknown = sorted(set(m.graphs) - set(GRAPHS))
        if unknown or not m.graphs:
            raise BundleError(f"{source}: graphs {sorted(m.graphs)}; expected one or both of {list(GRAPHS)}")
        for g, spec in m.graphs.items():
            ins, outs = GRAPH_IO[g]
            got = (tuple(t.name for t in spec.inputs), tuple(t.name for t in spec.outputs))
            if got != (ins, outs):
                raise BundleError(f"{source}: graph {g!r} has inputs/outputs {got}, expected {(ins, outs)}")
        return m

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
            raise BundleError(f"graph {name!r} has no {precision!r} variant (it has {have}); "
                              f"create it with `python -m export.to_fp16` or `python -m export.quantize`")
        v = spec.variants[precision]
        return v.file, v.sha256


def read_manifest(bundle: str | os.PathLike) -> Manifest:
    """Read and validate BUNDLE/vae.json (or a path to the json itself)."""
    path = Path(bundle)
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
    """Path of a file named by the manifest; checks it exists and, if sha256 is given, that it is unchanged."""
    bundle = Path(bundle)
    root = bundle if bundle.is_dir() else bundle.parent
    path = root / name
    if not path.is_file():
        raise BundleError(f"{path}: listed in {root / MANIFEST_NAME} but missing")
    if sha256:
        actual = sha256_file(path)
        if actual != sha256:
            raise BundleError(f"{path}: sha256 {actual[:12]}..., manifest says {sha256[:12]}...: "
                              "the file changed after export; re-export the bundle")
    return path


def write_manifest(bundle: str | os.PathLike, manifest: Manifest) -> Path:
    return write_json_atomic(Path(bundle) / MANIFEST_NAME, manifest.to_dict())
