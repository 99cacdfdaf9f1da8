"""Both SQLite stores (rows: SqliteStorage, chunks: ChunkStorage) on a real temporary file.

Every test here runs against both: they must behave the same. Chunk-only
behaviour is tested in test_storage_chunks.py.
"""

from __future__ import annotations

import sqlite3

import pytest

from collector.storage.base import DEFAULT_QUERY_LIMIT, MAX_QUERY_LIMIT, Storage, StoreResult
from collector.storage.chunks import CHUNK_SCHEMA_VERSION, ChunkStorage
from collector.storage.schema import SCHEMA_VERSION
from collector.storage.sqlite import SqliteStorage
from gpuaudit.v1 import collector_pb2
from tests.unit.test_collector_support import (
    S_NS,
    T0_NS,
    FakeClock,
    gpu_open,
    health,
    process_exec,
    process_exit,
)


@pytest.fixture
def clock():
    return FakeClock()


# (class, StatusReply.db prefix, PRAGMA user_version of a fresh file)
KINDS = {
    "rows": (SqliteStorage, "sqlite", SCHEMA_VERSION),
    "chunks": (ChunkStorage, "sqlite-chunks", CHUNK_SCHEMA_VERSION),
}


@pytest.fixture(params=sorted(KINDS))
def kind(request):
    return KINDS[request.param]


@pytest.fixture
def store(tmp_path, clock, kind):
    s = kind[0](tmp_path / "sub" / "dir" / "events.db", clock=clock)
    yield s
    s.close()


def seqs(events):
    return [(e.node, e.boot_id, e.seq) for e in events]


def q(**kw):
    return collector_pb2.EventQuery(**kw)


def test_is_a_storage_and_creates_parent_dirs(store, tmp_path, kind):
    assert isinstance(store, kind[0])
    s: Storage = store  # the Protocol is satisfied (checked by mypy on collector/)
    assert (tmp_path / "sub" / "dir" / "events.db").exists()
    assert s.status().db == f"{kind[1]}:{tmp_path / 'sub' / 'dir' / 'events.db'}"


def test_wal_mode_is_on_and_persistent(store, kind):
    assert store.journal_mode() == "wal"
    # A fresh connection sees WAL too: the mode is recorded in the file.
    with sqlite3.connect(store.path) as other:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert other.execute("PRAGMA user_version").fetchone()[0] == kind[2]


def test_same_batch_twice_is_idempotent(store):
    events = [gpu_open(1), gpu_open(2), gpu_open(3)]
    assert store.store_batch(events) == StoreResult(stored=3, duplicates=0, acked_seq=3)
    assert store.store_batch(events) == StoreResult(stored=0, duplicates=3, acked_seq=3)
    assert len(store.query(q())) == 3
    assert store.status().events_stored == 3


def test_overlapping_batch_stores_only_new_events(store):
    store.store_batch([gpu_open(1), gpu_open(2), gpu_open(3)])
    result = store.store_batch([gpu_open(s) for s in (2, 3, 4, 5)])
    assert result == StoreResult(stored=2, duplicates=2, acked_seq=5)


def test_acked_seq_is_per_boot_id(store):
    store.store_batch([gpu_open(s) for s in range(1, 8)])
    assert store.store_batch([gpu_open(1, boot_id="b2", t_s=10)]).acked_seq == 1
    # The same seq on another node is a different event.
    assert store.store_batch([gpu_open(1, node="n2")]) == StoreResult(1, 0, 1)
    node = {n.node: n for n in store.status().nodes}["n1"]
    assert (node.boot_id, node.last_seq, node.events_stored) == ("b2", 1, 8)


def test_replayed_older_run_does_not_become_latest(store):
    store.store_batch([gpu_open(1, boot_id="new", t_s=100)])
    assert store.store_batch([gpu_open(9, boot_id="old", t_s=5)]).acked_seq == 9
    node = store.status().nodes[0]
    # events_stored counts the agent.gap (seqs 1-8 of "old") raised too.
    assert (node.boot_id, node.last_seq, node.events_stored, node.gaps) == ("new", 1, 3, 1)


def test_query_filters(store):
    store.store_batch([
        gpu_open(1, t_s=1, pid=10, uid=1000),
        process_exec(2, ["/usr/bin/nvidia-smi", "-L"], t_s=2, pid=11, uid=0),
        process_exit(3, t_s=3, pid=11, uid=0),
        health(4, t_s=4),
    ])  # fmt: skip
    store.store_batch([gpu_open(1, node="n2", boot_id="c1", t_s=5, pid=10, uid=1001)])

    assert seqs(store.query(q())) == [
        ("n1", "b1", 1), ("n1", "b1", 2), ("n1", "b1", 3), ("n1", "b1", 4), ("n2", "c1", 1),
    ]  # fmt: skip
    assert [e.type for e in store.query(q(types=["process.exec", "process.exit"]))] == [
        "process.exec", "process.exit",
    ]  # fmt: skip
    assert seqs(store.query(q(nodes=["n2"]))) == [("n2", "c1", 1)]
    assert seqs(store.query(q(pid=10))) == [("n1", "b1", 1), ("n2", "c1", 1)]
    assert seqs(store.query(q(uid=0))) == [("n1", "b1", 2), ("n1", "b1", 3)]
    # pid 0 is a real filter value (optional field), and matches nothing here:
    # health events have no process, so they match no pid filter at all.
    assert store.query(q(pid=0)) == []
    since = q()
    since.since.FromNanoseconds(T0_NS + 3 * S_NS)
    assert seqs(store.query(since)) == [("n1", "b1", 3), ("n1", "b1", 4), ("n2", "c1", 1)]
    combined = q(types=["gpu.open"], nodes=["n1", "n2"], uid=1001)
    assert seqs(store.query(combined)) == [("n2", "c1", 1)]


