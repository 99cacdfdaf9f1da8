"""ChunkStorage specifics, on real SQLite files; shared behaviour is in test_storage_sqlite.py.

The strongest check is the last one: on random batches (replays, overlaps,
holes, time ties, several nodes and runs) the chunk store answers every
write and query exactly as the row store does.
"""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.storage.base import StoreResult
from collector.storage.chunks import MAX_KEYS_PER_KIND, ChunkStorage
from collector.storage.sqlite import SqliteStorage
from gpuaudit.v1 import collector_pb2
from tests.unit.test_collector_support import FakeClock, gpu_open, health, process_exec


@pytest.fixture
def store(tmp_path):
    s = ChunkStorage(tmp_path / "chunks.db", clock=FakeClock(), run_id="t")
    yield s
    s.close()


def q(**kw):
    return collector_pb2.EventQuery(**kw)


def chunk_rows(store):
    with sqlite3.connect(store.path) as db:
        return db.execute(
            "SELECT node, boot_id, first_seq, last_seq, count, body FROM chunks ORDER BY id"
        ).fetchall()


def test_a_batch_is_one_chunk_whose_body_is_an_event_batch(store):
    events = [gpu_open(s, t_s=s, pid=10 + s % 2) for s in range(1, 6)]
    store.store_batch(events)
    ((node, boot_id, first, last, count, body),) = chunk_rows(store)
    assert (node, boot_id, first, last, count) == ("n1", "b1", 1, 5, 5)
    assert list(collector_pb2.EventBatch.FromString(body).events) == events
    with sqlite3.connect(store.path) as db:
        keys = db.execute("SELECT kind, value FROM chunk_keys ORDER BY kind, value").fetchall()
    assert keys == [(0, "gpu.open"), (1, 10), (1, 11), (2, 1000)]


def test_replay_stores_no_chunk_and_overlap_stores_only_new_events(store):
    store.store_batch([gpu_open(s) for s in (1, 3, 5)])  # holes: not a contiguous chunk
    assert store.store_batch([gpu_open(s) for s in range(1, 7)]) == StoreResult(3, 3, 6)
    assert store.store_batch([gpu_open(s) for s in range(2, 5)]) == StoreResult(0, 3, 6)
    agent_chunks = [r for r in chunk_rows(store) if r[1] == "b1"]  # not the agent.gap ones
    assert [(r[2], r[3], r[4]) for r in agent_chunks] == [(1, 5, 3), (2, 6, 3)]
    # All at one time: storage order breaks the tie, as in the row store.
    assert [e.seq for e in store.query(q(types=["gpu.open"]))] == [1, 3, 5, 2, 4, 6]


def test_a_late_event_inside_a_wide_chunk_is_found(store):
    # Chunk 1..100 holds two events; the late seq 50 is its own chunk. A batch
    # 40..60 must see 50 as stored and the rest as new, whatever chunk holds it.
    store.store_batch([gpu_open(1), gpu_open(100)])
    assert store.store_batch([gpu_open(50)]) == StoreResult(1, 0, 100)
    assert store.store_batch([gpu_open(s) for s in range(40, 61)]) == StoreResult(20, 1, 100)
    assert store.store_batch([gpu_open(s) for s in range(1, 101)]) == StoreResult(77, 23, 100)
    assert store.status().events_stored == 100 + 1  # + the agent.gap of 2..99


def test_own_events_are_single_event_chunks_with_gap_free_seqs(store):
    store.store_batch([health(1)])
    store.store_batch([gpu_open(5)])  # seqs 2..4 missing: one agent.gap
    received = store.heartbeats()[0].received_ns
    silent = store.own.new("agent.silent", "n1")
    assert store.mark_silent(silent, received) is not None
    own = [r for r in chunk_rows(store) if r[1] == store.own.boot_id]
    assert [(r[2], r[3], r[4]) for r in own] == [(1, 1, 1), (2, 2, 1)]
    gap, silent_ev = store.query(q(types=["agent.gap", "agent.silent"]))
    assert (gap.agent_gap.first_seq, gap.agent_gap.last_seq, silent_ev.seq) == (2, 4, 2)


