"""Build one TensorRT engine from a BuildPlan, verify it, and write it with its sidecar — or keep nothing.

    parse ONNX -> network (strongly typed where the plan says) -> layer precisions -> builder config (flags, profile,
    workspace, DLA, timing cache) -> serialize -> [GPU] engine-inspector check (layers left in FP32), parity against
    reference.npz through runtime.parity.check_parity on the runtime's own tensorrt backend -> engine + sidecar
    written atomically; the timing cache is saved for the next build.

An engine that fails parity is deleted and the call raises EngineParityError. Without a GPU (TensorRT-RTX builds
ahead of time on a CPU) nothing can be verified: the build is refused unless verify=False, and then the sidecar says
`"parity": {"verified": false}`.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from export.trt_plan import BuildPlan, PlanError, fp32_compute_layers, layers_to_constrain
from runtime import bundle as B
from runtime.engines import EngineSidecar, host_platform, write_sidecar
from runtime.files import atomic_path, sha256_file
from runtime.metrics import ComparisonReport
from runtime.parity import ParityReport


MIN_ENGINE_BYTES = 4096


class TrtBuildError(ValueError):
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
    report: ParityReport | None      # the runtime parity tool's report on the golden reference
    fp32_layers: tuple[str, ...]     # heavy layers that ran in FP32 although reduced precision was asked for


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
        raise TrtBuildError(f"{path}: the TensorRT ONNX parser reported {len(errors)} error(s):\n  "
                            + "\n  ".join(errors or ["(no message)"]))
    return logger, builder, network, parser


def apply_layer_precisions(trt: Any, network: Any, kept: tuple[str, ...], node_names: list[str]) -> list[str]:
    """Force the layers of the kept-FP32 ONNX nodes to FP32 (precision and float outputs); returns layer names."""
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    chosen, unmatched = layers_to_constrain(((lay.name, getattr(lay, "metadata", "") or "") for lay in layers),
                                            kept, node_names)
    if unmatched:
        raise PlanError(f"kept-FP32 nodes {unmatched} from vae.json match no layer of the parsed network; "
                        "the FP16 variant was made from a different graph: re-run python -m export.to_fp16")
    names = set(chosen)
    floats = (trt.float32, trt.float16)
    for lay in layers:
        if lay.name not in names:
            continue
        lay.precision = trt.float32
        for i in range(lay.num_outputs):
            if lay.get_output(i).dtype in floats:
                lay.set_output_type(i, trt.float32)
    return chosen


def _config(trt: Any, builder: Any, network: Any, plan: BuildPlan, cache_path: Path | None) -> tuple[Any, Any]:
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
    cache = None
    if cache_path is not None:
        data = cache_path.read_bytes() if cache_path.is_file() else b""
        cache = config.create_timing_cache(data)
        # ignore_mismatch=False: a cache from another GPU or TensorRT version is refused, not silently used.
        if not config.set_timing_cache(cache, False):
            raise TrtBuildError(f"{cache_path}: timing cache rejected by TensorRT (made on another GPU or TensorRT "
                                "version?); delete it or pass another --timing-cache")
    return config, cache


def build_engine(bundle: str | os.PathLike, plan: BuildPlan, *, trt: Any, verify: bool = True,
                 device_index: int = 0, log: Callable[[str], None] = print) -> BuildResult:
    """Build, verify and write one engine per the plan. See the module docstring."""
    import onnx

    from runtime.backends.tensorrt import cuda_gpu_info

    bundle = Path(bundle)
    onnx_path = B.resolve_file(bundle, plan.onnx_file, plan.onnx_sha256)
    if verify and cuda_gpu_info(device_index) is None:
        raise TrtBuildError("no CUDA GPU visible: the built engine cannot be checked against the golden reference; "
                            "pass --no-verify to keep an unverified engine (its sidecar will say so)")
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
    config, cache = _config(trt, builder, network, plan, cache_path)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise TrtBuildError(f"{onnx_path}: TensorRT failed to build the engine (see its log above)")
    build_seconds = time.perf_counter() - t0
    if cache is not None and cache_path is not None:
        data = bytes(config.get_timing_cache().serialize())
        with atomic_path(cache_path) as tmp:
            tmp.write_bytes(data)

    return finish_engine(bundle, plan, bytes(serialized), trt=trt, verify=verify, device_index=device_index,
                         build_seconds=build_seconds, constrained=constrained, log=log, t0=t0)


def adopt_engine(bundle: str | os.PathLike, plan: BuildPlan, engine_file: str | os.PathLike, *, trt: Any,
                 verify: bool = True, device_index: int = 0, log: Callable[[str], None] = print) -> BuildResult:
    """Verify an engine built elsewhere from the same plan (e.g. by the printed trtexec command) and give it its
    place and sidecar in BUNDLE/engines; an engine that fails parity is not adopted (the given file is left alone)."""
    path = Path(engine_file)
    if not path.is_file():
        raise TrtBuildError(f"--adopt {path}: no such engine file")
    data = path.read_bytes()
    # Without a GPU nothing can deserialize it; at least refuse what cannot be an engine of this model (the smallest
    # engine of the tiny test model is ~100 KB; a real decoder's is MBs).
    if len(data) < MIN_ENGINE_BYTES:
        raise TrtBuildError(f"--adopt {path}: {len(data)} bytes, too small to be a TensorRT engine "
                            f"(expected at least {MIN_ENGINE_BYTES}); was the trtexec build interrupted?")
    return finish_engine(bundle, plan, data, trt=trt, verify=verify, device_index=device_index,
                         build_seconds=0.0, constrained=[], log=log, t0=time.perf_counter(),
                         extra={"adopted_from": str(path.resolve())})


def finish_engine(bundle: str | os.PathLike, plan: BuildPlan, data: bytes, *, trt: Any, verify: bool,
                  device_index: int, build_seconds: float, constrained: list[str], log: Callable[[str], None],
                  t0: float, extra: Mapping[str, Any] | None = None) -> BuildResult:
    """Verify serialized engine bytes (inspector + parity, on a GPU), then write engine and sidecar atomically."""
    from runtime.backends.tensorrt import cuda_gpu_info
    from runtime.parity import check_parity

    bundle = Path(bundle)
    gpu = cuda_gpu_info(device_index)
    if verify and gpu is None:
        raise TrtBuildError("no CUDA GPU visible: the engine cannot be checked against the golden reference; "
                            "pass --no-verify to keep an unverified engine (its sidecar will say so)")
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
                    log(f"WARNING: {plan.graph} {plan.precision}: {len(fp32_layers)} compute layer(s) ran in FP32 "
                        f"although {plan.precision} was asked for: {', '.join(fp32_layers[:8])}"
                        + (" ..." if len(fp32_layers) > 8 else ""))
            # The runtime's own parity tool, on the runtime's own TensorRT backend, loading the unkept engine.
            report = check_parity(bundle, backend="tensorrt", device=f"cuda:{device_index}", precision=plan.precision,
                                  graphs=(plan.graph,), locate=False,
                                  backend_options={"engines": {plan.graph: str(tmp)}, "check_sidecar": False,
                                                   "flavour": plan.target.flavour})
            log(report.table())
            if not report:
                # Raising inside atomic_path removes the temporary engine: a failing engine is never kept.
                raise EngineParityError(f"{plan.graph} {plan.precision} engine misses its budget; not kept:\n  "
                                        + "\n  ".join(report.failures()), report.comparison)
        sidecar = EngineSidecar(
            graph=plan.graph, precision=plan.precision, engine_file=engine_path.name, engine_sha256=engine_sha,
            source_file=plan.onnx_file, source_sha256=plan.onnx_sha256, trt=plan.target, gpu=plan.gpu,
            platform=host_platform(), profile=plan.profile,
            build_options={**plan.build_options(), "constrained_layers": constrained,
                           "fp32_compute_layers": list(fp32_layers), **(extra or {})},
            build_seconds=round(build_seconds, 3), created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            parity=({"verified": True, "passed": report.passed, "device": gpu.name if gpu else None,
                     "outputs": {o.name: {"max_abs": o.max_abs, "rel_l2": o.rel_l2, "psnr": o.psnr}
                                 for o in report.outputs}} if report is not None else {"verified": False}))
        # The sidecar first, then the engine: an engine never appears without its provenance.
        write_sidecar(sidecar_file, sidecar)
    return BuildResult(engine_path, sidecar_file, time.perf_counter() - t0, report is not None, report, fp32_layers)


def inspect_fp32_layers(trt: Any, data: bytes, plan: BuildPlan) -> list[str]:
    """Heavy layers of a serialized engine that run in FP32 although not kept on purpose (needs a GPU)."""
    from runtime.backends.tensorrt import trt_logger

    runtime = trt.Runtime(trt_logger(trt))  # callers have checked that a GPU is visible
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        raise TrtBuildError(f"{plan.engine_file}: the freshly built engine does not deserialize")
    inspector = engine.create_engine_inspector()
    info = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
    del inspector, engine, runtime  # inspector -> engine -> runtime
    return fp32_compute_layers(info, plan.layer_precisions)

