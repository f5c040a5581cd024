"""Our exported graphs through a real TensorRT parser and builder: TensorRT for RTX (`tensorrt-rtx-cu12`), whose
ONNX parser and ahead-of-time builder run on a CPU. No TensorRT runtime object is created here (that needs a GPU).

Also the builder's own path on a CPU: engine + sidecar written atomically, --no-verify recorded, a build that needs
verification refused without a GPU, and the runtime's sidecar check refusing the engine after a re-export."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import pytest

trt = pytest.importorskip(
    "tensorrt_rtx", reason="tensorrt-rtx-cu12 is not installed (pip install tensorrt-rtx-cu12==1.7.1.116, ~220 MB)"
)

from export.tensorrt.build_plan import BuildOptions, plan_build  # noqa: E402
from export.tensorrt.engine import TrtBuildError, build_engine, parse_onnx  # noqa: E402
from runtime import bundle as B  # noqa: E402
from runtime.engines import (
    EngineMismatchError,
    MachineInfo,
    TrtInfo,
    host_platform,
    read_sidecar,  # noqa: E402
    require_usable,
)
from runtime.files import sha256_file  # noqa: E402

RTX = TrtInfo("trt_rtx", trt.__version__)


@pytest.fixture(scope="module")
def bundle(tiny_checkpoint, tmp_path_factory) -> Path:
    from export.to_onnx import export_bundle

    return export_bundle(tiny_checkpoint, tmp_path_factory.mktemp("trt") / "tiny", log=lambda *a: None)


@pytest.fixture
def bundle_copy(bundle, tmp_path) -> Path:
    return Path(shutil.copytree(bundle, tmp_path / "bundle"))


def add_fp16_variant(bundle: Path, graph: str) -> B.VariantSpec:
    """An FP16 variant made the simplest way (all-FP16 weights, FP32 I/O), listed in vae.json like export.precision.fp16
    lists its own: enough to prove the strongly typed FP16 path parses and builds."""
    import onnx
    from onnxconverter_common import float16

    model = float16.convert_float_to_float16(onnx.load(str(bundle / f"{graph}.onnx")), keep_io_types=True)
    path = bundle / f"{graph}.fp16.onnx"
    onnx.save(model, str(path))
    m = B.read_manifest(bundle)
    v = B.VariantSpec("fp16", path.name, sha256_file(path))
    graphs = dict(m.graphs)
    graphs[graph] = dataclasses.replace(graphs[graph], variants={**graphs[graph].variants, "fp16": v})
    B.write_manifest(bundle, dataclasses.replace(m, graphs=graphs))
    return v


@pytest.mark.parametrize("graph", B.GRAPHS)
def test_fp32_graphs_parse_with_zero_errors(bundle, graph):
    _logger, _builder, network, parser = parse_onnx(trt, bundle / f"{graph}.onnx")
    assert parser.num_errors == 0
    ins, outs = B.GRAPH_IO[graph]
    assert [network.get_input(i).name for i in range(network.num_inputs)] == list(ins)
    assert [network.get_output(i).name for i in range(network.num_outputs)] == list(outs)
    assert network.get_input(0).shape[0] == -1  # the batch axis stayed dynamic
    # Every layer traces back to an ONNX node (or is a weight constant / parser broadcast helper).
    metas = [network.get_layer(i).metadata for i in range(network.num_layers)]
    assert sum(m.startswith("[ONNX Layer: ") for m in metas) >= len(metas) // 2


def test_fp16_variant_parses_strongly_typed(bundle_copy):
    add_fp16_variant(bundle_copy, B.DECODER)
    _logger, _builder, network, _parser = parse_onnx(trt, bundle_copy / "decoder.fp16.onnx", strongly_typed=True)
    assert network.get_input(0).dtype == trt.float32 and network.get_output(0).dtype == trt.float32


def test_parser_errors_are_listed(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("NoSuchOp", ["x"], ["y"], name="mystery", domain="vae.custom")
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    path = tmp_path / "bad.onnx"
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("vae.custom", 1)]),
        str(path),
    )
    with pytest.raises(
        TrtBuildError, match=r"(?s)bad\.onnx: the TensorRT ONNX parser reported \d+ error\(s\).*NoSuchOp"
    ):
        parse_onnx(trt, path)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_build_without_gpu_writes_unverified_engine_and_sidecar(bundle_copy, precision):
    if precision == "fp16":
        add_fp16_variant(bundle_copy, B.DECODER)
    manifest = B.read_manifest(bundle_copy)
    plan = plan_build(RTX, B.DECODER, precision, manifest, BuildOptions(min_batch=1, opt_batch=2, max_batch=4))
    res = build_engine(bundle_copy, plan, trt=trt, verify=False, log=lambda *a: None)

    assert res.engine == bundle_copy / f"engines/decoder.{precision}.portable.{RTX.tag}.plan"
    assert res.engine.stat().st_size > 0 and not res.verified
    assert sorted(p.name for p in res.engine.parent.iterdir()) == sorted([res.engine.name, res.sidecar.name])
    side = read_sidecar(res.sidecar)
    assert side.parity == {"verified": False}
    assert side.engine_sha256 == sha256_file(res.engine)
    assert (side.source_file, side.source_sha256) == (plan.onnx_file, plan.onnx_sha256)
    assert side.profile.batch == (1, 2, 4) and side.gpu is None and side.trt == RTX
    assert side.build_options["strongly_typed"] is True and side.build_options["clear_flags"] == ["TF32"]
    assert json.loads(res.sidecar.read_text())["platform"]["machine"] == host_platform().machine

    # The runtime accepts it on a machine with this TensorRT-RTX ... and refuses it once the graph is re-exported.
    here = MachineInfo(RTX, None, host_platform())
    assert (
        require_usable(bundle_copy, res.engine, machine=here, manifest=manifest, graph="decoder", precision=precision)
        == side
    )
    src = bundle_copy / plan.onnx_file
    src.write_bytes(src.read_bytes() + b"\0")
    spec = manifest.graphs["decoder"]
    spec = (
        dataclasses.replace(spec, sha256=sha256_file(src))
        if precision == "fp32"
        else dataclasses.replace(
            spec, variants={"fp16": dataclasses.replace(spec.variants["fp16"], sha256=sha256_file(src))}
        )
    )
    B.write_manifest(bundle_copy, dataclasses.replace(manifest, graphs={**manifest.graphs, "decoder": spec}))
    with pytest.raises(EngineMismatchError, match="the graph changed since the build") as info:
        require_usable(
            bundle_copy,
            res.engine,
            machine=here,
            manifest=B.read_manifest(bundle_copy),
            graph="decoder",
            precision=precision,
        )
    assert info.value.rebuild == (
        f"python -m export.tensorrt.build {bundle_copy} --graphs decoder --precision "
        f"{precision} --min-batch 1 --opt-batch 2 --max-batch 4"
    )


def test_build_that_needs_verification_is_refused_without_gpu(bundle_copy):
    from runtime.backends.tensorrt import gpu_count

    if gpu_count():
        pytest.skip("a GPU is visible: verification would run")
    plan = plan_build(RTX, B.DECODER, "fp32", B.read_manifest(bundle_copy), BuildOptions())
    with pytest.raises(TrtBuildError, match="no CUDA GPU visible.*--no-verify"):
        build_engine(bundle_copy, plan, trt=trt, verify=True, log=lambda *a: None)
    assert not (bundle_copy / "engines").exists() or not any((bundle_copy / "engines").iterdir())


def test_cli_builds_and_prints(bundle_copy, capsys):
    from export.tensorrt.build import main

    assert (
        main(
            [
                str(bundle_copy),
                "--flavour",
                "trt_rtx",
                "--precision",
                "fp32",
                "--no-verify",
                "--max-batch",
                "4",
                "--opt-batch",
                "2",
            ]
        )
        == 0
    )
    names = sorted(p.name for p in (bundle_copy / "engines").iterdir())
    tag = RTX.tag
    assert names == [
        f"decoder.fp32.portable.{tag}.json",
        f"decoder.fp32.portable.{tag}.plan",
        f"encoder.fp32.portable.{tag}.json",
        f"encoder.fp32.portable.{tag}.plan",
    ]
    capsys.readouterr()
    assert (
        main(
            [str(bundle_copy), "--flavour", "trt_rtx", "--graphs", "encoder", "--precision", "fp32", "--print-trtexec"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "tensorrt_rtx \\\n" in out and "--maxShapes=image:32x3x32x32" in out
    # fp16 on a strongly typed TensorRT without the variant: one line, exit 2
    assert main([str(bundle_copy), "--flavour", "trt_rtx", "--precision", "fp16", "--no-verify"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: TensorRT-RTX") and "export.precision.fp16" in err and "Traceback" not in err
    # --adopt refuses a file that cannot be an engine and leaves the built one in place
    garbage = bundle_copy / "garbage.plan"
    garbage.write_bytes(b"garbage\n")
    engine = bundle_copy / "engines" / f"decoder.fp32.portable.{tag}.plan"
    before = engine.read_bytes()
    assert (
        main(
            [
                str(bundle_copy),
                "--flavour",
                "trt_rtx",
                "--graphs",
                "decoder",
                "--precision",
                "fp32",
                "--no-verify",
                "--adopt",
                str(garbage),
            ]
        )
        == 2
    )
    assert "8 bytes, too small to be a TensorRT engine" in capsys.readouterr().err
    assert engine.read_bytes() == before


def test_kept_nodes_map_to_the_parser_layers(bundle):
    """The layer-precision matching (used on TensorRT 10) against a real parser's layer names and metadata."""
    import onnx

    from export.tensorrt.build_plan import layers_to_constrain

    path = bundle / "encoder.onnx"
    nodes = [n.name for n in onnx.load(str(path)).graph.node]
    gemms = [n.name for n in onnx.load(str(path)).graph.node if n.op_type == "Gemm"]
    assert len(gemms) == 2  # fc_mu and fc_var
    _logger, _builder, network, _parser = parse_onnx(trt, path)
    layers = [(network.get_layer(i).name, network.get_layer(i).metadata) for i in range(network.num_layers)]
    chosen, unmatched = layers_to_constrain(layers, [gemms[1]], nodes)
    assert unmatched == [] and chosen
    meta = dict(layers)
    assert all(meta[name] == f"[ONNX Layer: {gemms[1]}]" for name in chosen)
    assert len(chosen) == sum(m == f"[ONNX Layer: {gemms[1]}]" for m in meta.values())
    _, unmatched = layers_to_constrain(layers, ["node_not_there"], nodes)
    assert unmatched == ["node_not_there"]


