"""export.precision.bf16: OpenVINO's bf16 execution of the FP32 graphs, measured against the FP16 budget and recorded in
vae.json only when it passes; exit codes; the one-line refusal on a CPU without native bf16 (the capability probe is
monkeypatched, OpenVINO itself is real)."""

from __future__ import annotations

import re

import pytest

pytest.importorskip("openvino")
pytest.importorskip("onnxruntime")

from export.precision import bf16  # noqa: E402
from export.precision.common import precision_table  # noqa: E402
from runtime import bundle as B  # noqa: E402
from runtime.backends.openvino import Bf16Support, cpu_bf16_support  # noqa: E402

needs_bf16 = pytest.mark.skipif(
    not cpu_bf16_support().native, reason="this CPU cannot run bf16 natively: " + cpu_bf16_support().refusal()
)


@needs_bf16
def test_records_bf16_for_every_graph(bundle_copy, capsys):
    assert bf16.main([str(bundle_copy), "--samples", "8"]) == 0
    m = B.read_manifest(bundle_copy)
    for graph, spec in m.graphs.items():
        rec = spec.engine_precisions["bf16"]
        assert (rec.engine, rec.file, rec.sha256, rec.device) == ("openvino", spec.file, spec.sha256, "CPU")
        assert rec.properties == {"INFERENCE_PRECISION_HINT": "bf16"}
        assert rec.versions["openvino"].startswith("20")
        assert rec.accuracy["passed"] is True and rec.accuracy["inference_precision"] == "bf16"
        assert rec.accuracy["cpu"]["bf16_flags"] and "BF16" in rec.accuracy["cpu"]["openvino_capabilities"]
        assert rec.budget == (
            {"image": {"min_psnr": 40.0}}
            if graph == "decoder"
            else {"mu": {"rel_l2": 0.01}, "logvar": {"rel_l2": 0.01}}
        )  # the FP16 budget
        assert rec.accuracy["worst_case"]["nonfinite"] == 0
        assert spec.variants == {}  # no file: nothing among the variants
    out = capsys.readouterr().out
    assert precision_table(bundle_copy) in out
    assert "decoder  bf16      openvino on fp32" in out


@needs_bf16
def test_a_missed_budget_records_nothing(bundle_copy, capsys):
    before = (bundle_copy / B.MANIFEST_NAME).read_bytes()
    assert bf16.main([str(bundle_copy), "--graphs", "decoder", "--budget-psnr", "300", "--samples", "4"]) == 1
    err = capsys.readouterr().err
    assert "decoder: OpenVINO bf16 misses the FP16 budget" in err and "bf16 not recorded for decoder" in err
    assert (bundle_copy / B.MANIFEST_NAME).read_bytes() == before


def test_refused_on_a_cpu_without_bf16(bundle_copy, monkeypatch, capsys):
    monkeypatch.setattr(bf16, "cpu_bf16_support", lambda core=None: Bf16Support((), ("FP32", "INT8"), "2026.4.1"))
    before = (bundle_copy / B.MANIFEST_NAME).read_bytes()
    assert bf16.main([str(bundle_copy)]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "error: bf16: this CPU cannot run bf16 natively: /proc/cpuinfo flags: none of avx512_bf16, amx_bf16 "
        "(needed: one of avx512_bf16, amx_bf16); OpenVINO 2026.4.1 CPU OPTIMIZATION_CAPABILITIES: FP32, INT8 "
        "(needed: BF16)"
    ]
    assert (bundle_copy / B.MANIFEST_NAME).read_bytes() == before


def test_a_bf16_flag_without_openvino_support_is_refused_too(bundle_copy, monkeypatch, capsys):
    monkeypatch.setattr(
        bf16, "cpu_bf16_support", lambda core=None: Bf16Support(("avx512_bf16",), ("FP32", "INT8"), "2026.4.1")
    )
    assert bf16.main([str(bundle_copy)]) == 2
    assert "/proc/cpuinfo flags: avx512_bf16 " in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--graphs", "vae"], r"--graphs: unknown graph\(s\) \['vae'\]"),
        (["--threads", "0"], r"--threads must be >= 1, got 0"),
    ],
)
def test_bad_input_exits_2(bundle_copy, capsys, args, message):
    assert bf16.main([str(bundle_copy), *args]) == 2
    assert re.search(message, capsys.readouterr().err)


def test_not_a_bundle_exits_2(tmp_path, capsys):
    assert bf16.main([str(tmp_path)]) == 2
    assert "no bundle manifest here" in capsys.readouterr().err
