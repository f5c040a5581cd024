"""One engine contract, two languages: engine names and sidecars written by the Python code (runtime/engines.py, the
builder's own EngineSidecar) are found and accepted by the C++ runtime's check code (runtime/cpp/src/
engine_contract.cpp, through tests/engine_contract_check.cpp), and each mismatch is refused by both, for the same
reasons. The machine's facts are the values the libraries really report: TensorRT's version as the published C++
headers define it (NV_TENSORRT_MAJOR.MINOR.PATCH.BUILD, read from ../shared/third_party) on the C++ side and as
`tensorrt.__version__` says it (major.minor.patch) on the Python side; cudaDeviceProp's name "Orin" for every Orin."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from runtime import bundle as B
from runtime.engines import (
    EngineSidecar,
    GpuInfo,
    MachineInfo,
    PlatformInfo,
    Profile,
    TrtInfo,
    check_sidecar,
    engine_path,
    locate_engine,
    manifest_source_sha256,
    sidecar_path,
    sidecar_rebuild_command,
    write_sidecar,
)
from runtime.files import sha256_file

HEADERS = Path(__file__).resolve().parents[4] / "shared" / "third_party" / "tensorrt"
AGX_ORIN = GpuInfo("Orin", (8, 7), 16, 2)  # AGX Orin 64GB: 16 SMs, 2 DLA cores
ORIN_NANO = GpuInfo("Orin", (8, 7), 8, 0)  # Orin Nano 8GB: 8 SMs, no DLA
JETPACK62 = PlatformInfo("aarch64", "36.4.3", "6.2")


def header_version(release: str) -> str:
    """'10.3.0.26' from the published NvInferVersion.h (11.x defines NV_TENSORRT_* through TRT_*_ENTERPRISE)."""
    text = (HEADERS / release / "include" / "NvInferVersion.h").read_text()
    values = {}
    for part in ("MAJOR", "MINOR", "PATCH", "BUILD"):
        m = re.search(rf"#define NV_TENSORRT_{part} (\w+)", text)
        assert m, f"NV_TENSORRT_{part} not in {release}/NvInferVersion.h"
        token = m.group(1)
        if not token.isdigit():
            token = re.search(rf"#define {token} (\d+)", text).group(1)
        values[part] = token
    return ".".join(values[p] for p in ("MAJOR", "MINOR", "PATCH", "BUILD"))


@pytest.fixture(scope="module", params=["10.3", "11.1"])
def release(request) -> tuple[str, TrtInfo]:
    if not (HEADERS / request.param / "include" / "NvInferVersion.h").is_file():
        pytest.fail(f"{HEADERS / request.param}: the published TensorRT headers are missing (../shared/third_party)")
    cpp = header_version(request.param)
    python_reports = ".".join(cpp.split(".")[:3])  # tensorrt.__version__ on JetPack 6: "10.3.0"
    return cpp, TrtInfo("trt", python_reports)


def contract(build, *args: str, check: bool = True) -> dict[str, list[str]]:
    proc = subprocess.run(
        [str(build.exe("vae_engine_contract_check")), *args], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode in ((0,) if check else (0, 1)), proc.stdout + proc.stderr
    out: dict[str, list[str]] = {}
    for line in proc.stdout.splitlines():
        key, _, value = line.partition("=")
        out.setdefault(key, []).append(value)
    return out


def facts(cpp_version: str, gpu: GpuInfo, platform: PlatformInfo = JETPACK62, dla_core: int | None = None) -> list[str]:
    args = [
        f"trt={cpp_version}",
        f"gpu={gpu.name}",
        f"cc={gpu.cc}",
        f"sms={gpu.sm_count}",
        f"dla={gpu.dla_cores}",
        f"machine={platform.machine}",
        f"l4t={platform.l4t or ''}",
    ]
    return args + ([f"dla_core={dla_core}"] if dla_core is not None else [])


def add_fp16_variant_entry(bundle: Path) -> None:
    """vae.json lists an fp16 decoder variant (a file of its own; the check hashes only the engine)."""
    (bundle / "decoder.fp16.onnx").write_bytes(b"an fp16 variant")
    m = B.read_manifest(bundle)
    spec = m.graphs[B.DECODER]
    v = B.VariantSpec("fp16", "decoder.fp16.onnx", sha256_file(bundle / "decoder.fp16.onnx"))
    B.write_manifest(
        bundle,
        dataclasses.replace(
            m, graphs={**m.graphs, B.DECODER: dataclasses.replace(spec, variants={**spec.variants, "fp16": v})}
        ),
    )


def write_engine(
    bundle: Path, trt: TrtInfo, gpu: GpuInfo, *, source: str, precision: str = "fp16", dla_core: int | None = None
) -> Path:
    """An engine file and the sidecar the builder (export.tensorrt.engine.finish_engine) would write for it."""
    m = B.read_manifest(bundle)
    engine = engine_path(bundle, B.DECODER, precision, gpu, trt, dla_core)
    engine.parent.mkdir(exist_ok=True)
    engine.write_bytes(b"serialized engine " + engine.name.encode())
    z = m.graph(B.DECODER).inputs[0]
    batch = (4, 4, 4) if dla_core is not None else (1, 8, 32)
    profile = Profile(z.name, *((b, *z.shape[1:]) for b in batch))
    write_sidecar(
        sidecar_path(engine),
        EngineSidecar(
            graph=B.DECODER,
            precision=precision,
            engine_file=engine.name,
            engine_sha256=sha256_file(engine),
            source_file=source,
            source_sha256=manifest_source_sha256(m, B.DECODER, source),
            trt=trt,
            gpu=gpu,
            platform=JETPACK62,
            profile=profile,
            build_options={"workspace_mib": 256, "dla_core": dla_core},
            parity={"verified": True, "passed": True},
        ),
    )
    return engine


def python_problems(bundle: Path, engine: Path, machine: MachineInfo, dla_core: int | None = None) -> list[str]:
    from runtime.engines import read_sidecar

    side = read_sidecar(sidecar_path(engine))
    current = manifest_source_sha256(B.read_manifest(bundle), B.DECODER, side.source_file)
    return check_sidecar(
        side,
        machine=machine,
        graph=B.DECODER,
        precision=side.precision,
        source_file=side.source_file if current else "(not in vae.json)",
        source_sha256=current or "-",
        engine_sha256=sha256_file(engine),
        dla_core=dla_core,
    )


def cpp_check(
    build,
    bundle: Path,
    engine: Path,
    cpp_version: str,
    gpu: GpuInfo,
    dla_core: int | None = None,
    precision: str = "fp16",
) -> dict[str, list[str]]:
    return contract(
        build,
        "check",
        f"bundle={bundle}",
        f"sidecar={sidecar_path(engine)}",
        f"engine={engine}",
        "graph=decoder",
        f"precision={precision}",
        *facts(cpp_version, gpu, dla_core=dla_core),
    )


def kinds(problems: list[str]) -> list[str]:
    return sorted(p.split(":", 1)[0] for p in problems)


@pytest.mark.parametrize(
    "gpu,dla_core", [(AGX_ORIN, None), (AGX_ORIN, 1), (ORIN_NANO, None)], ids=["agx-gpu", "agx-dla1", "nano"]
)
def test_cpp_names_engines_as_python_does(cpp_build, release, gpu, dla_core):
    cpp_version, trt = release
    stem = contract(cpp_build, "name", "graph=decoder", "precision=fp16", *facts(cpp_version, gpu, dla_core=dla_core))
    assert stem["stem"] == [engine_path(".", "decoder", "fp16", gpu, trt, dla_core).name.removesuffix(".plan")]


def test_trt10_fp16_engine_from_the_fp32_graph_is_accepted_by_both(cpp_build, bundle_copy, release):
    """TensorRT 10 builds FP16 engines from decoder.onnx (the FP16 flag), 11 from decoder.fp16.onnx: both sides
    accept either of the graph's files, with or without an fp16 variant in vae.json."""
    cpp_version, trt = release
    here = MachineInfo(trt, AGX_ORIN, JETPACK62)
    engine = write_engine(bundle_copy, trt, AGX_ORIN, source="decoder.onnx")
    assert python_problems(bundle_copy, engine, here) == []
    out = cpp_check(cpp_build, bundle_copy, engine, cpp_version, AGX_ORIN)
    assert out["usable"] == ["1"] and "problem" not in out, out
    add_fp16_variant_entry(bundle_copy)
    assert cpp_check(cpp_build, bundle_copy, engine, cpp_version, AGX_ORIN)["usable"] == ["1"]
    variant_engine = write_engine(bundle_copy, trt, AGX_ORIN, source="decoder.fp16.onnx")
    assert variant_engine == engine  # same name: one engine per machine and precision
    assert python_problems(bundle_copy, engine, here) == []
    assert cpp_check(cpp_build, bundle_copy, engine, cpp_version, AGX_ORIN)["usable"] == ["1"]
    # The Python side finds the engine under the name the C++ side computes, and the reverse.
    assert locate_engine(bundle_copy, machine=here, graph="decoder", precision="fp16") == engine


