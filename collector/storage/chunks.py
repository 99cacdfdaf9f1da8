"""Chunked SQLite event store: one row per stored run of events (issue #6).

The row store (:mod:`collector.storage.sqlite`) pays ~10 us per event for its
seven B-tree inserts, which caps one writer near 50k events/s. Here, like log
stores (Loki, Tempo), the new events of a batch become ONE ``chunks`` row whose
body is their protobuf wire form (an ``EventBatch`` encoding, field 2 repeated,
so ``EventBatch.FromString(body).events`` decodes it). B-tree work is per chunk:
the chunk row, its indexes, one ``chunk_keys`` row per distinct type/pid/uid and
one ``runs`` upsert. Reads find candidate chunks through those small indexes and
filter the decoded events exactly (:mod:`collector.storage.chunkquery`).

Everything else (the ``nodes`` table, status, heartbeats, silent flag, the
gap/missing/rejected counters, transactions and connections) is the row
store's, inherited from :class:`SqliteStorage`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Sequence
from pathlib import Path

from collector.storage import schema
from collector.storage.chunkquery import ANY_VALUE, KIND_PID, KIND_TYPE, KIND_UID, query_chunks
from collector.storage.common import Written, not_stored_pairs
from collector.storage.schema import CHUNK_VERSION_BASE
from collector.storage.sqlite import SqliteStorage
from gpuaudit.v1 import collector_pb2, events_pb2

CHUNK_SCHEMA_VERSION = CHUNK_VERSION_BASE + 3

MAX_KEYS_PER_KIND = 64
"""Distinct pids (uids) a chunk indexes one by one; above it, one ANY_VALUE row."""

# max_span: the widest last_seq - first_seq of any chunk of the run, so the
# chunks that may hold a seq range are found by a bounded index range
# (first_seq BETWEEN lo - max_span AND hi) instead of the run's whole history.
_CHUNKS_V1 = """
CREATE TABLE chunks (
    id          INTEGER PRIMARY KEY,
    node        TEXT    NOT NULL,
    boot_id     TEXT    NOT NULL,
    first_seq   INTEGER NOT NULL,
    last_seq    INTEGER NOT NULL,
    count       INTEGER NOT NULL,   -- events in body (<= last_seq - first_seq + 1)
    min_time_ns INTEGER NOT NULL,
    max_time_ns INTEGER NOT NULL,
    received_ns INTEGER NOT NULL,   -- collector clock when stored
    body        BLOB    NOT NULL    -- the events as an EventBatch encoding, seq order
);
CREATE INDEX chunks_max_time  ON chunks (max_time_ns);
CREATE INDEX chunks_min_time  ON chunks (min_time_ns);
CREATE INDEX chunks_node_time ON chunks (node, max_time_ns);
CREATE INDEX chunks_run       ON chunks (node, boot_id, first_seq);
CREATE TABLE chunk_keys (
    kind  INTEGER NOT NULL,         -- 0 type, 1 pid, 2 uid
    value          NOT NULL,        -- -1 (pid/uid): any, see MAX_KEYS_PER_KIND
    chunk INTEGER NOT NULL,
    PRIMARY KEY (kind, value, chunk)
) WITHOUT ROWID;
CREATE TABLE runs (
    node     TEXT    NOT NULL,
    boot_id  TEXT    NOT NULL,
    max_seq  INTEGER NOT NULL,      -- highest seq stored for the run
    max_span INTEGER NOT NULL,
    PRIMARY KEY (node, boot_id)
) WITHOUT ROWID;
"""

# The nodes table is exactly the row store's: its version 1 and 2 scripts are
# frozen history (upgrades only append), so they are reused, not copied.
_NODES = schema._V1[schema._V1.index("CREATE TABLE IF NOT EXISTS nodes") :] + schema._V2

_UPGRADES = {
    CHUNK_VERSION_BASE + 1: _CHUNKS_V1 + _NODES,
    CHUNK_VERSION_BASE + 2: schema._V3,  # findings and cursors, as in the row store
    CHUNK_VERSION_BASE + 3: schema._V4,  # manifests and checkpoints, as in the row store
}
"""Script that takes a chunk-store file from version N-1 to N (BASE: empty file)."""

_RUN = "SELECT max_seq, max_span FROM runs WHERE node = ? AND boot_id = ?"
_INSERT_CHUNK = (
    "INSERT INTO chunks (node, boot_id, first_seq, last_seq, count, min_time_ns, max_time_ns,"
    " received_ns, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_KEY = "INSERT INTO chunk_keys (kind, value, chunk) VALUES (?, ?, ?)"
_UPSERT_RUN = """
INSERT INTO runs (node, boot_id, max_seq, max_span) VALUES (?, ?, ?, ?)
ON CONFLICT (node, boot_id) DO UPDATE SET
    max_seq  = max(max_seq,  excluded.max_seq),
    max_span = max(max_span, excluded.max_span)
