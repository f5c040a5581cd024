"""The TensorRT build plan: what to build, from which ONNX file, with which flags — pure functions, no TensorRT.

One plan per (graph, precision), from the TensorRT flavour and version, the bundle manifest and the build options.
The Python builder (export/tensorrt/engine.py) and the printed trtexec command (`--print-trtexec`) read the same plan,
and every rule is unit-tested per version without a GPU:
- TensorRT 10.x (JetPack 6: 10.3): weakly typed network from the FP32 graph; fp16 sets FP16 and turns the manifest's
  kept-FP32 nodes into layer precisions (OBEY_PRECISION_CONSTRAINTS); int8 builds the Q/DQ variant with INT8 + FP16.
- TensorRT 11.x and TensorRT-RTX: strongly typed only, so fp16 / int8 build from the ONNX variants in vae.json.
- TF32 is cleared unless asked for (FP32 engines are checked against a CPU FP32 reference at 1e-4).
- One optimization profile over the batch axis; a timing cache per GPU and TensorRT version (none for TensorRT-RTX,
  which ignores it). DLA on TensorRT 10.0-10.7 and 11.4.1+ (dla_supported), never for fp32; a DLA engine's name
  carries its core (engines.engine_stem).
- TensorRT-RTX: the target compute capabilities are set and recorded in the sidecar: every one the installed builder
  offers but Turing (7.5), unless --compute-capabilities says otherwise.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from runtime import bundle as B
from runtime.engines import ENGINE_SUFFIX, ENGINES_DIR, FLAVOURS, SIDECAR_SUFFIX, GpuInfo, Profile, TrtInfo, gpu_slug
from runtime.errors import VaeError
from runtime.files import staged_target

# TensorRT-RTX 1.2 brought REQUIRE_USER_ALLOCATION and is_stream_capturable, which RTX plans and the runtime use.
MIN_VERSION = {"trt": (10, 0), "trt_rtx": (1, 2)}
CLI = {"trt": "trtexec", "trt_rtx": "tensorrt_rtx"}


class PlanError(VaeError, ValueError):
    """The requested build cannot be planned (bad option, missing variant, unsupported version); says why."""


@dataclass(frozen=True)
class BuildOptions:
    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = 32
    workspace_mib: int | None = None  # None: TensorRT's default (the device's memory)
    timing_cache: str | None = None  # None: BUNDLE/engines/timing.<gpu>.<trt>.cache
    dla_core: int | None = None  # Jetson DLA core, with GPU fallback for layers DLA cannot run
    allow_tf32: bool = False
    compute_capabilities: tuple[str, ...] = ()  # TensorRT-RTX targets ("8.6", ...); () = every one it offers


@dataclass(frozen=True)
class BuildPlan:
    graph: str
    precision: str
    target: TrtInfo
    gpu: GpuInfo | None
    onnx_file: str  # relative to the bundle
    onnx_sha256: str
    strongly_typed: bool
    set_flags: tuple[str, ...]  # BuilderFlag names
    clear_flags: tuple[str, ...]
    layer_precisions: tuple[str, ...]  # ONNX node names forced to FP32 (TensorRT 10 fp16 only)
    profile: Profile
    engine_file: str  # relative to the bundle: engines/<stem>.plan
    sidecar_file: str
    timing_cache: str | None  # relative to the bundle, or an absolute path
    workspace_mib: int | None
    dla_core: int | None
    notes: tuple[str, ...] = ()
    compute_capabilities: tuple[str, ...] = ()  # TensorRT-RTX: the requested targets; () = every one it offers

    @property
    def stem(self) -> str:
        return Path(self.engine_file).name[: -len(ENGINE_SUFFIX)]

    def build_options(self) -> dict[str, Any]:
        """What goes into the sidecar's build_options."""
        return {
            "strongly_typed": self.strongly_typed,
            "set_flags": list(self.set_flags),
            "clear_flags": list(self.clear_flags),
            "layer_precisions_fp32": list(self.layer_precisions),
            "workspace_mib": self.workspace_mib,
            "dla_core": self.dla_core,
            "timing_cache": self.timing_cache,
            "batch": list(self.profile.batch),
        }


