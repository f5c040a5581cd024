"""Train a VanillaVAE: `python -m vae_model.train [--data DIR] [--out DIR] [--epochs N] ...`.

Defaults reproduce PyTorch-VAE's recipe (Adam lr 0.005, ExponentialLR gamma 0.95, kld weight 0.00025, batch 64) on
the embedded shapes dataset, with images scaled to the Tanh range [-1, 1]. Writes into --out:
    last.pt, best.pt          checkpoints (atomic; best by validation loss)
    metrics.csv, steps.csv    per-epoch and per-step loss terms
    loss_curve.png            the curves; samples_eNNN.png (prior samples), recons_eNNN.png (input | reconstruction)
Every epoch's randomness (shuffle order, reparameterisation noise) is seeded from (--seed, epoch), so the same seed
gives the same result on the CPU, and --resume continues exactly where the run stopped.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from . import viz
from .checkpoint import TANH_RANGE, load_checkpoint, save_checkpoint
from .cli import HelpFormatter, epilog, prog_name, progress
from .config import DEFAULT_HIDDEN_DIMS, VAEConfig
from .data import ArrayDataset, ImageFolderDataset, make_shapes, to_model_range
from .errors import VaeModelError
from .model import VanillaVAE, vae_loss

METRIC_FIELDS = [
    "epoch",
    "step",
    "lr",
    "train_loss",
    "train_recon",
    "train_kld",
    "val_loss",
    "val_recon",
    "val_kld",
    "val_psnr",
    "seconds",
]
STEP_FIELDS = ["step", "epoch", "loss", "recon", "kld"]


class TrainError(VaeModelError, ValueError):
    """A training option or resume state cannot be used."""


@dataclass(frozen=True)
class TrainOptions:
    out: Path = Path("runs/train")
    data: Path | None = None
    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.005
    gamma: float = 0.95
    kld_weight: float = 0.00025
    weight_decay: float = 0.0
    seed: int = 0
    device: str = "auto"
    train_size: int = 8192
    val_size: int = 512
    model: VAEConfig = field(default_factory=VAEConfig)
    center_crop: int = 148
    resume: Path | None = None
    progress: bool = True  # a bar on a terminal, nothing in a log (vae_model.cli.progress)
    verbose: bool = True  # one summary line per epoch
    num_samples: int = 64


@dataclass(frozen=True)
class EpochMetrics:
    epoch: int
    step: int
    lr: float
    train_loss: float
    train_recon: float
    train_kld: float
    val_loss: float
    val_recon: float
    val_kld: float
    val_psnr: float
    seconds: float


@dataclass(frozen=True)
class TrainResult:
    last: Path
    best: Path
    history: tuple[EpochMetrics, ...]
    seconds: float


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TrainError(f"--device {name}: CUDA is not available on this machine (use --device cpu or auto)")
    if name != "cpu" and not name.startswith("cuda"):
        raise TrainError(f"--device: expected auto, cpu or cuda[:N], got {name!r}")
    return torch.device(name)


def _datasets(opt: TrainOptions) -> tuple[Dataset, Dataset]:
    cfg = opt.model
    if opt.data is None:
        train = make_shapes(opt.train_size, cfg.image_size, cfg.in_channels, seed=opt.seed * 2 + 1000).images
        val = make_shapes(opt.val_size, cfg.image_size, cfg.in_channels, seed=opt.seed * 2 + 1001).images
        return ArrayDataset(train), ArrayDataset(val)
    return ImageFolderDataset(opt.data, cfg.image_size, opt.center_crop, cfg.in_channels).split()


def _seeded(seed: int, epoch: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed(((seed * 1_000_003 + epoch) * 31 + stream) % (2**63))


@torch.no_grad()
def evaluate(
    model: VanillaVAE,
    loader: DataLoader,
    device: torch.device,
    kld_weight: float,
    pixel_range: tuple[float, float],
    seed: int,
) -> dict[str, float]:
    """Validation loss terms (fixed noise, so comparable across epochs) and the PSNR of the mean reconstruction."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    totals = {"loss": 0.0, "recon": 0.0, "kld": 0.0, "mse_mean": 0.0}
    n = 0
    for batch in loader:
        x = to_model_range(batch, pixel_range).to(device)
        post = model.encode(x)
        eps = torch.randn(post.mu.shape, generator=gen).to(device)
        out = model.decode(post.mu + eps * torch.exp(0.5 * post.logvar))
        terms = vae_loss(out, x, post, kld_weight=kld_weight)
        mse_mean = torch.mean((model.decode(post.mu) - x) ** 2).item()
        b = len(x)
        totals["loss"] += terms.loss.item() * b
        totals["recon"] += terms.reconstruction.item() * b
        totals["kld"] += terms.kld.item() * b
        totals["mse_mean"] += mse_mean * b
        n += b
    avg = {k: v / n for k, v in totals.items()}
    span = pixel_range[1] - pixel_range[0]
    avg["psnr"] = 10 * math.log10(span**2 / max(avg.pop("mse_mean"), 1e-12))
    return avg


