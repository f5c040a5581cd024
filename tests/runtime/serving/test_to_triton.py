"""runtime.serving.to_triton: model repositories whose config.pbtxt files parse against Triton's ModelConfig schema, per platform;
engine choice for tensorrt_plan; clear refusals; an atomic write."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from runtime import bundle as B
from runtime.engines import (
    EngineSidecar,
    GpuInfo,
    PlatformInfo,
    Profile,
    TrtInfo,
    engine_path,
    sidecar_path,
    write_sidecar,
)
from runtime.files import sha256_file
from runtime.serving.repository import RepoOptions, RepositoryError, config_text, to_pbtxt, write_repository
from runtime.serving.to_triton import main

model_config_pb2 = pytest.importorskip(
    "tritonclient.grpc.model_config_pb2", reason="tritonclient (the `serve` extra) ships Triton's ModelConfig schema"
)
from google.protobuf import text_format  # noqa: E402

A100 = GpuInfo("NVIDIA A100-SXM4-80GB", (8, 0))
TRT10 = TrtInfo("trt", "10.13.3.9")


@pytest.fixture(scope="module")
def bundle(tiny_checkpoint, tmp_path_factory) -> Path:
    from export.to_onnx import export_bundle

    return export_bundle(tiny_checkpoint, tmp_path_factory.mktemp("bundle") / "tiny", log=lambda *a: None)


def parse(path: Path):
    """Triton's own schema: text_format rejects unknown fields, wrong types and unknown enum values."""
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def run(*argv) -> int:
    return main([str(a) for a in argv])


def io(cfg) -> dict:
    return {t.name: (model_config_pb2.DataType.Name(t.data_type), list(t.dims)) for t in [*cfg.input, *cfg.output]}


# ----------------------------------------------------------------------------------------------- platforms


def test_onnxruntime_repository(bundle, tmp_path, capsys):
    out = tmp_path / "repo"
    assert (
        run(
            bundle,
            "--out",
            out,
            "--max-batch",
            32,
            "--instances",
            2,
            "--preferred-batch",
            "8,16",
            "--queue-delay-us",
            250,
            "--accelerator",
            "tensorrt-fp16",
        )
        == 0
    )
    assert "schema-checked" in capsys.readouterr().out
    m = B.read_manifest(bundle)
    enc, dec = parse(out / "vae_encoder" / "config.pbtxt"), parse(out / "vae_decoder" / "config.pbtxt")
    assert enc.name == "vae_encoder" and enc.platform == "onnxruntime_onnx" and dec.name == "vae_decoder"
    # dims without the batch axis, from the manifest
    assert io(enc) == {"image": ("TYPE_FP32", [3, 32, 32]), "mu": ("TYPE_FP32", [8]), "logvar": ("TYPE_FP32", [8])}
    assert io(dec) == {"z": ("TYPE_FP32", [8]), "image": ("TYPE_FP32", [3, 32, 32])}
    for cfg in (enc, dec):
        assert cfg.max_batch_size == 32
        assert list(cfg.dynamic_batching.preferred_batch_size) == [8, 16]
        assert cfg.dynamic_batching.max_queue_delay_microseconds == 250
        assert len(cfg.instance_group) == 1 and cfg.instance_group[0].count == 2
        assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
        (acc,) = cfg.optimization.execution_accelerators.gpu_execution_accelerator
        assert acc.name == "tensorrt" and acc.parameters["precision_mode"] == "FP16"
        assert [(w.batch_size, list(w.inputs)) for w in cfg.model_warmup] == [
            (1, [cfg.input[0].name]),
            (32, [cfg.input[0].name]),
        ]
        assert all(w.inputs[cfg.input[0].name].zero_data for w in cfg.model_warmup)
    # the bundle's graphs, byte for byte
    assert sha256_file(out / "vae_encoder" / "1" / "model.onnx") == m.graph("encoder").sha256
    assert sha256_file(out / "vae_decoder" / "1" / "model.onnx") == m.graph("decoder").sha256
    marker = json.loads((out / "vae-triton.json").read_text())
    assert marker["validated"] and marker["options"]["platform"] == "onnxruntime"
    assert [x["model"] for x in marker["models"]] == ["vae_encoder", "vae_decoder"]


def test_python_repository_hosts_the_runtime(bundle, tmp_path):
    out = tmp_path / "repo"
    assert (
        run(
            bundle,
            "--out",
            out,
            "--platform",
            "python",
            "--threads",
            2,
            "--no-dynamic-batching",
            "--graphs",
            "decoder",
            "--no-warmup",
        )
        == 0
    )
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["vae_decoder"]
    cfg = parse(out / "vae_decoder" / "config.pbtxt")
    assert cfg.backend == "python" and not cfg.platform
    assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU  # python defaults to cpu
    assert not cfg.HasField("dynamic_batching") and not cfg.model_warmup
    assert {k: v.string_value for k, v in cfg.parameters.items()} == {
        "graph": "decoder",
        "backend": "onnxruntime",
        "precision": "fp32",
        "threads": "2",
    }
    version = out / "vae_decoder" / "1"
    assert (version / "model.py").read_text() == (Path(B.__file__).parent / "serving" / "triton_model.py").read_text()
    assert sorted(p.name for p in (version / "bundle").iterdir()) == ["decoder.onnx", "vae.json"]
    assert (version / "runtime" / "vae.py").is_file() and not (version / "runtime" / "cpp").exists()
    assert (version / "runtime" / "serving" / "triton_model.py").is_file()
    # the copied files are the bundle's, unchanged (sha256 checked by the load), and model.py loads the one graph
    import numpy as np

    import runtime

    with (
        runtime.load(version / "bundle", backend="onnxruntime", graphs=("decoder",)) as vae,
        runtime.load(bundle, backend="onnxruntime") as ref,
    ):
        z = np.random.default_rng(0).standard_normal((2, vae.latent_dim), dtype=np.float32)
        assert np.array_equal(vae.decode(z), ref.decode(z))


