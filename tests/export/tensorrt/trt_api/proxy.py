"""A typed recording proxy of a real TensorRT binding module (pybind11), for driving our code without a GPU.

Every attribute our code reads, writes or calls on `trt` or on an object it got from `trt` is looked up on the real
pybind11 class (its `__dict__` along the MRO, as `dir()` sees it). Calls are bound against the signatures pybind11
writes into each docstring (`name(self: tensorrt.X, a: int, b: tensorrt.Y = ...) -> tensorrt.Z`, overloads
included): argument count, keyword names (pybind11's unnamed `argN` parameters are positional only) and, where the
annotation says, the argument's type. Results are typed by the return annotation: another proxy of the named class,
a real enum member, a real `Dims`, or a value the simulation (sim.py) supplies and this module checks against the
same annotation. Real pybind methods are never called (their C++ side would call into the stub libraries).

Faithful failure: a missing attribute raises AttributeError and a call no overload accepts raises TypeError, like
the real module would, so `hasattr` / `getattr(x, name, default)` keep their meaning. The driver (drive.py) marks an
error that escapes a scenario as fatal, "forgives" that one call site (the proxy then returns an absorbing stand-in
there) and re-runs, so one run lists every fatal problem, not only the first.
"""

from __future__ import annotations

import inspect
import re
import sys
import types
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parents[4]
_THIS_DIR = Path(__file__).resolve().parent
MISSING = object()
_INT_NAMES = {"int", "typing.SupportsInt", "SupportsInt", "typing.SupportsIndex", "SupportsIndex"}


# ----------------------------------------------------------------------------------------------- signatures


@dataclass(frozen=True)
class Param:
    name: str
    annotation: str
    has_default: bool
    kind: str = "pos"  # pos | varargs | varkw

    @property
    def positional_only(self) -> bool:
        return re.fullmatch(r"arg\d+", self.name) is not None


@dataclass(frozen=True)
class Signature:
    params: tuple[Param, ...]
    returns: str
    text: str


def _split_top(text: str, sep: str = ",") -> list[str]:
    out, depth, cur, quote = [], 0, [], None
    for ch in text:
        if quote:
            cur.append(ch)
            quote = None if ch == quote else quote
            continue
        if ch in "'\"":
            quote = ch
        elif ch in "[(<{":
            depth += 1
        elif ch in "])>}":
            depth -= 1
        if ch == sep and depth == 0:
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    if "".join(cur).strip():
        out.append("".join(cur).strip())
    return out


def _param(text: str) -> Param:
    if text.startswith("**"):
        return Param(text[2:].split(":")[0], "", True, "varkw")
    if text.startswith("*"):
        return Param(text[1:].split(":")[0], "", True, "varargs")
    name, _, rest = text.partition(":")
    parts = rest.split(" = ", 1)
    return Param(name.strip(), parts[0].strip(), len(parts) == 2)


_SIG = re.compile(r"^\s*(?:\d+\.\s+)?[A-Za-z_]\w*\((?P<params>.*)\)\s*->\s*(?P<ret>.+?)\s*$")
_ANON_SIG = re.compile(r"^\s*\((?P<params>.*)\)\s*->\s*(?P<ret>.+?)\s*$")  # property getters/setters


def parse_signatures(doc: str | None) -> list[Signature]:
    """The pybind11 signatures at the top of a docstring (all numbered overloads when it is overloaded)."""
    lines = (doc or "").splitlines()
    if not lines:
        return []
    if len(lines) > 1 and lines[1].strip() == "Overloaded function.":
        cands = [ln for ln in lines if re.match(r"^\d+\.\s+\w+\(", ln)]
    else:
        cands = lines[:1]
    sigs = []
    for ln in cands:
        m = _SIG.match(ln) or _ANON_SIG.match(ln)
        if m and "*args, **kwargs" not in m.group("params"):
            sigs.append(Signature(tuple(_param(p) for p in _split_top(m.group("params"))), m.group("ret"), ln.strip()))
    return sigs


# ----------------------------------------------------------------------------------------------- issues


@dataclass
class Issue:
    kind: str  # missing | bad_call | read_only | not_settable | bad_value
    owner: str  # class name, or "<module>"
    attr: str
    site: str  # file:line (function) in our code
    detail: str = ""
    fatal: bool = False
    scenarios: list[str] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.kind, self.owner, self.attr, self.site)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ApiMissing(AttributeError):
    def __init__(self, issue: Issue) -> None:
        super().__init__(f"[conformance] {issue.owner} has no attribute {issue.attr!r} ({issue.site})")
        self.issue = issue


