"""A bounded hand-off queue that drops and counts instead of blocking.

The ring-buffer poll thread must never block (the kernel would start losing
records), so when the processor falls behind we drop here and count it; the
count travels to the collector in agent.health (queue_dropped).
"""

from __future__ import annotations

import queue
import threading
from typing import Generic, TypeVar

T = TypeVar("T")


class DroppingQueue(Generic[T]):
    def __init__(self, maxsize: int) -> None:
        self._q: queue.Queue[T] = queue.Queue(maxsize)
        self._lock = threading.Lock()
        self.dropped = 0

    def offer(self, item: T) -> bool:
        """Enqueue without blocking; False (and counted) when full."""
        try:
            self._q.put_nowait(item)
            return True
        except queue.Full:
            with self._lock:
                self.dropped += 1
            return False

    def put(self, item: T, timeout: float) -> bool:
        """Enqueue, waiting up to ``timeout``: for rare must-deliver items (health)."""
        try:
            self._q.put(item, timeout=timeout)
            return True
        except queue.Full:
            with self._lock:
                self.dropped += 1
            return False

    def get(self, timeout: float) -> T | None:
        try:
            return self._q.get(timeout=timeout)
        except queue.Empty:
            return None

    def qsize(self) -> int:
        return self._q.qsize()
