"""Turns the kernel's cumulative collective counters into nccl.collective
reports: what happened since the previous read, exactly.

The kernel only ever adds to an entry of nccl_coll (struct nccl_coll_val),
so the difference between two reads counts every call made between them,
whenever the reads happen; nothing is reset, so nothing can be lost between a
read and a reset. The first call of a report is taken from the key's mark
(struct nccl_mark), which the flusher re-arms after each report.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from agent.nccl.types import HIST_BUCKETS

CollKey = tuple[int, int, int, int]
"""(tgid, op, datatype, comm handle): one nccl_coll entry."""


@dataclass(frozen=True)
class Counters:
    """One read of an nccl_coll entry (cumulative)."""

    calls: int
    elems: int
    first_ns: int
    last_ns: int
    hist: tuple[int, ...]


@dataclass(frozen=True)
class Mark:
    """One read of the key's nccl_marks entry."""

    calls: int
    first_ns: int
    first_call: int


@dataclass(frozen=True)
class Delta:
    """What one key did between two reads: one nccl.collective."""

    key: CollKey
    calls: int
    elems: int
    first_ns: int  # boot-time ns
    last_ns: int
    hist: tuple[int, ...]  # trailing zeros removed
    exact_first: bool  # False: first_ns is a lower bound (see Ledger.delta)


def trim(hist: Iterable[int]) -> tuple[int, ...]:
    """The histogram without its trailing empty buckets."""
    out = list(hist)
    while out and out[-1] == 0:
        out.pop()
    return tuple(out)


@dataclass
class _Seen:
    counters: Counters
    read_ns: int  # boot time just before that read


@dataclass
class Ledger:
    """The last read of every key, and the deltas since."""

    seen: dict[CollKey, _Seen] = field(default_factory=dict)

    def delta(self, key: CollKey, now: Counters, mark: Mark | None, read_ns: int) -> Delta | None:
        """The report for ``key`` given a fresh read, or None if it made no call.

        ``read_ns`` is the boot time taken just before reading the entry. The
        first call is exact when the kernel stamped call number prev+1 on the
        mark; a call that came between the previous read and the mark's
        re-arming (microseconds) cannot be stamped, and the previous read's
        time, a lower bound, stands in for it.
        """
        before = self.seen.get(key)
        self.seen[key] = _Seen(now, read_ns)
        if before is None:
            return self._make(key, now, None, now.first_ns, True)
        prev = before.counters
        if now.calls < prev.calls:
            # the entry was deleted and re-created (its process exited and
            # the pid came back): everything in it is new
            return self._make(key, now, None, now.first_ns, True)
        if now.calls == prev.calls:
            return None
        if mark is not None and mark.first_ns and mark.first_call == prev.calls + 1:
            return self._make(key, now, prev, mark.first_ns, True)
        return self._make(key, now, prev, before.read_ns, False)

    @staticmethod
    def _make(key: CollKey, now: Counters, prev: Counters | None, first_ns: int,
              exact: bool) -> Delta | None:
        if prev is None:
            if now.calls == 0:
                return None
            return Delta(key, now.calls, now.elems, first_ns, now.last_ns, trim(now.hist), exact)
        hist = trim(a - b for a, b in zip(now.hist, prev.hist, strict=True))
        return Delta(key, now.calls - prev.calls, now.elems - prev.elems, first_ns,
                     now.last_ns, hist, exact)

    def forget(self, tgid: int) -> None:
        """Drop the state of an exited process (after its final report)."""
        for key in [k for k in self.seen if k[0] == tgid]:
            del self.seen[key]


def zero_hist() -> tuple[int, ...]:
    return (0,) * HIST_BUCKETS