def _truncate_csv(path: Path, fields: list[str], keep) -> None:
    """Drop rows written after the checkpoint we resume from (they belong to a run that did not finish)."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if keep(r)]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def _append_csv(path: Path, fields: list[str], rows: Sequence[dict]) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        if new:
            w.writeheader()
        w.writerows(rows)


@dataclass(frozen=True)
class _Session:
    """What every training step works on: the options, the output folder and the model with its optimiser."""

    opt: TrainOptions
    out: Path
    device: torch.device
    model: VanillaVAE
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.ExponentialLR
    pixel_range: tuple[float, float]

    @property
    def last_path(self) -> Path:
        return self.out / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.out / "best.pt"


@dataclass(frozen=True)
class _StartPoint:
    """Where the epoch loop begins: from scratch, or where a --resume checkpoint left off."""

    epoch: int = 0
    step: int = 0
    best_val: float = math.inf
    history: tuple[EpochMetrics, ...] = ()


@dataclass(frozen=True)
class _TrainData:
    train_set: Dataset
    val_loader: DataLoader
    fixed_val: torch.Tensor  # the validation images shown in recons_eNNN.png
    fixed_z: torch.Tensor  # the latents decoded into samples_eNNN.png


@dataclass(frozen=True)
class _EpochPass:
    """One pass over the training set: the global step after it, its steps.csv rows and the loss sums."""

    step: int
    rows: list[dict]
    sums: dict[str, float]


def _make_out_dir(out: Path) -> Path:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TrainError(f"--out {out}: cannot create the output folder ({e.strerror or e})") from None
    return out


def _start_session(opt: TrainOptions, device: torch.device, out: Path) -> _Session:
    """Seed torch and build the model, the Adam optimiser and its ExponentialLR schedule."""
    torch.manual_seed(opt.seed)
    model = VanillaVAE(opt.model)
    optimizer = torch.optim.Adam(model.parameters(), lr=opt.lr, weight_decay=opt.weight_decay)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=opt.gamma)
    return _Session(
        opt=opt, out=out, device=device, model=model, optimizer=optimizer, scheduler=scheduler, pixel_range=TANH_RANGE
    )


def _resume_or_reset(run: _Session) -> _StartPoint:
    """Load the --resume checkpoint (and trim the CSVs to it), or clear the CSVs of an earlier run."""
    opt, out = run.opt, run.out
    if opt.resume is None:
        for name in ("metrics.csv", "steps.csv"):
            (out / name).unlink(missing_ok=True)
        return _StartPoint()
    ck = load_checkpoint(opt.resume)
    if ck.kind != "vae-deploy" or ck.optimizer_state is None or ck.scheduler_state is None:
        raise TrainError(f"--resume {opt.resume}: not a training checkpoint of this tool (no optimizer state)")
    if ck.config != opt.model:
        raise TrainError(f"--resume {opt.resume}: model config {ck.config} differs from the requested {opt.model}")
    run.model.load_state_dict(ck.model.state_dict())
    run.optimizer.load_state_dict(ck.optimizer_state)
    run.scheduler.load_state_dict(ck.scheduler_state)
    start = _StartPoint(
        epoch=int(ck.training["epoch"]),
        step=int(ck.training["step"]),
        best_val=float(ck.training.get("best_val", math.inf)),
        history=tuple(EpochMetrics(**h) for h in ck.training.get("history", [])),
    )
    _truncate_csv(out / "metrics.csv", METRIC_FIELDS, lambda r: int(r["epoch"]) <= start.epoch)
    _truncate_csv(out / "steps.csv", STEP_FIELDS, lambda r: int(r["step"]) <= start.step)
    return start


def _move_to_device(model: VanillaVAE, optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    model.to(device)
    for state in optimizer.state.values():  # optimizer state loaded on CPU follows the model to its device
        for k, v in state.items():
            if isinstance(v, torch.Tensor) and k != "step":
                state[k] = v.to(device)


def _load_data(opt: TrainOptions) -> _TrainData:
    train_set, val_set = _datasets(opt)
    if len(train_set) < opt.batch_size:
        raise TrainError(f"training set has {len(train_set)} images, fewer than --batch-size {opt.batch_size}")
    val_loader = DataLoader(val_set, batch_size=opt.batch_size, shuffle=False)
    fixed_val = torch.stack([val_set[i] for i in range(min(16, len(val_set)))])
    fixed_z = torch.randn(opt.num_samples, opt.model.latent_dim, generator=torch.Generator().manual_seed(opt.seed + 7))
    return _TrainData(train_set=train_set, val_loader=val_loader, fixed_val=fixed_val, fixed_z=fixed_z)


def _checkpoint_options(opt: TrainOptions) -> dict:
    """The options recorded in each checkpoint (paths as text; the model config is stored on its own)."""
    return {
        k: (str(v) if isinstance(v, Path) else v)
        for k, v in asdict(opt).items()
        if k not in ("model", "resume", "progress", "out")
    }


def _train_step(run: _Session, batch: torch.Tensor, noise: torch.Generator):
    """One optimiser step on one batch; returns the loss terms."""
    x = to_model_range(batch, run.pixel_range).to(run.device)
    post = run.model.encode(x)
    eps = torch.randn(post.mu.shape, generator=noise).to(run.device)
    z = post.mu + eps * torch.exp(0.5 * post.logvar)
    terms = vae_loss(run.model.decode(z), x, post, kld_weight=run.opt.kld_weight)
    run.optimizer.zero_grad(set_to_none=True)
    terms.loss.backward()
    run.optimizer.step()
    return terms


def _train_one_epoch(run: _Session, train_set: Dataset, epoch: int, step: int) -> _EpochPass:
    opt = run.opt
    run.model.train()
    loader = DataLoader(
        train_set, batch_size=opt.batch_size, shuffle=True, drop_last=True, generator=_seeded(opt.seed, epoch, 0)
    )
    noise = _seeded(opt.seed, epoch, 1)
    sums = {"loss": 0.0, "recon": 0.0, "kld": 0.0}
    steps_rows = []
    bar = progress(loader, desc=f"epoch {epoch + 1}/{opt.epochs}", enabled=opt.progress, unit="step")
    for batch in bar:
        terms = _train_step(run, batch, noise)
        step += 1
        row = {
            "step": step,
            "epoch": epoch + 1,
            "loss": terms.loss.item(),
            "recon": terms.reconstruction.item(),
            "kld": terms.kld.item(),
        }
        steps_rows.append(row)
        for k in sums:
            sums[k] += row[k]
        bar.set_postfix(loss=f"{row['loss']:.4f}", recon=f"{row['recon']:.4f}", kld=f"{row['kld']:.1f}")
    bar.close()
    return _EpochPass(step=step, rows=steps_rows, sums=sums)


def _close_epoch(run: _Session, data: _TrainData, epoch_pass: _EpochPass, epoch: int, t0: float) -> EpochMetrics:
    """Step the learning-rate schedule, evaluate on the validation set and summarise the epoch."""
    opt = run.opt
    lr = run.optimizer.param_groups[0]["lr"]
    run.scheduler.step()
    sums, nb = epoch_pass.sums, len(epoch_pass.rows)
    val = evaluate(run.model, data.val_loader, run.device, opt.kld_weight, run.pixel_range, seed=opt.seed + 99)
    return EpochMetrics(
        epoch=epoch + 1,
        step=epoch_pass.step,
        lr=lr,
        train_loss=sums["loss"] / nb,
        train_recon=sums["recon"] / nb,
        train_kld=sums["kld"] / nb,
        val_loss=val["loss"],
        val_recon=val["recon"],
        val_kld=val["kld"],
        val_psnr=val["psnr"],
        seconds=time.perf_counter() - t0,
    )


def _save_previews(run: _Session, data: _TrainData, epoch: int) -> None:
    """samples_eNNN.png, recons_eNNN.png and the refreshed loss_curve.png."""
    model, out, pixel_range = run.model, run.out, run.pixel_range
    model.eval()
    with torch.no_grad():
        samples = model.decode(data.fixed_z.to(run.device)).cpu().numpy()
        xv = to_model_range(data.fixed_val, pixel_range).to(run.device)
        recons = model.reconstruct(xv).cpu().numpy()
    viz.save_grid(
        samples,
        out / f"samples_e{epoch + 1:03d}.png",
        nrow=8,
        pixel_range=pixel_range,
        title=f"epoch {epoch + 1}: {len(samples)} samples, the decoder on the same fixed draws z ~ N(0, I) "
        "every epoch, 8 per row",
    )
    viz.save_pairs(
        xv.cpu().numpy(),
        recons,
        out / f"recons_e{epoch + 1:03d}.png",
        pixel_range=pixel_range,
        title=f"epoch {epoch + 1}: reconstructions of the same validation images every epoch",
    )
    viz.plot_losses(out / "metrics.csv", out / "loss_curve.png", out / "steps.csv")


def _save_epoch_checkpoints(
    run: _Session, m: EpochMetrics, history: list[EpochMetrics], best_val: float, improved: bool, train_opts: dict
) -> None:
    """last.pt every epoch (with optimiser and schedule), best.pt when the validation loss improved."""
    meta = {
        "epoch": m.epoch,
        "step": m.step,
        "seed": run.opt.seed,
        "best_val": best_val,
        "metrics": asdict(m),
        "history": [asdict(h) for h in history],
        "options": train_opts,
        "torch": str(torch.__version__),
    }
    model_cpu_state = dict(training=meta, pixel_range=run.pixel_range)
    save_checkpoint(
        run.last_path,
        run.model,
        optimizer_state=run.optimizer.state_dict(),
        scheduler_state=run.scheduler.state_dict(),
        **model_cpu_state,
    )
    if improved:
        save_checkpoint(run.best_path, run.model, **model_cpu_state)


def _print_epoch_summary(m: EpochMetrics, improved: bool) -> None:
    print(
        f"epoch {m.epoch}: train loss {m.train_loss:.5f} (recon {m.train_recon:.5f}, kld {m.train_kld:.2f}) "
        f"| val loss {m.val_loss:.5f} psnr {m.val_psnr:.2f} dB | {m.seconds:.1f}s"
        f"{' | best' if improved else ''}",
        flush=True,
    )


def _ensure_best_checkpoint(run: _Session) -> None:
    """If no epoch wrote best.pt (a resumed run in a folder without one), copy last.pt's model into it."""
    best_path, last_path = run.best_path, run.last_path
    if not best_path.exists() and last_path.exists():
        save_checkpoint(
            best_path,
            load_checkpoint(last_path).model,
            pixel_range=run.pixel_range,
            training=load_checkpoint(last_path).training,
        )


