"""The follower over both storage layouts: arrival order, a saved position that
survives restarts, atomic commits, hooks; and ListFindings / `gpuaudit findings`."""

from __future__ import annotations

import json
import threading

import grpc
import pytest

from collector import cli
from collector.findings import Engine, FindingsFollower, load_rules
from collector.server import BackgroundCollector, CollectorConfig, StartupError
from collector.storage.base import StorageError
from collector.storage.chunks import ChunkStorage
from collector.storage.sqlite import SqliteStorage
from gpuaudit.v1 import collector_pb2
from tests.unit.test_findings_support import (
    ALICE,
    MALLORY,
    event,
    findings_collector,
    numbered,
    training_job,
)

STORES = {"rows": SqliteStorage, "chunks": ChunkStorage}
SIGKILL = {"target_pid": 4242, "signal": 9, "signal_name": "SIGKILL", "target_user": "alice"}


def signals(n: int, start: int = 1, node: str = "n1") -> list:
    evs = [event("process.signal", node=node, t_s=i, process=MALLORY, process_signal=SIGKILL)
           for i in range(n)]
    return numbered(evs, start)


@pytest.fixture(params=sorted(STORES))
def store_kind(request):
    return request.param


def open_store(kind: str, tmp_path):
    return STORES[kind](tmp_path / "events.db")


def test_events_after_reads_in_arrival_order_and_skips_unwanted_types(store_kind, tmp_path):
    store = open_store(store_kind, tmp_path)
    store.store_batch(numbered(training_job("a")))
    store.store_batch(signals(3, node="b"))
    events, position = store.events_after(0, 10_000, frozenset({"process.signal", "gpu.open"}))
    assert [e.type for e in events] == ["gpu.open"] + ["process.signal"] * 3
    assert [e.node for e in events] == ["a", "b", "b", "b"]
    assert store.events_after(position, 10_000) == ([], position)  # nothing after the end
    everything, _ = store.events_after(0, 10_000)
    assert len(everything) == len(training_job("a")) + 3
    store.close()


def test_events_after_pages_through_without_skipping(store_kind, tmp_path):
    store = open_store(store_kind, tmp_path)
    for first in range(1, 500, 50):
        store.store_batch(signals(50, start=first))
    seen, position = [], 0
    while True:
        page, nxt = store.events_after(position, 40)
        if nxt == position:
            break
        seen += [e.seq for e in page]
        position = nxt
    assert seen == list(range(1, 501))
    store.close()


def test_the_position_survives_a_restart_and_nothing_is_counted_twice(store_kind, tmp_path):
    store = open_store(store_kind, tmp_path)
    store.store_batch(signals(5))
    follower = FindingsFollower(store, Engine(load_rules()))
    follower.drain()
    store.close()

    store = open_store(store_kind, tmp_path)
    store.store_batch(signals(3, start=6))
    follower = FindingsFollower(store, Engine(load_rules()))
    assert follower.position > 0
    follower.drain()
    (finding,) = store.findings(collector_pb2.FindingQuery())
    assert finding.count == 8
    store.close()


def test_a_failed_commit_moves_nothing_and_the_events_are_read_again(store_kind, tmp_path,
                                                                      monkeypatch):
    store = open_store(store_kind, tmp_path)
    store.store_batch(signals(4))
    follower = FindingsFollower(store, Engine(load_rules()))

    def broken(*args):
        raise StorageError("disk full")

    monkeypatch.setattr(store, "save_findings", broken)
    with pytest.raises(StorageError):
        follower.step()
    assert follower.position == 0
    monkeypatch.undo()
    follower = FindingsFollower(store, Engine(load_rules()))  # as after a restart
    follower.drain()
    assert [f.count for f in store.findings(collector_pb2.FindingQuery())] == [4]
    store.close()


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_hooks_get_new_findings_then_throttled_updates(tmp_path):
    store = SqliteStorage(tmp_path / "events.db")
    clock = Clock()
    follower = FindingsFollower(store, Engine(load_rules()), notify_every_s=60, clock=clock)
    got: list[dict] = []
    follower.on_finding.append(got.append)
    store.store_batch(signals(2))
    follower.drain()
    assert [(d["rule"], d["count"]) for d in got] == [("gpu-signal-cross-user", 2)]
    store.store_batch(signals(3, start=3))
    follower.drain()
    assert len(got) == 1  # within a minute: held back
    clock.now = 61
    follower.step()
    assert [d["count"] for d in got] == [2, 5]  # the latest state, once due
    store.close()