"""
_OVERLAPPING = (
    "SELECT id, first_seq, last_seq, count FROM chunks WHERE node = ? AND boot_id = ?"
    " AND first_seq BETWEEN ? AND ? AND last_seq >= ?"
)

# Field 2 (EventBatch.events), wire type 2, then the length as a varint:
# precomputed for the usual event sizes (the write path's one per-event cost).
_TAG = b"\x12"


def _varint(n: int) -> bytes:
    """``n`` (>= 0) as a protobuf base-128 varint."""
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_PREFIXES = [_TAG + _varint(n) for n in range(16384)]


class ChunkStorage(SqliteStorage):
    """The :class:`~collector.storage.base.Storage` on one SQLite file of event chunks.

    Constructed like :class:`SqliteStorage`; opening a row-store file or a newer
    chunk store raises RuntimeError naming the file. Only the layout hooks are
    its own; the rest is inherited.
    """

    def _init_schema(self, db: sqlite3.Connection) -> None:
        """Create or upgrade the chunk schema (not the row store's) on the writer ``db``."""
        init_chunk_schema(db, self.path)

    def describe(self) -> str:
        """Storage description for ``StatusReply.db``."""
        return f"sqlite-chunks:{self.path}"

    # -- writes (called by the inherited store_batches/store_own/mark_silent) --

    def _write_new(self, db: sqlite3.Connection, events: Sequence[events_pb2.Event],
                   bodies: Sequence[bytes]) -> Written:
        """Write the events of one non-empty batch not stored yet as one chunk."""
        prev, span = _run(db, events[0].node, events[0].boot_id)
        stored = set() if events[0].seq > prev else _stored_in(db, events, prev, span)
        new, new_bodies = not_stored_pairs(events, bodies, stored)
        return Written(prev, new, self._insert_chunk(db, new, new_bodies, span) if new else 0)

    def _insert_chunk(
        self, db: sqlite3.Connection, new: Sequence[events_pb2.Event],
        bodies: Sequence[bytes], span: int,
    ) -> int:
        """Store ``new`` (one run, increasing seq) as one chunk; return its newest time."""
        body, lo, hi, keys = encode_chunk(new, bodies)
        first, last = new[0].seq, new[-1].seq
        node, boot_id = new[0].node, new[0].boot_id
        chunk = db.execute(
            _INSERT_CHUNK,
            (node, boot_id, first, last, len(new), lo, hi, self._clock(), body),
        ).lastrowid
        db.executemany(_INSERT_KEY, [(kind, value, chunk) for kind, value in keys])
        db.execute(_UPSERT_RUN, (node, boot_id, last, max(span, last - first)))
        return hi

    def _write_own(self, db: sqlite3.Connection, event: events_pb2.Event) -> None:
        """Give collector-raised ``event`` the next free seq of its run; write it as a chunk."""
        prev, span = _run(db, event.node, event.boot_id)
        event.seq = prev + 1
        body = event.SerializeToString()
        self._insert_chunk(db, [event], [body], span)
        self._manifests.record_own(db, event.node, event.boot_id, event.seq, body)

    def _delete_events(self, db: sqlite3.Connection, node: str, boot_id: str, first: int,
                       last: int) -> int:
        """Remove the chunks of one run's seq range (a batch's new events are one chunk)."""
        chunks = db.execute("SELECT id, count FROM chunks WHERE node = ? AND boot_id = ? AND"
                            " first_seq >= ? AND last_seq <= ?",
                            (node, boot_id, first, last)).fetchall()
        return self._drop_chunks(db, chunks)

    def _delete_unmanifested(self, db: sqlite3.Connection, cut_ns: int) -> int:
        chunks = db.execute(
            "SELECT id, count FROM chunks c WHERE max_time_ns < ? AND NOT EXISTS (SELECT 1"
            " FROM manifests m WHERE m.node = c.node AND m.boot_id = c.boot_id)",
            (cut_ns,)).fetchall()
        return self._drop_chunks(db, chunks)

    @staticmethod
    def _drop_chunks(db: sqlite3.Connection, chunks: list[tuple[int, int]]) -> int:
        ids = [chunk for chunk, _ in chunks]
        for i in range(0, len(ids), 500):
            # chunk_keys has no index on chunk alone (ingest would pay for it on
            # every chunk): one scan per 500 chunks, not one per chunk
            part = ids[i:i + 500]
            marks = ", ".join("?" * len(part))
            db.execute(f"DELETE FROM chunk_keys WHERE chunk IN ({marks})", part)
            db.execute(f"DELETE FROM chunks WHERE id IN ({marks})", part)
        return sum(count for _, count in chunks)

    # -- reads ----------------------------------------------------------------

    def query(self, query: collector_pb2.EventQuery) -> list[events_pb2.Event]:
        """Events matching ``query``, oldest first; ``newest`` keeps the last N."""
        with self._reading() as db:
            return query_chunks(db, query)

    def events_after(
        self, position: int, limit: int, types: Collection[str] | None = None
    ) -> tuple[list[events_pb2.Event], int]:
        """Events of the chunks after chunk id ``position``, and the last chunk id read.

        See :meth:`SqliteStorage.events_after`; whole chunks are read, at
        least one, until about ``limit`` events.
        """
        events: list[events_pb2.Event] = []
        with self._reading() as db:
            rows = db.execute(
                "SELECT id, count, body FROM chunks WHERE id > ? ORDER BY id", (position,)
            )
            seen = 0
            for chunk, count, body in rows:
                batch = collector_pb2.EventBatch.FromString(body).events
                events += batch if types is None else [e for e in batch if e.type in types]
                position, seen = chunk, seen + count
                if seen >= limit:
                    break
        return events, position


def encode_chunk(
    events: Sequence[events_pb2.Event], bodies: Sequence[bytes],
) -> tuple[bytes, int, int, list[tuple[int, object]]]:
    """``events`` as (body, min time ns, max time ns, distinct (kind, value) keys).

    ``bodies[i]`` is the stored form of ``events[i]`` (its bytes as received).

    One pass, each attribute read once: this is the only per-event Python
    work of the write path (one set per kind: no tuple built per event).
    """
    parts: list[bytes] = []
    put = parts.append
    times: list[int] = []
    put_time = times.append
    types: set[str] = set()
    pids: set[int] = set()
    uids: set[int] = set()
    for ev, data in zip(events, bodies, strict=True):
        n = len(data)
        put(_PREFIXES[n] if n < 16384 else _TAG + _varint(n))
        put(data)
        t = ev.time
        put_time(t.seconds * 1_000_000_000 + t.nanos)
        types.add(ev.type)
        if ev.HasField("process"):
            p = ev.process
            pids.add(p.pid)
            uids.add(p.uid)
    keys: list[tuple[int, object]] = [(KIND_TYPE, v) for v in types]
    keys += _capped(KIND_PID, pids)
    keys += _capped(KIND_UID, uids)
    return b"".join(parts), min(times), max(times), keys


def _capped(kind: int, values: set[int]) -> list[tuple[int, object]]:
    # Each key row costs a B-tree insert at its own place (~2 us): a chunk of
    # events from hundreds of processes gets one ANY row instead, and a pid/uid
    # query decodes it (the filter on decoded events is exact either way).
    if len(values) > MAX_KEYS_PER_KIND:
        return [(kind, ANY_VALUE)]
    return [(kind, v) for v in values]


def init_chunk_schema(db: sqlite3.Connection, path: Path) -> None:
    """Create or upgrade the chunk schema on ``db`` (autocommit) to CHUNK_SCHEMA_VERSION.

    Raises RuntimeError naming the file when it is a row-store file or newer
    than this collector.
    """
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if 0 < version <= CHUNK_VERSION_BASE:
        raise RuntimeError(
            f"{path} is a row-store database (schema version {version}), not a chunk store;"
            " start the collector with --store rows (the default) or use another --db"
        )
    if version > CHUNK_SCHEMA_VERSION:
        raise RuntimeError(
            f"{path} has chunk schema version {version}, this collector knows "
            f"{CHUNK_SCHEMA_VERSION}; use a newer collector or another --db"
        )
    schema.upgrade(db, _UPGRADES, max(version, CHUNK_VERSION_BASE), CHUNK_SCHEMA_VERSION)


def _run(db: sqlite3.Connection, node: str, boot_id: str) -> tuple[int, int]:
    """(highest stored seq, widest chunk span) of the run; (0, 0) for a new run."""
    row = db.execute(_RUN, (node, boot_id)).fetchone()
    return (row[0], row[1]) if row else (0, 0)


def _stored_in(
    db: sqlite3.Connection, events: Sequence[events_pb2.Event], prev: int, span: int
) -> set[int]:
    """The seqs of one batch already stored (a replay or overlap: the rare path)."""
    return _stored_seqs(db, events[0], events[0].seq, min(prev, events[-1].seq), span)


def _stored_seqs(
    db: sqlite3.Connection, ev: events_pb2.Event, lo: int, hi: int, span: int
) -> set[int]:
    """The seqs in ``lo..hi`` stored for the run of ``ev``, from its chunks."""
    stored: set[int] = set()
    for chunk, first, last, count in db.execute(
        _OVERLAPPING, (ev.node, ev.boot_id, lo - span, hi, lo)
    ).fetchall():
        if count == last - first + 1:  # contiguous: the seqs are the range
            stored.update(range(max(first, lo), min(last, hi) + 1))
            continue
        (body,) = db.execute("SELECT body FROM chunks WHERE id = ?", (chunk,)).fetchone()
        stored.update(
            e.seq for e in collector_pb2.EventBatch.FromString(body).events if lo <= e.seq <= hi
        )
    return stored
