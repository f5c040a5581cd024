"""FP16 and INT8 variants of the default-size VanillaVAE (64x64 RGB, latent 128, 3.9 M parameters), trained briefly
so its activations are those of a real model, through both CLIs: budgets met, variants registered and loadable."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

from export.precision import fp16, int8  # noqa: E402
from export.precision.common import precision_table  # noqa: E402
from runtime import bundle as B  # noqa: E402
from runtime.files import sha256_file  # noqa: E402

pytestmark = pytest.mark.slow

# 200 Adam steps at batch 16 on the embedded shapes (about 35 s on 2 cores): BatchNorm statistics and weights are
# trained, reconstructions are blurry shapes, and the budgets are measured on a model that has learnt something.
STEPS, BATCH = 200, 16


@pytest.fixture(scope="module")
def default_bundle(tmp_path_factory) -> Path:
    from export.to_onnx import export_bundle
    from vae_model.train import TrainOptions, train

    work = tmp_path_factory.mktemp("default-precision")
    torch.manual_seed(0)
    result = train(
        TrainOptions(
            out=work / "run",
            epochs=1,
            batch_size=BATCH,
            train_size=STEPS * BATCH,
            val_size=64,
            progress=False,
            verbose=False,
            num_samples=4,
        )
    )
    assert result.history[-1].step == STEPS
    return export_bundle(result.last, work / "bundle", log=lambda *a: None)


@pytest.fixture(scope="module")
def variants(default_bundle):
    rc16 = fp16.main([str(default_bundle), "--no-progress"])
    rc8 = int8.main([str(default_bundle), "--int8", "--no-progress"])
    return rc16, rc8, B.read_manifest(default_bundle)


def _worst(summary, key):
    vals = [float(o[key]) for o in summary["outputs"].values() if o[key] is not None]
    return vals


def test_fp16_meets_budget_on_default_model(default_bundle, variants):
    rc16, _, m = variants
    assert rc16 == 0
    dec, enc = m.graph(B.DECODER).variants["fp16"], m.graph(B.ENCODER).variants["fp16"]
    for v in (dec, enc):
        assert v.sha256 == sha256_file(default_bundle / v.file) and v.accuracy["passed"]
    for key in ("onnxruntime_cpu", "fp16_storage_emulation"):
        assert min(_worst(dec.accuracy[key], "psnr")) >= 40
        assert max(_worst(enc.accuracy[key], "rel_l2")) <= 1e-2
        assert all(o["nan"] == 0 and o["inf"] == 0 for o in dec.accuracy[key]["outputs"].values())
    # the realistic inputs were part of the measurement, not just the golden noise
    assert {k.split(".")[0] for k in dec.accuracy["fp16_storage_emulation"]["outputs"]} == {
        "golden",
        "realistic",
        "extra",
    }


def test_int8_meets_budget_on_default_model(default_bundle, variants):
    _, rc8, m = variants
    assert rc8 == 0
    import onnx

    for graph in B.GRAPHS:
        v = m.graph(graph).variants["int8"]
        assert v.accuracy["passed"] and len(v.kept_fp32_nodes) <= 2
        check = int8.check_qdq(onnx.load(str(default_bundle / v.file)))
        assert check, check.problems()
        assert len(check.quantized_weight_nodes) >= 3
    dec = m.graph(B.DECODER).variants["int8"]
    assert min(_worst(dec.accuracy["onnxruntime_cpu"], "psnr")) >= 30
    assert max(_worst(m.graph(B.ENCODER).variants["int8"].accuracy["onnxruntime_cpu"], "rel_l2")) <= 0.1


@pytest.mark.parametrize("precision, min_psnr", [("fp16", 40.0), ("int8", 30.0)])
def test_runtime_loads_variant_by_precision(default_bundle, variants, precision, min_psnr):
    import runtime

    ref = dict(np.load(default_bundle / B.REFERENCE_NAME))
    with runtime.load(default_bundle, backend="onnxruntime", precision=precision) as r:
        img = r.decode(ref["realistic.decoder.z"])
    mse = float(np.mean((img.astype(np.float64) - ref["realistic.decoder.image"]) ** 2))
    assert 0 < mse and 10 * math.log10(4.0 / mse) >= min_psnr


def test_side_by_side_table(default_bundle, variants):
    table = precision_table(default_bundle)
    rows = [line.split() for line in table.splitlines()[3:]]  # a title, the header and its rule first
    assert [(r[0], r[1]) for r in rows] == [(g, p) for g in B.GRAPHS for p in ("fp32", "fp16", "int8")]
    assert all(r[-1] == "PASS" for r in rows)
