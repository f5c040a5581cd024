"""Triton Inference Server model repositories for a bundle: the config.pbtxt text, the layout, the atomic write.

Shared by python -m runtime.serving.to_triton (a repository for a GPU Triton server) and python -m
runtime.serving.serve (a `python` repository it runs), so the format is defined once, here. Standard library only
(plus runtime.bundle / runtime.engines); tritonclient, when installed, validates the text.

    REPO/
      vae_encoder/config.pbtxt      image (N, C, H, W) -> mu, logvar (N, D)   dims without the batch axis
      vae_encoder/1/model.onnx      platform onnxruntime_onnx  (the bundle's graph at the chosen precision)
                   1/model.plan     platform tensorrt_plan     (an engine of export.tensorrt.build, + engine.json)
                   1/model.py       backend python             (runtime/serving/triton_model.py, with 1/bundle/
                                                                and 1/runtime/, a copy of this runtime package)
      vae_decoder/...               z (N, D) -> image (N, C, H, W)
      vae-triton.json               provenance: bundle, source sha256, options (Triton ignores files at the top)
Every model gets max_batch_size, dynamic_batching (unless turned off), instance_group and a warm-up (zero batches of 1
and of max_batch_size, so the first client request does not pay for lazy initialisation): Triton's model_warmup for
onnxruntime / tensorrt, which Triton counts in its metrics like client requests; for python the parameter
warmup_batches, run by model.py inside initialize(), before Triton serves or counts anything.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..bundle import GRAPHS, GraphSpec, Manifest, read_manifest, resolve_file
from ..errors import VaeError
from ..files import OutputError, begin_output_dir, make_dir_public, replace_dir, sha256_file

PLATFORMS = ("onnxruntime", "tensorrt", "python")
KINDS = ("cpu", "gpu")
ACCELERATORS = ("none", "tensorrt", "tensorrt-fp16")
MODEL_PREFIX = "vae_"
VERSION = "1"
MARKER = "vae-triton.json"
MARKER_SCHEMA = "vae-deploy/triton-repository"
MODEL_FILES = {"onnxruntime": "model.onnx", "tensorrt": "model.plan", "python": "model.py"}
TRITON_PLATFORM = {"onnxruntime": "onnxruntime_onnx", "tensorrt": "tensorrt_plan"}
ENGINE_SIDECAR = "engine.json"
PY_BUNDLE_DIR = "bundle"
PY_RUNTIME_DIR = "runtime"
# numpy dtype name -> Triton data type
TRITON_DTYPES = {
    "float32": "TYPE_FP32",
    "float16": "TYPE_FP16",
    "int8": "TYPE_INT8",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
    "uint8": "TYPE_UINT8",
    "bool": "TYPE_BOOL",
}
MAX_BATCH_LIMIT = 1 << 16


class RepositoryError(VaeError, ValueError):
    """A model repository cannot be written as asked; the message names the option or file and what is wrong."""


@dataclass(frozen=True)
class RepoOptions:
    """How to serve a bundle on Triton. See python -m runtime.serving.to_triton --help for each field."""

    platform: str = "onnxruntime"
    kind: str = "gpu"  # instance_group kind (runtime.serving.to_triton: cpu for --platform python)
    precision: str = "fp32"
    max_batch: int = 64
    instances: int = 1
    dynamic_batching: bool = True
    preferred_batch: tuple[int, ...] = ()
    queue_delay_us: int = 100
    accelerator: str = "none"  # onnxruntime on GPU: Triton's TensorRT execution accelerator (FP32/FP16)
    threads: int | None = None  # onnxruntime intra-op threads per instance (onnxruntime, python)
    warmup: bool = True
    graphs: tuple[str, ...] = ()  # () = every graph in the bundle
    prefix: str = MODEL_PREFIX
    engine_filter: str = ""  # tensorrt: substring of the engine file name to pick among several
    backend: str = "onnxruntime"  # python platform: the runtime backend model.py loads

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["preferred_batch"] = list(self.preferred_batch)
        d["graphs"] = list(self.graphs)
        return d


def check_options(o: RepoOptions) -> None:
    """Raise RepositoryError for the first inconsistent option (pure: no files read)."""

    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise RepositoryError(msg)

    need(o.platform in PLATFORMS, f"--platform: expected one of {list(PLATFORMS)}, got {o.platform!r}")
    need(o.kind in KINDS, f"--kind: expected one of {list(KINDS)}, got {o.kind!r}")
    need(o.precision in ("fp32", "fp16", "int8"), f"--precision: expected fp32, fp16 or int8, got {o.precision!r}")
    need(
        isinstance(o.max_batch, int) and 1 <= o.max_batch <= MAX_BATCH_LIMIT,
        f"--max-batch: expected an integer from 1 to {MAX_BATCH_LIMIT}, got {o.max_batch!r}",
    )
    need(isinstance(o.instances, int) and o.instances >= 1, f"--instances: expected >= 1, got {o.instances!r}")
    need(
        isinstance(o.queue_delay_us, int) and o.queue_delay_us >= 0,
        f"--queue-delay-us: expected >= 0, got {o.queue_delay_us!r}",
    )
    bad = [b for b in o.preferred_batch if not 1 <= b <= o.max_batch]
    need(not bad, f"--preferred-batch: {bad} outside 1..max_batch ({o.max_batch})")
    need(
        len(set(o.preferred_batch)) == len(o.preferred_batch),
        f"--preferred-batch: repeated values {list(o.preferred_batch)}",
    )
    need(
        o.dynamic_batching or not o.preferred_batch,
        "--preferred-batch needs dynamic batching (drop --no-dynamic-batching)",
    )
    need(o.accelerator in ACCELERATORS, f"--accelerator: expected one of {list(ACCELERATORS)}, got {o.accelerator!r}")
    need(
        o.accelerator == "none" or (o.platform == "onnxruntime" and o.kind == "gpu"),
        f"--accelerator {o.accelerator}: only for --platform onnxruntime with --kind gpu "
        f"(got --platform {o.platform} --kind {o.kind})",
    )
    need(o.platform != "tensorrt" or o.kind == "gpu", "--platform tensorrt runs on GPU instances only (--kind gpu)")
    need(
        o.threads is None or (isinstance(o.threads, int) and o.threads >= 1),
        f"--threads: expected >= 1, got {o.threads!r}",
    )
    need(o.threads is None or o.platform != "tensorrt", "--threads: not used by --platform tensorrt")
    need(
        bool(re.fullmatch(r"[A-Za-z0-9_.-]*", o.prefix)),
        f"--prefix: letters, digits, '_', '.', '-' only, got {o.prefix!r}",
    )
    unknown = [g for g in o.graphs if g not in GRAPHS]
    need(not unknown, f"--graphs: expected some of {list(GRAPHS)}, got {list(o.graphs)}")
    need(
        o.backend in ("onnxruntime", "tensorrt", "auto"),
        f"backend: expected onnxruntime, tensorrt or auto, got {o.backend!r}",
    )


def parse_batches(text: str) -> tuple[int, ...]:
    """argparse type of --preferred-batch (runtime.serving.to_triton and runtime.serving.serve): "8,16" -> (8, 16)."""
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 8,16, got {text!r}") from None


def model_name(graph: str, prefix: str = MODEL_PREFIX) -> str:
    return f"{prefix}{graph}"


# ----------------------------------------------------------------------------------------------- pbtxt text


class Enum(str):
    """A protobuf enum value, written bare (TYPE_FP32), not quoted."""


def _scalar(value: Any) -> str:
    if isinstance(value, Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    raise TypeError(f"pbtxt: cannot write {type(value).__name__} {value!r}")


def to_pbtxt(message: Mapping[str, Any], indent: int = 0) -> str:
    """Protobuf text format of a nested dict: dict = message, list of dicts = repeated message (map fields are
    repeated {key, value} messages), list of scalars = repeated scalar, Enum = enum value."""
    pad = "  " * indent
    lines = []
    for key, value in message.items():
        if value is None:
            continue
        if isinstance(value, Mapping):
            lines += [f"{pad}{key} {{", to_pbtxt(value, indent + 1), f"{pad}}}"]
        elif isinstance(value, (list, tuple)):
            if value and all(isinstance(v, Mapping) for v in value):
                lines.append(f"{pad}{key} [")
                for i, v in enumerate(value):
                    lines += [f"{pad}  {{", to_pbtxt(v, indent + 2), f"{pad}  }}" + ("," if i < len(value) - 1 else "")]
                lines.append(f"{pad}]")
            elif value:
                lines.append(f"{pad}{key}: [ " + ", ".join(_scalar(v) for v in value) + " ]")
        else:
            lines.append(f"{pad}{key}: {_scalar(value)}")
    return "\n".join(line for line in lines if line)


def _dims(graph: GraphSpec, tensor_shape: Sequence[Any], tensor: str) -> list[int]:
    dims = list(tensor_shape[1:])
    if not dims or not all(isinstance(d, int) and d > 0 for d in dims):
        raise RepositoryError(
            f"graph {graph.name!r} tensor {tensor!r}: shape {list(tensor_shape)}; Triton needs a "
            "batch axis followed by fixed sizes"
        )
    return dims


def _io(graph: GraphSpec) -> tuple[list[dict], list[dict]]:
    def entry(t) -> dict:
        if t.dtype not in TRITON_DTYPES:
            raise RepositoryError(f"graph {graph.name!r} tensor {t.name!r}: dtype {t.dtype} has no Triton type")
        return {"name": t.name, "data_type": Enum(TRITON_DTYPES[t.dtype]), "dims": _dims(graph, t.shape, t.name)}

    return [entry(t) for t in graph.inputs], [entry(t) for t in graph.outputs]


def config_dict(graph: GraphSpec, o: RepoOptions, *, max_batch: int | None = None) -> dict[str, Any]:
    """The ModelConfig of one graph as a nested dict (see to_pbtxt)."""
    check_options(o)
    inputs, outputs = _io(graph)
    mb = o.max_batch if max_batch is None else max_batch
    cfg: dict[str, Any] = {"name": model_name(graph.name, o.prefix)}
    if o.platform == "python":
        cfg["backend"] = "python"
    else:
        cfg["platform"] = TRITON_PLATFORM[o.platform]
        cfg["default_model_filename"] = MODEL_FILES[o.platform]
    cfg["max_batch_size"] = mb
    cfg["input"] = inputs
    cfg["output"] = outputs
    cfg["instance_group"] = [{"count": o.instances, "kind": Enum("KIND_GPU" if o.kind == "gpu" else "KIND_CPU")}]
    if o.dynamic_batching:
        cfg["dynamic_batching"] = {
            "preferred_batch_size": sorted(o.preferred_batch),
            "max_queue_delay_microseconds": o.queue_delay_us,
        }
    params: dict[str, str] = {}
    if o.platform == "python":
        params = {"graph": graph.name, "backend": o.backend, "precision": o.precision}
        if o.threads is not None:
            params["threads"] = str(o.threads)
        if o.warmup:  # run by triton_model.py in initialize(): invisible to Triton's metrics (model_warmup is not)
            params["warmup_batches"] = ",".join(str(b) for b in sorted({1, mb}))
    elif o.platform == "onnxruntime" and o.threads is not None:
        params["intra_op_thread_count"] = str(o.threads)
    if params:
        cfg["parameters"] = [{"key": k, "value": {"string_value": v}} for k, v in params.items()]
    if o.accelerator != "none":
        trt = {
            "name": "tensorrt",
            "parameters": [
                {"key": "precision_mode", "value": "FP16" if o.accelerator == "tensorrt-fp16" else "FP32"},
                {"key": "max_workspace_size_bytes", "value": str(1 << 30)},
            ],
        }
        cfg["optimization"] = {"execution_accelerators": {"gpu_execution_accelerator": [trt]}}
    if o.warmup and o.platform != "python":
        cfg["model_warmup"] = [
            {
                "name": f"zeros_batch_{b}",
                "batch_size": b,
                "inputs": [
                    {"key": i["name"], "value": {"data_type": i["data_type"], "dims": i["dims"], "zero_data": True}}
                    for i in inputs
                ],
            }
            for b in sorted({1, mb})
        ]
    return cfg


def config_text(graph: GraphSpec, o: RepoOptions, *, max_batch: int | None = None) -> str:
    return (
        f"# Written by vae-deploy (runtime/serving/repository.py) for the bundle's {graph.name} graph.\n"
        + to_pbtxt(config_dict(graph, o, max_batch=max_batch))
        + "\n"
    )


def validate_config(text: str, source: str = "config.pbtxt") -> Any:
    """Parse `text` into Triton's ModelConfig protobuf (tritonclient's model_config_pb2); raise RepositoryError naming
    the file and the parser's message. Returns the message. Needs tritonclient (the `serve` extra)."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError as e:
        raise RepositoryError(
            f"cannot validate {source}: tritonclient is not installed ({e}); "
            "pip install -c constraints.txt -e '.[serve]'"
        ) from None
    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as e:
        raise RepositoryError(f"{source}: not a valid Triton ModelConfig: {e}") from None