class ApiTypeError(TypeError):
    def __init__(self, issue: Issue) -> None:
        super().__init__(f"[conformance] {issue.owner}.{issue.attr}: {issue.detail} ({issue.site})")
        self.issue = issue


def call_site() -> str:
    """The innermost frame of the project's own code (not tests/, not the standard library)."""
    f = sys._getframe(1)
    fallback = None
    while f is not None:
        path = Path(f.f_code.co_filename)
        try:
            rel = path.resolve().relative_to(REPO)
        except ValueError:
            rel = None
        if rel is not None and rel.parts[0] not in ("tests", ".venv", "third_party"):
            return f"{rel}:{f.f_lineno} ({f.f_code.co_name})"
        if fallback is None and rel is not None and path.resolve().parent != _THIS_DIR:
            fallback = f"{rel}:{f.f_lineno} ({f.f_code.co_name})"
        f = f.f_back
    return fallback or "?"


class Recorder:
    def __init__(self) -> None:
        self.issues: dict[tuple, Issue] = {}
        self.forgiven: set[tuple] = set()
        self.touched: dict[tuple[str, str], set[str]] = {}  # (owner, attr) -> {"get", "set", "call"}
        self.scenario = ""
        self.sim: Any = None

    def touch(self, owner: str, attr: str, how: str) -> None:
        self.touched.setdefault((owner, attr), set()).add(how)

    def report(self, kind: str, owner: str, attr: str, detail: str = "") -> tuple[Issue, bool]:
        """Record an issue; returns (issue, forgiven): a forgiven site gets a stand-in instead of an exception."""
        issue = Issue(kind, owner, attr, call_site(), detail)
        issue = self.issues.setdefault(issue.key, issue)
        if self.scenario and self.scenario not in issue.scenarios:
            issue.scenarios.append(self.scenario)
        return issue, issue.key in self.forgiven


class Absorb:
    """Stands in for what a missing attribute or rejected call would have given (already reported)."""

    def __init__(self, what: str) -> None:
        object.__setattr__(self, "_what", what)

    def __getattr__(self, name: str) -> "Absorb":
        return self

    def __setattr__(self, name: str, value: Any) -> None:
        pass

    def __call__(self, *a: Any, **k: Any) -> "Absorb":
        return self

    def __bool__(self) -> bool:
        return True

    def __int__(self) -> int:
        return 0

    __index__ = __int__

    def __iter__(self):
        return iter(())

    def __bytes__(self) -> bytes:
        return b""

    def __repr__(self) -> str:
        return f"<absorbed {self._what}>"


# ----------------------------------------------------------------------------------------------- the module's types


