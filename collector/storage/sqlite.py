"""SQLite event store: one file, WAL mode, idempotent on (node, boot_id, seq)."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from collector.storage.base import (
    DEFAULT_QUERY_LIMIT,
    MAX_QUERY_LIMIT,
    Heartbeat,
    StorageError,
    StoreResult,
)
from gpuaudit.v1 import collector_pb2, events_pb2

SCHEMA_VERSION = 1

# Every query filter has an index that also orders by time, so a filtered
# query walks the index in time order instead of sorting the table.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id      INTEGER PRIMARY KEY,
    node    TEXT    NOT NULL,
    boot_id TEXT    NOT NULL,
    seq     INTEGER NOT NULL,
    type    TEXT    NOT NULL,
    time_ns INTEGER NOT NULL,
    pid     INTEGER,            -- NULL for node-level events (no process)
    uid     INTEGER,
    body    BLOB    NOT NULL,   -- the serialized gpuaudit.v1.Event
    UNIQUE (node, boot_id, seq)
);
CREATE INDEX IF NOT EXISTS events_time      ON events (time_ns);
CREATE INDEX IF NOT EXISTS events_type_time ON events (type, time_ns);
CREATE INDEX IF NOT EXISTS events_node_time ON events (node, time_ns);
CREATE INDEX IF NOT EXISTS events_pid_time  ON events (pid, time_ns);
CREATE INDEX IF NOT EXISTS events_uid_time  ON events (uid, time_ns);

CREATE TABLE IF NOT EXISTS nodes (
    node          TEXT    PRIMARY KEY,
    boot_id       TEXT    NOT NULL,    -- latest agent run (by event time)
    latest_ns     INTEGER NOT NULL,    -- newest event time seen from boot_id
    last_seq      INTEGER NOT NULL,    -- highest seq stored for boot_id
    events_stored INTEGER NOT NULL,    -- all events stored for the node
    heartbeat_ns  INTEGER,             -- event time of the latest agent.health
    received_ns   INTEGER,             -- collector clock when it was stored
    interval_s    INTEGER NOT NULL DEFAULT 0,
    health        BLOB,                -- serialized AgentHealth of that heartbeat
    silent        INTEGER NOT NULL DEFAULT 0
);
"""

