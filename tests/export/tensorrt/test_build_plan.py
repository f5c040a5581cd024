"""The TensorRT build plan per version (10.3 / 10.x / 11.x / TensorRT-RTX), the trtexec command, layer matching and
the engine-inspector check. Pure functions: no TensorRT and no GPU needed."""

from __future__ import annotations

import json

import pytest

from export.tensorrt.build_plan import (
    BuildOptions,
    ConstrainedLayer,
    PlanError,
    fp32_compute_layers,
    layers_to_constrain,
    onnx_nodes_of_layer,
    parse_target,
    plan_build,
    trtexec_args,
)
from runtime import bundle as B
from runtime.engines import GpuInfo, TrtInfo

LATENT, CH, SIZE = 8, 3, 32
ORIN = GpuInfo("Orin", (8, 7), 16, 2)
H100 = GpuInfo("NVIDIA H100 80GB HBM3", (9, 0), 132)
TRT103 = TrtInfo("trt", "10.3.0")  # tensorrt.__version__ on JetPack 6
TRT108 = TrtInfo("trt", "10.8.0.43")
TRT11 = TrtInfo("trt", "11.4.0.106")
RTX = TrtInfo("trt_rtx", "1.7.1.116")
KEPT = ("node_conv2d", "node_tanh")


def manifest(variants: dict[str, B.VariantSpec] | None = None, graphs=B.GRAPHS) -> B.Manifest:
    """A manifest like export.to_onnx writes for the tiny test model (32x32 RGB, latent 8)."""
    specs = {
        B.ENCODER: B.GraphSpec(
            B.ENCODER,
            "encoder.onnx",
            "e" * 64,
            18,
            (B.TensorSpec(B.IMAGE, (B.BATCH_AXIS, CH, SIZE, SIZE)),),
            (B.TensorSpec(B.MU, (B.BATCH_AXIS, LATENT)), B.TensorSpec(B.LOGVAR, (B.BATCH_AXIS, LATENT))),
        ),
        B.DECODER: B.GraphSpec(
            B.DECODER,
            "decoder.onnx",
            "d" * 64,
            18,
            (B.TensorSpec(B.Z, (B.BATCH_AXIS, LATENT)),),
            (B.TensorSpec(B.IMAGE, (B.BATCH_AXIS, CH, SIZE, SIZE)),),
            dict(variants or {}),
        ),
    }
    return B.Manifest(
        model=B.ModelSpec(CH, CH, SIZE, LATENT, (8, 16)), pixel_range=(-1.0, 1.0), graphs={g: specs[g] for g in graphs}
    )


FP16 = B.VariantSpec("fp16", "decoder.fp16.onnx", "f" * 64, kept_fp32_nodes=KEPT)
INT8 = B.VariantSpec("int8", "decoder.int8.onnx", "8" * 64)
VARIANTS = {"fp16": FP16, "int8": INT8}


# ----------------------------------------------------------------------------------------------- TensorRT 10


@pytest.mark.parametrize("target", [TRT103, TRT108], ids=["10.3", "10.8"])
def test_trt10_fp16_builds_fp32_graph_with_flag_and_kept_layers(target):
    plan = plan_build(target, B.DECODER, "fp16", manifest(VARIANTS), BuildOptions(), ORIN)
    assert plan.onnx_file == "decoder.onnx" and plan.onnx_sha256 == "d" * 64
    assert not plan.strongly_typed
    assert plan.set_flags == ("FP16", "OBEY_PRECISION_CONSTRAINTS")
    assert plan.clear_flags == ("TF32",)
    assert plan.layer_precisions == KEPT
    assert plan.engine_file == f"engines/decoder.fp16.orin-sm87-16sms-2dla.trt{target.version}.plan"
    assert plan.sidecar_file == f"engines/decoder.fp16.orin-sm87-16sms-2dla.trt{target.version}.json"
    assert plan.timing_cache == f"engines/timing.orin-sm87-16sms-2dla.trt{target.version}.cache"
    assert (plan.profile.input, plan.profile.min, plan.profile.opt, plan.profile.max) == (
        B.Z,
        (1, LATENT),
        (8, LATENT),
        (32, LATENT),
    )