@pytest.mark.parametrize("case", ["nano", "trt", "dla", "reexport", "engine", "variant-dropped"])
def test_each_mismatch_is_refused_by_both_for_the_same_reasons(cpp_build, bundle_copy, release, case):
    cpp_version, trt = release
    engine = write_engine(bundle_copy, trt, AGX_ORIN, source="decoder.onnx")
    gpu, version, py_trt, dla = AGX_ORIN, cpp_version, trt, None
    if case == "nano":
        gpu = ORIN_NANO
    elif case == "trt":
        version, py_trt = "10.7.0.23", TrtInfo("trt", "10.7.0")
    elif case == "dla":
        dla = 0
    elif case == "reexport":
        (bundle_copy / "decoder.onnx").write_bytes(b"re-exported")
        m = B.read_manifest(bundle_copy)
        spec = dataclasses.replace(m.graphs[B.DECODER], sha256=sha256_file(bundle_copy / "decoder.onnx"))
        B.write_manifest(bundle_copy, dataclasses.replace(m, graphs={**m.graphs, B.DECODER: spec}))
    elif case == "engine":
        engine.write_bytes(engine.read_bytes() + b"\0")
    elif case == "variant-dropped":
        shutil.rmtree(bundle_copy / "engines")
        add_fp16_variant_entry(bundle_copy)
        engine = write_engine(bundle_copy, trt, AGX_ORIN, source="decoder.fp16.onnx")
        m = B.read_manifest(bundle_copy)
        spec = dataclasses.replace(m.graphs[B.DECODER], variants={})
        B.write_manifest(bundle_copy, dataclasses.replace(m, graphs={**m.graphs, B.DECODER: spec}))
    py = python_problems(bundle_copy, engine, MachineInfo(py_trt, gpu, JETPACK62), dla)
    cpp = cpp_check(cpp_build, bundle_copy, engine, version, gpu, dla)
    assert py and cpp["usable"] == ["0"], (py, cpp)
    assert kinds(cpp["problem"]) == kinds(py), (py, cpp["problem"])
    # The same words where the facts are the same (versions are normalised on both sides).
    assert cpp["problem"] == py
    from runtime.engines import read_sidecar

    assert cpp["rebuild"] == [sidecar_rebuild_command(bundle_copy, read_sidecar(sidecar_path(engine)))]


def test_sidecars_of_another_schema_are_refused_by_both(cpp_build, bundle_copy, release):
    cpp_version, trt = release
    engine = write_engine(bundle_copy, trt, AGX_ORIN, source="decoder.onnx")
    side = sidecar_path(engine)
    side.write_text(side.read_text().replace('"schema_version": 2', '"schema_version": 1'))
    out = contract(
        cpp_build,
        "check",
        f"bundle={bundle_copy}",
        f"sidecar={side}",
        "graph=decoder",
        "precision=fp16",
        *facts(cpp_version, AGX_ORIN),
        check=False,
    )
    assert out["error"][0].startswith("6:") and "version 1, expected 'vae-deploy/engine' version 2" in out["error"][0]
    from runtime.engines import EngineError, read_sidecar

    with pytest.raises(EngineError, match="version 1, expected 'vae-deploy/engine' version 2"):
        read_sidecar(side)
