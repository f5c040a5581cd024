"""Write a Triton Inference Server model repository for a bundle: vae_encoder and vae_decoder, ready for `tritonserver`.

    python -m runtime.serving.to_triton BUNDLE --out MODEL_REPOSITORY [--platform onnxruntime|tensorrt|python]
        [--kind gpu|cpu] [--precision fp32|fp16|int8] [--max-batch N] [--instances N] [--preferred-batch 8,16] [--queue-delay-us N]
        [--no-dynamic-batching] [--accelerator none|tensorrt|tensorrt-fp16] [--threads N] [--no-warmup]

Platforms (format: runtime/serving/repository.py): `onnxruntime` - the bundle's ONNX graph at --precision as
1/model.onnx (--accelerator tensorrt[-fp16]: Triton's TensorRT accelerator inside ONNX Runtime, on GPU instances);
`tensorrt` - an engine of export.tensorrt.build as 1/model.plan with its sidecar (a plan runs only on the GPU and
TensorRT version it was built for: build it inside the Triton image, docs/serving.md); `python` - this runtime
hosted by 1/model.py, with the bundle's files and a copy of the package (instances default to --kind cpu). Only the
`python` repository can be tried locally: runtime.serving.serve's server has Triton's Python backend alone, so
`onnxruntime` and `tensorrt` repositories need a full Triton image (docs/serving.md).
Every config.pbtxt is parsed against Triton's ModelConfig schema when tritonclient is installed (--validate makes it
required). The repository is written next to --out and swapped in whole; an existing --out is replaced only when it
holds nothing but what its marker (vae-triton.json) lists with a matching sha256, else it is refused before any work.
Exit codes: 0 written, 2 bad input (bundle, option, engine; one line on stderr).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from runtime.cli import HelpFormatter, add_graphs_argument, epilog, prog_name
from runtime.errors import VaeError
from runtime.serving.repository import (
    ACCELERATORS,
    KINDS,
    PLATFORMS,
    RepoOptions,
    parse_batches,
    schema_available,
    write_repository,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog_name("runtime.serving.to_triton"),
        formatter_class=HelpFormatter,
        description="Write a Triton Inference Server model repository (vae_encoder, vae_decoder) for a bundle.",
        epilog=epilog(
            {0: "repository written", 2: "bad input or option (bundle, option, engine; one line on stderr)"},
            "%(prog)s runs/bundle --out runs/triton --max-batch 64 --preferred-batch 16,32",
            "%(prog)s runs/bundle --out runs/trt --platform tensorrt --precision fp16 --graphs decoder",
            "docker run --gpus all -p8000:8000 -p8001:8001 -p8002:8002 -v $PWD/runs/triton:/models \\\n"
            "      nvcr.io/nvidia/tritonserver:<yy.mm>-py3 tritonserver --model-repository=/models",
        ),
    )
    p.add_argument("bundle", type=Path, metavar="BUNDLE", help="bundle folder written by export.to_onnx")
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="MODEL_REPOSITORY",
        help="repository folder to write; an existing one is replaced only if every file in it is one this "
        "tool wrote (listed in its vae-triton.json with a matching sha256), else refused (exit 2)",
    )
    p.add_argument(
        "--platform",
        choices=PLATFORMS,
        default="onnxruntime",
        help="onnxruntime_onnx (default), tensorrt_plan (engines from export.tensorrt.build) or python "
        "(this runtime inside Triton's Python backend). Only python can be tried on this machine: the "
        "local server (runtime.serving.serve) has Triton's Python backend alone; onnxruntime_onnx and "
        "tensorrt_plan need a full Triton image (docs/serving.md)",
    )
    p.add_argument(
        "--kind", choices=KINDS, default=None, help="instance kind (default: gpu; cpu for --platform python)"
    )
    p.add_argument(
        "--precision",
        choices=("fp32", "fp16", "int8"),
        default="fp32",
        help="bundle variant (onnxruntime, python) or engine precision (tensorrt); default fp32",
    )
    p.add_argument(
        "--max-batch",
        type=int,
        default=None,
        metavar="N",
        help="max_batch_size (default 64; tensorrt: the engine's profile max)",
    )
    p.add_argument("--instances", type=int, default=1, metavar="N", help="instances per model (per GPU on gpu)")
    p.add_argument(
        "--preferred-batch",
        type=parse_batches,
        default=(),
        metavar="LIST",
        help="dynamic batching preferred sizes, e.g. 16,32 (default: none, Triton forms the largest batch)",
    )
    p.add_argument(
        "--queue-delay-us",
        type=int,
        default=100,
        metavar="US",
        help="dynamic batching max_queue_delay_microseconds (default 100)",
    )
    p.add_argument("--no-dynamic-batching", action="store_true", help="no dynamic_batching block")
    p.add_argument(
        "--accelerator",
        choices=ACCELERATORS,
        default="none",
        help="onnxruntime on gpu: Triton's TensorRT execution accelerator, FP32 or FP16 (default none)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="ONNX Runtime intra-op threads per instance (onnxruntime, python)",
    )
    add_graphs_argument(p, what="graphs to include")
    p.add_argument("--prefix", default="vae_", help="model name prefix (default vae_: vae_encoder, vae_decoder)")
    p.add_argument(
        "--engine-filter",
        default="",
        metavar="TEXT",
        help="tensorrt: pick the engine whose file name contains TEXT (GPU slug, TensorRT tag; default: "
        "the one engine there is)",
    )
    p.add_argument(
        "--no-warmup",
        action="store_true",
        help="no warm-up: no model_warmup block (onnxruntime, tensorrt: Triton counts those requests in its "
        "metrics), no warmup_batches parameter (python: run in model.py's initialize, not counted)",
    )
    p.add_argument(
        "--validate", action="store_true", help="require the schema check (fails when tritonclient is not installed)"
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    kind = args.kind or ("cpu" if args.platform == "python" else "gpu")
    try:
        max_batch = args.max_batch if args.max_batch is not None else _default_max_batch(args)
        options = RepoOptions(
            platform=args.platform,
            kind=kind,
            precision=args.precision,
            max_batch=max_batch,
            instances=args.instances,
            dynamic_batching=not args.no_dynamic_batching,
            preferred_batch=args.preferred_batch,
            queue_delay_us=args.queue_delay_us,
            accelerator=args.accelerator,
            threads=args.threads,
            warmup=not args.no_warmup,
            graphs=args.graphs or (),
            prefix=args.prefix,
            engine_filter=args.engine_filter,
        )
        if not args.validate and not schema_available():
            print(
                "warning: tritonclient is not installed: config.pbtxt files are not checked against Triton's "
                "schema (pip install -c constraints.txt -e '.[serve]')",
                file=sys.stderr,
            )
        repo = write_repository(args.bundle, args.out, options, validate=True if args.validate else None)
    except VaeError as e:  # BundleError, EngineError, RepositoryError, OutputError, ...
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"model repository written to {repo.path}: {', '.join(repo.models)} "
        f"(platform {options.platform}, {kind} x{options.instances}, max_batch_size {options.max_batch}"
        f"{', schema-checked' if repo.validated else ''})"
    )
    return 0


def _default_max_batch(args: argparse.Namespace) -> int:
    """64, or for --platform tensorrt the smallest profile max batch of the engines that would be picked."""
    if args.platform != "tensorrt":
        return 64
    from runtime import engines as E
    from runtime.bundle import read_manifest

    manifest = read_manifest(args.bundle)
    graphs = args.graphs or tuple(manifest.graphs)
    limits = []
    for g in graphs:
        found = [e for e in E.candidate_engines(args.bundle, g, args.precision) if args.engine_filter in e.name]
        if len(found) == 1:
            limits.append(E.read_sidecar(E.sidecar_path(found[0])).profile.batch[2])
    return min(limits) if limits else 64  # no or several engines: write_repository explains which


if __name__ == "__main__":
    sys.exit(main())
