"""The storage interface the collector's services are written against.

Storage is synchronous on purpose: the async server calls it through
``asyncio.to_thread`` so a slow disk never stalls the event loop, and tests can
drive it directly without an event loop.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import NamedTuple, Protocol

from collector.integrity.checkpoint import Checkpoint, Head
from collector.storage.own import OwnEvents
from collector.storage.retention import Pruned
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
    """Event store: idempotent batch writes, filtered reads, per-node status.

    Collector-raised events (agent.silent, agent.gap, agent.rejected) are
    built with :attr:`own` and get their seq from the store, in the
    transaction that stores them (see :mod:`collector.storage.own`).
    """

    on_stored: list[Callable[[list[events_pb2.Event]], None]]
    """Called after each commit with the events it newly stored, own events included
    (the exports subscribe). Runs on the writer: a listener must only hand them on."""

    @property
    def own(self) -> OwnEvents:
        """The collector's own event stream (boot_id ``collector-<run id>``)."""
        ...

    def store_batches(self, batches: Sequence[Sequence[events_pb2.Event]]) -> list[StoreResult]:
        """Store validated batches in ONE transaction (group commit); one result each.

        Each batch holds events of one node and boot_id in increasing seq
        order. Batches are applied in order, so of two equal batches the
        first stores and the second counts duplicates. The agent.gap events
        the new events reveal (:mod:`collector.storage.gaps`) are stored in
        the same transaction. Raises StorageError, and then nothing of any
        batch was stored.
        """
        ...

    def store_batch(self, events: Sequence[events_pb2.Event]) -> StoreResult:
        """Store one validated batch in its own transaction (``store_batches([events])``)."""
        ...

    def store_own(self, event: events_pb2.Event) -> events_pb2.Event:
        """Store a collector-raised ``event`` (from :attr:`own`); return it with its seq.

        Counts it in its node's status (an agent.rejected adds its
        ``batches`` to ``rejected``), creating the node's row if needed.
        """
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

    def mark_silent(
        self, event: events_pb2.Event, received_ns: int
    ) -> events_pb2.Event | None:
        """Store the ``agent.silent`` ``event`` (from :attr:`own`) and flag its node silent.

        Only if the node's latest heartbeat is still the one received at
        ``received_ns`` and the node is not already silent: a heartbeat landing
        between the watchdog's look and this call wins. Returns the stored
        event (with its seq), or None when it was not stored.
        """
        ...

    def events_after(
        self, position: int, limit: int, types: Collection[str] | None = None
    ) -> tuple[list[events_pb2.Event], int]:
        """About ``limit`` events stored after ``position``, in arrival order, and the new position.

        Positions are the layout's storage order (0: before every event);
        only events of ``types`` (None: all) are returned. Followers (the
        findings engine) read the store this way and save the position with
        :meth:`save_findings`, so nothing stored is skipped across restarts.
        """
        ...

    def cursor(self, name: str) -> int:
        """The position follower ``name`` saved last (0: never)."""
        ...

    def save_findings(
        self, findings: Sequence[collector_pb2.Finding], cursor: str, position: int
    ) -> list[collector_pb2.Finding]:
        """Merge new occurrences into the stored findings and save ``cursor``, atomically."""
        ...

    def findings(self, query: collector_pb2.FindingQuery) -> list[collector_pb2.Finding]:
        """Stored findings matching ``query``, most recently seen last."""
        ...

    def chain_heads(self) -> dict[str, Head]:
        """Each node's newest manifest id and chain value (collector.integrity)."""
        ...

    def store_checkpoint(self, checkpoint: Checkpoint) -> None:
        """Store a signed checkpoint of the chain heads."""
        ...

    def chain_bases(self) -> dict[str, Head]:
        """Per node, the newest manifest retention removed (the chain continues from it)."""
        ...

    def prune(self, cut_ns: int, limit: int = ...) -> Pruned:
        """Remove up to ``limit`` of the oldest batches received before ``cut_ns``."""
        ...

    def describe(self) -> str:
        """Where the events are, for logs and ``StatusReply.db`` (no secrets)."""
        ...

    def close(self) -> None:
        """Release the store; waits for a write in progress."""
        ...