def parse_version(text: str) -> tuple[int, ...]:
    if not re.fullmatch(r"\d+(\.\d+)*", text.strip()):
        raise PlanError(f"TensorRT version: expected digits and dots like '10.3.0', got {text!r}")
    return tuple(int(x) for x in text.strip().split("."))


def parse_target(text: str) -> TrtInfo:
    """'trt:10.3.0.30' / 'trt_rtx:1.7.1' -> TrtInfo (for planning without that TensorRT installed here)."""
    flavour, sep, version = text.partition(":")
    if not sep or flavour not in FLAVOURS:
        raise PlanError(f"--target: expected FLAVOUR:VERSION with FLAVOUR in {list(FLAVOURS)}, got {text!r}")
    parse_version(version)
    return TrtInfo(flavour, version.strip())


def strongly_typed_only(target: TrtInfo) -> bool:
    """TensorRT 11+ and TensorRT-RTX have no weak typing: no FP16/INT8 flags, no layer precisions."""
    return target.flavour == "trt_rtx" or target.version_tuple[0] >= 11


def dla_supported(target: TrtInfo) -> bool:
    """TensorRT with DLA: 10.0-10.7 (10.7 was the last 10.x with DLA; JetPack 6 brings 10.3), none in 11.0-11.3,
    and 11.4.1+ again on AGX Orin (NVIDIA's TensorRT 11.4.1 release notes), strongly typed like all of 11.x."""
    if target.flavour != "trt":
        return False
    v = target.version_tuple
    return (10, 0) <= v[:2] <= (10, 7) or v >= (11, 4, 1)


def check_supported(target: TrtInfo) -> None:
    lowest = MIN_VERSION[target.flavour]
    if target.version_tuple[: len(lowest)] < lowest:
        hint = (
            " (JetPack 6.0 brings TensorRT 8.6; use JetPack 6.1 or newer, which brings TensorRT 10.3)"
            if target.flavour == "trt"
            else ""
        )
        raise PlanError(
            f"{target.label}: this toolkit builds with {target.flavour} >= {'.'.join(map(str, lowest))}{hint}"
        )


def batch_shapes(spec: B.TensorSpec, batch: int) -> tuple[int, ...]:
    dims = tuple(spec.shape[1:])
    if not all(isinstance(d, int) for d in dims):
        raise PlanError(f"input {spec.name!r} has symbolic non-batch axes {spec.shape}; only the batch axis may vary")
    return (batch, *dims)


def machine_slug(gpu: GpuInfo | None, target: TrtInfo) -> str:
    """The GPU part of engine and cache names: 'portable' only for TensorRT-RTX, which needs no GPU to build."""
    if gpu is None and target.flavour == "trt":
        return "unknown-gpu"
    return gpu_slug(gpu)


def default_timing_cache(gpu: GpuInfo | None, target: TrtInfo) -> str:
    return f"{ENGINES_DIR}/timing.{machine_slug(gpu, target)}.{target.tag}.cache"


