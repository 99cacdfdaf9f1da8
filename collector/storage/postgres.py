"""PostgreSQL event store: the Storage interface for several collectors on one database.

Same tables and answers as the SQLite row store (:mod:`collector.storage.sqlite`),
with what sharing the database among collector processes needs:

* **Dedup without reading first**: ``INSERT .. ON CONFLICT (node, boot_id,
  seq) DO NOTHING RETURNING seq`` stores exactly the events not stored yet,
  whichever collector got them first.
* **One node's stream in order**: a transaction locks the ``nodes`` rows of
  the nodes it writes (``SELECT .. FOR UPDATE``, in node-name order so two
  collectors' groups never deadlock) before it looks at the highest seq
  stored. Two collectors storing batches of the same node therefore take
  turns, and the gap detection of one sees what the other committed.
* **Own events**: each collector run has its own boot_id
  (``collector-<run id>``), so the gap-free seq of its own stream never
  competes with another collector's.

Driver: psycopg 3 (the maintained PostgreSQL adapter, binary wheels with
libpq); one connection writes, one reads, like the SQLite store.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from collector.integrity.checkpoint import Checkpoint, Head
from collector.integrity.keys import CollectorKey
from collector.storage import schema
from collector.storage.base import (
    DEFAULT_QUERY_LIMIT,
    MAX_QUERY_LIMIT,
    Heartbeat,
    StorageError,
    StoreResult,
)
from collector.storage.batch import ReceivedBatch, bodies_of
from collector.storage.common import (
    get_cursor,
    latest_after,
    latest_health,
    own_counts,
    pyformat,
    query_findings,
    set_cursor,
    time_ns,
    upsert_findings,
)
from collector.storage.gaps import gaps_in
from collector.storage.manifests import MANIFEST_TABLES, POSTGRES_TYPES, ManifestWriter
from collector.storage.own import OwnEvents
from collector.storage.retention import (
    PRUNE_BATCH,
    UNMANIFESTED_BEFORE,
    Pruned,
    chain_bases,
    prune_batch,
)
from collector.storage.sqlite import _node_status as node_status
from gpuaudit.v1 import collector_pb2, events_pb2

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2

# The row store's findings and cursors tables (schema._V3), in PostgreSQL types.
_FINDINGS_TABLES = schema._V3.replace("BLOB", "BYTEA").replace("INTEGER", "BIGINT")

# Held from a transaction's first event insert to its commit, so event ids are
# allocated in commit order even with several collectors writing: a follower
# reading "id > position" can never miss a row committed later with a smaller
# id. Only the inserts are serialized; decoding, validation and dedup are not.
_INSERT_LOCK = 0x67707562  # "gpub"
# Session lock of the one findings follower among several collectors.
_FOLLOWER_LOCK = 0x67707563  # "gpuc"

_SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS gpuaudit_meta (
    key   TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id      BIGSERIAL PRIMARY KEY,
    node    TEXT   NOT NULL,
    boot_id TEXT   NOT NULL,
    seq     BIGINT NOT NULL,
    type    TEXT   NOT NULL,
    time_ns BIGINT NOT NULL,
    pid     BIGINT,
    uid     BIGINT,
    body    BYTEA  NOT NULL,
    UNIQUE (node, boot_id, seq)
);
CREATE INDEX IF NOT EXISTS events_time      ON events (time_ns, id);
CREATE INDEX IF NOT EXISTS events_type_time ON events (type, time_ns);
CREATE INDEX IF NOT EXISTS events_node_time ON events (node, time_ns);
CREATE INDEX IF NOT EXISTS events_pid_time  ON events (pid, time_ns);
CREATE INDEX IF NOT EXISTS events_uid_time  ON events (uid, time_ns);
CREATE TABLE IF NOT EXISTS nodes (
    node           TEXT    PRIMARY KEY,
    boot_id        TEXT    NOT NULL,
    latest_ns      BIGINT  NOT NULL,
    last_seq       BIGINT  NOT NULL,
    events_stored  BIGINT  NOT NULL,
    heartbeat_ns   BIGINT,
    received_ns    BIGINT,
    interval_s     INTEGER NOT NULL DEFAULT 0,
    health         BYTEA,
    silent         INTEGER NOT NULL DEFAULT 0,
    gaps           BIGINT  NOT NULL DEFAULT 0,
    missing_events BIGINT  NOT NULL DEFAULT 0,
    rejected       BIGINT  NOT NULL DEFAULT 0
);
"""

