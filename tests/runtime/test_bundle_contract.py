"""The bundle contract at its root (runtime.bundle): what vae.json may name and claim, checked once, when it is read.

Issue 16: every file the manifest names (graphs, variants, the reference; engines through their sidecars) is a
relative name that stays inside the bundle, also after symlinks; every graph and variant carries its sha256; the model
section is bounded and agrees with the graphs' tensor shapes; shapes are lists. Every reader (runtime.load, parity,
export's tools, serve) reads through runtime.bundle, so these tests drive the contract through the public entry points
(read_manifest, resolve_file, runtime.load, the runtime.verify.parity CLI) on real bundles copied into tmp_path.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import runtime
from runtime import bundle as B
from runtime.files import sha256_file

REPO = Path(__file__).resolve().parents[2]


def _edit(bundle: Path, edit) -> None:
    data = json.loads((bundle / B.MANIFEST_NAME).read_text())
    edit(data)
    (bundle / B.MANIFEST_NAME).write_text(json.dumps(data))


def _outside_copy(bundle: Path, graph: str = "decoder") -> Path:
    """The bundle's own graph, copied next to (not into) the bundle: a file with a sha256 the manifest can match."""
    outside = bundle.parent / "outside"
    outside.mkdir(exist_ok=True)
    return Path(shutil.copyfile(bundle / f"{graph}.onnx", outside / f"{graph}.onnx"))


# ----------------------------------------------------------------------------------------------- class 1: files escape


@pytest.mark.parametrize(
    "name",
    [
        "../outside/decoder.onnx",
        "sub/../../outside/decoder.onnx",
        "ABSOLUTE",  # replaced by the outside file's absolute path
        "",
        "..\\outside\\decoder.onnx",
    ],
)
def test_graph_file_outside_the_bundle_is_refused_when_read(bundle_copy, name):
    outside = _outside_copy(bundle_copy)
    name = str(outside) if name == "ABSOLUTE" else name
    _edit(bundle_copy, lambda d: d["graphs"]["decoder"].update(file=name, sha256=sha256_file(outside)))
    pattern = (
        rf"vae\.json: graphs\.decoder\.file: expected a relative path inside the bundle, got {re.escape(repr(name))}"
    )
    with pytest.raises(B.BundleError, match=pattern):
        B.read_manifest(bundle_copy)
    with pytest.raises(B.BundleError, match=r"graphs.decoder.file: expected a relative path inside the bundle"):
        runtime.load(bundle_copy, backend="onnxruntime", graphs=("decoder",))


def test_variant_file_outside_the_bundle_is_refused(bundle_copy):
    outside = _outside_copy(bundle_copy)
    variant = {"precision": "fp16", "file": str(outside), "sha256": sha256_file(outside)}
    _edit(bundle_copy, lambda d: d["graphs"]["decoder"].setdefault("variants", {}).update(fp16=variant))
    with pytest.raises(
        B.BundleError,
        match=rf"graphs.decoder.variants.fp16.file: expected a relative path inside "
        rf"the bundle, got '{outside}'",
    ):
        runtime.load(bundle_copy, backend="onnxruntime", precision="fp16", graphs=("decoder",))


def test_reference_outside_the_bundle_is_refused(bundle_copy):
    (bundle_copy.parent / "ref.npz").write_bytes((bundle_copy / "reference.npz").read_bytes())
    _edit(bundle_copy, lambda d: d["reference"].update(file="../ref.npz"))
    with pytest.raises(
        B.BundleError,
        match=r"reference.file: expected a relative path inside the bundle, "
        r"got '\.\./ref\.npz'",
    ):
        B.read_manifest(bundle_copy)


