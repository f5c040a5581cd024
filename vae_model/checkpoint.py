"""Checkpoints: our own format, PyTorch-VAE / Lightning `.ckpt` files and bare state_dicts, all loaded safely.

Our format is one torch file holding a plain dict:
    format: "vae-deploy/checkpoint", format_version: 1,
    config: VAEConfig.to_dict(), pixel_range: [lo, hi], state_dict: {name: tensor},
    training: {epoch, step, seed, metrics, ...}, and optionally optimizer / scheduler state for --resume.
Everything is loaded with torch.load(weights_only=True, map_location=cpu): no pickled code runs, and tensors saved on
`cuda:1` load on a CPU-only machine. Every failure raises a CheckpointError subclass that names the file.
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from .config import ConfigError, VAEConfig
from .errors import (
    CheckpointNotFoundError,
    CorruptCheckpointError,
    ForeignModelError,
    NotACheckpointError,
    ShapeMismatchError,
)
from .files import atomic_write, sha256_file
from .model import VanillaVAE

FORMAT = "vae-deploy/checkpoint"
FORMAT_VERSION = 1
TANH_RANGE = (-1.0, 1.0)
# PyTorch-VAE's datasets end in transforms.ToTensor() with no Normalize: its models were trained on [0, 1] images.
PYTORCH_VAE_RANGE = (0.0, 1.0)

_ENCODER_KEY = re.compile(r"^encoder\.(\d+)\.0\.weight$")


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A model ready for inference (eval mode, CPU) plus what the file said about it."""

    model: VanillaVAE
    config: VAEConfig
    pixel_range: tuple[float, float]
    kind: str  # "vae-deploy", "lightning" or "state_dict"
    path: Path
    sha256: str
    training: dict[str, Any] = field(default_factory=dict)
    optimizer_state: dict[str, Any] | None = None
    scheduler_state: dict[str, Any] | None = None