def plan_build(
    target: TrtInfo,
    graph: str,
    precision: str,
    manifest: B.Manifest,
    options: BuildOptions = BuildOptions(),
    gpu: GpuInfo | None = None,
) -> BuildPlan:
    """The build plan for one graph at one precision; raises PlanError naming what is wrong."""
    spec = _checked_request(target, graph, precision, manifest, options)
    o = options
    strong = strongly_typed_only(target)
    if target.flavour == "trt_rtx":
        gpu = None  # TensorRT-RTX engines are portable: built ahead of time for every supported GPU, JIT on load
    source = _onnx_source(target, graph, spec, precision, strong)
    _refuse_half_committed(source.onnx_file)
    dla = _dla_additions(target, precision, o)
    flavour = _flavour_additions(target, gpu, o)
    timing_cache = None if target.flavour == "trt_rtx" else (o.timing_cache or default_timing_cache(gpu, target))
    profile = _batch_profile(spec.inputs[0], o)
    ccs = _compute_capabilities(target, o)
    dla_part = "" if o.dla_core is None else f".dla{o.dla_core}"
    stem = f"{graph}.{precision}.{machine_slug(gpu, target)}{dla_part}.{target.tag}"
    return BuildPlan(
        graph=graph,
        precision=precision,
        target=target,
        gpu=gpu,
        onnx_file=source.onnx_file,
        onnx_sha256=source.onnx_sha256,
        strongly_typed=strong,
        set_flags=source.set_flags + dla.set_flags + flavour.set_flags,
        clear_flags=() if o.allow_tf32 else ("TF32",),
        layer_precisions=source.layer_precisions,
        profile=profile,
        engine_file=f"{ENGINES_DIR}/{stem}{ENGINE_SUFFIX}",
        sidecar_file=f"{ENGINES_DIR}/{stem}{SIDECAR_SUFFIX}",
        timing_cache=timing_cache,
        workspace_mib=o.workspace_mib,
        dla_core=o.dla_core,
        notes=source.notes + dla.notes + flavour.notes,
        compute_capabilities=ccs,
    )


@dataclass(frozen=True)
class _Additions:
    """Builder flags to set and notes to print that one planning step adds."""

    set_flags: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class _OnnxSource:
    """The ONNX file an engine is built from, and the flags and FP32 layers that precision needs on it."""

    onnx_file: str
    onnx_sha256: str
    set_flags: tuple[str, ...] = ()
    layer_precisions: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


def _checked_request(target: TrtInfo, graph: str, precision: str, manifest: B.Manifest, o: BuildOptions) -> B.GraphSpec:
    """The graph's spec, once the version, graph, precision, batch profile and workspace are known to be usable."""
    check_supported(target)
    spec = manifest.graph(graph) if graph in manifest.graphs else None
    if spec is None:
        raise PlanError(f"--graphs {graph}: the bundle has {sorted(manifest.graphs)}")
    if precision not in B.PRECISIONS:
        raise PlanError(f"--precision: expected one of {list(B.PRECISIONS)}, got {precision!r}")
    if not 1 <= o.min_batch <= o.opt_batch <= o.max_batch:
        raise PlanError(f"batch profile: need 1 <= min ({o.min_batch}) <= opt ({o.opt_batch}) <= max ({o.max_batch})")
    if o.workspace_mib is not None and o.workspace_mib < 1:
        raise PlanError(f"--workspace: expected a size in MiB >= 1, got {o.workspace_mib}")
    return spec


def _onnx_source(target: TrtInfo, graph: str, spec: B.GraphSpec, precision: str, strong: bool) -> _OnnxSource:
    """fp32 and strongly typed builds take the graph or variant as is; TensorRT 10 reduces precision with flags."""
    variant = spec.variants.get(precision)
    if precision == "fp32":
        return _OnnxSource(spec.file, spec.sha256)
    if strong:
        if variant is None:
            raise PlanError(
                f"{target.label} builds strongly typed networks only: a {precision} engine of "
                f"{graph!r} is built from the bundle's {precision} ONNX variant, and vae.json lists "
                f"none (it has {['fp32', *sorted(spec.variants)]}); create it first with "
                + (
                    "`python -m export.precision.fp16 BUNDLE`"
                    if precision == "fp16"
                    else "`python -m export.precision.int8 BUNDLE --int8`"
                )
            )
        return _OnnxSource(variant.file, variant.sha256)
    if precision == "fp16":
        # TensorRT 10: FP32 graph + FP16 flag; the measured kept-FP32 nodes become layer precision constraints.
        if variant is None:
            return _OnnxSource(
                spec.file,
                spec.sha256,
                ("FP16",),
                notes=(
                    f"vae.json has no fp16 variant of {graph!r}, so no kept-FP32 node list: every layer may run "
                    "in FP16; the parity check after the build decides (run `python -m export.precision.fp16` first "
                    "to apply measured choices)",
                ),
            )
        kept = tuple(variant.kept_fp32_nodes)
        flags = ("FP16", "OBEY_PRECISION_CONSTRAINTS") if kept else ("FP16",)
        return _OnnxSource(spec.file, spec.sha256, flags, layer_precisions=kept)
    # int8 on TensorRT 10: explicit quantization from the Q/DQ variant
    if variant is None:
        raise PlanError(
            f"an int8 engine of {graph!r} is built from the bundle's Q/DQ int8 variant, and vae.json "
            "lists none; create it with `python -m export.precision.int8 BUNDLE --int8`"
        )
    # FP16 too: without it every layer outside a Q/DQ pair (Tanh, the ConvTranspose bias adds...) runs in FP32.
    return _OnnxSource(variant.file, variant.sha256, ("INT8", "FP16"))


