"""Bad input at a real collector process over real sockets (issue #6, test 6).

Raw TCP garbage, HTTP/2 garbage, undecodable and mutated Ingest messages,
oversized batches, contract breaches and replays. After each, the collector
process is still running, ``grpc.health.v1`` answers SERVING, and the store
holds exactly what it should: nothing from refused input, each accepted event
once.

One collector serves the whole module. Every test uses its own node names, and
checks counts as differences from before, so the tests do not depend on order.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.server import CollectorConfig
from gpuaudit.v1 import collector_pb2, events_pb2
from tests.integration.harness import Collector
from tests.unit.test_ingest_fuzz import agent_batch, contract_violations, mutated

pytestmark = pytest.mark.integration

MAX_EVENTS = 100  # --max-batch-events: small, so "one too many" is cheap to send
RPC_S = 10.0
INGEST = "/gpuaudit.v1.Collector/Ingest"
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
AGENT_TYPES = ["gpu.open", "process.exec", "process.exit", "agent.health", "agent.loss"]
# A few examples per property: each one is a round trip to a real process.
FEW = settings(
    max_examples=50, deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)  # fmt: skip


class CollectorUnderTest(Collector):
    """``gpuaudit collector --insecure`` (harness) with a fresh database and a health stub."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir / "events.db", "--max-batch-events", str(MAX_EVENTS),
                         insecure=True)
        self.host, port = self.address.rsplit(":", 1)
        self.port = int(port)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    def stored(self) -> int:
        """All events in the store, as GetStatus reports them."""
        return self.stub.GetStatus(collector_pb2.StatusRequest(), timeout=RPC_S).events_stored

    def agent_events(self, node: str) -> list[events_pb2.Event]:
        """The events agents sent for ``node`` (not the collector's own agent.gap & co)."""
        q = collector_pb2.EventQuery(nodes=[node], types=AGENT_TYPES, limit=10_000, newest=False)
        return list(self.stub.QueryEvents(q, timeout=RPC_S))

    def assert_healthy(self) -> None:
        """Still running and serving."""
        assert self.proc.poll() is None, "the collector process died"
        reply = self.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=RPC_S)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


@pytest.fixture(scope="module")
def collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CollectorUnderTest]:
    col = CollectorUnderTest(tmp_path_factory.mktemp("bad-input"))
    yield col
    col.stop()
    assert col.proc.returncode == 0, "did not stop cleanly:\n" + col.log.read_text()[-4000:]


@pytest.fixture
def raw_ingest(collector: CollectorUnderTest) -> Iterator[grpc.StreamStreamMultiCallable]:
    """Ingest taking raw bytes: whatever the test sends goes on the wire as is."""
    with grpc.insecure_channel(collector.address) as channel:
        yield channel.stream_stream(
            INGEST, request_serializer=lambda b: b,
            response_deserializer=collector_pb2.Ack.FromString,
        )  # fmt: skip


def new_node() -> str:
    return f"bad-input-{secrets.token_hex(4)}"


def ingest(col: CollectorUnderTest, *batches: collector_pb2.EventBatch) -> list[collector_pb2.Ack]:
    return list(col.stub.Ingest(iter(batches), timeout=RPC_S))


def refused(col: CollectorUnderTest, *batches: collector_pb2.EventBatch) -> grpc.Call:
    """Send ``batches``; the collector must end the stream with an error; return it."""
    with pytest.raises(grpc.RpcError) as info:
        ingest(col, *batches)
    assert isinstance(info.value, grpc.Call)
    return info.value


def details(err: grpc.Call) -> str:
    """The status message (never None, for ``in`` checks)."""
    return err.details() or ""


def assert_stored_exactly(col: CollectorUnderTest, node: str, batch: collector_pb2.EventBatch):
    """The store holds ``batch``'s events for ``node``, each once, as sent."""
    stored = col.agent_events(node)
    assert [(e.boot_id, e.seq) for e in stored] == [(e.boot_id, e.seq) for e in batch.events]
    assert stored == list(batch.events)


