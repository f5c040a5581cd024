"""Build one TensorRT engine from a BuildPlan, verify it, and write it with its sidecar — or keep nothing.

    parse ONNX -> network (strongly typed where the plan says) -> layer precisions -> builder config (flags, profile,
    workspace, DLA, timing cache) -> serialize -> [GPU] engine-inspector check (layers left in FP32), parity against
    reference.npz through runtime.verify.parity.check_parity on the runtime's own tensorrt backend -> engine + sidecar
    written atomically; the timing cache is saved for the next build.

An engine that fails parity is deleted and the call raises EngineParityError. Without a GPU (TensorRT-RTX builds
ahead of time on a CPU) nothing can be verified: the build is refused unless verify=False, and then the sidecar says
`"parity": {"verified": false}`.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from export.tensorrt.build_plan import BuildPlan, ConstrainedLayer, PlanError, fp32_compute_layers, layers_to_constrain
from runtime import bundle as B
from runtime.engines import EngineSidecar, host_platform, write_sidecar
from runtime.errors import VaeError
from runtime.files import atomic_path, sha256_file
from runtime.verify.metrics import ComparisonReport
from runtime.verify.parity import ParityReport

MIN_ENGINE_BYTES = 4096
TURING = "7.5"


class TrtBuildError(VaeError, ValueError):
    """TensorRT could not parse or build the graph; the message names the file and TensorRT's errors."""


class EngineParityError(TrtBuildError):
    """The built engine misses its accuracy budget; it was not kept."""

    def __init__(self, message: str, report: ComparisonReport) -> None:
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class BuildResult:
    engine: Path
    sidecar: Path
    seconds: float
    verified: bool
    report: ParityReport | None  # the runtime parity tool's report on the golden reference
    fp32_layers: tuple[str, ...]  # heavy layers that ran in FP32 although reduced precision was asked for


def parse_onnx(trt: Any, path: str | os.PathLike, *, strongly_typed: bool = False) -> tuple[Any, Any, Any, Any]:
    """(logger, builder, network, parser) for an ONNX file; raises TrtBuildError listing every parser error.

    Needs no GPU (the TensorRT-RTX parser and builder run on a CPU). The logger and parser are returned because the
    network refers to them: they must outlive it.
    """
    from runtime.backends.tensorrt import trt_logger

    logger = trt_logger(trt)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    # parse_from_file (not parse(bytes)) so that ONNX files with external weights also resolve.
    ok = parser.parse_from_file(str(path))
    if not ok or parser.num_errors:
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise TrtBuildError(
            f"{path}: the TensorRT ONNX parser reported {len(errors)} error(s):\n  "
            + "\n  ".join(errors or ["(no message)"])
        )
    return logger, builder, network, parser


def _is_float_layer(trt: Any, layer: Any) -> bool:
    """A layer that computes on floats: every output float32/float16, and so is its data input (input 0) where it
    has one. Shape layers, INT64 constants and casts from integers are not, and an FP32 constraint on them is wrong;
    a float Reshape/Shuffle whose second input is a shape tensor is."""
    floats = (trt.float32, trt.float16)
    outs = [layer.get_output(i) for i in range(layer.num_outputs)]
    data = layer.get_input(0) if layer.num_inputs else None
    return bool(outs) and all(t.dtype in floats for t in outs) and (data is None or data.dtype in floats)


def constrained_layers(trt: Any, network: Any, kept: tuple[str, ...], node_names: list[str]) -> list[ConstrainedLayer]:
    """The float layers of a parsed network that the kept-FP32 ONNX nodes became; PlanError for a kept node that
    matches no layer. Both the Python build and the printed trtexec command take their layer names from here."""
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    chosen, unmatched = layers_to_constrain(
        ((lay.name, getattr(lay, "metadata", "") or "") for lay in layers), kept, node_names
    )
    if unmatched:
        raise PlanError(
            f"kept-FP32 nodes {unmatched} from vae.json match no layer of the parsed network; "
            "the FP16 variant was made from a different graph: re-run python -m export.precision.fp16"
        )
    names = set(chosen)
    return [
        ConstrainedLayer(lay.name, lay.num_outputs) for lay in layers if lay.name in names and _is_float_layer(trt, lay)
    ]


