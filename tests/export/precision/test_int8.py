"""export.precision.int8: static INT8 QDQ that TensorRT accepts (zero point 0, per-channel weights, FP32 bias and outputs),
calibrated on realistic data, gated on its budget, registered in vae.json; CLI exit codes."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, numpy_helper  # noqa: E402

from export.precision import int8  # noqa: E402
from export.precision.common import ort_session, precision_table, run_graph  # noqa: E402
from export.to_onnx import export_model  # noqa: E402
from runtime import bundle as B  # noqa: E402
from runtime.files import sha256_file  # noqa: E402
from tests.conftest import TINY, copy_bundle, make_model  # noqa: E402

FAST = ["--samples", "32", "--eval-samples", "8", "--no-progress"]


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("int8") / "bundle"
    export_model(make_model(TINY), out, pixel_range=(-1.0, 1.0), log=lambda *a: None)
    return out


@pytest.fixture
def bundle(tiny_bundle, tmp_path):
    return shutil.copytree(tiny_bundle, tmp_path / "bundle")


def assert_tensorrt_qdq(model):
    """Every Q/DQ has an int8 zero point equal to 0; every Conv/ConvTranspose/Gemm weight is int8 with one scale
    per output channel; biases and graph outputs stay float."""
    inits = {t.name: t for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq
    for n in qdq:
        zp = inits[n.input[2]]
        assert zp.data_type == TensorProto.INT8, n.name
        assert not np.any(numpy_helper.to_array(zp)), f"{n.name}: zero point {numpy_helper.to_array(zp)}"
    weighted = [n for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose", "Gemm")]
    assert weighted
    for n in weighted:
        dq = producers[n.input[1]]
        assert dq.op_type == "DequantizeLinear", n.name
        w = inits[dq.input[0]]
        assert w.data_type == TensorProto.INT8
        out_axis = 1 if n.op_type == "ConvTranspose" else 0
        scale = numpy_helper.to_array(inits[dq.input[1]])
        assert scale.shape == (w.dims[out_axis],), (n.name, scale.shape, list(w.dims))
        assert next(a.i for a in dq.attribute if a.name == "axis") == out_axis
        if len(n.input) > 2:  # bias: float, not an INT32 DequantizeLinear (TensorRT's parser refuses those)
            assert n.input[2] in inits and inits[n.input[2]].data_type == TensorProto.FLOAT
    for o in model.graph.output:
        assert producers[o.name].op_type not in ("DequantizeLinear", "QuantizeLinear"), o.name


def test_int8_variants_meet_budget_and_are_registered(bundle, capsys):
    assert int8.main([str(bundle), "--int8", *FAST]) == 0
    out = capsys.readouterr().out
    m = B.read_manifest(bundle)
    for graph in B.GRAPHS:
        v = m.graph(graph).variants["int8"]
        assert v.file == f"{graph}.int8.onnx" and v.sha256 == sha256_file(bundle / v.file)
        assert v.accuracy["passed"] and not v.accuracy["forced"]
        assert v.accuracy["calibration"]["samples"] == 32
        model = onnx.load(str(bundle / v.file))
        assert_tensorrt_qdq(model)
        assert set(v.kept_fp32_nodes) <= {n.name for n in model.graph.node}
        sess = ort_session(bundle / v.file)
        assert {o.type for o in sess.get_outputs()} == {"tensor(float)"}
    dec = m.graph(B.DECODER).variants["int8"]
    assert dec.budget == {"image": {"min_psnr": 30.0}}
    psnrs = [o["psnr"] for o in dec.accuracy["onnxruntime_cpu"]["outputs"].values()]
    assert psnrs and min(psnrs) >= 30
    assert precision_table(bundle) in out
    # the default calibration (auto) measured both methods and kept the more accurate one, saying so
    for graph in B.GRAPHS:
        cal = m.graph(graph).variants["int8"].accuracy["calibration"]
        compared = cal["compared"]
        assert set(compared) == set(int8.AUTO_METHODS)
        best = min(compared.values(), key=lambda c: (not c["passed"], len(c["kept_fp32_nodes"]), c["x_budget"]))
        assert compared[cal["method"]] == best
        assert f"{graph}: INT8 calibration methods compared: " in out and f"-> {cal['method']}" in out


def test_explicit_method_is_the_only_one_calibrated(bundle, capsys):
    assert int8.main([str(bundle), "--int8", "--graphs", "encoder", "--method", "percentile", *FAST]) == 0
    cal = B.read_manifest(bundle).graph(B.ENCODER).variants["int8"].accuracy["calibration"]
    assert cal["method"] == "percentile" and "compared" not in cal
    assert "methods compared" not in capsys.readouterr().out


@pytest.mark.parametrize(
    "tried, chosen",
    [
        # passing beats failing, whatever the error
        ({"minmax": (False, 0, 0.1), "percentile": (True, 0, 0.9)}, "percentile"),
        # then fewer unquantized nodes
        ({"minmax": (True, 0, 0.9), "percentile": (True, 1, 0.1)}, "minmax"),
        # then the smaller error as a share of the budget
        ({"minmax": (True, 0, 0.6), "percentile": (True, 0, 0.5)}, "percentile"),
        # a tie keeps the first method tried
        ({"minmax": (True, 0, 0.5), "percentile": (True, 0, 0.5)}, "minmax"),
    ],
)
def test_choose_method_rule(monkeypatch, tried, chosen):
    from types import SimpleNamespace

    monkeypatch.setattr(int8, "badness", lambda report: report)
    results = {
        m: SimpleNamespace(passed=p, kept_fp32_nodes=("n",) * kept, report=x) for m, (p, kept, x) in tried.items()
    }
    assert int8.choose_method(results) == chosen


def test_check_qdq_flags_asymmetric_and_per_tensor(tiny_bundle, tmp_path):
    """The gate itself must catch what TensorRT rejects: ORT's default asymmetric uint8, per-tensor quantization."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from export.precision.common import open_bundle, realistic_inputs

    data, _ = open_bundle(tiny_bundle, [B.DECODER])
    z = realistic_inputs(data, 16, 5)[B.DECODER]

    class Reader:
        def __init__(self):
            self.it = iter([{B.Z: z}])

        def get_next(self):
            return next(self.it, None)

    out = tmp_path / "asym.onnx"
    quantize_static(
        str(tiny_bundle / "decoder.onnx"),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QUInt8,
        per_channel=False,
    )
    check = int8.check_qdq(onnx.load(str(out)))
    assert not check
    assert check.nonzero_zero_points and check.non_int8 and check.per_tensor_weights


