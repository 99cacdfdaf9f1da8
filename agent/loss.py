"""agent.loss: every loss the agent knows of becomes an event of its own.

Two kinds of loss feed it:

* counters of records lost before they got a seq (kernel ring buffer full,
  user-space queue full, undecodable records): only the count is known;
* spool losses (full, disk error, damage, refused by the collector): the
  events had seqs, so the report names the boot_id and seq range.

Reports go out at most once per ``interval_s`` per reason, so a flood of
losses becomes a few events a second, not a second flood. ``count`` is the
increase since the previous report and ``total`` the running sum, so a report
that is itself lost (a full spool) is still covered by the next one's total.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from agent.record import Record
from agent.spoolrecovery import Loss
from gpuaudit.v1 import events_pb2

REPORT_INTERVAL_S = 1.0


class LossSource(Protocol):
    """The spool's side: losses with seq ranges, and running totals per reason."""

    lost: dict[str, int]

    def take_losses(self) -> list[Loss]: ...


class LossReporter:
    """Collects losses; :meth:`due` returns the agent.loss records to emit now."""

    def __init__(
        self,
        counters: dict[str, Callable[[], int]],
        spool: LossSource,
        interval_s: float = REPORT_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        now_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self._counters = counters
        self._spool = spool
        self._interval_s = interval_s
        self._clock = clock
        self._now_ns = now_ns
        self._reported = dict.fromkeys(counters, 0)
        self._last = clock()

    def due(self, force: bool = False) -> list[Record]:
        """agent.loss records for losses since the last report (if the interval passed)."""
        now = self._clock()
        if not force and now - self._last < self._interval_s:
            return []
        self._last = now
        return [*self._counter_losses(), *self._spool_losses()]

    def _counter_losses(self) -> list[Record]:
        records = []
        for reason, read in self._counters.items():
            total = read()
            if total > self._reported[reason]:
                loss = Loss(reason, total - self._reported[reason], "", 0, 0)
                records.append(self._record(loss, total))
                self._reported[reason] = total
        return records

    def _spool_losses(self) -> list[Record]:
        merged: list[Loss] = []
        for loss in self._spool.take_losses():
            if merged and _adjacent(merged[-1], loss):
                merged[-1] = _merge(merged[-1], loss)
            else:
                merged.append(loss)
        return [self._record(loss, self._spool.lost.get(loss.reason, loss.count))
                for loss in merged]

    def _record(self, loss: Loss, total: int) -> Record:
        payload = events_pb2.AgentLoss(
            reason=loss.reason, count=loss.count, total=total,
            lost_boot_id=loss.lost_boot_id, first_seq=loss.first_seq, last_seq=loss.last_seq,
        )
        return Record(type="agent.loss", wall_ns=self._now_ns(), payload=payload)


def _adjacent(a: Loss, b: Loss) -> bool:
    """Same reason and run, and b's seqs continue a's: one report can say both."""
    return (a.reason, a.lost_boot_id) == (b.reason, b.lost_boot_id) and (
        (a.last_seq == 0 and b.first_seq == 0) or b.first_seq == a.last_seq + 1)


def _merge(a: Loss, b: Loss) -> Loss:
    return Loss(a.reason, a.count + b.count, a.lost_boot_id,
                a.first_seq or b.first_seq, max(a.last_seq, b.last_seq))
