"""The latency table as people read it, on synthetic reports where the right text is known: what was not measured
is listed once under the table, fp16 on a CPU says what it is, each row's share is against its own precision's
ceiling, the peer row gets its ratio column, and a legend explains the columns."""

from __future__ import annotations

import itertools

import pytest

from benchmarks.report import FP16_CPU_NOTE, format_table


def _stats(p50: float, batch: int) -> dict:
    return {
        "n": 10,
        "batch": batch,
        "mean_ms": p50,
        "stdev_ms": 0.1,
        "cv": 0.01,
        "min_ms": 0.9 * p50,
        "p1_ms": 0.9 * p50,
        "p5_ms": 0.95 * p50,
        "p50_ms": p50,
        "p90_ms": 1.1 * p50,
        "p95_ms": 1.2 * p50,
        "p99_ms": 1.3 * p50,
        "max_ms": 1.4 * p50,
        "throughput": batch * 1000 / p50,
    }


def _row(
    backend,
    graph,
    precision,
    batch,
    p50=None,
    *,
    status="ok",
    reason="",
    ceiling="fp32",
    share=0.5,
    peer=False,
    vs_peer=None,
    accuracy=None,
):
    r = {
        "key": f"{backend}/{graph}/{precision}/b{batch}",
        "backend": backend,
        "graph": graph,
        "precision": precision,
        "batch": batch,
        "status": status,
        "reason": reason,
        "device": "cpu",
        "peer": peer,
        "stats": _stats(p50, batch) if status == "ok" else None,
        "round_p50_ms": [p50] * 2 if p50 else [],
        "drift": 1.02,
        "round_cv": 0.01,
        "gflop_per_call": 1.0,
        "gflops": 10.0,
        "ceiling_share": share if status == "ok" else None,
        "ceiling_precision": ceiling if status == "ok" else None,
        "accuracy": accuracy,
        "vs_peer": vs_peer,
    }
    if peer:
        r["in_effect"] = "bf16"
    return r


def _report(rows, backends, precisions, graphs=("decoder", "encoder"), batches=(1, 64), by_precision=None, peer=None):
    by_precision = by_precision or {
        "fp32": {"best": 200.0, "samples": [190.0, 200.0], "engines": {"numpy BLAS sgemm": [190.0, 200.0]}}
    }
    return {
        "plan": {
            "backends": list(backends),
            "precisions": list(precisions),
            "graphs": list(graphs),
            "batches": list(batches),
        },
        "environment": {"device": "cpu"},
        "results": rows,
        "peer": peer,
        "cold_start": [],
        "matmul_ceiling_gflops": {
            "best": 200.0,
            "samples": [190.0, 200.0],
            "threads": 2,
            "by_precision": by_precision,
            "unavailable": {},
        },
    }


def _body(text: str) -> list[str]:
    """The table's rows: the lines between the header rule and the first line after the rows."""
    lines = text.splitlines()
    out = []
    for line in lines[2:]:
        if not line or line.split()[0] not in ("torch", "onnxruntime", "openvino", "ov-default", "cpp", "tensorrt"):
            break
        out.append(line)
    return out


def test_skipped_combinations_are_listed_once_under_the_table_not_as_rows():
    """`make demo`'s 8 rows of torch fp16/int8 'skipped' become two lines under the table, with the reason."""
    rows = []
    for backend, precision, graph, batch in itertools.product(
        ("torch", "onnxruntime"), ("fp32", "fp16", "int8"), ("decoder", "encoder"), (1, 64)
    ):
        if backend == "torch" and precision != "fp32":
            rows.append(
                _row(
                    backend,
                    graph,
                    precision,
                    batch,
                    status="skipped",
                    reason=f"BackendError: backend 'torch' runs precisions ['fp32'], got '{precision}'",
                )
            )
        else:
            rows.append(
                _row(backend, graph, precision, batch, 1.0 + batch, ceiling={"int8": "int8"}.get(precision, "fp32"))
            )
    rows.append(_row("onnxruntime", "decoder", "bf16", 1, status="error", reason="RuntimeError: boom"))
    text = format_table(_report(rows, ("torch", "onnxruntime"), ("fp32", "fp16", "int8", "bf16")))
    body = _body(text)
    assert len(body) == 16 and not any("skipped" in line or "error" in line for line in body)
    assert "not measured: 9 of 25 combinations" in text
    assert (
        "torch fp16 (every graph and batch): skipped: BackendError: backend 'torch' runs precisions ['fp32'], "
        "got 'fp16'"
    ) in text
    assert "torch int8 (every graph and batch): skipped:" in text
    assert "onnxruntime bf16 (decoder b1): error: RuntimeError: boom" in text
    assert text.count("got 'fp16'") == 1


def test_options_with_the_same_reason_share_one_line():
    rows = [
        _row(b, "decoder", "int8", n, status="skipped", reason="BundleError: graph 'decoder' has no 'int8' variant")
        for b in ("onnxruntime", "openvino")
        for n in (1, 64)
    ]
    rows += [_row(b, "encoder", "int8", n, 2.0, ceiling="int8") for b in ("onnxruntime", "openvino") for n in (1, 64)]
    text = format_table(_report(rows, ("onnxruntime", "openvino"), ("int8",)))
    assert (
        "onnxruntime int8, openvino int8 (decoder every batch): skipped: BundleError: graph 'decoder' has no "
        "'int8' variant"
    ) in text


