"""TensorRT engine files and their sidecars: naming, provenance, and the check that refuses a stale engine.

Shared by the builder (export.tensorrt.build) and the runtime (the tensorrt backend); standard library only. An engine
is tied to the TensorRT version, the GPU, the platform and the exact ONNX file it was built from, so every
BUNDLE/engines/<stem>.plan has a sidecar BUNDLE/engines/<stem>.json:

    stem     = <graph>.<precision>.<gpu-slug>[.dla<N>].<trt-tag>    e.g. decoder.fp16.orin-sm87-16sms-2dla.trt10.3.0
    gpu-slug = GPU name, lower-case, dashes, "-sm<major><minor>", "-<SM count>sms", "-<n>dla" where the device has DLA
               cores (the SM and DLA counts tell Orin modules apart); "portable" for ahead-of-time TensorRT-RTX engines
    .dla<N>  = built for DLA core N;  trt-tag = "trt" or "rtx" + the version as major.minor.patch (normalize_version)

`check_sidecar` compares a sidecar with the machine and the bundle and returns every mismatch; `require_usable` raises
EngineMismatchError listing them all, with the command that rebuilds the engine here. The C++ runtime implements the
same in runtime/cpp/src/engine_contract.cpp; tests/runtime/test_engine_contract.py runs both on the same sidecars.
"""

from __future__ import annotations

import json
import os
import platform as _platform
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .bundle import Manifest, name_problem, resolve_inside
from .errors import BackendUnavailableError
from .files import sha256_file, write_json_atomic

ENGINES_DIR = "engines"
ENGINE_SUFFIX = ".plan"
SIDECAR_SUFFIX = ".json"
SIDECAR_SCHEMA = "vae-deploy/engine"
SIDECAR_VERSION = 2  # 2: version normalised to major.minor.patch, GPU SM and DLA counts, DLA engines named apart
FLAVOURS = ("trt", "trt_rtx")
FLAVOUR_TAG = {"trt": "trt", "trt_rtx": "rtx"}
PORTABLE = "portable"
TEGRA_RELEASE = "/etc/nv_tegra_release"

# L4T (Jetson Linux) release -> JetPack, for the provenance record; the first matching prefix wins.
# Source: NVIDIA's JetPack archive (JetPack 6.1 and 6.2 both bring TensorRT 10.3; JetPack 6.0 brings 8.6).
L4T_TO_JETPACK: tuple[tuple[str, str], ...] = (
    ("36.4.3", "6.2"),
    ("36.4.4", "6.2.1"),
    ("36.4", "6.1"),
    ("36.3", "6.0"),
    ("36.2", "6.0 DP"),
    ("35.6", "5.1.4"),
    ("35.5", "5.1.3"),
    ("35.4", "5.1.2"),
    ("35.3", "5.1.1"),
    ("35.2", "5.1"),
    ("35.1", "5.0.2"),
)


class EngineError(BackendUnavailableError):
    """An engine or its sidecar is missing or unreadable; the message names the file."""


class EngineMismatchError(EngineError):
    """An engine was built for another machine, TensorRT version or ONNX file; the message lists every mismatch
    and the command that rebuilds it here."""

    def __init__(self, message: str, mismatches: tuple[str, ...] = (), rebuild: str = "") -> None:
        super().__init__(message)
        self.mismatches = mismatches
        self.rebuild = rebuild


# ----------------------------------------------------------------------------------------------- the machine


@dataclass(frozen=True)
class PlatformInfo:
    """CPU architecture and, on a Jetson, the L4T release (and the JetPack it belongs to)."""

    machine: str  # "x86_64" / "aarch64"
    l4t: str | None = None  # "36.4.3"
    jetpack: str | None = None  # "6.2"

    def to_dict(self) -> dict[str, Any]:
        return {"machine": self.machine, "l4t": self.l4t, "jetpack": self.jetpack}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PlatformInfo":
        return cls(machine=str(d["machine"]), l4t=d.get("l4t"), jetpack=d.get("jetpack"))