def train(opt: TrainOptions) -> TrainResult:
    """Run training and return where the checkpoints are. Raises TrainError / DataError / CheckpointError."""
    t_start = time.perf_counter()
    device = _device(opt.device)
    run = _start_session(opt, device, _make_out_dir(Path(opt.out)))
    start = _resume_or_reset(run)
    _move_to_device(run.model, run.optimizer, device)
    data = _load_data(opt)
    train_opts = _checkpoint_options(opt)

    step, best_val, history = start.step, start.best_val, list(start.history)
    for epoch in range(start.epoch, opt.epochs):
        t0 = time.perf_counter()
        epoch_pass = _train_one_epoch(run, data.train_set, epoch, step)
        step = epoch_pass.step
        m = _close_epoch(run, data, epoch_pass, epoch, t0)
        history.append(m)
        _append_csv(run.out / "steps.csv", STEP_FIELDS, epoch_pass.rows)
        _append_csv(run.out / "metrics.csv", METRIC_FIELDS, [asdict(m)])
        _save_previews(run, data, epoch)
        improved = m.val_loss < best_val
        best_val = min(best_val, m.val_loss)
        _save_epoch_checkpoints(run, m, history, best_val, improved, train_opts)
        if opt.verbose:
            _print_epoch_summary(m, improved)
    _ensure_best_checkpoint(run)
    return TrainResult(
        last=run.last_path, best=run.best_path, history=tuple(history), seconds=time.perf_counter() - t_start
    )