# ----------------------------------------------------------------------------------------------- review fixes


class _Untouchable:
    """Stands for a TensorRT module that must not be used at all: any attribute is a test failure."""

    def __getattr__(self, name):
        raise AssertionError(f"trt.{name} was used")


def test_full_tensorrt_without_gpu_refuses_before_creating_a_builder(bundle_copy):
    """--no-verify on a TensorRT (not RTX) host with no GPU: a clear refusal, and no Builder (which would crash)."""
    from runtime.backends.tensorrt import gpu_count

    if gpu_count():
        pytest.skip("a GPU is visible")
    plan = plan_build(TrtInfo("trt", "10.3.0"), B.DECODER, "fp32", B.read_manifest(bundle_copy), BuildOptions())
    with pytest.raises(TrtBuildError, match=r"TensorRT 10.3.0 builds engines on the GPU that will run them"):
        build_engine(bundle_copy, plan, trt=_Untouchable(), verify=False, log=lambda *a: None)


class _Config:
    """A builder config whose timing cache calls fail the way full TensorRT's do on foreign bytes."""

    def __init__(self, create, accept):
        self._create, self._accept = create, accept

    def create_timing_cache(self, data):
        return self._create(data)

    def set_timing_cache(self, cache, ignore_mismatch):
        if cache is None:  # what the real binding does with None
            raise TypeError("set_timing_cache(): incompatible function arguments")
        return self._accept