def parse_tegra_release(text: str) -> str | None:
    """'# R36 (release), REVISION: 4.3, GCID: ...' -> '36.4.3' (None when the text is not an L4T release line)."""
    m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    return f"{m.group(1)}.{m.group(2).rstrip('.')}" if m else None


def jetpack_for_l4t(l4t: str | None) -> str | None:
    if not l4t:
        return None
    for prefix, jp in L4T_TO_JETPACK:
        if l4t == prefix or l4t.startswith(prefix + "."):
            return jp
    return None


def host_platform(tegra_release: str | os.PathLike = TEGRA_RELEASE) -> PlatformInfo:
    """This machine's architecture and Jetson release (read from /etc/nv_tegra_release where it exists)."""
    l4t = None
    path = Path(tegra_release)
    if path.is_file():
        try:
            l4t = parse_tegra_release(path.read_text(errors="replace"))
        except OSError:
            l4t = None
    return PlatformInfo(machine=_platform.machine() or "unknown", l4t=l4t, jetpack=jetpack_for_l4t(l4t))


@dataclass(frozen=True)
class GpuInfo:
    """A GPU as an engine is tied to it: CUDA's device name, compute capability, multiprocessor (SM) count and the
    number of DLA cores TensorRT reports (0 off Jetson)."""

    name: str
    compute_capability: tuple[int, int]
    sm_count: int = 0  # cudaDeviceProp.multiProcessorCount; 0 = unknown (never for a probed GPU)
    dla_cores: int = 0  # IBuilder/IRuntime num_DLA_cores

    @property
    def sm(self) -> str:
        return f"sm{self.compute_capability[0]}{self.compute_capability[1]}"

    @property
    def cc(self) -> str:
        return f"{self.compute_capability[0]}.{self.compute_capability[1]}"

    def describe(self) -> str:
        """'Orin (compute capability 8.7, 16 SMs, 2 DLA cores)'."""
        extra = f", {self.sm_count} SMs" if self.sm_count else ""
        extra += f", {self.dla_cores} DLA cores" if self.dla_cores else ""
        return f"{self.name} (compute capability {self.cc}{extra})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "compute_capability": self.cc,
            "sm_count": self.sm_count,
            "dla_cores": self.dla_cores,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "GpuInfo":
        major, minor = (int(x) for x in str(d["compute_capability"]).split("."))
        return cls(
            name=str(d["name"]),
            compute_capability=(major, minor),
            sm_count=int(d.get("sm_count", 0)),
            dla_cores=int(d.get("dla_cores", 0)),
        )


def normalize_version(text: str) -> str:
    """The one form of a TensorRT version in engine names and sidecars: major.minor.patch.

    '10.3.0' (tensorrt.__version__ on JetPack 6), '10.3.0.30' (NV_TENSORRT_* in the C++ headers), '1.7.1.116'
    (tensorrt_rtx) -> '10.3.0' / '10.3.0' / '1.7.1'. A build number never changes engine compatibility within a
    patch release; the runtime and TensorRT itself refuse a plan of another version at load."""
    m = re.match(r"\s*(\d+(?:\.\d+)*)", str(text))
    if not m:
        raise ValueError(f"TensorRT version: expected digits and dots like '10.3.0', got {text!r}")
    parts = (m.group(1).split(".") + ["0", "0"])[:3]
    return ".".join(str(int(p)) for p in parts)