def test_symlink_out_of_the_bundle_is_refused(bundle_copy):
    """A name that looks local but is a symlink to a file elsewhere: refused after resolving, before it is read."""
    outside = _outside_copy(bundle_copy)
    (bundle_copy / "decoder.onnx").unlink()
    os.symlink(outside, bundle_copy / "decoder.onnx")
    B.read_manifest(bundle_copy)  # the name itself is fine
    message = rf"decoder\.onnx: resolves to {outside}, outside the bundle {bundle_copy.resolve()}"
    with pytest.raises(B.BundleError, match=message):
        B.resolve_file(bundle_copy, "decoder.onnx", sha256_file(outside))
    with pytest.raises(B.BundleError, match=message):
        runtime.load(bundle_copy, backend="onnxruntime", graphs=("decoder",))
    # a symlinked folder out of the bundle is the same escape
    (bundle_copy / "decoder.onnx").unlink()
    os.symlink(outside.parent, bundle_copy / "linked")
    _edit(bundle_copy, lambda d: d["graphs"]["decoder"].update(file="linked/decoder.onnx"))
    with pytest.raises(B.BundleError, match=r"linked/decoder\.onnx: resolves to .*outside the bundle"):
        runtime.load(bundle_copy, backend="onnxruntime", graphs=("decoder",))


def test_symlink_inside_the_bundle_is_fine(bundle_copy, reference):
    (bundle_copy / "graphs").mkdir()
    (bundle_copy / "decoder.onnx").rename(bundle_copy / "graphs" / "decoder.onnx")
    os.symlink("graphs/decoder.onnx", bundle_copy / "decoder.onnx")
    with runtime.load(bundle_copy, backend="onnxruntime", graphs=("decoder",)) as rt:
        assert rt.decode(reference["decoder.z"]).shape == reference["decoder.image"].shape


@pytest.mark.parametrize("name", ["../x.onnx", "/etc/passwd", "a/../../x.onnx", "", "x\0.onnx"])
def test_resolve_file_refuses_names_leaving_the_bundle(bundle, name):
    """Callers that build a name themselves (export's tools) get the same rule as names read from vae.json."""
    with pytest.raises(B.BundleError, match=r"expected a relative path inside the bundle, got "):
        B.resolve_file(bundle, name)


@pytest.mark.parametrize("where", ["graph", "variant"])
@pytest.mark.parametrize("value", ["", None, "MISSING", "abc", "Z" * 64])
def test_graph_and_variant_sha256_are_required(bundle_copy, where, value):
    def edit(d):
        entry = d["graphs"]["decoder"]
        if where == "variant":
            entry = entry.setdefault("variants", {}).setdefault("fp16", {"precision": "fp16", "file": "decoder.onnx"})
        if value == "MISSING":
            entry.pop("sha256", None)
        else:
            entry["sha256"] = value

    _edit(bundle_copy, edit)
    field = "graphs.decoder.sha256" if where == "graph" else "graphs.decoder.variants.fp16.sha256"
    got = {"MISSING": "nothing (the field is missing)", None: "null"}.get(value) or f"string {value!r}"
    message = rf"vae\.json: {field}: expected the file's sha256 \(64 hex digits\), got {re.escape(got)}$"
    with pytest.raises(B.BundleError, match=message):
        B.read_manifest(bundle_copy)
    with pytest.raises(B.BundleError, match=message):
        runtime.load(bundle_copy, backend="onnxruntime", precision="fp16" if where == "variant" else "fp32")


def test_resolve_file_refuses_an_empty_sha256(bundle):
    with pytest.raises(
        B.BundleError, match=r"decoder\.onnx: expected the file's sha256 \(64 hex digits\), got string ''$"
    ):
        B.resolve_file(bundle, "decoder.onnx", "")


