"""The storage interface the collector's services are written against.

Storage is synchronous on purpose: the async server calls it through
``asyncio.to_thread`` so a slow disk never stalls the event loop, and tests can
drive it directly without an event loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

from gpuaudit.v1 import collector_pb2, events_pb2

DEFAULT_QUERY_LIMIT = 100
"""Events returned when a query leaves ``limit`` at 0."""

MAX_QUERY_LIMIT = 10_000
"""Upper bound on ``limit``; larger requests are clamped to it."""


class StorageError(Exception):
    """The store could not complete an operation (disk full, file locked, ...).

    Nothing of the failed write was committed.
    """


class StoreResult(NamedTuple):
    """Outcome of storing one batch (the numbers an ``Ack`` carries)."""

    stored: int      # events newly written
    duplicates: int  # events already present on (node, boot_id, seq)
    acked_seq: int   # highest seq now stored for the batch's (node, boot_id)


class Heartbeat(NamedTuple):
    """What the watchdog needs to know about one node's latest heartbeat."""

    node: str
    last_heartbeat_ns: int  # event time of the latest agent.health (agent clock)
    received_ns: int        # collector clock when that heartbeat was stored
    interval_s: int         # interval the agent announced (0: unknown)
    silent: bool            # an agent.silent was raised and no heartbeat since


class Storage(Protocol):
    """Event store: idempotent batch writes, filtered reads, per-node status."""

    def store_batch(self, events: Sequence[events_pb2.Event]) -> StoreResult:
        """Store one validated batch (same node and boot_id) in one transaction."""
        ...

    def query(self, query: collector_pb2.EventQuery) -> list[events_pb2.Event]:
        """Events matching ``query``, oldest first (see ``EventQuery``)."""
        ...

    def status(self) -> collector_pb2.StatusReply:
        """Per-node heartbeat, sequence, count and loss figures."""
        ...

    def heartbeats(self) -> list[Heartbeat]:
        """The latest heartbeat of every node that has sent one."""
        ...

    def mark_silent(self, event: events_pb2.Event, received_ns: int) -> bool:
        """Store the ``agent.silent`` ``event`` and flag ``event.node`` silent.

        Only if the node's latest heartbeat is still the one received at
        ``received_ns`` and the node is not already silent: a heartbeat landing
        between the watchdog's look and this call wins. Returns whether the
        event was stored.
        """
        ...

    def close(self) -> None:
        """Release the store; waits for a write in progress."""
        ...
