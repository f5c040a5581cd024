"""Engine naming, sidecars and the check that refuses an engine built for another machine or another ONNX file."""

from __future__ import annotations

import dataclasses
import json

import pytest

from runtime import bundle as B
from runtime.engines import (
    EngineError,
    EngineMismatchError,
    EngineSidecar,
    GpuInfo,
    MachineInfo,
    PlatformInfo,
    Profile,
    TrtInfo,
    check_sidecar,
    engine_path,
    gpu_slug,
    host_platform,
    jetpack_for_l4t,
    locate_engine,
    normalize_version,
    parse_tegra_release,
    read_sidecar,
    require_usable,
    sidecar_path,
    write_sidecar,
)
from runtime.files import sha256_file

# What the libraries really report on an AGX Orin 64GB with JetPack 6.2: cudaDeviceProp name "Orin", 8.7, 16 SMs;
# IRuntime::getNbDLACores() 2; tensorrt.__version__ "10.3.0" (the C++ headers say 10.3.0.30).
ORIN = GpuInfo("Orin", (8, 7), 16, 2)
ORIN_NANO = GpuInfo("Orin", (8, 7), 8, 0)
TRT = TrtInfo("trt", "10.3.0")
JETSON = PlatformInfo("aarch64", "36.4.3", "6.2")
HERE = MachineInfo(TRT, ORIN, JETSON)


def test_gpu_slug_and_engine_names(tmp_path):
    assert gpu_slug(GpuInfo("NVIDIA H100 80GB HBM3", (9, 0), 132)) == "h100-80gb-hbm3-sm90-132sms"
    assert gpu_slug(GpuInfo("NVIDIA GeForce RTX 4090", (8, 9))) == "geforce-rtx-4090-sm89"
    assert gpu_slug(ORIN) == "orin-sm87-16sms-2dla"
    assert gpu_slug(ORIN_NANO) == "orin-sm87-8sms"
    assert gpu_slug(None) == "portable"
    p = engine_path(tmp_path, "decoder", "fp16", ORIN, TRT)
    assert p == tmp_path / "engines" / "decoder.fp16.orin-sm87-16sms-2dla.trt10.3.0.plan"
    assert sidecar_path(p).name == "decoder.fp16.orin-sm87-16sms-2dla.trt10.3.0.json"
    # A DLA engine never takes the GPU engine's name.
    assert (
        engine_path(tmp_path, "decoder", "fp16", ORIN, TRT, 1).name
        == "decoder.fp16.orin-sm87-16sms-2dla.dla1.trt10.3.0.plan"
    )
    with pytest.raises(ValueError, match="flavour"):
        TrtInfo("onnx", "1.0")


@pytest.mark.parametrize(
    "reported,normal",
    [
        ("10.3.0", "10.3.0"),  # tensorrt.__version__ on JetPack 6 (python3-libnvinfer 10.3.0.30)
        ("10.3.0.30", "10.3.0"),  # NV_TENSORRT_MAJOR.MINOR.PATCH.BUILD in the C++ headers
        ("11.4.0.106", "11.4.0"),
        ("1.7.1.116", "1.7.1"),
        ("10.8", "10.8.0"),
    ],
)
def test_versions_are_normalised_to_major_minor_patch(reported, normal):
    assert normalize_version(reported) == normal
    assert TrtInfo("trt", reported) == TrtInfo("trt", normal)
    assert TrtInfo("trt", reported).tag == f"trt{normal}"
    with pytest.raises(ValueError, match="digits and dots"):
        normalize_version("ten")


def test_tegra_release_and_jetpack(tmp_path):
    line = "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8 01:49:37 UTC 2025"
    assert parse_tegra_release(line) == "36.4.3"
    assert parse_tegra_release("# R35 (release), REVISION: 4.1, GCID: 33958178") == "35.4.1"
    assert parse_tegra_release("not a jetson") is None
    assert jetpack_for_l4t("36.4.3") == "6.2" and jetpack_for_l4t("36.4.0") == "6.1"
    assert jetpack_for_l4t("36.3.0") == "6.0" and jetpack_for_l4t("99.1") is None
    f = tmp_path / "nv_tegra_release"
    f.write_text(line + "\n")
    assert host_platform(f).l4t == "36.4.3" and host_platform(f).jetpack == "6.2"
    assert host_platform(tmp_path / "absent").l4t is None