def test_trt10_fp16_without_variant_uses_flag_only_and_says_so():
    plan = plan_build(TRT103, B.DECODER, "fp16", manifest(), BuildOptions(), ORIN)
    assert plan.set_flags == ("FP16",) and plan.layer_precisions == ()
    assert any("no fp16 variant" in n for n in plan.notes)


def test_trt10_fp16_variant_with_nothing_kept_has_no_constraints():
    v = B.VariantSpec("fp16", "decoder.fp16.onnx", "f" * 64, kept_fp32_nodes=())
    plan = plan_build(TRT103, B.DECODER, "fp16", manifest({"fp16": v}), BuildOptions(), ORIN)
    assert plan.set_flags == ("FP16",)


def test_trt10_int8_builds_qdq_variant_with_int8_and_fp16_flags():
    # FP16 too, or the layers outside Q/DQ pairs run in FP32.
    plan = plan_build(TRT103, B.DECODER, "int8", manifest(VARIANTS), BuildOptions(), ORIN)
    assert (plan.onnx_file, plan.onnx_sha256, plan.set_flags) == ("decoder.int8.onnx", "8" * 64, ("INT8", "FP16"))
    with pytest.raises(PlanError, match=r"export\.precision\.int8"):
        plan_build(TRT103, B.DECODER, "int8", manifest(), BuildOptions(), ORIN)


def test_fp32_has_no_precision_flags_on_any_version():
    for target in (TRT103, TRT11, RTX):
        plan = plan_build(target, B.ENCODER, "fp32", manifest(VARIANTS), BuildOptions(), H100)
        assert plan.onnx_file == "encoder.onnx"
        # TensorRT-RTX plans ask for engines that run on caller memory (needed for CUDA-graph capture); no
        # precision flag anywhere.
        assert plan.set_flags == (("REQUIRE_USER_ALLOCATION",) if target is RTX else ())
        assert plan.layer_precisions == () and plan.clear_flags == ("TF32",)
        assert plan.profile.max == (32, CH, SIZE, SIZE)
    allowed = plan_build(TRT103, B.ENCODER, "fp32", manifest(), BuildOptions(allow_tf32=True), H100)
    assert allowed.clear_flags == ()


# ----------------------------------------------------------------------------------------------- TensorRT 11, RTX


def test_trt11_fp16_is_strongly_typed_from_the_variant():
    plan = plan_build(TRT11, B.DECODER, "fp16", manifest(VARIANTS), BuildOptions(), H100)
    assert plan.strongly_typed
    assert (plan.onnx_file, plan.onnx_sha256) == ("decoder.fp16.onnx", "f" * 64)
    assert plan.set_flags == () and plan.layer_precisions == ()
    assert plan.engine_file == "engines/decoder.fp16.h100-80gb-hbm3-sm90-132sms.trt11.4.0.plan"


@pytest.mark.parametrize("target", [TRT11, RTX], ids=["11.x", "rtx"])
@pytest.mark.parametrize("precision,tool", [("fp16", "export.precision.fp16"), ("int8", "export.precision.int8")])
def test_strongly_typed_needs_the_variant(target, precision, tool):
    with pytest.raises(PlanError, match=rf"strongly typed.*{precision}.*{tool}"):
        plan_build(target, B.DECODER, precision, manifest(), BuildOptions(), H100)


def test_rtx_is_portable_and_has_no_timing_cache():
    plan = plan_build(RTX, B.DECODER, "int8", manifest(VARIANTS), BuildOptions(timing_cache="my.cache"), H100)
    assert plan.strongly_typed and plan.onnx_file == "decoder.int8.onnx"
    assert plan.gpu is None and plan.engine_file == "engines/decoder.int8.portable.rtx1.7.1.plan"
    assert plan.timing_cache is None
    assert any("ignores timing caches" in n for n in plan.notes)


# ----------------------------------------------------------------------------------------------- options


def test_old_tensorrt_is_refused_with_the_jetpack_hint():
    with pytest.raises(PlanError, match=r"JetPack 6\.1"):
        plan_build(TrtInfo("trt", "8.6.2"), B.DECODER, "fp16", manifest(), BuildOptions(), ORIN)


