"""The bundle the conformance driver builds from: a real tiny export plus fp16 / int8 variants listed in vae.json.

The variants only need to be valid ONNX graphs the simulated engine can run: fp16 is the all-FP16 conversion with
FP32 I/O and one kept-FP32 node (so TensorRT 10's layer-precision path runs), int8 is the FP32 graph under the int8
name (the Q/DQ content is irrelevant to which TensorRT API calls our builder makes). The kept-FP32 node is listed in
vae.json but not blocked in the fp16 file (onnxconverter-common's node_block_list writes graphs onnxruntime rejects);
only TensorRT 10's path, which builds from the FP32 graph, reads the list.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from runtime import bundle as B
from runtime.files import sha256_file


def add_variants(bundle: Path, graph: str = B.DECODER) -> None:
    import onnx
    from onnxconverter_common import float16

    src = bundle / f"{graph}.onnx"
    model = onnx.load(str(src))
    kept = next(n.name for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul"))
    fp16 = bundle / f"{graph}.fp16.onnx"
    onnx.save(float16.convert_float_to_float16(model, keep_io_types=True), str(fp16))
    int8 = bundle / f"{graph}.int8.onnx"
    shutil.copyfile(src, int8)
    m = B.read_manifest(bundle)
    spec = m.graphs[graph]
    variants = {
        **spec.variants,
        "fp16": B.VariantSpec("fp16", fp16.name, sha256_file(fp16), kept_fp32_nodes=(kept,)),
        "int8": B.VariantSpec("int8", int8.name, sha256_file(int8)),
    }
    graphs = {**m.graphs, graph: dataclasses.replace(spec, variants=variants)}
    B.write_manifest(bundle, dataclasses.replace(m, graphs=graphs))


def make_bundle(checkpoint: Path, out: Path) -> Path:
    from export.to_onnx import export_bundle

    bundle = export_bundle(checkpoint, out, log=lambda *a: None)
    add_variants(Path(bundle))
    return Path(bundle)