def test_query_returns_the_stored_event_unchanged(store):
    event = process_exec(1, ["/bin/sh", "-c", "echo 'hi'"])
    store.store_batch([event])
    assert store.query(q()) == [event]


def test_limit_default_and_newest(store):
    store.store_batch([gpu_open(s, t_s=s) for s in range(1, 151)])
    assert [e.seq for e in store.query(q())] == list(range(1, DEFAULT_QUERY_LIMIT + 1))
    assert [e.seq for e in store.query(q(limit=3))] == [1, 2, 3]
    # The newest three, still oldest first.
    assert [e.seq for e in store.query(q(limit=3, newest=True))] == [148, 149, 150]
    assert [e.seq for e in store.query(q(newest=True))] == list(range(51, 151))


def test_limit_is_clamped_to_the_hard_maximum(store):
    store.store_batch([gpu_open(s, t_s=s / 1000) for s in range(1, MAX_QUERY_LIMIT + 6)])
    assert len(store.query(q(limit=MAX_QUERY_LIMIT + 5))) == MAX_QUERY_LIMIT


def test_query_orders_by_event_time_not_arrival(store):
    store.store_batch([gpu_open(1, node="late", boot_id="x", t_s=50)])
    store.store_batch([gpu_open(1, node="early", boot_id="y", t_s=10)])
    assert [e.node for e in store.query(q())] == ["early", "late"]


def test_status_takes_counters_from_the_latest_health(store, clock):
    store.store_batch([health(1, t_s=10, lost=(1, 2, 3), interval_s=7)])
    store.store_batch([gpu_open(2, t_s=11), health(3, t_s=20, lost=(4, 5, 6), mode="procfs")])
    store.store_batch([health(1, node="n2", boot_id="c", t_s=1)])
    reply = store.status()
    assert [n.node for n in reply.nodes] == ["n1", "n2"]
    n1 = reply.nodes[0]
    assert (n1.kernel_lost, n1.queue_dropped, n1.decode_errors) == (4, 5, 6)
    assert n1.mode == "procfs"
    assert n1.last_heartbeat.ToNanoseconds() == T0_NS + 20 * S_NS
    assert [(s.name, s.state, s.detail) for s in n1.sensors] == [
        ("gpu_open", "ok", ""), ("exec", "degraded", "no tracepoint"),
    ]  # fmt: skip
    assert (n1.last_seq, n1.events_stored, n1.silent) == (3, 3, False)
    assert reply.events_stored == 4


def test_replayed_old_health_does_not_overwrite_counters(store):
    store.store_batch([health(5, t_s=50, lost=(9, 9, 9))])
    store.store_batch([health(2, t_s=20, lost=(1, 1, 1))])
    n1 = store.status().nodes[0]
    assert n1.kernel_lost == 9
    assert n1.last_heartbeat.ToNanoseconds() == T0_NS + 50 * S_NS


def test_node_without_heartbeat(store):
    store.store_batch([gpu_open(1)])
    node = store.status().nodes[0]
    assert not node.HasField("last_heartbeat")
    assert (node.mode, list(node.sensors), node.kernel_lost) == ("", [], 0)
    assert store.heartbeats() == []


def test_heartbeats_carry_arrival_time_from_the_clock(store, clock):
    store.store_batch([health(1, t_s=-100, interval_s=2)])  # agent clock is behind
    (beat,) = store.heartbeats()
    assert beat.node == "n1"
    assert beat.last_heartbeat_ns == T0_NS - 100 * S_NS
    assert (beat.received_ns, beat.interval_s, beat.silent) == (clock(), 2, False)


def _silent_event(store, node="n1"):
    ev = store.own.new("agent.silent", node)
    ev.agent_silent.silent_for_s = 60
    return ev


def test_mark_silent_stores_once_and_heartbeat_clears(store, clock):
    store.store_batch([health(1)])
    received = store.heartbeats()[0].received_ns
    stored = store.mark_silent(_silent_event(store), received)
    assert stored is not None and (stored.boot_id, stored.seq) == (store.own.boot_id, 1)
    assert store.mark_silent(_silent_event(store), received) is None  # already silent
    node = store.status().nodes[0]
    assert node.silent and node.events_stored == 2
    assert node.boot_id == "b1"  # the collector's own stream does not become "latest"
    assert [e.type for e in store.query(q(types=["agent.silent"]))] == ["agent.silent"]

    clock.advance(5)
    store.store_batch([health(2, t_s=30)])
    assert store.status().nodes[0].silent is False
    assert store.heartbeats()[0].silent is False


def test_mark_silent_loses_to_a_fresh_heartbeat(store, clock):
    store.store_batch([health(1)])
    seen = store.heartbeats()[0].received_ns
    clock.advance(1)
    store.store_batch([health(2, t_s=1)])  # arrives after the watchdog looked
    assert store.mark_silent(_silent_event(store), seen) is None
    assert store.query(q(types=["agent.silent"])) == []
    assert store.status().nodes[0].silent is False


def test_data_survives_reopen(tmp_path, kind):
    path = tmp_path / "events.db"
    first = kind[0](path)
    first.store_batch([gpu_open(1), health(2)])
    first.close()
    again = kind[0](path)
    try:
        assert again.store_batch([gpu_open(1)]) == StoreResult(0, 1, 2)
        assert again.status().nodes[0].events_stored == 2
    finally:
        again.close()


def test_refuses_a_database_from_a_newer_schema(tmp_path, kind):
    path = tmp_path / "events.db"
    newer = kind[2] + 97
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {newer}")
    with pytest.raises(RuntimeError, match=f"schema version {newer}"):
        kind[0](path)
