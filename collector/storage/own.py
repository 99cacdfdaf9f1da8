"""The collector's own event stream: agent.silent, agent.gap, agent.rejected.

Events the collector raises about a node are stored like agent events, under
``node`` = the affected node and ``boot_id`` = ``collector-<run id>`` (one id
per collector run). Their ``seq`` is *not* chosen here: the store allocates
the next free seq for (node, that boot_id) inside the transaction that stores
the event, so the collector's own stream is gap-free per node and a rolled
back transaction consumes no number. The watchdog and ingest share one
:class:`OwnEvents` (the storage's), hence one allocator.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable

from gpuaudit.v1 import events_pb2

BOOT_ID_PREFIX = "collector-"
"""Prefix of the boot_id of every event the collector raises itself."""


class OwnEvents:
    """Builds the envelopes of collector-raised events (seq left to the store)."""

    def __init__(self, run_id: str | None = None, clock: Callable[[], int] = time.time_ns) -> None:
        """``run_id`` names this collector run (random when None); ``clock`` gives ns."""
        self.boot_id = BOOT_ID_PREFIX + (run_id or secrets.token_hex(8))
        self.clock = clock

    def new(self, event_type: str, node: str) -> events_pb2.Event:
        """An event of ``event_type`` about ``node`` at the collector's now, seq 0.

        The caller sets the payload; the store assigns ``seq`` when it stores it.
        """
        event = events_pb2.Event(type=event_type, node=node, boot_id=self.boot_id)
        event.time.FromNanoseconds(self.clock())
        return event

    def is_own(self, event: events_pb2.Event) -> bool:
        """Whether ``event`` belongs to this collector run's own stream."""
        return event.boot_id == self.boot_id