# -- garbage below gRPC ---------------------------------------------------------------


def send_raw(col: CollectorUnderTest, data: bytes) -> None:
    """Write ``data`` to the gRPC port, half-close, read until the server closes."""
    # suppress: the server may reset the connection before we finish.
    with socket.create_connection((col.host, col.port), timeout=RPC_S) as sock, \
            contextlib.suppress(OSError):
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(65536):
            pass


def h2_frame(kind: int, flags: int, stream: int, payload: bytes, length: int | None = None):
    """One HTTP/2 frame; ``length`` may lie about the payload."""
    n = len(payload) if length is None else length
    return struct.pack(">I", n)[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


h2_frames = st.lists(
    st.builds(
        h2_frame,
        kind=st.integers(0, 12),  # DATA .. ORIGIN, and one unknown type
        flags=st.integers(0, 255),
        stream=st.sampled_from([0, 1, 2, 3, 2**31 - 1, 2**32 - 1]),
        payload=st.binary(max_size=64),
        length=st.one_of(st.none(), st.integers(0, 2**24 - 1)),
    ),
    max_size=6,
)


@FEW
@given(st.binary(max_size=4096))
def test_random_bytes_on_the_port(collector: CollectorUnderTest, data: bytes) -> None:
    before = collector.stored()
    send_raw(collector, data)
    collector.assert_healthy()
    assert collector.stored() == before


@FEW
@given(h2_frames)
def test_http2_preface_then_garbage_frames(collector: CollectorUnderTest, frames) -> None:
    before = collector.stored()
    settings_frame = h2_frame(4, 0, 0, b"")
    send_raw(collector, H2_PREFACE + settings_frame + b"".join(frames))
    collector.assert_healthy()
    assert collector.stored() == before


@FEW
@given(st.binary(min_size=1, max_size=512))
def test_http2_preface_then_random_bytes(collector: CollectorUnderTest, data: bytes) -> None:
    before = collector.stored()
    send_raw(collector, H2_PREFACE + data)
    collector.assert_healthy()
    assert collector.stored() == before


# -- well-formed gRPC, garbage messages --------------------------------------------------


def send_bytes(raw_ingest, data: bytes) -> list[collector_pb2.Ack] | grpc.RpcError:
    try:
        return list(raw_ingest(iter([data]), timeout=RPC_S))
    except grpc.RpcError as err:
        return err


def _decode(data: bytes) -> collector_pb2.EventBatch | None:
    try:
        return collector_pb2.EventBatch.FromString(data)
    except DecodeError:
        return None


def check_outcome(col: CollectorUnderTest, data: bytes, outcome, before: int) -> None:
    """Refused: nothing stored. Accepted: a contract-abiding batch, stored once."""
    batch = _decode(data)
    if isinstance(outcome, grpc.RpcError):
        # Which status undecodable bytes get is test_undecodable_message_is_invalid_argument's
        # business; here what matters is that nothing was stored and the process lives.
        if batch is not None:
            assert outcome.code() == grpc.StatusCode.INVALID_ARGUMENT, outcome.details()
        assert outcome.details()
        assert col.stored() == before
        return
    assert batch is not None, "the collector acked bytes that are not an EventBatch"
    assert contract_violations(batch, MAX_EVENTS) == []
    assert [(a.batch_id, a.stored + a.duplicates) for a in outcome] == [
        (batch.batch_id, len(batch.events))
    ]
    stored = {(e.boot_id, e.seq) for e in col.agent_events(batch.events[0].node)}
    assert {(e.boot_id, e.seq) for e in batch.events} <= stored


@FEW
@given(st.binary(max_size=2048))
def test_random_ingest_messages(collector: CollectorUnderTest, raw_ingest, data: bytes) -> None:
    before = collector.stored()
    check_outcome(collector, data, send_bytes(raw_ingest, data), before)
    collector.assert_healthy()


MUTATION_SEEDS = [
    agent_batch(1, 3, node="mutated-a", boot_id="m" * 32).SerializeToString(),
    agent_batch(10, 8, node="mutated-b", boot_id="n" * 32, batch_id=9).SerializeToString(),
]


@settings(FEW, max_examples=100)
@given(mutated(MUTATION_SEEDS))
def test_mutated_ingest_messages(collector: CollectorUnderTest, raw_ingest, data: bytes) -> None:
    before = collector.stored()
    check_outcome(collector, data, send_bytes(raw_ingest, data), before)
    collector.assert_healthy()


@pytest.mark.parametrize("data", [
    b"\x12\xff\xff\xff\xff\x0f",  # an event whose length runs past the end
    b"\x00",                         # field number 0
    b"\x12\x02\x1a\x80",              # an event with a truncated node string
])  # fmt: skip
def test_undecodable_message_is_invalid_argument(
    collector: CollectorUnderTest, raw_ingest, data: bytes
) -> None:
    """Not UNKNOWN ("Unexpected DecodeError"): the agent's bug, said as such."""
    assert _decode(data) is None
    before = collector.stored()
    outcome = send_bytes(raw_ingest, data)
    assert isinstance(outcome, grpc.Call)
    assert outcome.code() == grpc.StatusCode.INVALID_ARGUMENT, outcome.details()
    assert "EventBatch" in details(outcome)
    collector.assert_healthy()
    assert collector.stored() == before


def test_good_batch_then_garbage_keeps_the_good_batch(
    collector: CollectorUnderTest, raw_ingest
) -> None:
    node = new_node()
    good = agent_batch(1, 5, node=node)
    before = collector.stored()
    acks: list[collector_pb2.Ack] = []
    with pytest.raises(grpc.RpcError):
        for ack in raw_ingest(iter([good.SerializeToString(), b"\x0a\x05garb"]), timeout=RPC_S):
            acks.append(ack)
    assert [(a.batch_id, a.stored) for a in acks] == [(1, 5)]
    collector.assert_healthy()
    assert collector.stored() == before + 5
    assert_stored_exactly(collector, node, good)


# -- size limits --------------------------------------------------------------------------


def test_batch_over_the_max_message_size(collector: CollectorUnderTest) -> None:
    limit = CollectorConfig().max_message_bytes
    node = new_node()
    batch = agent_batch(1, MAX_EVENTS, node=node)  # within the event limit: only size is wrong
    for ev in batch.events:
        ev.process.cmdline.append("x" * (limit // MAX_EVENTS + 1024))
    assert batch.ByteSize() > limit
    before = collector.stored()
    err = refused(collector, batch)
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.details()
    collector.assert_healthy()
    assert collector.stored() == before
    assert collector.agent_events(node) == []


def test_more_events_than_max_batch_events(collector: CollectorUnderTest) -> None:
    node = new_node()
    before = collector.stored()
    err = refused(collector, agent_batch(1, MAX_EVENTS + 1, node=node))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert str(MAX_EVENTS) in details(err) and str(MAX_EVENTS + 1) in details(err)
    collector.assert_healthy()
    assert collector.stored() == before
    # Exactly the maximum is fine.
    exactly = agent_batch(1, MAX_EVENTS, node=node)
    assert ingest(collector, exactly)[0].stored == MAX_EVENTS
    assert_stored_exactly(collector, node, exactly)


def test_empty_batch(collector: CollectorUnderTest) -> None:
    before = collector.stored()
    err = refused(collector, collector_pb2.EventBatch(batch_id=1))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "no events" in details(err)
    collector.assert_healthy()
    assert collector.stored() == before


# -- contract breaches ------------------------------------------------------------------------


def _collector_only(event_type: str):
    def breach(ev: events_pb2.Event) -> None:
        ev.type = event_type
        ev.ClearField("process")
        getattr(ev, event_type.replace(".", "_")).SetInParent()

    return breach


BREACHES = {
    # name: (how to break event 1 of 3, words the error must contain)
    "empty node": (lambda ev: setattr(ev, "node", ""), ["node", "empty"]),
    "empty boot_id": (lambda ev: setattr(ev, "boot_id", ""), ["boot_id", "empty"]),
    "seq 0": (lambda ev: setattr(ev, "seq", 0), ["seq"]),
    "seq goes back": (lambda ev: setattr(ev, "seq", 1), ["seq"]),
    "no time": (lambda ev: ev.ClearField("time"), ["time"]),
    "no type": (lambda ev: setattr(ev, "type", ""), ["type"]),
    "payload of another type": (lambda ev: ev.process_exit.SetInParent(), ["process_exit"]),
    "no payload": (lambda ev: ev.ClearField(ev.WhichOneof("payload")), ["payload"]),
    "another node in the batch": (lambda ev: setattr(ev, "node", "someone-else"), ["node"]),
    "agent.silent from an agent": (_collector_only("agent.silent"), ["agent.silent", "collector"]),
    "agent.gap from an agent": (_collector_only("agent.gap"), ["agent.gap", "collector"]),
    "agent.rejected from an agent": (
        _collector_only("agent.rejected"), ["agent.rejected", "collector"]),
}  # fmt: skip


@pytest.mark.parametrize("name", list(BREACHES))
def test_contract_breach_is_refused_with_the_reason(collector: CollectorUnderTest, name) -> None:
    breach, words = BREACHES[name]
    node = new_node()
    batch = agent_batch(1, 3, node=node)
    breach(batch.events[1])
    before = collector.stored()
    err = refused(collector, batch)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    for word in words:
        assert word in details(err), f"{word!r} not in {details(err)!r}"
    assert "event 1" in details(err)  # which event, so the agent's developer can find it
    collector.assert_healthy()
    # One bad event refuses the whole batch: its good events are not stored either.
    assert collector.stored() == before
    assert collector.agent_events(node) == []


# -- replays --------------------------------------------------------------------------------------


def test_replayed_batch_is_stored_once(collector: CollectorUnderTest) -> None:
    node = new_node()
    batch = agent_batch(1, 20, node=node, batch_id=4)
    before = collector.stored()
    [first] = ingest(collector, batch)
    assert (first.stored, first.duplicates, first.acked_seq) == (20, 0, 20)
    # A reconnecting agent resends on a new stream, then twice on one stream.
    [again] = ingest(collector, batch)
    assert (again.batch_id, again.stored, again.duplicates, again.acked_seq) == (4, 0, 20, 20)
    twice = ingest(collector, batch, batch)
    assert [(a.stored, a.duplicates) for a in twice] == [(0, 20), (0, 20)]
    collector.assert_healthy()
    assert collector.stored() == before + 20
    assert_stored_exactly(collector, node, batch)


def test_overlapping_resend_stores_only_the_new_events(collector: CollectorUnderTest) -> None:
    node = new_node()
    ingest(collector, agent_batch(1, 10, node=node))
    before = collector.stored()
    [ack] = ingest(collector, agent_batch(6, 10, node=node, batch_id=2))  # seq 6..15
    assert (ack.stored, ack.duplicates, ack.acked_seq) == (5, 5, 15)
    collector.assert_healthy()
    assert collector.stored() == before + 5
    assert_stored_exactly(collector, node, agent_batch(1, 15, node=node))


def test_replay_of_a_refused_batch_is_refused_again(collector: CollectorUnderTest) -> None:
    node = new_node()
    batch = agent_batch(1, 3, node=node)
    batch.events[2].seq = 0
    before = collector.stored()
    for _ in range(3):
        assert refused(collector, batch).code() == grpc.StatusCode.INVALID_ARGUMENT
    collector.assert_healthy()
    assert collector.stored() == before