def test_parity_cli_refuses_a_graph_outside_the_bundle(bundle_copy):
    outside = _outside_copy(bundle_copy)
    _edit(
        bundle_copy,
        lambda d: d["graphs"]["decoder"].update(file="../outside/decoder.onnx", sha256=sha256_file(outside)),
    )
    proc = subprocess.run(
        [sys.executable, "-m", "runtime.verify.parity", str(bundle_copy), "--backend", "onnxruntime"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert (
        "graphs.decoder.file: expected a relative path inside the bundle, got '../outside/decoder.onnx'" in proc.stderr
    )


# ----------------------------------------------------------------------------------------------- engines (sidecars)


def _sidecar_bundle(tmp_path):
    from runtime.engines import (
        EngineSidecar,
        GpuInfo,
        MachineInfo,
        PlatformInfo,
        Profile,
        TrtInfo,
        engine_path,
        sidecar_path,
        write_sidecar,
    )

    onnx_file = tmp_path / "decoder.onnx"
    onnx_file.write_bytes(b"decoder graph")
    spec = B.GraphSpec(
        B.DECODER,
        "decoder.onnx",
        sha256_file(onnx_file),
        18,
        (B.TensorSpec(B.Z, ("batch", 8)),),
        (B.TensorSpec(B.IMAGE, ("batch", 3, 32, 32)),),
    )
    manifest = B.Manifest(model=B.ModelSpec(3, 3, 32, 8, (8, 16)), pixel_range=(-1.0, 1.0), graphs={B.DECODER: spec})
    B.write_manifest(tmp_path, manifest)
    gpu, trt = GpuInfo("Orin", (8, 7), 16, 2), TrtInfo("trt", "10.3.0")
    engine = engine_path(tmp_path, "decoder", "fp16", gpu, trt)
    engine.parent.mkdir()
    engine.write_bytes(b"serialized engine")
    sidecar = EngineSidecar(
        graph="decoder",
        precision="fp16",
        engine_file=engine.name,
        engine_sha256=sha256_file(engine),
        source_file="decoder.onnx",
        source_sha256=spec.sha256,
        trt=trt,
        gpu=gpu,
        platform=PlatformInfo("aarch64", "36.4.3", "6.2"),
        profile=Profile("z", (1, 8), (8, 8), (32, 8)),
        build_options={"dla_core": None},
    )
    write_sidecar(sidecar_path(engine), sidecar)
    return engine, MachineInfo(trt, gpu, PlatformInfo("aarch64", "36.4.3", "6.2"))


@pytest.mark.parametrize(
    "field, value",
    [
        ("engine", "../../outside.plan"),
        ("engine", "/tmp/x.plan"),
        ("engine", "sub/x.plan"),
        ("source", "../decoder.onnx"),
        ("source", "/etc/passwd"),
    ],
)
def test_sidecar_file_names_stay_inside(tmp_path, field, value):
    from runtime.engines import EngineError, read_sidecar, sidecar_path

    engine, _ = _sidecar_bundle(tmp_path)
    path = sidecar_path(engine)
    data = json.loads(path.read_text())
    data[field]["file"] = value
    path.write_text(json.dumps(data))
    kind = "a file name inside engines/" if field == "engine" else "a relative path inside the bundle"
    with pytest.raises(EngineError, match=rf"{path.name}: {field}\.file: expected {kind}, got {value!r}"):
        read_sidecar(path)


def test_engine_symlinked_out_of_the_bundle_is_refused(tmp_path):
    from runtime.engines import locate_engine

    root = tmp_path / "bundle"
    root.mkdir()
    engine, machine = _sidecar_bundle(root)
    outside = tmp_path / "elsewhere.plan"
    engine.rename(outside)
    os.symlink(outside, engine)
    with pytest.raises(B.BundleError, match=rf"{engine.name}: resolves to {outside}, outside the bundle"):
        locate_engine(root, machine=machine, graph="decoder", precision="fp16")


# ----------------------------------------------------------------------------------------------- class 4: bounds


def _set_latent(d, n):
    d["model"]["latent_dim"] = n
    d["graphs"]["encoder"]["outputs"][0]["shape"][1] = n
    d["graphs"]["encoder"]["outputs"][1]["shape"][1] = n
    d["graphs"]["decoder"]["inputs"][0]["shape"][1] = n


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("latent_dim", 10**9, r"\[1, 65536\]"),
        ("latent_dim", -8, r"\[1, 65536\]"),
        ("latent_dim", 0, r"\[1, 65536\]"),
        ("image_size", 10**6, r"\[1, 8192\]"),
        ("in_channels", 1000, r"\[1, 64\]"),
        ("out_channels", -3, r"\[1, 64\]"),
    ],
)
def test_model_dims_out_of_bounds_are_refused_when_read(bundle_copy, key, value, expected):
    """The vae.json of the issue claims latent_dim 10**9 (and its shapes agree): refused before anything allocates."""

    def edit(d):
        if key == "latent_dim":
            _set_latent(d, value)
        else:
            d["model"][key] = value

    _edit(bundle_copy, edit)
    with pytest.raises(
        B.BundleError,
        match=rf"vae\.json: model\.{key}: expected an integer in {expected}, "
        rf"got {value}",
    ):
        runtime.load(bundle_copy, backend="onnxruntime")


