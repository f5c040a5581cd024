"""benchmarks.chunking (how max_chunk's default was chosen) runs end to end on a tiny bundle and checks its options."""

from __future__ import annotations

import pytest

from benchmarks.chunking import main


@pytest.fixture(scope="module")
def tiny_bundle(tiny_checkpoint, tmp_path_factory):
    from export.to_onnx import export_bundle

    return export_bundle(tiny_checkpoint, tmp_path_factory.mktemp("chunking") / "bundle", log=lambda *a: None)


def test_table_has_a_row_per_chunk_size(tiny_bundle, capsys):
    assert main([str(tiny_bundle), "--n", "300", "--chunks", "64,none", "--rounds", "1"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert [r.split("|")[1].strip() for r in rows[1:]] == ["64", "none (one call)"]
    # peak RSS after the 1st and the 2nd call, then the peak above the 300 x 3x32x32 float32 output (3.5 MiB)
    for r in rows[1:]:
        first, second, above = (float(c) for c in r.split("|")[4:7])
        assert 0 < first <= second and 0 < above < second


@pytest.mark.parametrize("args", [["--chunks", "0"], ["--chunks", "x"], ["--n", "0"], ["--rounds", "0"]])
def test_bad_options_exit_2(tiny_bundle, capsys, args):
    assert main([str(tiny_bundle), *args]) == 2
    assert "error: --chunks must be positive integers or 'none'" in capsys.readouterr().err