def apply_layer_precisions(trt: Any, network: Any, kept: tuple[str, ...], node_names: list[str]) -> list[str]:
    """Force the float layers of the kept-FP32 ONNX nodes to FP32 (precision and outputs); returns layer names."""
    chosen = {c.name for c in constrained_layers(trt, network, kept, node_names)}
    for i in range(network.num_layers):
        lay = network.get_layer(i)
        if lay.name not in chosen:
            continue
        lay.precision = trt.float32
        for k in range(lay.num_outputs):
            lay.set_output_type(k, trt.float32)
    return [network.get_layer(i).name for i in range(network.num_layers) if network.get_layer(i).name in chosen]


def _compute_capabilities(trt: Any, config: Any, plan: BuildPlan) -> tuple[str, ...]:
    """TensorRT-RTX: set the target compute capabilities explicitly (the plan's, else every SM<major><minor> the
    installed builder offers) and return them as "8.6"-style strings, for the sidecar."""
    offered = {
        f"{m[2:-1]}.{m[-1]}": v for m, v in trt.ComputeCapability.__members__.items() if re.fullmatch(r"SM\d+", m)
    }
    # Turing (7.5) only when asked for, as in TensorRT-RTX's own default: its compiler refuses FP32 GEMMs there
    # ("Cannot compile operation 'node_linear' for Turing (SM75): FP32 GEMM is not supported", seen on our decoder).
    default = [c for c in offered if c != TURING]
    wanted = plan.compute_capabilities or tuple(sorted(default, key=lambda c: tuple(map(int, c.split(".")))))
    missing = [c for c in wanted if c not in offered]
    if missing:
        raise PlanError(f"--compute-capabilities {missing}: {plan.target.label} builds for {sorted(offered)}")
    config.num_compute_capabilities = len(wanted)
    for i, cc in enumerate(wanted):
        if not config.set_compute_capability(offered[cc], i):
            raise TrtBuildError(f"{plan.target.label} refused target compute capability {cc}")
    return tuple(wanted)


def _timing_cache(config: Any, cache_path: Path) -> Any:
    """Load (or start) the timing cache; a file TensorRT cannot read is a TrtBuildError naming it."""
    try:
        data = cache_path.read_bytes() if cache_path.is_file() else b""
    except OSError as e:
        raise TrtBuildError(f"{cache_path}: cannot read the timing cache: {e}") from None
    why = "TensorRT could not read it"
    try:
        cache = config.create_timing_cache(data)
    except (TypeError, RuntimeError, ValueError) as e:
        cache, why = None, f"{type(e).__name__}: {e}"
    try:
        # ignore_mismatch=False: a cache from another GPU or TensorRT version is refused, not silently used.
        accepted = cache is not None and config.set_timing_cache(cache, False)
    except (TypeError, RuntimeError, ValueError) as e:
        accepted, why = False, f"{type(e).__name__}: {e}"
    if not accepted:
        raise TrtBuildError(
            f"{cache_path}: timing cache rejected ({why}; {len(data)} bytes: corrupt, or made on "
            "another GPU or TensorRT version?); delete it or pass another --timing-cache"
        )
    return cache


def _config(
    trt: Any, builder: Any, network: Any, plan: BuildPlan, cache_path: Path | None
) -> tuple[Any, Any, tuple[str, ...]]:
    """(builder config, timing cache or None, TensorRT-RTX target compute capabilities or ())."""
    config = builder.create_builder_config()
    for flag in plan.set_flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    for flag in plan.clear_flags:
        if hasattr(trt.BuilderFlag, flag):
            config.clear_flag(getattr(trt.BuilderFlag, flag))
    if plan.workspace_mib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan.workspace_mib << 20)
    profile = builder.create_optimization_profile()
    p = plan.profile
    profile.set_shape(p.input, p.min, p.opt, p.max)
    config.add_optimization_profile(profile)
    if plan.dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = plan.dla_core
    # DETAILED keeps per-layer precisions in the engine, for the inspector check below.
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    ccs = _compute_capabilities(trt, config, plan) if plan.target.flavour == "trt_rtx" else ()
    cache = _timing_cache(config, cache_path) if cache_path is not None else None
    return config, cache, ccs


