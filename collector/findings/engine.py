"""The rules engine: events in, findings (new occurrences) out.

Each event is matched against the rules that list its type in ``types``; it is
turned into its JSON dict and CEL variables once, whatever the number of such
rules. A rule fires when its condition holds, no exception holds and, for a
rule with state, its window says so. The occurrences of one call are merged by
finding id (rule + key), so 10 000 repeats become one finding with a count;
the store merges them with what it already holds.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections import Counter, OrderedDict
from collections.abc import Iterable, Iterator
from typing import Any

from collector.findings.cel import Context, EvalError
from collector.findings.eventdict import event_dict
from collector.findings.rules import Rule, RuleSet
from collector.findings.state import RuleState
from collector.storage.common import merge_finding
from gpuaudit.jsonform import to_dict
from gpuaudit.v1 import collector_pb2, events_pb2

log = logging.getLogger(__name__)

TRACKED_TYPES = frozenset({"gpu.open", "gpu.process", "process.exit"})
"""Events the GPU process tracker reads (``is_gpu_process``), whatever the rules."""

MAX_GPU_PROCESSES = 200_000
"""(node, pid) pairs the tracker remembers; beyond it the oldest is forgotten."""


def finding_id(rule: str, key: str) -> str:
    """The stable id of the finding of ``rule`` for ``key`` (same on every collector)."""
    return hashlib.sha256(f"{rule}\0{key}".encode()).hexdigest()[:32]


class GpuProcesses:
    """Which (node, pid) opened a GPU device or holds GPU memory, until it exits."""

    def __init__(self, limit: int = MAX_GPU_PROCESSES) -> None:
        """An empty tracker keeping at most ``limit`` processes."""
        self._seen: OrderedDict[tuple[str, int], None] = OrderedDict()
        self._limit = limit

    def __call__(self, node: str, pid: int) -> bool:
        """Whether process ``pid`` of ``node`` is a GPU process right now."""
        return (node, pid) in self._seen

    def observe(self, ev: events_pb2.Event) -> None:
        """Update from one event (gpu.open, gpu.process, process.exit; others ignored)."""
        if not ev.HasField("process"):
            return
        key = (ev.node, ev.process.pid)
        if ev.type == "process.exit" or (ev.type == "gpu.process" and ev.gpu_process.state in
                                         ("left", "accounted")):
            self._seen.pop(key, None)
        elif ev.type == "gpu.process" or (ev.type == "gpu.open" and ev.gpu_open.errno == 0):
            self._seen[key] = None
            self._seen.move_to_end(key)
            if len(self._seen) > self._limit:
                self._seen.popitem(last=False)


class Engine:
    """Evaluates a :class:`RuleSet` over events; keeps the rules' state and error counts."""

    def __init__(self, ruleset: RuleSet) -> None:
        """An engine for ``ruleset`` (its helpers are pointed at this engine's tracker)."""
        self.ruleset = ruleset
        self.gpu = GpuProcesses()
        ruleset.helpers.gpu_process = self.gpu
        self._by_type: dict[str, list[Rule]] = {}
        for rule in ruleset.rules:
            for t in rule.types:
                self._by_type.setdefault(t, []).append(rule)
        self._states = {r.id: RuleState(r.state) for r in ruleset.rules if r.state is not None}
        self.errors: Counter[str] = Counter()
        self.evaluated = 0

    def types(self) -> frozenset[str]:
        """Event types the engine needs to see (the rules' and the tracker's)."""
        return frozenset(self._by_type) | TRACKED_TYPES

    def evaluate(self, events: Iterable[events_pb2.Event]) -> list[collector_pb2.Finding]:
        """The findings ``events`` raise, merged by id, in the order first raised."""
        found: dict[str, collector_pb2.Finding] = {}
        for ev in events:
            for finding in self._event(ev):
                old = found.get(finding.id)
                merge_finding(old, finding)
                found[finding.id] = finding
            self.gpu.observe(ev)
        return list(found.values())

    def _event(self, ev: events_pb2.Event) -> Iterator[collector_pb2.Finding]:
        rules = self._by_type.get(ev.type)
        if not rules:
            return
        self.evaluated += 1
        ctx = self.ruleset.env.context(event_dict(ev))
        for rule in rules:
            try:
                finding = self._rule(rule, ev, ctx)
            except EvalError as err:
                self._error(rule, ev, err)
                continue
            if finding is not None:
                yield finding

    def _rule(self, rule: Rule, ev: events_pb2.Event,
              ctx: Context) -> collector_pb2.Finding | None:
        if not rule.condition.test(ctx) or any(e.test(ctx) for e in rule.exceptions):
            return None
        detail, group = "", ""
        state = self._states.get(rule.id)
        if state is not None:
            group = state.group(ctx)
            fired = state.observe(group, ev.time.ToNanoseconds(), ctx)
            if fired is None:
                return None
            detail = fired
        return build_finding(rule, ev, self._key(rule, ev, ctx, group),
                             self._summary(rule, ctx, detail))

    @staticmethod
    def _key(rule: Rule, ev: events_pb2.Event, ctx: Context, group: str) -> str:
        if rule.key:
            return "/".join(str(k.value(ctx)) for k in rule.key)
        if group:
            return group
        return f"{ev.node}/{ev.process.pid}" if ev.HasField("process") else ev.node

    @staticmethod
    def _summary(rule: Rule, ctx: Context, detail: str) -> str:
        text = rule.title
        if rule.summary is not None:
            with contextlib.suppress(EvalError):  # the title still says what happened
                text = str(rule.summary.value(ctx))
        return f"{text} ({detail})" if detail else text

    def _error(self, rule: Rule, ev: events_pb2.Event, err: EvalError) -> None:
        # Counted always, logged once per rule: a rule that fails on every
        # event must not flood the log (the count shows the scale).
        self.errors[rule.id] += 1
        if self.errors[rule.id] == 1:
            log.warning("rule %s failed on %s event %s/%s/%d: %s (further failures counted)",
                        rule.id, ev.type, ev.node, ev.boot_id, ev.seq, err)


def build_finding(rule: Rule, ev: events_pb2.Event, key: str,
                  summary: str) -> collector_pb2.Finding:
    """One occurrence of ``rule`` raised by ``ev`` (count 1)."""
    f = collector_pb2.Finding(
        id=finding_id(rule.id, key), rule=rule.id, title=rule.title, severity=rule.severity,
        mitre=rule.mitre, node=ev.node, summary=summary, count=1, key=key,
    )
    f.first_seen.CopyFrom(ev.time)
    f.last_seen.CopyFrom(ev.time)
    f.events.add(node=ev.node, boot_id=ev.boot_id, seq=ev.seq)
    if ev.HasField("process"):
        p = ev.process
        f.process.CopyFrom(collector_pb2.FindingProcess(
            pid=p.pid, uid=p.uid, user=p.user, exe=p.exe, comm=p.comm,
            container_id=p.container_id, pod=p.pod, slurm_job=p.slurm_job,
        ))
    return f


def finding_dict(finding: collector_pb2.Finding) -> dict[str, Any]:
    """The public JSON-ready dict of ``finding`` (docs/findings.md, "The finding JSON")."""
    return to_dict(finding)
