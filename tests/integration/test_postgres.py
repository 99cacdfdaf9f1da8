"""The PostgreSQL store on a real PostgreSQL server, and two collectors sharing it.

* Same answers as the SQLite row store for the same random traffic (the
  other layouts are held to the same test in tests/unit/test_storage_chunks.py).
* Two real `gpuaudit collector` processes on one database, one node's batches
  sent to both, in turns and twice: every event stored once, the node's
  stream in order, gaps raised once, duplicates acked.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.storage.postgres import PostgresStorage
from collector.storage.sqlite import SqliteStorage
from gpuaudit.v1 import collector_pb2, collector_pb2_grpc
from tests.integration.harness import Collector, TestPki, channel
from tests.pgserver import PgServer
from tests.unit.test_collector_support import FakeClock, gpu_open
from tests.unit.test_storage_chunks import _QUERIES, _batch, _build, q

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server() -> Iterator[PgServer]:
    pg = PgServer()
    yield pg
    pg.stop()


def fresh(server: PgServer, **kw: object) -> PostgresStorage:
    return PostgresStorage(server.create_db(f"t_{uuid.uuid4().hex[:12]}"), **kw)  # type: ignore[arg-type]


def test_refuses_an_unreachable_server_with_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="cannot connect to PostgreSQL"):
        PostgresStorage(f"host={tmp_path} dbname=nothing connect_timeout=2")


def test_password_never_shows_in_the_description(server: PgServer) -> None:
    store = PostgresStorage(server.dsn() + " password=hunter2")
    try:
        assert "hunter2" not in store.describe() and "postgresql:" in store.describe()
    finally:
        store.close()


@pytest.fixture(scope="module")
def shared_pg(server: PgServer) -> Iterator[PostgresStorage]:
    store = fresh(server, clock=FakeClock(), run_id="r")
    yield store
    store.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(batches=st.lists(_batch, min_size=1, max_size=12))
def test_postgres_answers_like_the_row_store(shared_pg: PostgresStorage, batches) -> None:
    pg = shared_pg
    with pg._transaction() as cur:  # a clean database per example, cheaply
        cur.execute("TRUNCATE events, nodes RESTART IDENTITY")
    with tempfile.TemporaryDirectory() as tmp:
        rows = SqliteStorage(Path(tmp) / "rows.db", clock=FakeClock(), run_id="r")
        try:
            for node, boot_id, picks in batches:
                events = _build(node, boot_id, picks)
                assert pg.store_batch(events) == rows.store_batch(events)
            since = q(limit=1000)
            since.since.FromNanoseconds(FakeClock()() + 3_000_000_000)
            for query in [*_QUERIES, since]:
                assert pg.query(query) == rows.query(query), query
            got, want = pg.status(), rows.status()
            got.db = want.db = ""
            assert got == want
        finally:
            rows.close()


def send(col: Collector, pki: TestPki, node: str, batch_id: int, seqs: list[int]
         ) -> collector_pb2.Ack:
    events = [gpu_open(s, node=node, boot_id="pg-run", t_s=s) for s in seqs]
    with channel(col.address, pki.node(node)) as ch:
        stub = collector_pb2_grpc.CollectorStub(ch)
        batch = collector_pb2.EventBatch(batch_id=batch_id, events=events)
        (ack,) = stub.Ingest(iter([batch]), timeout=20)
        return ack


def test_two_collectors_share_one_database(server: PgServer, pki: TestPki,
                                           tmp_path: Path) -> None:
    dsn = server.create_db("shared")
    a = Collector(tmp_path / "a.db", "--dsn", dsn, pki=pki)
    b = Collector(tmp_path / "b.db", "--dsn", dsn, pki=pki)
    try:
        node = "pg-node"
        assert send(a, pki, node, 1, [1, 2, 3]).stored == 3
        again = send(b, pki, node, 2, [2, 3, 4, 5])  # a reconnect to the other collector
        assert (again.stored, again.duplicates, again.acked_seq) == (2, 2, 5)
        assert send(a, pki, node, 3, [8, 9]).stored == 2  # 6..7 never arrive: one gap
        assert send(b, pki, node, 4, [8, 9]).duplicates == 2

        for col in (a, b):  # both collectors answer from the same store
            stored = col.query(types=["gpu.open"], nodes=[node], limit=100)
            assert [ev.seq for ev in stored] == [1, 2, 3, 4, 5, 8, 9]
            gaps = col.query(types=["agent.gap"], nodes=[node], limit=100)
            assert [(g.agent_gap.first_seq, g.agent_gap.last_seq) for g in gaps] == [(6, 7)]
            status = {n.node: n for n in col.status().nodes}[node]
            assert (status.last_seq, status.events_stored, status.missing_events) == (9, 8, 2)
    finally:
        a.stop()
        b.stop()


def test_verify_and_retention_work_on_postgres(server: PgServer, tmp_path: Path) -> None:
    from collector.integrity.checkpoint import CheckpointWriter, read_copies
    from collector.integrity.keys import CollectorKey
    from collector.integrity.readers import PostgresReader
    from collector.integrity.verify import Trust, verify
    from collector.retention import Retention
    from tests.unit.test_retention import three_days

    clock = FakeClock()
    key = CollectorKey.load_or_create(tmp_path / "key")
    dsn = server.create_db("retention")
    store = PostgresStorage(dsn, clock=clock, run_id="r", key=key)
    writer = CheckpointWriter(store, key, tmp_path / "copies", 3600, clock)
    three_days(store, clock)  # type: ignore[arg-type]
    assert Retention(store, writer, days=2.5, every_s=3600, clock=clock).run_once() == 10
    store.close()
    reader = PostgresReader(dsn)
    try:
        report = verify(reader, Trust(checkpoint_copies=read_copies(tmp_path / "copies")))
    finally:
        reader.close()
    assert report.ok and report.events_checked == 20, [p.line() for p in report.problems]
    assert report.unsigned_events == 20  # stored without a node signature: chained only