def test_budget_missed_is_not_written_unless_forced(bundle, capsys):
    args = [str(bundle), "--int8", "--graphs", "decoder", "--budget-psnr", "200", *FAST]
    assert int8.main(args) == 1
    err = capsys.readouterr().err
    assert "misses its budget" in err and "not written" in err and "Traceback" not in err
    assert not (bundle / "decoder.int8.onnx").exists()
    assert "int8" not in B.read_manifest(bundle).graph(B.DECODER).variants

    assert int8.main([*args, "--force"]) == 1  # written, but the exit code still says the budget was missed
    v = B.read_manifest(bundle).graph(B.DECODER).variants["int8"]
    assert (bundle / v.file).is_file() and v.sha256 == sha256_file(bundle / v.file)
    assert v.accuracy["passed"] is False and v.accuracy["forced"] is True and v.kept_fp32_nodes == ()
    assert "FAIL (forced)" in precision_table(bundle)


def test_calibration_from_an_image_folder(bundle, tmp_path):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    x = int8.calibration_inputs(bundle, B.ENCODER, 6, 0, folder)
    assert x.shape == (6, *B.read_manifest(bundle).model.image_shape) and x.dtype == np.float32
    assert -1.0 <= x.min() and x.max() <= 1.0
    z = int8.calibration_inputs(bundle, B.DECODER, 6, 0, folder)
    assert z.shape == (6, TINY.latent_dim)
    assert int8.main(
        [
            str(bundle),
            "--int8",
            "--graphs",
            "encoder",
            "--calibration",
            str(folder),
            "--samples",
            "6",
            "--eval-samples",
            "4",
            "--no-progress",
        ]
    ) in (0, 1)
    assert int8.main([str(bundle), "--int8", "--calibration", str(tmp_path / "missing")]) == 2


@pytest.mark.parametrize("crop", [20, None])
def test_calibration_images_are_cropped_as_vae_json_records(bundle, tmp_path, crop):
    """Calibration images from a folder get the crop the model was trained with (vae.json's preprocess), as the
    runtime's prepare gives them at inference; not always PyTorch-VAE's 148."""
    from dataclasses import replace

    from PIL import Image

    from export.precision.common import dataset_images
    from runtime.images import prepare

    folder = tmp_path / "imgs"
    folder.mkdir()
    pixels = np.random.default_rng(1).integers(0, 255, (160, 200, 3), dtype=np.uint8)  # both sides > 148
    Image.fromarray(pixels).save(folder / "0.png")
    m = replace(B.read_manifest(bundle), preprocess=B.PreprocessSpec(crop))
    got = dataset_images(1, m, 0, folder)
    size = m.model.image_size
    np.testing.assert_allclose(got, prepare(pixels, size, m.pixel_range, crop=crop), atol=1e-6)
    assert not np.allclose(got, prepare(pixels, size, m.pixel_range, crop=148), atol=1e-6)


