"""The shipper against scripted collectors over real gRPC on loopback.

The scripted servicer plays a collector that misbehaves in one chosen way
(refuses one event, rate-limits, answers slowly); the shipper must deliver
everything else exactly once and count what it had to give up.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.ship import Shipper, encode_batch
from agent.spool import DiskSpool
from gpuaudit.v1 import collector_pb2, collector_pb2_grpc, events_pb2


def event(seq: int, boot: str = "b1") -> bytes:
    ev = events_pb2.Event(type="gpu.open", node="n1", boot_id=boot, seq=seq)
    ev.time.FromNanoseconds(seq)
    ev.gpu_open.path = "/dev/nvidia0"
    return ev.SerializeToString()


@given(st.integers(min_value=0, max_value=2**64 - 1),
       st.lists(st.binary(max_size=300), max_size=20))
def test_hand_built_batch_is_the_protobuf_encoding(batch_id: int, payloads: list[bytes]) -> None:
    parsed = collector_pb2.EventBatch.FromString(
        encode_batch(batch_id, [event(i + 1) for i in range(len(payloads))]))
    assert parsed.batch_id == batch_id
    assert [e.seq for e in parsed.events] == list(range(1, len(payloads) + 1))


Decide = Callable[[collector_pb2.EventBatch, grpc.ServicerContext], None]


class ScriptedCollector(collector_pb2_grpc.CollectorServicer):
    """Stores seqs and acks, after ``decide`` had its say (it may abort)."""

    def __init__(self, decide: Decide) -> None:
        self.decide = decide
        self.stored: list[int] = []
        self.batches = 0
        self.lock = threading.Lock()

    def Ingest(self, request_iterator: Iterator[collector_pb2.EventBatch],
               context: grpc.ServicerContext) -> Iterator[collector_pb2.Ack]:
        for batch in request_iterator:
            with self.lock:
                self.batches += 1
                self.decide(batch, context)
                new = [e.seq for e in batch.events if e.seq not in self.stored]
                self.stored += new
            yield collector_pb2.Ack(batch_id=batch.batch_id, boot_id=batch.events[0].boot_id,
                                    acked_seq=max(self.stored), stored=len(new))


@pytest.fixture
def serve() -> Iterator[Callable[[Decide], tuple[ScriptedCollector, str]]]:
    servers: list[grpc.Server] = []

    def start(decide: Decide) -> tuple[ScriptedCollector, str]:
        server = grpc.server(futures.ThreadPoolExecutor(4))
        servicer = ScriptedCollector(decide)
        collector_pb2_grpc.add_CollectorServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return servicer, f"127.0.0.1:{port}"

    yield start
    for s in servers:
        s.stop(0)


def ship_all(spool: DiskSpool, target: str, n: int, **kw: object) -> Shipper:
    for seq in range(1, n + 1):
        spool.append(seq, event(seq))
    spool.flush()
    shipper = Shipper(target, spool, batch_max=10, backoff_max_s=0.2, **kw)  # type: ignore[arg-type]
    stop = threading.Event()
    thread = threading.Thread(target=shipper.run, args=(stop,), daemon=True)
    thread.start()
    try:
        assert spool.wait_drained(30), f"{spool.pending()} events never acknowledged"
    finally:
        stop.set()
        thread.join(10)
    return shipper


def test_everything_is_delivered_once_in_order(tmp_path: Path, serve) -> None:
    col, target = serve(lambda b, c: None)
    ship_all(DiskSpool(tmp_path, "b1"), target, 95)
    assert col.stored == list(range(1, 96))


def test_an_event_the_collector_refuses_for_good_is_skipped_and_counted(
        tmp_path: Path, serve) -> None:
    def refuse_seq_37(batch: collector_pb2.EventBatch, ctx: grpc.ServicerContext) -> None:
        if any(e.seq == 37 for e in batch.events):
            ctx.abort(grpc.StatusCode.INVALID_ARGUMENT, "event 37 breaks the contract")

    col, target = serve(refuse_seq_37)
    spool = DiskSpool(tmp_path, "b1")
    ship_all(spool, target, 95)
    assert col.stored == [s for s in range(1, 96) if s != 37]
    losses = spool.take_losses()
    assert [(lo.reason, lo.count, lo.first_seq, lo.last_seq) for lo in losses] == [
        ("rejected", 1, 37, 37)]


def test_rate_limited_agent_waits_the_retry_after_then_delivers(tmp_path: Path, serve) -> None:
    limited_until = [0.0]
    refusals = [0]

    def limit_twice(batch: collector_pb2.EventBatch, ctx: grpc.ServicerContext) -> None:
        if refusals[0] < 2:
            refusals[0] += 1
            limited_until[0] = time.monotonic() + 0.5
            ctx.abort_with_status(_status(grpc.StatusCode.RESOURCE_EXHAUSTED, "node over limit",
                                          (("retry-after-ms", "500"),)))
        assert time.monotonic() >= limited_until[0], "agent came back before retry-after"

    col, target = serve(limit_twice)
    ship_all(DiskSpool(tmp_path, "b1"), target, 50)
    assert col.stored == list(range(1, 51)) and refusals[0] == 2


def test_smaller_batches_when_the_collector_says_they_are_too_large(
        tmp_path: Path, serve) -> None:
    def at_most_3(batch: collector_pb2.EventBatch, ctx: grpc.ServicerContext) -> None:
        if len(batch.events) > 3:
            ctx.abort(grpc.StatusCode.INVALID_ARGUMENT,
                      f"batch has {len(batch.events)} events, more than the maximum of 3")

    col, target = serve(at_most_3)
    spool = DiskSpool(tmp_path, "b1")
    ship_all(spool, target, 40)
    assert col.stored == list(range(1, 41))
    assert spool.take_losses() == []


class _Status(grpc.Status):
    def __init__(self, code: grpc.StatusCode, details: str,
                 trailing_metadata: tuple[tuple[str, str], ...]) -> None:
        self.code = code
        self.details = details
        self.trailing_metadata = trailing_metadata


def _status(code: grpc.StatusCode, details: str,
            trailers: tuple[tuple[str, str], ...]) -> grpc.Status:
    return _Status(code, details, trailers)
