"""Who may ingest and query, over real mutual-TLS gRPC on loopback (certs from collector.certs)."""

from __future__ import annotations

import logging

import grpc
import pytest

from collector.certs import init_pki
from collector.ingest.rejections import Rejections
from collector.server import BackgroundCollector, CollectorConfig, StartupError
from collector.storage.sqlite import SqliteStorage
from gpuaudit.tls import PeerIdentity, TlsFiles
from gpuaudit.v1 import collector_pb2, collector_pb2_grpc
from tests.unit.test_collector_support import batch, gpu_open


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return init_pki(tmp_path_factory.mktemp("pki"), nodes=["n1", "n2"], readers=["auditor"])


@pytest.fixture
def collector(tmp_path, pki):
    config = CollectorConfig(
        listen="127.0.0.1:0", db=str(tmp_path / "e.db"), tls=pki.collector,
        watchdog_period_s=0, grace_s=1,
    )  # fmt: skip
    with BackgroundCollector(config) as running:
        yield running


def stub_for(collector, files: TlsFiles):
    channel = grpc.secure_channel(collector.address, files.channel_credentials())
    return collector_pb2_grpc.CollectorStub(channel)


def ingest(stub, *batches):
    return list(stub.Ingest(iter(batches), timeout=10))


def events(collector, pki, **kw):
    reader = stub_for(collector, pki.readers["auditor"])
    return list(reader.QueryEvents(collector_pb2.EventQuery(**kw), timeout=10))


def denied(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    return caught.value


def test_a_node_ingests_as_itself_and_a_reader_reads(collector, pki):
    acks = ingest(stub_for(collector, pki.nodes["n1"]), batch(1, gpu_open(1), gpu_open(2)))
    assert [(a.stored, a.acked_seq) for a in acks] == [(2, 2)]
    assert [e.seq for e in events(collector, pki)] == [1, 2]


def test_a_node_claiming_another_name_is_refused_and_recorded(collector, pki):
    n1 = stub_for(collector, pki.nodes["n1"])
    err = denied(lambda: ingest(n1, batch(1, gpu_open(1, node="n2"))))
    assert "batch claims node 'n2' but the certificate names n1" in err.details()
    assert events(collector, pki, nodes=["n2"]) == []  # nothing stored under n2
    (rejected,) = events(collector, pki, types=["agent.rejected"])
    r = rejected.agent_rejected
    assert (rejected.node, r.claimed_node, r.reason, r.batches) == ("n1", "n2", "node_mismatch", 1)
    assert list(r.cert_names) == ["n1"] and r.peer.startswith("ipv4:127.0.0.1:")
    assert rejected.boot_id == collector.storage.own.boot_id
    status = stub_for(collector, pki.readers["auditor"]).GetStatus(collector_pb2.StatusRequest())
    assert [(n.node, n.rejected) for n in status.nodes] == [("n1", 1)]


def test_a_reader_certificate_cannot_ingest(collector, pki):
    err = denied(lambda: ingest(stub_for(collector, pki.readers["auditor"]), batch(1, gpu_open(1))))
    assert "certificate auditor is not a node certificate" in err.details()
    (rejected,) = events(collector, pki, types=["agent.rejected"])
    assert (rejected.node, rejected.agent_rejected.reason) == ("auditor", "not_a_node_certificate")


def test_a_node_certificate_cannot_query(collector, pki):
    stub = stub_for(collector, pki.nodes["n1"])
    err = denied(lambda: list(stub.QueryEvents(collector_pb2.EventQuery(), timeout=10)))
    assert "certificate n1 is not a reader certificate" in err.details()
    denied(lambda: stub.GetStatus(collector_pb2.StatusRequest(), timeout=10))


def test_refusals_are_recorded_at_most_once_per_window_and_all_counted(tmp_path):
    now = [0.0]
    store = SqliteStorage(tmp_path / "r.db")
    try:
        rejections = Rejections(store, window_s=10, clock=lambda: now[0])
        who = PeerIdentity(names=("n1", "10.0.0.1"), role="node")
        assert rejections.refused(who, "n2", "node_mismatch", "ipv4:a").agent_rejected.batches == 1
        assert rejections.refused(who, "n2", "node_mismatch", "ipv4:b") is None
        assert rejections.refused(who, "n2", "node_mismatch", "ipv4:c") is None
        assert rejections.refused(who, "n3", "node_mismatch", "ipv4:c") is not None  # other key
        assert rejections.flush() == []  # window not over
        now[0] = 10.0
        (late,) = rejections.flush()
        assert (late.agent_rejected.batches, late.agent_rejected.peer) == (2, "ipv4:c")
        assert rejections.refused(who, "n2", "node_mismatch", "ipv4:d") is None
        (forced,) = rejections.flush(force=True)  # shutdown: nothing left uncounted
        assert forced.agent_rejected.batches == 1
        assert [n.rejected for n in store.status().nodes] == [5]
        assert [e.seq for e in store.query(collector_pb2.EventQuery())] == [1, 2, 3, 4]
    finally:
        store.close()


def test_neither_tls_nor_insecure_refuses_to_start(tmp_path):
    config = CollectorConfig(listen="127.0.0.1:0", db=str(tmp_path / "e.db"))
    with pytest.raises(StartupError, match=r"pass --tls-dir DIR .* or --insecure for plaintext"):
        BackgroundCollector(config).start()


def test_broken_tls_files_are_a_startup_error_naming_the_file(tmp_path, pki):
    broken = TlsFiles(ca=pki.collector.ca, cert=pki.collector.cert, key=tmp_path / "missing.key")
    config = CollectorConfig(listen="127.0.0.1:0", db=str(tmp_path / "e.db"), tls=broken)
    with pytest.raises(StartupError, match=r"missing\.key"):
        BackgroundCollector(config).start()


def test_plaintext_on_a_public_address_warns(tmp_path, caplog):
    config = CollectorConfig(
        listen="0.0.0.0:0", db=str(tmp_path / "e.db"), insecure=True, watchdog_period_s=0
    )
    with caplog.at_level(logging.WARNING, logger="collector.server"), BackgroundCollector(config):
        pass
    assert "serving PLAINTEXT on 0.0.0.0:0" in caplog.text


def test_plaintext_on_loopback_does_not_warn(tmp_path, caplog):
    config = CollectorConfig(
        listen="127.0.0.1:0", db=str(tmp_path / "e.db"), insecure=True, watchdog_period_s=0
    )
    with caplog.at_level(logging.WARNING, logger="collector.server"), BackgroundCollector(config):
        pass
    assert "PLAINTEXT" not in caplog.text
