"""The command-line tools as users meet them: installed commands, --help, one --graphs convention, progress in logs.

Every console script of pyproject.toml's [project.scripts] answers --help with exit 0, names itself as invoked, shows
defaults, exit codes and examples; every option has a help string; --graphs takes a comma list wherever it exists;
progress output written to a file (make demo > log 2>&1) has no carriage-return redraws.
"""

from __future__ import annotations

import argparse
import importlib
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from runtime import cli as runtime_cli

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _console_scripts() -> dict[str, str]:
    """pyproject.toml's [project.scripts] (read by hand: tomllib is Python 3.11+, the project supports 3.10)."""
    text = (REPO / "pyproject.toml").read_text()
    section = text.split("\n[project.scripts]\n", 1)[1].split("\n[", 1)[0]
    return dict(re.findall(r'^([\w-]+)\s*=\s*"([^"]+)"', section, re.M))


SCRIPTS = _console_scripts()


def _module(target: str):
    module, _, func = target.partition(":")
    return importlib.import_module(module), func


class _Parsed(Exception):
    pass


def _parser_of(target: str, monkeypatch) -> argparse.ArgumentParser:
    """The parser a CLI's main builds: its parse_args is intercepted before anything else runs."""
    mod, func = _module(target)

    def intercept(self, *args, **kwargs):
        raise _Parsed(self)

    with monkeypatch.context() as m:
        m.setattr(argparse.ArgumentParser, "parse_args", intercept)
        with pytest.raises(_Parsed) as caught:
            getattr(mod, func)([])
    return caught.value.args[0]


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]


def test_every_cli_module_is_a_console_script():
    mains = {
        "vae_model.train",
        "export.to_onnx",
        "export.precision.fp16",
        "export.precision.int8",
        "export.precision.bf16",
        "export.tensorrt.build",
        "export.divergence",
        "runtime.verify.parity",
        "runtime.serving.serve",
        "runtime.serving.to_triton",
        "benchmarks.latency",
        "benchmarks.serving",
        "benchmarks.coldstart",
        "benchmarks.chunking",
    }
    assert {t.partition(":")[0] for t in SCRIPTS.values()} == mains
    assert all(t.endswith(":main") for t in SCRIPTS.values())


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_console_script_help(name):
    exe = BIN / name
    assert exe.exists(), f"{exe}: not installed; run .venv/bin/pip install --no-deps -e ."
    proc = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=180, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith(f"usage: {name} "), out[:200]  # named as invoked, not "python -m ..."
    assert re.search(r"\(default:? ", out)  # the options with a default say it
    assert "\nexit status:\n  0 " in out and "\n  2 " in out
    examples = out[out.index("\nexample") :]
    assert f"\n  {name} " in examples  # the examples use the invoked name too


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_every_option_has_help_and_shows_its_default(name, monkeypatch):
    parser = _parser_of(SCRIPTS[name], monkeypatch)
    formatter = parser._get_formatter()
    assert type(formatter).__name__ == "HelpFormatter" and type(formatter).__module__ in (
        "runtime.cli",
        "vae_model.cli",
    )
    for action in _options(parser):
        assert action.help, f"{name} {action.option_strings or action.dest}: no help"
        if runtime_cli._has_default(action):
            assert "default" in formatter._get_help_string(action).lower(), (name, action.option_strings)


