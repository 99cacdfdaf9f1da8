"""The content of a compliance report for one period, independent of its format.

Sections: GPU usage (sessions, and totals per user, GPU, container/pod and
Slurm job), the code loaded into GPU jobs (libraries and checkpoints with
hashes and scan verdicts), findings, and audit coverage (heartbeat gaps,
reported losses, refused batches, and the integrity check where one ran).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from collector.report.source import EventSource, events_between
from collector.report.usage import UNIDENTIFIED, USAGE_TYPES, Session, UsageModel
from gpuaudit.v1 import collector_pb2, events_pb2


@dataclass(frozen=True)
class Scope:
    """What the report covers."""

    since_ns: int
    until_ns: int
    nodes: tuple[str, ...] = ()  # empty: all
    user: str = ""  # "": all users


@dataclass
class Total:
    """Usage summed over the sessions of one user, GPU, container/pod or job."""

    key: str
    sessions: int = 0
    seconds: float = 0.0
    users: set[str] = field(default_factory=set)
    gpus: set[str] = field(default_factory=set)


@dataclass
class CodeItem:
    """One distinct file loaded into GPU processes (code.load) or a scanned checkpoint."""

    node: str
    path: str
    sha256: str
    detail: str  # code.load: kind (+ "writable by others"); checkpoint: verdict
    processes: int = 0
    users: set[str] = field(default_factory=set)
    first_ns: int = 0
    globals: tuple[str, ...] = ()  # checkpoint: offending imports


@dataclass
class Coverage:
    """One node's audit coverage over the period."""

    node: str
    last_heartbeat_ns: int
    silent_now: bool
    heartbeat_gaps: list[tuple[int, int]]  # (start, end ns); end 0 = not resumed
    losses: dict[str, int]  # agent.loss reason -> events lost in the period
    missing_events: int  # from agent.gap events in the period
    rejected_batches: int
    mode: str


@dataclass
class Report:
    scope: Scope
    generated_ns: int
    sessions: list[Session]
    per_user: list[Total]
    per_gpu: list[Total]
    per_workload: list[Total]  # container / pod
    per_job: list[Total]  # Slurm job
    libraries: list[CodeItem]
    checkpoints: list[CodeItem]
    findings: list[dict[str, Any]]
    coverage: list[Coverage]
    integrity: dict[str, Any] | None = None  # `gpuaudit verify` result, when given


FindingsSource = Callable[[Scope], Sequence[dict[str, Any]]]


def build_report(source: EventSource, scope: Scope, generated_ns: int,
                 findings: FindingsSource | None = None,
                 integrity: dict[str, Any] | None = None) -> Report:
    """Read the period's events from ``source`` and compute every section."""
    model = UsageModel(lambda node, pid, since: _first_exit(source, node, pid, since))
    model.feed(_read(source, scope, USAGE_TYPES))
    sessions = [s for s in model.sessions(scope.until_ns) if _in_scope(s.user, scope)]
    return Report(
        scope=scope,
        generated_ns=generated_ns,
        sessions=sessions,
        per_user=_totals(sessions, scope, lambda s: [s.user]),
        per_gpu=_totals(sessions, scope, lambda s: sorted(s.gpus) or [UNIDENTIFIED]),
        per_workload=_totals(sessions, scope, _workload),
        per_job=_totals(sessions, scope, lambda s: [s.slurm_job] if s.slurm_job else []),
        libraries=_libraries(_read(source, scope, ("code.load",)), scope),
        checkpoints=_checkpoints(_read(source, scope, ("checkpoint.scan",)), scope),
        findings=list(findings(scope)) if findings else [],
        coverage=_coverage(source, scope),
        integrity=integrity,
    )


def _read(source: EventSource, scope: Scope, types: Sequence[str]) -> list[events_pb2.Event]:
    return list(events_between(source, types, scope.since_ns, scope.until_ns, scope.nodes))


def _in_scope(user: str, scope: Scope) -> bool:
    return not scope.user or user == scope.user


