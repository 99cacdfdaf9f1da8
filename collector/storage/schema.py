"""The SQLite schema of the event store and its upgrades.

``PRAGMA user_version`` records the schema version. A newer collector upgrades
an older file in place (each step one small DDL script, applied in one
transaction); an older collector refuses a newer file.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from collector.storage.manifests import MANIFEST_TABLES, SQLITE_TYPES

SCHEMA_VERSION = 4

CHUNK_VERSION_BASE = 1000
"""Chunk-store files (:mod:`collector.storage.chunks`) count ``user_version`` from here."""

# Every query filter has an index that also orders by time, so a filtered
# query walks the index in time order instead of sorting the table. Each index
# costs about 1 us per stored event (measured: 8.7 us/event with all five, 4.2
# without); they stay because `gpuaudit events --type/--node/--pid/--uid` on a
# store of millions of events must not scan the table.
_V1 = """
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
    boot_id       TEXT    NOT NULL,    -- latest agent run (by event time); '' before any
    latest_ns     INTEGER NOT NULL,    -- newest event time seen from boot_id
    last_seq      INTEGER NOT NULL,    -- highest seq stored for boot_id
    events_stored INTEGER NOT NULL,    -- all events stored for the node (own events too)
    heartbeat_ns  INTEGER,             -- event time of the latest agent.health
    received_ns   INTEGER,             -- collector clock when it was stored
    interval_s    INTEGER NOT NULL DEFAULT 0,
    health        BLOB,                -- serialized AgentHealth of that heartbeat
    silent        INTEGER NOT NULL DEFAULT 0
);
"""

# Version 2 (issue #6): counters of the agent.gap / agent.rejected events the
# collector stored about each node, kept in the same transaction as the events.
_V2 = """
ALTER TABLE nodes ADD COLUMN gaps           INTEGER NOT NULL DEFAULT 0;
ALTER TABLE nodes ADD COLUMN missing_events INTEGER NOT NULL DEFAULT 0;
ALTER TABLE nodes ADD COLUMN rejected       INTEGER NOT NULL DEFAULT 0;
"""

# Version 3 (issue #7): findings the rules raise (collector.findings), one row
# per (rule, key) with its count, and the follower's cursor: the position in
# the event table (rows: events.id; chunks: chunks.id) up to which events were
# evaluated, committed in the same transaction as the findings they raised.
_V3 = """
CREATE TABLE IF NOT EXISTS findings (
    id       TEXT    PRIMARY KEY,   -- Finding.id (hex of SHA-256 of rule and key)
    rule     TEXT    NOT NULL,
    key      TEXT    NOT NULL,
    severity INTEGER NOT NULL,      -- 0 info .. 4 critical, for --severity
    first_ns INTEGER NOT NULL,
    last_ns  INTEGER NOT NULL,      -- event time of the latest occurrence
    count    INTEGER NOT NULL,
    body     BLOB    NOT NULL       -- the serialized gpuaudit.v1.Finding
);
CREATE INDEX IF NOT EXISTS findings_last ON findings (last_ns);
CREATE TABLE IF NOT EXISTS cursors (
    name     TEXT    PRIMARY KEY,   -- e.g. "findings"
    position INTEGER NOT NULL       -- last event position (row or chunk id) done
);
"""

# Version 4 (issue #8): batch manifests, their per-node chain, the keys that
# signed them, and the collector's signed checkpoints (collector.integrity).
_V4 = MANIFEST_TABLES.format(**SQLITE_TYPES)

_UPGRADES = {1: _V1, 2: _V2, 3: _V3, 4: _V4}
"""Script that takes a file from version N-1 to N (0: empty file)."""


def init_schema(db: sqlite3.Connection, path: Path) -> None:
    """Create or upgrade the schema on ``db`` (autocommit connection) to SCHEMA_VERSION.

    Raises RuntimeError naming the file when it is a chunk-store file or newer
    than this collector.
    """
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version >= CHUNK_VERSION_BASE:
        raise RuntimeError(
            f"{path} is a chunk-store database (schema version {version}), not a row store;"
            " start the collector with --store chunks or use another --db"
        )
    if version > SCHEMA_VERSION:
        raise RuntimeError(
            f"{path} has schema version {version}, this collector knows "
            f"{SCHEMA_VERSION}; use a newer collector or another --db"
        )
    upgrade(db, _UPGRADES, version, SCHEMA_VERSION)


def upgrade(db: sqlite3.Connection, scripts: dict[int, str], version: int, target: int) -> None:
    """Take ``db`` from ``version`` to ``target`` by ``scripts[N]`` (N-1 to N), step by step.

    Used by both layouts (rows here, chunks in :mod:`collector.storage.chunks`).
    """
    for step in range(version + 1, target + 1):
        # executescript commits first; BEGIN..COMMIT inside it makes the step
        # and its version bump one transaction.
        db.executescript(f"BEGIN; {scripts[step]} PRAGMA user_version = {step}; COMMIT;")
