"""Rule state: what a rule remembers between events (docs/findings.md, "state").

A rule with ``state`` fires not on one matching event but on what the matching
events add up to within a time window, per group (``by``: per process, job,
node or NCCL communicator):

- ``count: N``: N matching events within the window;
- ``count: N`` with ``distinct: EXPR``: N different values of EXPR (e.g. users);
- ``outlier``: each member of the group (e.g. each rank of a communicator)
  reports a value (e.g. its mean gap between collectives); a member whose value
  is above ``factor`` times the median of its peers' latest values fires.

Windows run on event time. Count and distinct windows start over after they
fire, so a finding's count is the number of bursts. State is kept in memory,
bounded (:data:`MAX_GROUPS` groups per rule, least recently used dropped and
counted), and starts empty when the collector starts.
"""

from __future__ import annotations

import re
import statistics
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from collector.findings.cel import Context, EvalError, Program

MAX_GROUPS = 10_000
"""Groups one rule keeps state for; beyond it the least recently used is dropped."""

MAX_MEMBERS = 4096
"""Members (e.g. ranks) one outlier group keeps; beyond it the stalest is dropped."""

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_UNIT_NS = {"ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9, "d": 86400 * 10**9}


def parse_duration(text: Any) -> int:
    """``"90s"``, ``"10m"``, ``"1h"``, ``"500ms"``, ``"1d"`` in ns; ValueError otherwise."""
    m = _DURATION.match(str(text).strip())
    if not m or float(m[1]) <= 0:
        raise ValueError(f"window {text!r} is not a duration like 90s, 10m, 1h")
    return int(float(m[1]) * _UNIT_NS[m[2]])


@dataclass(frozen=True)
class Outlier:
    """The straggler comparison: a member far above its peers."""

    member: Program        # who, within the group (e.g. node/pid of a rank)
    value: Program         # its number (double)
    factor: float          # fires when value > factor * median(peers)
    min_peers: int         # peers with a value needed to compare
    min_value: float       # and value is at least this (ignores noise near zero)


@dataclass(frozen=True)
class StateSpec:
    """A rule's ``state`` section, compiled."""

    by: tuple[Program, ...]
    within_ns: int
    count: int
    distinct: Program | None
    outlier: Outlier | None


_STATE_KEYS = {"by", "within", "count", "distinct", "outlier"}
_OUTLIER_KEYS = {"member", "value", "factor", "min_peers", "min_value"}
Compile = Callable[[str, str], Program]


def parse_state(raw: Any, compile_expr: Compile) -> StateSpec | None:
    """The ``state`` mapping of a rule as a StateSpec (None when absent); ValueError if wrong."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ValueError("state must be a mapping (by, within, count, distinct, outlier)")
    unknown = set(raw) - _STATE_KEYS
    if unknown:
        raise ValueError(f"unknown state key {sorted(unknown)[0]!r} "
                         f"(known: {', '.join(sorted(_STATE_KEYS))})")
    if "within" not in raw:
        raise ValueError("state needs 'within' (a window such as 10m)")
    by = raw.get("by", [])
    if not isinstance(by, list) or not by:
        raise ValueError("state needs 'by': a list of expressions naming the group")
    outlier = _outlier(raw["outlier"], compile_expr) if "outlier" in raw else None
    count = raw.get("count", 1 if outlier else None)
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ValueError("state needs 'count': an integer >= 1 (unless it is an outlier)")
    return StateSpec(
        by=tuple(compile_expr(b, "any") for b in by),
        within_ns=parse_duration(raw["within"]),
        count=count,
        distinct=compile_expr(raw["distinct"], "any") if "distinct" in raw else None,
        outlier=outlier,
    )


def _outlier(raw: Any, compile_expr: Compile) -> Outlier:
    if not isinstance(raw, dict) or not {"member", "value"} <= set(raw):
        raise ValueError("outlier needs 'member' and 'value' expressions")
    unknown = set(raw) - _OUTLIER_KEYS
    if unknown:
        raise ValueError(f"unknown outlier key {sorted(unknown)[0]!r}")
    factor, peers, floor = raw.get("factor", 3.0), raw.get("min_peers", 2), raw.get("min_value", 0)
    if not isinstance(factor, int | float) or factor <= 1:
        raise ValueError("outlier factor must be a number above 1")
    if not isinstance(peers, int) or peers < 1:
        raise ValueError("outlier min_peers must be an integer >= 1")
    return Outlier(compile_expr(raw["member"], "any"), compile_expr(raw["value"], "double"),
                   float(factor), peers, float(floor))


class RuleState:
    """The windows of one stateful rule, per group; fed the events its condition matched."""

    def __init__(self, spec: StateSpec, max_groups: int = MAX_GROUPS) -> None:
        """Empty state for ``spec``; at most ``max_groups`` groups are kept."""
        self.spec = spec
        self.max_groups = max_groups
        self.evicted = 0
        self._groups: OrderedDict[str, Any] = OrderedDict()

    def group(self, ctx: Context) -> str:
        """The group ``ctx``'s event belongs to (``by`` values joined with '/')."""
        return "/".join(str(p.value(ctx)) for p in self.spec.by)

    def observe(self, group: str, t_ns: int, ctx: Context) -> str | None:
        """Add one matching event; a description of what fired, or None. Raises EvalError."""
        spec = self.spec
        if spec.outlier is not None:
            return self._outlier(group, t_ns, ctx, spec.outlier)
        if spec.distinct is not None:
            return self._distinct(group, t_ns, str(spec.distinct.value(ctx)))
        return self._count(group, t_ns)

    def _slot(self, group: str, make: Callable[[], Any]) -> Any:
        slot = self._groups.get(group)
        if slot is None:
            slot = self._groups[group] = make()
            if len(self._groups) > self.max_groups:
                self._groups.popitem(last=False)
                self.evicted += 1
        else:
            self._groups.move_to_end(group)
        return slot

    def _count(self, group: str, t_ns: int) -> str | None:
        times: deque[int] = self._slot(group, lambda: deque(maxlen=self.spec.count))
        times.append(t_ns)
        while times and t_ns - times[0] > self.spec.within_ns:
            times.popleft()
        if len(times) < self.spec.count:
            return None
        span = (max(times) - min(times)) / 1e9
        times.clear()
        return f"{self.spec.count} times within {span:.1f}s"

    def _distinct(self, group: str, t_ns: int, value: str) -> str | None:
        seen: dict[str, int] = self._slot(group, dict)
        for old in [v for v, t in seen.items() if t_ns - t > self.spec.within_ns]:
            del seen[old]
        seen[value] = t_ns
        if len(seen) < self.spec.count:
            return None
        values = sorted(seen)
        seen.clear()
        return f"{len(values)} distinct: {', '.join(values[:8])}"

    def _outlier(self, group: str, t_ns: int, ctx: Context, spec: Outlier) -> str | None:
        members: OrderedDict[str, tuple[int, float]] = self._slot(group, OrderedDict)
        member, value = str(spec.member.value(ctx)), float(spec.value.value(ctx))
        for old in [m for m, (t, _) in members.items() if t_ns - t > self.spec.within_ns]:
            del members[old]
        members[member] = (t_ns, value)
        members.move_to_end(member)
        if len(members) > MAX_MEMBERS:
            members.popitem(last=False)
        peers = [v for m, (_, v) in members.items() if m != member]
        if len(peers) < spec.min_peers or value < spec.min_value:
            return None
        median = statistics.median(peers)
        if value <= spec.factor * median:
            return None
        return f"{member}: {value:.3g} vs median {median:.3g} of {len(peers)} peers"


__all__ = ["EvalError", "Outlier", "RuleState", "StateSpec", "parse_duration", "parse_state"]
