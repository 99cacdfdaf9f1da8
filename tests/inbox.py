"""A sensor runtime's inbox for tests: keeps what it is offered (agent.queue.DroppingQueue
is the real one; a test wants to look at the records instead)."""

from __future__ import annotations

import threading
from typing import Any


class ListInbox:
    """Accepts every item (never full) into ``items``; safe to offer from worker threads."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self._lock = threading.Lock()

    def offer(self, item: Any) -> bool:
        with self._lock:
            self.items.append(item)
        return True

    def take(self, type_: str) -> list[Any]:
        """Remove and return the records of ``type_`` offered so far."""
        with self._lock:
            mine = [r for r in self.items if r.type == type_]
            self.items = [r for r in self.items if r.type != type_]
        return mine