def test_python_m_keeps_its_name():
    proc = subprocess.run(
        [sys.executable, "-m", "runtime.verify.parity", "--help"], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert proc.returncode == 0 and proc.stdout.startswith("usage: python -m runtime.verify.parity ")
    assert "\n  python -m runtime.verify.parity runs/bundle\n" in proc.stdout


# ----------------------------------------------------------------------------------------------- --graphs

NO_GRAPHS = {"vae-train", "vae-serve", "vae-bench-serving", "vae-bench-coldstart", "vae-bench-chunking"}
GRAPH_CLIS = sorted(set(SCRIPTS) - NO_GRAPHS)


def _parse_with_graphs(parser: argparse.ArgumentParser, graphs: str) -> object:
    argv = []
    for a in _options(parser):
        if not a.option_strings:
            argv.append("x")  # positionals: BUNDLE / CKPT
        elif a.required:
            argv += [a.option_strings[0], "x"]  # to_triton's --out
    return parser.parse_args([*argv, "--graphs", graphs]).graphs


def _names(value) -> list[str]:
    return list(value)


@pytest.mark.parametrize("name", GRAPH_CLIS)
def test_graphs_is_a_comma_list(name, monkeypatch, capsys):
    parser = _parser_of(SCRIPTS[name], monkeypatch)
    assert any("--graphs" in a.option_strings for a in _options(parser)), f"{name} has no --graphs"
    assert _names(_parse_with_graphs(parser, "encoder,decoder")) == ["encoder", "decoder"]
    assert _names(_parse_with_graphs(parser, " decoder ,decoder")) == ["decoder"]
    # the deprecated alias: every graph, as when --graphs is omitted, and a one-line warning
    both = _parse_with_graphs(parser, "both")
    assert both is None or _names(both) == ["encoder", "decoder"]
    err = capsys.readouterr().err
    assert "--graphs both is deprecated" in err and len(err.strip().splitlines()) == 1
    assert "comma-separated graph names" in " ".join(parser.format_help().split())


def test_parse_graphs():
    assert runtime_cli.parse_graphs("decoder") == ("decoder",)
    assert runtime_cli.parse_graphs("encoder, decoder,") == ("encoder", "decoder")
    assert runtime_cli.parse_graphs("") == ()  # the tool then says which graphs it expects
    assert runtime_cli.parse_graphs("vae") == ("vae",)  # names are checked against the bundle by the tool


def test_tensorrt_build_graphs_default_is_the_bundles(monkeypatch):
    from export.tensorrt.build import build_parser

    assert build_parser().parse_args(["b"]).graphs is None
    assert build_parser().parse_args(["b", "--graphs", "decoder"]).graphs == ("decoder",)


# ----------------------------------------------------------------------------------------------- help formatter


def test_help_formatter_shows_defaults_but_not_none():
    p = argparse.ArgumentParser(
        prog="t",
        formatter_class=runtime_cli.HelpFormatter,
        epilog=runtime_cli.epilog({0: "ok", 2: "bad input"}, "%(prog)s x"),
    )
    p.add_argument("--seed", type=int, default=0, help="seed")
    p.add_argument("--batch", default=[1, 8], help="sizes")
    p.add_argument("--out", default=None, help="folder")
    p.add_argument("--flag", action="store_true", help="a flag")
    p.add_argument("--rate", default=0.5, help="rate (default 1/2)")
    text = " ".join(p.format_help().split())
    assert "seed (default: 0)" in text and "sizes (default: 1,8)" in text
    assert "folder --flag" in text and "a flag --rate" in text and "rate (default 1/2) exit" in text
    assert "exit status: 0 ok 2 bad input example: t x" in text


# ----------------------------------------------------------------------------------------------- progress


def test_training_progress_in_a_log_is_silent():
    """vae_model's bar (stdlib + tqdm only): nothing in a log, where the per-epoch summary lines are the progress."""
    from vae_model import cli

    log = io.StringIO()
    bar = cli.progress(range(5), desc="epoch 1/1", file=log)
    assert list(bar) == list(range(5))
    bar.set_postfix(loss="0.1")
    bar.close()
    assert log.getvalue() == ""


@pytest.mark.parametrize("helper", ["runtime.cli"])
def test_progress_in_a_log_is_a_few_plain_lines(helper, monkeypatch):
    cli = importlib.import_module(helper)
    now = [0.0]
    monkeypatch.setattr(cli.PlainProgress, "clock", staticmethod(lambda: now[0]))
    log = io.StringIO()  # not a terminal
    seen = 0
    bar = cli.progress(range(1000), desc="epoch 1/1", file=log)
    assert isinstance(bar, cli.PlainProgress)
    for _ in bar:
        now[0] += 0.1  # 100 s of work in 1000 steps
        seen += 1
        bar.set_postfix(loss="0.1")
    lines = log.getvalue().splitlines()
    assert seen == 1000 and "\r" not in log.getvalue()
    assert lines[0] == "epoch 1/1: start (0/1000)" and lines[-1].startswith("epoch 1/1: done, 1000/1000 in 100.0 s")
    assert 8 <= len(lines) <= 12, lines  # start, about every 10%, end
    assert "epoch 1/1: 100/1000 (10%), 10.0 s [loss=0.1]" in lines


@pytest.mark.parametrize("helper", ["runtime.cli"])
def test_progress_disabled_prints_nothing(helper):
    cli = importlib.import_module(helper)
    log = io.StringIO()
    with cli.progress(total=3, desc="x", enabled=False, file=log) as bar:
        bar.update(3)
    assert log.getvalue() == ""


@pytest.mark.parametrize("helper", ["runtime.cli", "vae_model.cli"])
def test_progress_on_a_terminal_is_tqdm(helper):
    pytest.importorskip("tqdm")
    cli = importlib.import_module(helper)
    primary, secondary = os.openpty()
    with os.fdopen(secondary, "w") as tty:
        bar = cli.progress(range(3), desc="x", file=tty)
        assert type(bar).__name__ == "tqdm"
        assert list(bar) == [0, 1, 2]
    os.close(primary)


SEARCH = r"""
import time
import numpy as np
from export.precision.common import search_kept_nodes
from runtime.verify.metrics import Tolerance, compare_outputs

BAD = {"n3", "n17"}

def evaluate(keep):
    time.sleep(0.1)  # long enough for progress lines (work under a second prints none)
    err = float(len(BAD - set(keep)))
    return compare_outputs({"x": np.full(4, err, np.float32)}, {"x": np.zeros(4, np.float32)}, Tolerance(max_abs=0.5))

res = search_kept_nodes([f"n{i}" for i in range(40)], evaluate, desc="search")
print(sorted(res.kept), res.evaluations)
"""


def test_search_progress_redirected_to_a_file_has_no_redraws(tmp_path):
    """stderr to a file, as `make demo > log 2>&1`: the work completes and the log gets lines, not \\r redraws."""
    err = tmp_path / "stderr.log"
    with open(err, "w") as f:
        proc = subprocess.run(
            [sys.executable, "-c", SEARCH], cwd=REPO, stdout=subprocess.PIPE, stderr=f, text=True, timeout=300
        )
    log = err.read_text()
    assert proc.returncode == 0, log
    assert proc.stdout.startswith("['n17', 'n3']")
    assert log.count("\r") < 20 and log.count("\r") == 0
    assert 2 <= len(log.splitlines()) <= 50 and log.splitlines()[-1].startswith("search: done")


def test_progress_of_quick_work_prints_nothing():
    """A run that ends before its first progress line (e.g. a tool refusing its input) leaves only its own error."""
    from runtime import cli

    log = io.StringIO()
    with cli.progress(total=2, desc="engines", file=log) as bar:
        bar.update(1)
    assert log.getvalue() == ""


def test_no_module_makes_its_own_tqdm_bar():
    """Every bar goes through runtime.cli.progress or vae_model.cli.progress (the log-friendly fallback)."""
    offenders = {
        str(p.relative_to(REPO))
        for pkg in ("vae_model", "export", "runtime", "benchmarks")
        for p in (REPO / pkg).rglob("*.py")
        if "from tqdm import" in p.read_text() and p.name != "cli.py"
    }
    assert offenders == set()
