"""A short, bounded run of the serving load test on a tiny bundle: every field of serving.json, rows counted by the
server equal to rows sent, the table, and bad options."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("tritonclient.grpc", reason="the `serve` extra (tritonclient) is not installed")

from benchmarks.serving import SCHEMA, main  # noqa: E402
from export.to_onnx import export_bundle  # noqa: E402

pytestmark = pytest.mark.serve


@pytest.fixture(scope="module")
def bundle(tiny_checkpoint, tmp_path_factory):
    return export_bundle(tiny_checkpoint, tmp_path_factory.mktemp("serving") / "bundle", log=lambda *a: None)


def test_bounded_run_writes_every_field(bundle, tmp_path, capsys):
    out = tmp_path / "out"
    assert (
        main(
            [
                str(bundle),
                "--requests",
                "12",
                "--concurrency",
                "3",
                "--batch-per-request",
                "2",
                "--modes",
                "on",
                "--warmup",
                "2",
                "--protocol",
                "http",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    report = json.loads((out / "serving.json").read_text())
    assert report["schema"] == SCHEMA and report["concurrency"] == 3 and report["batch_per_request"] == 2
    assert "onnxruntime" in report["environment"]["versions"]
    on = report["modes"]["on"]
    assert list(report["modes"]) == ["on"]
    assert on["requests"] == 12 and on["errors"] == 0 and not on["stopped_by_time"]
    assert on["server_rows"] == 24  # the server's own count: every row sent was inferred once
    assert 1 <= on["server_executions"] <= 12 and on["rows_per_execution"] == 24 / on["server_executions"]
    assert on["latency"]["n"] == 12 and on["latency"]["p50_ms"] <= on["latency"]["p99_ms"]
    assert on["requests_per_s"] > 0 and on["rows_per_s"] == pytest.approx(2 * on["requests_per_s"])
    table = capsys.readouterr().out
    assert "dynamic batching" in table and "p99 ms" in table and f"wrote {out / 'serving.json'}" in table


@pytest.mark.parametrize(
    "argv, expect",
    [
        (["--modes", "sometimes"], "--modes: expected on and/or off"),
        (["--concurrency", "0"], "--concurrency must be >= 1"),
        (["--batch-per-request", "65"], "--batch-per-request 65 exceeds --max-batch 64"),
    ],
)
def test_bad_options_exit_2(bundle, tmp_path, capsys, argv, expect):
    assert main([str(bundle), "--out", str(tmp_path), *argv]) == 2
    assert expect in capsys.readouterr().err
    assert not (tmp_path / "serving.json").exists()