# Every collector starting on an empty database runs this at once: the
# advisory lock makes the CREATEs of one wait for the other's.
_SCHEMA_LOCK = 0x67707561  # "gpua"

_INSERT = (
    "INSERT INTO events (node, boot_id, seq, type, time_ns, pid, uid, body)"
    " SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::text[], %s::bigint[],"
    " %s::bigint[], %s::bigint[], %s::bytea[])"
    " ON CONFLICT (node, boot_id, seq) DO NOTHING RETURNING seq"
)
_MAX_SEQ = "SELECT MAX(seq) FROM events WHERE node = %s AND boot_id = %s"
# common.COUNT_OWN, with the column references PostgreSQL wants qualified
_COUNT_OWN = """
INSERT INTO nodes
    (node, boot_id, latest_ns, last_seq, events_stored, gaps, missing_events, rejected)
VALUES (%s, '', 0, 0, %s, %s, %s, %s)
ON CONFLICT (node) DO UPDATE SET
    events_stored  = nodes.events_stored  + excluded.events_stored,
    gaps           = nodes.gaps           + excluded.gaps,
    missing_events = nodes.missing_events + excluded.missing_events,
    rejected       = nodes.rejected       + excluded.rejected
"""


class PostgresStorage:
    """The :class:`~collector.storage.base.Storage` on a PostgreSQL database (``dsn``)."""

    def __init__(self, dsn: str, clock: Callable[[], int] = time.time_ns,
                 run_id: str | None = None, key: CollectorKey | None = None) -> None:
        import psycopg  # imported here: SQLite-only collectors need no driver

        self._psycopg = psycopg
        self.dsn = dsn
        self._clock = clock
        self._own = OwnEvents(run_id, clock)
        self._manifests = ManifestWriter(key, clock, sql=pyformat)
        self.on_stored: list[Callable[[list[events_pb2.Event]], None]] = []  # see SqliteStorage
        self._fresh: list[events_pb2.Event] = []
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()
        try:
            # autocommit + transaction(): every write is exactly one explicit transaction
            self._w = psycopg.connect(dsn, autocommit=True)
            self._r = psycopg.connect(dsn, autocommit=True)
        except psycopg.Error as err:
            raise RuntimeError(f"cannot connect to PostgreSQL ({_safe_dsn(dsn)}): {err}") from None
        self._init_schema()

    def _init_schema(self) -> None:
        with self._transaction() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            cur.execute(_SCHEMA_V1)
            cur.execute(MANIFEST_TABLES.format(**POSTGRES_TYPES))
            cur.execute(_FINDINGS_TABLES)
            cur.execute("SELECT value FROM gpuaudit_meta WHERE key = 'schema_version'")
            row = cur.fetchone()
            if row is None or row[0] < SCHEMA_VERSION:  # every step above is idempotent
                cur.execute("INSERT INTO gpuaudit_meta VALUES ('schema_version', %s)"
                            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                            (SCHEMA_VERSION,))
            elif row[0] > SCHEMA_VERSION:
                raise RuntimeError(
                    f"PostgreSQL database {_safe_dsn(self.dsn)} has schema version {row[0]}, "
                    f"this collector knows {SCHEMA_VERSION}; use a newer collector")

    @property
    def own(self) -> OwnEvents:
        return self._own

    def describe(self) -> str:
        return f"postgresql:{_safe_dsn(self.dsn)}"

    @contextmanager
    def _transaction(self) -> Iterator[Any]:
        with self._write_lock:
            self._fresh = []
            try:
                with self._errors(), self._w.transaction(), self._w.cursor() as cur:
                    yield cur
            except BaseException:
                self._manifests.forget_cache()
                raise
            for listener in self.on_stored:
                try:
                    listener(self._fresh)
                except Exception:  # an export's bug must not fail a committed ingest
                    log.exception("on_stored listener %r failed", listener)

    @contextmanager
    def _reading(self) -> Iterator[Any]:
        with self._read_lock, self._errors(), self._r.cursor() as cur:
            yield cur

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except self._psycopg.Error as err:
            raise StorageError(str(err).strip()) from err

    # -- writes -------------------------------------------------------------

    def store_batches(self, batches: Sequence[Sequence[events_pb2.Event]]) -> list[StoreResult]:
        with self._transaction() as cur:
            self._lock_nodes(cur, sorted({b[0].node for b in batches if b}))
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_INSERT_LOCK,))
            return [self._store_one(cur, events) for events in batches]

    def store_batch(self, events: Sequence[events_pb2.Event]) -> StoreResult:
        return self.store_batches([events])[0]

    def _lock_nodes(self, cur: Any, nodes: list[str]) -> None:
        """Create missing node rows, then lock them all, in name order (no deadlocks)."""
        if not nodes:
            return
        cur.execute(
            "INSERT INTO nodes (node, boot_id, latest_ns, last_seq, events_stored)"
            " SELECT unnest(%s::text[]), '', 0, 0, 0 ON CONFLICT (node) DO NOTHING", (nodes,))
        cur.execute("SELECT node FROM nodes WHERE node = ANY(%s) ORDER BY node FOR UPDATE",
                    (nodes,))

    def _store_one(self, cur: Any, events: Sequence[events_pb2.Event]) -> StoreResult:
        if not events:
            return StoreResult(0, 0, 0)
        first = events[0]
        cur.execute(_MAX_SEQ, (first.node, first.boot_id))
        prev = cur.fetchone()[0] or 0
        bodies = bodies_of(events)
        cols: list[list[Any]] = [[] for _ in range(8)]
        for ev, body in zip(events, bodies, strict=True):
            for col, value in zip(cols, _row(ev, body), strict=True):
                col.append(value)
        cur.execute(_INSERT, cols)
        stored = {seq for (seq,) in cur.fetchall()}
        new = [ev for ev in events if ev.seq in stored]
        self._fresh.extend(new)
        signature = events.signature if isinstance(events, ReceivedBatch) else None
        cert = events.cert_der if isinstance(events, ReceivedBatch) else b""
        self._manifests.record_batch(cur, events, bodies, signature, cert)
        acked = max(prev, events[-1].seq)
        if new:
            newest = max(time_ns(ev.time) for ev in new)
            self._update_node(cur, first.node, first.boot_id, newest, acked, len(new))
            health = latest_health(new)
            if health is not None:
                self._update_heartbeat(cur, health)
            for gap in gaps_in(prev, new, self._own):
                self._insert_own(cur, gap)
        return StoreResult(len(new), len(events) - len(new), acked)

    def _update_node(self, cur: Any, node: str, boot_id: str, newest: int, acked: int,
                     stored: int) -> None:
        cur.execute("SELECT boot_id, latest_ns FROM nodes WHERE node = %s", (node,))
        current_boot, current_latest = cur.fetchone()
        cur.execute("UPDATE nodes SET events_stored = events_stored + %s WHERE node = %s",
                    (stored, node))
        # the row _lock_nodes made for a new node has boot_id '' and latest_ns 0
        latest = latest_after(current_boot, current_latest, boot_id, newest)
        if latest is None:
            return
        cur.execute("UPDATE nodes SET boot_id = %s, latest_ns = %s, last_seq = %s WHERE node = %s",
                    (boot_id, latest, acked, node))

    def _update_heartbeat(self, cur: Any, health: events_pb2.Event) -> None:
        cur.execute(
            "UPDATE nodes SET heartbeat_ns = %s, received_ns = %s, interval_s = %s, health = %s,"
            " silent = 0 WHERE node = %s AND (heartbeat_ns IS NULL OR heartbeat_ns < %s)",
            (time_ns(health.time), self._clock(), health.agent_health.interval_s,
             health.agent_health.SerializeToString(), health.node, time_ns(health.time)))

    def _insert_own(self, cur: Any, event: events_pb2.Event) -> events_pb2.Event:
        cur.execute(_MAX_SEQ, (event.node, event.boot_id))
        event.seq = (cur.fetchone()[0] or 0) + 1
        body = event.SerializeToString()
        self._fresh.append(event)
        cur.execute("INSERT INTO events (node, boot_id, seq, type, time_ns, pid, uid, body)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)", _row(event, body))
        self._manifests.record_own(cur, event.node, event.boot_id, event.seq, body)
        cur.execute(_COUNT_OWN, (event.node, 1, *own_counts(event)))
        return event

    def store_own(self, event: events_pb2.Event) -> events_pb2.Event:
        with self._transaction() as cur:
            self._lock_nodes(cur, [event.node])
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_INSERT_LOCK,))
            return self._insert_own(cur, event)

    def mark_silent(self, event: events_pb2.Event, received_ns: int) -> events_pb2.Event | None:
        with self._transaction() as cur:
            cur.execute(
                "UPDATE nodes SET silent = 1 WHERE node = %s AND silent = 0 AND received_ns = %s",
                (event.node, received_ns))
            if not cur.rowcount:
                return None
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_INSERT_LOCK,))
            return self._insert_own(cur, event)

    # -- reads --------------------------------------------------------------

    def query(self, query: collector_pb2.EventQuery) -> list[events_pb2.Event]:
        where, args = _where(query)
        limit = min(query.limit or DEFAULT_QUERY_LIMIT, MAX_QUERY_LIMIT)
        order = "DESC" if query.newest else "ASC"
        with self._reading() as cur:
            cur.execute(f"SELECT body FROM events{where} ORDER BY time_ns {order}, id {order}"
                        " LIMIT %s", [*args, limit])
            rows = cur.fetchall()
        if query.newest:
            rows.reverse()
        return [events_pb2.Event.FromString(bytes(body)) for (body,) in rows]

    def status(self) -> collector_pb2.StatusReply:
        with self._reading() as cur:
            cur.execute(
                "SELECT node, boot_id, last_seq, events_stored, heartbeat_ns, health, silent,"
                " gaps, missing_events, rejected FROM nodes ORDER BY node")
            rows = cur.fetchall()
        reply = collector_pb2.StatusReply(db=self.describe())
        for node, boot, last, stored, hb, health, silent, gaps, missing, rejected in rows:
            blob = bytes(health) if health is not None else None
            reply.nodes.append(node_status(node, boot, last, stored, hb, blob, silent, gaps,
                                           missing, rejected))
        reply.events_stored = sum(n.events_stored for n in reply.nodes)
        return reply

    def heartbeats(self) -> list[Heartbeat]:
        with self._reading() as cur:
            cur.execute("SELECT node, heartbeat_ns, received_ns, interval_s, silent FROM nodes"
                        " WHERE heartbeat_ns IS NOT NULL ORDER BY node")
            rows = cur.fetchall()
        return [Heartbeat(n, hb, rx, iv, bool(s)) for n, hb, rx, iv, s in rows]

    # -- tamper evidence (collector.integrity) ---------------------------------

    def chain_heads(self) -> dict[str, Head]:
        """Each node's newest manifest id and chain value."""
        with self._reading() as cur:
            cur.execute(_CHAIN_HEADS)
            return {node: Head(mid, bytes(chain)) for node, mid, chain in cur.fetchall()}

    def store_checkpoint(self, checkpoint: Checkpoint) -> None:
        with self._transaction() as cur:
            cur.execute(_STORE_CHECKPOINT,
                        (checkpoint.time_ns, checkpoint.body, checkpoint.signature))

    # -- followers (collector.findings) -----------------------------------------

    def events_after(self, position: int, limit: int, types: Collection[str] | None = None
                     ) -> tuple[list[events_pb2.Event], int]:
        """See SqliteStorage.events_after: positions are event ids, in commit order."""
        wanted = "TRUE" if types is None else "type = ANY(%s)"
        args: list[Any] = [] if types is None else [list(types)]
        with self._reading() as cur:
            cur.execute(f"SELECT id, CASE WHEN {wanted} THEN body END FROM events"
                        " WHERE id > %s ORDER BY id LIMIT %s", [*args, position, limit])
            rows = cur.fetchall()
        events = [events_pb2.Event.FromString(bytes(b)) for _, b in rows if b is not None]
        return events, (rows[-1][0] if rows else position)

    def cursor(self, name: str) -> int:
        with self._reading() as cur:
            return get_cursor(_Qmark(cur), name)

    def save_findings(self, findings: Sequence[collector_pb2.Finding], cursor: str,
                      position: int) -> list[collector_pb2.Finding]:
        with self._transaction() as cur:
            merged = upsert_findings(_Qmark(cur), findings)
            set_cursor(_Qmark(cur), cursor, position)
            return merged

    def findings(self, query: collector_pb2.FindingQuery) -> list[collector_pb2.Finding]:
        with self._reading() as cur:
            return query_findings(_Qmark(cur), query)

    def try_lead(self) -> bool:
        """Become the one findings follower of this database (held until close)."""
        with self._reading() as cur:
            cur.execute("SELECT pg_try_advisory_lock(%s)", (_FOLLOWER_LOCK,))
            return bool(cur.fetchone()[0])

    def chain_bases(self) -> dict[str, Head]:
        with self._reading() as cur:
            return chain_bases(cur, pyformat)

    def prune(self, cut_ns: int, limit: int = PRUNE_BATCH) -> Pruned:
        with self._transaction() as cur:
            pruned = prune_batch(cur, pyformat, cut_ns, _delete_events, limit)
            if pruned.manifests < limit:
                pruned.events += cur.execute(pyformat(UNMANIFESTED_BEFORE), (cut_ns,)).rowcount
            return pruned

    def close(self) -> None:
        with self._write_lock, self._read_lock:
            self._r.close()
            self._w.close()


