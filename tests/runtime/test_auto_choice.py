"""backend="auto" on the CPU from vae.json's record of measured speeds (runtime/backends/auto.py, runtime.bundle's
AutoRecord): the record's round trip and checks, and which backend a real load takes with a matching record, with one
for another machine, a changed graph, another engine version, another threads option, or a subset of the graphs;
describe()["chosen"] says which rule applied. Real bundles, real ONNX Runtime and OpenVINO sessions."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import runtime
from runtime import bundle as B
from runtime.backends import Device, auto, resolve
from runtime.backends.base import engine_installed
from runtime.backends.openvino import OpenVinoBackend

REPO = Path(__file__).resolve().parents[2]
needs_openvino = pytest.mark.skipif(
    importlib.util.find_spec("openvino") is None, reason="openvino is not installed (the JetPack runtime has none)"
)
FIXED = "auto: first usable of ['onnxruntime', 'openvino'] on cpu"


def make_record(
    manifest: B.Manifest,
    times: dict[str, dict[str, dict[int, dict[str, float]]]],
    *,
    machine: B.MachineSpec | None = None,
    versions: dict[str, str] | None = None,
) -> B.AutoRecord:
    """A record of `times` (precision -> graph -> batch -> backend -> ms) for the files vae.json lists now, by default
    for this machine with the engines installed here."""
    precisions = {
        p: {g: B.MeasuredGraph(*auto.measured_file(manifest, g, p), by_batch) for g, by_batch in graphs.items()}
        for p, graphs in times.items()
    }
    if versions is None:
        backends = {b for graphs in times.values() for by in graphs.values() for t in by.values() for b in t}
        versions = {b: _installed_version(b) for b in backends}
    return B.AutoRecord(
        machine=machine or auto.this_machine(None),
        versions=versions,
        precisions=precisions,
        measured="2026-12-03T10:00:00+0000",
        harness={"command": "python -m benchmarks.latency B --record-auto", "duration_s": 1.0, "rounds": 3},
    )


def _installed_version(backend: str) -> str:
    """The engine's version here; a placeholder where it is not installed (JetPack has no OpenVINO): a record of it
    is still a valid record, only never a match."""
    return auto.engine_version(backend) if engine_installed(auto.ENGINE_MODULES[backend]) else "not installed"


def add_record(bundle: Path, record: B.AutoRecord) -> None:
    B.write_manifest(bundle, B.read_manifest(bundle).with_auto_record(record))


def both(ort: float, ov: float, graphs=("decoder", "encoder"), batches=(1, 64)) -> dict[str, dict[int, dict]]:
    return {g: {n: {"onnxruntime": ort, "openvino": ov} for n in batches} for g in graphs}


OTHER = B.MachineSpec("Intel(R) Xeon(R) Platinum 8480+", ("amx_bf16", "amx_int8", "avx512f"), 4, None)


# ----------------------------------------------------------------------------------------------- the record in vae.json


def test_a_bundle_without_records_reads_and_writes_byte_identically(bundle_copy):
    before = (bundle_copy / "vae.json").read_bytes()
    manifest = B.read_manifest(bundle_copy)
    assert manifest.auto == () and "auto" not in manifest.to_dict()
    B.write_manifest(bundle_copy, manifest)
    assert (bundle_copy / "vae.json").read_bytes() == before


def test_a_record_round_trips(bundle_copy):
    m = B.read_manifest(bundle_copy)
    record = make_record(m, {"fp32": both(1.5, 0.75)}, versions={"onnxruntime": "1.32.0", "openvino": "2026.4.1"})
    add_record(bundle_copy, record)
    written = (bundle_copy / "vae.json").read_bytes()
    again = B.read_manifest(bundle_copy)
    assert again.auto == (record,)
    assert json.loads(written)["auto"][0]["precisions"]["fp32"]["decoder"]["median_ms"]["64"] == {
        "onnxruntime": 1.5,
        "openvino": 0.75,
    }
    B.write_manifest(bundle_copy, again)
    assert (bundle_copy / "vae.json").read_bytes() == written


def test_recording_again_replaces_only_that_machines_record(bundle_copy):
    m = B.read_manifest(bundle_copy)
    here, there = make_record(m, {"fp32": both(1.0, 2.0)}), make_record(m, {"fp32": both(3.0, 1.0)}, machine=OTHER)
    add_record(bundle_copy, here)
    add_record(bundle_copy, there)
    newer = make_record(m, {"fp32": both(5.0, 1.0)})
    add_record(bundle_copy, newer)
    assert B.read_manifest(bundle_copy).auto == (newer, there)  # in place; the other machine's record kept
    more_threads = make_record(m, {"fp32": both(1.0, 1.0)}, machine=auto.this_machine(1))
    add_record(bundle_copy, more_threads)  # another threads option: another record
    assert B.read_manifest(bundle_copy).auto == (newer, there, more_threads)


def _valid_record(bundle: Path) -> dict:
    return make_record(B.read_manifest(bundle), {"fp32": both(1.0, 2.0)}).to_dict()


def _with(path: str, value):
    """An edit setting auto[0].<path> (dotted; digits index lists) to `value`; value DELETE removes the key."""

    def edit(record: dict) -> None:
        *parents, last = path.split(".")
        node = record
        for key in parents:
            node = node[key]
        if value is DELETE:
            del node[last]
        else:
            node[last] = value

    return edit


DELETE = object()


@pytest.mark.parametrize(
    "edit, message",
    [
        (_with("machine", DELETE), "auto[0].machine: missing"),
        (_with("machine.cpu", ""), "auto[0].machine.cpu: expected the CPU model name, got string ''"),
        (_with("machine.isa", "avx2"), 'auto[0].machine.isa: expected a list of CPU flag names, got "avx2"'),
        (_with("machine.cpus", "2"), "auto[0].machine.cpus: expected an integer in [1, 2147483648], got string '2'"),
        (_with("machine.threads", 0), "auto[0].machine.threads: expected an integer in [1, 2147483648], got 0"),
        (_with("versions", {"openvino": 2026}), "auto[0].versions: expected an object backend -> engine version"),
        (_with("measured", DELETE), "auto[0].measured: missing"),
        (_with("harness", []), "auto[0].harness: expected an object, got list"),
        (_with("precisions", {}), "auto[0].precisions: expected an object precision -> graph -> measurement"),
        (_with("precisions.fp8", {}), "auto[0].precisions.fp8: unknown precision; expected one of ['fp32', 'fp16'"),
        (_with("precisions.fp32.flow", {}), "auto[0].precisions.fp32: unknown graph 'flow'"),
        (_with("precisions.fp32.decoder.sha256", "abc"), "auto[0].precisions.fp32.decoder.sha256: expected the file's"),
        (
            _with("precisions.fp32.decoder.file", "../decoder.onnx"),
            "auto[0].precisions.fp32.decoder.file: expected a relative path inside the bundle",
        ),
        (_with("precisions.fp32.decoder.median_ms", []), "auto[0].precisions.fp32.decoder.median_ms: expected an obj"),
        (
            _with("precisions.fp32.decoder.median_ms.b1", {"openvino": 1.0}),
            "auto[0].precisions.fp32.decoder.median_ms: expected batch sizes (positive integers) as keys, got 'b1'",
        ),
        (
            _with("precisions.fp32.decoder.median_ms.1.openvino", "fast"),
            "auto[0].precisions.fp32.decoder.median_ms.1.openvino: expected a backend name and a positive number of "
            "milliseconds, got 'openvino': string 'fast'",
        ),
        (
            _with("precisions.fp32.decoder.median_ms.1.openvino", -1.0),
            "median_ms.1.openvino: expected a backend name and a positive number of milliseconds, got 'openvino': "
            "number -1.0",
        ),
    ],
)
def test_a_malformed_record_is_a_bundle_error_naming_the_field(bundle_copy, edit, message):
    record = _valid_record(bundle_copy)
    edit(record)
    data = json.loads((bundle_copy / "vae.json").read_text())
    data["auto"] = [record]
    (bundle_copy / "vae.json").write_text(json.dumps(data))
    with pytest.raises(B.BundleError, match=re.escape(message)) as e:
        runtime.load(bundle_copy)
    assert str(e.value).startswith(str(bundle_copy / "vae.json"))


def test_auto_must_be_a_list_with_one_record_per_machine(bundle_copy):
    record = _valid_record(bundle_copy)
    data = json.loads((bundle_copy / "vae.json").read_text())
    data["auto"] = {"machine": {}}
    (bundle_copy / "vae.json").write_text(json.dumps(data))
    with pytest.raises(
        B.BundleError, match=r"vae\.json: auto: expected a list of records, one per machine, got object"
    ):
        B.read_manifest(bundle_copy)
    data["auto"] = [record, {**record, "machine": {**record["machine"], "isa": record["machine"]["isa"][::-1]}}]
    (bundle_copy / "vae.json").write_text(json.dumps(data))
    with pytest.raises(B.BundleError, match=r"auto\[1\]\.machine: expected one record per machine, got the machine of"):
        B.read_manifest(bundle_copy)


# ----------------------------------------------------------------------------------------------- the choice, pure


def test_rank_is_the_geometric_mean_of_each_median_over_the_best():
    m = B.MeasuredGraph(
        "decoder.onnx", "0" * 64, {1: {"onnxruntime": 1.0, "openvino": 2.0}, 64: {"onnxruntime": 9.0, "openvino": 3.0}}
    )
    e = B.MeasuredGraph("encoder.onnx", "1" * 64, {1: {"onnxruntime": 1.0, "openvino": 1.0}})
    record = B.AutoRecord(OTHER, {}, {"fp32": {"decoder": m, "encoder": e}}, "2026-12-03")
    ranking = auto.rank(record, "fp32", ("encoder", "decoder"), ("onnxruntime", "openvino"), margin=0.0)
    # openvino: (2/1, 3/3, 1/1) -> 2^(1/3) = 1.26; onnxruntime: (1, 9/3, 1) -> 3^(1/3) = 1.44
    assert ranking.order == ("openvino", "onnxruntime")
    assert [round(s, 4) for _, s in ranking.scores] == [round(2 ** (1 / 3), 4), round(3 ** (1 / 3), 4)]
    assert ranking.describe() == "openvino 1.26, onnxruntime 1.44 geomean vs best over decoder b1,b64, encoder b1"
    decoder_only = auto.rank(record, "fp32", ("decoder",), ("onnxruntime", "openvino"))
    assert decoder_only.order == ("openvino", "onnxruntime")  # (2, 1) vs (1, 3): sqrt 2 < sqrt 3
    tie = auto.rank(record, "fp32", ("encoder",), ("onnxruntime", "openvino"))
    assert tie.order == ("onnxruntime", "openvino")  # equal: the fixed order breaks the tie
    assert auto.rank(record, "fp32", ("encoder",), ("openvino", "onnxruntime")).order == ("openvino", "onnxruntime")


def test_rank_keeps_the_fixed_order_unless_another_leads_by_more_than_the_margin():
    def ranked(ov_ms: float, margin: float = auto.LEAD_MARGIN):
        m = B.MeasuredGraph("d.onnx", "0" * 64, {1: {"onnxruntime": 1.0, "openvino": ov_ms}})
        record = B.AutoRecord(OTHER, {}, {"fp32": {"decoder": m}}, "2026-12-03")
        return auto.rank(record, "fp32", ("decoder",), ("onnxruntime", "openvino"), margin)

    assert auto.LEAD_MARGIN == 0.15
    # openvino 1.14x faster: within the margin, onnxruntime (first in the fixed order) stays first, and says why
    close = ranked(1 / 1.14)
    assert close.order == ("onnxruntime", "openvino") and close.margin_kept == "onnxruntime"
    assert close.describe().endswith("; onnxruntime kept: a lead under 15% is within the noise")
    # 1.16x faster: beyond it
    far = ranked(1 / 1.16)
    assert far.order == ("openvino", "onnxruntime") and far.margin_kept is None
    assert "kept" not in far.describe()
    # the fixed order's backend already first: nothing to keep
    assert ranked(1.5).margin_kept is None
    assert ranked(1 / 1.14, margin=0.0).order == ("openvino", "onnxruntime")


def test_rank_compares_only_backends_measured_at_every_point():
    m = B.MeasuredGraph("d.onnx", "0" * 64, {1: {"onnxruntime": 5.0, "openvino": 1.0}, 64: {"onnxruntime": 5.0}})
    record = B.AutoRecord(OTHER, {}, {"fp32": {"decoder": m}}, "2026-12-03")
    ranking = auto.rank(record, "fp32", ("decoder",), ("onnxruntime", "openvino"))
    assert ranking.order == ("onnxruntime",) and ranking.incomplete == ("openvino",)
    assert ranking.describe() == (
        "onnxruntime the only backend measured (no choice) over decoder b1,b64; not measured at every point: openvino"
    )
    assert "not measured" in auto.rank(record, "int8", ("decoder",), ("onnxruntime", "openvino"))


def test_this_machine_reads_model_flags_and_affinity(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: Some CPU 9000\nflags\t\t: fpu sse2 avx2 avx512f amx_bf16 ht\n\n"
        "processor\t: 1\nmodel name\t: Some CPU 9000\nflags\t\t: fpu sse2 avx2 avx512f amx_bf16 ht\n"
    )
    m = auto.this_machine(3, str(cpuinfo))
    assert m == B.MachineSpec("Some CPU 9000", ("amx_bf16", "avx2", "avx512f"), len(os.sched_getaffinity(0)), 3)


# ----------------------------------------------------------------------------------------------- the choice, real loads


def _load(bundle: Path, **kw):
    rt = runtime.load(bundle, **kw)
    z = np.zeros((2, rt.latent_dim), np.float32)
    assert rt.decode(z).shape[0] == 2  # it runs
    rt.close()
    return rt.backend_name, rt.describe()["chosen"]


@needs_openvino
def test_a_record_saying_openvino_is_faster_makes_auto_take_it_and_swapped_numbers_onnxruntime(bundle_copy):
    m = B.read_manifest(bundle_copy)
    assert _load(bundle_copy)[0] == "onnxruntime"  # the fixed order
    add_record(bundle_copy, make_record(m, {"fp32": both(2.0, 1.0)}))
    name, chosen = _load(bundle_copy)
    here = auto.this_machine(None)
    assert name == "openvino"
    assert chosen == (
        f"auto: recorded choice for fp32 on this machine ({here.cpu}, {here.cpus} CPU{'s' * (here.cpus != 1)}, "
        "measured 2026-12-03: openvino 1.00, onnxruntime 2.00 geomean vs best over decoder b1,b64, encoder b1,b64)"
    )
    add_record(bundle_copy, make_record(m, {"fp32": both(1.0, 1.25)}))  # same machine: replaces the record
    name, chosen = _load(bundle_copy)
    assert name == "onnxruntime" and "onnxruntime 1.00, openvino 1.25 geomean" in chosen
    assert len(B.read_manifest(bundle_copy).auto) == 1


@needs_openvino
@pytest.mark.parametrize(
    "change, why",
    [
        (
            "machine",
            "(no recorded choice: other machine (recorded vs here): model 'Intel(R) Xeon(R) Platinum 8480+' vs",
        ),
        ("sha256", "(no recorded choice: graph changed: decoder fp32 was measured on decoder.onnx (sha256 "),
        ("version", "(no recorded choice: engine version differs: openvino 2020.1.0 measured, "),
        ("threads", "(no recorded choice: other machine (recorded vs here): threads option 2 vs None"),
    ],
)
def test_a_record_that_does_not_apply_leaves_the_fixed_order_and_says_why(bundle_copy, change, why):
    m = B.read_manifest(bundle_copy)
    here = auto.this_machine(None)
    machine = {"machine": OTHER, "threads": B.MachineSpec(here.cpu, here.isa, here.cpus, 2)}.get(change, here)
    record = make_record(m, {"fp32": both(5.0, 1.0)}, machine=machine)  # says: openvino, by far
    if change == "version":
        record = dataclasses.replace(record, versions={**record.versions, "openvino": "2020.1.0"})
    if change == "sha256":
        graphs = dict(record.precisions["fp32"])
        graphs["decoder"] = B.MeasuredGraph("decoder.onnx", "f" * 64, graphs["decoder"].median_ms)
        record = dataclasses.replace(record, precisions={"fp32": graphs})
    add_record(bundle_copy, record)
    name, chosen = _load(bundle_copy)
    assert name == "onnxruntime"
    assert chosen.startswith(FIXED + " " + why), chosen


@needs_openvino
def test_the_record_is_used_for_the_threads_option_it_was_measured_with(bundle_copy):
    m = B.read_manifest(bundle_copy)
    add_record(bundle_copy, make_record(m, {"fp32": both(5.0, 1.0)}, machine=auto.this_machine(1)))
    assert _load(bundle_copy, threads=1)[0] == "openvino"
    name, chosen = _load(bundle_copy)
    assert name == "onnxruntime" and "threads option 1 vs None" in chosen


@needs_openvino
def test_only_the_graphs_loaded_are_compared(bundle_copy):
    m = B.read_manifest(bundle_copy)
    times = {"decoder": both(3.0, 1.0)["decoder"], "encoder": both(1.0, 30.0)["encoder"]}
    add_record(bundle_copy, make_record(m, {"fp32": times}))
    assert _load(bundle_copy, graphs="decoder")[0] == "openvino"  # the decoder alone: openvino 3x faster
    name, chosen = _load(bundle_copy)  # both: onnxruntime's 30x on the encoder outweighs
    assert name == "onnxruntime" and chosen.startswith("auto: recorded choice for fp32") and "openvino 5.48" in chosen
    add_record(bundle_copy, make_record(m, {"fp32": {"decoder": times["decoder"]}}))  # the decoder measured alone
    assert _load(bundle_copy, graphs=("decoder",))[0] == "openvino"
    name, chosen = _load(bundle_copy)
    assert name == "onnxruntime"
    assert chosen == FIXED + " (no recorded choice: encoder not measured at fp32 (the record has ['decoder']))"


@needs_openvino
def test_a_precision_measured_on_one_backend_is_its_choice(bundle_copy):
    m = B.read_manifest(bundle_copy)
    add_record(bundle_copy, make_record(m, {"fp32": {g: {1: {"openvino": 4.0}} for g in m.graphs}}))
    name, chosen = _load(bundle_copy)
    assert name == "openvino" and "openvino the only backend measured (no choice)" in chosen


@needs_openvino
def test_an_unusable_recorded_backend_gives_way_to_the_next_recorded(bundle_copy, monkeypatch):
    m = B.read_manifest(bundle_copy)
    add_record(bundle_copy, make_record(m, {"fp32": both(2.0, 1.0)}))
    monkeypatch.setattr(OpenVinoBackend, "unavailable_reason", classmethod(lambda cls, *a: "not on this host"))
    name, chosen = _load(bundle_copy)
    assert name == "onnxruntime"
    assert chosen.startswith("auto: recorded choice for fp32") and chosen.endswith(
        "(skipped: openvino: not on this host)"
    )


def test_the_record_is_not_used_on_cuda(bundle_copy):
    m = B.read_manifest(bundle_copy)
    add_record(bundle_copy, make_record(m, {"fp32": both(1.0, 2.0)}, versions={"onnxruntime": "1.32.0"}))
    m = B.read_manifest(bundle_copy)
    _, chosen = resolve("auto", bundle_copy, m, Device("cuda"), "fp32", ("decoder",))
    assert chosen.startswith("auto: first usable of ['tensorrt', 'onnxruntime'] on cuda:0") and "record" not in chosen


def test_without_records_the_fixed_order_says_so(bundle):
    name, chosen = _load(bundle)
    assert name == "onnxruntime" and chosen == FIXED + " (no recorded choice: no record in vae.json)"


# ----------------------------------------------------------------------------------------------- cold start

MODULES = r"""
import json, sys
import numpy as np
before = set(sys.modules)
import runtime
with runtime.load(sys.argv[1], graphs=("decoder",)) as rt:
    rt.decode(np.zeros((1, rt.latent_dim), np.float32))
    chosen = rt.describe()["chosen"]
print(json.dumps({"chosen": chosen, "modules": sorted(set(sys.modules) - before)}))
"""


def _imported(bundle: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", MODULES, str(bundle)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_recorded_choice_imports_nothing_the_fixed_order_does_not(bundle, bundle_copy):
    # The engine's version is read from the module the backend imports anyway; importlib.metadata (zipfile,
    # tempfile, email, csv behind it) stays out of the load path.
    m = B.read_manifest(bundle_copy)
    add_record(
        bundle_copy,
        make_record(m, {"fp32": both(1.0, 2.0)}, versions={"onnxruntime": auto.engine_version("onnxruntime")}),
    )
    plain, recorded = _imported(bundle), _imported(bundle_copy)
    assert recorded["chosen"].startswith("auto: recorded choice") and "no record in vae.json" in plain["chosen"]
    assert set(recorded["modules"]) - set(plain["modules"]) == {"runtime.backends.auto"}
    assert not {"importlib.metadata", "tempfile", "zipfile"} & set(recorded["modules"])
