"""Our TensorRT Python code against the real TensorRT Python bindings: 10.3 (JetPack 6), 11.4, and TensorRT-RTX.

No GPU and no TensorRT library is needed: `tensorrt-cu12-bindings` (pinned, sha256-checked, cached under
third_party/) is imported in a subprocess against stub libnvinfer / libnvonnxparser / libnvinfer_plugin built here
with gcc (tests/export/tensorrt/trt_api/wheels.py). That subprocess runs our real entry points — `python -m export.tensorrt.build`
(build, verify, --print-trtexec, --adopt, DLA), `runtime.load(..., backend="tensorrt")` with and without CUDA graphs
or a DLA core — with a typed recording proxy of the real module (tests/export/tensorrt/trt_api/proxy.py) over a small software
TensorRT (tests/export/tensorrt/trt_api/sim.py). Every attribute read, property write and call our code makes is checked against the
real pybind11 classes and their docstring signatures; nothing is listed by hand, so the check follows the code.

What this proves: names, settable properties, argument counts, keyword names and argument types per version. What it
cannot prove: TensorRT's behaviour (the simulated engine runs the ONNX graph with onnxruntime), or cuda-python's API
(simulated, not checked).
"""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

import pytest

from tests.export.tensorrt.trt_api import wheels as W

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[3]
# Our code that talks to TensorRT (the static scan below cross-checks the dynamic run against these files).
TRT_CODE = (
    "export/tensorrt/engine.py",
    "export/tensorrt/build_plan.py",
    "export/tensorrt/build.py",
    "runtime/backends/tensorrt.py",
)
TARGETS = {"trt-10.3": "10.3.0", "trt-11.4": "11.4.0.106", "trt_rtx": None}
# What the real wheels report as tensorrt.__version__ (10.3.0 has no build number; 11.4 has one).
VERSIONS = {"trt-10.3": "10.3.0", "trt-11.4": "11.4.0.106"}


@pytest.fixture(scope="module")
def conformance_bundle(tiny_checkpoint, tmp_path_factory) -> Path:
    from tests.export.tensorrt.trt_api.bundle import make_bundle

    return make_bundle(tiny_checkpoint, tmp_path_factory.mktemp("trt-api") / "tiny")


@pytest.fixture(scope="module")
def run_target(conformance_bundle, tmp_path_factory):
    """target -> the driver's report (one subprocess per target and mode, cached for the module)."""
    cache: dict[tuple[str, bool], dict] = {}

    def run(target: str, control: bool = False) -> dict:
        key = (target, control)
        if key not in cache:
            work = tmp_path_factory.mktemp(f"drive-{target}{'-control' if control else ''}")
            version = TARGETS[target]
            if version is None:
                if importlib.util.find_spec("tensorrt_rtx") is None:
                    pytest.skip("tensorrt-rtx-cu12 is not installed (pip install tensorrt-rtx-cu12==1.7.1.116)")
                cache[key] = W.run_driver(
                    real="tensorrt_rtx", as_name="tensorrt_rtx", bundle=conformance_bundle, work=work, control=control
                )
            else:
                try:
                    wheel = W.bindings(version)
                    stubs = W.stub_libraries(wheel / "tensorrt_bindings" / "tensorrt.so", work / "stubs")
                except W.Unavailable as e:
                    pytest.skip(str(e))
                cache[key] = W.run_driver(
                    real="tensorrt_bindings",
                    as_name="tensorrt",
                    bundle=conformance_bundle,
                    work=work,
                    pythonpath=[wheel],
                    ld_path=stubs,
                    control=control,
                )
        return cache[key]

    return run


def _format(issue: dict) -> str:
    detail = f": {issue['detail']}" if issue["detail"] else ""
    return (
        f"{issue['kind']:<12} {issue['owner']}.{issue['attr']} at {issue['site']}{detail} "
        f"[{', '.join(issue['scenarios'])}]"
    )


def _where(tb: str) -> str:
    """The innermost frame of our code in a traceback text, as 'file:line: '."""
    frames = re.findall(r'File "([^"]+)", line (\d+)', tb)
    ours = [
        (Path(f), n)
        for f, n in frames
        if Path(f).is_relative_to(REPO) and Path(f).relative_to(REPO).parts[0] in ("export", "runtime")
    ]
    return f"{ours[-1][0].relative_to(REPO)}:{ours[-1][1]}: " if ours else ""


@pytest.mark.parametrize("target", list(TARGETS))
def test_our_tensorrt_code_conforms_to_the_real_bindings(run_target, target):
    report = run_target(target)
    # A missing attribute that our code tolerated (hasattr / getattr with a default) is a probe, not a failure.
    problems = [_format(i) for i in report["issues"] if i["fatal"] or i["kind"] != "missing"]
    broken = [
        f"{name}: {_where(s['error'])}{s['error'].strip().splitlines()[-1]}"
        for name, s in report["scenarios"].items()
        if s["status"] != "ok"
    ]
    assert not problems and not broken, (
        f"{target} ({report['as']} {report['version']}):\n"
        + (
            "API problems (kind, class.attribute, our call site, scenarios):\n  " + "\n  ".join(problems) + "\n"
            if problems
            else ""
        )
        + (
            "scenarios that did not complete (what follows in them went unchecked):\n  " + "\n  ".join(broken)
            if broken
            else ""
        )
    )
    assert report["touched"], "the driver touched no TensorRT attribute: the scenarios did not run"


@pytest.mark.parametrize("target", list(VERSIONS))
def test_the_wheels_report_their_version(run_target, target):
    report = run_target(target)
    assert report["version"] == VERSIONS[target]
    assert report["facts"]["__version__"] == VERSIONS[target]