def test_image_elements_are_bounded(bundle_copy):
    _edit(bundle_copy, lambda d: d["model"].update(in_channels=64, image_size=8192))
    with pytest.raises(
        B.BundleError,
        match=r"model: in_channels x image_size\^2 = 4294967296 values per image, "
        r"expected at most 268435456",
    ):
        B.read_manifest(bundle_copy)


@pytest.mark.parametrize(
    "value, kind", [(8.5, "number 8.5"), ("8", "string '8'"), (True, "boolean true"), (None, "null"), ([8], "list")]
)
def test_model_dims_must_be_integers(bundle_copy, value, kind):
    _edit(bundle_copy, lambda d: d["model"].update(latent_dim=value))
    with pytest.raises(
        B.BundleError, match=rf"model\.latent_dim: expected an integer in \[1, 65536\], got {re.escape(kind)}$"
    ):
        B.read_manifest(bundle_copy)


def test_hidden_dims_are_checked(bundle_copy):
    _edit(bundle_copy, lambda d: d["model"].update(hidden_dims=[8, -16]))
    with pytest.raises(B.BundleError, match=r"model\.hidden_dims\[1\]: expected an integer in \[1, 65536\], got -16"):
        B.read_manifest(bundle_copy)


@pytest.mark.parametrize(
    "edit, field, shape, implied",
    [
        (lambda d: d["model"].update(latent_dim=16), "graphs.encoder.outputs 'mu'", "(N, 8)", "(N, 16)"),
        (
            lambda d: d["graphs"]["decoder"]["inputs"][0].update(shape=["batch", 16]),
            "graphs.decoder.inputs 'z'",
            "(N, 16)",
            "(N, 8)",
        ),
        (
            lambda d: d["graphs"]["decoder"]["outputs"][0].update(shape=["batch", 3, 32, "width"]),
            "graphs.decoder.outputs 'image'",
            "(N, 3, 32, N)",
            "(N, 3, 32, 32)",
        ),
        (
            lambda d: d["graphs"]["decoder"]["outputs"][0].update(shape=["batch", 3, 32, 64]),
            "graphs.decoder.outputs 'image'",
            "(N, 3, 32, 64)",
            "(N, 3, 32, 32)",
        ),
        (
            lambda d: d["graphs"]["encoder"]["inputs"][0].update(shape=["batch", 3, 32]),
            "graphs.encoder.inputs 'image'",
            "(N, 3, 32)",
            "(N, 3, 32, 32)",
        ),
        (
            lambda d: d["model"].update(out_channels=1),
            "graphs.decoder.outputs 'image'",
            "(N, 3, 32, 32)",
            "(N, 1, 32, 32)",
        ),
    ],
)
def test_model_section_must_agree_with_the_graph_shapes(bundle_copy, edit, field, shape, implied):
    _edit(bundle_copy, edit)
    with pytest.raises(
        B.BundleError,
        match=rf"vae\.json: {field}: shape {re.escape(shape)}, "
        rf"the model config implies {re.escape(implied)}",
    ):
        runtime.load(bundle_copy, backend="onnxruntime")


# ----------------------------------------------------------------------------------------------- class 3: clear errors