def test_dla_rules():
    fixed = dict(min_batch=4, opt_batch=4, max_batch=4)
    plan = plan_build(TRT103, B.DECODER, "fp16", manifest(VARIANTS), BuildOptions(dla_core=1, **fixed), ORIN)
    assert plan.dla_core == 1 and "GPU_FALLBACK" in plan.set_flags
    assert plan.profile.batch == (4, 4, 4)
    # DLA engines have one fixed input shape: a dynamic batch profile is refused with the options to pass
    with pytest.raises(PlanError, match=r"fixed batch.*--min-batch 1 --opt-batch 8 --max-batch 32"):
        plan_build(TRT103, B.DECODER, "fp16", manifest(VARIANTS), BuildOptions(dla_core=1), ORIN)
    with pytest.raises(PlanError, match="FP16 and INT8 only"):
        plan_build(TRT103, B.DECODER, "fp32", manifest(), BuildOptions(dla_core=0), ORIN)
    # TRT11 is 11.4.0: no DLA (11.0-11.3 have none, 11.4.0 only on Windows on ARM); 11.4.1 restores it on AGX Orin,
    # strongly typed: from the fp16 variant, no FP16 flag.
    with pytest.raises(PlanError, match=r"TensorRT 11.4.0 has no DLA.*11.4.1\+"):
        plan_build(TRT11, B.DECODER, "fp16", manifest(VARIANTS), BuildOptions(dla_core=0), ORIN)
    with pytest.raises(PlanError, match="has no DLA"):
        plan_build(TrtInfo("trt", "10.8.0"), B.DECODER, "fp16", manifest(VARIANTS), BuildOptions(dla_core=0), ORIN)
    p11 = plan_build(
        TrtInfo("trt", "11.4.1"), B.DECODER, "fp16", manifest(VARIANTS), BuildOptions(dla_core=0, **fixed), ORIN
    )
    assert p11.strongly_typed and p11.onnx_file == "decoder.fp16.onnx" and p11.set_flags == ("GPU_FALLBACK",)
    assert p11.engine_file.endswith(".dla0.trt11.4.1.plan")


@pytest.mark.parametrize(
    "opts,match",
    [
        (BuildOptions(min_batch=0), r"1 <= min \(0\)"),
        (BuildOptions(min_batch=4, opt_batch=2), r"min \(4\) <= opt \(2\)"),
        (BuildOptions(opt_batch=64, max_batch=32), r"opt \(64\) <= max \(32\)"),
        (BuildOptions(workspace_mib=0), "--workspace"),
    ],
)
def test_bad_options(opts, match):
    with pytest.raises(PlanError, match=match):
        plan_build(TRT103, B.DECODER, "fp32", manifest(), opts, ORIN)


def test_missing_graph_and_bad_precision():
    with pytest.raises(PlanError, match=r"bundle has \['decoder'\]"):
        plan_build(TRT103, B.ENCODER, "fp32", manifest(graphs=(B.DECODER,)), BuildOptions(), ORIN)
    with pytest.raises(PlanError, match="bf16"):
        plan_build(TRT103, B.DECODER, "bf16", manifest(), BuildOptions(), ORIN)


def test_parse_target():
    assert parse_target("trt:10.3.0") == TrtInfo("trt", "10.3.0") == parse_target("trt:10.3.0.30")
    assert parse_target("trt_rtx:1.7.1.116").tag == "rtx1.7.1"
    for bad in ("10.3", "tensorrt:10.3", "trt:ten"):
        with pytest.raises(PlanError):
            parse_target(bad)


# ----------------------------------------------------------------------------------------------- trtexec


def test_trtexec_trt10_fp16_has_precision_flags_and_shapes():
    plan = plan_build(
        TRT103,
        B.DECODER,
        "fp16",
        manifest(VARIANTS),
        BuildOptions(min_batch=2, opt_batch=4, max_batch=16, workspace_mib=512),
        ORIN,
    )
    args = trtexec_args(plan, "/b")
    assert args[0] == "trtexec"
    assert "--onnx=/b/decoder.onnx" in args
    assert "--saveEngine=/b/engines/decoder.fp16.orin-sm87-16sms-2dla.trt10.3.0.plan" in args
    assert [a for a in args if "Shapes" in a] == ["--minShapes=z:2x8", "--optShapes=z:4x8", "--maxShapes=z:16x8"]
    assert "--fp16" in args and "--precisionConstraints=obey" in args
    assert "--layerPrecisions=node_conv2d:fp32,node_tanh:fp32" in args
    assert "--layerOutputTypes=node_conv2d:fp32,node_tanh:fp32" in args
    assert "--noTF32" in args and "--memPoolSize=workspace:512" in args
    assert "--timingCacheFile=/b/engines/timing.orin-sm87-16sms-2dla.trt10.3.0.cache" in args
    # With the parser's layers (a node's extra layers are <node>_1, ...), those are what trtexec is given.
    layers = [
        ConstrainedLayer("node_conv2d", 1),
        ConstrainedLayer("node_conv2d_1", 1),
        ConstrainedLayer("node_tanh", 2),
    ]
    args = trtexec_args(plan, "/b", layers)
    assert "--layerPrecisions=node_conv2d:fp32,node_conv2d_1:fp32,node_tanh:fp32" in args
    assert "--layerOutputTypes=node_conv2d:fp32,node_conv2d_1:fp32,node_tanh:fp32+fp32" in args


