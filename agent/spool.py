"""The spool: events wait here, numbered, until the collector acknowledges them.

This is the in-memory spool: bounded, drop-oldest-and-count when full. The
shipper reads from it and trims it on acks; a reconnect resends everything
not yet acknowledged (the collector deduplicates on (node, boot_id, seq)).
"""

from __future__ import annotations

import itertools
import threading
from collections import deque

from gpuaudit.v1 import events_pb2


class MemorySpool:
    def __init__(self, max_events: int = 200_000) -> None:
        self._events: deque[events_pb2.Event] = deque()
        self._max = max_events
        self._cond = threading.Condition()
        self.dropped = 0
        self.acked_seq = 0

    def append(self, event: events_pb2.Event) -> None:
        with self._cond:
            if len(self._events) >= self._max:
                self._events.popleft()
                self.dropped += 1
            self._events.append(event)
            self._cond.notify_all()

    def read(self, after_seq: int, max_n: int, timeout: float) -> list[events_pb2.Event]:
        """Up to ``max_n`` events with seq > ``after_seq``, waiting up to ``timeout``."""
        with self._cond:
            if not self._has_after(after_seq):
                self._cond.wait(timeout)
            if not self._events:
                return []
            # seqs in the deque are contiguous (assigned in one thread, dropped
            # only from the head), so the position follows from the first seq.
            start = max(0, after_seq + 1 - self._events[0].seq)
            return list(itertools.islice(self._events, start, start + max_n))

    def _has_after(self, seq: int) -> bool:
        return bool(self._events) and self._events[-1].seq > seq

    def ack(self, seq: int) -> None:
        """The collector stored everything up to ``seq``: forget it."""
        with self._cond:
            self.acked_seq = max(self.acked_seq, seq)
            while self._events and self._events[0].seq <= self.acked_seq:
                self._events.popleft()
            self._cond.notify_all()

    def pending(self) -> int:
        with self._cond:
            return len(self._events)

    def wait_drained(self, timeout: float) -> bool:
        """Block until everything appended has been acknowledged (or timeout)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._events, timeout)
