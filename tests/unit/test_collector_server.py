"""The collector's gRPC services over a real grpc.aio server on 127.0.0.1:0."""

from __future__ import annotations

import asyncio
import socket

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from collector.server import (
    BackgroundCollector,
    CollectorConfig,
    StartupError,
    running_collector,
    split_listen,
)
from gpuaudit.v1 import collector_pb2, collector_pb2_grpc, events_pb2
from tests.unit.test_collector_support import (
    FakeClock,
    batch,
    gpu_open,
    health,
    process_exec,
    process_exit,
)

MAX_EVENTS = 10


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def collector(tmp_path, clock):
    config = CollectorConfig(
        listen="127.0.0.1:0",
        db=str(tmp_path / "events.db"),
        max_batch_events=MAX_EVENTS,
        watchdog_period_s=0,  # the tests call watchdog.check() themselves
        grace_s=1,
        insecure=True,
    )
    with BackgroundCollector(config, clock=clock) as running:
        yield running


@pytest.fixture
def stub(collector):
    with grpc.insecure_channel(collector.address) as channel:
        yield collector_pb2_grpc.CollectorStub(channel)


def ingest(stub, *batches):
    return list(stub.Ingest(iter(batches), timeout=10))


def query(stub, **kw):
    return list(stub.QueryEvents(collector_pb2.EventQuery(**kw), timeout=10))


def ack(batch_id, acked_seq, stored, duplicates=0, boot_id="b1"):
    return collector_pb2.Ack(
        batch_id=batch_id, boot_id=boot_id, acked_seq=acked_seq, stored=stored,
        duplicates=duplicates,
    )  # fmt: skip


def test_binds_a_free_port(collector):
    assert collector.port > 0
    assert collector.address == f"127.0.0.1:{collector.port}"


def test_two_batches_are_acked_and_a_replay_is_deduplicated(stub):
    first = batch(7, gpu_open(1), gpu_open(2), health(3))
    second = batch(8, gpu_open(4), process_exit(5))
    assert ingest(stub, first, second) == [ack(7, 3, 3), ack(8, 5, 2)]
    # The agent reconnects and resends the first batch: nothing new stored.
    assert ingest(stub, first) == [ack(7, 5, 0, duplicates=3)]
    assert [e.seq for e in query(stub)] == [1, 2, 3, 4, 5]


def _mixed_nodes():
    return batch(1, gpu_open(1), gpu_open(2, node="other"))


def _payload_mismatch():
    ev = gpu_open(1)
    ev.type = "process.exec"
    return batch(1, ev)


BAD_BATCHES = {
    "empty": (lambda: batch(1), "batch has no events"),
    "mixed nodes": (_mixed_nodes, "node 'other' differs from the batch's node 'n1'"),
    "mixed boot_id": (
        lambda: batch(1, gpu_open(1), gpu_open(2, boot_id="b2")),
        "boot_id 'b2' differs",
    ),
    "payload mismatch": (
        _payload_mismatch,
        "type 'process.exec' but payload 'gpu_open' is set (expected 'process_exec')",
    ),
    "no payload": (
        lambda: batch(1, events_pb2.Event(type="gpu.open", node="n", boot_id="b", seq=1,
                                          time={"seconds": 1})),
        "no payload is set",
    ),
    "decreasing seq": (
        lambda: batch(1, gpu_open(5), gpu_open(4)),
        "event 1 (seq 4): seq 4 is not greater than the previous event's seq 5",
    ),
    "repeated seq": (lambda: batch(1, gpu_open(5), gpu_open(5)), "not greater than"),
    "zero seq": (lambda: batch(1, gpu_open(0)), "seq must be greater than 0"),
    "empty node": (lambda: batch(1, gpu_open(1, node="")), "event 0 (seq 1): node is empty"),
    "empty boot_id": (lambda: batch(1, gpu_open(1, boot_id="")), "boot_id is empty"),
    "empty type": (
        lambda: batch(1, events_pb2.Event(node="n", boot_id="b", seq=1, time={"seconds": 1})),
        "type is empty",
    ),
    "no time": (
        lambda: batch(1, events_pb2.Event(type="gpu.open", node="n", boot_id="b", seq=1)),
        "time is not set",
    ),
    "oversized": (
        lambda: batch(1, *[gpu_open(s) for s in range(1, MAX_EVENTS + 2)]),
        f"batch has {MAX_EVENTS + 1} events, more than the maximum of {MAX_EVENTS}",
    ),
    "agent sends agent.silent": (
        lambda: batch(1, events_pb2.Event(type="agent.silent", node="n", boot_id="b", seq=1,
                                          time={"seconds": 1}, agent_silent={})),
        "raised by the collector",
    ),
    "agent sends agent.gap": (
        lambda: batch(1, events_pb2.Event(type="agent.gap", node="n", boot_id="b", seq=1,
                                          time={"seconds": 1}, agent_gap={})),
        "type 'agent.gap' is raised by the collector",
    ),
    "agent sends agent.rejected": (
        lambda: batch(1, events_pb2.Event(type="agent.rejected", node="n", boot_id="b", seq=1,
                                          time={"seconds": 1}, agent_rejected={})),
        "type 'agent.rejected' is raised by the collector",
    ),
}