def test_trtexec_trt10_dla_and_int8():
    plan = plan_build(
        TRT103,
        B.DECODER,
        "int8",
        manifest(VARIANTS),
        BuildOptions(dla_core=0, min_batch=2, opt_batch=2, max_batch=2),
        ORIN,
    )
    args = trtexec_args(plan, "/b")
    assert "--int8" in args and "--fp16" in args and "--onnx=/b/decoder.int8.onnx" in args
    assert "--useDLACore=0" in args and "--allowGPUFallback" in args
    # The DLA engine has a name of its own: building it never overwrites the GPU engine.
    gpu_plan = plan_build(TRT103, B.DECODER, "int8", manifest(VARIANTS), BuildOptions(), ORIN)
    assert plan.engine_file == "engines/decoder.int8.orin-sm87-16sms-2dla.dla0.trt10.3.0.plan"
    assert gpu_plan.engine_file == "engines/decoder.int8.orin-sm87-16sms-2dla.trt10.3.0.plan"


def test_compute_capabilities_only_for_tensorrt_rtx():
    plan = plan_build(RTX, B.DECODER, "fp32", manifest(), BuildOptions(compute_capabilities=("8.6", "8.9", "8.6")))
    assert plan.compute_capabilities == ("8.6", "8.9")
    with pytest.raises(PlanError, match="only TensorRT-RTX"):
        plan_build(TRT103, B.DECODER, "fp32", manifest(), BuildOptions(compute_capabilities=("8.7",)), ORIN)
    with pytest.raises(PlanError, match="values like 8.6"):
        plan_build(RTX, B.DECODER, "fp32", manifest(), BuildOptions(compute_capabilities=("sm86",)))


def test_trtexec_trt11_has_no_precision_flags():
    plan = plan_build(TRT11, B.ENCODER, "fp32", manifest(), BuildOptions(), H100)
    args = trtexec_args(plan, "/b")
    assert "--minShapes=image:1x3x32x32" in args and "--maxShapes=image:32x3x32x32" in args
    d16 = trtexec_args(plan_build(TRT11, B.DECODER, "fp16", manifest(VARIANTS), BuildOptions(), H100), "/b")
    assert "--onnx=/b/decoder.fp16.onnx" in d16
    for flag in ("--fp16", "--int8", "--stronglyTyped", "--precisionConstraints=obey"):
        assert flag not in d16
    assert not any(a.startswith("--layerPrecisions") for a in d16)


def test_tensorrt_rtx_command():
    args = trtexec_args(plan_build(RTX, B.DECODER, "fp16", manifest(VARIANTS), BuildOptions(), None), "/b")
    assert args[0] == "tensorrt_rtx" and "--onnx=/b/decoder.fp16.onnx" in args
    assert not any(a.startswith("--timingCacheFile") for a in args) and "--fp16" not in args
    assert args[-1] == "--maxShapes=z:32x8"  # nothing beyond what tensorrt_rtx documents


# ----------------------------------------------------------------------------------------------- layers

NODES = ["node_linear", "node_linear_1", "node_conv2d", "node_conv2d_1"]


def test_layer_to_node_prefers_parser_metadata():
    # Real names from the TensorRT-RTX parser on our encoder: the bias add of node_linear is called node_linear_1,
    # which is also the name of the logvar Gemm node. Only the metadata tells them apart.
    assert onnx_nodes_of_layer("node_linear_1", "[ONNX Layer: node_linear]", NODES) == ("node_linear",)
    assert onnx_nodes_of_layer("node_linear_1_3", "[ONNX Layer: node_linear_1]", NODES) == ("node_linear_1",)
    assert onnx_nodes_of_layer("node_conv2d_1", "", NODES) == ("node_conv2d_1",)
    assert onnx_nodes_of_layer("node_conv2d_1_7", "", NODES) == ("node_conv2d_1",)
    assert onnx_nodes_of_layer("vae.fc_mu.weight", "", NODES) == ()


