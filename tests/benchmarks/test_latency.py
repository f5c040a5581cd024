"""A short real benchmark run on a tiny bundle: every field, the JSON/CSV/PNG outputs, and --compare."""

from __future__ import annotations

import copy
import csv
import json

import pytest

from benchmarks.latency import SCHEMA, compare_reports, main
from export.to_onnx import export_bundle

STAT_FIELDS = {
    "n",
    "batch",
    "mean_ms",
    "stdev_ms",
    "cv",
    "min_ms",
    "p1_ms",
    "p5_ms",
    "p50_ms",
    "p90_ms",
    "p95_ms",
    "p99_ms",
    "max_ms",
    "throughput",
}


@pytest.fixture(scope="module")
def bench_run(tiny_checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    bundle = export_bundle(tiny_checkpoint, root / "bundle", log=lambda *a: None)
    out = root / "out"
    rc = main(
        [
            str(bundle),
            "--backends",
            "torch,onnxruntime",
            "--batch",
            "1,4",
            "--iterations",
            "6",
            "--rounds",
            "2",
            "--warmup",
            "0.05",
            "--checkpoint",
            str(tiny_checkpoint),
            "--out",
            str(out),
            "--no-progress",
            "--cold-start-runs",
            "2",
            "--spinning",
            "off",
            "--batch-split",
            "4",
        ]
    )
    assert rc == 0
    return bundle, out, json.loads((out / "latency.json").read_text())


def test_report_has_every_field(bench_run):
    _, _, report = bench_run
    assert report["schema"] == SCHEMA and report["schema_version"] == 1
    env = report["environment"]
    assert env["cpu"] and env["cpu_count"] >= 1 and "numpy" in env["versions"] and "onnxruntime" in env["versions"]
    ceiling = report["matmul_ceiling_gflops"]
    assert len(ceiling["samples"]) == 2 and ceiling["best"] == max(ceiling["samples"]) > 0
    rows = report["results"]
    assert {(r["backend"], r["graph"], r["batch"]) for r in rows} == {
        (b, g, n) for b in ("torch", "onnxruntime") for g in ("encoder", "decoder") for n in (1, 4)
    }
    for r in rows:
        assert r["status"] == "ok", r
        assert set(r["stats"]) == STAT_FIELDS
        s = r["stats"]
        assert s["n"] == 6 and s["min_ms"] <= s["p50_ms"] <= s["p90_ms"] <= s["p95_ms"] <= s["p99_ms"] <= s["max_ms"]
        assert len(r["round_p50_ms"]) == 2 and r["drift"] >= 1.0
        assert r["gflop_per_call"] > 0 and r["gflops"] > 0 and 0 < r["ceiling_share"]
        assert r["ceiling_precision"] == "fp32" and r["round_cv"] >= 0 and r["peer"] is False
        assert r["accuracy"]["passed"] and r["accuracy"]["budget_precision"] == "fp32"
    # FLOPs come from the PyTorch model: identical for every backend at the same graph and batch
    flops = {(r["graph"], r["batch"]): set() for r in rows}
    for r in rows:
        flops[(r["graph"], r["batch"])].add(r["gflop_per_call"])
    assert all(len(v) == 1 for v in flops.values())
    cold = {c["path"]: c for c in report["cold_start"]}
    assert cold["torch"]["status"] == "ok" and cold["onnxruntime/fp32"]["status"] == "ok"
    assert cold["onnxruntime/fp32"]["peak_rss_mib"] > 10 and cold["onnxruntime/fp32"]["first_result_s"] > 0
    for c in cold.values():  # best of 2 fresh processes: the fastest time, the highest peak RSS
        assert c["runs"] == 2 and len(c["first_result_all_s"]) == len(c["peak_rss_all_mib"]) == 2
        assert c["first_result_s"] == min(c["first_result_all_s"]) and c["peak_rss_mib"] == max(c["peak_rss_all_mib"])
    assert report["plan"]["spinning"] is False and report["plan"]["cold_start_runs"] == 2
    assert report["plan"]["batch_split"] == 4  # passed to runtime.load (tests/runtime/test_load.py checks its effect)


def test_csv_and_pngs(bench_run):
    _, out, report = bench_run
    rows = list(csv.DictReader(open(out / "latency.csv")))
    assert len(rows) == len(report["results"]) and float(rows[0]["p50_ms"]) > 0
    for png in ("latency_percentiles.png", "throughput.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_flags_an_injected_regression(bench_run, tmp_path, capsys):
    bundle, out, report = bench_run
    slow = copy.deepcopy(report)
    target = slow["results"][0]
    factor = 2.0 * max(r["drift"] for r in report["results"])  # well beyond whatever noise this machine showed
    for k in ("mean_ms", "min_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "max_ms"):
        target["stats"][k] *= factor
    text, changes = compare_reports(report, slow)
    verdicts = {c.key: c.verdict for c in changes}
    assert verdicts[target["key"]] == "regression"
    assert all(v == "same" for k, v in verdicts.items() if k != target["key"])
    assert "REGRESSION" in text
    text, changes = compare_reports(slow, report)
    assert {c.key: c.verdict for c in changes}[target["key"]] == "improvement"


def test_missing_variant_is_skipped_with_a_reason(bench_run, capsys):
    bundle, _, _ = bench_run
    assert (
        main(
            [
                str(bundle),
                "--backends",
                "onnxruntime",
                "--graphs",
                "decoder",
                "--precision",
                "int8",
                "--batch",
                "1",
                "--iterations",
                "2",
                "--rounds",
                "1",
                "--warmup",
                "0",
                "--no-cold-start",
                "--no-progress",
            ]
        )
        == 0
    )
    assert "skipped" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--backends", "jax"], "--backends: unknown ['jax']"),
        (["--graphs", "middle"], "--graphs: unknown ['middle']"),
        (["--precision", "fp8"], "--precision: unknown ['fp8']"),
        (["--threads", "-1"], "--threads must be >= 1"),
        (["--duration", "0"], "--duration > 0"),
    ],
)
def test_bad_options_exit_2(bench_run, capsys, args, message):
    bundle, _, _ = bench_run
    assert main([str(bundle), *args]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("value", ["1", "none", "-4"])
def test_bad_batch_split_exits_2(bench_run, capsys, value):
    bundle, _, _ = bench_run
    with pytest.raises(SystemExit) as e:
        main([str(bundle), "--batch-split", value])
    assert e.value.code == 2
    assert f"expected 'off' or a batch size >= 2, got {value!r}" in capsys.readouterr().err


def test_batch_beyond_memory_exits_2_before_allocating(bench_run, monkeypatch, capsys):
    """--batch 100000000 used to allocate its inputs first (issue 16): now sized against the machine's memory first."""
    from benchmarks import latency

    bundle, _, _ = bench_run

    def must_not_run(plan):
        raise AssertionError("the benchmark ran: nothing may be allocated before the batch sizes are checked")

    monkeypatch.setattr(latency, "run", must_not_run)
    assert main([str(bundle), "--batch", "1,100000000"]) == 2
    err = capsys.readouterr().err
    assert "--batch 100000000: the encoder's inputs and outputs alone need" in err and "Traceback" not in err
    # tiny model: encoder 3x32x32 in, 2 x 8 out; decoder 8 in, 3x32x32 out, float32 -> 12352 and 12320 bytes per item
    monkeypatch.setattr(latency, "physical_memory", lambda: 2 * 12352 * 1000)
    assert main([str(bundle), "--batch", "1001", "--graphs", "encoder"]) == 2
    assert (
        "the encoder's inputs and outputs alone need 11.8 MiB (12352 bytes per item), more than 50% of this "
        "machine's memory (23.6 MiB); the largest encoder batch allowed here is 1000"
    ) in capsys.readouterr().err
    monkeypatch.setattr(latency, "run", lambda plan: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):  # 1000 passes the check and reaches the benchmark
        main([str(bundle), "--batch", "1000", "--graphs", "encoder"])


def test_unusable_out_exits_2_before_measuring(bench_run, monkeypatch, tmp_path, capsys):
    """--out an existing file used to be found only after the whole run, by a traceback that lost it (issue 16)."""
    from benchmarks import latency

    bundle, _, _ = bench_run
    monkeypatch.setattr(latency, "run", lambda plan: pytest.fail("measured before --out was checked"))
    a_file = tmp_path / "results.txt"
    a_file.write_text("the user's notes\n")
    assert main([str(bundle), "--out", str(a_file)]) == 2
    err = capsys.readouterr().err
    assert f"--out {a_file}: exists and is not a folder" in err and "Traceback" not in err
    assert a_file.read_text() == "the user's notes\n"
    assert main([str(bundle), "--out", str(a_file / "sub")]) == 2  # under a file: cannot be created
    assert f"--out {a_file / 'sub'}: cannot create the folder" in capsys.readouterr().err
    (tmp_path / "out" / "latency.json").mkdir(parents=True)
    assert main([str(bundle), "--out", str(tmp_path / "out")]) == 2
    assert "['latency.json'] exist and are not files" in capsys.readouterr().err


def test_unreadable_compare_file_exits_2_before_measuring(bench_run, tmp_path, capsys):
    bundle, _, report = bench_run
    bad = tmp_path / "list.json"
    bad.write_text("[]")
    assert main([str(bundle), "--compare", str(bad)]) == 2
    assert "schema 'list'" in capsys.readouterr().err
    broken = copy.deepcopy(report)
    del broken["results"][0]["stats"]["cv"]
    bad.write_text(json.dumps(broken))
    assert main([str(bundle), "--compare", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "stats lack ['cv']" in err and "Traceback" not in err


def test_not_a_bundle_exits_2(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    assert "vae.json" in capsys.readouterr().err


def test_coldstart_cli(bench_run, tiny_checkpoint, capsys):
    from benchmarks import coldstart

    bundle, _, _ = bench_run
    assert coldstart.main([str(bundle), "--runs", "2", "--checkpoint", str(tiny_checkpoint)]) == 0
    out = capsys.readouterr().out
    assert "onnxruntime/fp32" in out and "torch " in out and "torch / onnxruntime/fp32:" in out
    assert coldstart.main([str(bundle), "--runs", "0"]) == 2
    assert "--runs must be >= 1" in capsys.readouterr().err
    assert coldstart.main([str(bundle.parent / "nothing")]) == 2
    assert "no bundle manifest here" in capsys.readouterr().err
    assert coldstart.main([str(bundle), "--checkpoint", str(bundle / "none.pt")]) == 2
    assert "none.pt: no such file" in capsys.readouterr().err


def _copy_without_encoder_file(bundle, dest):
    """The bundle with encoder.onnx gone but still listed in vae.json: like a device with engines for the decoder only."""
    import shutil

    shutil.copytree(bundle, dest)
    (dest / "encoder.onnx").unlink()
    return dest


def test_only_the_requested_graphs_are_loaded(bench_run, tmp_path, capsys):
    bundle, _, _ = bench_run
    partial = _copy_without_encoder_file(bundle, tmp_path / "partial")
    out = tmp_path / "out"
    assert (
        main(
            [
                str(partial),
                "--backends",
                "onnxruntime",
                "--graphs",
                "decoder",
                "--batch",
                "1",
                "--iterations",
                "2",
                "--rounds",
                "1",
                "--warmup",
                "0",
                "--no-progress",
                "--cold-start-runs",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    report = json.loads((out / "latency.json").read_text())
    assert [(r["graph"], r["status"]) for r in report["results"]] == [("decoder", "ok")]
    assert [(c["path"], c["status"]) for c in report["cold_start"]] == [("onnxruntime/fp32", "ok")]
    # Asking for the encoder too reaches the missing file, and the rows say so instead of crashing.
    capsys.readouterr()
    assert (
        main(
            [
                str(partial),
                "--backends",
                "onnxruntime",
                "--graphs",
                "encoder,decoder",
                "--batch",
                "1",
                "--iterations",
                "2",
                "--rounds",
                "1",
                "--warmup",
                "0",
                "--no-progress",
                "--no-cold-start",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "skipped: BundleError" in text and "encoder.onnx" in text


def test_device_is_passed_to_every_backend_and_recorded(bench_run, tiny_checkpoint, tmp_path):
    import onnxruntime
    import torch

    if torch.cuda.is_available() or "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this test checks the rows of a machine without CUDA")
    bundle, _, _ = bench_run
    out = tmp_path / "out"
    assert (
        main(
            [
                str(bundle),
                "--backends",
                "torch,onnxruntime,tensorrt",
                "--graphs",
                "decoder",
                "--device",
                "cuda",
                "--batch",
                "1",
                "--iterations",
                "2",
                "--rounds",
                "1",
                "--warmup",
                "0",
                "--no-progress",
                "--checkpoint",
                str(tiny_checkpoint),
                "--cold-start-runs",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    report = json.loads((out / "latency.json").read_text())
    assert report["plan"]["device"] == report["environment"]["device"] == "cuda:0"
    reasons = {r["backend"]: r["reason"] for r in report["results"]}
    assert all(r["status"] == "skipped" and r["device"] == "cuda:0" for r in report["results"])
    assert "torch.cuda.is_available() is False" in reasons["torch"]
    assert "CUDAExecutionProvider is not in this onnxruntime build" in reasons["onnxruntime"]
    assert reasons["tensorrt"]  # no TensorRT or no GPU here: either way a reason, not a traceback
    cold = {c["path"]: c for c in report["cold_start"]}
    assert cold["torch"]["status"] == "skipped" and cold["torch"]["reason"] == reasons["torch"]
    assert cold["onnxruntime/fp32"]["status"] == "skipped"
    assert list(csv.DictReader(open(out / "latency.csv")))[0]["device"] == "cuda:0"


def test_bad_device_exits_2(bench_run, capsys):
    from benchmarks import coldstart

    bundle, _, _ = bench_run
    assert main([str(bundle), "--device", "gpu"]) == 2
    assert "expected 'cpu', 'cuda' or 'cuda:N', got 'gpu'" in capsys.readouterr().err
    assert coldstart.main([str(bundle), "--device", "tpu"]) == 2
    assert "--device" in capsys.readouterr().err


def test_ctrl_c_during_the_cold_starts_keeps_the_latencies(bench_run, tmp_path, monkeypatch, capsys):
    from benchmarks import coldstart

    def interrupted(*args, **kwargs):  # what a Ctrl-C while waiting for the cold-start child raises
        raise KeyboardInterrupt

    monkeypatch.setattr(coldstart, "cold_start_runtime", interrupted)
    bundle, _, _ = bench_run
    out = tmp_path / "out"
    main(
        [
            str(bundle),
            "--backends",
            "onnxruntime",
            "--graphs",
            "decoder",
            "--batch",
            "1",
            "--iterations",
            "3",
            "--warmup",
            "0",
            "--rounds",
            "1",
            "--no-progress",
            "--out",
            str(out),
        ]
    )
    report = json.loads((out / "latency.json").read_text())
    assert report["interrupted"] is True and report["results"][0]["status"] == "ok"
    assert report["matmul_ceiling_gflops"]["threads"] >= 1
    assert "interrupted during the cold starts" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["-1", "dla0"])
def test_bad_dla_core_exits_2(bench_run, capsys, value):
    bundle, _, _ = bench_run
    with pytest.raises(SystemExit) as e:
        main([str(bundle), "--dla-core", value])
    assert e.value.code == 2
    assert f"expected a DLA core index >= 0, got {value!r}" in capsys.readouterr().err


def test_tensorrt_options_reach_the_backend_and_the_cold_start(bench_run, monkeypatch):
    """--dla-core / --cuda-graph are the tensorrt backend's options, in this process and in the cold-start child
    (which takes runtime.load options as JSON: proven here with an option the onnxruntime backend has)."""
    from benchmarks.coldstart import cold_start_runtime
    from benchmarks.latency import Plan, _load, _tensorrt_options

    bundle, _, _ = bench_run
    plan = Plan(
        bundle=bundle,
        backends=["tensorrt"],
        graphs=["decoder"],
        precisions=["fp16"],
        batches=[1],
        dla_core=1,
        cuda_graph=True,
    )
    assert _tensorrt_options(plan, "tensorrt") == {"dla_core": 1, "cuda_graph": True}
    assert _tensorrt_options(plan, "onnxruntime") == {}
    seen = {}
    monkeypatch.setattr("runtime.load", lambda bundle, **kw: seen.update(kw))
    _load(plan, "tensorrt", "fp16", ["decoder"])
    assert seen["dla_core"] == 1 and seen["cuda_graph"] is True and seen["backend"] == "tensorrt"
    monkeypatch.undo()
    assert cold_start_runtime(bundle, "onnxruntime", "fp32", "cpu", {"max_chunk": 16}).first_result_s > 0


def test_skipped_rows_are_summarised_under_the_table(bench_run, tiny_checkpoint, capsys):
    """A combination that does not exist is listed once, under the table, with the reason - not as a row each."""
    bundle, _, _ = bench_run
    assert (
        main(
            [
                str(bundle),
                "--backends",
                "torch,onnxruntime",
                "--precision",
                "fp32,fp16",
                "--batch",
                "1,2",
                "--iterations",
                "2",
                "--rounds",
                "1",
                "--warmup",
                "0",
                "--no-cold-start",
                "--no-progress",
                "--no-accuracy",
                "--checkpoint",
                str(tiny_checkpoint),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    table, _, below = text.partition("not measured:")
    assert "skipped" not in table and "fp16" not in table
    assert below.startswith(" 8 of 16 combinations")
    flat = " ".join(below.split())
    assert "torch fp16 (every graph and batch): skipped: BackendError: backend 'torch' runs precisions" in flat
    for graph in ("encoder", "decoder"):  # each graph with its own reason
        assert (
            f"onnxruntime fp16 ({graph} every batch): skipped: BundleError: graph '{graph}' has no 'fp16' variant"
        ) in flat


def test_a_graph_that_cannot_load_does_not_skip_the_other(bench_run, monkeypatch, tmp_path):
    """One runtime per backend and precision for every graph; where that fails, one per graph: an int8 encoder is
    measured beside a decoder whose int8 variant missed its budget."""
    from benchmarks import latency
    from runtime.bundle import BundleError

    bundle, _, _ = bench_run
    real = latency._load

    def no_decoder(plan, backend, precision, graphs):
        if "decoder" in graphs:
            raise BundleError("graph 'decoder' has no such variant")
        return real(plan, backend, precision, graphs)

    monkeypatch.setattr(latency, "_load", no_decoder)
    out = tmp_path / "out"
    assert (
        main(
            [
                str(bundle),
                "--backends",
                "onnxruntime",
                "--batch",
                "1",
                "--iterations",
                "2",
                "--rounds",
                "1",
                "--warmup",
                "0",
                "--no-cold-start",
                "--no-progress",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    rows = {r["graph"]: r for r in json.loads((out / "latency.json").read_text())["results"]}
    assert rows["encoder"]["status"] == "ok" and rows["encoder"]["accuracy"]["passed"]
    assert rows["decoder"]["status"] == "skipped"
    assert rows["decoder"]["reason"] == "BundleError: graph 'decoder' has no such variant"


@pytest.fixture(scope="module")
def peer_run(bench_run, tiny_checkpoint, tmp_path_factory):
    """The openvino backend and the peer row (OpenVINO's default on a plain export the harness makes itself)."""
    pytest.importorskip("openvino")
    bundle, _, _ = bench_run
    out = tmp_path_factory.mktemp("peer") / "out"
    assert (
        main(
            [
                str(bundle),
                "--backends",
                "onnxruntime,openvino",
                "--batch",
                "1,4",
                "--iterations",
                "4",
                "--rounds",
                "2",
                "--warmup",
                "0",
                "--no-cold-start",
                "--no-progress",
                "--checkpoint",
                str(tiny_checkpoint),
                "--peer",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    return out, json.loads((out / "latency.json").read_text())


def test_peer_row_is_openvino_default_on_the_plain_export(peer_run):
    from benchmarks.peer import _onnx_metadata
    from runtime.bundle import read_manifest

    out, report = peer_run
    rows = report["results"]
    peer = {(r["graph"], r["batch"]): r for r in rows if r["peer"]}
    assert set(peer) == {(g, n) for g in ("encoder", "decoder") for n in (1, 4)}
    in_effect = report["peer"]["inference_precision"]
    assert report["peer"]["properties"] == {}  # OpenVINO's defaults: no precision hint, nothing else
    for r in peer.values():
        assert r["status"] == "ok" and r["backend"] == "ov-default" and r["in_effect"] == in_effect
        assert r["vs_peer"] == 1.0 and r["accuracy"]["passed"]
        assert r["ceiling_precision"] == {"bf16": "bf16", "f32": "fp32"}[in_effect]
    for r in rows:
        if not r["peer"]:
            base = peer[(r["graph"], r["batch"])]["stats"]["p50_ms"]
            assert r["vs_peer"] == pytest.approx(base / r["stats"]["p50_ms"])
            assert len(r["vs_peer_rounds"]) == 2 and all(x > 0 for x in r["vs_peer_rounds"])
    plain = out / "peer-bundle"
    assert read_manifest(plain).source["sha256"] == read_manifest(report["bundle"]).source["sha256"]
    assert "rewrites" not in _onnx_metadata(plain / "decoder.onnx")


def test_openvino_rows_and_per_precision_ceilings(peer_run):
    _, report = peer_run
    ceilings = report["matmul_ceiling_gflops"]["by_precision"]
    assert ceilings["fp32"]["best"] == report["matmul_ceiling_gflops"]["best"]
    assert {"numpy BLAS sgemm", "onnxruntime MatMul", "openvino fp32 MatMul"} <= set(ceilings["fp32"]["engines"])
    ov = [r for r in report["results"] if r["backend"] == "openvino"]
    assert len(ov) == 4 and all(r["status"] == "ok" and r["accuracy"]["passed"] for r in ov)
    for r in report["results"]:  # every share against the ceiling of the row's own precision
        assert r["ceiling_share"] == pytest.approx(r["gflops"] / ceilings[r["ceiling_precision"]]["best"])


def test_peer_bundle_must_be_the_plain_export(bench_run, tiny_checkpoint, capsys):
    pytest.importorskip("openvino")
    from benchmarks.peer import _onnx_metadata

    bundle, _, _ = bench_run
    if "rewrites" in _onnx_metadata(bundle / "decoder.onnx"):
        assert main([str(bundle), "--peer-bundle", str(bundle), "--no-progress"]) == 2
        assert "its decoder is rewritten" in capsys.readouterr().err
    assert main([str(bundle), "--peer", "--no-progress"]) == 2
    assert "--peer: needs --checkpoint CKPT" in capsys.readouterr().err
