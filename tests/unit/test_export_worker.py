"""The hub's queue, retry and drop accounting, with an in-memory sink whose
receiver can be made to fail (the real receivers are in
tests/integration/test_export_sinks.py). No timed asserts: the tests wait for
counters, and drops are made deterministic by queuing before start()."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import pytest

from collector.export import ExportHub, Item, SinkError
from collector.export.worker import SinkWorker
from tests.integration.harness import wait_for


class MemorySink:
    """Renders a finding to its id; ``send`` fails while ``down`` is set."""

    def __init__(self, name: str = "mem") -> None:
        self.name = name
        self.received: list[Any] = []
        self.down = threading.Event()
        self.reject = False
        self.closed = False

    def render(self, item: Item) -> Any:
        f = item.finding or {}
        if f.get("bad"):
            raise ValueError("cannot render")
        return None if f.get("skip") else f["id"]

    def send(self, batch: Sequence[Any]) -> None:
        if self.reject:
            raise SinkError("400 bad batch", retryable=False)
        if self.down.is_set():
            raise ConnectionRefusedError("receiver down")
        self.received.extend(batch)

    def close(self) -> None:
        self.closed = True


def finding(i: int, **kw: Any) -> dict[str, Any]:
    return {"id": i, **kw}


@pytest.mark.parametrize(("policy", "kept"), [("drop_oldest", range(77, 100)),
                                              ("drop_newest", range(0, 23))])
def test_full_queue_drops_exactly_and_per_policy(policy, kept):
    sink = MemorySink()
    hub = ExportHub([sink], queue_max=23, batch_max=5, policy=policy)
    for i in range(100):  # before start: nothing is taken, so the counts are exact
        hub.publish_finding(finding(i))
    s = hub.stats()["mem"]
    assert (s["queued"], s["dropped"], s["dropped_by"]["queue_full"]) == (23, 77, 77)
    hub.start()
    wait_for(lambda: hub.stats()["mem"]["sent"] == 23)
    hub.close(drain_s=5)
    assert sink.received == list(kept)
    s = hub.stats()["mem"]
    assert (s["queued"], s["sent"], s["dropped"], s["retried"]) == (0, 23, 77, 0)


def test_nothing_lost_while_the_receiver_is_down():
    sink = MemorySink()
    sink.down.set()
    hub = ExportHub([sink], queue_max=1000, batch_max=7)
    hub.start()
    for i in range(50):
        hub.publish_finding(finding(i))
    wait_for(lambda: hub.stats()["mem"]["retried"] >= 3)
    for i in range(50, 97):
        hub.publish_finding(finding(i))
    sink.down.clear()
    wait_for(lambda: hub.stats()["mem"]["sent"] == 97)
    hub.close(drain_s=5)
    assert sink.received == list(range(97))
    s = hub.stats()["mem"]
    assert s["dropped"] == 0 and s["retried"] >= 3 and "receiver down" in s["last_error"]


def test_rejected_batches_render_errors_and_skips_are_counted():
    sink = MemorySink()
    hub = ExportHub([sink], batch_max=10)
    for i in range(4):
        hub.publish_finding(finding(i))
    hub.publish_finding(finding(4, bad=True))
    hub.publish_finding(finding(5, skip=True))
    sink.reject = True
    hub.start()
    wait_for(lambda: hub.stats()["mem"]["dropped"] == 5)
    sink.reject = False
    hub.publish_finding(finding(6))
    wait_for(lambda: hub.stats()["mem"]["sent"] == 1)
    hub.close(drain_s=5)
    s = hub.stats()["mem"]
    assert s["dropped_by"] == {"queue_full": 0, "render": 1, "rejected": 4, "shutdown": 0,
                               "closed": 0}
    assert s["skipped"] == 1 and sink.received == [6]


def test_close_gives_up_after_drain_and_counts_the_rest():
    sink = MemorySink()
    sink.down.set()
    hub = ExportHub([sink], batch_max=3)
    for i in range(10):
        hub.publish_finding(finding(i))
    hub.start()
    wait_for(lambda: hub.stats()["mem"]["retried"] >= 1)
    hub.close(drain_s=0.2)
    hub.publish_finding(finding(99))
    s = hub.stats()["mem"]
    assert s["dropped_by"]["shutdown"] == 10 and s["dropped_by"]["closed"] == 1
    assert s["sent"] == 0 and s["queued"] == 0 and sink.closed


def test_publish_never_raises_and_kinds_filter():
    sink = MemorySink()
    hub = ExportHub([sink], kinds=("finding",))
    hub.publish_event(object())  # not exported: events are filtered out
    hub.publish_finding(finding(1))
    assert hub.stats()["mem"]["queued"] == 1
    with pytest.raises(ValueError, match="unique names"):
        ExportHub([MemorySink(), MemorySink()])
    with pytest.raises(ValueError, match="drop policy"):
        SinkWorker(MemorySink(), policy="block")