def test_layers_to_constrain_reports_unmatched_nodes():
    layers = [
        ("node_linear", "[ONNX Layer: node_linear]"),
        ("node_linear_1", "[ONNX Layer: node_linear]"),
        ("node_linear_1_3", "[ONNX Layer: node_linear_1]"),
        ("node_conv2d", "[ONNX Layer: node_conv2d]"),
    ]
    chosen, unmatched = layers_to_constrain(layers, ["node_linear", "node_gone"], NODES)
    assert chosen == ["node_linear", "node_linear_1"] and unmatched == ["node_gone"]


# ----------------------------------------------------------------------------------------------- inspector


def _layer(name, kind, dtype_key, dtype, meta=""):
    io = [{"Name": "x", "Dimensions": [1, 8], dtype_key: dtype}]
    return {"Name": name, "LayerType": kind, "Inputs": io, "Outputs": io, "Metadata": meta}


def test_fp32_compute_layers_trt10_format():
    info = {
        "Layers": [
            _layer(
                "node_conv2d + node_leaky_relu",
                "CaskConvolution",
                "Format/Datatype",
                "Channel major FP16 format where channel % 8 == 0",
                "[ONNX Layer: node_conv2d]",
            ),
            _layer("node_conv2d_1", "CaskConvolution", "Format/Datatype", "Row major linear FP32 format (kLINEAR)"),
            _layer(
                "node_tanh_conv",
                "CaskDeconvolution",
                "Format/Datatype",
                "Row major linear FP32 format (kLINEAR)",
                "[ONNX Layer: node_tanh]",
            ),
            _layer("Reformatting CopyNode", "Reformat", "Format/Datatype", "Row major linear FP32 format (kLINEAR)"),
        ],
        "Bindings": ["z", "image"],
    }
    assert fp32_compute_layers(json.dumps(info), kept=["node_tanh"]) == ["node_conv2d_1"]


def test_fp32_compute_layers_trt11_format_and_names_only():
    info = {
        "Layers": [
            _layer("node_linear", "Gemm", "DataType", "Float"),
            _layer("node_linear_1", "Gemm", "DataType", "Half"),
        ]
    }
    assert fp32_compute_layers(json.dumps(info)) == ["node_linear"]
    assert fp32_compute_layers(json.dumps({"Layers": ["node_linear", "node_conv2d"]})) == []


# ----------------------------------------------------------------------------------------------- CLI


def test_cli_print_trtexec_for_a_target_not_installed(tmp_path, capsys):
    from export.tensorrt.build import main

    B.write_manifest(tmp_path, manifest(VARIANTS))
    assert (
        main(
            [
                str(tmp_path),
                "--graphs",
                "decoder",
                "--precision",
                "int8",
                "--print-trtexec",
                "--target",
                "trt:10.3.0.30",
                "--workspace",
                "256",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "# decoder int8 for TensorRT 10.3.0" in out
    assert "--fp16 \\\n" in out and "--int8 \\\n" in out
    assert f"--adopt {tmp_path}/engines/decoder.int8.unknown-gpu.trt10.3.0.plan" in out
    assert "--max-batch 32 --workspace 256 --adopt" in out

    assert main([str(tmp_path), "--print-trtexec", "--target", "trt:11.4.0", "--precision", "int8"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "strongly typed" in err and "'encoder'" in err
    assert main([str(tmp_path), "--target", "trt:10.3"]) == 2
    assert "only works with --print-trtexec" in capsys.readouterr().err


def test_a_half_committed_variant_is_not_built_from():
    staged = B.VariantSpec("fp16", "decoder.fp16.staged-0123456789abcdef.onnx", "f" * 64)
    with pytest.raises(PlanError, match=r"decoder.fp16.staged-0123456789abcdef.onnx, a variant a killed"):
        plan_build(TRT11, B.DECODER, "fp16", manifest({"fp16": staged}), BuildOptions(), H100)