# Each node's newest manifest and its chain value, read in one statement (one snapshot).
_CHAIN_HEADS = (
    "SELECT m.node, m.id, m.chain FROM manifests m JOIN"
    " (SELECT node, MAX(id) AS id FROM manifests GROUP BY node) newest ON m.id = newest.id"
)
_STORE_CHECKPOINT = "INSERT INTO checkpoints (time_ns, body, signature) VALUES (%s, %s, %s)"


class _Qmark:
    """A psycopg cursor taking the ``?`` placeholders of the SQL shared with SQLite."""

    def __init__(self, cur: Any) -> None:
        self._cur = cur

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Any:
        return self._cur.execute(pyformat(sql), args)


def _delete_events(cur: Any, node: str, boot_id: str, first: int, last: int) -> int:
    return int(cur.execute("DELETE FROM events WHERE node = %s AND boot_id = %s AND seq"
                           " BETWEEN %s AND %s", (node, boot_id, first, last)).rowcount)


def _row(ev: events_pb2.Event, body: bytes) -> tuple[Any, ...]:
    has_process = ev.HasField("process")
    return (ev.node, ev.boot_id, ev.seq, ev.type, time_ns(ev.time),
            ev.process.pid if has_process else None, ev.process.uid if has_process else None,
            body)


def _where(query: collector_pb2.EventQuery) -> tuple[str, list[object]]:
    clauses: list[str] = []
    args: list[object] = []
    for column, values in (("type", query.types), ("node", query.nodes)):
        if values:
            clauses.append(f"{column} = ANY(%s)")
            args.append(list(values))
    for column in ("pid", "uid"):
        if query.HasField(column):
            clauses.append(f"{column} = %s")
            args.append(getattr(query, column))
    if query.HasField("since"):
        clauses.append("time_ns >= %s")
        args.append(time_ns(query.since))
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), args


def _safe_dsn(dsn: str) -> str:
    """``dsn`` without its password, for messages and StatusReply.db."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    try:
        parts = conninfo_to_dict(dsn)
    except Exception:
        return "<unparsable DSN>"
    parts.pop("password", None)
    return make_conninfo(**{k: str(v) for k, v in parts.items()})
