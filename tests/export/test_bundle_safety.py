"""Exporters never lose what they did not write, and a killed run never breaks what was there (issue 16, classes 2-3).

- to_onnx / to_triton replace only the files their manifest (vae.json / vae-triton.json) proves they wrote; other
  files make them refuse, naming the files (exit 2); a re-exported bundle keeps its engines/.
- to_fp16 / quantize commit a new variant so that a SIGKILL at any point leaves every file vae.json lists matching
  its sha256, with the previous variant usable; the next run finishes or cleans up.
- replace_dir's swap never leaves --out missing for good; temporary folders of dead runs are cleaned up.
- Unclear errors: to_triton --out that cannot be written, to_fp16 on a graph swapped for another model.

The crash tests run the real CLIs in a subprocess and SIGKILL them at the dangerous point (a hook installed by the
subprocess script, never by the code under test).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from export.to_onnx import export_bundle, export_model, main as to_onnx_main
from runtime import bundle as B
from runtime.files import replace_dir, sha256_file
from tests.conftest import TINY, make_model

QUIET = {"log": lambda *a: None}
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def base_bundle(tiny_checkpoint, tmp_path_factory) -> Path:
    return export_bundle(tiny_checkpoint, tmp_path_factory.mktemp("safety") / "bundle", **QUIET)


@pytest.fixture
def bundle(base_bundle, tmp_path) -> Path:
    return Path(shutil.copytree(base_bundle, tmp_path / "bundle"))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def listed_files_match(bundle: Path) -> dict[str, str]:
    """Every file vae.json lists exists and matches its sha256; returns file -> sha256."""
    m = B.read_manifest(bundle)
    files = {}
    for spec in m.graphs.values():
        files[spec.file] = spec.sha256
        for v in spec.variants.values():
            files[v.file] = v.sha256
    files[m.reference["file"]] = m.reference["sha256"]
    for f, sha in files.items():
        assert sha256_file(bundle / f) == sha, f
    return files


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def run_killed(script: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `script` in a fresh interpreter at the repository root; it is expected to SIGKILL itself."""
    r = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    return r


# ----------------------------------------------------------------------------------------------- class 2: user files