@pytest.mark.parametrize(
    "shape, got",
    [
        ("batch,128", "string 'batch,128'"),
        ({"0": "batch"}, "object"),
        (["batch", -8], "axis 1: -8"),
        (["batch", 8.0], "axis 1: number 8.0"),
        (["batch", True], "axis 1: boolean true"),
        (["", 8], "axis 0: string ''"),
        (["batch", None], "axis 1: null"),
    ],
)
def test_shapes_must_be_lists_of_axes(bundle_copy, shape, got):
    _edit(bundle_copy, lambda d: d["graphs"]["decoder"]["inputs"][0].update(shape=shape))
    with pytest.raises(
        B.BundleError,
        match=rf"vae\.json: graphs\.decoder\.inputs\[0\]\.shape: expected a list of "
        rf"axes \(positive integers or axis names\), got {re.escape(got)}",
    ):
        B.read_manifest(bundle_copy)


def test_dtype_is_checked(bundle_copy):
    _edit(bundle_copy, lambda d: d["graphs"]["decoder"]["inputs"][0].update(dtype="int64"))
    with pytest.raises(
        B.BundleError,
        match=r"graphs\.decoder\.inputs\[0\]\.dtype: expected one of "
        r"\['float32', 'float16'\], got string 'int64'",
    ):
        B.read_manifest(bundle_copy)


@pytest.mark.parametrize(
    "graphs, loaded",
    [
        ("decoder", ("decoder",)),
        ("encoder", ("encoder",)),
        ("encoder,decoder", ("encoder", "decoder")),
        (" decoder , encoder ", ("decoder", "encoder")),
        (["decoder"], ("decoder",)),
    ],
)
def test_graphs_accepts_one_name_or_a_comma_separated_string(bundle, graphs, loaded):
    with runtime.load(bundle, backend="onnxruntime", graphs=graphs) as rt:
        assert rt.graphs == loaded


@pytest.mark.parametrize(
    "graphs, message",
    [
        ("decoderr", r"graphs: asked for \['decoderr'\], the bundle .* has \['decoder', 'encoder'\]"),
        ("", r"graphs: asked for \[\], the bundle"),
        (3, r"graphs: expected a graph name, a comma-separated string or a list of names, got int 3"),
        (["decoder", 3], r"graphs: expected graph names \(strings\), got int 3"),
    ],
)
def test_bad_graphs_are_named(bundle, graphs, message):
    with pytest.raises(runtime.BackendError, match=message):
        runtime.load(bundle, backend="onnxruntime", graphs=graphs)


@pytest.mark.parametrize("value, got", [(None, "None"), (3, "int 3"), ("", "''"), (b"bundle", "bytes b'bundle'")])
def test_load_and_read_manifest_name_what_they_expected(value, got):
    message = rf"bundle: expected a bundle folder or its vae\.json \(str or os\.PathLike\), got {re.escape(got)}"
    with pytest.raises(B.BundleError, match=message):
        runtime.load(value)
    with pytest.raises(B.BundleError, match=message):
        B.read_manifest(value)


def test_swapped_graph_with_another_input_dtype_is_refused_at_load(bundle_copy):
    """A decoder swapped for another model (sha256 updated) whose z is int64: refused by the graph I/O check when
    the session is made, not by the engine at the first run. (A float64 z would be cast by the backend: allowed.)"""
    onnx = pytest.importorskip("onnx", reason="builds the swapped graph with the onnx package")
    from onnx import TensorProto, helper, numpy_helper

    m = B.read_manifest(bundle_copy)
    d, (c, s, _) = m.model.latent_dim, m.model.output_shape
    w = numpy_helper.from_array(np.zeros((d, c * s * s), np.float32), "w")
    shape = numpy_helper.from_array(np.array([-1, c, s, s], np.int64), "shape")
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["z"], ["zf"], to=TensorProto.FLOAT),
            helper.make_node("MatMul", ["zf", "w"], ["y"]),
            helper.make_node("Reshape", ["y", "shape"], ["image"]),
        ],
        "swapped",
        [helper.make_tensor_value_info("z", TensorProto.INT64, ["batch", d])],
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", c, s, s])],
        [w, shape],
    )
    path = bundle_copy / "decoder.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), str(path))
    _edit(bundle_copy, lambda data: data["graphs"]["decoder"].update(sha256=sha256_file(path)))
    with pytest.raises(B.BundleError, match=r"decoder\.onnx: input 'z' has dtype int64, vae\.json says float32"):
        runtime.load(bundle_copy, backend="onnxruntime", graphs=("decoder",), preload=True)


