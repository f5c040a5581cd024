"""Subprocess entry: drive our TensorRT code against one real binding module and print a JSON report.

    python -m tests.export.tensorrt.trt_api.drive --real tensorrt_bindings --as tensorrt --bundle DIR --work DIR [--control]

Run by wheels.run_driver with PYTHONPATH / LD_LIBRARY_PATH pointing at the extracted wheel and the stub libraries.
This process installs the typed proxy as `tensorrt` (or `tensorrt_rtx`) and a simulated cuda-python in sys.modules,
then runs the scenarios below through the project's own entry points (plan_build, build_engine with verification,
runtime.load, the backend's CUDA-graph and DLA paths). The scenarios name *what* to exercise; which TensorRT
attributes that touches is whatever our code does when it runs.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import shutil
import sys
import traceback
import types
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

from tests.export.tensorrt.trt_api.proxy import ApiMissing, ApiTypeError, ModuleProxy
from tests.export.tensorrt.trt_api.sim import ADA, ORIN, FakeCudart, TrtSim

# Classes whose public names are recorded as facts (what differs between versions).
FACT_CLASSES = (
    "BuilderFlag",
    "NetworkDefinitionCreationFlag",
    "ILayer",
    "IBuilderConfig",
    "Builder",
    "Runtime",
    "ICudaEngine",
    "IExecutionContext",
    "OnnxParser",
    "MemoryPoolType",
    "ProfilingVerbosity",
    "LayerInformationFormat",
    "DeviceType",
    "DataType",
    "TensorIOMode",
    "IHostMemory",
    "ITimingCache",
    "EngineInspector",
    "IEngineInspector",
    "INetworkDefinition",
    "ITensor",
)


def facts(real: types.ModuleType) -> dict[str, Any]:
    out: dict[str, Any] = {
        "__version__": getattr(real, "__version__", None),
        "module": sorted(n for n in dir(real) if not n.startswith("_")),
    }
    for c in FACT_CLASSES:
        cls = getattr(real, c, None)
        out[c] = None if cls is None else sorted(n for n in dir(cls) if not n.startswith("_"))
    return out


def _api_error(e: BaseException | None) -> ApiMissing | ApiTypeError | None:
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (ApiMissing, ApiTypeError)):
            return e
        e = e.__cause__ or e.__context__
    return None


class Driver:
    def __init__(self, real_name: str, as_name: str, bundle: Path, work: Path) -> None:
        self.real = importlib.import_module(real_name)
        # TensorRT 10 is JetPack 6's: an Orin (sm_87, 2 DLA cores); TensorRT 11 and TensorRT-RTX: a desktop GPU.
        legacy = as_name == "tensorrt" and str(getattr(self.real, "__version__", "")).startswith("10.")
        self.cudart = FakeCudart(ORIN if legacy else ADA)
        cuda = types.ModuleType("cuda")
        bindings = types.ModuleType("cuda.bindings")
        cuda.bindings, bindings.runtime = bindings, self.cudart
        cuda.__path__, bindings.__path__ = [], []
        sys.modules.update({"cuda": cuda, "cuda.bindings": bindings, "cuda.bindings.runtime": self.cudart})
        self.trt = ModuleProxy(self.real, as_name, sim=None)
        self.rec = self.trt._p_rec
        self.sim = TrtSim(self.trt._p_api, self.rec, self.cudart)
        self.rec.sim = self.sim
        self.sim.dla_cores = 2 if legacy else 0
        for name in ("tensorrt", "tensorrt_rtx"):  # only the proxy may answer for TensorRT here
            sys.modules.pop(name, None)
        sys.modules[as_name] = self.trt
        self.flavour = "trt_rtx" if as_name == "tensorrt_rtx" else "trt"
        self.bundle = Path(shutil.copytree(bundle, work / "bundle"))
        self.log_lines: list[str] = []
        self.results: dict[str, Any] = {}

    def log(self, *parts: Any) -> None:
        self.log_lines.append(" ".join(map(str, parts)))

    def run(self, name: str, fn: Callable[[], Any]) -> dict[str, Any]:
        """Run one scenario; an API error that escapes it is fatal: forgive that site and run it again."""
        self.rec.scenario = name
        for attempt in range(40):
            try:
                fn()
                return {"status": "ok", "reruns": attempt}
            except BaseException as e:  # noqa: BLE001 - the report says what happened, nothing is swallowed
                api = _api_error(e)
                if api is not None and api.issue.key not in self.rec.forgiven:
                    api.issue.fatal = True
                    self.rec.forgiven.add(api.issue.key)
                    continue
                return {
                    "status": "error",
                    "reruns": attempt,
                    "error": "".join(traceback.format_exception(type(e), e, e.__traceback__))[-4000:],
                }
        return {"status": "error", "reruns": 40, "error": "too many fatal API errors"}

    # ------------------------------------------------------------------------------------------- scenarios

    def scenarios(self, control: bool) -> dict[str, dict[str, Any]]:
        from export.tensorrt import build as tensorrt_build
        from export.tensorrt.build_plan import BuildOptions, plan_build
        from export.tensorrt.engine import build_engine
        from runtime import bundle as B, load
        from runtime.backends.tensorrt import import_tensorrt
        from runtime.engines import TrtInfo

        st: dict[str, Any] = {}
        out: dict[str, dict[str, Any]] = {}

        def imports():
            st["trt"], st["info"] = import_tensorrt(self.flavour)

        out["import"] = self.run("import", imports)
        if out["import"]["status"] != "ok":
            return out
        trt, info = st["trt"], st["info"]
        manifest = B.read_manifest(self.bundle)
        legacy = info.flavour == "trt" and info.version_tuple[0] < 11

        if control:
            # A TensorRT 10 plan against this module: proves the harness sees what TensorRT 11 removed.
            def control_build():
                plan = plan_build(TrtInfo("trt", "10.3.0"), "decoder", "fp16", manifest, BuildOptions(), None)
                build_engine(self.bundle, plan, trt=trt, verify=False, log=self.log)

            out["control-10.x-fp16-plan"] = self.run("control-10.x-fp16-plan", control_build)
            return out

        def cli(*args: str) -> Callable[[], None]:
            """python -m export.tensorrt.build BUNDLE ARGS, in process; a non-zero exit fails the scenario."""

            def go() -> None:
                err, std = io.StringIO(), io.StringIO()
                with contextlib.redirect_stderr(err), contextlib.redirect_stdout(std):
                    rc = tensorrt_build.main([str(self.bundle), "--flavour", info.flavour, *args])
                self.log(
                    f"export.tensorrt.build {' '.join(args)} -> {rc}\n{std.getvalue()[-1500:]}{err.getvalue()[-1500:]}"
                )
                if rc != 0:
                    raise AssertionError(
                        f"export.tensorrt.build {' '.join(args)} exited {rc}:\n"
                        f"{std.getvalue()[-2000:]}\n{err.getvalue()[-2000:]}"
                    )

            return go

        # Unverified first: the runtime scenarios below need engines even if verification is broken.
        out["build-fp32-unverified"] = self.run(
            "build-fp32-unverified", cli("--precision", "fp32", "--no-verify", "--workspace", "64")
        )
        # Verified: engine inspector + the runtime's parity check on its own backend (and, for TensorRT, the timing
        # cache written above read back).
        out["build-fp32"] = self.run("build-fp32", cli("--graphs", "decoder", "--precision", "fp32"))
        out["build-fp16"] = self.run("build-fp16", cli("--graphs", "decoder", "--precision", "fp16"))
        out["build-int8"] = self.run("build-int8", cli("--graphs", "decoder", "--precision", "int8"))
        out["print-trtexec-fp16"] = self.run(
            "print-trtexec-fp16", cli("--graphs", "decoder", "--precision", "fp16", "--print-trtexec")
        )

        def adopt():
            made = sorted((self.bundle / "engines").glob("decoder.fp32.*.plan"))
            assert made, "no decoder fp32 engine to adopt"
            copy = self.bundle.parent / "adopt.plan"
            shutil.copyfile(made[0], copy)
            cli("--graphs", "decoder", "--precision", "fp32", "--adopt", str(copy))()

        out["adopt"] = self.run("adopt", adopt)
        if legacy:
            dla = (
                "--graphs",
                "decoder",
                "--precision",
                "fp16",
                "--dla-core",
                "0",
                "--min-batch",
                "4",
                "--opt-batch",
                "4",
                "--max-batch",
                "4",
            )
            out["build-dla-unverified"] = self.run("build-dla-unverified", cli(*dla, "--no-verify"))
            out["build-dla"] = self.run("build-dla", cli(*dla))

        z = np.random.default_rng(0).standard_normal((5, manifest.model.latent_dim)).astype(np.float32)

        def runtime_load():
            rt = load(self.bundle, backend="tensorrt", device="cuda:0", precision="fp32", flavour=info.flavour)
            try:
                img = rt.decode(z)
                post = rt.encode(img)
                assert np.isfinite(img).all() and np.isfinite(post.mu).all()
                st["decoded"] = img
            finally:
                rt.close()

        out["runtime-load"] = self.run("runtime-load", runtime_load)

        def cuda_graph():
            launches = self.cudart.calls.count("cudaGraphLaunch")
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                rt = load(
                    self.bundle,
                    backend="tensorrt",
                    device="cuda:0",
                    precision="fp32",
                    graphs=("decoder",),
                    flavour=info.flavour,
                    cuda_graph=True,
                )
                try:
                    runs = [rt.decode(z) for _ in range(4)] + [rt.decode(z[:2]) for _ in range(3)]
                finally:
                    rt.close()
            fell_back = [str(w.message) for w in caught if "graph" in str(w.message).lower()]
            assert not fell_back, f"CUDA graph capture fell back: {fell_back}"
            assert self.cudart.calls.count("cudaGraphLaunch") > launches, "no CUDA graph was ever launched"
            for r in runs[1:4]:
                assert np.array_equal(r, runs[0]), "a CUDA-graph replay gave other numbers than the plain run"
            if "decoded" in st:
                assert np.allclose(runs[0], st["decoded"], atol=1e-6)
            assert np.allclose(runs[-1], runs[0][:2], atol=1e-6)

        out["cuda-graph"] = self.run("cuda-graph", cuda_graph)

        if legacy:

            def dla_runtime():
                rt = load(
                    self.bundle,
                    backend="tensorrt",
                    device="cuda:0",
                    precision="fp16",
                    graphs=("decoder",),
                    flavour=info.flavour,
                    dla_core=0,
                )
                try:
                    assert np.isfinite(rt.decode(np.repeat(z[:1], 4, axis=0))).all()
                finally:
                    rt.close()

            out["dla-runtime"] = self.run("dla-runtime", dla_runtime)
        return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--real", required=True, help="the real binding package to import (tensorrt_bindings, ...)")
    ap.add_argument("--as", dest="as_name", required=True, choices=("tensorrt", "tensorrt_rtx"))
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--control", action="store_true")
    a = ap.parse_args(argv)
    d = Driver(a.real, a.as_name, a.bundle, a.work)
    scenarios = d.scenarios(a.control)
    report = {
        "real": a.real,
        "as": a.as_name,
        "version": getattr(d.real, "__version__", None),
        "scenarios": scenarios,
        "issues": [i.to_dict() for i in d.rec.issues.values()],
        "touched": sorted([o, n, sorted(h)] for (o, n), h in d.rec.touched.items()),
        "notes": sorted(set(d.sim.notes)),
        "cudart_calls": sorted(set(d.cudart.calls)),
        "log": d.log_lines[-40:],
        "facts": facts(d.real),
    }
    print("\n@@REPORT@@" + json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
