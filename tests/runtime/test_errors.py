"""One error root per project: runtime.errors.VaeError for runtime/, export/ and benchmarks/, and
vae_model.errors.VaeModelError for vae_model/ (which cannot import the runtime). A CLI catches the root, so a bug
(a numpy ValueError, a FloatingPointError) shows its traceback instead of exiting 2 as "bad input".

Modules that need a third-party package this machine lacks (torch and onnx under JetPack, Triton's
triton_python_backend_utils everywhere but inside Triton) are skipped, not failed.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import sys
from types import ModuleType

import pytest

from runtime.errors import VaeError

PROJECT_PACKAGES = ("runtime", "export", "benchmarks", "vae_model", "tests")


def _import(name: str, skipped: list[str]) -> ModuleType | None:
    """The module, or None (noted in `skipped`) when it needs a third-party package that is not installed here."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] in PROJECT_PACKAGES:
            raise  # a module of this project is missing: a bug, not the machine
        skipped.append(f"{name} (needs {e.name})")
        return None


def _error_classes(package: str) -> tuple[list[type], list[str]]:
    """Every exception class defined in the package's modules (not imported into them), and the skipped modules."""
    skipped: list[str] = []
    path = list(sys.path)  # runtime.serving.triton_model puts its own folder first on sys.path before it fails here
    try:
        root = _import(package, skipped)
        if root is None:
            return [], skipped
        modules = [root] + [
            m
            for info in pkgutil.walk_packages(root.__path__, package + ".", onerror=lambda _: None)
            if (m := _import(info.name, skipped)) is not None
        ]
    finally:
        sys.path[:] = path
    found = {
        obj
        for module in modules
        for obj in vars(module).values()
        if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == module.__name__
    }
    return sorted(found, key=lambda c: (c.__module__, c.__qualname__)), skipped


def _check_root(package: str, root: type) -> list[type]:
    classes, skipped = _error_classes(package)
    if not classes:
        pytest.skip(f"no module of {package} imports here: {skipped}")
    stray = [
        f"{c.__module__}.{c.__qualname__} (bases {[b.__name__ for b in c.__mro__[1:]]})"
        for c in classes
        if not issubclass(c, root)
    ]
    assert not stray, f"error classes not under {root.__module__}.{root.__qualname__}: {stray}"
    return classes


@pytest.mark.parametrize("package", ["runtime", "export", "benchmarks"])
def test_every_error_of_runtime_export_and_benchmarks_is_a_vae_error(package):
    classes = _check_root(package, VaeError)
    if package == "runtime":
        assert {"BundleError", "InputError", "BackendError", "EngineError", "ClosedError"} <= {
            c.__name__ for c in classes
        }


def test_every_error_of_vae_model_is_a_vae_model_error():
    skipped: list[str] = []
    errors = _import("vae_model.errors", skipped)  # vae_model's __init__ imports torch
    if errors is None:
        pytest.skip(f"vae_model does not import here: {skipped}")
    classes = _check_root("vae_model", errors.VaeModelError)
    assert not issubclass(errors.VaeModelError, VaeError) and not issubclass(VaeError, errors.VaeModelError)
    assert {"CheckpointError", "ConfigError", "DataError", "TrainError"} <= {c.__name__ for c in classes}


def test_compatible_builtin_bases_are_kept():
    """Code written before the roots existed catches ValueError (bad input) or RuntimeError (closed, failed)."""
    import runtime

    for cls in (
        runtime.InputError,
        runtime.ShapeError,
        runtime.BundleError,
        runtime.BackendError,
        runtime.BackendUnavailableError,
    ):
        assert issubclass(cls, VaeError) and issubclass(cls, ValueError)
    assert issubclass(runtime.ClosedError, VaeError) and issubclass(runtime.ClosedError, RuntimeError)
    assert runtime.VaeError is VaeError


def test_one_bench_error():
    skipped: list[str] = []
    errors, latency, serving = (_import(f"benchmarks.{m}", skipped) for m in ("errors", "latency", "serving"))
    if skipped:
        pytest.skip(f"not importable here: {skipped}")
    assert latency.BenchError is serving.BenchError is errors.BenchError
    assert issubclass(errors.BenchError, VaeError)


@pytest.mark.parametrize(
    "error",
    [
        ValueError("operands could not be broadcast together"),
        FloatingPointError("overflow encountered in multiply"),
        TypeError("unsupported operand"),
    ],
)
def test_parity_cli_lets_a_bug_through(monkeypatch, tmp_path, capsys, error):
    """Not an error of ours: the traceback shows; parity does not exit 2 claiming bad input."""
    from runtime.verify import parity

    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr(parity, "check_parity", broken)
    with pytest.raises(type(error), match=str(error)):
        parity.main([str(tmp_path)])
    assert "error:" not in capsys.readouterr().err


def test_parity_cli_reports_a_project_error_in_one_line(monkeypatch, tmp_path, capsys):
    from runtime.bundle import BundleError
    from runtime.verify import parity

    def bad_bundle(*args, **kwargs):
        raise BundleError(f"{tmp_path}/vae.json: no such file")

    monkeypatch.setattr(parity, "check_parity", bad_bundle)
    assert parity.main([str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path}/vae.json: no such file\n"


def test_parity_cli_unknown_graph_is_bad_input(bundle, capsys):
    """--graphs naming a graph the bundle lacks is said in one line (it was a KeyError traceback)."""
    from runtime.verify import parity

    assert parity.main([str(bundle), "--graphs", "vae"]) == 2
    assert "graphs: asked for ['vae']" in capsys.readouterr().err


def test_to_triton_cli_catches_the_root_only(monkeypatch, tmp_path, capsys):
    from runtime.serving import to_triton
    from runtime.serving.repository import RepositoryError

    def refuse(*args, **kwargs):
        raise RepositoryError("--instances 0: expected >= 1")

    monkeypatch.setattr(to_triton, "write_repository", refuse)
    assert to_triton.main([str(tmp_path), "--out", str(tmp_path / "repo")]) == 2
    assert capsys.readouterr().err.endswith("error: --instances 0: expected >= 1\n")

    def broken(*args, **kwargs):
        raise ValueError("a bug")

    monkeypatch.setattr(to_triton, "write_repository", broken)
    with pytest.raises(ValueError, match="a bug"):
        to_triton.main([str(tmp_path), "--out", str(tmp_path / "repo")])