def test_a_failing_hook_is_counted_and_the_others_still_run(tmp_path):
    store = SqliteStorage(tmp_path / "events.db")
    follower = FindingsFollower(store, Engine(load_rules()))
    got: list[dict] = []

    def broken(finding: dict) -> None:
        raise RuntimeError("sink down")

    follower.on_finding.extend([broken, got.append])
    store.store_batch(signals(1))
    follower.drain()
    assert follower.hook_errors == 1 and len(got) == 1
    store.close()


# -- through a running collector -----------------------------------------------


def test_findings_query_filters_by_severity_and_time(tmp_path):
    with findings_collector(tmp_path, store="chunks") as h:
        h.ingest(signals(1, node="a"))  # high
        h.ingest(numbered([event("gpu.process", node="b", t_s=50, process=ALICE, gpu_process={
            "state": "appeared", "seen_open": False})]))  # low
        assert [f.rule for f in h.findings()] == ["gpu-signal-cross-user", "gpu-process-unseen"]
        assert [f.node for f in h.findings(min_severity="high")] == ["a"]
        since = collector_pb2.FindingQuery().since
        since.FromNanoseconds(h.findings()[1].last_seen.ToNanoseconds())
        assert [f.node for f in h.findings(since=since)] == ["b"]
        with pytest.raises(grpc.RpcError) as err:
            h.findings(min_severity="urgent")
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_gpuaudit_findings_prints_json_lines_and_a_table(tmp_path, capsys):
    with findings_collector(tmp_path) as h:
        h.ingest(signals(3))
        args = ["findings", "--collector", h.running.address, "--insecure"]
        assert cli.main([*args, "--json", "--severity", "medium"]) == 0
        (line,) = capsys.readouterr().out.splitlines()
        data = json.loads(line)
        assert (data["rule"], data["severity"], data["count"]) == ("gpu-signal-cross-user",
                                                                  "high", 3)
        assert (data["process"]["user"], data["process"]["pid"]) == ("mallory", 6666)
        assert cli.main(args) == 0
        out = capsys.readouterr().out
        assert "gpu-signal-cross-user" in out and "HIGH" in out and "1 finding(s)" in out


def test_a_bad_rules_directory_stops_the_collector(tmp_path):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "x.yaml").write_text("rules:\n  - id: oops\n    title: t\n    severity: low\n"
                                  "    types: [gpu.open]\n    condition: 'gpu_open.'\n")
    config = CollectorConfig(listen="127.0.0.1:0", db=str(tmp_path / "e.db"), insecure=True,
                             rules_dir=str(rules))
    with pytest.raises(StartupError, match=r"x\.yaml: rule 'oops'"):
        BackgroundCollector(config).start()


def test_event_hooks_get_every_stored_event_in_arrival_order(tmp_path):
    store = ChunkStorage(tmp_path / "events.db")
    follower = FindingsFollower(store, Engine(load_rules()))
    seen: list[tuple[str, int]] = []
    follower.on_event.append(lambda ev: seen.append((ev.type, ev.seq)))
    job = numbered(training_job("a"))
    store.store_batch(job)
    store.store_batch(signals(2, node="b"))
    follower.drain()
    assert seen == [(e.type, e.seq) for e in job] + [("process.signal", 1), ("process.signal", 2)]
    store.close()


def test_collector_hooks_get_findings_from_the_findings_process(tmp_path):
    got: list[dict] = []
    config = CollectorConfig(listen="127.0.0.1:0", db=str(tmp_path / "e.db"), insecure=True,
                             watchdog_period_s=0, grace_s=1, finding_hooks=(got.append,))
    with BackgroundCollector(config) as running:
        running.storage.store_batch(signals(2))
        follower = running.findings
        assert follower is not None
        wait_caught_up(follower)
        while not got:  # the relay hands it over after the commit
            threading.Event().wait(0.05)
    assert [(d["rule"], d["count"]) for d in got] == [("gpu-signal-cross-user", 2)]


def test_a_findings_process_that_dies_is_restarted_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setattr("collector.findings.process.RESTART_PAUSE_S", 0.1)
    config = CollectorConfig(listen="127.0.0.1:0", db=str(tmp_path / "e.db"), insecure=True,
                             watchdog_period_s=0, grace_s=1)
    with BackgroundCollector(config) as running:
        follower = running.findings
        assert follower is not None
        running.storage.store_batch(signals(1))
        wait_caught_up(follower)
        follower._proc.kill()  # a crash of the child
        running.storage.store_batch(signals(2, start=2))
        while follower.restarts == 0 or not follower.caught_up():
            threading.Event().wait(0.05)
        (finding,) = running.storage.findings(collector_pb2.FindingQuery())
        assert finding.count == 3  # nothing skipped, nothing twice


def wait_caught_up(follower) -> None:
    while not follower.caught_up():
        threading.Event().wait(0.05)
