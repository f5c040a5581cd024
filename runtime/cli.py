"""What every command-line tool of runtime, export and benchmarks shares: help layout, --graphs, program name, progress.

- `HelpFormatter`: description and epilog kept as written, each option's help ending with its default.
- `epilog(...)`: the "exit status" and "examples" block every tool's --help ends with.
- `parse_graphs` / `add_graphs_argument`: one --graphs convention, a comma list of graph names (default: every graph
  of the bundle).
- `prog_name(module)`: `python -m MODULE` when run that way, else the console command's own name (vae-parity, ...).
- `progress(...)`: a tqdm bar on a terminal; a few plain lines where stderr is a file or a pipe, so a captured log
  is not flooded with carriage-return redraws.

vae_model cannot import this package: vae_model/cli.py holds its own copy of the formatter, prog_name and progress.
Heavy imports: none; tqdm only when a bar is drawn on a terminal.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import IO, Any, Iterable, Iterator, Mapping

from .bundle import GRAPHS

# ----------------------------------------------------------------------------------------------- help


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Description and epilog printed as written; an option's help ends with "(default: X)" unless it has no
    default (None, False, a required option) or its help already names one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text.lower() or not _has_default(action):
            return text
        default = action.default
        if isinstance(default, (list, tuple)):
            default = ",".join(str(d) for d in default) if default else "none"
        shown = str(default).replace("%", "%%")  # the help string is %-formatted by argparse
        return f"{text} (default: {shown})" if text else f"default: {shown}"


def _has_default(action: argparse.Action) -> bool:
    d = action.default
    # identity, not ==: a default of 0 or 0.0 is one to show (0 == False)
    if action.required or d is None or d is False or d is argparse.SUPPRESS:
        return False
    return not (isinstance(d, str) and not d)


def epilog(exit_codes: Mapping[int, str], *examples: str) -> str:
    """The block every --help ends with. Examples may use %(prog)s, which argparse replaces by the invoked name."""
    lines = ["exit status:"] + [f"  {code:<3} {meaning}" for code, meaning in sorted(exit_codes.items())]
    lines += ["examples:" if len(examples) > 1 else "example:"] + [f"  {e}" for e in examples]
    return "\n".join(lines)


def prog_name(module: str) -> str | None:
    """`python -m MODULE` when this process runs MODULE that way (or the caller is not a console command), else None:
    argparse then names the program after sys.argv[0], the installed command (vae-parity, ...)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name == module:
        return f"python -m {module}"
    argv0 = sys.argv[0] if sys.argv else ""
    if not argv0 or argv0 == "-c" or argv0.endswith(".py"):  # called in-process (tests, another module's main)
        return f"python -m {module}"
    return None


# ----------------------------------------------------------------------------------------------- --graphs


def graphs_help(what: str = "graphs to use", default: str = "every graph of the bundle") -> str:
    return (
        f"{what}: comma-separated graph names, e.g. decoder or {','.join(GRAPHS)} (default: {default}; 'both' is "
        "a deprecated alias of the default, removed in the next release)"
    )


def parse_graphs(text: str) -> tuple[str, ...] | None:
    """--graphs: "encoder,decoder" -> ("encoder", "decoder"): names stripped, empty items and repeats dropped.

    None for the deprecated "both" (export.tensorrt.build's old spelling of every graph of the bundle, which is what
    omitting --graphs means), with a one-line warning on stderr. Names are checked by the tool against the bundle.
    """
    if text.strip().lower() == "both":
        print(
            "warning: --graphs both is deprecated and will be removed in the next release: omit --graphs for every "
            f"graph of the bundle, or name them ({','.join(GRAPHS)})",
            file=sys.stderr,
        )
        return None
    return tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))


def add_graphs_argument(
    parser: argparse.ArgumentParser, *, what: str = "graphs to use", default: str = "every graph of the bundle"
) -> None:
    """Add the one --graphs option. Its value is None when omitted (or 'both'): the tool's default, `default`."""
    parser.add_argument("--graphs", type=parse_graphs, default=None, metavar="LIST", help=graphs_help(what, default))


# ----------------------------------------------------------------------------------------------- progress


