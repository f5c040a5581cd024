"""`python -m benchmarks.latency BUNDLE --record-auto` on the tiny bundle, end to end: what it writes into vae.json
(this machine's fingerprint, engine versions, the files' sha256, the medians latency.json reports), what it prints,
that runtime.load(backend="auto") then takes the backend it ranked first, that recording again replaces only this
machine's record, and the options it refuses before measuring."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

import runtime
from benchmarks.latency import main
from runtime import bundle as B
from runtime.backends import auto

needs_openvino = pytest.mark.skipif(
    importlib.util.find_spec("openvino") is None, reason="openvino is not installed (the JetPack runtime has none)"
)
QUICK = ["--iterations", "3", "--rounds", "1", "--warmup", "0", "--no-cold-start", "--no-accuracy", "--no-progress"]
OTHER = B.MachineSpec("Some Other CPU", ("avx2",), 64, None)


def record_auto(bundle: Path, *args: str) -> int:
    return main([str(bundle), *QUICK, "--record-auto", *args])


@needs_openvino
def test_record_auto_writes_this_machines_medians_and_auto_uses_them(bundle_copy, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["--backends", "torch,onnxruntime,openvino", "--precision", "fp32", "--batch", "1,3", "--out", str(out)]
    assert record_auto(bundle_copy, *args) == 0
    printed = capsys.readouterr().out
    m = B.read_manifest(bundle_copy)
    (rec,) = m.auto
    assert rec.machine == auto.this_machine(None)
    assert rec.versions == {b: auto.engine_version(b) for b in ("onnxruntime", "openvino")}
    assert set(rec.precisions) == {"fp32"} and set(rec.precisions["fp32"]) == {"decoder", "encoder"}
    report = json.loads((out / "latency.json").read_text())
    assert rec.measured == report["created"]
    for g, measured in rec.precisions["fp32"].items():
        assert (measured.file, measured.sha256) == (m.graphs[g].file, B.sha256_file(bundle_copy / m.graphs[g].file))
        rows = [r for r in report["results"] if r["graph"] == g and r["backend"] in ("onnxruntime", "openvino")]
        assert measured.median_ms == {
            n: {r["backend"]: round(r["stats"]["p50_ms"], 4) for r in rows if r["batch"] == n} for n in (1, 3)
        }  # torch was measured too, and is not recorded
    assert rec.harness["rounds"] == 1 and rec.harness["iterations"] == 3 and "--record-auto" in rec.harness["command"]
    ranking = auto.rank(rec, "fp32", ("decoder", "encoder"), ("onnxruntime", "openvino"))
    assert f"  fp32: {ranking.order[0]} ({ranking.describe()})" in printed.splitlines()
    assert "added the record of this machine" in printed
    with runtime.load(bundle_copy) as rt:
        assert rt.backend_name == ranking.order[0]
        assert rt.describe()["chosen"].startswith("auto: recorded choice for fp32 on this machine")


@needs_openvino
def test_recording_again_replaces_only_this_machines_record(bundle_copy, capsys):
    m = B.read_manifest(bundle_copy)
    median = {1: {"onnxruntime": 1.0, "openvino": 2.0}}
    other = B.AutoRecord(
        OTHER,
        {"onnxruntime": "1.0.0"},
        {"fp32": {"decoder": B.MeasuredGraph(m.graphs["decoder"].file, m.graphs["decoder"].sha256, median)}},
        "2025-01-01T00:00:00+0000",
    )
    B.write_manifest(bundle_copy, m.with_auto_record(other))
    common = ["--backends", "onnxruntime,openvino", "--graphs", "decoder", "--precision", "fp32"]
    assert record_auto(bundle_copy, *common, "--batch", "1") == 0
    assert record_auto(bundle_copy, *common, "--batch", "2") == 0
    assert "replaced the record of this machine" in capsys.readouterr().out
    records = B.read_manifest(bundle_copy).auto
    assert [r.machine for r in records] == [OTHER, auto.this_machine(None)]
    assert records[0] == other
    assert set(records[1].precisions["fp32"]["decoder"].median_ms) == {2}  # the second run's, not the first's


def test_a_precision_measured_on_one_backend_is_recorded_and_said_to_leave_no_choice(bundle_copy, capsys):
    args = ["--backends", "onnxruntime", "--graphs", "decoder", "--precision", "fp32", "--batch", "1"]
    assert record_auto(bundle_copy, *args, "--threads", "1") == 0
    assert "  fp32: onnxruntime (onnxruntime the only backend measured (no choice) over decoder b1)" in (
        capsys.readouterr().out
    )
    (rec,) = B.read_manifest(bundle_copy).auto
    assert rec.machine.threads == 1 and set(rec.versions) == {"onnxruntime"}


def test_nothing_measured_records_nothing_and_exits_1(bundle_copy, capsys):
    before = (bundle_copy / "vae.json").read_bytes()
    args = ["--backends", "onnxruntime", "--graphs", "decoder", "--precision", "int8", "--batch", "1"]
    assert record_auto(bundle_copy, *args) == 1  # the tiny bundle has no int8 variant: a skipped row
    assert "--record-auto: nothing recorded: no onnxruntime / openvino row was measured" in capsys.readouterr().err
    assert (bundle_copy / "vae.json").read_bytes() == before


@pytest.mark.parametrize(
    "args, message",
    [
        (["--device", "cuda"], "--record-auto: records the CPU backends' speed, got --device cuda:0"),
        (["--backends", "torch"], "--record-auto: needs some of ['onnxruntime', 'openvino'] in --backends"),
        (["--spinning", "off"], "drop --spinning and --batch-split"),
        (["--batch-split", "off"], "drop --spinning and --batch-split"),
    ],
)
def test_options_it_cannot_record_exit_2_before_measuring(bundle_copy, capsys, args, message):
    before = (bundle_copy / "vae.json").read_bytes()
    assert record_auto(bundle_copy, *args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert (bundle_copy / "vae.json").read_bytes() == before
