"""Help layout and progress for vae_model's command-line tool (training), stdlib only.

vae_model imports neither runtime nor export, whose tools share runtime/cli.py; training needs less: argparse's own
formatters, and tqdm only on a terminal. In a log, training's one summary line per epoch is the progress, so a
captured `make demo` holds no `\\r` updates.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Iterable, Mapping


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Description and epilog printed as written; each option's help ends with its default."""


def epilog(exit_codes: Mapping[int, str], *examples: str) -> str:
    """The exit-status and examples block that ends --help (examples may use %(prog)s)."""
    lines = ["exit status:"] + [f"  {code:<3} {meaning}" for code, meaning in sorted(exit_codes.items())]
    return "\n".join(lines + ["examples:"] + [f"  {e}" for e in examples])


def prog_name(module: str) -> str | None:
    """`python -m MODULE` when run that way, else None (argparse then uses the installed command's name)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return f"python -m {module}" if spec is not None and spec.name == module else None


class _Silent:
    """The iterable itself, with the few bar methods training calls doing nothing."""

    def __init__(self, iterable: Iterable[Any]) -> None:
        self._iterable = iterable

    def __iter__(self):
        return iter(self._iterable)

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


def progress(iterable: Iterable[Any], *, desc: str, enabled: bool = True, file: Any = None, **kwargs: Any):
    """A tqdm bar over `iterable` when enabled and `file` (default stderr) is a terminal; otherwise no output."""
    file = sys.stderr if file is None else file
    isatty = getattr(file, "isatty", None)
    if not enabled or not (isatty is not None and isatty()):
        return _Silent(iterable)
    from tqdm import tqdm  # a training extra; imported only when a bar is drawn

    return tqdm(iterable, desc=desc, file=file, dynamic_ncols=True, **kwargs)
