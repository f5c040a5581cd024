"""The parity tool: passes on a good bundle, fails on a perturbed graph and points at the perturbed node."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.verify.metrics import Tolerance
from runtime.verify.parity import ParityReport, check_parity, main
from tests.conftest import perturb_initializer

REPO = Path(__file__).resolve().parents[3]


def test_passes_against_the_golden_reference(bundle):
    report = check_parity(bundle, backend="onnxruntime")
    assert isinstance(report, ParityReport) and report and report.passed
    assert report.reference == "golden" and report.backend == "onnxruntime" and report.precision == "fp32"
    names = {o.name for o in report.comparison.outputs}
    assert names == {f"{p}{k}" for p in ("", "realistic.") for k in ("encoder.mu", "encoder.logvar", "decoder.image")}
    img = next(o for o in report.comparison.outputs if o.name == "decoder.image")
    assert img.psnr is not None and img.psnr > 100 and img.nan_count == img.inf_count == 0
    assert 0 < report.smallest_passing()["decoder.image"]["max_abs"] < 1e-4
    assert not report.divergences


def test_passes_against_the_live_pytorch_model(bundle, tiny_checkpoint):
    report = check_parity(bundle, backend="onnxruntime", checkpoint=tiny_checkpoint)
    assert report and report.reference == "pytorch"
    assert report.reference_info["checkpoint"] == str(tiny_checkpoint)


def test_torch_backend_reproduces_the_golden_reference(bundle):
    assert check_parity(bundle, backend="torch")


def test_tight_tolerance_fails_and_says_what_would_pass(bundle):
    report = check_parity(
        bundle, backend="onnxruntime", graphs=["decoder"], tolerances={"image": Tolerance(max_abs=1e-12)}
    )
    assert not report
    assert any("decoder.image: max_abs" in f and "> 1e-12" in f for f in report.failures())
    # the tightest tolerance that passes every image output (golden and realistic inputs) is their largest need
    needed = max(v["max_abs"] for k, v in report.smallest_passing().items() if k.endswith("decoder.image"))
    assert check_parity(
        bundle, backend="onnxruntime", graphs=["decoder"], tolerances={"image": Tolerance(max_abs=needed)}
    )


def test_cli_pass_writes_json(bundle, tmp_path, capsys):
    out = tmp_path / "parity.json"
    assert main([str(bundle), "--backend", "onnxruntime", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "PASS" in text and "smallest passing tolerance" in text and "decoder.image" in text
    data = json.loads(out.read_text())
    assert data["passed"] is True and data["backend"] == "onnxruntime" and data["reference"] == "golden"
    assert {o["name"] for o in data["comparison"]["outputs"]} >= {"decoder.image", "encoder.mu"}


def test_cli_fail_exit_1_and_names_the_finder(bundle_copy, capsys):
    """The runtime cannot locate a divergence itself (that needs torch): it prints the command that does."""
    perturb_initializer(bundle_copy, "decoder", "stem.weight")  # the rewritten decoder's stem Linear
    assert main([str(bundle_copy), "--backend", "onnxruntime", "--graphs", "decoder"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "first divergence" not in out
    assert f"python -m export.divergence {bundle_copy} --precision fp32 --graphs decoder" in out


@pytest.mark.parametrize(
    "args,message",
    [
        (["--precision", "fp16"], "has no 'fp16' variant"),
        (["--backend", "nope"], "backend: expected 'auto' or one of"),
        (["--device", "tpu"], "device: expected 'cpu', 'cuda' or 'cuda:N'"),
        (["--checkpoint", "/nonexistent.pt"], "option checkpoint: /nonexistent.pt is not a file"),
    ],
)
def test_cli_bad_input_exit_2(bundle, capsys, args, message):
    assert main([str(bundle), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_cli_missing_bundle_in_a_subprocess(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "runtime.verify.parity", str(tmp_path / "none")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "no bundle manifest here" in proc.stderr


def test_missing_reference_is_a_bundle_error(bundle_copy, capsys):
    (bundle_copy / "reference.npz").unlink()
    assert main([str(bundle_copy)]) == 2
    assert "reference.npz: listed in" in capsys.readouterr().err


def test_polygraphy_reads_our_files(bundle, bundle_copy, tmp_path, capsys):
    pytest.importorskip("polygraphy", reason="polygraphy is not installed (pip install polygraphy)")
    exe = Path(sys.executable).parent / "polygraphy"
    exe = str(exe) if exe.is_file() else shutil.which("polygraphy")
    if exe is None:
        pytest.skip("the polygraphy command is not on PATH")
    from runtime.verify.polygraphy_io import polygraphy_command

    files = tmp_path / "pg"
    assert main([str(bundle), "--backend", "onnxruntime", "--save-polygraphy", str(files)]) == 0
    assert "polygraphy run" in capsys.readouterr().out
    perturb_initializer(bundle_copy, "decoder", "body.1.0.head_weight_00")
    for target, want in ((bundle, 0), (bundle_copy, 1)):
        for graph in ("encoder", "decoder"):
            cmd = polygraphy_command(target, graph, files / f"{graph}.inputs.json", files / f"{graph}.outputs.json")
            cmd = [exe, *cmd[1:]]
            proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
            expect = want if graph == "decoder" else 0
            assert (proc.returncode != 0) == bool(expect), (graph, target, proc.stdout[-2000:], proc.stderr[-2000:])
            if expect == 0:
                assert "Passed: 2/2 iterations" in proc.stdout + proc.stderr