def _parse_dims(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    d = TrainOptions()
    p = argparse.ArgumentParser(
        prog=prog_name("vae_model.train"),
        description=__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter,
        epilog=epilog(
            {
                0: "trained: last.pt and best.pt written",
                2: "bad option, data or checkpoint (one line on stderr)",
                130: "interrupted (Ctrl-C): last.pt holds the last complete epoch, for --resume",
            },
            "%(prog)s --out runs/train --epochs 10",
            "%(prog)s --data ~/celeba/img_align_celeba --out runs/celeba --epochs 30",
            "%(prog)s --resume runs/train/last.pt --epochs 20",
        ),
    )
    p.add_argument("--out", type=Path, default=d.out, metavar="DIR", help="output folder")
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        metavar="DIR",
        help="folder of images (e.g. CelebA img_align_celeba); default: the embedded shapes dataset",
    )
    p.add_argument("--epochs", type=int, default=d.epochs, metavar="N", help="epochs to train")
    p.add_argument("--batch-size", type=int, default=d.batch_size, metavar="N", help="images per optimiser step")
    p.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate")
    p.add_argument("--gamma", type=float, default=d.gamma, help="ExponentialLR decay per epoch")
    p.add_argument("--kld-weight", type=float, default=d.kld_weight, help="weight of the KL term in the loss")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="Adam weight decay")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the initial weights and every epoch's randomness")
    p.add_argument("--device", default=d.device, help="auto, cpu or cuda[:N]")
    p.add_argument(
        "--train-size", type=int, default=d.train_size, metavar="N", help="embedded dataset: training images"
    )
    p.add_argument("--val-size", type=int, default=d.val_size, metavar="N", help="embedded dataset: validation images")
    p.add_argument("--image-size", type=int, default=64, metavar="PX", help="image height and width (a power of two)")
    p.add_argument("--in-channels", type=int, default=3, metavar="C", help="image channels")
    p.add_argument("--latent-dim", type=int, default=128, metavar="N", help="size of the latent vector z")
    p.add_argument(
        "--hidden-dims",
        type=_parse_dims,
        default=DEFAULT_HIDDEN_DIMS,
        metavar="LIST",
        help="channels of the encoder's conv blocks, comma-separated (the decoder mirrors them)",
    )
    p.add_argument(
        "--center-crop",
        type=int,
        default=d.center_crop,
        metavar="PX",
        help="--data: centre crop before resizing (saved in the checkpoint; export records it in vae.json, and the "
        "runtimes crop images the same way)",
    )
    p.add_argument("--resume", type=Path, default=None, metavar="CKPT", help="continue from a last.pt checkpoint")
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar (one is drawn only on a terminal; the per-epoch summary lines are always printed)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        for name in ("epochs", "batch_size", "train_size", "val_size"):
            if getattr(args, name) < 1:
                raise TrainError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
        for name, ok, want in (
            ("lr", args.lr > 0, "> 0"),
            ("gamma", 0 < args.gamma <= 1, "in (0, 1]"),
            ("kld_weight", args.kld_weight >= 0, ">= 0"),
            ("weight_decay", args.weight_decay >= 0, ">= 0"),
        ):
            value = getattr(args, name)
            if not (math.isfinite(value) and ok):
                raise TrainError(f"--{name.replace('_', '-')} must be a finite number {want}, got {value}")
        if args.seed < 0:
            raise TrainError(f"--seed must be >= 0, got {args.seed}")
        if args.center_crop < 1:
            raise TrainError(f"--center-crop must be >= 1, got {args.center_crop}")
        model_cfg = VAEConfig(
            in_channels=args.in_channels,
            out_channels=args.in_channels,
            image_size=args.image_size,
            latent_dim=args.latent_dim,
            hidden_dims=args.hidden_dims,
        )
        opt = TrainOptions(
            out=args.out,
            data=args.data,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            gamma=args.gamma,
            kld_weight=args.kld_weight,
            weight_decay=args.weight_decay,
            seed=args.seed,
            device=args.device,
            train_size=args.train_size,
            val_size=args.val_size,
            model=model_cfg,
            center_crop=args.center_crop,
            resume=args.resume,
            progress=not args.no_progress,
        )
        result = train(opt)
    except KeyboardInterrupt:
        last = Path(args.out) / "last.pt"
        print(
            f"\ninterrupted; the last complete checkpoint is {last if last.exists() else 'none yet'} "
            f"(continue with --resume {last})",
            file=sys.stderr,
        )
        return 130
    except VaeModelError as e:  # TrainError, DataError, CheckpointError, ConfigError: a line, not a traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    h = result.history[-1] if result.history else None
    print(
        f"done in {result.seconds:.1f}s: {result.last} and {result.best}"
        + (f" (val loss {h.val_loss:.5f}, PSNR {h.val_psnr:.2f} dB)" if h else "")
    )
    print(f"samples and reconstructions: {Path(args.out)}/samples_e*.png, recons_e*.png; curves: loss_curve.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