@dataclass(frozen=True)
class TrtInfo:
    """Which TensorRT: flavour 'trt' (TensorRT) or 'trt_rtx' (TensorRT for RTX), and its version string."""

    flavour: str
    version: str  # normalised to major.minor.patch on construction

    def __post_init__(self) -> None:
        if self.flavour not in FLAVOURS:
            raise ValueError(f"TensorRT flavour: expected one of {FLAVOURS}, got {self.flavour!r}")
        if not re.fullmatch(r"\d+(\.\d+)*", str(self.version)):
            raise ValueError(f"TensorRT version: expected digits and dots like '10.3.0', got {self.version!r}")
        object.__setattr__(self, "version", normalize_version(self.version))

    @property
    def version_tuple(self) -> tuple[int, ...]:
        return tuple(int(x) for x in self.version.split("."))

    @property
    def tag(self) -> str:
        return f"{FLAVOUR_TAG[self.flavour]}{self.version}"

    @property
    def label(self) -> str:
        return ("TensorRT " if self.flavour == "trt" else "TensorRT-RTX ") + self.version

    def to_dict(self) -> dict[str, Any]:
        return {"flavour": self.flavour, "version": self.version}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrtInfo":
        return cls(flavour=str(d["flavour"]), version=str(d["version"]))


@dataclass(frozen=True)
class MachineInfo:
    """What an engine is tied to. gpu is None where no GPU is visible (TensorRT-RTX builds ahead of time on a CPU)."""

    trt: TrtInfo
    gpu: GpuInfo | None
    platform: PlatformInfo


def gpu_slug(gpu: GpuInfo | None) -> str:
    """'NVIDIA H100 80GB HBM3' (9.0, 132 SMs) -> 'h100-80gb-hbm3-sm90-132sms'; AGX Orin 64GB (8.7, 16 SMs, 2 DLA
    cores) -> 'orin-sm87-16sms-2dla'; None -> 'portable'."""
    if gpu is None:
        return PORTABLE
    name = re.sub(r"^nvidia\s+", "", gpu.name.strip(), flags=re.IGNORECASE)
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "gpu"
    slug = f"{slug}-{gpu.sm}"
    if gpu.sm_count:
        slug += f"-{gpu.sm_count}sms"
    if gpu.dla_cores:
        slug += f"-{gpu.dla_cores}dla"
    return slug


def engine_stem(graph: str, precision: str, gpu: GpuInfo | None, trt: TrtInfo, dla_core: int | None = None) -> str:
    dla = "" if dla_core is None else f".dla{dla_core}"
    return f"{graph}.{precision}.{gpu_slug(gpu)}{dla}.{trt.tag}"


def engine_path(
    bundle: str | os.PathLike,
    graph: str,
    precision: str,
    gpu: GpuInfo | None,
    trt: TrtInfo,
    dla_core: int | None = None,
) -> Path:
    return Path(bundle) / ENGINES_DIR / (engine_stem(graph, precision, gpu, trt, dla_core) + ENGINE_SUFFIX)


def sidecar_path(engine: str | os.PathLike) -> Path:
    engine = Path(engine)
    stem = engine.name[: -len(ENGINE_SUFFIX)] if engine.name.endswith(ENGINE_SUFFIX) else engine.name
    return engine.with_name(stem + SIDECAR_SUFFIX)


def candidate_engines(bundle: str | os.PathLike, graph: str, precision: str) -> list[Path]:
    """Every engine file in BUNDLE/engines for this graph and precision, whatever machine built it."""
    folder = Path(bundle) / ENGINES_DIR
    if not folder.is_dir():
        return []
    return sorted(folder.glob(f"{graph}.{precision}.*{ENGINE_SUFFIX}"))


# ----------------------------------------------------------------------------------------------- the sidecar


