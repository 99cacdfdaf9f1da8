"""Retention on real stores (SQLite rows and chunks): old batches go, verify stays intact.

Batches are stored on three days; retention with a two-day window removes
the first day's, and the checkpoint it signs lets `verify` accept the cut.
Removing history without that checkpoint is reported.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from collector.integrity.checkpoint import CheckpointWriter, read_copies
from collector.integrity.keys import CollectorKey
from collector.integrity.readers import SqliteReader
from collector.integrity.verify import Trust, verify
from collector.retention import Retention
from collector.storage.chunks import ChunkStorage
from collector.storage.sqlite import SqliteStorage
from gpuaudit.v1 import collector_pb2
from tests.unit.test_collector_support import FakeClock, gpu_open

DAY_S = 86_400


@pytest.fixture(params=[SqliteStorage, ChunkStorage], ids=["rows", "chunks"])
def layout(request: pytest.FixtureRequest) -> type[SqliteStorage]:
    return request.param  # type: ignore[no-any-return]


def three_days(store: SqliteStorage, clock: FakeClock) -> None:
    for day in range(3):
        seqs = range(day * 10 + 1, day * 10 + 11)
        store.store_batch([gpu_open(s, node="n1", boot_id="run", t_s=day * DAY_S + s)
                           for s in seqs])
        clock.advance(DAY_S)


def test_retention_removes_old_batches_and_verify_accepts_the_cut(tmp_path: Path,
                                                                  layout) -> None:
    clock = FakeClock()
    key = CollectorKey.load_or_create(tmp_path / "key")
    store = layout(tmp_path / "events.db", clock=clock, run_id="r", key=key)
    writer = CheckpointWriter(store, key, tmp_path / "copies", 3600, clock)
    three_days(store, clock)
    writer.write_now()  # a checkpoint from before the cut, naming removed history

    removed = Retention(store, writer, days=2.5, every_s=3600, clock=clock).run_once()

    assert removed == 10
    left = store.query(collector_pb2.EventQuery(types=["gpu.open"], limit=100))
    assert [ev.seq for ev in left] == list(range(11, 31))
    store.close()
    reader = SqliteReader(tmp_path / "events.db")
    report = verify(reader, Trust(checkpoint_copies=read_copies(tmp_path / "copies")))
    reader.close()
    assert report.ok, [p.line() for p in report.problems]
    assert not [p for p in report.problems if p.kind == "missing"]  # pruned is not missing
    assert report.events_checked == 20


def test_history_removed_behind_retentions_back_is_reported(tmp_path: Path, layout) -> None:
    clock = FakeClock()
    key = CollectorKey.load_or_create(tmp_path / "key")
    store = layout(tmp_path / "events.db", clock=clock, run_id="r", key=key)
    three_days(store, clock)
    store.prune(clock() - 2 * DAY_S * 10**9)  # a prune nobody signed a checkpoint for
    store.close()
    reader = SqliteReader(tmp_path / "events.db")
    report = verify(reader, Trust())
    reader.close()
    assert [p.kind for p in report.problems if p.kind == "chain_broken"] == ["chain_broken"]
    assert not report.ok