@pytest.mark.parametrize(
    "create,accept,why",
    [
        (lambda data: None, True, "TensorRT could not read it"),
        (lambda data: (_ for _ in ()).throw(RuntimeError("bad magic")), True, "RuntimeError: bad magic"),
        (lambda data: object(), False, "TensorRT could not read it"),
    ],
)
def test_corrupt_or_foreign_timing_cache_is_a_clear_error(tmp_path, create, accept, why):
    from export.tensorrt.engine import _timing_cache

    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"\x00not a cache" * 10)
    with pytest.raises(TrtBuildError, match=rf"{cache}: timing cache rejected \(.*{why}.*120 bytes"):
        _timing_cache(_Config(create, accept), cache)


def test_layer_precisions_only_on_float_layers(tmp_path):
    """Kept-FP32 nodes resolve to the parser's float layers only: not a Shape layer, an INT64 constant or a cast
    from integers (a float Reshape fed a shape tensor is a float layer)."""
    import onnx
    from onnx import TensorProto, helper

    from export.tensorrt.engine import constrained_layers

    nodes = [
        helper.make_node("Shape", ["x"], ["s"], name="shape"),
        helper.make_node("Cast", ["s"], ["sf"], name="cast", to=TensorProto.FLOAT),
        helper.make_node(
            "Constant", [], ["two"], name="two", value=helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
        ),
        helper.make_node("Mul", ["x", "two"], ["y"], name="mul"),
        helper.make_node("Reshape", ["y", "s"], ["out"], name="reshape"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [
            helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", 4]),
            helper.make_tensor_value_info("sf", TensorProto.FLOAT, [2]),
        ],
    )
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    _logger, _builder, network, _parser = parse_onnx(trt, path)
    kept = ("shape", "cast", "mul", "reshape")
    layers = {network.get_layer(i).name: network.get_layer(i) for i in range(network.num_layers)}
    chosen = {c.name for c in constrained_layers(trt, network, kept, [n.name for n in nodes])}
    assert chosen, layers
    for name in chosen:
        lay = layers[name]
        assert all(lay.get_output(k).dtype == trt.float32 for k in range(lay.num_outputs)), name
    node_of = {n: re.findall(r"\[ONNX Layer: ([^\]]+)\]", lay.metadata or "") for n, lay in layers.items()}
    assert {node_of[n][0] for n in chosen} == {"mul", "reshape"}, (chosen, node_of)
    left = [n for n, ns in node_of.items() if ns and ns[0] in ("shape", "cast")]
    assert left and not set(left) & chosen  # the kept integer layers exist and were left alone


def test_trtexec_gets_the_parser_layer_names(bundle_copy, capsys):
    """The printed trtexec command lists the TensorRT layers the kept-FP32 nodes became (the parser's suffixes are
    not predictable: node_linear's bias add is node_linear_0 here), with --layerOutputTypes, as the Python build."""
    import onnx

    from export.tensorrt.build import main
    from export.tensorrt.engine import constrained_layers

    v = add_fp16_variant(bundle_copy, B.DECODER)
    kept = ("node_linear", "node_tanh")
    m = B.read_manifest(bundle_copy)
    spec = m.graphs[B.DECODER]
    spec = dataclasses.replace(spec, variants={"fp16": dataclasses.replace(v, kept_fp32_nodes=kept)})
    B.write_manifest(bundle_copy, dataclasses.replace(m, graphs={**m.graphs, B.DECODER: spec}))
    path = bundle_copy / "decoder.onnx"
    _logger, _builder, network, _parser = parse_onnx(trt, path)
    chosen = constrained_layers(trt, network, kept, [n.name for n in onnx.load(str(path)).graph.node])
    assert len(chosen) > len(kept)  # node_linear became more than one layer
    capsys.readouterr()
    assert main([str(bundle_copy), "--graphs", "decoder", "--print-trtexec", "--target", "trt:10.3.0"]) == 0
    out = capsys.readouterr().out
    assert f"from the tensorrt_rtx {trt.__version__} ONNX parser" in out
    args = out.replace("\\\n", " ").split()
    assert f"--layerPrecisions={','.join(c.name + ':fp32' for c in chosen)}" in args, out
    assert f"--layerOutputTypes={','.join(c.name + ':fp32' for c in chosen)}" in args, out


def test_rtx_build_records_the_compute_capabilities_it_set(bundle_copy):
    manifest = B.read_manifest(bundle_copy)
    plan = plan_build(RTX, B.DECODER, "fp32", manifest, BuildOptions(min_batch=1, opt_batch=2, max_batch=4))
    res = build_engine(bundle_copy, plan, trt=trt, verify=False, log=lambda *a: None)
    offered = [m for m in trt.ComputeCapability.__members__ if re.fullmatch(r"SM\d+", m)]
    side = read_sidecar(res.sidecar)
    assert side.compute_capabilities and "7.5" not in side.compute_capabilities  # Turing only when asked
    assert len(side.compute_capabilities) == len(offered) - ("SM75" in offered)
    assert "REQUIRE_USER_ALLOCATION" in side.build_options["set_flags"]
    narrow = plan_build(RTX, B.DECODER, "fp32", manifest, BuildOptions(compute_capabilities=("8.6",)))
    res = build_engine(bundle_copy, narrow, trt=trt, verify=False, log=lambda *a: None)
    assert read_sidecar(res.sidecar).compute_capabilities == ("8.6",)


def test_adopt_unverified_never_replaces_a_verified_engine_unless_forced(bundle_copy, capsys):
    """5,000 random bytes with --no-verify: nothing can check them here (TensorRT's plan header is undocumented), so
    an engine already in place that passed parity is kept; --force replaces it (the sidecar then says unverified)."""
    import numpy as np

    from export.tensorrt.build import main
    from runtime.engines import write_sidecar

    args = [str(bundle_copy), "--flavour", "trt_rtx", "--graphs", "decoder", "--precision", "fp32", "--no-verify"]
    assert main(args) == 0
    engine = bundle_copy / "engines" / f"decoder.fp32.portable.{RTX.tag}.plan"
    sidecar = engine.with_suffix(".json")
    verified = dataclasses.replace(read_sidecar(sidecar), parity={"verified": True, "passed": True, "device": "RTX"})
    write_sidecar(sidecar, verified)  # as if it had been built and checked on a GPU
    before = engine.read_bytes(), sidecar.read_bytes()
    random_bytes = bundle_copy / "random.plan"
    random_bytes.write_bytes(np.random.default_rng(0).bytes(5000))
    capsys.readouterr()
    assert main([*args, "--adopt", str(random_bytes)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        f"error: --adopt {random_bytes}: {engine} is already there and passed its parity check "
        "(on RTX); refusing to replace it with an unverified engine (--no-verify)"
    )
    assert "--force" in err and len(err.strip().splitlines()) == 1
    assert (engine.read_bytes(), sidecar.read_bytes()) == before
    # unverified, a TensorRT-RTX engine needs its targets named: otherwise the runtime could never accept it
    assert main([*args, "--adopt", str(random_bytes), "--force"]) == 2
    assert "records no target GPUs" in capsys.readouterr().err
    ccs = ["--compute-capabilities", "8.6"]
    assert main([*args, "--adopt", str(random_bytes), "--force", *ccs]) == 0
    assert engine.read_bytes() == random_bytes.read_bytes() and read_sidecar(sidecar).parity == {"verified": False}
    assert read_sidecar(sidecar).compute_capabilities == ("8.6",)
    # an unverified engine in place may be replaced by another unverified one
    assert main([*args, "--adopt", str(random_bytes), *ccs]) == 0
