"""PyTorch reference backend: the trained model itself, for parity checks and benchmarks (not for deployment).

It loads the checkpoint the bundle was exported from - `checkpoint=` when given, else the one vae.json's `source`
names (its relative_path from the bundle folder, an older export's absolute path, then its file name inside the
bundle folder: runtime.bundle.source_checkpoint_candidates) - and refuses a checkpoint whose size or sha256 differs
from the one recorded at export (a different model would make every comparison meaningless), or whose config or
pixel range differ from the manifest's. FP32 only: reduced precision belongs to the deployed engines.

Options: checkpoint (path), threads (torch.set_num_threads - process-wide, as torch has no per-model setting).
torch and vae_model are imported in open() only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from runtime.backends.base import Backend, Device
from runtime.bundle import (
    DECODER,
    ENCODER,
    IMAGE,
    LOGVAR,
    MU,
    BundleError,
    Manifest,
    Z,
    source_checkpoint_candidates,
    source_checkpoint_mismatch,
)
from runtime.errors import BackendError, BackendUnavailableError


def find_checkpoint(bundle: Path, manifest: Manifest, checkpoint: str | os.PathLike | None) -> Path:
    """The checkpoint to load: the explicit one, else the one vae.json names (its relative_path from the bundle folder,
    an older export's absolute path, then its name inside the bundle folder). Not yet checked: see check_checkpoint."""
    if checkpoint is not None:
        path = Path(checkpoint)
        if not path.is_file():
            raise BackendError(f"option checkpoint: {path} is not a file")
        return path
    candidates = source_checkpoint_candidates(bundle, manifest.source)
    for c in candidates:
        if c.is_file():
            return c
    raise BackendUnavailableError(
        f"backend 'torch': the bundle's source checkpoint is not here (looked for {[str(c) for c in candidates]}); "
        "pass checkpoint=PATH (CLI: --checkpoint PATH)"
    )


def check_checkpoint(path: Path, manifest: Manifest, sha256: str) -> None:
    """BundleError unless the checkpoint at `path` (whose sha256 the caller computed) is the one vae.json records."""
    why = source_checkpoint_mismatch(path, manifest.source, sha256)
    if why is not None:
        raise BundleError(f"{path}: {why}; pass the checkpoint this bundle came from")


class TorchBackend(Backend):
    name = "torch"
    options = ("checkpoint", "threads")
    precisions = ("fp32",)
    thread_safe = True  # inference under no_grad on an eval-mode module shares no mutable state

    def __init__(
        self,
        manifest: Manifest,
        *,
        device: Device,
        precision: str,
        graphs: tuple[str, ...],
        check_finite: bool,
        model: Any,
        torch_module: Any,
        checkpoint: Path,
        sha256: str,
    ) -> None:
        super().__init__(manifest, device=device, precision=precision, graphs=graphs, check_finite=check_finite)
        self.model = model
        self.checkpoint = checkpoint
        self.sha256 = sha256
        self._torch = torch_module
        self._tdevice = torch_module.device(str(device))
        self.engine_errors = (RuntimeError,)  # torch raises RuntimeError for kernel / device failures

    @classmethod
    def unavailable_reason(cls, bundle: Path, manifest: Manifest, device: Device, precision: str) -> str | None:
        return "the PyTorch reference backend is chosen explicitly only"

    @classmethod
    def open(
        cls,
        bundle: Path,
        manifest: Manifest,
        *,
        device: Device,
        precision: str,
        graphs: tuple[str, ...],
        check_finite: bool = True,
        checkpoint: str | os.PathLike | None = None,
        threads: int | None = None,
    ) -> "TorchBackend":
        if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
            raise BackendError(f"option threads: expected a positive integer, got {threads!r}")
        path = find_checkpoint(bundle, manifest, checkpoint)
        try:
            import torch

            from vae_model import VaeModelError, load_checkpoint
        except ImportError as e:
            raise BackendUnavailableError(
                f"backend 'torch': needs torch and vae_model ({e}); pip install 'vae-deploy[train]'"
            ) from None
        if device.is_cuda and not torch.cuda.is_available():
            raise BackendUnavailableError(f"backend 'torch' on {device}: torch.cuda.is_available() is False")
        try:
            ck = load_checkpoint(path)
        except VaeModelError as e:
            raise BackendError(f"backend 'torch': {e}") from None
        check_checkpoint(path, manifest, ck.sha256)
        cfg = ck.config.to_dict()
        man = {k: v for k, v in manifest.model.to_dict().items() if k != "family"}
        if cfg != man:
            raise BundleError(f"{path}: model config {cfg} differs from the bundle's {man}")
        if tuple(ck.pixel_range) != tuple(manifest.pixel_range):
            raise BundleError(
                f"{path}: pixel range {list(ck.pixel_range)} differs from the bundle's {list(manifest.pixel_range)}"
            )
        if threads is not None:
            torch.set_num_threads(threads)
        model = ck.model.to(torch.device(str(device))).eval()
        return cls(
            manifest,
            device=device,
            precision=precision,
            graphs=graphs,
            check_finite=check_finite,
            model=model,
            torch_module=torch,
            checkpoint=path,
            sha256=ck.sha256,
        )

    def _run(self, graph: str, feeds: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        torch = self._torch
        with torch.inference_mode():
            if graph == ENCODER:
                post = self.model.encode(torch.from_numpy(feeds[IMAGE]).to(self._tdevice))
                return {MU: post.mu.cpu().numpy(), LOGVAR: post.logvar.cpu().numpy()}
            if graph == DECODER:
                return {IMAGE: self.model.decode(torch.from_numpy(feeds[Z]).to(self._tdevice)).cpu().numpy()}
        raise BackendError(f"backend 'torch': unknown graph {graph!r}")

    def _close(self) -> None:
        self.model = None

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "torch": str(self._torch.__version__),
            "checkpoint": str(self.checkpoint),
            "checkpoint_sha256": self.sha256,
        }