def test_filters_are_exact_on_chunks_with_many_processes(store):
    many = MAX_KEYS_PER_KIND + 10
    store.store_batch([gpu_open(s, pid=1000 + s, uid=s % 3) for s in range(1, many + 1)])
    store.store_batch([gpu_open(1, node="n2", pid=1005, uid=7), health(2, node="n2")])
    assert [(e.node, e.seq) for e in store.query(q(pid=1005))] == [("n1", 5), ("n2", 1)]
    assert len(store.query(q(uid=0, limit=1000))) == many // 3
    assert [e.node for e in store.query(q(uid=7))] == ["n2"]
    assert store.query(q(pid=1005, uid=1, types=["gpu.open"])) == []
    assert [e.seq for e in store.query(q(types=["agent.health"]))] == [2]
    assert store.query(q(pid=999_999)) == []


def test_newest_looks_past_chunks_that_overlap_in_time(store):
    # n1's chunk spans the whole range, so it comes first by max time, yet the
    # chunks inside its span still hold two of the three newest events.
    store.store_batch([gpu_open(1, t_s=0), gpu_open(2, t_s=100)])
    store.store_batch([gpu_open(s, node="n2", t_s=90 + s) for s in range(1, 4)])
    store.store_batch([gpu_open(1, node="n3", t_s=95)])
    got = [(e.node, e.seq) for e in store.query(q(limit=3, newest=True))]
    assert got == [("n2", 3), ("n3", 1), ("n1", 2)]
    got = [(e.node, e.seq) for e in store.query(q(limit=2))]
    assert got == [("n1", 1), ("n2", 1)]


def test_refuses_a_row_store_file(tmp_path):
    path = tmp_path / "events.db"
    SqliteStorage(path).close()
    with pytest.raises(RuntimeError, match="row-store database"):
        ChunkStorage(path)


# -- both stores, same random traffic --------------------------------------------

_event = st.builds(
    lambda kind, t_s, pid, uid: (kind, t_s, pid, uid),
    st.sampled_from(["gpu.open", "process.exec", "agent.health"]),
    st.integers(0, 6),
    st.integers(1, 4),
    st.integers(0, 2),
)
_batch = st.tuples(
    st.sampled_from(["n1", "n2", "n3"]),
    st.sampled_from(["b1", "b2"]),
    st.lists(st.tuples(st.integers(1, 25), _event), min_size=1, max_size=8),
)


def _build(node, boot_id, picks):
    by_seq = dict(picks)  # one event per seq, in increasing seq order
    out = []
    for seq in sorted(by_seq):
        kind, t_s, pid, uid = by_seq[seq]
        if kind == "gpu.open":
            out.append(gpu_open(seq, node, boot_id, t_s, pid=pid, uid=uid))
        elif kind == "process.exec":
            out.append(process_exec(seq, ["/bin/x"], node, boot_id, t_s, pid=pid, uid=uid))
        else:
            out.append(health(seq, node, boot_id, t_s))
    return out


_QUERIES = [
    q(),
    q(limit=3, newest=True),
    q(limit=5),
    q(limit=4, newest=True, nodes=["n1", "n3"]),
    q(types=["gpu.open"], limit=3, newest=True),
    q(pid=2, limit=1000),
    q(uid=1, limit=4, newest=True),
    q(types=["agent.gap"], limit=1000),
]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_batch, min_size=1, max_size=12), st.integers(0, 6))
def test_chunk_store_answers_like_the_row_store(batches, since_s):
    with tempfile.TemporaryDirectory() as tmp:
        rows = SqliteStorage(Path(tmp) / "rows.db", clock=FakeClock(), run_id="r")
        chunks = ChunkStorage(Path(tmp) / "chunks.db", clock=FakeClock(), run_id="r")
        try:
            for node, boot_id, picks in batches:
                events = _build(node, boot_id, picks)
                assert chunks.store_batch(events) == rows.store_batch(events)
            since = q(limit=1000)
            since.since.FromNanoseconds(FakeClock()() + since_s * 1_000_000_000)
            for query in [*_QUERIES, since]:
                assert chunks.query(query) == rows.query(query), query
            got, want = chunks.status(), rows.status()
            got.db = want.db = ""
            assert got == want
        finally:
            rows.close()
            chunks.close()


def test_each_layout_refuses_the_others_file_and_says_which_flag(tmp_path):
    from collector.storage.sqlite import SqliteStorage

    chunk_file, row_file = tmp_path / "c.db", tmp_path / "r.db"
    ChunkStorage(chunk_file).close()
    SqliteStorage(row_file).close()
    with pytest.raises(RuntimeError, match="--store chunks"):
        SqliteStorage(chunk_file)
    with pytest.raises(RuntimeError, match="--store rows"):
        ChunkStorage(row_file)