@pytest.mark.parametrize("name", sorted(BAD_BATCHES))
def test_malformed_batch_is_rejected_and_server_keeps_serving(stub, name):
    make, message = BAD_BATCHES[name]
    with pytest.raises(grpc.RpcError) as caught:
        ingest(stub, make())
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in caught.value.details()
    assert caught.value.details().startswith("batch 1: ")
    assert query(stub) == []  # nothing of the bad batch was stored
    assert ingest(stub, batch(2, gpu_open(1))) == [ack(2, 1, 1)]


def test_good_batches_before_a_bad_one_stay_stored(stub):
    acks = []
    with pytest.raises(grpc.RpcError) as caught:
        for a in stub.Ingest(iter([batch(1, gpu_open(1)), batch(2, gpu_open(1, node=""))])):
            acks.append(a)
    assert acks == [ack(1, 1, 1)]
    assert "batch 2: event 0 (seq 1): node is empty" in caught.value.details()
    assert [e.seq for e in query(stub)] == [1]


def test_a_storage_failure_is_unavailable_not_a_crash(stub, collector):
    collector.storage.close()  # every later SQLite call fails
    with pytest.raises(grpc.RpcError) as caught:
        ingest(stub, batch(1, gpu_open(1)))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "collector could not store the batch" in caught.value.details()
    with pytest.raises(grpc.RpcError) as caught:
        query(stub)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    health_stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(collector.address))
    assert health_stub.Check(health_pb2.HealthCheckRequest()).status == (
        health_pb2.HealthCheckResponse.SERVING
    )


def test_a_message_over_the_size_limit_gets_grpcs_resource_exhausted(tmp_path):
    config = CollectorConfig(
        listen="127.0.0.1:0", db=str(tmp_path / "m.db"), insecure=True,
        max_message_bytes=4096, watchdog_period_s=0, grace_s=1,
    )  # fmt: skip
    big = batch(1, *[gpu_open(s, path="/dev/nvidia" + "x" * 100) for s in range(1, 60)])
    assert big.ByteSize() > 4096
    with BackgroundCollector(config) as running, grpc.insecure_channel(running.address) as ch:
        stub = collector_pb2_grpc.CollectorStub(ch)
        with pytest.raises(grpc.RpcError) as caught:
            ingest(stub, big)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"larger than max ({big.ByteSize()} vs. 4096)" in caught.value.details()
        assert ingest(stub, batch(2, gpu_open(1))) == [ack(2, 1, 1)]


def test_query_events_filters(stub):
    ingest(stub, batch(1,
        gpu_open(1, t_s=1, pid=10, uid=1000),
        process_exec(2, ["/usr/bin/nvidia-smi"], t_s=2, pid=11, uid=0),
        process_exit(3, t_s=3, pid=11, uid=0),
        health(4, t_s=4),
    ), batch(2, gpu_open(1, node="n2", boot_id="c", t_s=5, pid=12, uid=1000)))  # fmt: skip
    assert [e.type for e in query(stub, types=["gpu.open"])] == ["gpu.open", "gpu.open"]
    assert [e.node for e in query(stub, nodes=["n2"])] == ["n2"]
    assert [e.seq for e in query(stub, pid=11)] == [2, 3]
    assert [e.seq for e in query(stub, uid=1000)] == [1, 1]
    since = collector_pb2.EventQuery()
    since.since.CopyFrom(query(stub)[3].time)
    assert [e.type for e in stub.QueryEvents(since)] == ["agent.health", "gpu.open"]
    assert [e.seq for e in query(stub, limit=2)] == [1, 2]
    assert [(e.node, e.seq) for e in query(stub, limit=2, newest=True)] == [("n1", 4), ("n2", 1)]