def _refuse_half_committed(onnx_file: str) -> None:
    if staged_target(onnx_file) is not None:
        # A variant still under its staged name: a to_fp16 / quantize run was killed mid-commit. An engine built
        # from it would record that name and be refused once the commit is finished.
        raise PlanError(
            f"vae.json names {onnx_file}, a variant a killed export.precision.fp16 / "
            "export.precision.int8 run left half-committed; run that command on the bundle again (it "
            "finishes the commit first)"
        )


def _dla_additions(target: TrtInfo, precision: str, o: BuildOptions) -> _Additions:
    """GPU fallback for a DLA build, once --dla-core is known to fit the version, precision and batch profile."""
    dla = o.dla_core
    if dla is None:
        return _Additions()
    if dla < 0:
        raise PlanError(f"--dla-core: expected a core index >= 0, got {dla}")
    if not dla_supported(target):
        raise PlanError(
            f"--dla-core: {target.label} has no DLA; DLA engines are built with TensorRT 10.0-10.7 "
            "(JetPack 6: 10.3) or TensorRT 11.4.1+ (AGX Orin, JetPack 7.2.2+)"
        )
    if precision == "fp32":
        raise PlanError("--dla-core: DLA runs FP16 and INT8 only; use --precision fp16 (or int8)")
    if not o.min_batch == o.opt_batch == o.max_batch:
        # TensorRT's DLA restrictions: a DLA engine has one fixed input shape (min = opt = max).
        raise PlanError(
            f"--dla-core: DLA engines need a fixed batch (min = opt = max), got --min-batch "
            f"{o.min_batch} --opt-batch {o.opt_batch} --max-batch {o.max_batch}; e.g. pass "
            f"--min-batch 4 --opt-batch 4 --max-batch 4 (the golden reference's batches are "
            f"multiples of 4, so parity can run on it)"
        )
    return _Additions(
        ("GPU_FALLBACK",),
        (
            "DLA: layers DLA cannot run fall back to the GPU (TensorRT logs each one "
            "while building); every switch between DLA and GPU costs a transfer",
        ),
    )


def _flavour_additions(target: TrtInfo, gpu: GpuInfo | None, o: BuildOptions) -> _Additions:
    if target.flavour == "trt_rtx":
        # Engines that can run on caller-provided memory, which TensorRT-RTX needs for stream capture (the
        # runtime's cuda_graph option).
        return _Additions(
            ("REQUIRE_USER_ALLOCATION",),
            (
                "TensorRT-RTX ignores timing caches (it compiles kernels when the engine is loaded); "
                "--timing-cache is not used",
            )
            if o.timing_cache
            else (),
        )
    if target.flavour == "trt" and gpu is None:
        return _Additions(
            notes=(
                "no GPU visible here: the engine name carries no GPU; build on the target for the runtime to find it",
            )
        )
    return _Additions()