def test_graph_outputs_are_not_quantized(tiny_bundle, tmp_path):
    from export.precision.common import open_bundle, realistic_inputs

    data, _ = open_bundle(tiny_bundle, [B.ENCODER])
    q = int8.Quantizer(
        tiny_bundle / "encoder.onnx", B.ENCODER, realistic_inputs(data, 8, 0)[B.ENCODER], workdir=tmp_path
    )
    model = q.quantize(())
    producers = {o: n for n in model.graph.node for o in n.output}
    assert {producers[o.name].op_type for o in model.graph.output} == {"Gemm"}
    x = realistic_inputs(data, 4, 1)[B.ENCODER]
    got = run_graph(ort_session(model), {B.IMAGE: x})
    assert set(got) == {B.MU, B.LOGVAR} and all(np.isfinite(v).all() for v in got.values())


@pytest.mark.parametrize(
    "args, needle",
    [([], "--int8"), (["--int8", "--samples", "0"], "--samples"), (["--int8", "--graphs", "middle"], "unknown graph")],
)
def test_bad_options_exit_2(bundle, capsys, args, needle):
    assert int8.main([str(bundle), *args]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


# ----------------------------------------------------------------------------------------------- --decoder-form


@pytest.fixture(scope="module")
def ckpt_bundle(tiny_checkpoint, tmp_path_factory):
    """A bundle exported from a checkpoint file beside it (vae.json records its relative path, size and sha256);
    the tests take copies with copy_bundle, which carries the checkpoint along."""
    from export.to_onnx import export_bundle

    root = tmp_path_factory.mktemp("int8-subpixel")
    ckpt = shutil.copy2(tiny_checkpoint, root / "tiny.pt")
    return export_bundle(ckpt, root / "bundle", log=lambda *a: None)


def test_default_form_without_a_checkpoint_quantizes_the_bundle_graph(bundle, capsys):
    """An in-memory export names no checkpoint: the default (auto) falls back to decoder.onnx and says why."""
    import json

    assert int8.main([str(bundle), "--int8", "--graphs", "decoder", *FAST]) == 0
    out = capsys.readouterr().out
    assert "not the faster sub-pixel form" in out and "--checkpoint" in out
    raw = json.loads((bundle / B.MANIFEST_NAME).read_text())["graphs"]["decoder"]["variants"]["int8"]
    assert "source_form" not in raw  # the manifest of a default run is the one it always was
    assert B.read_manifest(bundle).graph(B.DECODER).variants["int8"].source_form == {}


@pytest.mark.parametrize("form", [[], ["--decoder-form", "subpixel"]], ids=["auto", "subpixel"])
def test_subpixel_form_is_quantized_registered_and_loads(ckpt_bundle, tmp_path, capsys, form):
    import onnxruntime as ort

    import runtime

    bundle = copy_bundle(ckpt_bundle, tmp_path / "bundle")
    assert int8.main([str(bundle), "--int8", "--graphs", "decoder", *form, *FAST]) == 0
    assert "sub-pixel form" in capsys.readouterr().out
    v = B.read_manifest(bundle).graph(B.DECODER).variants["int8"]
    assert v.file == "decoder.int8.onnx" and v.sha256 == sha256_file(bundle / v.file)
    assert v.accuracy["passed"] and not v.accuracy["forced"]
    assert v.source_form["form"] == "subpixel" and v.source_form["rewrite_options"] == int8.SUBPIXEL_OPTIONS
    assert "subpixel[nhwc]" in v.source_form["rewrites"]
    assert v.source_form["fp32_check"]["max_abs"] <= 1e-4
    # quantized from the nhwc form (one conv per upsampling layer + the head), not the bundle's phases form
    convs = lambda m: sum(n.op_type == "Conv" for n in m.graph.node)  # noqa: E731
    q, fp32 = onnx.load(str(bundle / v.file)), onnx.load(str(bundle / "decoder.onnx"))
    assert_tensorrt_qdq(q)
    assert 0 < convs(q) < convs(fp32)
    assert B.read_manifest(bundle).graph(B.ENCODER).variants == {}  # encoder untouched
    # What makes it fast on ONNX Runtime CPU (docs/performance.md#int8-decoder-form): after ORT's own optimisation
    # every conv runs as an int8 QLinearConv (none left in float, as a DequantizeLinear with several consumers would
    # cause) and the only DepthToSpace is the last one (the other pixel shuffles are block Transposes in NHWC).
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "ort_optimized.onnx")
    ort.InferenceSession(str(bundle / v.file), so, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node]
    assert "Conv" not in ops and ops.count("QLinearConv") == convs(q) and ops.count("DepthToSpace") == 1, ops

    z = np.random.default_rng(7).standard_normal((8, TINY.latent_dim)).astype(np.float32)
    want = runtime.load(bundle, precision="fp32", graphs=(B.DECODER,)).decode(z)
    got = runtime.load(bundle, precision="int8", graphs=(B.DECODER,)).decode(z)
    mse = float(np.mean((np.asarray(got, np.float64) - want) ** 2))
    assert 0 < mse and 10 * np.log10(4.0 / mse) >= v.budget["image"]["min_psnr"]  # PSNR over [-1, 1]

    # the divergence finder rebuilds the form the variant came from, not the FP32 file's, and says so
    from export.divergence import locate_divergence

    d = locate_divergence(bundle, B.DECODER, precision="int8")
    assert d.first is None and any("'subpixel' form" in n for n in d.notes)
    assert any("subpixel[nhwc]" in n for n in d.notes) and not any("subpixel[phases]" in n for n in d.notes)
    assert d.anchors[-1].onnx_op == "DepthToSpace"


