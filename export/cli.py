"""Small argparse helpers shared by the export CLIs (argparse turns their errors into a usage line and exit 2).

Help layout, the --graphs option, the program name and progress output come from runtime.cli, shared with the runtime
and benchmark CLIs.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text}")
    return value


def add_budget_arguments(p: argparse.ArgumentParser, *, psnr: str, rel_l2: str) -> None:
    """--budget-psnr / --budget-rel-l2 of the precision tools; `psnr` and `rel_l2` describe their defaults."""
    p.add_argument(
        "--budget-psnr",
        type=positive_float,
        default=None,
        metavar="DB",
        help=f"decoder image PSNR floor in dB (default {psnr})",
    )
    p.add_argument(
        "--budget-rel-l2",
        type=positive_float,
        default=None,
        metavar="X",
        help=f"encoder mu/logvar rel L2 ceiling (default {rel_l2})",
    )


def add_evaluation_arguments(p: argparse.ArgumentParser) -> None:
    """--samples / --seed / --calibration: the fresh realistic inputs a precision tool measures a variant on."""
    p.add_argument(  # checked by the tool (>= 0), so a bad value is its one-line error with exit 2
        "--samples",
        type=int,
        default=32,
        metavar="N",
        help="fresh realistic inputs per graph (default 32)",
    )
    p.add_argument("--seed", type=non_negative_int, default=1, help="seed of the fresh inputs")
    p.add_argument(
        "--calibration",
        type=Path,
        default=None,
        metavar="DIR",
        help="folder of images for the realistic inputs (default: the embedded shapes dataset)",
    )
