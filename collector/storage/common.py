"""Helpers both storage layouts share (rows: :mod:`.sqlite`, chunks: :mod:`.chunks`)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

from collector.storage.base import StorageError
from collector.storage.gaps import missing_count
from gpuaudit.v1 import events_pb2

COUNT_OWN = """
INSERT INTO nodes
    (node, boot_id, latest_ns, last_seq, events_stored, gaps, missing_events, rejected)
VALUES (?, '', 0, 0, ?, ?, ?, ?)
ON CONFLICT (node) DO UPDATE SET
    events_stored  = events_stored  + excluded.events_stored,
    gaps           = gaps           + excluded.gaps,
    missing_events = missing_events + excluded.missing_events,
    rejected       = rejected       + excluded.rejected
"""
"""Adds (node, events_stored, gaps, missing_events, rejected) to a node's counters.

Creates the row of a node never seen (e.g. the certificate owner of a refused
batch) with boot_id ''.
"""


class Written(NamedTuple):
    """What a layout's write step did with one batch (one node and boot_id)."""

    prev: int
    """The highest seq stored for the batch's run before it (0: a new run)."""
    new: Sequence[events_pb2.Event]
    """The events of the batch that were not stored yet, now written (seq order)."""
    newest: int
    """The newest event time (ns) among ``new``; 0 when ``new`` is empty."""


def not_stored_pairs(
    events: Sequence[events_pb2.Event], bodies: Sequence[bytes], stored: set[int]
) -> tuple[Sequence[events_pb2.Event], Sequence[bytes]]:
    """The events (and their bodies) of a batch whose seq is not in ``stored``."""
    if not stored:
        return events, bodies
    keep = [i for i, ev in enumerate(events) if ev.seq not in stored]
    return [events[i] for i in keep], [bodies[i] for i in keep]


def time_ns(ts: Any) -> int:
    """A protobuf Timestamp as integer nanoseconds since the epoch."""
    return int(ts.seconds) * 1_000_000_000 + int(ts.nanos)


def latest_health(events: Sequence[events_pb2.Event]) -> events_pb2.Event | None:
    """The agent.health event of ``events`` with the newest event time, if any."""
    health = [ev for ev in events if ev.type == "agent.health"]
    return max(health, key=lambda ev: time_ns(ev.time)) if health else None


def own_counts(event: events_pb2.Event) -> tuple[int, int, int]:
    """(gaps, missing_events, rejected) that collector-raised ``event`` adds to its node."""
    kind = event.WhichOneof("payload")
    if kind == "agent_gap":
        return 1, missing_count(event.agent_gap), 0
    if kind == "agent_rejected":
        return 0, 0, event.agent_rejected.batches
    return 0, 0, 0


@contextmanager
def as_storage_error() -> Iterator[None]:
    """Re-raise sqlite3 errors in the block as :class:`StorageError`.

    Callers depend on the Storage interface, not on sqlite3's exceptions.
    """
    try:
        yield
    except sqlite3.Error as err:
        raise StorageError(str(err)) from err