def test_python_repository_warms_up_inside_the_model_not_through_triton(bundle, tmp_path):
    """Triton counts model_warmup requests in nv_inference_* like client requests; the python models warm up in
    model.py's initialize() instead (warmup_batches), so a fresh server's metrics start at zero."""
    out = tmp_path / "repo"
    assert run(bundle, "--out", out, "--platform", "python", "--max-batch", 16) == 0
    for model in ("vae_encoder", "vae_decoder"):
        cfg = parse(out / model / "config.pbtxt")
        assert not cfg.model_warmup
        assert cfg.parameters["warmup_batches"].string_value == "1,16"


def add_engine(bundle: Path, graph: str, *, trt=TRT10, gpu=A100, profile_max=64, profile_min=1, source_sha=None):
    """An engine file + sidecar laid out as export.tensorrt.build does. The plan bytes are arbitrary: the repository
    writer copies and hashes them, it never deserializes an engine (that needs a GPU)."""
    m = B.read_manifest(bundle)
    spec = m.graph(graph)
    engine = engine_path(bundle, graph, "fp16", gpu, trt)
    engine.parent.mkdir(exist_ok=True)
    engine.write_bytes(f"plan for {graph} {trt.tag}".encode())
    name = spec.inputs[0].name
    dims = tuple(d for d in spec.inputs[0].shape[1:])
    write_sidecar(
        sidecar_path(engine),
        EngineSidecar(
            graph=graph,
            precision="fp16",
            engine_file=engine.name,
            engine_sha256=sha256_file(engine),
            source_file=spec.file,
            source_sha256=source_sha or spec.sha256,
            trt=trt,
            gpu=gpu,
            platform=PlatformInfo("x86_64"),
            profile=Profile(name, (profile_min, *dims), (profile_max // 2, *dims), (profile_max, *dims)),
        ),
    )
    return engine


@pytest.fixture
def bundle_copy(bundle, tmp_path) -> Path:
    return Path(shutil.copytree(bundle, tmp_path / "bundle"))


def test_tensorrt_repository_from_engines(bundle_copy, tmp_path):
    engines = {g: add_engine(bundle_copy, g, profile_max=48 if g == "decoder" else 64) for g in B.GRAPHS}
    out = tmp_path / "repo"
    assert run(bundle_copy, "--out", out, "--platform", "tensorrt", "--precision", "fp16") == 0
    for g in B.GRAPHS:
        cfg = parse(out / f"vae_{g}" / "config.pbtxt")
        assert cfg.platform == "tensorrt_plan" and cfg.default_model_filename == "model.plan"
        assert cfg.max_batch_size == 48  # default: the smallest profile max of the engines
        version = out / f"vae_{g}" / "1"
        assert (version / "model.plan").read_bytes() == engines[g].read_bytes()
        assert json.loads((version / "engine.json").read_text())["tensorrt"]["version"] == TRT10.version


@pytest.mark.parametrize(
    "case, expect",
    [
        ("none", "no fp16 decoder engine.*python -m export.tensorrt.build"),
        ("rtx", "TensorRT-RTX.*loads TensorRT plans only"),
        ("stale", "not the bundle's current file"),
        ("too_big", "--max-batch 128 exceeds the profile's max batch 64"),
        ("min2", "starts at batch 2"),
        ("two", "several fp16 decoder engines.*--engine-filter"),
    ],
)
def test_tensorrt_refusals(bundle_copy, tmp_path, capsys, case, expect):
    if case == "rtx":
        add_engine(bundle_copy, "decoder", trt=TrtInfo("trt_rtx", "1.7.1.116"), gpu=None)
    elif case == "stale":
        add_engine(bundle_copy, "decoder", source_sha="0" * 64)
    elif case == "min2":
        add_engine(bundle_copy, "decoder", profile_min=2)
    elif case in ("too_big", "two"):
        add_engine(bundle_copy, "decoder")
        if case == "two":
            add_engine(bundle_copy, "decoder", trt=TrtInfo("trt", "10.3.0"))
    extra = ["--max-batch", "128"] if case == "too_big" else []
    out = tmp_path / "repo"
    assert (
        run(bundle_copy, "--out", out, "--platform", "tensorrt", "--precision", "fp16", "--graphs", "decoder", *extra)
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("error: ") and re.search(expect, err, re.S), err
    assert not out.exists()


def test_engine_filter_picks_one(bundle_copy, tmp_path):
    add_engine(bundle_copy, "decoder")
    add_engine(bundle_copy, "decoder", trt=TrtInfo("trt", "10.3.0"))  # the version as tensorrt.__version__ says it
    out = tmp_path / "repo"
    assert (
        run(
            bundle_copy,
            "--out",
            out,
            "--platform",
            "tensorrt",
            "--precision",
            "fp16",
            "--graphs",
            "decoder",
            "--engine-filter",
            "trt10.3.0",
        )
        == 0
    )
    assert json.loads((out / "vae_decoder" / "1" / "engine.json").read_text())["tensorrt"]["version"] == "10.3.0"


# ----------------------------------------------------------------------------------------------- refusals, atomicity


@pytest.mark.parametrize(
    "argv, expect",
    [
        (["--preferred-batch", "8,128"], r"--preferred-batch: \[128\] outside 1..max_batch \(64\)"),
        (["--max-batch", "0"], "--max-batch: expected an integer from 1"),
        (["--instances", "0"], "--instances: expected >= 1"),
        (["--queue-delay-us", "-1"], "--queue-delay-us: expected >= 0"),
        (
            ["--accelerator", "tensorrt", "--kind", "cpu"],
            "--accelerator tensorrt: only for --platform onnxruntime with",
        ),
        (["--platform", "tensorrt", "--kind", "cpu"], "tensorrt runs on GPU instances only"),
        (["--no-dynamic-batching", "--preferred-batch", "8"], "--preferred-batch needs dynamic batching"),
        (["--precision", "fp16"], "has no 'fp16' variant.*export.precision.fp16"),
        (["--graphs", "decoder,vae"], "--graphs: expected some of"),
    ],
)
def test_bad_options_exit_2(bundle, tmp_path, capsys, argv, expect):
    out = tmp_path / "repo"
    assert run(bundle, "--out", out, *argv) == 2
    err = capsys.readouterr().err
    assert re.search(expect, err), err
    assert "Traceback" not in err and not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # no temporary folder left behind


def test_not_a_bundle_and_foreign_folder(bundle, tmp_path, capsys):
    assert run(tmp_path / "nothing", "--out", tmp_path / "r") == 2
    assert "no bundle manifest here" in capsys.readouterr().err
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    assert run(bundle, "--out", foreign) == 2
    assert "is not a repository written by this tool" in capsys.readouterr().err
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_rewrite_replaces_a_previous_repository_whole(bundle, tmp_path, capsys):
    out = tmp_path / "repo"
    assert run(bundle, "--out", out, "--max-batch", 16) == 0
    (out / "vae_encoder" / "stale.txt").write_text("not written by the tool")  # someone else's: refused, kept
    assert run(bundle, "--out", out, "--max-batch", 8, "--graphs", "decoder") == 2
    assert "vae_encoder/stale.txt" in capsys.readouterr().err and (out / "vae_encoder" / "stale.txt").exists()
    (out / "vae_encoder" / "stale.txt").unlink()
    assert run(bundle, "--out", out, "--max-batch", 8, "--graphs", "decoder") == 0
    assert not (out / "vae_encoder").exists()
    assert parse(out / "vae_decoder" / "config.pbtxt").max_batch_size == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]


def test_schema_rejects_what_triton_would(bundle):
    """The check is real: a misspelt field or enum value fails the same parser the tests use."""
    from runtime.serving.repository import validate_config

    spec = B.read_manifest(bundle).graph("decoder")
    text = config_text(spec, RepoOptions())
    assert validate_config(text).max_batch_size == 64
    with pytest.raises(RepositoryError, match="x.pbtxt: not a valid Triton ModelConfig"):
        validate_config(text.replace("max_batch_size", "max_batch"), "x.pbtxt")
    with pytest.raises(RepositoryError, match="not a valid Triton ModelConfig"):
        validate_config(text.replace("KIND_GPU", "KIND_TPU"))


def test_pbtxt_writer_escapes_and_nests():
    text = to_pbtxt(
        {
            "name": 'a"b\\c',
            "n": 3,
            "flag": False,
            "dims": [1, 2],
            "empty": [],
            "skip": None,
            "sub": {"x": 1.5},
            "rep": [{"k": "v"}],
        }
    )
    assert text.splitlines() == [
        'name: "a\\"b\\\\c"',
        "n: 3",
        "flag: false",
        "dims: [ 1, 2 ]",
        "sub {",
        "  x: 1.5",
        "}",
        "rep [",
        "  {",
        '    k: "v"',
        "  }",
        "]",
    ]


def test_write_repository_api_validates_when_asked(bundle, tmp_path):
    repo = write_repository(bundle, tmp_path / "r", RepoOptions(kind="cpu"), validate=True)
    assert repo.validated and repo.models == ("vae_encoder", "vae_decoder")
    assert (
        parse(repo.path / "vae_encoder" / "config.pbtxt").instance_group[0].kind
        == model_config_pb2.ModelInstanceGroup.KIND_CPU
    )