def build_engine(
    bundle: str | os.PathLike,
    plan: BuildPlan,
    *,
    trt: Any,
    verify: bool = True,
    device_index: int = 0,
    log: Callable[[str], None] = print,
) -> BuildResult:
    """Build, verify and write one engine per the plan (steps: the module docstring).

    Args:
        bundle: The bundle folder; the engine and its sidecar go to BUNDLE/engines/.
        plan: The BuildPlan (export.tensorrt.build_plan): ONNX file and sha256, flags, profile, layer precisions.
        trt: The imported TensorRT module (`tensorrt`, or `tensorrt_rtx`).
        verify: Check the engine against reference.npz on the runtime's tensorrt backend (needs a GPU); False
            keeps an unverified engine whose sidecar says so (TensorRT-RTX only, where builds need no GPU).
        device_index: The CUDA device to build on and verify with.
        log: Called with each progress line.

    Returns:
        BuildResult: the engine and sidecar paths, build seconds, whether it was verified, the parity report and
        the heavy layers TensorRT left in FP32.

    Raises:
        BundleError: The plan's ONNX file is missing or changed since the plan was made.
        PlanError: The manifest's kept-FP32 nodes or the requested compute capabilities do not fit this build.
        TrtBuildError: No GPU where one is needed, TensorRT cannot parse or build the graph, or the timing cache is
            unusable; EngineParityError (a subclass) when the built engine misses its budget (it is not kept).
    """
    import onnx

    from runtime.backends.tensorrt import cuda_gpu_info

    bundle = Path(bundle)
    onnx_path = B.resolve_file(bundle, plan.onnx_file, plan.onnx_sha256)
    gpu_seen = cuda_gpu_info(device_index) is not None
    if plan.target.flavour == "trt" and not gpu_seen:
        # Full TensorRT's builder needs a GPU (creating one without crashes the process); only TensorRT-RTX
        # builds ahead of time on a CPU.
        raise TrtBuildError(
            f"no CUDA GPU visible: {plan.target.label} builds engines on the GPU that will run "
            "them (--no-verify does not change that); build on the target, or use TensorRT-RTX "
            "(--flavour trt_rtx) for an ahead-of-time portable engine"
        )
    if verify and not gpu_seen:
        raise TrtBuildError(
            "no CUDA GPU visible: the built engine cannot be checked against the golden reference; "
            "pass --no-verify to keep an unverified engine (its sidecar will say so)"
        )
    t0 = time.perf_counter()
    _logger, builder, network, _parser = parse_onnx(trt, onnx_path, strongly_typed=plan.strongly_typed)
    constrained: list[str] = []
    if plan.layer_precisions:
        node_names = [n.name for n in onnx.load(str(onnx_path), load_external_data=False).graph.node]
        constrained = apply_layer_precisions(trt, network, plan.layer_precisions, node_names)
        log(f"{plan.graph}: {len(constrained)} layer(s) kept in FP32 for {len(plan.layer_precisions)} node(s)")
    cache_path = None
    if plan.timing_cache:
        cache_path = Path(plan.timing_cache)
        cache_path = cache_path if cache_path.is_absolute() else bundle / cache_path
    config, cache, ccs = _config(trt, builder, network, plan, cache_path)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise TrtBuildError(f"{onnx_path}: TensorRT failed to build the engine (see its log above)")
    build_seconds = time.perf_counter() - t0
    if cache is not None and cache_path is not None:
        data = bytes(config.get_timing_cache().serialize())
        with atomic_path(cache_path) as tmp:
            tmp.write_bytes(data)

    return finish_engine(
        bundle,
        plan,
        bytes(serialized),
        trt=trt,
        verify=verify,
        device_index=device_index,
        build_seconds=build_seconds,
        constrained=constrained,
        log=log,
        t0=t0,
        compute_capabilities=ccs,
    )


