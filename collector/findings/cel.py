"""The CEL environment rule conditions are written in (docs/findings.md).

CEL (the Common Expression Language, cel.dev) is what Kubernetes admission
policies, Envoy and Google Cloud IAM use for the same job: a small expression
language that cannot loop, call out or change anything, whose every expression
terminates, and which is type-checked when it is compiled. We use
``cel-expr-python``, the CEL project's own Python binding of its C++
implementation (cel-cpp): about 2 us per evaluation, where the pure-Python
``cel-python`` took 120-530 us (measured on this VM), which the collector
cannot afford per event.

Everything CEL-specific is in this module, so another CEL implementation is a
change here only. An event is seen as its public JSON form
(``gpuaudit.jsonform.to_dict``): each top-level field is a variable (``node``,
``process``, ``process_signal``, ...), and the whole object is ``event``.
``type`` is CEL's own ``type()``: write ``event.type``, or rather list the
types in the rule's ``types``.
"""

from __future__ import annotations

import fnmatch
import ipaddress
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cel_expr_python import cel
from cel_expr_python.ext.ext_strings import ExtStrings
from google.protobuf.timestamp_pb2 import Timestamp

from gpuaudit.v1 import events_pb2

ENVELOPE = ("time", "node", "boot_id", "seq", "process")
"""Top-level fields of every event's JSON (``type`` excepted, see module doc)."""

PAYLOADS = tuple(f.name for f in events_pb2.Event.DESCRIPTOR.oneofs_by_name["payload"].fields)
"""The payload field names (``gpu_open``, ``process_signal``, ...): one is set per event."""

VARIABLES = (*ENVELOPE, *PAYLOADS, "event")


class CelError(ValueError):
    """A condition does not compile (syntax, unknown name or function, wrong type)."""


Context = Mapping[str, Any]


@dataclass
class Helpers:
    """The state the helper functions read: named lists and the GPU process tracker.

    ``lists`` are the rule files' allow-lists (name -> values); ``gpu_process``
    answers ``is_gpu_process(node, pid)`` (the engine's tracker).
    """

    lists: dict[str, frozenset[str]] = field(default_factory=dict)
    gpu_process: Callable[[str, int], bool] = lambda node, pid: False

    def in_list(self, name: str, value: Any) -> bool:
        """``value`` (as a string) is an entry of list ``name`` (glob patterns allowed)."""
        entries = self.lists.get(name, frozenset())
        text = str(value)
        if text in entries:
            return True
        return any(_is_glob(e) and fnmatch.fnmatchcase(text, e) for e in entries)

    def in_list_dirs(self, name: str, path: str) -> bool:
        """``path`` is one of, or under one of, the directories of list ``name``."""
        return in_dirs(path, sorted(self.lists.get(name, frozenset())))

    def list_set(self, name: str) -> bool:
        """List ``name`` has at least one entry (a policy the operator configured)."""
        return bool(self.lists.get(name))


def _is_glob(entry: str) -> bool:
    return any(c in entry for c in "*?[")


def in_dirs(path: str, dirs: Sequence[str]) -> bool:
    """``path`` equals or lies under one of ``dirs`` (by path components, not prefix)."""
    return any(path == d.rstrip("/") or path.startswith(d.rstrip("/") + "/") for d in dirs if d)


def basename(path: str) -> str:
    """The last path component of ``path``."""
    return path.rstrip("/").rsplit("/", 1)[-1]


def seconds_between(start: str, end: str) -> float:
    """Seconds from RFC 3339 time ``start`` to ``end`` (e.g. two event times)."""
    a, b = Timestamp(), Timestamp()
    a.FromJsonString(start)
    b.FromJsonString(end)
    return (b.ToNanoseconds() - a.ToNanoseconds()) / 1e9


def in_cidrs(addr: str, cidrs: Sequence[str]) -> bool:
    """IP address ``addr`` lies in one of the networks ``cidrs``; False when not an address."""
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(c, strict=False) for c in cidrs)


S, B, D, INT = cel.Type.STRING, cel.Type.BOOL, cel.Type.DOUBLE, cel.Type.INT
LIST_S = cel.Type.List(cel.Type.STRING)


def _functions(h: Helpers) -> list[Any]:
    """CEL declarations of the helpers (name, parameter types, result, implementation)."""
    table: list[tuple[str, list[Any], Any, Callable[..., Any]]] = [
        ("in_dirs", [S, LIST_S], B, lambda p, ds: in_dirs(p, list(ds))),
        ("in_list", [S, S], B, h.in_list),
        ("in_list_dirs", [S, S], B, h.in_list_dirs),
        ("list_set", [S], B, h.list_set),
        ("basename", [S], S, basename),
        ("seconds_between", [S, S], D, seconds_between),
        ("in_cidrs", [S, LIST_S], B, lambda a, cs: in_cidrs(a, list(cs))),
        ("in_list_cidrs", [S, S], B,
         lambda name, a: in_cidrs(a, sorted(h.lists.get(name, frozenset())))),
        ("is_gpu_process", [S, INT], B, lambda node, pid: h.gpu_process(node, int(pid))),
    ]
    return [
        cel.FunctionDecl(name, [cel.Overload(f"{name}_{len(params)}", return_type=result,
                                             parameters=params, impl=impl)])
        for name, params, result, impl in table
    ]


class Environment:
    """Compiles conditions against the event variables and the helpers."""

    def __init__(self, helpers: Helpers) -> None:
        """An environment whose helper functions read ``helpers``."""
        self.helpers = helpers
        # ExtStrings: join, split, lowerAscii, replace, ... (CEL's strings extension).
        self._env = cel.NewEnv(
            variables={name: cel.Type.DYN for name in VARIABLES}, functions=_functions(helpers),
            extensions=[ExtStrings()],
        )

    def compile(self, source: str, result: str = "bool") -> Program:
        """``source`` compiled; it must give a ``result`` ("bool", "string", "double", "any").

        Raises CelError with the compiler's message (it shows the position).
        """
        if not isinstance(source, str) or not source.strip():
            raise CelError("an expression must be a non-empty string")
        try:
            expr = self._env.compile(source)
        except RuntimeError as err:
            raise CelError(str(err).removeprefix("INVALID_ARGUMENT: ")) from None
        wanted = _RESULTS[result]
        got = expr.return_type()
        if wanted is not None and got != cel.Type.DYN and got != wanted:
            raise CelError(f"{source!r} gives {got.name()}, not {result}")
        return Program(source, expr, result)

    def context(self, event: dict[str, Any]) -> Context:
        """The variables of one event (its JSON dict), built once for all its rules."""
        data = {k: v for k, v in event.items() if k != "type"}
        data["event"] = event
        return self._env.Activation(data)


_RESULTS = {"bool": B, "string": S, "double": D, "any": None}


class EvalError(Exception):
    """An expression failed on one event (a missing field, a wrong type at run time)."""


@dataclass(frozen=True)
class Program:
    """One compiled expression."""

    source: str
    expr: Any
    result: str

    def value(self, ctx: Context) -> Any:
        """The expression's value on ``ctx``; EvalError when it fails."""
        out = self.expr.eval(ctx)
        if out.type() == cel.Type.ERROR:
            raise EvalError(str(out.value()))
        return out.value()

    def test(self, ctx: Context) -> bool:
        """A condition's verdict; a failed evaluation (e.g. a missing field) is False."""
        out = self.expr.eval(ctx)
        return out.type() == B and out.value() is True
