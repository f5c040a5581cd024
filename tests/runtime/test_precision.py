"""precision= loads a reduced-precision variant listed in vae.json (made here with onnxconverter-common's FP16
conversion, standing in for export.precision.fp16's output): FP32-IO variants and pure-FP16-IO graphs both run."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import runtime
from runtime.bundle import VariantSpec, read_manifest, sha256_file, write_manifest
from runtime.verify.parity import check_parity


def _add_fp16_variant(bundle_dir, keep_io_types: bool) -> None:
    onnx = pytest.importorskip("onnx")
    float16 = pytest.importorskip("onnxconverter_common.float16")
    m = read_manifest(bundle_dir)
    graphs = {}
    for name, spec in m.graphs.items():
        model = float16.convert_float_to_float16(onnx.load(str(bundle_dir / spec.file)), keep_io_types=keep_io_types)
        path = bundle_dir / f"{name}.fp16.onnx"
        onnx.save(model, str(path))
        variant = VariantSpec(precision="fp16", file=path.name, sha256=sha256_file(path))
        graphs[name] = dataclasses.replace(spec, variants={**spec.variants, "fp16": variant})
    write_manifest(bundle_dir, dataclasses.replace(m, graphs=graphs))


@pytest.mark.parametrize("keep_io_types", [True, False], ids=["fp32-io", "fp16-io"])
def test_fp16_variant_loads_by_precision(bundle_copy, reference, keep_io_types):
    _add_fp16_variant(bundle_copy, keep_io_types)
    with runtime.load(bundle_copy, backend="onnxruntime", precision="fp16") as r:
        assert r.describe()["files"] == {"encoder": "encoder.fp16.onnx", "decoder": "decoder.fp16.onnx"}
        img = r.decode(reference["decoder.z"])
        assert img.dtype == np.float32  # float16 outputs are returned as float32
        err = np.abs(img - reference["decoder.image"]).max()
        assert 0 < err < 1e-2  # really ran in FP16: not bit-identical, but close
    report = check_parity(bundle_copy, backend="onnxruntime", precision="fp16")
    assert report, report.table()
    img = next(o for o in report.comparison.outputs if o.name == "decoder.image")
    assert img.tolerance.min_psnr is not None and img.psnr >= img.tolerance.min_psnr
