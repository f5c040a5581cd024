"""Build TensorRT engines for a bundle on the machine that will run them.

    python -m export.tensorrt.build BUNDLE [--graphs encoder,decoder] [--precision fp16|fp32|int8]
        [--min-batch N --opt-batch N --max-batch N] [--workspace MiB] [--timing-cache FILE] [--dla-core N]
        [--print-trtexec] [--target trt:10.3.0] [--adopt ENGINE] [--flavour trt|trt_rtx] [--device N] [--no-verify]
        [--compute-capabilities 8.6,8.9]

Each engine goes to BUNDLE/engines/<graph>.<precision>.<gpu>.<trt-version>.plan with a JSON sidecar the runtime checks
before use; the flags, profile and ONNX file depend on the installed TensorRT (export/tensorrt/build_plan.py). A built
engine is run on the golden reference and deleted if it misses the precision's budget. `--print-trtexec` prints the
equivalent trtexec (or tensorrt_rtx) command and builds nothing (with `--target`, for a TensorRT not installed here);
`--adopt ENGINE` runs the same parity check on such an engine and gives it its name and sidecar.
Exit codes: 0 ok, 1 an engine failed its parity check (and was not kept), 2 bad input or TensorRT unavailable.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Sequence

from export.tensorrt.build_plan import (
    BuildOptions,
    BuildPlan,
    PlanError,
    format_command,
    parse_target,
    plan_build,
    trtexec_args,
)
from runtime import bundle as B
from runtime.cli import HelpFormatter, add_graphs_argument, epilog, prog_name, progress
from runtime.engines import GpuInfo, TrtInfo, rebuild_command
from runtime.errors import VaeError


def make_plans(
    bundle: Path,
    target: TrtInfo,
    graphs: Sequence[str] | None,
    precision: str,
    options: BuildOptions,
    gpu: GpuInfo | None,
) -> list[BuildPlan]:
    """One plan per graph; None means the graphs the bundle has (a named graph the bundle lacks is a PlanError)."""
    manifest = B.read_manifest(bundle)
    if graphs is None:
        graphs = [g for g in B.GRAPHS if g in manifest.graphs]
    elif not graphs:
        raise PlanError(f"--graphs: no graph named; expected some of {sorted(manifest.graphs)}")
    return [plan_build(target, g, precision, manifest, options, gpu) for g in graphs]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog_name("export.tensorrt.build"),
        description=__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter,
        epilog=epilog(
            {
                0: "every engine built or adopted (parity-checked unless --no-verify), or the commands printed",
                1: "an engine failed its parity check (it was not kept)",
                2: "bad input or option, or TensorRT unavailable (one line on stderr)",
            },
            "%(prog)s runs/bundle --graphs decoder --precision fp16",
            "%(prog)s runs/bundle --precision int8 --min-batch 1 --opt-batch 16 --max-batch 64",
            "%(prog)s runs/bundle --graphs decoder --print-trtexec --target trt:10.3.0",
        ),
    )
    p.add_argument("bundle", type=Path, metavar="BUNDLE", help="bundle folder written by export.to_onnx")
    add_graphs_argument(p, what="graphs to build engines for")
    p.add_argument(
        "--precision",
        choices=B.PRECISIONS,
        default="fp16",
        help="engine precision (fp16 and int8 follow the bundle's measured variants: kept-FP32 layers, Q/DQ graph)",
    )
    p.add_argument(
        "--min-batch",
        type=int,
        default=BuildOptions.min_batch,
        metavar="N",
        help="optimisation profile: smallest batch the engine accepts",
    )
    p.add_argument(
        "--opt-batch",
        type=int,
        default=BuildOptions.opt_batch,
        metavar="N",
        help="optimisation profile: batch TensorRT tunes its kernels for",
    )
    p.add_argument(
        "--max-batch",
        type=int,
        default=BuildOptions.max_batch,
        metavar="N",
        help="optimisation profile: largest batch the engine accepts",
    )
    p.add_argument("--workspace", type=int, default=None, metavar="MiB", help="builder workspace limit in MiB")
    p.add_argument(
        "--timing-cache",
        default=None,
        metavar="FILE",
        help="timing cache to reuse and update (default: BUNDLE/engines/timing.<gpu>.<trt>.cache)",
    )
    p.add_argument("--dla-core", type=int, default=None, metavar="N", help="Jetson DLA core, with GPU fallback")
    p.add_argument("--allow-tf32", action="store_true", help="let FP32 layers use TF32 (fails the FP32 parity budget)")
    p.add_argument("--print-trtexec", action="store_true", help="print the equivalent trtexec command; build nothing")
    p.add_argument(
        "--target",
        default=None,
        metavar="FLAVOUR:VERSION",
        help="plan for this TensorRT instead of the installed one (with --print-trtexec), e.g. trt:10.3.0",
    )
    p.add_argument(
        "--flavour",
        choices=("trt", "trt_rtx"),
        default=None,
        help="which installed TensorRT to use when both are (default: tensorrt, then tensorrt_rtx)",
    )
    p.add_argument(
        "--adopt",
        type=Path,
        default=None,
        metavar="ENGINE",
        help="verify an engine built with the printed trtexec command and give it its name and sidecar",
    )
    p.add_argument("--device", type=int, default=0, metavar="N", help="CUDA device index")
    p.add_argument(
        "--compute-capabilities",
        default=None,
        metavar="LIST",
        help="TensorRT-RTX only: target GPUs as compute capabilities, e.g. 8.6,8.9 (default: every one "
        "the installed TensorRT-RTX offers; recorded in the sidecar)",
    )
    p.add_argument(
        "--no-verify",
        action="store_true",
        help="keep the engine without the parity check (needed where no GPU is visible; said in the sidecar)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="with --adopt --no-verify: replace an engine already in place that passed its parity check "
        "(refused otherwise: nothing checks the new one)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    options = BuildOptions(
        min_batch=args.min_batch,
        opt_batch=args.opt_batch,
        max_batch=args.max_batch,
        workspace_mib=args.workspace,
        timing_cache=args.timing_cache,
        dla_core=args.dla_core,
        allow_tf32=args.allow_tf32,
        compute_capabilities=tuple(c.strip() for c in (args.compute_capabilities or "").split(",") if c.strip()),
    )
    try:
        if args.target and not args.print_trtexec:
            raise PlanError("--target plans for a TensorRT that is not installed; it only works with --print-trtexec")
        trt = None
        if args.target:
            target = parse_target(args.target)
            gpu = None
        else:
            from runtime.backends.tensorrt import cuda_gpu_info, import_tensorrt
            from runtime.errors import BackendUnavailableError

            try:
                trt, target = import_tensorrt(args.flavour)
            except BackendUnavailableError as e:
                hint = (
                    " (or pass --target trt:10.3.0 to print the command for another machine)"
                    if args.print_trtexec
                    else ""
                )
                raise BackendUnavailableError(f"{e}{hint}") from None
            gpu = cuda_gpu_info(args.device)
            if gpu is not None and target.flavour == "trt":
                # The DLA core count is part of the GPU's identity (engine names, sidecars); only TensorRT knows it,
                # and a Builder may be created only where a GPU was seen.
                from runtime.backends.tensorrt import dla_core_count, trt_logger

                gpu = dataclasses.replace(gpu, dla_cores=dla_core_count(trt.Builder(trt_logger(trt))))
        plans = make_plans(args.bundle, target, args.graphs, args.precision, options, gpu)
        if args.print_trtexec:
            for plan in plans:
                print(f"# {plan.graph} {plan.precision} for {target.label}" + (f" on {gpu.describe()}" if gpu else ""))
                for note in plan.notes:
                    print(f"# note: {note}")
                layers = None
                if plan.layer_precisions:
                    layers, note = _layer_names(args.bundle, plan, trt)
                    print(f"# note: {note}")
                print(format_command(trtexec_args(plan, args.bundle, layers)))
                adopt = rebuild_command(
                    args.bundle,
                    plan.graph,
                    plan.precision,
                    plan.profile.batch,
                    {
                        "workspace": plan.workspace_mib,
                        "dla_core": plan.dla_core,
                        "adopt": args.bundle / plan.engine_file,
                    },
                )
                print(f"# then, for the runtime to accept it (parity check + sidecar):\n{adopt}")
            return 0
        if args.adopt is not None and len(plans) != 1:
            raise PlanError("--adopt takes one engine: name its graph with --graphs encoder or --graphs decoder")
        return _build_all(args, trt, plans)
    except VaeError as e:  # PlanError, BundleError, BackendError, ...
        print(f"error: {e}", file=sys.stderr)
        return 2


def _layer_names(bundle: Path, plan: BuildPlan, trt) -> tuple[list | None, str]:
    """The TensorRT layers the plan's kept-FP32 nodes become, from parsing the graph with an installed TensorRT
    parser (the target's own when it is installed); (None, why) where none is."""
    from runtime.backends.tensorrt import cuda_gpu_info, import_tensorrt
    from runtime.errors import BackendUnavailableError

    # Parsing creates a Builder, which crashes full TensorRT where no GPU is visible: there, only TensorRT-RTX's
    # parser (which runs on a CPU) may be used.
    flavours = [plan.target.flavour, "trt_rtx" if plan.target.flavour == "trt" else "trt"]
    if cuda_gpu_info() is None:
        flavours = ["trt_rtx"]
    if trt is None or ("trt_rtx" if trt.__name__ == "tensorrt_rtx" else "trt") not in flavours:
        trt = None
        for flavour in flavours:
            try:
                trt, _ = import_tensorrt(flavour)
                break
            except BackendUnavailableError:
                continue
    if trt is None:
        return None, (
            "no TensorRT parser usable here (full TensorRT needs a GPU to parse): --layerPrecisions lists "
            "the kept ONNX node names, which trtexec matches only for nodes that became one layer; the "
            "Python build (without --print-trtexec) resolves every layer"
        )
    import onnx

    from export.tensorrt.engine import TrtBuildError, constrained_layers, parse_onnx

    path = B.resolve_file(bundle, plan.onnx_file, plan.onnx_sha256)
    try:
        _logger, _builder, network, _parser = parse_onnx(trt, path, strongly_typed=False)
    except TrtBuildError as e:
        raise PlanError(str(e)) from None
    nodes = [n.name for n in onnx.load(str(path), load_external_data=False).graph.node]
    layers = constrained_layers(trt, network, plan.layer_precisions, nodes)
    return layers, (
        f"layer names of the {len(plan.layer_precisions)} kept-FP32 node(s) from the "
        f"{trt.__name__} {trt.__version__} ONNX parser ({len(layers)} float layer(s))"
    )


def _build_all(args: argparse.Namespace, trt, plans: list[BuildPlan]) -> int:
    from export.tensorrt.engine import EngineParityError, TrtBuildError, adopt_engine, build_engine

    failed = 0
    bar = progress(plans, desc="engines", unit="engine")
    for plan in bar:
        bar.set_postfix_str(f"{plan.graph} {plan.precision}")
        for note in plan.notes:
            bar.write(f"note: {note}")
        try:
            kw = dict(trt=trt, verify=not args.no_verify, device_index=args.device, log=bar.write)
            res = (
                adopt_engine(args.bundle, plan, args.adopt, force=args.force, **kw)
                if args.adopt is not None
                else build_engine(args.bundle, plan, **kw)
            )
        except EngineParityError as e:
            bar.write(f"error: {e}")
            failed += 1
            continue
        except TrtBuildError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        state = "verified" if res.verified else "NOT verified (--no-verify)"
        bar.write(f"wrote {res.engine} ({res.engine.stat().st_size / 1e6:.1f} MB, {res.seconds:.1f} s, {state})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