class Api:
    """The real module's classes and annotations."""

    def __init__(self, real: types.ModuleType) -> None:
        self.real = real
        self.prefix = real.Builder.__module__  # e.g. tensorrt_bindings.tensorrt / tensorrt_rtx_bindings.tensorrt_rtx
        self._sigs: dict[int, list[Signature]] = {}

    def signatures(self, obj: Any) -> list[Signature]:
        key = id(obj)
        if key not in self._sigs:
            self._sigs[key] = parse_signatures(getattr(obj, "__doc__", None))
        return self._sigs[key]

    def resolve(self, annotation: str) -> Any:
        """The real class an annotation names (nested ones too: tensorrt.ILogger.Severity), or None."""
        ann = annotation.strip()
        for pre in (self.prefix + ".", self.real.__name__ + "."):
            if ann.startswith(pre):
                obj: Any = self.real
                for part in ann[len(pre) :].split("."):
                    obj = getattr(obj, part, None)
                    if obj is None:
                        return None
                return obj if isinstance(obj, type) else None
        return None

    @staticmethod
    def lookup(cls: type, name: str) -> Any:
        for k in cls.__mro__:
            if name in k.__dict__:
                return k.__dict__[name]
        return MISSING

    @staticmethod
    def is_enum(cls: type) -> bool:
        return hasattr(cls, "__members__") and isinstance(getattr(cls, "__members__", None), dict)

    def is_dims(self, cls: type) -> bool:
        dims = getattr(self.real, "Dims", None)
        return dims is not None and isinstance(cls, type) and issubclass(cls, dims)

    def accepts(self, annotation: str, value: Any) -> bool | None:
        """Would pybind11 accept `value` for this annotation? None: an annotation this checker does not judge."""
        ann = annotation.strip()
        if isinstance(value, Absorb) or not ann:
            return True
        for opt in (r"^(?:typing\.)?Optional\[(.*)\]$",):
            m = re.match(opt, ann)
            if m:
                return value is None or self.accepts(m.group(1), value) is not False
        if " | " in ann or ann.startswith(("typing.Union[", "Union[")):
            inner = ann[ann.index("[") + 1 : -1] if ann.endswith("]") and "Union[" in ann else ann
            parts = _split_top(inner, "|") if " | " in ann else _split_top(inner)
            verdicts = [self.accepts(p, value) for p in parts]
            return True if any(v is not False for v in verdicts) else False
        if ann == "None":
            return value is None
        if ann in _INT_NAMES:
            if isinstance(value, (float, str, bytes, np.floating)) or isinstance(value, InstanceProxy):
                return False
            return isinstance(value, (int, np.integer)) or hasattr(value, "__index__") or hasattr(value, "__int__")
        if ann in ("float", "typing.SupportsFloat"):
            return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
        if ann == "bool":
            return isinstance(value, (bool, int, np.bool_, np.integer))
        if ann == "str":
            return isinstance(value, (str, bytes))
        if ann == "buffer":
            if isinstance(value, InstanceProxy):
                return value._p_cls.__name__ == "IHostMemory"
            return isinstance(value, (bytes, bytearray, memoryview, np.ndarray))
        if ann == "tuple":
            return isinstance(value, tuple)
        if ann == "list":
            return isinstance(value, list)
        if re.match(r"^(?:typing\.)?(?:List|Sequence|collections\.abc\.Sequence)\[", ann):
            return isinstance(value, (list, tuple))
        if ann == "numpy.ndarray":
            return isinstance(value, np.ndarray)
        cls = self.resolve(ann)
        if cls is None:
            return None
        if value is None:
            return not self.is_enum(cls)  # pybind11 passes None as a null pointer for class arguments
        if isinstance(value, InstanceProxy):
            return issubclass(value._p_cls, cls)
        if isinstance(value, ClassProxy):
            return False
        if isinstance(value, cls):
            return True
        if self.is_dims(cls):  # TensorRT registers implicit conversions from sequences of ints to Dims
            return isinstance(value, (tuple, list)) and all(isinstance(v, (int, np.integer)) for v in value)
        if cls.__name__ == "Weights":
            return isinstance(value, np.ndarray)
        return False

    def default(self, annotation: str, rec: Recorder) -> Any:
        """A value of the annotated return type for calls the simulation does not model."""
        ann = annotation.strip()
        if ann == "None":
            return None
        if ann == "bool":
            return True
        if ann in _INT_NAMES:
            return 0
        if ann == "float":
            return 0.0
        if ann == "str":
            return ""
        if re.match(r"^(?:typing\.)?(?:List|Sequence)\[", ann):
            return []
        cls = self.resolve(ann)
        if cls is None:
            return Absorb(ann)
        if self.is_enum(cls):
            return next(iter(cls.__members__.values()))
        if self.is_dims(cls):
            return cls(())
        return InstanceProxy(self, rec, cls, {})


def describe(value: Any) -> str:
    if isinstance(value, InstanceProxy):
        return value._p_cls.__name__
    if isinstance(value, ClassProxy):
        return f"class {value._p_cls.__name__}"
    return type(value).__name__ + (
        f" {value!r}" if isinstance(value, (int, str, tuple)) and len(repr(value)) < 40 else ""
    )


# ----------------------------------------------------------------------------------------------- proxies

Handler = Callable[..., Any]


class Sim:
    """Base of a simulation: handlers[(class name, attr)] -> fn(obj, *args, **kwargs); see sim.py."""

    handlers: dict[tuple[str, str], Handler] = {}

    def handler(self, cls: type, attr: str) -> Handler | None:
        for k in cls.__mro__:
            fn = self.handlers.get((k.__name__, attr))
            if fn is not None:
                return fn.__get__(self)
        return None