def progress(
    iterable: Iterable[Any] | None = None,
    *,
    total: float | None = None,
    desc: str = "",
    enabled: bool = True,
    unit: str = "it",
    leave: bool = True,
    file: IO[str] | None = None,
) -> Any:
    """A progress bar with tqdm's interface (iteration, update, reset, set_postfix[_str], write, close, `with`).

    On a terminal: tqdm. Elsewhere (stderr captured to a file or a pipe), or without tqdm: PlainProgress, a line at
    the start, about every 10% (at most one a second) or every 30 s, and at the end - never a carriage return.
    `enabled=False` (--no-progress) prints nothing.
    """
    stream = sys.stderr if file is None else file
    if enabled and _isatty(stream):
        try:
            from tqdm import tqdm
        except ImportError:  # tqdm is an extra (train, bench); without it a terminal gets the plain lines too
            tqdm = None
        if tqdm is not None:
            return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, dynamic_ncols=True, file=stream)
    return PlainProgress(iterable, total=total, desc=desc, unit=unit, enabled=enabled, file=stream)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed file
        return False


class PlainProgress:
    """Progress as a few whole lines, for logs: start, ~every 10% (>= 1 s apart) or every 30 s, end. Work that ends
    before its first progress line prints nothing (a quick failure leaves only its own error line)."""

    STEP = 0.1  # fraction of the total between lines
    MIN_GAP_S = 1.0  # no two progress lines closer than this
    MAX_GAP_S = 30.0  # a line at least this often while work goes on
    clock = staticmethod(time.monotonic)  # tests replace it

    def __init__(
        self,
        iterable: Iterable[Any] | None = None,
        *,
        total: float | None = None,
        desc: str = "",
        unit: str = "it",
        enabled: bool = True,
        file: IO[str] | None = None,
    ) -> None:
        if total is None and iterable is not None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except TypeError:
                total = None
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.enabled, self.file = enabled, file
        self.n = 0
        self.postfix = ""
        self._closed = False
        self._printed = False
        self._t0 = self.clock()  # times are since the bar was made, across reset()s
        self._start()

    # tqdm's interface -----------------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            raise TypeError("PlainProgress: nothing to iterate (made without an iterable)")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> "PlainProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: float = 1) -> None:
        self.n += n
        now = self.clock()
        gap = now - self._last_line
        if self.total:
            step = int(self.n / self.total / self.STEP)
            due = step > self._last_step and gap >= self.MIN_GAP_S and self.n < self.total
        else:
            step, due = self._last_step, False
        if due or gap >= self.MAX_GAP_S:
            self._last_step = step
            self._line(self._position())

    def reset(self, total: float | None = None) -> None:
        """A new phase (tqdm's reset): counts from 0 again, with a new total if given."""
        if total is not None:
            self.total = total
        self.n = 0
        self._start()

    def set_postfix(self, ordered_dict: Mapping[str, Any] | None = None, refresh: bool = True, **kwargs: Any) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def write(self, s: str, file: IO[str] | None = None, end: str = "\n") -> None:
        """tqdm.write: a message line (stdout by default, as tqdm's)."""
        out = sys.stdout if file is None else file
        out.write(s + end)
        out.flush()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._printed:
            self._line(f"done, {self._count()} in {self.clock() - self._t0:.1f} s")

    # lines ------------------------------------------------------------------------------------------------------

    def _start(self) -> None:
        """A phase begins: its start line waits for the first progress line (see the class docstring)."""
        self._last_step = 0
        self._last_line = self.clock()
        self._pending = f"start ({self._count()})"

    def _position(self) -> str:
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        return f"{self._count()}{pct}, {self.clock() - self._t0:.1f} s"

    def _count(self) -> str:
        return f"{self._fmt(self.n)}/{self._fmt(self.total)}" if self.total else f"{self._fmt(self.n)} {self.unit}"

    @staticmethod
    def _fmt(x: float | None) -> str:
        return "?" if x is None else (str(int(x)) if float(x).is_integer() else f"{x:.3g}")

    def _line(self, what: str) -> None:
        self._last_line = self.clock()
        if not self.enabled or self.file is None:
            return
        head = f"{self.desc}: " if self.desc else ""
        tail = f" [{self.postfix}]" if self.postfix else ""
        text = f"{head}{what}{tail}\n"
        if self._pending:
            text = f"{head}{self._pending}\n{text}"
            self._pending = ""
        self._printed = True
        try:
            self.file.write(text)
            self.file.flush()
        except (OSError, ValueError):  # a closed or broken log must not stop the work it reports on
            pass