def _batch_profile(inp: B.TensorSpec, o: BuildOptions) -> Profile:
    return Profile(
        inp.name, batch_shapes(inp, o.min_batch), batch_shapes(inp, o.opt_batch), batch_shapes(inp, o.max_batch)
    )


def _compute_capabilities(target: TrtInfo, o: BuildOptions) -> tuple[str, ...]:
    if not o.compute_capabilities:
        return ()
    if target.flavour != "trt_rtx":
        raise PlanError(
            f"--compute-capabilities: only TensorRT-RTX builds for a list of GPUs; {target.label} "
            "builds for the GPU it runs on"
        )
    bad = [c for c in o.compute_capabilities if not re.fullmatch(r"\d+\.\d+", c)]
    if bad:
        raise PlanError(f"--compute-capabilities: expected values like 8.6,8.9, got {bad}")
    return tuple(dict.fromkeys(o.compute_capabilities))


# ----------------------------------------------------------------------------------------------- trtexec


@dataclass(frozen=True)
class ConstrainedLayer:
    """A TensorRT network layer forced to FP32: its name and how many outputs it has (all of them float)."""

    name: str
    float_outputs: int


def _shape_arg(name: str, shape: Sequence[int]) -> str:
    return f"{name}:{'x'.join(str(d) for d in shape)}"


def trtexec_args(
    plan: BuildPlan, bundle: str | Path, constrained: Sequence["ConstrainedLayer"] | None = None
) -> list[str]:
    """The trtexec (TensorRT) / tensorrt_rtx (TensorRT-RTX) arguments equivalent to the plan.

    trtexec's --layerPrecisions / --layerOutputTypes take TensorRT *layer* names (the parser names a node's extra
    layers `<node>_1`, ...), so the kept-FP32 nodes must be resolved to layers by parsing the graph, as the Python
    builder does: `constrained` is that resolution (export.tensorrt.engine.constrained_layers). Without it the node names
    are printed, which matches only single-layer nodes; to_tensorrt says so in a note."""
    bundle = Path(bundle)
    p = plan.profile
    args = [
        CLI[plan.target.flavour],
        f"--onnx={bundle / plan.onnx_file}",
        f"--saveEngine={bundle / plan.engine_file}",
        f"--minShapes={_shape_arg(p.input, p.min)}",
        f"--optShapes={_shape_arg(p.input, p.opt)}",
        f"--maxShapes={_shape_arg(p.input, p.max)}",
    ]
    if not plan.strongly_typed:
        if "FP16" in plan.set_flags:
            args.append("--fp16")
        if "INT8" in plan.set_flags:
            args.append("--int8")
        if plan.layer_precisions:
            layers = (
                list(constrained)
                if constrained is not None
                else [ConstrainedLayer(n, 1) for n in plan.layer_precisions]
            )
            args.append("--precisionConstraints=obey")
            args.append("--layerPrecisions=" + ",".join(f"{c.name}:fp32" for c in layers))
            typed = [c for c in layers if c.float_outputs]
            if typed:
                args.append(
                    "--layerOutputTypes=" + ",".join(f"{c.name}:" + "+".join(["fp32"] * c.float_outputs) for c in typed)
                )
    elif plan.target.flavour == "trt" and plan.target.version_tuple[0] < 11:
        args.append("--stronglyTyped")  # only reachable for a 10.x plan built strongly typed; 11.x: always on
    if plan.target.flavour == "trt_rtx":
        # tensorrt_rtx documents --onnx/--saveEngine/shapes for its ahead-of-time build; other trtexec options are not
        # assumed. (The Python builder still clears TF32; --adopt's parity check covers the difference.)
        return args
    if "TF32" in plan.clear_flags:
        args.append("--noTF32")
    if plan.workspace_mib is not None:
        args.append(f"--memPoolSize=workspace:{plan.workspace_mib}")  # MiB
    if plan.timing_cache:
        tc = Path(plan.timing_cache)
        args.append(f"--timingCacheFile={tc if tc.is_absolute() else bundle / tc}")
    if plan.dla_core is not None:
        args += [f"--useDLACore={plan.dla_core}", "--allowGPUFallback"]
    args += ["--profilingVerbosity=detailed", "--skipInference"]
    return args


