"""Helpers both storage layouts share (rows: :mod:`.sqlite`, chunks: :mod:`.chunks`)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple, Protocol

from collector.storage.base import MAX_QUERY_LIMIT, StorageError
from collector.storage.gaps import missing_count
from gpuaudit.v1 import collector_pb2, events_pb2

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


class Executes(Protocol):
    """A DB-API connection or cursor taking ``?`` placeholders (SQLite, or PostgreSQL
    through collector.storage.postgres' adapter): what the shared SQL helpers need."""

    def execute(self, sql: str, args: Any = ..., /) -> Any: ...


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


def latest_after(current_boot: str, current_latest: int, boot_id: str, newest: int
                 ) -> int | None:
    """The node's new ``latest_ns`` after new events of run ``boot_id`` (newest event
    time ``newest``) are stored; None when its latest run stays ``current_boot``.

    A spool replaying an older agent run must not make it "latest" again: the
    run with the newest event wins.
    """
    if boot_id == current_boot:
        return max(current_latest, newest)
    return newest if newest >= current_latest else None


def pyformat(sql: str) -> str:
    """SQL written with SQLite's ``?`` placeholders, in psycopg's ``%s`` style."""
    return sql.replace("?", "%s")


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


# -- findings (collector.findings): shared by both layouts ---------------------

SEVERITIES = ("info", "low", "medium", "high", "critical")
"""Finding severities, lowest first; the index is the stored ``findings.severity``."""

MAX_FINDING_EVENTS = 8
"""Triggering events a finding keeps (the first ones); ``count`` has them all."""

DEFAULT_FINDINGS_LIMIT = 1000
"""Findings ListFindings returns when the query leaves ``limit`` at 0."""

_FINDING_BY_ID = "SELECT body FROM findings WHERE id = ?"
_UPSERT_FINDING = """
INSERT INTO findings (id, rule, key, severity, first_ns, last_ns, count, body)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (id) DO UPDATE SET
    severity = excluded.severity, first_ns = excluded.first_ns, last_ns = excluded.last_ns,
    count = excluded.count, body = excluded.body
"""
_SET_CURSOR = """
INSERT INTO cursors (name, position) VALUES (?, ?)
ON CONFLICT (name) DO UPDATE SET position = excluded.position
"""


def merge_finding(old: collector_pb2.Finding | None, new: collector_pb2.Finding) -> None:
    """Fold the stored ``old`` into ``new`` (occurrences since), in place.

    ``new`` keeps the latest description (node, process, summary, rule text);
    the count adds up, first_seen is the earliest and the event list keeps
    the first :data:`MAX_FINDING_EVENTS` triggering events.
    """
    if old is not None:
        new.count += old.count
        if time_ns(old.first_seen) < time_ns(new.first_seen):
            new.first_seen.CopyFrom(old.first_seen)
        if time_ns(old.last_seen) > time_ns(new.last_seen):
            new.last_seen.CopyFrom(old.last_seen)
        events = list(old.events) + list(new.events)
        del new.events[:]
        new.events.extend(events)
    del new.events[MAX_FINDING_EVENTS:]


def upsert_findings(
    db: Executes, findings: Sequence[collector_pb2.Finding]
) -> list[collector_pb2.Finding]:
    """Merge ``findings`` (new occurrences) into the stored ones; return them merged.

    Runs inside the caller's transaction. Two entries with the same id merge
    in order.
    """
    merged: dict[str, collector_pb2.Finding] = {}
    for finding in findings:
        row = db.execute(_FINDING_BY_ID, (finding.id,)).fetchone()
        old = collector_pb2.Finding.FromString(row[0]) if row else None
        done = collector_pb2.Finding()
        done.CopyFrom(finding)
        merge_finding(old, done)
        db.execute(_UPSERT_FINDING, (
            done.id, done.rule, done.key, severity_rank(done.severity),
            time_ns(done.first_seen), time_ns(done.last_seen), done.count,
            done.SerializeToString(),
        ))  # fmt: skip
        merged[done.id] = done
    return list(merged.values())


def set_cursor(db: Executes, name: str, position: int) -> None:
    """Record ``position`` as cursor ``name`` (inside the caller's transaction)."""
    db.execute(_SET_CURSOR, (name, position))


def get_cursor(db: Executes, name: str) -> int:
    """The position of cursor ``name``; 0 (before every event) when never set."""
    row = db.execute("SELECT position FROM cursors WHERE name = ?", (name,)).fetchone()
    return int(row[0]) if row else 0


def severity_rank(severity: str) -> int:
    """0 (info) .. 4 (critical); ValueError for anything else."""
    try:
        return SEVERITIES.index(severity)
    except ValueError:
        known = ", ".join(SEVERITIES)
        raise ValueError(f"unknown severity {severity!r} (one of {known})") from None


def query_findings(
    db: Executes, query: collector_pb2.FindingQuery
) -> list[collector_pb2.Finding]:
    """Stored findings matching ``query``: the most recently seen N, oldest first."""
    clauses, args = ["severity >= ?"], [severity_rank(query.min_severity or "info")]
    if query.HasField("since"):
        clauses.append("last_ns >= ?")
        args.append(time_ns(query.since))
    limit = min(query.limit or DEFAULT_FINDINGS_LIMIT, MAX_QUERY_LIMIT)
    rows = db.execute(
        f"SELECT body FROM findings WHERE {' AND '.join(clauses)}"
        " ORDER BY last_ns DESC, id DESC LIMIT ?",
        [*args, limit],
    ).fetchall()
    return [collector_pb2.Finding.FromString(body) for (body,) in reversed(rows)]