# ----------------------------------------------------------------------------------------------- engine precisions


def _bf16_record(spec: dict) -> dict:
    """graphs.<g>.engine_precisions.bf16 as export.precision.bf16 writes it (the numbers left out)."""
    return {
        "precision": "bf16",
        "engine": "openvino",
        "file": spec["file"],
        "sha256": spec["sha256"],
        "device": "CPU",
        "properties": {"INFERENCE_PRECISION_HINT": "bf16"},
        "versions": {"openvino": "2026.4.1"},
        "accuracy": {"passed": True},
        "budget": {"image": {"min_psnr": 40.0}},
    }


def test_engine_precisions_are_optional_and_round_trip(bundle_copy):
    data = json.loads((bundle_copy / B.MANIFEST_NAME).read_text())
    assert all("engine_precisions" not in g for g in data["graphs"].values())  # bundles made before issue 19
    assert B.read_manifest(bundle_copy).to_dict()["graphs"] == data["graphs"]  # ... are written back unchanged
    _edit(
        bundle_copy,
        lambda d: d["graphs"]["decoder"].update(engine_precisions={"bf16": _bf16_record(d["graphs"]["decoder"])}),
    )
    m = B.read_manifest(bundle_copy)
    rec = m.graphs["decoder"].engine_precisions["bf16"]
    assert (rec.engine, rec.file, rec.versions) == ("openvino", "decoder.onnx", {"openvino": "2026.4.1"})
    assert m.graphs["decoder"].precisions() == ["fp32", "bf16"]
    assert m.to_dict()["graphs"]["decoder"]["engine_precisions"]["bf16"] == _bf16_record(
        json.loads((bundle_copy / B.MANIFEST_NAME).read_text())["graphs"]["decoder"]
    )
    with runtime.load(bundle_copy, backend="onnxruntime") as rt:  # other backends load such a bundle as before
        rt.decode(np.zeros((1, rt.latent_dim), np.float32))


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda r: {"fp8": r},
            r"graphs.decoder.engine_precisions.fp8: unknown engine precision; expected one of \['bf16'\]",
        ),
        (
            lambda r: {"bf16": {**r, "precision": "fp16"}},
            r"engine_precisions.bf16.precision: expected 'bf16', got string",
        ),
        (
            lambda r: {"bf16": {**r, "file": "decoder.fp16.onnx"}},
            r"engine_precisions.bf16.file: expected the graph's own file 'decoder.onnx'",
        ),
        (
            lambda r: {"bf16": {**r, "file": "../decoder.onnx"}},
            r"engine_precisions.bf16.file: expected a relative path",
        ),
        (lambda r: {"bf16": {k: v for k, v in r.items() if k != "sha256"}}, r"engine_precisions.bf16.sha256: expected"),
        (lambda r: {"bf16": {**r, "engine": ""}}, r"engine_precisions.bf16.engine: expected a backend name"),
        (lambda r: {"bf16": {**r, "accuracy": []}}, r"engine_precisions.bf16.accuracy: expected an object, got list"),
        (lambda r: [r], r"graphs.decoder.engine_precisions: expected an object, got list"),
    ],
)
def test_engine_precisions_are_checked_when_read(bundle_copy, edit, message):
    _edit(
        bundle_copy,
        lambda d: d["graphs"]["decoder"].update(engine_precisions=edit(_bf16_record(d["graphs"]["decoder"]))),
    )
    with pytest.raises(B.BundleError, match=message):
        B.read_manifest(bundle_copy)
