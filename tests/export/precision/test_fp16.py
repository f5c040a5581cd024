"""export.precision.fp16: FP16 range check, measured choice of FP32-kept nodes, the written and registered variant, CLI."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, numpy_helper  # noqa: E402

from export.precision import fp16  # noqa: E402
from export.precision.common import (
    evaluation_sets,
    expose_intermediates,
    make_budget,
    open_bundle,  # noqa: E402
    ort_session,
    precision_table,
    run_graph,
)
from export.to_onnx import export_model  # noqa: E402
from runtime import bundle as B  # noqa: E402
from runtime.files import sha256_file  # noqa: E402
from tests.conftest import TINY, make_model  # noqa: E402


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("fp16") / "bundle"
    # The plain decoder: overflowing_decoder needs its chain of two ConvTranspose layers, which the (default)
    # speed rewrite merges into the stem and the sub-pixel block of the tiny model.
    export_model(make_model(TINY), out, pixel_range=(-1.0, 1.0), rewrite=False, log=lambda *a: None)
    return out


@pytest.fixture
def bundle(tiny_bundle, tmp_path):
    return shutil.copytree(tiny_bundle, tmp_path / "bundle")


@pytest.fixture(scope="module")
def decoder_sets(tiny_bundle):
    data, _ = open_bundle(tiny_bundle, [B.DECODER])
    return evaluation_sets(data, B.DECODER, samples=8, seed=3)


def _init(model, name):
    return next(t for t in model.graph.initializer if t.name == name)


def _scale(model, name, factor):
    t = _init(model, name)
    t.CopyFrom(numpy_helper.from_array((numpy_helper.to_array(t) * factor).astype(np.float32), name))


def overflowing_decoder(bundle_dir, sets, peak=1e6):
    """The tiny decoder with its first ConvTranspose's weights and bias scaled so that its output peaks at `peak`
    (> 65504), and the next ConvTranspose's weights scaled back: LeakyReLU is positively homogeneous, so the FP32
    function is unchanged while the activation between the two is far outside FP16's range.
    Returns (model, the node names of the overflowing region: conv, its activation, the next conv)."""
    model = onnx.load(str(bundle_dir / "decoder.onnx"))
    nodes = list(model.graph.node)
    convs = [n for n in nodes if n.op_type == "ConvTranspose"]
    first, second = convs[0], convs[1]
    act = next(n for n in nodes if first.output[0] in n.input)
    assert act.op_type == "LeakyRelu" and act.output[0] in second.input
    got = run_graph(ort_session(expose_intermediates(model, [first.output[0]])), sets[0].inputs)
    factor = peak / float(np.abs(got[first.output[0]]).max())
    _scale(model, first.input[1], factor)
    _scale(model, first.input[2], factor)
    _scale(model, second.input[1], 1.0 / factor)
    return model, (first.name, act.name, second.name)


def test_benign_graph_keeps_no_node(tiny_bundle, decoder_sets):
    model = onnx.load(str(tiny_bundle / "decoder.onnx"))
    res = fp16.search_fp16(
        model, B.DECODER, decoder_sets, make_budget("fp16", B.DECODER), progress=False, log=lambda *a: None
    )
    assert res.kept_fp32_nodes == ()
    assert res.search.evaluations == 1  # all-FP16 passed at once: no ranking needed
    assert res.passed and res.range_report, res.report_emulated.table()
    img = [o for o in res.report_emulated.outputs if o.psnr is not None]
    assert img and all(o.psnr >= 40 for o in img)
    # and it really is FP16: weights halved in size, not bit-identical to FP32
    assert all(t.data_type == TensorProto.FLOAT16 for t in res.model.graph.initializer if t.dims and len(t.dims) > 1)
    assert all(o.max_abs > 0 for o in res.report_emulated.outputs)


def test_overflowing_region_is_exactly_what_stays_fp32(tiny_bundle, decoder_sets):
    model, region = overflowing_decoder(tiny_bundle, decoder_sets)
    fp32 = run_graph(ort_session(model), decoder_sets[0].inputs)[B.IMAGE]
    np.testing.assert_allclose(fp32, decoder_sets[0].expected[B.IMAGE], atol=1e-4)  # same function in FP32

    res = fp16.search_fp16(
        model, B.DECODER, decoder_sets, make_budget("fp16", B.DECODER), progress=False, log=lambda *a: None
    )
    assert set(res.kept_fp32_nodes) == set(region), res.search.log
    assert res.passed, res.report_emulated.table() + "\n" + res.report_ort.table()
    assert "budget missed" in res.search.log[0] and "NaN" in res.search.log[0]
    # the ranking put the region first: each of its nodes alone in FP16 gives Inf/NaN
    assert {n for n, s in res.search.ranking[:3]} == set(region)
    assert all(np.isinf(s) for _, s in res.search.ranking[:3])
    assert all(np.isfinite(s) for _, s in res.search.ranking[3:])
    # inside the region data stays FP32: no FP16 round trip between the kept nodes (fuse_fp32_islands)
    inferred = onnx.shape_inference.infer_shapes(res.model)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    by_name = {n.name: n for n in res.model.graph.node}
    conv, act, nxt = (by_name[n] for n in region)
    assert types[conv.output[0]] == TensorProto.FLOAT and conv.output[0] in act.input
    assert types[act.output[0]] == TensorProto.FLOAT and act.output[0] in nxt.input


def test_range_check_names_the_overflowing_node(tiny_bundle, decoder_sets):
    model, (conv, act, nxt) = overflowing_decoder(tiny_bundle, decoder_sets)
    report = fp16.range_check(model, [s.inputs for s in decoder_sets], B.DECODER)
    assert not report
    kinds = {(i.node, i.kind) for i in report.issues}
    assert (conv, "output") in kinds and (act, "input") in kinds and (nxt, "input") in kinds
    origins = [i.node for i in report.issues if i.kind == "nonfinite"]
    assert origins == [conv]  # Inf starts at the conv, not downstream
    assert conv in report.text() and "65504" in report.text()


def test_range_check_reports_weights_beyond_fp16(tiny_bundle, decoder_sets):
    model = onnx.load(str(tiny_bundle / "decoder.onnx"))
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    _scale(model, conv.input[1], 1e7)
    report = fp16.range_check(model, [decoder_sets[0].inputs], B.DECODER)
    weight = [i for i in report.issues if i.kind == "weight"]
    assert [i.node for i in weight] == [conv.name] and weight[0].tensor == conv.input[1]
    assert weight[0].value > 65504


def test_cpu_provider_hides_fp16_overflow_and_emulation_shows_it(tiny_bundle, decoder_sets):
    """Why the search measures under FP16 storage emulation: ONNX Runtime's x86 CPU provider runs FP16 Conv /
    ConvTranspose in FP32 and drops the casts between them, so the overflow a GPU would hit never happens there."""
    model, _ = overflowing_decoder(tiny_bundle, decoder_sets)
    all_fp16 = fp16.convert_fp16(model)
    cpu = run_graph(ort_session(all_fp16), decoder_sets[0].inputs)[B.IMAGE]
    emulated = run_graph(ort_session(fp16.emulate_fp16_storage(all_fp16)), decoder_sets[0].inputs)[B.IMAGE]
    assert not np.isfinite(emulated).all()
    assert np.isfinite(cpu).all(), "ORT CPU now computes FP16 for real: the emulation may no longer be needed"


def test_cli_writes_and_registers_variants(bundle, capsys):
    assert fp16.main([str(bundle), "--samples", "8", "--no-progress"]) == 0
    out = capsys.readouterr().out
    m = B.read_manifest(bundle)
    for graph in B.GRAPHS:
        v = m.graph(graph).variants["fp16"]
        assert v.file == f"{graph}.fp16.onnx" and v.sha256 == sha256_file(bundle / v.file)
        assert v.kept_fp32_nodes == ()
        assert v.accuracy["passed"] and v.accuracy["onnxruntime_cpu"]["passed"]
        assert v.accuracy["fp16_storage_emulation"]["passed"] and v.accuracy["range_check"]["clean"]
        assert v.budget == (
            {"image": {"min_psnr": 40.0}}
            if graph == B.DECODER
            else {"mu": {"rel_l2": 0.01}, "logvar": {"rel_l2": 0.01}}
        )
        sess = ort_session(bundle / v.file)
        assert [i.type for i in sess.get_inputs()] == ["tensor(float)"]
        assert {o.type for o in sess.get_outputs()} == {"tensor(float)"}
    assert not list(bundle.glob(".*tmp"))
    table = precision_table(bundle)
    assert table in out and "decoder.fp16.onnx" in table and "encoder.fp16.onnx" in table


def test_cli_budget_missed_writes_nothing(bundle, capsys):
    # 200 dB is more than even FP32 ONNX Runtime vs PyTorch reaches: the search itself must give up
    assert (
        fp16.main([str(bundle), "--graphs", "decoder", "--budget-psnr", "200", "--samples", "4", "--no-progress"]) == 1
    )
    err = capsys.readouterr().err
    assert "decoder" in err and "not written" in err and "Traceback" not in err
    assert not (bundle / "decoder.fp16.onnx").exists()
    assert "fp16" not in B.read_manifest(bundle).graph(B.DECODER).variants


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--graphs", "middle"], "unknown graph"),
        (["--samples", "-1"], "--samples"),
    ],
)
def test_cli_bad_options_exit_2(bundle, capsys, args, needle):
    assert fp16.main([str(bundle), *args]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_cli_refuses_missing_or_changed_bundle(bundle, tmp_path, capsys):
    assert fp16.main([str(tmp_path / "nope")]) == 2
    assert "not a bundle folder" in capsys.readouterr().err
    with open(bundle / "decoder.onnx", "ab") as f:
        f.write(b"\0")
    assert fp16.main([str(bundle), "--graphs", "decoder"]) == 2
    err = capsys.readouterr().err
    assert "decoder.onnx" in err and "sha256" in err


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--budget-psnr", "nan"], "--budget-psnr: expected a finite number > 0, got nan"),
        (["--budget-rel-l2", "-1"], "--budget-rel-l2: expected a finite number > 0"),
        (["--seed", "-1"], "--seed: expected an integer >= 0"),
    ],
)
def test_cli_bad_budget_or_seed_is_a_usage_error(bundle, capsys, args, needle):
    with pytest.raises(SystemExit) as e:
        fp16.main([str(bundle), *args])
    err = capsys.readouterr().err
    assert e.value.code == 2 and needle in err and "Traceback" not in err