def test_reexport_refuses_a_bundle_holding_user_files_and_keeps_them(bundle, tiny_checkpoint, capsys):
    (bundle / "notes.txt").write_text("mine")
    (bundle / "data").mkdir()
    (bundle / "data" / "x.bin").write_bytes(b"\x01\x02")
    before = snapshot(bundle)
    assert to_onnx_main([str(tiny_checkpoint), "--out", str(bundle)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        f"error: --out {bundle}: refusing to replace it: 2 file(s) there were not written by this "
        "tool (not listed in vae.json with a matching sha256): data/x.bin, notes.txt"
    )
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert snapshot(bundle) == before
    assert sorted(p.name for p in bundle.parent.iterdir()) == ["bundle"]  # no temporary folder left


def test_reexport_keeps_engines(bundle, tiny_checkpoint, capsys):
    """Re-exporting keeps engines/ (the runtime's sidecar check refuses a stale one by sha256) and replaces the rest."""
    engines = bundle / "engines"
    engines.mkdir()
    (engines / "decoder.fp32.gpu.trt10.plan").write_bytes(b"engine bytes" * 1000)
    (engines / "decoder.fp32.gpu.trt10.json").write_text('{"sidecar": true}')
    plan_before = snapshot(engines)
    assert to_onnx_main([str(tiny_checkpoint), "--out", str(bundle), "--seed", "3"]) == 0
    capsys.readouterr()
    assert snapshot(engines) == plan_before
    assert B.read_manifest(bundle).reference["seed"] == 3  # the bundle itself was replaced
    listed_files_match(bundle)
    assert sorted(p.name for p in bundle.parent.iterdir()) == ["bundle"]


@pytest.mark.parametrize("manifest", ["{}", "not json", '{"schema": "vae-deploy/bundle"}'])
def test_a_folder_with_an_unreadable_vae_json_is_never_replaced(tiny_checkpoint, tmp_path, capsys, manifest):
    out = tmp_path / "d"
    out.mkdir()
    (out / "vae.json").write_text(manifest)
    (out / "mine.txt").write_text("mine")
    (out / "engines").mkdir()
    (out / "engines" / "x.plan").write_bytes(b"plan")
    before = snapshot(out)
    assert to_onnx_main([str(tiny_checkpoint), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "refusing to replace it" in err and "mine.txt, vae.json" in err and len(err.strip().splitlines()) == 1
    assert snapshot(out) == before


def test_a_changed_listed_file_is_not_provably_ours(bundle, tiny_checkpoint, capsys):
    with open(bundle / "encoder.onnx", "ab") as f:
        f.write(b"user edit")
    before = snapshot(bundle)
    assert to_onnx_main([str(tiny_checkpoint), "--out", str(bundle)]) == 2
    assert "(not listed in vae.json with a matching sha256): encoder.onnx" in capsys.readouterr().err
    assert snapshot(bundle) == before


def test_reexport_replaces_a_bundle_with_variants_it_wrote(bundle, tiny_checkpoint, capsys):
    """Variant files vae.json lists (with their sha256) are the exporter's own: replaced without a question."""
    import dataclasses

    (bundle / "decoder.fp16.onnx").write_bytes(b"a variant")
    m = B.read_manifest(bundle)
    v = B.VariantSpec("fp16", "decoder.fp16.onnx", sha256_file(bundle / "decoder.fp16.onnx"))
    dec = dataclasses.replace(m.graph("decoder"), variants={"fp16": v})
    B.write_manifest(bundle, dataclasses.replace(m, graphs={**m.graphs, "decoder": dec}))
    assert to_onnx_main([str(tiny_checkpoint), "--out", str(bundle)]) == 0
    capsys.readouterr()
    assert not (bundle / "decoder.fp16.onnx").exists() and not B.read_manifest(bundle).graph("decoder").variants


# ----------------------------------------------------------------------------------------------- to_triton


def _triton_main(*argv) -> int:
    pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient (the `serve` extra)")
    from runtime.serving.to_triton import main

    return main([str(a) for a in argv])


def test_triton_rewrite_refuses_user_files_in_the_repository(base_bundle, tmp_path, capsys):
    out = tmp_path / "repo"
    assert _triton_main(base_bundle, "--out", out) == 0
    marker = json.loads((out / "vae-triton.json").read_text())
    assert marker["files"]["vae_decoder/1/model.onnx"] == sha256_file(out / "vae_decoder" / "1" / "model.onnx")
    (out / "vae_encoder" / "notes.txt").write_text("mine")
    (out / "README").write_text("mine too")
    before = snapshot(out)
    capsys.readouterr()
    assert _triton_main(base_bundle, "--out", out, "--max-batch", 8) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        f"error: --out {out}: refusing to replace it: 2 file(s) there were not written by this tool "
        "(not listed in vae-triton.json with a matching sha256): README, vae_encoder/notes.txt"
    )
    assert snapshot(out) == before
    (out / "vae_encoder" / "notes.txt").unlink()
    (out / "README").unlink()
    assert _triton_main(base_bundle, "--out", out, "--max-batch", 8) == 0  # only its own files: replaced


@pytest.mark.parametrize("marker", ["{}", '{"schema": "vae-deploy/triton-repository"}'])
def test_triton_marker_without_a_file_list_proves_nothing(base_bundle, tmp_path, capsys, marker):
    out = tmp_path / "repo"
    (out / "vae_decoder").mkdir(parents=True)
    (out / "vae-triton.json").write_text(marker)
    (out / "vae_decoder" / "config.pbtxt").write_text("name: 'mine'")
    before = snapshot(out)
    assert _triton_main(base_bundle, "--out", out) == 2
    err = capsys.readouterr().err
    assert "refusing to replace it" in err and "vae-triton.json, vae_decoder/config.pbtxt" in err
    assert snapshot(out) == before


def test_triton_unwritable_out_is_one_line_before_any_work(base_bundle, tmp_path, capsys, monkeypatch):
    import runtime.serving.repository as TR

    def no_work(*a, **k):
        raise AssertionError("files were copied before --out was checked")

    monkeypatch.setattr(TR, "_write_model", no_work)
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    targets = [blocker / "repo"]
    if not os.access("/sys", os.W_OK) or os.getuid() == 0:
        targets.append(Path("/sys/vae_repo"))  # read-only even for root
    for out in targets:
        if out.parent == Path("/sys") and (os.path.lexists(out) or _writable(out.parent)):
            continue
        assert _triton_main(base_bundle, "--out", out) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: --out {out}: cannot write there (") and len(err.strip().splitlines()) == 1
        assert "Traceback" not in err
    assert blocker.read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


def _writable(folder: Path) -> bool:
    try:
        probe = folder / f".vae-probe-{os.getpid()}"
        probe.mkdir()
        probe.rmdir()
        return True
    except OSError:
        return False


# ----------------------------------------------------------------------------------------------- class 3: crashes


def test_swap_cut_between_two_renames_is_recovered_by_the_next_run(bundle, tiny_checkpoint, capsys):
    """Where no atomic exchange exists, replace_dir renames twice; a kill in between leaves --out missing and the old
    bundle in .<name>.<pid>.*.old: the next run puts it back (and then replaces it as asked)."""
    before = snapshot(bundle)
    run_killed(f"""
        import os, signal
        import runtime.files as F
        F._exchange = lambda a, b: False          # the fallback path
        real = os.replace
        def replace(a, b):
            real(a, b)
            if str(b).endswith(".old"):           # the old bundle moved away, the new one not yet in place
                os.kill(os.getpid(), signal.SIGKILL)
        os.replace = replace
        from export.to_onnx import main
        main([{str(tiny_checkpoint)!r}, "--out", {str(bundle)!r}, "--seed", "5"])
    """)
    assert not bundle.exists()
    left = sorted(p.name for p in bundle.parent.iterdir())
    assert any(n.endswith(".old") for n in left) and any(n.endswith(".tmp") for n in left)
    from runtime.files import clean_stale

    clean_stale(bundle)  # what the next run does first
    assert snapshot(bundle) == before and sorted(p.name for p in bundle.parent.iterdir()) == ["bundle"]
    assert to_onnx_main([str(tiny_checkpoint), "--out", str(bundle), "--seed", "5"]) == 0
    assert B.read_manifest(bundle).reference["seed"] == 5


def test_swap_is_atomic_where_the_os_has_an_exchange(tmp_path):
    target, new = tmp_path / "t", tmp_path / ".t.new"
    target.mkdir()
    (target / "vae.json").write_text("old")
    new.mkdir()
    (new / "vae.json").write_text("new")
    calls = []
    import runtime.files as F

    real = F._exchange

    def spy(a, b):
        calls.append(real(a, b))
        return calls[-1]

    F._exchange = spy
    try:
        replace_dir(new, target, owned=lambda t: {"vae.json": None})
    finally:
        F._exchange = real
    assert (target / "vae.json").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["t"]
    if sys.platform.startswith("linux"):
        assert calls == [True]


def test_killed_export_leaves_a_temp_folder_the_next_run_removes(bundle, tiny_checkpoint, capsys):
    before = snapshot(bundle)
    run_killed(f"""
        import os, signal
        import export.to_onnx as X
        real = X.export_graph
        def export_graph(*a, **k):
            real(*a, **k)
            os.kill(os.getpid(), signal.SIGKILL)  # mid-export: one graph written into the temporary folder
        X.export_graph = export_graph
        X.main([{str(tiny_checkpoint)!r}, "--out", {str(bundle)!r}])
    """)
    assert snapshot(bundle) == before
    left = [p for p in bundle.parent.iterdir() if p.name != "bundle"]
    assert len(left) == 1 and left[0].name.startswith(".bundle.") and left[0].name.endswith(".tmp")
    # a live run's folder is never touched
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        theirs = bundle.parent / f".bundle.{live.pid}.abcd1234.tmp"
        theirs.mkdir()
        assert to_onnx_main([str(tiny_checkpoint), "--out", str(bundle)]) == 0
        assert sorted(p.name for p in bundle.parent.iterdir()) == sorted(["bundle", theirs.name])
    finally:
        live.kill()
        live.wait()


def _bundle_with_variant(tmp_path: Path, precision: str) -> Path:
    """A tiny bundle with a real variant made by the tool (the previous state the crash must not break)."""
    out = tmp_path / "bundle"
    export_model(make_model(TINY), out, pixel_range=(-1.0, 1.0), **QUIET)
    _run_tool(precision, out)
    # Make the variant on disk differ from anything the next run writes (a run with the same options rewrites the
    # same bytes), keeping it a valid, listed variant: one more metadata entry, its sha256 updated in vae.json.
    import dataclasses

    import onnx

    m = B.read_manifest(out)
    v = m.graph("decoder").variants[precision]
    model = onnx.load(str(out / v.file))
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, "previous": "yes"})
    onnx.save(model, str(out / v.file))
    v = dataclasses.replace(v, sha256=sha256_file(out / v.file))
    dec = dataclasses.replace(m.graph("decoder"), variants={**m.graph("decoder").variants, precision: v})
    B.write_manifest(out, dataclasses.replace(m, graphs={**m.graphs, "decoder": dec}))
    return out


def _tool_argv(precision: str, bundle: Path) -> list[str]:
    if precision == "fp16":
        return ["export.precision.fp16", str(bundle), "--graphs", "decoder", "--samples", "4", "--no-progress"]
    return [
        "export.precision.int8",
        str(bundle),
        "--int8",
        "--graphs",
        "decoder",
        "--samples",
        "8",
        "--eval-samples",
        "4",
        "--decoder-form",
        "bundle",
        "--force",
        "--no-progress",
    ]


def _run_tool(precision: str, bundle: Path, *extra: str) -> None:
    argv = _tool_argv(precision, bundle)
    r = subprocess.run([sys.executable, "-m", *argv, *extra], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode in (0, 1), r.stderr[-3000:]


# Kill points: the Nth vae.json write, just before or just after it. Before the first: the new variant file is on
# disk and vae.json still names the old one (the old code had already overwritten the old file there).
KILL_POINTS = [(1, "before"), (1, "after"), (2, "after")]


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_a_killed_variant_run_keeps_the_previous_variant_valid(tmp_path, precision):
    bundle = _bundle_with_variant(tmp_path, precision)
    name = f"decoder.{precision}.onnx"
    for n, when in KILL_POINTS if precision == "fp16" else KILL_POINTS[:1]:
        old = B.read_manifest(bundle).graph("decoder").variants[precision]
        run_killed(
            f"""
            import os, signal, sys
            import runtime.bundle as B
            real, calls = B.write_manifest, []
            def write_manifest(*a, **k):
                calls.append(1)
                if len(calls) == {n} and {when!r} == "before":
                    os.kill(os.getpid(), signal.SIGKILL)
                r = real(*a, **k)
                if len(calls) == {n} and {when!r} == "after":
                    os.kill(os.getpid(), signal.SIGKILL)
                return r
            B.write_manifest = write_manifest
            import runpy
            sys.argv = {_tool_argv(precision, bundle)[1:]!r}
            sys.argv.insert(0, "x")
            sys.argv += ["--seed", "{n + 7}"]
            runpy.run_module({_tool_argv(precision, bundle)[0]!r}, run_name="__main__")
        """,
            timeout=600,
        )
        files = listed_files_match(bundle)  # every listed file is intact, whatever the kill point
        v = B.read_manifest(bundle).graph("decoder").variants[precision]
        if when == "before" and n == 1:
            assert (v.file, v.sha256) == (old.file, old.sha256)  # the previous variant, unchanged
        assert v.file in files
        _decodes(bundle, precision)
    # the next run finishes or cleans up what the killed ones left, and ends with the usual names
    _run_tool(precision, bundle)
    v = B.read_manifest(bundle).graph("decoder").variants[precision]
    assert v.file == name and sha256_file(bundle / name) == v.sha256
    listed_files_match(bundle)
    assert sorted(p.name for p in bundle.iterdir() if "staged" in p.name or p.name.startswith(".")) == []


def _decodes(bundle: Path, precision: str) -> None:
    import runtime

    with runtime.load(bundle, backend="onnxruntime", precision=precision, graphs=["decoder"]) as vae:
        out = vae.decode(np.zeros((2, TINY.latent_dim), np.float32))
    assert np.isfinite(np.asarray(out)).all()


def test_stale_quantize_folders_and_temp_files_inside_a_bundle_are_removed_by_the_next_run(bundle, capsys):
    from export.precision.fp16 import main

    pid = dead_pid()
    stale_dir = bundle / f".quantize.{pid}.abcd1234.tmp"
    stale_dir.mkdir()
    (stale_dir / "decoder.subpixel.onnx").write_bytes(b"x")
    stale_file = bundle / f".decoder.fp16.onnx.{pid}.abcd1234.tmp"
    stale_file.write_bytes(b"half")
    legacy = bundle / ".quantize.k2j4h5g6"
    legacy.mkdir()
    os.utime(legacy, (0, 0))  # an old folder from before pids were in the names
    mine = bundle / ".quantize-notes"
    mine.write_text("not ours")
    assert main([str(bundle), "--graphs", "decoder", "--samples", "4", "--no-progress"]) in (0, 1)
    capsys.readouterr()
    assert not stale_dir.exists() and not stale_file.exists() and not legacy.exists() and mine.exists()
    listed_files_match(bundle)


# ----------------------------------------------------------------------------------------------- unclear errors


def test_to_fp16_on_a_graph_swapped_for_another_model_is_a_clear_error(bundle, capsys):
    """decoder.onnx replaced by the encoder, its sha256 updated in vae.json: refused before any work, one line."""
    import dataclasses

    from export.precision.fp16 import main

    shutil.copyfile(bundle / "encoder.onnx", bundle / "decoder.onnx")
    m = B.read_manifest(bundle)
    dec = dataclasses.replace(m.graph("decoder"), sha256=sha256_file(bundle / "decoder.onnx"))
    B.write_manifest(bundle, dataclasses.replace(m, graphs={**m.graphs, "decoder": dec}))
    assert main([str(bundle), "--graphs", "decoder", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        f"error: {bundle / 'decoder.onnx'}: graph 'decoder' does not match the manifest: inputs "
        "image float32 [dynamic, 3, 32, 32]"
    )
    assert "lists z float32 [dynamic, 8]" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (bundle / "decoder.fp16.onnx").exists()


# ----------------------------------------------------------------------------------------------- review follow-ups


def test_a_second_variant_writer_on_the_same_bundle_is_refused(bundle):
    """Two to_fp16 / quantize runs on one bundle would race on vae.json and on each other's staged files: the
    second is refused at once while the first holds the bundle."""
    import fcntl

    from export.precision.fp16 import make_fp16_variant

    fd = os.open(bundle, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running to_fp16 does
        before = snapshot(bundle)
        with pytest.raises(
            B.BundleError, match="another export.precision.fp16 / export.precision.int8 run is writing this bundle"
        ):
            make_fp16_variant(bundle, "decoder", samples=2, progress=False, log=lambda *a: None)
        assert snapshot(bundle) == before
    finally:
        os.close(fd)


def test_user_files_shaped_like_old_temporary_names_are_never_ours(tmp_path):
    from runtime.files import clean_stale_inside, is_temp_name

    for name in (".notes.20240101.tmp", ".backup.abcdefgh.old", ".diary.12345678.tmp"):
        assert not is_temp_name(name)
        (tmp_path / name).write_text("mine")
        os.utime(tmp_path / name, (0, 0))  # older than any staleness age
    assert is_temp_name(".decoder.onnx.ab12cd34.tmp") and is_temp_name(".quantize.ab12cd_x")
    assert clean_stale_inside(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".backup.abcdefgh.old",
        ".diary.12345678.tmp",
        ".notes.20240101.tmp",
    ]


def test_a_cut_swap_restores_the_old_folder_with_a_manifest_not_an_empty_one(tmp_path):
    """Two dead runs left .old folders: the one holding the bundle is put back even when an empty one is newer."""
    from runtime.files import clean_stale

    target = tmp_path / "bundle"
    pid = dead_pid()
    real = tmp_path / f".bundle.{pid}.aaaaaaaa.old"
    real.mkdir()
    (real / "vae.json").write_text("{}")
    empty = tmp_path / f".bundle.{pid}.bbbbbbbb.old"
    empty.mkdir()
    os.utime(real, (1, 1))  # a renamed folder keeps its own, older mtime
    clean_stale(target)
    assert (target / "vae.json").read_text() == "{}" and not real.exists() and not empty.exists()