@dataclass(frozen=True)
class Profile:
    """The optimization profile over the batch axis, for one input tensor (shapes include the batch)."""

    input: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    @property
    def batch(self) -> tuple[int, int, int]:
        return self.min[0], self.opt[0], self.max[0]

    def to_dict(self) -> dict[str, Any]:
        return {"input": self.input, "min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Profile":
        return cls(
            input=str(d["input"]),
            min=tuple(int(x) for x in d["min"]),
            opt=tuple(int(x) for x in d["opt"]),
            max=tuple(int(x) for x in d["max"]),
        )


@dataclass(frozen=True)
class EngineSidecar:
    """Provenance of one engine, written next to it as JSON."""

    graph: str
    precision: str
    engine_file: str  # name inside BUNDLE/engines
    engine_sha256: str
    source_file: str  # ONNX file name inside BUNDLE
    source_sha256: str
    trt: TrtInfo
    gpu: GpuInfo | None  # None: a portable TensorRT-RTX engine
    platform: PlatformInfo
    profile: Profile
    build_options: dict[str, Any] = field(default_factory=dict)  # flags, workspace, dla core, layer precisions...
    build_seconds: float = 0.0
    created: str = ""
    parity: dict[str, Any] = field(default_factory=dict)  # {"verified": bool, "passed": ..., outputs...}
    compute_capabilities: tuple[str, ...] = ()  # TensorRT-RTX targets ("8.9", ...); () = all

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SIDECAR_SCHEMA,
            "schema_version": SIDECAR_VERSION,
            "graph": self.graph,
            "precision": self.precision,
            "engine": {"file": self.engine_file, "sha256": self.engine_sha256},
            "source": {"file": self.source_file, "sha256": self.source_sha256},
            "tensorrt": self.trt.to_dict(),
            "gpu": None if self.gpu is None else self.gpu.to_dict(),
            "compute_capabilities": list(self.compute_capabilities),
            "platform": self.platform.to_dict(),
            "profile": self.profile.to_dict(),
            "build_options": self.build_options,
            "build_seconds": self.build_seconds,
            "created": self.created,
            "parity": self.parity,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, source: str = "sidecar") -> "EngineSidecar":
        if d.get("schema") != SIDECAR_SCHEMA or d.get("schema_version") != SIDECAR_VERSION:
            raise EngineError(
                f"{source}: schema {d.get('schema')!r} version {d.get('schema_version')!r}, "
                f"expected {SIDECAR_SCHEMA!r} version {SIDECAR_VERSION}"
            )
        try:
            sidecar = cls(
                graph=str(d["graph"]),
                precision=str(d["precision"]),
                engine_file=str(d["engine"]["file"]),
                engine_sha256=str(d["engine"]["sha256"]),
                source_file=str(d["source"]["file"]),
                source_sha256=str(d["source"]["sha256"]),
                trt=TrtInfo.from_dict(d["tensorrt"]),
                gpu=None if d.get("gpu") is None else GpuInfo.from_dict(d["gpu"]),
                platform=PlatformInfo.from_dict(d["platform"]),
                profile=Profile.from_dict(d["profile"]),
                build_options=dict(d.get("build_options", {})),
                build_seconds=float(d.get("build_seconds", 0)),
                created=str(d.get("created", "")),
                parity=dict(d.get("parity", {})),
                compute_capabilities=tuple(str(c) for c in d.get("compute_capabilities", ())),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise EngineError(f"{source}: malformed engine sidecar: {type(e).__name__}: {e}") from None
        # Names the bundle contract allows (runtime.bundle.name_problem): the engine sits in engines/ beside its
        # sidecar, the source is a file of the bundle; nothing a sidecar says may point elsewhere.
        for key, name, kind in (
            ("engine", sidecar.engine_file, "a file name inside engines/"),
            ("source", sidecar.source_file, "a relative path inside the bundle"),
        ):
            problem = name_problem(name) or ("it names a folder" if key == "engine" and "/" in name else None)
            if problem:
                raise EngineError(f"{source}: {key}.file: expected {kind}, got {name!r} ({problem})")
        return sidecar


def write_sidecar(path: str | os.PathLike, sidecar: EngineSidecar) -> Path:
    return write_json_atomic(path, sidecar.to_dict())


def read_sidecar(path: str | os.PathLike) -> EngineSidecar:
    path = Path(path)
    if not path.is_file():
        raise EngineError(
            f"{path}: engine sidecar missing; an engine without provenance is never used "
            "(rebuild it with python -m export.tensorrt.build)"
        )
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EngineError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise EngineError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return EngineSidecar.from_dict(data, source=str(path))


# ----------------------------------------------------------------------------------------------- the check


def rebuild_command(
    bundle: str | os.PathLike,
    graph: str,
    precision: str,
    batch: tuple[int, int, int] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """The exact `python -m export.tensorrt.build` command that (re)builds this engine on the machine it is run on."""
    args = ["python", "-m", "export.tensorrt.build", str(bundle), "--graphs", graph, "--precision", precision]
    if batch is not None:
        args += ["--min-batch", str(batch[0]), "--opt-batch", str(batch[1]), "--max-batch", str(batch[2])]
    for key, value in (extra or {}).items():
        if value is None or value is False:
            continue
        args.append(f"--{key.replace('_', '-')}")
        if value is not True:
            args.append(str(value))
    return " ".join(shlex.quote(a) for a in args)


def sidecar_rebuild_command(bundle: str | os.PathLike, sidecar: EngineSidecar) -> str:
    opts = sidecar.build_options
    extra = {"workspace": opts.get("workspace_mib"), "dla_core": opts.get("dla_core")}
    return rebuild_command(bundle, sidecar.graph, sidecar.precision, sidecar.profile.batch, extra)


def _dla_text(core: int | None) -> str:
    return "a GPU engine" if core is None else f"for DLA core {core}"


def check_sidecar(
    sidecar: EngineSidecar,
    *,
    machine: MachineInfo,
    graph: str,
    precision: str,
    source_file: str,
    source_sha256: str,
    engine_sha256: str | None = None,
    dla_core: int | None = None,
) -> list[str]:
    """Every reason this engine must not run here (empty: usable). Pure: the caller supplies machine and hashes.

    source_file / source_sha256: the file the sidecar names as its source and the sha256 vae.json lists for it
    now (any of the graph's files: a TensorRT 10 FP16 engine is built from the FP32 graph, a TensorRT 11 one from
    the FP16 variant). dla_core: the DLA core asked for (None: a GPU engine)."""
    out = []
    if sidecar.graph != graph or sidecar.precision != precision:
        out.append(f"graph/precision: engine is {sidecar.graph}/{sidecar.precision}, asked for {graph}/{precision}")
    built_dla = sidecar.build_options.get("dla_core")
    if built_dla != dla_core:
        out.append(f"DLA: engine is {_dla_text(built_dla)}, asked for {_dla_text(dla_core)}")
    if sidecar.trt.flavour != machine.trt.flavour or sidecar.trt.version != machine.trt.version:
        out.append(f"TensorRT: engine built with {sidecar.trt.label}, this machine has {machine.trt.label}")
    if sidecar.platform.machine != machine.platform.machine:
        out.append(f"platform: engine built on {sidecar.platform.machine}, this machine is {machine.platform.machine}")
    if sidecar.platform.l4t and machine.platform.l4t and sidecar.platform.l4t != machine.platform.l4t:
        out.append(
            f"Jetson L4T: engine built on L4T {sidecar.platform.l4t} (JetPack {sidecar.platform.jetpack}), "
            f"this machine has L4T {machine.platform.l4t} (JetPack {machine.platform.jetpack})"
        )
    if sidecar.gpu is not None:
        if machine.gpu is None:
            out.append(f"GPU: engine built for {sidecar.gpu.describe()}, no GPU visible here")
        elif sidecar.gpu != machine.gpu:
            out.append(f"GPU: engine built for {sidecar.gpu.describe()}, this machine has {machine.gpu.describe()}")
    elif machine.gpu is not None:
        if not sidecar.compute_capabilities:
            out.append(
                "GPU: portable engine records no target compute capabilities (so nothing says it runs on "
                f"{machine.gpu.describe()})"
            )
        elif machine.gpu.cc not in sidecar.compute_capabilities:
            out.append(
                f"GPU: portable engine targets compute capabilities {list(sidecar.compute_capabilities)}, "
                f"this GPU ({machine.gpu.name}) is {machine.gpu.cc}"
            )
    if sidecar.source_file != source_file or sidecar.source_sha256 != source_sha256:
        out.append(
            f"ONNX: engine built from {sidecar.source_file} sha256 {sidecar.source_sha256[:12]}..., the bundle "
            f"now has {source_file} sha256 {source_sha256[:12]}... (the graph changed since the build)"
        )
    if engine_sha256 is not None and engine_sha256 != sidecar.engine_sha256:
        out.append(
            f"engine file: sha256 {engine_sha256[:12]}..., sidecar says {sidecar.engine_sha256[:12]}... "
            "(the plan was replaced or damaged after the build)"
        )
    return out


def manifest_source_sha256(manifest: Manifest, graph: str, file: str) -> str | None:
    """The sha256 vae.json lists for `file` as graph `graph` (the FP32 graph or one of its variants), else None."""
    spec = manifest.graphs.get(graph)
    if spec is None:
        return None
    if spec.file == file:
        return spec.sha256
    for v in spec.variants.values():
        if v.file == file:
            return v.sha256
    return None


def require_usable(
    bundle: str | os.PathLike,
    engine: str | os.PathLike,
    *,
    machine: MachineInfo,
    manifest: Manifest,
    graph: str,
    precision: str,
    dla_core: int | None = None,
) -> EngineSidecar:
    """Read the engine's sidecar and check it against this machine and the bundle's current ONNX files (hashing the
    engine file); raise EngineMismatchError listing every mismatch and the rebuild command."""
    engine = Path(engine)
    if not engine.is_file():
        raise EngineError(f"{engine}: engine file missing")
    sidecar = read_sidecar(sidecar_path(engine))
    current = manifest_source_sha256(manifest, graph, sidecar.source_file)
    problems = check_sidecar(
        sidecar,
        machine=machine,
        graph=graph,
        precision=precision,
        source_file=sidecar.source_file if current else "(not in vae.json)",
        source_sha256=current or "-",
        engine_sha256=sha256_file(engine),
        dla_core=dla_core,
    )
    if problems:
        cmd = sidecar_rebuild_command(bundle, sidecar)
        raise EngineMismatchError(
            f"{engine}: refusing this engine:\n  - "
            + "\n  - ".join(problems)
            + f"\nrebuild it on this machine with:\n  {cmd}",
            tuple(problems),
            cmd,
        )
    return sidecar


def _inside(bundle: str | os.PathLike, engine: Path) -> Path:
    """`engine`, once it and its sidecar are known to stay inside the bundle after symlinks (else BundleError)."""
    resolve_inside(bundle, engine)
    resolve_inside(bundle, sidecar_path(engine))
    return engine


def locate_engine(
    bundle: str | os.PathLike, *, machine: MachineInfo, graph: str, precision: str, dla_core: int | None = None
) -> Path:
    """The engine built for this machine, or EngineError naming what exists instead and the command to build it."""
    want = engine_path(bundle, graph, precision, machine.gpu, machine.trt, dla_core)
    if want.is_file():
        return _inside(bundle, want)
    others = candidate_engines(bundle, graph, precision)
    # A portable TensorRT-RTX engine (built ahead of time without a GPU) serves any supported GPU.
    if machine.trt.flavour == "trt_rtx":
        portable = engine_path(bundle, graph, precision, None, machine.trt)
        if portable.is_file():
            return _inside(bundle, portable)
    have = (" Engines present for other machines: " + ", ".join(p.name for p in others) + ".") if others else ""
    where = "" if dla_core is None else f", DLA core {dla_core}"
    raise EngineError(
        f"{want}: no {precision} {graph} engine for this machine ({machine.trt.label}, "
        f"GPU {gpu_slug(machine.gpu)}{where}, {machine.platform.machine}).{have} Build it here with:\n  "
        + rebuild_command(bundle, graph, precision, extra={"dla_core": dla_core})
    )
