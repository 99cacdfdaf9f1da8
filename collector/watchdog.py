"""Raises agent.silent when a node's heartbeats stop.

A node is silent when the collector has received no agent.health for
``factor`` times the interval the agent announced. Silence is judged on the
collector's clock (when heartbeats *arrived*), so an agent whose clock is off
is not reported silent, and a collector that was itself down is not fooled:
it never counts time before it started.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from collector.storage.base import Heartbeat, Storage, StorageError
from gpuaudit.v1 import events_pb2

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 5
"""Heartbeat interval assumed when an agent did not announce one."""

SILENT_FACTOR = 3
"""Missed intervals before a node counts as silent."""

_NS = 1_000_000_000


class Watchdog:
    """Finds silent nodes and records one agent.silent event per silence.

    The events are the collector's own stream (``storage.own``, shared with
    the agent.gap and agent.rejected events ingest raises): node = the silent
    node, boot_id = ``collector-<id of this collector run>``, seq = the next
    free seq of (node, boot_id), assigned by the store.
    """

    def __init__(
        self,
        storage: Storage,
        clock: Callable[[], int] = time.time_ns,
        factor: int = SILENT_FACTOR,
    ) -> None:
        """Watch ``storage``'s heartbeats; ``clock`` gives ns since the epoch.

        Give the storage the same clock: it stamps heartbeat arrival with it.
        """
        self._storage = storage
        self._clock = clock
        self._factor = factor
        self._started_ns = clock()

    @property
    def boot_id(self) -> str:
        """boot_id of the events this collector run raises."""
        return self._storage.own.boot_id

    def check(self) -> list[events_pb2.Event]:
        """One pass over all nodes; returns the agent.silent events it stored."""
        now = self._clock()
        raised = []
        for beat in self._storage.heartbeats():
            silent_for_ns = now - max(beat.received_ns, self._started_ns)
            if beat.silent or silent_for_ns <= self._limit_ns(beat):
                continue
            event = self._silent_event(beat, silent_for_ns)
            stored = self._storage.mark_silent(event, beat.received_ns)
            if stored is not None:
                raised.append(stored)
                log.warning("node %s silent for %ds", beat.node, silent_for_ns // _NS)
        return raised

    async def run(self, period_s: float = 2.0) -> None:
        """Call :meth:`check` every ``period_s`` seconds until cancelled."""
        while True:
            try:
                await asyncio.to_thread(self.check)
            except StorageError as err:
                # The store may recover (disk space freed); keep watching.
                log.error("watchdog could not check heartbeats: %s", err)
            await asyncio.sleep(period_s)

    def _limit_ns(self, beat: Heartbeat) -> int:
        return self._factor * (beat.interval_s or DEFAULT_INTERVAL_S) * _NS

    def _silent_event(self, beat: Heartbeat, silent_for_ns: int) -> events_pb2.Event:
        event = self._storage.own.new("agent.silent", beat.node)
        event.agent_silent.last_seen.FromNanoseconds(beat.last_heartbeat_ns)
        event.agent_silent.silent_for_s = silent_for_ns // _NS
        return event