def format_command(args: Sequence[str]) -> str:
    """A copy-pasteable shell command, one option per line."""
    return " \\\n    ".join(shlex.quote(a) for a in args)


# ----------------------------------------------------------------------------------------------- layers

_ONNX_LAYER = re.compile(r"\[ONNX Layer: ([^\]]+)\]")


def onnx_nodes_of_layer(name: str, metadata: str, node_names: Iterable[str]) -> tuple[str, ...]:
    """The ONNX node(s) a TensorRT network layer came from.

    The ONNX parser writes "[ONNX Layer: <node>]" into each layer's metadata (TensorRT 10+); that is authoritative,
    because layer names alone are ambiguous: the parser names the second layer of node `node_linear` as
    `node_linear_1`, which may also be another node's name. Without metadata, an exact node name match is used, then
    the name with parser suffixes (`_<n>`) stripped.
    """
    found = tuple(dict.fromkeys(m.strip() for m in _ONNX_LAYER.findall(metadata or "")))
    if found:
        return found
    names = set(node_names)
    base = name
    while True:
        if base in names:
            return (base,)
        stripped = re.sub(r"_\d+$", "", base)
        if stripped == base:
            return ()
        base = stripped


def layers_to_constrain(
    layers: Iterable[tuple[str, str]], kept: Iterable[str], node_names: Iterable[str]
) -> tuple[list[str], list[str]]:
    """(network layer names to force to FP32, kept nodes that matched no layer) for (name, metadata) pairs."""
    kept_set, node_names = set(kept), list(node_names)
    chosen, matched = [], set()
    for name, meta in layers:
        hit = kept_set.intersection(onnx_nodes_of_layer(name, meta, node_names))
        if hit:
            chosen.append(name)
            matched |= hit
    return chosen, sorted(kept_set - matched)


# ----------------------------------------------------------------------------------------------- inspector

_HEAVY = ("Convolution", "Deconvolution", "Gemm", "MatrixMultiply", "FullyConnected", "Matmul", "MatMul")
_FP32 = re.compile(r"\bFP32\b|\bFloat\b", re.IGNORECASE)


def _dtype_text(io: Mapping[str, Any]) -> str:
    # TensorRT 10: "Format/Datatype": "Row major linear FP32 format (kLINEAR)"; 11: separate "DataType": "Float".
    return str(io.get("DataType") or io.get("Format/Datatype") or "")


def fp32_compute_layers(engine_info_json: str, kept: Iterable[str] = ()) -> list[str]:
    """Names of compute-heavy engine layers (conv, deconv, gemm) whose activations stayed FP32, minus those that
    are FP32 on purpose (the kept-FP32 nodes). Input: IEngineInspector.get_engine_information(JSON) at DETAILED
    profiling verbosity. Used to warn when an FP16 build silently ran layers in FP32."""
    data = json.loads(engine_info_json)
    kept = set(kept)
    out = []
    for layer in data.get("Layers", []):
        if not isinstance(layer, dict):
            continue  # LAYER_NAMES_ONLY verbosity: nothing to judge
        kind = str(layer.get("LayerType", ""))
        if not any(h.lower() in kind.lower() for h in _HEAVY):
            continue
        ios = layer.get("Inputs") or layer.get("Outputs") or []
        if not ios or not _FP32.search(_dtype_text(ios[0])):
            continue
        name = str(layer.get("Name", ""))
        # Fused layers are named "a + b"; their metadata lists each ONNX node, which is exact where present.
        nodes = {n.strip() for n in _ONNX_LAYER.findall(str(layer.get("Metadata", "")))}
        nodes = nodes or {p.strip() for p in name.split("+")}
        if nodes & kept:
            continue
        out.append(name)
    return out