def adopt_engine(
    bundle: str | os.PathLike,
    plan: BuildPlan,
    engine_file: str | os.PathLike,
    *,
    trt: Any,
    verify: bool = True,
    device_index: int = 0,
    log: Callable[[str], None] = print,
    force: bool = False,
) -> BuildResult:
    """Verify an engine built elsewhere from the same plan (e.g. by the printed trtexec command) and give it its
    place and sidecar in BUNDLE/engines; an engine that fails parity is not adopted (the given file is left alone).

    Unverified (verify=False), nothing proves the bytes are an engine: TensorRT's plan header is undocumented (the
    builds seen here start with b"ftrt", TensorRT-RTX's with b"vtrt", but NVIDIA offers no API or promise about it),
    so only the size is checked, and an engine already in place whose sidecar says it passed parity is never replaced
    by an unverified one unless `force`."""
    path = Path(engine_file)
    if not path.is_file():
        raise TrtBuildError(f"--adopt {path}: no such engine file")
    data = path.read_bytes()
    # Without a GPU nothing can deserialize it; at least refuse what cannot be an engine of this model (the smallest
    # engine of the tiny test model is ~100 KB; a real decoder's is MBs).
    if len(data) < MIN_ENGINE_BYTES:
        raise TrtBuildError(
            f"--adopt {path}: {len(data)} bytes, too small to be a TensorRT engine "
            f"(expected at least {MIN_ENGINE_BYTES}); was the trtexec build interrupted?"
        )
    existing = Path(bundle) / plan.engine_file
    if not verify and not force and existing.is_file():
        from runtime.engines import EngineError, read_sidecar, sidecar_path

        try:
            parity = read_sidecar(sidecar_path(existing)).parity
        except (EngineError, OSError, ValueError):
            parity = {}  # no readable sidecar: the engine in place is unusable anyway
        if parity.get("verified") and parity.get("passed"):
            raise TrtBuildError(
                f"--adopt {path}: {existing} is already there and passed its parity check "
                f"(on {parity.get('device') or 'a GPU'}); refusing to replace it with an unverified "
                "engine (--no-verify): adopt it on a GPU without --no-verify, or pass --force"
            )
    ccs: tuple[str, ...] = ()
    if plan.target.flavour == "trt_rtx":
        # The targets of an engine built elsewhere are known only when the plan named them; otherwise the one
        # compute capability it is verified on below is all the sidecar can truthfully claim.
        from runtime.backends.tensorrt import cuda_gpu_info

        gpu = cuda_gpu_info(device_index)
        ccs = plan.compute_capabilities or ((gpu.cc,) if verify and gpu is not None else ())
        if not ccs:
            raise TrtBuildError(
                f"--adopt {path}: a TensorRT-RTX engine adopted without verification records no "
                "target GPUs, so the runtime would refuse it; pass --compute-capabilities (the "
                "targets it was built for) or adopt it on a GPU without --no-verify"
            )
    return finish_engine(
        bundle,
        plan,
        data,
        trt=trt,
        verify=verify,
        device_index=device_index,
        build_seconds=0.0,
        constrained=[],
        log=log,
        t0=time.perf_counter(),
        extra={"adopted_from": str(path.resolve())},
        compute_capabilities=ccs,
    )