def test_fp16_on_the_onnxruntime_cpu_provider_says_it_is_slower():
    rows = [_row("onnxruntime", "decoder", "fp32", 64, 30.0), _row("onnxruntime", "decoder", "fp16", 64, 66.0)]
    text = format_table(_report(rows, ("onnxruntime",), ("fp32", "fp16"), graphs=("decoder",), batches=(64,)))
    flat = " ".join(text.split())
    assert FP16_CPU_NOTE in flat
    assert "fp16 / fp32 median latency here: onnxruntime decoder b64 2.20x" in flat
    # no fp16 row, no note
    assert "FP16" not in format_table(
        _report(rows[:1], ("onnxruntime",), ("fp32",), graphs=("decoder",), batches=(64,))
    )


def test_each_row_is_held_against_its_own_precisions_ceiling():
    """An INT8 row's share is in the %ceil(int8) column only: never a share against the FP32 ceiling."""
    rows = [
        _row("onnxruntime", "decoder", "fp32", 64, 30.0, ceiling="fp32", share=0.8),
        _row("onnxruntime", "decoder", "int8", 64, 15.0, ceiling="int8", share=0.4),
        _row("tensorrt", "decoder", "fp16", 64, 5.0, ceiling=None, share=None),
    ]
    by = {
        "fp32": {"best": 200.0, "samples": [200.0], "engines": {"numpy BLAS sgemm": [200.0]}},
        "int8": {"best": 800.0, "samples": [800.0], "engines": {"onnxruntime MatMulInteger u8s8": [800.0]}},
    }
    text = format_table(
        _report(
            rows,
            ("onnxruntime", "tensorrt"),
            ("fp32", "int8", "fp16"),
            graphs=("decoder",),
            batches=(64,),
            by_precision=by,
        )
    )
    header = text.splitlines()[0]
    assert "%ceil(fp32)" in header and "%ceil(int8)" in header and "%ceil(bf16)" not in header
    body = {line.split()[2]: line.split() for line in _body(text)}
    fp32_col = header.split().index("%ceil(fp32)") - 3  # "p50 ms", "p90 ms", "p99 ms": two words in the header
    assert body["fp32"][fp32_col : fp32_col + 2] == ["80.0%", "-"]
    assert body["int8"][fp32_col : fp32_col + 2] == ["-", "40.0%"]
    assert body["fp16"][fp32_col : fp32_col + 2] == ["-", "-"]
    assert "int8 matmul ceiling: best 800.0 GOP/s" in text and "fp32 matmul ceiling: best 200.0 GFLOP/s" in text


def test_peer_row_ratio_column_and_legend():
    acc = {"metric": "min_psnr_db", "value": 55.4, "passed": True}
    rows = [
        _row("onnxruntime", "decoder", "fp32", 64, 20.0, vs_peer=1.5, accuracy=acc),
        _row(
            "ov-default",
            "decoder",
            "default",
            64,
            30.0,
            ceiling="bf16",
            peer=True,
            vs_peer=1.0,
            accuracy={"metric": "min_psnr_db", "value": 48.0, "passed": True},
        ),
        _row(
            "openvino",
            "decoder",
            "bf16",
            64,
            40.0,
            ceiling="bf16",
            vs_peer=0.75,
            accuracy={"metric": "min_psnr_db", "value": 31.0, "passed": False},
        ),
    ]
    by = {
        "fp32": {"best": 200.0, "samples": [200.0], "engines": {}},
        "bf16": {"best": 400.0, "samples": [400.0], "engines": {"openvino bf16 MatMul": [400.0]}},
    }
    text = format_table(
        _report(
            rows,
            ("onnxruntime", "openvino"),
            ("fp32", "bf16"),
            graphs=("decoder",),
            batches=(64,),
            by_precision=by,
            peer={"bundle": "plain/", "openvino": "2026.4", "properties": {}, "inference_precision": "bf16"},
        )
    )
    assert "vs peer" in text.splitlines()[0]
    body = _body(text)
    assert [line.split()[0] for line in body] == ["onnxruntime", "openvino", "ov-default"]  # the peer last
    assert body[0].endswith("55.4dB ok   1.50x") and body[1].endswith("31.0dB MISS   0.75x")
    flat = " ".join(text.split())
    assert "compile_model(CPU) of the plain export plain/ with no properties" in flat
    assert "inference precision in effect bf16" in flat
    for words in (
        "cv: coefficient of variation (stdev / mean) of the per-round throughput",
        "drift: max / min of the per-round median latencies",
        "%ceil(P): GFLOP/s as a share of the best P matmul rate measured in this run",
        "vs peer: the peer row's p50 / this row's p50",
    ):
        assert words in flat


@pytest.mark.parametrize("value, cell", [(None, "exact ok"), (2.5e-3, "2.5e-03 ok")])
def test_accuracy_cell(value, cell):
    metric = "min_psnr_db" if value is None else "max_rel_l2"
    rows = [_row("onnxruntime", "encoder", "fp32", 1, 1.0, accuracy={"metric": metric, "value": value, "passed": True})]
    assert _body(format_table(_report(rows, ("onnxruntime",), ("fp32",), graphs=("encoder",), batches=(1,))))[
        0
    ].endswith(cell)