def _first_exit(source: EventSource, node: str, pid: int, since_ns: int) -> int | None:
    q = collector_pb2.EventQuery(types=["process.exit"], nodes=[node], pid=pid, limit=1)
    q.since.FromNanoseconds(since_ns)
    found = source.query(q)
    return found[0].time.ToNanoseconds() if found else None


def _workload(s: Session) -> list[str]:
    if s.pod:
        return [f"pod {s.pod}"]
    return [f"container {s.container_id[:12]}"] if s.container_id else []


def _totals(sessions: Iterable[Session], scope: Scope,
            keys: Callable[[Session], list[str]]) -> list[Total]:
    totals: dict[str, Total] = {}
    for s in sessions:
        for key in keys(s):
            t = totals.setdefault(key, Total(key))
            t.sessions += 1
            t.seconds += s.seconds(scope.since_ns, scope.until_ns)
            t.users.add(s.user)
            t.gpus |= s.gpus or {UNIDENTIFIED}
    return sorted(totals.values(), key=lambda t: (-t.seconds, t.key))


def _libraries(events: Iterable[events_pb2.Event], scope: Scope) -> list[CodeItem]:
    items: dict[tuple[str, str, str], CodeItem] = {}
    pids: dict[tuple[str, str, str], set[int]] = defaultdict(set)
    for ev in events:
        user = ev.process.user or str(ev.process.uid)
        if not _in_scope(user, scope):
            continue
        c = ev.code_load
        key = (ev.node, c.path, c.sha256)
        detail = c.kind + (", writable by others" if c.writable_by_others else "")
        item = items.setdefault(key, CodeItem(ev.node, c.path, c.sha256, detail,
                                              first_ns=ev.time.ToNanoseconds()))
        pids[key].add(ev.process.pid)
        item.processes = len(pids[key])
        item.users.add(user)
    return sorted(items.values(), key=lambda i: (i.node, i.path))


def _checkpoints(events: Iterable[events_pb2.Event], scope: Scope) -> list[CodeItem]:
    items: dict[tuple[str, str, str], CodeItem] = {}
    for ev in events:
        user = ev.process.user or str(ev.process.uid)
        if not _in_scope(user, scope):
            continue
        c = ev.checkpoint_scan
        key = (ev.node, c.path, c.sha256)
        item = items.setdefault(key, CodeItem(ev.node, c.path, c.sha256, c.verdict,
                                              first_ns=ev.time.ToNanoseconds(),
                                              globals=tuple(c.globals)))
        item.processes += 1
        item.users.add(user)
    return sorted(items.values(), key=lambda i: (_VERDICT_ORDER.get(i.detail, 9), i.path))


_VERDICT_ORDER = {"malicious": 0, "suspicious": 1, "error": 2, "safe": 3}


def _coverage(source: EventSource, scope: Scope) -> list[Coverage]:
    status = source.status()
    silences = _read(source, scope, ("agent.silent",))
    losses = _read(source, scope, ("agent.loss", "agent.gap"))
    out = []
    for n in status.nodes:
        if scope.nodes and n.node not in scope.nodes:
            continue
        lost: dict[str, int] = defaultdict(int)
        missing = 0
        for ev in losses:
            if ev.node != n.node:
                continue
            if ev.type == "agent.loss":
                lost[ev.agent_loss.reason] += ev.agent_loss.count
            else:
                missing += ev.agent_gap.count
        gaps = [_gap(source, ev) for ev in silences if ev.node == n.node]
        out.append(Coverage(n.node, n.last_heartbeat.ToNanoseconds(), n.silent, gaps,
                            dict(lost), missing, n.rejected, n.mode))
    return out


def _gap(source: EventSource, silent: events_pb2.Event) -> tuple[int, int]:
    """(last heartbeat before the silence, first heartbeat after it, 0 if none yet)."""
    start = silent.agent_silent.last_seen.ToNanoseconds()
    q = collector_pb2.EventQuery(types=["agent.health"], nodes=[silent.node], limit=1)
    q.since.FromNanoseconds(silent.time.ToNanoseconds())
    resumed = source.query(q)
    return start, resumed[0].time.ToNanoseconds() if resumed else 0