def test_subpixel_form_needs_the_exported_checkpoint(ckpt_bundle, tmp_path, capsys):
    import json

    from tests.conftest import make_model
    from vae_model import save_checkpoint

    bundle = copy_bundle(ckpt_bundle, tmp_path / "bundle")
    args = [str(bundle), "--int8", "--graphs", "decoder", "--decoder-form", "subpixel", *FAST]
    other = tmp_path / "other.pt"
    save_checkpoint(other, make_model(TINY, seed=3))
    assert int8.main([*args, "--checkpoint", str(other)]) == 2  # changed: sha256 differs from vae.json's
    err = capsys.readouterr().err
    assert str(other) in err and "sha256" in err and "Traceback" not in err
    assert int8.main([*args, "--checkpoint", str(tmp_path / "gone.pt")]) == 2
    assert "gone.pt" in capsys.readouterr().err
    raw = json.loads((bundle / B.MANIFEST_NAME).read_text())
    assert raw["source"]["relative_path"] == "../tiny.pt" and "path" not in raw["source"]
    raw["source"]["relative_path"] = "../moved/tiny.pt"
    (bundle / B.MANIFEST_NAME).write_text(json.dumps(raw))
    assert int8.main(args) == 2  # missing: the path vae.json names is not there
    err = capsys.readouterr().err
    assert "moved/tiny.pt" in err and "--checkpoint" in err and "Traceback" not in err
    assert "int8" not in B.read_manifest(bundle).graph(B.DECODER).variants
    # the default (auto) falls back to decoder.onnx and says why; an explicit bad --checkpoint is still an error
    auto = [a for a in args if a not in ("--decoder-form", "subpixel")]
    assert int8.main([*auto, "--checkpoint", str(other)]) == 2
    assert "sha256" in capsys.readouterr().err
    assert int8.main(auto) == 0
    out = capsys.readouterr().out
    assert "not the faster sub-pixel form" in out and "moved/tiny.pt" in out
    assert B.read_manifest(bundle).graph(B.DECODER).variants["int8"].source_form == {}


def test_auto_form_falls_back_when_the_subpixel_form_fails(ckpt_bundle, tmp_path, capsys, monkeypatch):
    """--decoder-form auto never fails where the bundle form works; an explicit subpixel still does."""

    def broken(*a, **k):
        raise int8.PrecisionError("sub-pixel export broke (test)")

    monkeypatch.setattr(int8, "subpixel_decoder", broken)
    bundle = copy_bundle(ckpt_bundle, tmp_path / "bundle")
    assert int8.main([str(bundle), "--int8", "--graphs", "decoder", "--decoder-form", "subpixel", *FAST]) == 2
    assert "sub-pixel export broke (test)" in capsys.readouterr().err
    assert int8.main([str(bundle), "--int8", "--graphs", "decoder", *FAST]) == 0
    out = capsys.readouterr().out
    assert "not the faster sub-pixel form: sub-pixel export broke (test)" in out
    assert B.read_manifest(bundle).graph(B.DECODER).variants["int8"].source_form == {}


def test_subpixel_form_of_another_model_is_refused(bundle, tmp_path, capsys):
    """Without a recorded sha256 (an in-memory export) the FP32 check is what catches the wrong weights."""
    from tests.conftest import make_model
    from vae_model import save_checkpoint

    other = tmp_path / "other.pt"
    save_checkpoint(other, make_model(TINY, seed=3))
    assert (
        int8.main(
            [
                str(bundle),
                "--int8",
                "--graphs",
                "decoder",
                "--decoder-form",
                "subpixel",
                "--checkpoint",
                str(other),
                *FAST,
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "refusing" in err and "decoder.onnx" in err and "Traceback" not in err
    assert not (bundle / "decoder.int8.onnx").exists()
    # the default (auto) with an explicit --checkpoint: that checkpoint was asked for, so an error, not a fallback
    assert int8.main([str(bundle), "--int8", "--graphs", "decoder", "--checkpoint", str(other), *FAST]) == 2
    assert "refusing" in capsys.readouterr().err and not (bundle / "decoder.int8.onnx").exists()
