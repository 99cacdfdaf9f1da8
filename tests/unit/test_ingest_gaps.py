"""agent.gap raised by the store, in the transaction that reveals it (real SQLite)."""

from __future__ import annotations

import pytest

from collector.storage.sqlite import SqliteStorage
from collector.watchdog import Watchdog
from gpuaudit.v1 import collector_pb2, events_pb2
from tests.unit.test_collector_support import T0_NS, FakeClock, gpu_open, health


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def store(tmp_path, clock):
    s = SqliteStorage(tmp_path / "events.db", clock=clock, run_id="run1")
    yield s
    s.close()


def loss(seq, reason="spool_full", count=0, first=0, last=0, lost_boot="b1", node="n1"):
    ev = events_pb2.Event(type="agent.loss", node=node, boot_id="b1", seq=seq)
    ev.time.FromNanoseconds(T0_NS)
    ev.agent_loss.reason, ev.agent_loss.count, ev.agent_loss.total = reason, count, count
    ev.agent_loss.lost_boot_id, ev.agent_loss.first_seq, ev.agent_loss.last_seq = (
        lost_boot, first, last,
    )  # fmt: skip
    return ev


def gaps(store):
    return store.query(collector_pb2.EventQuery(types=["agent.gap"]))


def spans(store):
    return [(g.agent_gap.cause, g.agent_gap.first_seq, g.agent_gap.last_seq, g.agent_gap.count)
            for g in gaps(store)]  # fmt: skip


def test_contiguous_batches_raise_nothing(store):
    store.store_batch([gpu_open(1), gpu_open(2)])
    store.store_batch([gpu_open(3)])
    assert gaps(store) == []


def test_first_batch_of_a_run_not_starting_at_1_is_a_gap(store):
    store.store_batch([gpu_open(5), gpu_open(6)])
    assert spans(store) == [("seq_skip", 1, 4, 4)]


def test_skips_inside_and_between_batches(store, clock):
    store.store_batch([gpu_open(1), gpu_open(3), gpu_open(7)])
    clock.advance(1)
    store.store_batch([gpu_open(10)])
    assert spans(store) == [("seq_skip", 2, 2, 1), ("seq_skip", 4, 6, 3), ("seq_skip", 8, 9, 2)]
    first = gaps(store)[0]
    assert (first.node, first.boot_id, first.seq) == ("n1", "collector-run1", 1)
    assert first.agent_gap.lost_boot_id == "b1" and first.agent_gap.reason == ""
    assert first.time.ToNanoseconds() == T0_NS  # collector clock when raised
    assert not first.HasField("process")
    assert [g.seq for g in gaps(store)] == [1, 2, 3]  # gap-free per (node, collector run)
    node = store.status().nodes[0]
    assert (node.gaps, node.missing_events, node.events_stored) == (3, 6, 7)


def test_duplicates_and_late_fills_raise_nothing_new(store):
    store.store_batch([gpu_open(1), gpu_open(4)])
    assert spans(store) == [("seq_skip", 2, 3, 2)]
    store.store_batch([gpu_open(1), gpu_open(4)])  # replay: all duplicates
    store.store_batch([gpu_open(2), gpu_open(3)])  # late fill of the old hole
    store.store_batch([gpu_open(3), gpu_open(4), gpu_open(5)])  # overlap, then contiguous
    assert spans(store) == [("seq_skip", 2, 3, 2)]


def test_each_boot_id_is_its_own_sequence(store):
    store.store_batch([gpu_open(1), gpu_open(2)])
    store.store_batch([gpu_open(1, boot_id="b2", t_s=5)])
    assert gaps(store) == []


def test_reported_loss_raises_a_gap_with_its_figures(store):
    store.store_batch([gpu_open(1), loss(2, reason="kernel", count=17, lost_boot="")])
    (gap,) = gaps(store)
    g = gap.agent_gap
    assert (g.cause, g.reason, g.count, g.report_seq) == ("reported", "kernel", 17, 2)
    assert (g.lost_boot_id, g.first_seq, g.last_seq) == ("", 0, 0)
    assert store.status().nodes[0].missing_events == 17
    store.store_batch([loss(2, reason="kernel", count=17, lost_boot="")])  # replayed: nothing
    assert len(gaps(store)) == 1


def test_reported_loss_of_numbered_events_is_not_counted_twice(store):
    # The spool dropped seqs 2-4; the agent says so (seq 5), and the collector
    # also sees 1 -> 5 skip. Both are recorded, the 3 events are missing once.
    store.store_batch([gpu_open(1)])
    store.store_batch([loss(5, count=3, first=2, last=4)])
    assert spans(store) == [("seq_skip", 2, 4, 3), ("reported", 2, 4, 3)]
    node = store.status().nodes[0]
    assert (node.gaps, node.missing_events) == (2, 3)


def test_watchdog_and_gaps_share_one_seq_per_node(store, clock):
    dog = Watchdog(store, clock=clock)
    store.store_batch([health(1, interval_s=1)])
    store.store_batch([gpu_open(3)])  # gap 2..2 -> own seq 1
    clock.advance(10)
    (silent,) = dog.check()  # own seq 2
    store.store_batch([health(5, t_s=10, interval_s=1)])  # gap 4..4 -> own seq 3
    own = store.query(collector_pb2.EventQuery(nodes=["n1"], types=["agent.gap", "agent.silent"]))
    assert sorted((e.seq, e.type) for e in own) == [
        (1, "agent.gap"), (2, "agent.silent"), (3, "agent.gap"),
    ]  # fmt: skip
    assert {e.boot_id for e in own} == {"collector-run1"} and silent.seq == 2


def test_rejected_counts_on_a_node_never_seen(store):
    event = store.own.new("agent.rejected", "intruder")
    event.agent_rejected.claimed_node, event.agent_rejected.batches = "n1", 4
    stored = store.store_own(event)
    assert (stored.node, stored.seq) == ("intruder", 1)
    (node,) = store.status().nodes
    assert (node.node, node.boot_id, node.rejected, node.events_stored) == ("intruder", "", 4, 1)
    store.store_batch([gpu_open(1, node="intruder", t_s=1)])  # its agent shows up later
    node = store.status().nodes[0]
    assert (node.boot_id, node.last_seq, node.rejected, node.events_stored) == ("b1", 1, 4, 2)


def test_spool_dropped_comes_from_the_latest_health(store):
    ev = health(1)
    ev.agent_health.spool_dropped = 12
    store.store_batch([ev])
    assert store.status().nodes[0].spool_dropped == 12


def test_upgrades_a_version_1_database(tmp_path):
    import sqlite3

    from collector.storage.schema import _V1, SCHEMA_VERSION

    path = tmp_path / "v1.db"
    with sqlite3.connect(path) as db:
        db.executescript(_V1)
        db.execute("PRAGMA user_version = 1")
    s = SqliteStorage(path)
    try:
        s.store_batch([gpu_open(2)])
        assert s.status().nodes[0].gaps == 1
        assert s.journal_mode() == "wal"
    finally:
        s.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
