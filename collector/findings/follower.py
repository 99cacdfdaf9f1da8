"""The findings follower: reads newly stored events and runs the rules on them.

It sits beside ingest, not in it: agents' batches are stored and acknowledged
exactly as before, and the follower reads the store afterwards, in arrival
order, from a saved position (``Storage.events_after``). The findings an
evaluation raises and the new position are committed in one transaction
(``Storage.save_findings``), so after a crash or restart it resumes where the
last commit left it: no stored event is skipped, none counted twice. One
follower sees every node, so a rule can compare nodes (the NCCL straggler).

``on_event`` hooks get every stored event (the protobuf message, not to be
modified), in arrival order, after the step that read it: at least once (after a
crash, events read since the last saved position are handed over again). With
no ``on_event`` hook only the types the rules read are decoded.

Hooks (``on_finding``) get each finding as its public JSON dict after it is
committed: when first raised, then at most once per ``notify_every_s`` while
its count grows (the latest state). They run in the caller of :meth:`step`
(in the collector: the findings process, whose hook sends the dict to the
collector's relay) and must be quick; an exception in one is counted and
logged, not fatal.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from collector.findings.engine import Engine, finding_dict
from collector.storage.base import Storage
from gpuaudit.v1 import collector_pb2, events_pb2

log = logging.getLogger(__name__)

CURSOR = "findings"
"""Name of the follower's saved position in the store."""

FindingHook = Callable[[dict[str, Any]], None]
EventHook = Callable[[events_pb2.Event], None]

_MAX_NOTIFIED = 100_000  # findings whose last notification time is remembered


class FindingsFollower:
    """Follows the store from its saved position and evaluates the rules, step by step."""

    def __init__(
        self,
        storage: Storage,
        engine: Engine,
        *,
        batch: int = 2000,
        save_every_s: float = 5.0,
        notify_every_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Follow ``storage`` with ``engine``, reading about ``batch`` events per step.

        With no finding to commit, a step still saves the position every
        ``save_every_s``. The loop that calls :meth:`moves` is
        :mod:`collector.findings.process`'s.
        """
        self.storage = storage
        self.engine = engine
        self.on_finding: list[FindingHook] = []
        self.on_event: list[EventHook] = []
        self.position = storage.cursor(CURSOR)
        self.events_read = 0
        self.hook_errors = 0
        self._batch = batch
        self._save_every_s, self._notify_every_s = save_every_s, notify_every_s
        self._clock = clock
        self._saved_at = clock()
        self._saved_position = self.position
        self._notified: OrderedDict[str, float] = OrderedDict()
        self._pending: dict[str, collector_pb2.Finding] = {}

    def step(self) -> int:
        """Evaluate the next events and commit; the number of events evaluated."""
        types = None if self.on_event else self.engine.types()
        events, position = self.storage.events_after(self.position, self._batch, types)
        deltas = self.engine.evaluate(events)
        now = self._clock()
        due = now - self._saved_at >= self._save_every_s
        if deltas or (position != self._saved_position and due):
            merged = self.storage.save_findings(deltas, CURSOR, position)
            self._saved_at, self._saved_position = now, position
            self._notify(merged, now)
        self.position = position
        self.events_read += len(events)
        self._flush_pending(now)
        for event in events if self.on_event else ():
            self._call_event_hooks(event)
        return len(events)

    def caught_up(self) -> bool:
        """Whether every event stored so far has been evaluated and its findings committed."""
        position = self.position
        _, after = self.storage.events_after(position, 1, frozenset())
        return after == position

    def drain(self) -> None:
        """Step until no stored event is left, then save the position (tests, shutdown)."""
        while self.moves():
            pass
        self.save_position()

    def moves(self) -> bool:
        """One :meth:`step`; whether it got past any stored event."""
        before = self.position
        self.step()
        return self.position != before

    def _notify(self, merged: Sequence[collector_pb2.Finding], now: float) -> None:
        for finding in merged:
            last = self._notified.get(finding.id)
            if last is None or now - last >= self._notify_every_s:
                self._call_hooks(finding, now)
            else:
                self._pending[finding.id] = finding  # the latest state, sent when due

    def _flush_pending(self, now: float) -> None:
        due = [f for i, f in self._pending.items()
               if now - self._notified.get(i, 0.0) >= self._notify_every_s]
        for finding in due:
            del self._pending[finding.id]
            self._call_hooks(finding, now)

    def _call_hooks(self, finding: collector_pb2.Finding, now: float) -> None:
        self._notified[finding.id] = now
        self._notified.move_to_end(finding.id)
        if len(self._notified) > _MAX_NOTIFIED:
            self._notified.popitem(last=False)
        if not self.on_finding:
            return
        data = finding_dict(finding)
        for hook in list(self.on_finding):
            try:
                hook(data)
            except Exception:  # a sink's bug must not stop the rules
                self.hook_errors += 1
                log.exception("finding hook %r failed (finding %s)", hook, finding.id)

    def _call_event_hooks(self, event: events_pb2.Event) -> None:
        for hook in list(self.on_event):
            try:
                hook(event)
            except Exception:  # a sink's bug must not stop the rules
                self.hook_errors += 1
                log.exception("event hook %r failed", hook)

    def save_position(self) -> None:
        """Save the position reached (steps without findings save it only now and then)."""
        if self.position != self._saved_position:
            self.storage.save_findings([], CURSOR, self.position)
            self._saved_position = self.position