def test_the_harness_sees_what_tensorrt_11_removed(run_target):
    """A TensorRT 10 fp16 plan (FP16 flag, layer precisions) driven against the 11.4 module must be refused, with
    every removed name listed in one run (the driver forgives each fatal site and runs again)."""
    report = run_target("trt-11.4", control=True)
    found = {(i["owner"], i["attr"]) for i in report["issues"] if i["fatal"]}
    assert {("BuilderFlag", "FP16"), ("BuilderFlag", "OBEY_PRECISION_CONSTRAINTS"), ("ILayer", "precision")} <= found, (
        found
    )
    sites = {i["site"].split(":")[0] for i in report["issues"]}
    assert sites == {"export/tensorrt/engine.py"}, sites


def test_what_differs_between_tensorrt_10_3_and_11_4(run_target):
    """The version facts the build plans rest on (export/tensorrt/build_plan.py's module docstring), read from the real
    modules."""
    f10, f11 = run_target("trt-10.3")["facts"], run_target("trt-11.4")["facts"]
    for flag in ("FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS"):
        assert flag in f10["BuilderFlag"] and flag not in f11["BuilderFlag"], flag
    for name in ("GPU_FALLBACK", "TF32"):
        assert name in f10["BuilderFlag"] and name in f11["BuilderFlag"], name
    assert "precision" in f10["ILayer"] and "precision" not in f11["ILayer"]
    assert "set_output_type" in f10["ILayer"] and "set_output_type" not in f11["ILayer"]
    assert "STRONGLY_TYPED" in f10["NetworkDefinitionCreationFlag"]
    assert "IInt8EntropyCalibrator2" in f10["module"] and "IInt8EntropyCalibrator2" not in f11["module"]
    for f in (f10, f11):  # the runtime side is the same API in both
        assert {"execute_async_v3", "set_input_shape", "set_tensor_address", "get_tensor_shape"} <= set(
            f["IExecutionContext"]
        )
        assert {"DLA_core", "deserialize_cuda_engine"} <= set(f["Runtime"])
        assert {"DLA_core", "default_device_type", "set_timing_cache"} <= set(f["IBuilderConfig"])


def static_trt_chains(files=TRT_CODE) -> dict[tuple[str, str], list[str]]:
    """`trt.X` and `trt.X.Y` in our code -> where: ("<module>", X) and (X, Y)."""
    out: dict[tuple[str, str], list[str]] = {}
    for rel in files:
        for node in ast.walk(ast.parse((REPO / rel).read_text(), rel)):
            if not isinstance(node, ast.Attribute):
                continue
            v = node.value
            if isinstance(v, ast.Name) and v.id == "trt":
                key = ("<module>", node.attr)
            elif isinstance(v, ast.Attribute) and isinstance(v.value, ast.Name) and v.value.id == "trt":
                key = (v.attr, node.attr)
            else:
                continue
            if node.attr.startswith("__") and node.attr != "__version__":
                continue  # module object attributes (__name__), not TensorRT's
            out.setdefault(key, []).append(f"{rel}:{node.lineno}")
    return out


def test_every_trt_name_in_our_code_is_exercised(run_target):
    """The static scan cross-checks the dynamic one: a `trt.X.Y` our code spells out but no scenario reaches (a new
    code path) fails here, asking for a scenario in tests/export/tensorrt/trt_api/drive.py, instead of going unchecked."""
    touched = set()
    for target in TARGETS:
        touched |= {(o, n) for o, n, _how in run_target(target)["touched"]}
    static = static_trt_chains()
    assert static, "the static scan found no trt.<name> in our code"
    unreached = {k: v for k, v in static.items() if k not in touched}
    assert not unreached, "never exercised by the conformance driver:\n  " + "\n  ".join(
        f"trt.{'' if o == '<module>' else o + '.'}{n} at {', '.join(w)}" for (o, n), w in sorted(unreached.items())
    )


def test_signature_parser_reads_pybind11_docstrings():
    from tests.export.tensorrt.trt_api.proxy import parse_signatures

    doc = (
        "set_input_shape(*args, **kwargs)\nOverloaded function.\n\n"
        "1. set_input_shape(self: tensorrt.IExecutionContext, name: str, shape: tuple) -> bool\n\n  text\n\n"
        "2. set_input_shape(self: tensorrt.IExecutionContext, name: str, shape: tensorrt.Dims) -> bool\n"
    )
    sigs = parse_signatures(doc)
    assert [s.params[2].annotation for s in sigs] == ["tuple", "tensorrt.Dims"]
    (init,) = parse_signatures(
        "__init__(self: tensorrt.Logger, min_severity: tensorrt.ILogger.Severity = <Severity.WARNING: 2>) -> None\n"
    )
    assert init.params[1].has_default and init.params[1].annotation == "tensorrt.ILogger.Severity"
    (prop,) = parse_signatures("(arg0: tensorrt.ILayer, arg1: tensorrt.DataType) -> None\n")
    assert prop.params[1].positional_only


def test_pinned_wheels_cover_this_interpreter():
    tag = W.python_tag()
    if tag not in {t for _v, t in W.WHEELS}:
        pytest.skip(f"no pinned tensorrt-cu12-bindings wheels for {tag}")
    assert {v for v, t in W.WHEELS if t == tag} == set(VERSIONS.values())
    assert all(
        len(sha) == 64 and name.startswith(f"tensorrt_cu12_bindings-{v}-{t}-")
        for (v, t), (name, sha) in W.WHEELS.items()
    )
