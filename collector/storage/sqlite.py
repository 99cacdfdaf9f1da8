"""SQLite event store: one file, WAL mode, idempotent on (node, boot_id, seq)."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from collector.integrity.checkpoint import Checkpoint, Head
from collector.integrity.keys import CollectorKey
from collector.storage.base import (
    DEFAULT_QUERY_LIMIT,
    MAX_QUERY_LIMIT,
    Heartbeat,
    StoreResult,
)
from collector.storage.batch import ReceivedBatch, bodies_of
from collector.storage.common import (
    COUNT_OWN,
    Written,
    as_storage_error,
    get_cursor,
    latest_after,
    latest_health,
    not_stored_pairs,
    own_counts,
    query_findings,
    set_cursor,
    time_ns,
    upsert_findings,
)
from collector.storage.gaps import gaps_in
from collector.storage.manifests import ManifestWriter
from collector.storage.own import OwnEvents
from collector.storage.retention import (
    PRUNE_BATCH,
    UNMANIFESTED_BEFORE,
    Pruned,
    chain_bases,
    prune_batch,
)
from collector.storage.schema import init_schema
from gpuaudit.v1 import collector_pb2, events_pb2

log = logging.getLogger(__name__)

_INSERT = (
    "INSERT INTO events (node, boot_id, seq, type, time_ns, pid, uid, body)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_MAX_SEQ = "SELECT MAX(seq) FROM events WHERE node = ? AND boot_id = ?"
# Each node's newest manifest and its chain value, read in one statement (one snapshot).
_CHAIN_HEADS = (
    "SELECT m.node, m.id, m.chain FROM manifests m JOIN"
    " (SELECT node, MAX(id) AS id FROM manifests GROUP BY node) newest ON m.id = newest.id"
)
_STORE_CHECKPOINT = "INSERT INTO checkpoints (time_ns, body, signature) VALUES (?, ?, ?)"
_SEQS_BETWEEN = "SELECT seq FROM events WHERE node = ? AND boot_id = ? AND seq BETWEEN ? AND ?"


def _as_is(sql: str) -> str:
    return sql


def _row(ev: events_pb2.Event, body: bytes) -> tuple[Any, ...]:
    # The hot path (every stored event): each attribute read is a C call, so
    # read each once.
    t = ev.time
    pid: int | None
    uid: int | None
    if ev.HasField("process"):
        p = ev.process
        pid, uid = p.pid, p.uid
    else:
        pid = uid = None
    return (
        ev.node, ev.boot_id, ev.seq, ev.type, t.seconds * 1_000_000_000 + t.nanos, pid, uid,
        body,
    )  # fmt: skip


class SqliteStorage:
    """The :class:`~collector.storage.base.Storage` on one SQLite file.

    One connection writes (under a lock), another reads (under its own lock):
    in WAL mode readers see the last committed state and never block the
    writer, so a large query does not delay acks to agents.

    This class is the "rows" layout (one row per event) and the shared frame of
    every layout: a layout subclass (:class:`~collector.storage.chunks.ChunkStorage`)
    overrides the hooks ``_init_schema``, ``_write_new``, ``_write_own`` and
    ``query``, and inherits transactions, the ``nodes`` table, heartbeats, gap
    events and the own-event counters.
    """

    def __init__(
        self,
        path: str | Path,
        clock: Callable[[], int] = time.time_ns,
        run_id: str | None = None,
        key: CollectorKey | None = None,
    ) -> None:
        """Open (creating it and its parent directories if needed) the store at ``path``.

        ``clock`` gives nanoseconds since the epoch; it timestamps the arrival
        of heartbeats, which the watchdog compares with its own clock, and the
        collector's own events. ``run_id`` names this collector run in their
        boot_id (random when None).