def test_query_with_too_many_filter_values_is_refused(stub):
    with pytest.raises(grpc.RpcError) as caught:
        query(stub, nodes=[f"n{i}" for i in range(1001)])
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "nodes lists 1001 values" in caught.value.details()


def test_get_status(stub, collector):
    ingest(stub, batch(1, gpu_open(1), health(2, lost=(3, 4, 5), interval_s=2)))
    reply = stub.GetStatus(collector_pb2.StatusRequest(), timeout=10)
    assert reply.events_stored == 2
    assert reply.db == f"sqlite:{collector.storage.path}"
    (node,) = reply.nodes
    assert (node.node, node.boot_id, node.last_seq, node.events_stored) == ("n1", "b1", 2, 2)
    assert (node.kernel_lost, node.queue_dropped, node.decode_errors) == (3, 4, 5)
    assert (node.mode, node.silent) == ("ebpf", False)
    assert [s.state for s in node.sensors] == ["ok", "degraded"]


def test_health_check_is_serving(collector):
    with grpc.insecure_channel(collector.address) as channel:
        health_stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "gpuaudit.v1.Collector"):
            reply = health_stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_watchdog_marks_silent_once_and_heartbeat_clears(stub, collector, clock):
    ingest(stub, batch(1, health(1, interval_s=2)))
    clock.advance(7)
    assert len(collector.watchdog.check()) == 1
    assert collector.watchdog.check() == []
    silent = query(stub, types=["agent.silent"])
    assert [(e.node, e.seq) for e in silent] == [("n1", 1)]
    assert silent[0].boot_id == collector.watchdog.boot_id
    assert stub.GetStatus(collector_pb2.StatusRequest()).nodes[0].silent is True

    ingest(stub, batch(2, health(2, t_s=8, interval_s=2)))
    node = stub.GetStatus(collector_pb2.StatusRequest()).nodes[0]
    assert (node.silent, node.boot_id, node.events_stored) == (False, "b1", 3)


def test_async_client_against_running_collector(tmp_path):
    async def scenario():
        config = CollectorConfig(listen="127.0.0.1:0", db=str(tmp_path / "a.db"), insecure=True)
        async with (
            running_collector(config) as running,
            grpc.aio.insecure_channel(running.address) as channel,
        ):
            stub = collector_pb2_grpc.CollectorStub(channel)
            call = stub.Ingest()
            await call.write(batch(1, gpu_open(1), gpu_open(2)))
            first = await call.read()
            await call.write(batch(2, gpu_open(3)))
            second = await call.read()
            await call.done_writing()
            events = [e async for e in stub.QueryEvents(collector_pb2.EventQuery())]
            return first, second, events

    first, second, events = asyncio.run(scenario())
    assert (first.acked_seq, first.stored, second.acked_seq, second.stored) == (2, 2, 3, 1)
    assert [e.seq for e in events] == [1, 2, 3]


def test_a_taken_port_is_a_clear_startup_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = CollectorConfig(
            listen=f"127.0.0.1:{port}", db=str(tmp_path / "e.db"), insecure=True
        )
        with pytest.raises(StartupError, match=f"cannot listen on 127.0.0.1:{port}"):
            BackgroundCollector(config).start()


def test_an_unusable_db_path_is_a_clear_startup_error(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    config = CollectorConfig(
        listen="127.0.0.1:0", db=str(tmp_path / "file" / "events.db"), insecure=True
    )
    with pytest.raises(StartupError, match="cannot open database"):
        BackgroundCollector(config).start()


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:0", ("127.0.0.1", 0)), ("[::1]:50051", ("[::1]", 50051)),
     ("collector.example:443", ("collector.example", 443))],
)  # fmt: skip
def test_split_listen(text, expected):
    assert split_listen(text) == expected


@pytest.mark.parametrize("text", ["nohost", ":50051", "host:", "host:port", "host:70000"])
def test_split_listen_rejects(text):
    with pytest.raises(ValueError, match="not HOST:PORT"):
        split_listen(text)
