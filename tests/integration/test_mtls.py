"""Identity and access against a real `gpuaudit collector` process with mutual TLS.

Who may do what: a node certificate ingests for its own node only; a reader
certificate queries and never ingests; anything without a certificate from
the collector's CA does not get past the handshake. After every refusal the
collector still serves, and nothing was stored that should not have been.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from collector import certs
from gpuaudit.tls import TlsFiles
from gpuaudit.v1 import collector_pb2, collector_pb2_grpc, events_pb2
from tests.integration.harness import Collector, TestPki, channel, wait_for
from tests.unit.test_collector_support import batch, gpu_open

pytestmark = pytest.mark.integration

DAY = datetime.timedelta(days=1)
NOW = datetime.datetime.now(datetime.UTC)
VICTIM = "mtls-victim"
INTRUDER = "mtls-intruder"


@pytest.fixture(scope="module")
def col(tmp_path_factory: pytest.TempPathFactory, pki: TestPki) -> Iterator[Collector]:
    c = Collector(tmp_path_factory.mktemp("mtls") / "events.db", pki=pki)
    yield c
    c.stop()


def stub(
    address: str, files: TlsFiles | None
) -> tuple[grpc.Channel, collector_pb2_grpc.CollectorStub]:
    ch = channel(address, files)
    return ch, collector_pb2_grpc.CollectorStub(ch)


def ingest(address: str, files: TlsFiles | None, node: str, seq: int = 1) -> list[object]:
    """Send one batch with one event claiming ``node``; the acks, or raise RpcError."""
    ch, s = stub(address, files)
    with ch:
        return list(s.Ingest(iter([batch(seq, gpu_open(seq, node=node, boot_id="mtls"))]),
                             timeout=10))


def ingest_error(address: str, files: TlsFiles | None, node: str) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        ingest(address, files, node)
    return caught.value


def stored(col: Collector, node: str) -> list[events_pb2.Event]:
    return col.query(nodes=[node], types=["gpu.open"])


def unknown_ca(tmp: TestPki, name: str) -> TlsFiles:
    other = certs.new_ca("intruder CA")
    return certs.issue_node(other, name, tmp.root / "unknown-ca" / f"{name}-{NOW.timestamp()}")


def no_client_cert(pki: TestPki) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(root_certificates=pki.collector.ca.read_bytes())


# -- the handshake keeps out what the CA did not issue (or issued for another time)


def test_client_without_a_certificate_fails_the_handshake(col: Collector, pki: TestPki) -> None:
    with grpc.secure_channel(col.address, no_client_cert(pki)) as ch:
        s = collector_pb2_grpc.CollectorStub(ch)
        with pytest.raises(grpc.RpcError) as caught:
            list(s.Ingest(iter([batch(1, gpu_open(1, node=VICTIM))]), timeout=10))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert stored(col, VICTIM) == []


@pytest.mark.parametrize("kind", ["unknown_ca", "expired", "not_yet_valid"])
def test_bad_certificates_fail_the_handshake(col: Collector, pki: TestPki, kind: str) -> None:
    if kind == "unknown_ca":
        files = unknown_ca(pki, VICTIM)
    else:
        window = (certs.Validity(NOW - 30 * DAY, NOW - DAY) if kind == "expired"
                  else certs.Validity(NOW + DAY, NOW + 30 * DAY))
        files = pki.client(VICTIM, role="node", validity=window)
    err = ingest_error(col.address, files, VICTIM)
    assert err.code() == grpc.StatusCode.UNAVAILABLE, err
    assert stored(col, VICTIM) == []


def test_plaintext_client_to_the_tls_port_fails(col: Collector) -> None:
    err = ingest_error(col.address, None, VICTIM)
    assert err.code() == grpc.StatusCode.UNAVAILABLE, err
    assert stored(col, VICTIM) == []


# -- identity checks behind the handshake (collector/ingest, collector/query)


def test_node_claiming_another_nodes_name_is_refused_and_recorded(
    col: Collector, pki: TestPki
) -> None:
    err = ingest_error(col.address, pki.node(INTRUDER), VICTIM)
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED, err
    assert stored(col, VICTIM) == []

    def rejection() -> list[events_pb2.Event]:
        return [e for e in col.query(types=["agent.rejected"])
                if e.agent_rejected.claimed_node == VICTIM]

    wait_for(rejection, timeout=10)
    (event, *_) = rejection()
    assert list(event.agent_rejected.cert_names) == [INTRUDER]
    assert event.agent_rejected.reason == "node_mismatch"
    assert event.agent_rejected.peer.startswith("ipv4:127.0.0.1:")


def test_node_certificate_cannot_query(col: Collector, pki: TestPki) -> None:
    ch, s = stub(col.address, pki.node(INTRUDER))
    with ch:
        with pytest.raises(grpc.RpcError) as caught:
            list(s.QueryEvents(collector_pb2.EventQuery(limit=10), timeout=10))
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as caught:
            s.GetStatus(collector_pb2.StatusRequest(), timeout=10)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_reader_certificate_cannot_ingest(col: Collector, pki: TestPki) -> None:
    reader = pki.client(VICTIM, role="reader")  # a reader whose CN is even the node's name
    err = ingest_error(col.address, reader, VICTIM)
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED, err
    assert stored(col, VICTIM) == []


def test_after_all_refusals_the_collector_serves_and_the_right_node_ingests(
    col: Collector, pki: TestPki
) -> None:
    # One more round of every kind of refusal, so this test stands on its own.
    for files in (None, unknown_ca(pki, VICTIM), pki.node(INTRUDER)):
        ingest_error(col.address, files, VICTIM)
    with channel(col.address, pki.reader) as ch:
        reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    acks = ingest(col.address, pki.node(VICTIM), VICTIM, seq=7)
    assert len(acks) == 1
    assert [(e.node, e.seq) for e in stored(col, VICTIM)] == [(VICTIM, 7)]
    assert VICTIM in {n.node for n in col.status().nodes}