_INSERT = (
    "INSERT OR IGNORE INTO events (node, boot_id, seq, type, time_ns, pid, uid, body)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)


def time_ns(ts: Any) -> int:
    """A protobuf Timestamp as integer nanoseconds since the epoch."""
    return int(ts.seconds) * 1_000_000_000 + int(ts.nanos)


def _row(ev: events_pb2.Event) -> tuple[object, ...]:
    has_process = ev.HasField("process")
    return (
        ev.node,
        ev.boot_id,
        ev.seq,
        ev.type,
        time_ns(ev.time),
        ev.process.pid if has_process else None,
        ev.process.uid if has_process else None,
        ev.SerializeToString(),
    )


def _latest_health(events: Sequence[events_pb2.Event]) -> events_pb2.Event | None:
    health = [ev for ev in events if ev.WhichOneof("payload") == "agent_health"]
    return max(health, key=lambda ev: time_ns(ev.time)) if health else None


class SqliteStorage:
    """The :class:`~collector.storage.base.Storage` on one SQLite file.

    One connection writes (under a lock), another reads (under its own lock):
    in WAL mode readers see the last committed state and never block the
    writer, so a large query does not delay acks to agents.
    """

    def __init__(self, path: str | Path, clock: Callable[[], int] = time.time_ns) -> None:
        """Open (creating it and its parent directories if needed) the store at ``path``.

        ``clock`` gives nanoseconds since the epoch; it timestamps the arrival
        of heartbeats, which the watchdog compares with its own clock.
        """
        self.path = Path(path)
        self._clock = clock
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._w = self._connect()
        try:
            self._init_schema()
        except BaseException:
            self._w.close()
            raise
        self._r = self._connect()

    def describe(self) -> str:
        """Storage description for ``StatusReply.db``."""
        return f"sqlite:{self.path}"

    def journal_mode(self) -> str:
        """The journal mode SQLite actually uses ("wal" once opened)."""
        return str(self._read("PRAGMA journal_mode")[0][0])

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves so one batch is
        # exactly one transaction. check_same_thread=False: calls arrive from
        # asyncio.to_thread's pool; the locks serialize use of each connection.
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.execute("PRAGMA journal_mode = WAL")
        # FULL, not NORMAL: in WAL mode NORMAL is safe against corruption but a
        # power loss can roll back the last commits. An Ack tells the agent it
        # may delete those events from its spool, so an acked batch must
        # survive power loss. The cost is one fsync per batch, not per event.
        conn.execute("PRAGMA synchronous = FULL")
        return conn

    def _init_schema(self) -> None:
        version = self._w.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, SCHEMA_VERSION):
            raise RuntimeError(
                f"{self.path} has schema version {version}, this collector knows "
                f"{SCHEMA_VERSION}; use a newer collector or another --db"
            )
        self._w.executescript(_SCHEMA)
        self._w.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._write_lock, _as_storage_error():
            # IMMEDIATE takes the write lock up front, so two collectors on one
            # file wait (busy_timeout) instead of failing half-way through.
            self._w.execute("BEGIN IMMEDIATE")
            try:
                yield self._w
            except BaseException:
                self._w.execute("ROLLBACK")
                raise
            self._w.execute("COMMIT")

    def _read(self, sql: str, args: Sequence[object] = ()) -> list[Any]:
        with self._read_lock, _as_storage_error():
            return self._r.execute(sql, args).fetchall()

    # -- writes ---------------------------------------------------------------

    def store_batch(self, events: Sequence[events_pb2.Event]) -> StoreResult:
        """Store a validated batch (one node and boot_id) in one transaction.

        Idempotent: events already stored on (node, boot_id, seq) are counted
        as duplicates. ``acked_seq`` is the highest seq stored for the boot_id,
        which is what the proto's Ack promises.
        """
        if not events:
            return StoreResult(0, 0, 0)
        node, boot_id = events[0].node, events[0].boot_id
        with self._transaction() as db:
            before = db.total_changes
            db.executemany(_INSERT, [_row(ev) for ev in events])
            stored = db.total_changes - before
            acked_seq = db.execute(
                "SELECT MAX(seq) FROM events WHERE node = ? AND boot_id = ?", (node, boot_id)
            ).fetchone()[0]
            newest = max(time_ns(ev.time) for ev in events)
            self._update_node(db, node, boot_id, newest, int(acked_seq), stored)
            health = _latest_health(events)
            if health is not None:
                self._update_heartbeat(db, health)
        return StoreResult(stored, len(events) - stored, int(acked_seq))

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
        # A spool replaying an older agent run must not make it "latest" again:
        # the run with the newest event wins.
        current_boot, current_latest = row
        if boot_id == current_boot:
            latest = max(current_latest, newest)
        elif newest >= current_latest:
            latest = newest
        else:
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

    def mark_silent(self, event: events_pb2.Event, received_ns: int) -> bool:
        """Store ``event`` (an agent.silent) and flag its node, atomically.

        Skipped (returns False) if the node already is silent or a newer
        heartbeat arrived since the caller looked (``received_ns`` changed).
        """
        with self._transaction() as db:
            flagged = db.execute(
                "UPDATE nodes SET silent = 1 WHERE node = ? AND silent = 0 AND received_ns = ?",
                (event.node, received_ns),
            ).rowcount
            if not flagged:
                return False
            before = db.total_changes
            db.execute(_INSERT, _row(event))
            stored = db.total_changes - before
            db.execute(
                "UPDATE nodes SET events_stored = events_stored + ? WHERE node = ?",
                (stored, event.node),
            )
        return True

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
            "SELECT node, boot_id, last_seq, events_stored, heartbeat_ns, health, silent"
            " FROM nodes ORDER BY node"
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

    def close(self) -> None:
        """Close both connections once any write or read in progress is done."""
        with self._write_lock, self._read_lock:
            self._r.close()
            self._w.close()


@contextmanager
def _as_storage_error() -> Iterator[None]:
    # Callers depend on the Storage interface, not on sqlite3's exceptions.
    try:
        yield
    except sqlite3.Error as err:
        raise StorageError(str(err)) from err


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
) -> collector_pb2.NodeStatus:
    status = collector_pb2.NodeStatus(
        node=node,
        boot_id=boot_id,
        last_seq=last_seq,
        events_stored=events_stored,
        silent=bool(silent),
    )
    if heartbeat_ns is not None:
        status.last_heartbeat.FromNanoseconds(heartbeat_ns)
    if health_blob is not None:
        health = events_pb2.AgentHealth.FromString(health_blob)
        status.kernel_lost = health.kernel_lost
        status.queue_dropped = health.queue_dropped
        status.decode_errors = health.decode_errors
        status.mode = health.mode
        status.sensors.extend(health.sensors)
    return status
