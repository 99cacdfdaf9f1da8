"""Retention by age: prune the oldest batches, then sign a checkpoint at the cut.

Runs in the collector as one thread: every ``every_s`` seconds it removes, in
transactions of at most PRUNE_BATCH manifests, every batch the store received
more than ``days`` days ago (collector.storage.retention says how that keeps
``gpuaudit verify`` meaningful), then writes a signed checkpoint that lists
the new chain bases and the cut.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Protocol

from collector.integrity.checkpoint import CheckpointWriter
from collector.storage.base import StorageError
from collector.storage.retention import PRUNE_BATCH, Pruned

log = logging.getLogger(__name__)

DAY_NS = 86_400 * 10**9


class Prunable(Protocol):
    def prune(self, cut_ns: int, limit: int = PRUNE_BATCH) -> Pruned: ...


class Retention:
    """Prunes ``store`` to ``days`` of history and checkpoints the cut."""

    def __init__(self, store: Prunable, checkpoints: CheckpointWriter, days: float,
                 every_s: float, clock: Callable[[], int]) -> None:
        self._store, self._checkpoints = store, checkpoints
        self._days, self._every_s, self._clock = days, every_s, clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="retention", daemon=True)
        self.removed_events = 0

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def run_once(self) -> int:
        """Prune everything older than the cut now; events removed."""
        cut = self._clock() - int(self._days * DAY_NS)
        manifests = events = 0
        while not self._stop.is_set():
            pruned = self._store.prune(cut)
            manifests += pruned.manifests
            events += pruned.events
            if pruned.manifests < PRUNE_BATCH:
                break
        if manifests or events:
            self._checkpoints.write_now(pruned_before_ns=cut)
            log.info("retention: removed %d events in %d batches received before %d days ago",
                     events, manifests, self._days)
        self.removed_events += events
        return events

    def _run(self) -> None:
        while True:
            try:
                self.run_once()
            except StorageError as err:  # the next round retries; nothing half-removed
                log.error("retention: pruning failed: %s", err)
            if self._stop.wait(self._every_s):
                return