def _bind(api: Api, sig: Signature, args: tuple, kwargs: dict, skip_self: bool) -> str | None:
    """None when the call binds to the signature, else why not."""
    params = list(sig.params[1:] if skip_self else sig.params)
    pos = [p for p in params if p.kind == "pos"]
    varargs = any(p.kind == "varargs" for p in params)
    varkw = any(p.kind == "varkw" for p in params)
    if len(args) > len(pos) and not varargs:
        return f"takes {len(pos)} positional argument(s), got {len(args)}"
    bound = dict(zip((p.name for p in pos), args))
    for k, v in kwargs.items():
        p = next((q for q in pos if q.name == k), None)
        if p is None or p.positional_only:
            if varkw:
                continue
            return f"no keyword argument {k!r} (parameters: {[q.name for q in pos]})"
        if k in bound:
            return f"argument {k!r} given twice"
        bound[k] = v
    missing = [p.name for p in pos if p.name not in bound and not p.has_default]
    if missing:
        return f"missing argument(s) {missing}"
    for p in pos:
        if p.name in bound and api.accepts(p.annotation, bound[p.name]) is False:
            return f"argument {p.name!r}: expected {p.annotation}, got {describe(bound[p.name])}"
    return None


def checked_call(
    api: Api,
    rec: Recorder,
    owner: str,
    attr: str,
    sigs: list[Signature],
    args: tuple,
    kwargs: dict,
    skip_self: bool,
    handler: Handler | None,
    receiver: Any,
) -> Any:
    rec.touch(owner, attr, "call")
    if not sigs:  # no signature in the docstring: nothing to check against
        return handler(receiver, *args, **kwargs) if handler else Absorb(f"{owner}.{attr}()")
    errors = []
    for sig in sigs:
        why = _bind(api, sig, args, kwargs, skip_self)
        if why is None:
            break
        errors.append(why)
    else:
        detail = "; ".join(f"{e} [{s.text}]" for e, s in zip(errors, sigs))
        issue, forgiven = rec.report("bad_call", owner, attr, detail)
        if not forgiven:
            raise ApiTypeError(issue)
        if handler is not None:  # carry on as if the call had been right, so later checks still run
            try:
                return handler(receiver, *args, **kwargs)
            except Exception:  # noqa: BLE001 - the handler could not make sense of the bad call either
                pass
        return api.default(sigs[0].returns, rec)
    if handler is None:
        return api.default(sig.returns, rec)
    value = handler(receiver, *args, **kwargs)
    if api.accepts(sig.returns, value) is False:
        raise AssertionError(
            f"harness bug: the simulation of {owner}.{attr} returned {describe(value)}, the real "
            f"binding returns {sig.returns}"
        )
    return value


class InstanceProxy:
    """An object of a real pybind11 class, as our code sees it; `_p_state` holds what the simulation keeps."""

    def __init__(self, api: Api, rec: Recorder, cls: type, state: dict[str, Any]) -> None:
        object.__setattr__(self, "_p_api", api)
        object.__setattr__(self, "_p_rec", rec)
        object.__setattr__(self, "_p_cls", cls)
        object.__setattr__(self, "_p_state", state)

    def __getattr__(self, name: str) -> Any:
        api, rec, cls = self._p_api, self._p_rec, self._p_cls
        desc = api.lookup(cls, name)
        sim = rec.sim
        if desc is MISSING:
            issue, forgiven = rec.report("missing", cls.__name__, name)
            if not forgiven:
                raise ApiMissing(issue)
            return Absorb(f"{cls.__name__}.{name}")
        if isinstance(desc, property):
            rec.touch(cls.__name__, name, "get")
            sigs = api.signatures(desc.fget)
            ret = sigs[0].returns if sigs else ""
            fn = sim.handler(cls, name)
            if fn is not None:
                value = fn(self)
            elif name in self._p_state:
                value = self._p_state[name]
            else:
                value = api.default(ret, rec)
            if ret and api.accepts(ret, value) is False:
                raise AssertionError(
                    f"harness bug: simulated {cls.__name__}.{name} is {describe(value)}, the real property is {ret}"
                )
            return value
        if callable(desc) and not isinstance(desc, type):
            sigs = api.signatures(desc)
            fn = sim.handler(cls, name)
            return lambda *a, **k: checked_call(api, rec, cls.__name__, name, sigs, a, k, True, fn, self)
        rec.touch(cls.__name__, name, "get")
        value = getattr(cls, name)
        return ClassProxy(api, rec, value) if isinstance(value, type) else value

    def __setattr__(self, name: str, value: Any) -> None:
        api, rec, cls = self._p_api, self._p_rec, self._p_cls
        rec.touch(cls.__name__, name, "set")
        desc = api.lookup(cls, name)
        problem = None
        if desc is MISSING:
            problem = ("missing", "")
        elif not isinstance(desc, property):
            problem = ("not_settable", f"{type(desc).__name__}, not a property")
        elif desc.fset is None:
            problem = ("read_only", "read-only property")
        else:
            sigs = api.signatures(desc.fset)
            if sigs and len(sigs[0].params) == 2 and api.accepts(sigs[0].params[1].annotation, value) is False:
                problem = ("bad_value", f"expected {sigs[0].params[1].annotation}, got {describe(value)}")
        if problem:
            issue, forgiven = rec.report(problem[0], cls.__name__, name, problem[1])
            if not forgiven:
                raise (ApiMissing(issue) if problem[0] in ("missing", "read_only") else ApiTypeError(issue))
            return
        self._p_state[name] = value
        fn = rec.sim.handler(cls, "set:" + name)
        if fn is not None:
            fn(self, value)

    def __bytes__(self) -> bytes:
        fn = self._p_rec.sim.handler(self._p_cls, "__bytes__")
        if fn is None:
            raise TypeError(f"cannot convert {self._p_cls.__name__} to bytes")
        return fn(self)

    def __repr__(self) -> str:
        return f"<proxy {self._p_cls.__name__}>"