def schema_available() -> bool:
    try:
        from tritonclient.grpc import model_config_pb2  # noqa: F401
    except ImportError:
        return False
    return True


# ----------------------------------------------------------------------------------------------- model files


def _pick_engine(bundle: Path, manifest: Manifest, graph: str, o: RepoOptions):
    """The engine (path, sidecar) for graph/precision: a TensorRT (not TensorRT-RTX) plan, unchanged since its build
    and built from the bundle's current ONNX file; exactly one after --engine-filter."""
    from .. import engines as E

    found = [p for p in E.candidate_engines(bundle, graph, o.precision) if o.engine_filter in p.name]
    build = E.rebuild_command(bundle, graph, o.precision, (1, max(1, o.max_batch // 2), o.max_batch))
    if not found:
        raise RepositoryError(
            f"{bundle / E.ENGINES_DIR}: no {o.precision} {graph} engine"
            + (f" matching {o.engine_filter!r}" if o.engine_filter else "")
            + f"; build one inside the Triton image you will serve with (same TensorRT version):\n  {build}"
        )
    if len(found) > 1:
        raise RepositoryError(
            f"several {o.precision} {graph} engines: {[p.name for p in found]}; pick one with "
            "--engine-filter (e.g. the GPU slug and TensorRT tag of the Triton machine)"
        )
    engine = found[0]
    sidecar = E.read_sidecar(E.sidecar_path(engine))
    problems = []
    if sidecar.trt.flavour != "trt":
        problems.append(f"built with {sidecar.trt.label}: Triton's tensorrt backend loads TensorRT plans only")
    if sha256_file(engine) != sidecar.engine_sha256:
        problems.append("the plan's sha256 differs from its sidecar (replaced or damaged after the build)")
    current = E.manifest_source_sha256(manifest, graph, sidecar.source_file)
    if current != sidecar.source_sha256:
        problems.append(
            f"built from {sidecar.source_file} sha256 {sidecar.source_sha256[:12]}..., which is not the "
            "bundle's current file (re-export happened after the build)"
        )
    lo, _, hi = sidecar.profile.batch
    if lo != 1:
        problems.append(f"its optimization profile starts at batch {lo}; Triton sends batches from 1")
    if o.max_batch > hi:
        problems.append(f"--max-batch {o.max_batch} exceeds the profile's max batch {hi}")
    if problems:
        raise RepositoryError(
            f"{engine}: cannot serve this engine:\n  - " + "\n  - ".join(problems) + f"\nrebuild it with:\n  {build}"
        )
    return engine, sidecar


def _copy_runtime_package(dest: Path) -> None:
    """This runtime package (Python files only) next to model.py: the repository carries the runtime that wrote it."""
    src = Path(__file__).resolve().parents[1]  # runtime/, this file being runtime/serving/repository.py
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("cpp", "__pycache__", "*.pyc", "build"))


def _write_model(tmp: Path, bundle: Path, manifest: Manifest, graph: str, o: RepoOptions) -> dict[str, Any]:
    name = model_name(graph, o.prefix)
    version = tmp / name / VERSION
    version.mkdir(parents=True)
    spec = manifest.graph(graph)
    info: dict[str, Any] = {"model": name, "graph": graph}
    max_batch = o.max_batch
    if o.platform == "onnxruntime":
        file, sha = manifest.graph_file(graph, o.precision)
        shutil.copyfile(resolve_file(bundle, file, sha), version / MODEL_FILES["onnxruntime"])
        info["source"] = {"file": file, "sha256": sha}
    elif o.platform == "tensorrt":
        engine, sidecar = _pick_engine(bundle, manifest, graph, o)
        shutil.copyfile(engine, version / MODEL_FILES["tensorrt"])
        (version / ENGINE_SIDECAR).write_text(json.dumps(sidecar.to_dict(), indent=2) + "\n")
        info["source"] = {
            "file": f"engines/{engine.name}",
            "sha256": sidecar.engine_sha256,
            "tensorrt": sidecar.trt.version,
            "gpu": None if sidecar.gpu is None else sidecar.gpu.name,
        }
    else:
        from ..bundle import MANIFEST_NAME

        file, sha = manifest.graph_file(graph, o.precision)
        resolve_file(bundle, file, sha)
        (version / PY_BUNDLE_DIR).mkdir()
        for f in (MANIFEST_NAME, file):
            shutil.copyfile(bundle / f, version / PY_BUNDLE_DIR / f)
        shutil.copyfile(Path(__file__).with_name("triton_model.py"), version / MODEL_FILES["python"])
        _copy_runtime_package(version / PY_RUNTIME_DIR)
        info["source"] = {"file": file, "sha256": sha}
    text = config_text(spec, o, max_batch=max_batch)
    (tmp / name / "config.pbtxt").write_text(text)
    return info


@dataclass(frozen=True)
class Repository:
    """A written model repository: its folder, model names and whether each config.pbtxt was schema-checked."""

    path: Path
    models: tuple[str, ...]
    validated: bool
    options: RepoOptions = field(default_factory=RepoOptions)


def repository_files(folder: Path) -> dict[str, str | None]:
    """What a repository's marker proves this tool wrote there: file -> sha256 (the marker itself: None). Nothing
    without a marker that lists its files (one written before markers did, or not by this tool)."""
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    if (
        not isinstance(marker, dict)
        or marker.get("schema") != MARKER_SCHEMA
        or not isinstance(marker.get("files"), dict)
    ):
        return {}
    return {MARKER: None, **{str(k): str(v) for k, v in marker["files"].items()}}


def write_repository(
    bundle: str | os.PathLike, out: str | os.PathLike, options: RepoOptions, *, validate: bool | None = None
) -> Repository:
    """Write a model repository for `bundle` at `out`, atomically: built in a temporary folder next to `out`, each
    config.pbtxt parsed against Triton's schema (validate=None: when tritonclient is installed; True: required),
    then swapped into place. An existing repository is replaced only by a complete new one, and only when its
    marker lists every file there with a matching sha256; any other file makes it refuse (RepositoryError naming the
    files) before any work. Leftovers of a killed run next to `out` are cleaned up (runtime/files.py)."""
    check_options(options)
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    root = bundle if bundle.is_dir() else bundle.parent
    graphs = options.graphs or tuple(g for g in GRAPHS if g in manifest.graphs)
    missing = [g for g in graphs if g not in manifest.graphs]
    if missing:
        raise RepositoryError(f"--graphs {list(graphs)}: the bundle {root} has only {sorted(manifest.graphs)}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RepositoryError(f"--out {out}: exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise RepositoryError(
            f"--out {out}: exists, is not empty and is not a repository written by this tool "
            f"(no {MARKER}); refusing to replace it"
        )
    check = schema_available() if validate is None else validate
    try:  # before any work: only a repository whose marker lists every file (with its sha256) is replaced
        tmp = begin_output_dir(out, repository_files, what="--out", manifest=MARKER)
    except OutputError as e:
        raise RepositoryError(str(e)) from None
    try:
        models = [_write_model(tmp, root, manifest, g, options) for g in graphs]
        if check:
            for m in models:
                path = tmp / m["model"] / "config.pbtxt"
                validate_config(path.read_text(), str(out / m["model"] / "config.pbtxt"))
        marker = {
            "schema": MARKER_SCHEMA,
            "schema_version": 1,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "bundle": str(root.resolve()),
            "source_sha256": manifest.source.get("sha256", ""),
            "options": options.to_dict(),
            "models": models,
            "validated": bool(check),
            "files": {p.relative_to(tmp).as_posix(): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()},
        }
        (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        make_dir_public(tmp)
        try:
            replace_dir(tmp, out, owned=repository_files, what="--out", manifest=MARKER)
        except OutputError as e:  # a file appeared in --out meanwhile
            raise RepositoryError(str(e)) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return Repository(out, tuple(m["model"] for m in models), bool(check), options)