def save_checkpoint(
    path: str | os.PathLike,
    model: VanillaVAE,
    *,
    pixel_range: tuple[float, float] = TANH_RANGE,
    training: Mapping[str, Any] | None = None,
    optimizer_state: Mapping[str, Any] | None = None,
    scheduler_state: Mapping[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically (temp file, then rename). Tensors are copied to CPU first."""
    payload: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        "pixel_range": [float(pixel_range[0]), float(pixel_range[1])],
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "training": dict(training or {}),
    }
    if optimizer_state is not None:
        payload["optimizer"] = optimizer_state
    if scheduler_state is not None:
        payload["scheduler"] = scheduler_state
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def _read(path: Path) -> Any:
    if not path.exists():
        raise CheckpointNotFoundError(f"{path}: no such checkpoint file")
    if not path.is_file():
        raise CheckpointNotFoundError(f"{path}: not a file (a checkpoint is one .pt/.ckpt file)")
    size = path.stat().st_size
    if size == 0:
        raise CorruptCheckpointError(f"{path}: the file is empty (0 bytes), expected a torch checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's text ends by advising weights_only=False, i.e. running the file's code: never pass that on.
        text = str(e)
        named = re.findall(r"Unsupported global: GLOBAL (\S+)|unsupported GLOBAL (\S+) whose module", text)
        calls = [a or b for a, b in named] or _unsafe_calls(path)
        if calls:
            raise UnsafeCheckpointError(
                f"{path}: refused: loading this file would run code it carries (it calls {', '.join(calls)}); "
                "checkpoints are only ever loaded in a mode that runs none, and a checkpoint needs only tensors. "
                "If you made this file, re-save it as a plain dict of tensors, e.g. "
                "torch.save(model.state_dict(), path); if you did not, do not use it."
            ) from None
        detail = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n|$)", text)
        reason = detail.group(1) if detail else _first_line(text, e)
        if "weights_only" in reason:
            reason = "its pickle is not one the safe loader reads"
        raise CorruptCheckpointError(
            f"{path}: not a torch checkpoint ({size} bytes; unpickling failed: {reason})"
        ) from None
    except KeyError as e:  # the legacy (non-zip) loader reading bytes that are not a pickle: an opcode number
        raise CorruptCheckpointError(
            f"{path}: not a torch checkpoint ({size} bytes; neither a torch zip archive nor a pickle: unknown "
            f"opcode {e})"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise CorruptCheckpointError(
            f"{path}: cannot be read as a torch checkpoint ({size} bytes; truncated or corrupt?): {_first_line(str(e), e)}"
        ) from None


class UnsafeCheckpointError(NotACheckpointError):
    """The file's pickle would call code when loaded (os.system, exec, a custom class...): refused, never run."""


# Globals torch's own checkpoints reference (tensor rebuilding, storages, containers): not evidence of a payload.
_BENIGN_GLOBAL = re.compile(
    r"^(torch\.(_utils\._rebuild_\w+|\w*Storage|storage\.\w+|_tensor\._rebuild_from_type_v2|"
    r"(float|double|half|bfloat16|u?int\d*|bool|long|complex\d*|strided|device|Size|"
    r"serialization\._get_layout))|collections\.OrderedDict)$"
)
_PICKLE_SCAN_LIMIT = 64 << 20


def _unsafe_calls(path: Path) -> list[str]:
    """Globals other than torch's own that the file's pickle(s) would import, found by reading its opcodes with
    pickletools (which parses, never executes). Scans a raw pickle stream (several in torch's legacy format) or the
    data.pkl of a torch zip archive; returns [] when nothing is found or the bytes are not a pickle."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                member = next((n for n in zf.namelist() if n.endswith("data.pkl")), None)
                if member is None or zf.getinfo(member).file_size > _PICKLE_SCAN_LIMIT:
                    return []
                data = zf.read(member)
        else:
            with open(path, "rb") as f:
                data = f.read(_PICKLE_SCAN_LIMIT)
    except (OSError, zipfile.BadZipFile):
        return []
    found: list[str] = []
    stream = io.BytesIO(data)
    for _ in range(5):  # torch's legacy format: magic, protocol, sys info, the object, storage keys
        strings: list[str] = []
        memo: dict[int, str] = {}
        try:
            for op, arg, _pos in pickletools.genops(stream):
                if op.name in ("GLOBAL", "INST"):
                    found.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str) and ("UNICODE" in op.name or op.name.endswith("STRING")):
                    strings.append(str(arg))
                elif op.name == "MEMOIZE" and strings:
                    memo[len(memo)] = strings[-1]
                elif op.name in ("PUT", "BINPUT", "LONG_BINPUT") and strings:
                    memo[int(arg)] = strings[-1]
                elif op.name in ("GET", "BINGET", "LONG_BINGET") and int(arg) in memo:
                    strings.append(memo[int(arg)])
        except (ValueError, EOFError, pickle.UnpicklingError, UnicodeDecodeError):
            break
        if stream.tell() >= len(data):
            break
    return list(dict.fromkeys(g for g in found if not _BENIGN_GLOBAL.match(g)))


def _first_line(text: str, e: BaseException) -> str:
    text = text.strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def _tensor_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def infer_config(state_dict: Mapping[str, torch.Tensor], *, source: str = "state_dict") -> VAEConfig:
    """Recover the VAEConfig from tensor shapes (Lightning checkpoints carry no hyper-parameters)."""
    blocks = sorted(int(m.group(1)) for k in state_dict if (m := _ENCODER_KEY.match(k)))
    required = ("fc_mu.weight", "final_layer.3.weight")
    missing = [k for k in ("encoder.0.0.weight", *required) if k not in state_dict]
    if missing:
        raise ForeignModelError(
            f"{source}: not a VanillaVAE state_dict: missing {missing} "
            f"(found {len(state_dict)} keys, e.g. {sorted(state_dict)[:4]})"
        )
    if blocks != list(range(len(blocks))):
        raise ForeignModelError(f"{source}: encoder blocks are not numbered 0..n-1: {blocks}")
    hidden = [int(state_dict[f"encoder.{i}.0.weight"].shape[0]) for i in blocks]
    in_channels = int(state_dict["encoder.0.0.weight"].shape[1])
    latent_dim, flat = (int(s) for s in state_dict["fc_mu.weight"].shape)
    out_channels = int(state_dict["final_layer.3.weight"].shape[0])
    side2, rem = divmod(flat, hidden[-1])
    side = int(round(side2**0.5))
    if rem or side * side != side2:
        raise ShapeMismatchError(
            f"{source}: fc_mu.weight has {flat} inputs, not hidden_dims[-1]={hidden[-1]} times a square feature map"
        )
    try:
        return VAEConfig(
            in_channels=in_channels,
            out_channels=out_channels,
            image_size=side << len(hidden),
            latent_dim=latent_dim,
            hidden_dims=tuple(hidden),
        )
    except ConfigError as e:
        raise ForeignModelError(f"{source}: tensor shapes give an unsupported config: {e}") from None


def check_state_dict(state_dict: Mapping[str, torch.Tensor], config: VAEConfig, *, source: str) -> None:
    """Raise ForeignModelError / ShapeMismatchError unless state_dict fits VanillaVAE(config) key for key."""
    expected = VanillaVAE(config).state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s), e.g. {missing[:5]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[:5]}")
        raise ForeignModelError(
            f"{source}: state_dict does not match VanillaVAE{_cfg_str(config)}: " + "; ".join(parts)
        )
    for k, ref in expected.items():
        got = state_dict[k]
        if tuple(got.shape) != tuple(ref.shape):
            raise ShapeMismatchError(
                f"{source}: tensor {k!r} has shape {tuple(got.shape)}, expected {tuple(ref.shape)} "
                f"for VanillaVAE{_cfg_str(config)}"
            )


def _cfg_str(c: VAEConfig) -> str:
    return (
        f"(in_channels={c.in_channels}, image_size={c.image_size}, latent_dim={c.latent_dim}, "
        f"hidden_dims={list(c.hidden_dims)})"
    )


def _strip_prefix(sd: Mapping[str, torch.Tensor], prefix: str = "model.") -> dict[str, torch.Tensor]:
    if sd and all(k.startswith(prefix) for k in sd):
        return {k[len(prefix) :]: v for k, v in sd.items()}
    return dict(sd)


def load_checkpoint(path: str | os.PathLike, *, pixel_range: tuple[float, float] | None = None) -> LoadedCheckpoint:
    """Load any supported checkpoint into an eval-mode CPU VanillaVAE.

    Accepts our own format, a PyTorch-VAE / PyTorch Lightning `.ckpt` (keys prefixed `model.`, tensors possibly
    saved on a GPU, optimizer and callback entries ignored, config inferred from shapes, images in [0, 1]) and a
    bare state_dict (config inferred, pixel range assumed to be the Tanh range [-1, 1] unless `pixel_range` is given).
    """
    path = Path(path)
    obj = _read(path)
    src = str(path)
    training: dict[str, Any] = {}
    optimizer_state = scheduler_state = None
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
        version = obj.get("format_version")
        if version != FORMAT_VERSION:
            raise NotACheckpointError(
                f"{src}: checkpoint format_version {version!r}, this build reads {FORMAT_VERSION}"
            )
        kind = "vae-deploy"
        state_dict = obj.get("state_dict")
        if not _tensor_dict(state_dict):
            raise NotACheckpointError(f"{src}: 'state_dict' is missing or not a dict of tensors")
        try:
            config = VAEConfig.from_dict(obj["config"])
        except (ConfigError, KeyError, TypeError) as e:
            raise NotACheckpointError(f"{src}: bad 'config' entry: {e}") from None
        file_range = tuple(float(v) for v in obj.get("pixel_range", TANH_RANGE))
        training = dict(obj.get("training") or {})
        optimizer_state = obj.get("optimizer")
        scheduler_state = obj.get("scheduler")
    elif isinstance(obj, Mapping) and _tensor_dict(obj.get("state_dict")):
        kind = "lightning"
        state_dict = _strip_prefix(obj["state_dict"])
        config = infer_config(state_dict, source=src)
        file_range = PYTORCH_VAE_RANGE
        training = {k: obj[k] for k in ("epoch", "global_step", "pytorch-lightning_version") if k in obj}
    elif _tensor_dict(obj):
        kind = "state_dict"
        state_dict = _strip_prefix(obj)
        config = infer_config(state_dict, source=src)
        file_range = TANH_RANGE
    else:
        what = f"a dict with keys {sorted(map(str, obj))[:8]}" if isinstance(obj, Mapping) else type(obj).__name__
        raise NotACheckpointError(
            f"{src}: not a VAE checkpoint: expected a vae-deploy checkpoint, a Lightning .ckpt with a 'state_dict' "
            f"of tensors, or a bare state_dict; found {what}"
        )

    check_state_dict(state_dict, config, source=src)
    model = VanillaVAE(config)
    model.load_state_dict(state_dict, strict=True)
    model.eval()
    return LoadedCheckpoint(
        model=model,
        config=config,
        kind=kind,
        path=path,
        sha256=sha256_file(path),
        training=training,
        pixel_range=tuple(pixel_range) if pixel_range is not None else file_range,  # type: ignore[arg-type]
        optimizer_state=optimizer_state,
        scheduler_state=scheduler_state,
    )