class ClassProxy:
    """A real pybind11 class (or enum) seen through the proxy: constructing it checks `__init__`'s signature."""

    def __init__(self, api: Api, rec: Recorder, cls: type) -> None:
        self._p_api, self._p_rec, self._p_cls = api, rec, cls
        self.__name__ = cls.__name__

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        api, rec, cls = self._p_api, self._p_rec, self._p_cls
        if api.is_dims(cls):  # a value type: the real constructor runs no library code
            return cls(*args, **kwargs)
        obj = InstanceProxy(api, rec, cls, {})
        init = api.lookup(cls, "__init__")
        fn = rec.sim.handler(cls, "__init__")
        checked_call(
            api,
            rec,
            cls.__name__,
            "__init__",
            api.signatures(init),
            args,
            kwargs,
            True,
            fn or (lambda _o, *a, **k: None),
            obj,
        )
        return obj

    def __getattr__(self, name: str) -> Any:
        api, rec, cls = self._p_api, self._p_rec, self._p_cls
        if name.startswith("__") and name.endswith("__") and name not in ("__members__",):
            return getattr(cls, name)
        if not hasattr(cls, name):
            issue, forgiven = rec.report("missing", cls.__name__, name)
            if not forgiven:
                raise ApiMissing(issue)
            return Absorb(f"{cls.__name__}.{name}")
        rec.touch(cls.__name__, name, "get")
        value = getattr(cls, name)
        return ClassProxy(api, rec, value) if isinstance(value, type) else value

    def __repr__(self) -> str:
        return f"<proxy class {self._p_cls.__name__}>"


class ModuleProxy(types.ModuleType):
    """The fake `tensorrt` / `tensorrt_rtx` module our code imports in the driver subprocess."""

    def __init__(self, real: types.ModuleType, name: str, sim: Sim) -> None:
        super().__init__(name)
        self._p_api = Api(real)
        self._p_rec = Recorder()
        self._p_rec.sim = sim
        self._p_classes: dict[str, ClassProxy] = {}

    def __getattr__(self, name: str) -> Any:
        api, rec = self._p_api, self._p_rec
        if name.startswith("_p_"):
            raise AttributeError(name)
        real = api.real
        if not hasattr(real, name):
            issue, forgiven = rec.report("missing", "<module>", name)
            if not forgiven:
                raise ApiMissing(issue)
            return Absorb(name)
        rec.touch("<module>", name, "get")
        value = getattr(real, name)
        if isinstance(value, type):
            return self._p_classes.setdefault(name, ClassProxy(api, rec, value))
        if inspect.isfunction(value):  # pure Python helpers of the package (nptype, ...): safe to run for real
            return value
        if callable(value) and type(value).__name__ == "builtin_function_or_method":
            sigs = api.signatures(value)
            return lambda *a, **k: checked_call(api, rec, "<module>", name, sigs, a, k, False, None, None)
        return value