def sidecar(**kw) -> EngineSidecar:
    base = dict(
        graph="decoder",
        precision="fp16",
        engine_file="decoder.fp16.orin-sm87-16sms-2dla.trt10.3.0.plan",
        engine_sha256="a" * 64,
        source_file="decoder.onnx",
        source_sha256="d" * 64,
        trt=TRT,
        gpu=ORIN,
        platform=JETSON,
        profile=Profile("z", (1, 8), (8, 8), (32, 8)),
        build_options={"workspace_mib": 512, "dla_core": None},
        build_seconds=3.5,
        parity={"verified": True, "passed": True},
    )
    base.update(kw)
    return EngineSidecar(**base)


def test_sidecar_round_trip(tmp_path):
    s = sidecar()
    path = write_sidecar(tmp_path / "x.json", s)
    assert read_sidecar(path) == s
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]  # atomic write leaves no temp file
    data = json.loads(path.read_text())
    assert data["gpu"] == {"name": "Orin", "compute_capability": "8.7", "sm_count": 16, "dla_cores": 2}
    assert data["platform"] == {"machine": "aarch64", "l4t": "36.4.3", "jetpack": "6.2"}
    data["schema_version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(EngineError, match="version 99"):
        read_sidecar(path)
    path.write_text("{")
    with pytest.raises(EngineError, match="not valid JSON"):
        read_sidecar(path)


def check(s, machine=HERE, **kw):
    args = dict(
        machine=machine,
        graph="decoder",
        precision="fp16",
        source_file="decoder.onnx",
        source_sha256="d" * 64,
        engine_sha256="a" * 64,
    )
    args.update(kw)
    return check_sidecar(s, **args)


def test_matching_sidecar_passes():
    assert check(sidecar()) == []


@pytest.mark.parametrize(
    "machine,kw,expect",
    [
        (
            MachineInfo(TrtInfo("trt", "10.7.0.23"), ORIN, JETSON),
            {},
            "TensorRT: engine built with TensorRT 10.3.0, this machine has TensorRT 10.7.0",
        ),
        (
            MachineInfo(TRT, GpuInfo("NVIDIA A100-SXM4-40GB", (8, 0), 108), JETSON),
            {},
            "GPU: engine built for Orin (compute capability 8.7, 16 SMs, 2 DLA cores), this machine has "
            "NVIDIA A100-SXM4-40GB (compute capability 8.0, 108 SMs)",
        ),
        # Every Orin module is "Orin", sm 8.7: the SM count tells an AGX Orin engine from an Orin Nano.
        (MachineInfo(TRT, ORIN_NANO, JETSON), {}, "this machine has Orin (compute capability 8.7, 8 SMs)"),
        (MachineInfo(TRT, dataclasses.replace(ORIN, dla_cores=1), JETSON), {}, "1 DLA cores"),
        (HERE, {"dla_core": 0}, "DLA: engine is a GPU engine, asked for for DLA core 0"),
        (MachineInfo(TRT, None, JETSON), {}, "no GPU visible here"),
        (
            MachineInfo(TRT, ORIN, PlatformInfo("x86_64")),
            {},
            "platform: engine built on aarch64, this machine is x86_64",
        ),
        (MachineInfo(TRT, ORIN, PlatformInfo("aarch64", "36.3.0", "6.0")), {}, "L4T 36.4.3 (JetPack 6.2)"),
        (HERE, {"source_sha256": "e" * 64}, "the graph changed since the build"),
        (HERE, {"engine_sha256": "b" * 64}, "the plan was replaced or damaged"),
        (HERE, {"precision": "int8"}, "engine is decoder/fp16, asked for decoder/int8"),
    ],
)
def test_each_mismatch_is_named(machine, kw, expect):
    problems = check(sidecar(), machine, **kw)
    assert len(problems) == 1 and expect in problems[0]


def test_portable_rtx_engine_checks_compute_capability():
    rtx = TrtInfo("trt_rtx", "1.7.1.116")
    s = sidecar(trt=rtx, gpu=None, platform=PlatformInfo("x86_64"), compute_capabilities=("8.0", "8.6", "8.9"))
    x86 = MachineInfo(rtx, GpuInfo("NVIDIA GeForce RTX 4090", (8, 9), 128), PlatformInfo("x86_64"))
    assert check(s, x86) == []
    narrowed = dataclasses.replace(s, compute_capabilities=("8.6",))
    assert "targets compute capabilities ['8.6']" in check(narrowed, x86)[0]
    # A sidecar that names no targets claims nothing: refused, never taken as "every GPU".
    assert "records no target compute capabilities" in check(dataclasses.replace(s, compute_capabilities=()), x86)[0]


# ----------------------------------------------------------------------------------------------- real files


@pytest.fixture()
def bundle_with_engine(tmp_path):
    """A bundle folder with a manifest, an ONNX file and an engine file + sidecar as the builder lays them out.

    The engine bytes are arbitrary: the sidecar check hashes files and never deserializes them."""
    onnx_file = tmp_path / "decoder.onnx"
    onnx_file.write_bytes(b"decoder graph v1")
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
    engine = engine_path(tmp_path, "decoder", "fp16", ORIN, TRT)
    engine.parent.mkdir()
    engine.write_bytes(b"serialized engine")
    write_sidecar(sidecar_path(engine), sidecar(engine_sha256=sha256_file(engine), source_sha256=spec.sha256))
    return tmp_path, engine


def test_require_usable_accepts_then_refuses_after_reexport(bundle_with_engine):
    bundle, engine = bundle_with_engine
    manifest = B.read_manifest(bundle)
    assert locate_engine(bundle, machine=HERE, graph="decoder", precision="fp16") == engine
    assert (
        require_usable(bundle, engine, machine=HERE, manifest=manifest, graph="decoder", precision="fp16").gpu == ORIN
    )

    # Re-export: a new decoder.onnx and a manifest that lists its new hash.
    (bundle / "decoder.onnx").write_bytes(b"decoder graph v2")
    spec = dataclasses.replace(manifest.graphs["decoder"], sha256=sha256_file(bundle / "decoder.onnx"))
    B.write_manifest(bundle, dataclasses.replace(manifest, graphs={"decoder": spec}))
    newer = MachineInfo(TrtInfo("trt", "10.7.0.23"), ORIN, JETSON)
    with pytest.raises(EngineMismatchError) as info:
        require_usable(
            bundle, engine, machine=newer, manifest=B.read_manifest(bundle), graph="decoder", precision="fp16"
        )
    err = info.value
    assert len(err.mismatches) == 2
    assert "TensorRT 10.7.0" in str(err) and "the graph changed since the build" in str(err)
    assert err.rebuild == (
        f"python -m export.tensorrt.build {bundle} --graphs decoder --precision fp16 "
        "--min-batch 1 --opt-batch 8 --max-batch 32 --workspace 512"
    )
    assert err.rebuild in str(err)


def test_missing_sidecar_or_engine(bundle_with_engine):
    bundle, engine = bundle_with_engine
    manifest = B.read_manifest(bundle)
    sidecar_path(engine).unlink()
    with pytest.raises(EngineError, match="sidecar missing"):
        require_usable(bundle, engine, machine=HERE, manifest=manifest, graph="decoder", precision="fp16")
    other = MachineInfo(TRT, GpuInfo("NVIDIA H100 80GB HBM3", (9, 0), 132), PlatformInfo("x86_64"))
    with pytest.raises(EngineError) as info:
        locate_engine(bundle, machine=other, graph="decoder", precision="fp16")
    msg = str(info.value)
    assert "decoder.fp16.h100-80gb-hbm3-sm90-132sms.trt10.3.0.plan" in msg
    assert "Engines present for other machines: decoder.fp16.orin-sm87-16sms-2dla.trt10.3.0.plan" in msg
    with pytest.raises(EngineError) as info:  # the DLA engine is looked for under its own name
        locate_engine(bundle, machine=HERE, graph="decoder", precision="fp16", dla_core=0)
    assert "decoder.fp16.orin-sm87-16sms-2dla.dla0.trt10.3.0.plan: no fp16 decoder engine" in str(info.value)
    assert "DLA core 0" in str(info.value) and "--dla-core 0" in str(info.value)
    assert f"python -m export.tensorrt.build {bundle} --graphs decoder --precision fp16" in msg
