"""The per-precision matmul ceilings: which ceiling a row is held against, and probes that measure on this machine."""

from __future__ import annotations

import pytest

from benchmarks.ceiling import build_probes, ceiling_precision


@pytest.mark.parametrize(
    "precision, device, in_effect, expected",
    [
        ("fp32", "cpu", None, "fp32"),
        ("fp16", "cpu", None, "fp32"),  # an fp16 variant on a CPU computes in FP32
        ("int8", "cpu", None, "int8"),
        ("bf16", "cpu", None, "bf16"),
        ("default", "cpu", "bf16", "bf16"),  # the OpenVINO-default peer: what it runs, read back
        ("default", "cpu", "f32", "fp32"),
        ("fp16", "cuda:0", None, None),  # no GPU ceiling is measured: no share rather than one against the CPU's
    ],
)
def test_ceiling_of_a_row(precision, device, in_effect, expected):
    assert ceiling_precision(precision, device, in_effect) == expected


def test_fp32_and_int8_probes_on_onnxruntime_measure():
    probes, missing = build_probes({"fp32", "int8"}, threads=1, engines={"onnxruntime"})
    assert missing == {}
    assert [(p.precision, p.engine) for p in probes] == [
        ("fp32", "numpy BLAS sgemm"),
        ("fp32", "onnxruntime MatMul"),
        ("int8", "onnxruntime MatMulInteger u8s8"),
    ]
    for p in probes:
        p.repeats = 1
        assert p.measure() > 0


def test_no_engine_for_a_precision_says_why():
    probes, missing = build_probes({"bf16"}, threads=1, engines={"onnxruntime"})
    assert probes == [] and missing == {"bf16": "no engine of the rows runs it"}


def test_openvino_bf16_probe_or_the_reason():
    pytest.importorskip("openvino")
    from runtime.backends.openvino import cpu_bf16_support

    probes, missing = build_probes({"bf16"}, threads=1, engines={"openvino"})
    if cpu_bf16_support().native:
        assert [p.engine for p in probes] == ["openvino bf16 MatMul"] and missing == {}
        probes[0].repeats = 1
        assert probes[0].measure() > 0
    else:
        assert probes == [] and "cannot run bf16 natively" in missing["bf16"]