. ``key`` signs the manifests of the collector's own
        events (None: they are recorded unsigned).
        """
        self.path = Path(path)
        self._clock = clock
        self._own = OwnEvents(run_id, clock)
        self._manifests = ManifestWriter(key, clock)
        # Called after each commit with the events it newly stored (exports);
        # called on the writer thread, so a listener must only hand them on.
        self.on_stored: list[Callable[[list[events_pb2.Event]], None]] = []
        self._fresh: list[events_pb2.Event] = []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._w = self._connect()
        try:
            self._init_schema(self._w)
        except BaseException:
            self._w.close()
            raise
        self._r = self._connect()

    def _init_schema(self, db: sqlite3.Connection) -> None:
        """Layout hook: tune the writer ``db`` and create or upgrade the layout's schema.

        Raises RuntimeError naming the file when it cannot be used (another
        layout's file, or a newer schema).
        """
        # Each stored event touches seven b-trees (table, unique key, five
        # indexes); SQLite's default 2 MiB cache is smaller than their hot
        # pages under load, and insert cost grew ~40% as the file grew.
        db.execute("PRAGMA cache_size = -65536")  # KiB: 64 MiB
        init_schema(db, self.path)

    @property
    def own(self) -> OwnEvents:
        """The collector's own event stream (shared by ingest and watchdog)."""
        return self._own

    def describe(self) -> str:
        """Storage description for ``StatusReply.db``."""
        return f"sqlite:{self.path}"

    def journal_mode(self) -> str:
        """The journal mode SQLite actually uses ("wal" once opened)."""
        return str(self._read("PRAGMA journal_mode")[0][0])

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves so one group of
        # batches is exactly one transaction. check_same_thread=False: calls
        # arrive from several threads; the locks serialize use of each connection.
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.execute("PRAGMA journal_mode = WAL")
        # FULL, not NORMAL: in WAL mode NORMAL is safe against corruption but a
        # power loss can roll back the last commits. An Ack tells the agent it
        # may delete those events from its spool, so an acked batch must
        # survive power loss. The cost is one fsync per commit, and group
        # commit (collector.ingest.group) shares one commit among many batches.
        conn.execute("PRAGMA synchronous = FULL")
        return conn

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._write_lock, as_storage_error():
            # IMMEDIATE takes the write lock up front, so two collectors on one
            # file wait (busy_timeout) instead of failing half-way through.
            self._w.execute("BEGIN IMMEDIATE")
            self._fresh = []
            try:
                yield self._w
            except BaseException:
                self._w.execute("ROLLBACK")
                self._manifests.forget_cache()
                raise
            self._w.execute("COMMIT")
            self._tell_stored(self._fresh)

    def _tell_stored(self, events: list[events_pb2.Event]) -> None:
        """Give the events a transaction newly stored to the ``on_stored`` listeners."""
        for listener in self.on_stored:
            try:
                listener(events)
            except Exception:  # an export's bug must not fail a committed ingest
                log.exception("on_stored listener %r failed", listener)

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """The reader connection, held alone for the block; errors become StorageError."""
        with self._read_lock, as_storage_error():
            yield self._r

    def _read(self, sql: str, args: Sequence[object] = ()) -> list[Any]:
        with self._reading() as db:
            return db.execute(sql, args).fetchall()

    # -- writes ---------------------------------------------------------------

    def store_batches(self, batches: Sequence[Sequence[events_pb2.Event]]) -> list[StoreResult]:
        """Store validated batches in one transaction; see :class:`Storage`.

        Idempotent: events already stored on (node, boot_id, seq) are counted
        as duplicates. ``acked_seq`` is the highest seq stored for the batch's
        boot_id, which is what the proto's Ack promises.
        """
        with self._transaction() as db:
            return [self._store_one(db, events) for events in batches]

    def store_batch(self, events: Sequence[events_pb2.Event]) -> StoreResult:
        """Store one validated batch (one node and boot_id) in its own transaction."""
        return self.store_batches([events])[0]

    def _store_one(self, db: sqlite3.Connection, events: Sequence[events_pb2.Event]) -> StoreResult:
        if not events:
            return StoreResult(0, 0, 0)
        bodies = bodies_of(events)
        written = self._write_new(db, events, bodies)
        signature = events.signature if isinstance(events, ReceivedBatch) else None
        cert = events.cert_der if isinstance(events, ReceivedBatch) else b""
        self._manifests.record_batch(db, events, bodies, signature, cert)
        acked_seq = max(written.prev, events[-1].seq)
        if written.new:
            self._fresh.extend(written.new)
            self._account(db, written, acked_seq)
        return StoreResult(len(written.new), len(events) - len(written.new), acked_seq)

    def _write_new(self, db: sqlite3.Connection, events: Sequence[events_pb2.Event],
                   bodies: Sequence[bytes]) -> Written:
        """Layout hook: write the events of one non-empty batch not stored yet.

        ``bodies[i]`` is the stored form of ``events[i]`` (its bytes as received).
        """
        prev = db.execute(_MAX_SEQ, (events[0].node, events[0].boot_id)).fetchone()[0] or 0
        new, new_bodies = not_stored_pairs(events, bodies, _stored_seqs(db, events, prev))
        rows = [_row(ev, body) for ev, body in zip(new, new_bodies, strict=True)]
        db.executemany(_INSERT, rows)
        return Written(prev, new, max((row[4] for row in rows), default=0))

    def _account(self, db: sqlite3.Connection, written: Written, acked_seq: int) -> None:
        """After new events are written: node row, heartbeat, and the gaps they reveal."""
        prev, new, newest = written
        self._update_node(db, new[0].node, new[0].boot_id, newest, acked_seq, len(new))
        health = latest_health(new)
        if health is not None:
            self._update_heartbeat(db, health)
        for gap in gaps_in(prev, new, self._own):
            self._insert_own(db, gap)

    def _update_node(
        self, db: sqlite3.Connection, node: str, boot_id: str, newest: int, acked: int, stored: int
    ) -> None:
        row = db.execute("SELECT boot_id, latest_ns FROM nodes WHERE node = ?", (node,)).fetchone()
        if row is None:
            db.execute(
                "INSERT INTO nodes (node, boot_id, latest_ns, last_seq, events_stored)"
                " VALUES (?, ?, ?, ?, ?)",
                (node, boot_id, newest, acked, stored),
            )
            return
        db.execute(
            "UPDATE nodes SET events_stored = events_stored + ? WHERE node = ?", (stored, node)
        )
        latest = latest_after(row[0], row[1], boot_id, newest)
        if latest is None:
            return
        db.execute(
            "UPDATE nodes SET boot_id = ?, latest_ns = ?, last_seq = ? WHERE node = ?",
            (boot_id, latest, acked, node),
        )

    def _update_heartbeat(self, db: sqlite3.Connection, health: events_pb2.Event) -> None:
        # Only a heartbeat newer than the one on record counts, so a replayed
        # old heartbeat neither rewrites the counters nor clears `silent`.
        db.execute(
            "UPDATE nodes SET heartbeat_ns = ?, received_ns = ?, interval_s = ?, health = ?,"
            " silent = 0 WHERE node = ? AND (heartbeat_ns IS NULL OR heartbeat_ns < ?)",
            (
                time_ns(health.time),
                self._clock(),
                health.agent_health.interval_s,
                health.agent_health.SerializeToString(),
                health.node,
                time_ns(health.time),
            ),
        )

    def _insert_own(self, db: sqlite3.Connection, event: events_pb2.Event) -> events_pb2.Event:
        self._write_own(db, event)
        self._fresh.append(event)
        db.execute(COUNT_OWN, (event.node, 1, *own_counts(event)))
        return event

    def _write_own(self, db: sqlite3.Connection, event: events_pb2.Event) -> None:
        """Layout hook: give collector-raised ``event`` the next free seq of its run; write it."""
        # Taken inside the transaction: gap-free, and shared by every kind of own event.
        prev = db.execute(_MAX_SEQ, (event.node, event.boot_id)).fetchone()[0] or 0
        event.seq = prev + 1
        body = event.SerializeToString()
        db.execute(_INSERT, _row(event, body))
        self._manifests.record_own(db, event.node, event.boot_id, event.seq, body)

    def store_own(self, event: events_pb2.Event) -> events_pb2.Event:
        """Store a collector-raised event with the next free seq; see :class:`Storage`."""
        with self._transaction() as db:
            return self._insert_own(db, event)

    def mark_silent(
        self, event: events_pb2.Event, received_ns: int
    ) -> events_pb2.Event | None:
        """Store ``event`` (an agent.silent) and flag its node, atomically.

        Skipped (returns None) if the node already is silent or a newer
        heartbeat arrived since the caller looked (``received_ns`` changed).
        """
        with self._transaction() as db:
            flagged = db.execute(
                "UPDATE nodes SET silent = 1 WHERE node = ? AND silent = 0 AND received_ns = ?",
                (event.node, received_ns),
            ).rowcount
            return self._insert_own(db, event) if flagged else None

    # -- reads ----------------------------------------------------------------

    def query(self, query: collector_pb2.EventQuery) -> list[events_pb2.Event]:
        """Events matching ``query``, oldest first; ``newest`` keeps the last N."""
        where, args = _where(query)
        limit = min(query.limit or DEFAULT_QUERY_LIMIT, MAX_QUERY_LIMIT)
        order = "DESC" if query.newest else "ASC"
        sql = f"SELECT body FROM events{where} ORDER BY time_ns {order}, id {order} LIMIT ?"
        rows = self._read(sql, [*args, limit])
        if query.newest:
            rows.reverse()
        return [events_pb2.Event.FromString(body) for (body,) in rows]

    def status(self) -> collector_pb2.StatusReply:
        """Every node's status plus the total number of stored events."""
        rows = self._read(
            "SELECT node, boot_id, last_seq, events_stored, heartbeat_ns, health, silent,"
            " gaps, missing_events, rejected FROM nodes ORDER BY node"
        )
        reply = collector_pb2.StatusReply(db=self.describe())
        for row in rows:
            reply.nodes.append(_node_status(*row))
        reply.events_stored = sum(n.events_stored for n in reply.nodes)
        return reply

    def heartbeats(self) -> list[Heartbeat]:
        """The latest heartbeat of every node that has sent one."""
        rows = self._read(
            "SELECT node, heartbeat_ns, received_ns, interval_s, silent FROM nodes"
            " WHERE heartbeat_ns IS NOT NULL ORDER BY node"
        )
        return [Heartbeat(n, hb, rx, iv, bool(s)) for n, hb, rx, iv, s in rows]

    # -- followers (collector.findings) ---------------------------------------

    def events_after(
        self, position: int, limit: int, types: Collection[str] | None = None
    ) -> tuple[list[events_pb2.Event], int]:
        """Events stored after ``position``, in storage (arrival) order, and the new position.

        Layout hook. A position is the row id of the last event read (chunks:
        the chunk id); 0 is before every event. One writer allocates ids in
        commit order, so a reader never sees an id before a smaller one: a
        follower that resumes from its saved position skips nothing. About
        ``limit`` events are read; only those of ``types`` (None: all) are
        decoded and returned, but the position moves past the others too.
        """
        # The CASE leaves the body of other types unread and undecoded: a
        # follower that watches a few types pays little for the rest.
        wanted = "1" if types is None else f"type IN ({', '.join('?' * len(types))})"
        sql = (f"SELECT id, CASE WHEN {wanted} THEN body END FROM events"
               " WHERE id > ? ORDER BY id LIMIT ?")
        rows = self._read(sql, [*(types or ()), position, limit])
        events = [events_pb2.Event.FromString(body) for _, body in rows if body is not None]
        return events, (rows[-1][0] if rows else position)

    def cursor(self, name: str) -> int:
        """The saved position of follower ``name`` (0: it never saved one)."""
        with self._reading() as db:
            return get_cursor(db, name)

    def save_findings(
        self, findings: Sequence[collector_pb2.Finding], cursor: str, position: int
    ) -> list[collector_pb2.Finding]:
        """Merge new occurrences ``findings`` into the stored ones and move ``cursor``.

        One transaction: after a crash the follower resumes from the last
        saved position and the findings hold exactly the events before it.
        Returns the findings as now stored (count, first_seen, events merged).
        """
        with self._transaction() as db:
            merged = upsert_findings(db, findings)
            set_cursor(db, cursor, position)
            return merged

    def findings(self, query: collector_pb2.FindingQuery) -> list[collector_pb2.Finding]:
        """Stored findings matching ``query``, most recently seen last."""
        with self._reading() as db:
            return query_findings(db, query)

    # -- tamper evidence (collector.integrity) ---------------------------------

    def chain_heads(self) -> dict[str, Head]:
        """Each node's newest manifest id and chain value."""
        return {node: Head(mid, bytes(chain)) for node, mid, chain in self._read(_CHAIN_HEADS)}

    def store_checkpoint(self, checkpoint: Checkpoint) -> None:
        with self._transaction() as db:
            db.execute(_STORE_CHECKPOINT,
                       (checkpoint.time_ns, checkpoint.body, checkpoint.signature))

    def chain_bases(self) -> dict[str, Head]:
        """Per node, the newest manifest retention removed (the chain continues from it)."""
        with self._reading() as db:
            return chain_bases(db, _as_is)

    def prune(self, cut_ns: int, limit: int = PRUNE_BATCH) -> Pruned:
        """Remove up to ``limit`` of the oldest batches stored before ``cut_ns`` (retention)."""
        with self._transaction() as db:
            pruned = prune_batch(db, _as_is, cut_ns, self._delete_events, limit)
            if pruned.manifests < limit:  # the manifested part is done: older, unsigned data
                pruned.events += self._delete_unmanifested(db, cut_ns)
            return pruned

    def _delete_events(self, db: sqlite3.Connection, node: str, boot_id: str, first: int,
                       last: int) -> int:
        """Layout hook: remove the stored events of one run's seq range."""
        return db.execute("DELETE FROM events WHERE node = ? AND boot_id = ? AND seq BETWEEN"
                          " ? AND ?", (node, boot_id, first, last)).rowcount

    def _delete_unmanifested(self, db: sqlite3.Connection, cut_ns: int) -> int:
        """Layout hook: remove events older than ``cut_ns`` of runs without manifests."""
        return db.execute(UNMANIFESTED_BEFORE, (cut_ns,)).rowcount

    def close(self) -> None:
        """Close both connections once any write or read in progress is done."""
        with self._write_lock, self._read_lock:
            self._r.close()
            self._w.close()


def _stored_seqs(
    db: sqlite3.Connection, events: Sequence[events_pb2.Event], prev: int
) -> set[int]:
    """The seqs of one batch already stored; ``prev`` is the highest seq stored."""
    first = events[0]
    if first.seq > prev:
        return set()  # nothing above prev is stored: the usual, replay-free case
    return {
        seq for (seq,) in db.execute(
            _SEQS_BETWEEN, (first.node, first.boot_id, first.seq, min(prev, events[-1].seq))
        )
    }  # fmt: skip


def _where(query: collector_pb2.EventQuery) -> tuple[str, list[object]]:
    clauses: list[str] = []
    args: list[object] = []
    for column, values in (("type", query.types), ("node", query.nodes)):
        if values:
            clauses.append(f"{column} IN ({', '.join('?' * len(values))})")
            args.extend(values)
    for column in ("pid", "uid"):
        if query.HasField(column):
            clauses.append(f"{column} = ?")
            args.append(getattr(query, column))
    if query.HasField("since"):
        clauses.append("time_ns >= ?")
        args.append(time_ns(query.since))
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), args


def _node_status(
    node: str,
    boot_id: str,
    last_seq: int,
    events_stored: int,
    heartbeat_ns: int | None,
    health_blob: bytes | None,
    silent: int,
    gaps: int,
    missing_events: int,
    rejected: int,
) -> collector_pb2.NodeStatus:
    status = collector_pb2.NodeStatus(
        node=node,
        boot_id=boot_id,
        last_seq=last_seq,
        events_stored=events_stored,
        silent=bool(silent),
        gaps=gaps,
        missing_events=missing_events,
        rejected=rejected,
    )
    if heartbeat_ns is not None:
        status.last_heartbeat.FromNanoseconds(heartbeat_ns)
    if health_blob is not None:
        health = events_pb2.AgentHealth.FromString(health_blob)
        status.kernel_lost = health.kernel_lost
        status.queue_dropped = health.queue_dropped
        status.decode_errors = health.decode_errors
        status.spool_dropped = health.spool_dropped
        status.mode = health.mode
        status.sensors.extend(health.sensors)
    return status