def finish_engine(
    bundle: str | os.PathLike,
    plan: BuildPlan,
    data: bytes,
    *,
    trt: Any,
    verify: bool,
    device_index: int,
    build_seconds: float,
    constrained: list[str],
    log: Callable[[str], None],
    t0: float,
    extra: Mapping[str, Any] | None = None,
    compute_capabilities: tuple[str, ...] = (),
) -> BuildResult:
    """Verify serialized engine bytes (inspector + parity, on a GPU), then write engine and sidecar atomically."""
    from runtime.backends.tensorrt import cuda_gpu_info
    from runtime.verify.parity import check_parity

    bundle = Path(bundle)
    gpu = cuda_gpu_info(device_index)
    if verify and gpu is None:
        raise TrtBuildError(
            "no CUDA GPU visible: the engine cannot be checked against the golden reference; "
            "pass --no-verify to keep an unverified engine (its sidecar will say so)"
        )
    engine_path = bundle / plan.engine_file
    sidecar_file = bundle / plan.sidecar_file
    report, fp32_layers = None, ()
    with atomic_path(engine_path) as tmp:
        tmp.write_bytes(data)
        engine_sha = sha256_file(tmp)
        if verify:
            if plan.precision != "fp32":
                fp32_layers = tuple(inspect_fp32_layers(trt, data, plan))
                if fp32_layers:
                    log(
                        f"WARNING: {plan.graph} {plan.precision}: {len(fp32_layers)} compute layer(s) ran in FP32 "
                        f"although {plan.precision} was asked for: {', '.join(fp32_layers[:8])}"
                        + (" ..." if len(fp32_layers) > 8 else "")
                    )
            # The runtime's own parity tool, on the runtime's own TensorRT backend, loading the unkept engine.
            report = check_parity(
                bundle,
                backend="tensorrt",
                device=f"cuda:{device_index}",
                precision=plan.precision,
                graphs=(plan.graph,),
                locate=False,
                backend_options={
                    "engines": {plan.graph: str(tmp)},
                    "check_sidecar": False,
                    "flavour": plan.target.flavour,
                    "dla_core": plan.dla_core,
                },
            )
            log(report.table())
            if not report:
                # Raising inside atomic_path removes the temporary engine: a failing engine is never kept.
                raise EngineParityError(
                    f"{plan.graph} {plan.precision} engine misses its budget; not kept:\n  "
                    + "\n  ".join(report.failures()),
                    report.comparison,
                )
        sidecar = EngineSidecar(
            graph=plan.graph,
            precision=plan.precision,
            engine_file=engine_path.name,
            engine_sha256=engine_sha,
            source_file=plan.onnx_file,
            source_sha256=plan.onnx_sha256,
            trt=plan.target,
            gpu=plan.gpu,
            platform=host_platform(),
            profile=plan.profile,
            compute_capabilities=compute_capabilities,
            build_options={
                **plan.build_options(),
                "constrained_layers": constrained,
                "fp32_compute_layers": list(fp32_layers),
                **(extra or {}),
            },
            build_seconds=round(build_seconds, 3),
            created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            parity=(
                {
                    "verified": True,
                    "passed": report.passed,
                    "device": gpu.name if gpu else None,
                    "outputs": {
                        o.name: {"max_abs": o.max_abs, "rel_l2": o.rel_l2, "psnr": o.psnr}
                        for o in report.comparison.outputs
                    },
                }
                if report is not None
                else {"verified": False}
            ),
        )
        # The sidecar first, then the engine: an engine never appears without its provenance.
        write_sidecar(sidecar_file, sidecar)
    return BuildResult(engine_path, sidecar_file, time.perf_counter() - t0, report is not None, report, fp32_layers)


def inspect_fp32_layers(trt: Any, data: bytes, plan: BuildPlan) -> list[str]:
    """Heavy layers of a serialized engine that run in FP32 although not kept on purpose (needs a GPU)."""
    from runtime.backends.tensorrt import trt_logger

    runtime = trt.Runtime(trt_logger(trt))  # callers have checked that a GPU is visible
    if plan.dla_core is not None:
        runtime.DLA_core = plan.dla_core  # a DLA engine deserializes on its core
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        raise TrtBuildError(f"{plan.engine_file}: the freshly built engine does not deserialize")
    inspector = engine.create_engine_inspector()
    info = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
    del inspector, engine, runtime  # inspector -> engine -> runtime
    return fp32_compute_layers(info, plan.layer_precisions)
