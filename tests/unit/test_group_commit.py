"""GroupCommitter over a real SqliteStorage: many batches, one transaction, exact results."""

from __future__ import annotations

import threading
from concurrent.futures import Future

import pytest

from collector.ingest.group import CommitterClosed, GroupCommitter
from collector.storage.base import StorageError, StoreResult
from collector.storage.sqlite import SqliteStorage
from gpuaudit.v1 import collector_pb2
from tests.unit.test_collector_support import gpu_open


@pytest.fixture
def store(tmp_path):
    s = SqliteStorage(tmp_path / "events.db")
    yield s
    s.close()


class GatedStorage:
    """Wraps a storage; store_batches waits for ``gate`` and records each group."""

    def __init__(self, inner, fail=False):
        self.inner, self.fail = inner, fail
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.groups: list[int] = []

    def store_batches(self, batches):
        self.entered.set()
        self.gate.wait(10)
        self.groups.append(len(batches))
        if self.fail:
            raise StorageError("disk full")
        return self.inner.store_batches(batches)


def results(futures: list[Future[StoreResult]]) -> list[StoreResult]:
    return [f.result(timeout=10) for f in futures]


def test_batches_waiting_together_share_one_transaction(store):
    gated = GatedStorage(store)
    committer = GroupCommitter(gated)  # type: ignore[arg-type]
    committer.start()
    first = committer.submit([gpu_open(1, node="a")])
    assert gated.entered.wait(10)  # the writer is busy with `first`...
    same = [gpu_open(s, node="b") for s in (1, 2)]
    waiting = [committer.submit(same), committer.submit(same),
               committer.submit([gpu_open(2, node="a")])]  # fmt: skip
    gated.gate.set()  # ...so the three that queued meanwhile form the next group
    assert results([first]) == [StoreResult(1, 0, 1)]
    # Two streams sent the same batch: one stores it, the other counts duplicates.
    assert results(waiting) == [StoreResult(2, 0, 2), StoreResult(0, 2, 2), StoreResult(1, 0, 2)]
    committer.close()
    assert gated.groups == [1, 3]
    assert (committer.groups, committer.batches) == (2, 4)
    assert store.status().events_stored == 4


def test_a_group_never_exceeds_the_event_bound_except_one_big_batch(store):
    gated = GatedStorage(store)
    gated.gate.set()
    committer = GroupCommitter(gated, max_group_events=3)  # type: ignore[arg-type]
    sizes = [2, 2, 1, 5, 1]
    seq = 0
    futures = []
    for i, n in enumerate(sizes):  # queued before the writer starts: all pending at once
        events = [gpu_open(s, node=f"n{i}") for s in range(seq + 1, seq + n + 1)]
        futures.append(committer.submit(events))
    committer.start()
    assert [r.stored for r in results(futures)] == sizes
    committer.close()
    assert gated.groups == [1, 2, 1, 1]  # [2] [2,1] [5] [1]


def test_a_failed_group_fails_every_batch_in_it_and_stores_nothing(store):
    gated = GatedStorage(store, fail=True)
    committer = GroupCommitter(gated)  # type: ignore[arg-type]
    futures = [committer.submit([gpu_open(1, node=n)]) for n in ("a", "b")]
    committer.start()
    gated.gate.set()
    for future in futures:
        with pytest.raises(StorageError, match="disk full"):
            future.result(timeout=10)
    committer.close()
    assert store.status().events_stored == 0


def test_close_commits_what_is_queued_then_refuses(store):
    committer = GroupCommitter(store)
    queued = committer.submit([gpu_open(1)])
    committer.start()
    committer.close()
    assert queued.result(timeout=10) == StoreResult(1, 0, 1)
    late = committer.submit([gpu_open(2)])
    with pytest.raises(CommitterClosed, match="shutting down"):
        late.result(timeout=10)
    assert store.status().events_stored == 1


def test_close_without_a_writer_fails_queued_batches(store):
    committer = GroupCommitter(store)
    queued = committer.submit([gpu_open(1)])
    committer.close()
    with pytest.raises(CommitterClosed):
        queued.result(timeout=10)


def test_a_cancelled_batch_is_skipped_not_stored(store):
    committer = GroupCommitter(store)
    gone = committer.submit([gpu_open(1, node="gone")])
    kept = committer.submit([gpu_open(1, node="kept")])
    assert gone.cancel()  # its stream went away before the writer took it
    committer.start()
    assert kept.result(timeout=10) == StoreResult(1, 0, 1)
    committer.close()
    assert [n.node for n in store.status().nodes] == ["kept"]


def test_gaps_are_raised_once_across_batches_of_one_group(store):
    # Batches of one agent run in one group: the second starts where the
    # first ended, so only the real skip (4-5) is a gap.
    committer = GroupCommitter(store)
    futures = [committer.submit([gpu_open(1), gpu_open(2), gpu_open(3)]),
               committer.submit([gpu_open(6)])]  # fmt: skip
    committer.start()
    assert [r.acked_seq for r in results(futures)] == [3, 6]
    committer.close()
    gaps = store.query(collector_pb2.EventQuery(types=["agent.gap"]))
    assert [(g.agent_gap.first_seq, g.agent_gap.last_seq) for g in gaps] == [(4, 5)]
