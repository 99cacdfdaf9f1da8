"""Watchdog over a real SqliteStorage, driven by a fake clock (no sleeping)."""

from __future__ import annotations

import asyncio

import pytest

from collector.storage.sqlite import SqliteStorage
from collector.watchdog import Watchdog
from gpuaudit.v1 import collector_pb2
from tests.unit.test_collector_support import S_NS, T0_NS, FakeClock, gpu_open, health


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def store(tmp_path, clock):
    s = SqliteStorage(tmp_path / "events.db", clock=clock, run_id="abc")
    yield s
    s.close()


def silent_events(store):
    return store.query(collector_pb2.EventQuery(types=["agent.silent"]))


def test_raises_exactly_one_silent_event_then_clears(store, clock):
    dog = Watchdog(store, clock=clock)
    store.store_batch([health(1, interval_s=2)])
    clock.advance(6)  # exactly 3 x interval: not yet
    assert dog.check() == []
    clock.advance(1)
    (raised,) = dog.check()
    assert dog.check() == []  # already silent: no second event
    clock.advance(60)
    assert dog.check() == []

    assert silent_events(store) == [raised]
    assert (raised.type, raised.node, raised.boot_id, raised.seq) == (
        "agent.silent", "n1", "collector-abc", 1,
    )  # fmt: skip
    assert raised.time.ToNanoseconds() == T0_NS + 7 * S_NS
    assert raised.agent_silent.last_seen.ToNanoseconds() == T0_NS
    assert raised.agent_silent.silent_for_s == 7
    assert store.status().nodes[0].silent is True

    store.store_batch([health(2, t_s=70, interval_s=2)])
    assert store.status().nodes[0].silent is False
    assert dog.check() == []


def test_seq_counts_per_node_across_silences(store, clock):
    dog = Watchdog(store, clock=clock)
    store.store_batch([health(1, node="a", interval_s=1)])
    store.store_batch([health(1, node="b", interval_s=1)])
    clock.advance(4)
    first = dog.check()
    assert [(e.node, e.seq) for e in first] == [("a", 1), ("b", 1)]
    store.store_batch([health(2, node="a", t_s=4, interval_s=1)])
    clock.advance(4)
    assert [(e.node, e.seq) for e in dog.check()] == [("a", 2)]
    assert dog.boot_id == store.own.boot_id == "collector-abc"


def test_random_run_id_when_none_given(tmp_path):
    s = SqliteStorage(tmp_path / "r.db")
    try:
        assert s.own.boot_id.startswith("collector-") and len(s.own.boot_id) > len("collector-")
    finally:
        s.close()


def test_default_interval_when_agent_announces_none(store, clock):
    dog = Watchdog(store, clock=clock)
    store.store_batch([health(1, interval_s=0)])
    clock.advance(15)
    assert dog.check() == []
    clock.advance(1)
    assert len(dog.check()) == 1


def test_arrival_time_not_agent_clock_decides(store, clock):
    dog = Watchdog(store, clock=clock)
    # The agent's clock is an hour behind, but the heartbeat just arrived.
    store.store_batch([health(1, t_s=-3600, interval_s=5)])
    assert dog.check() == []


def test_time_before_the_collector_started_does_not_count(store, clock):
    store.store_batch([health(1, interval_s=1)])
    clock.advance(3600)  # the collector was down for an hour
    dog = Watchdog(store, clock=clock)
    assert dog.check() == []
    clock.advance(4)
    (raised,) = dog.check()
    assert raised.agent_silent.silent_for_s == 4


def test_nodes_without_heartbeat_are_not_judged(store, clock):
    dog = Watchdog(store, clock=clock)
    store.store_batch([gpu_open(1)])
    clock.advance(3600)
    assert dog.check() == []


def test_run_loop_checks_periodically_and_stops_on_cancel(store, clock):
    dog = Watchdog(store, clock=clock)
    store.store_batch([health(1, interval_s=1)])
    clock.advance(10)

    async def scenario():
        task = asyncio.create_task(dog.run(period_s=0.01))
        for _ in range(500):
            if silent_events(store):
                break
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert len(silent_events(store)) == 1
