"""Per-node token buckets, and RESOURCE_EXHAUSTED over a real gRPC server."""

from __future__ import annotations

import grpc
import pytest

from collector.ingest.ratelimit import NodeRateLimiter
from collector.ingest.servicer import RETRY_AFTER_KEY
from collector.server import BackgroundCollector, CollectorConfig
from gpuaudit.v1 import collector_pb2, collector_pb2_grpc
from tests.unit.test_collector_support import batch, gpu_open


class Seconds:
    """A monotonic clock in seconds that only moves when told to."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_bucket_refills_at_the_rate_and_nodes_are_independent():
    clock = Seconds()
    limiter = NodeRateLimiter(rate=10, burst=20, clock=clock)
    assert limiter.admit("a", 20) is None  # a full bucket takes a burst
    assert limiter.admit("a", 5) == pytest.approx(0.5)  # 5 tokens at 10/s
    assert limiter.admit("b", 20) is None  # another node is unaffected
    clock.now += 0.5
    assert limiter.admit("a", 5) is None
    assert limiter.admit("a", 1) == pytest.approx(0.1)


def test_refused_batches_take_nothing():
    clock = Seconds()
    limiter = NodeRateLimiter(rate=10, burst=10, clock=clock)
    assert limiter.admit("a", 10) is None
    for _ in range(5):
        assert limiter.admit("a", 10) is not None
    clock.now += 1.0
    assert limiter.admit("a", 10) is None


def test_default_burst_is_two_seconds_and_big_batches_fit_a_full_bucket():
    clock = Seconds()
    limiter = NodeRateLimiter(rate=100, clock=clock)
    assert limiter.burst == 200
    assert limiter.admit("a", 500) is None  # bigger than the burst: admitted when full...
    assert limiter.admit("a", 1) == pytest.approx(3.01)  # ...and paid back before more
    assert limiter.admit("a", 500) == pytest.approx(5.0)  # needs a full bucket again


def test_zero_rate_is_off_and_negative_is_refused():
    assert NodeRateLimiter(rate=0).admit("a", 10**9) is None
    with pytest.raises(ValueError, match="must not be negative"):
        NodeRateLimiter(rate=-1)


def test_flooding_node_gets_resource_exhausted_with_retry_after(tmp_path):
    # 0.001 events/s: the bucket does not refill during the test.
    config = CollectorConfig(
        listen="127.0.0.1:0", db=str(tmp_path / "e.db"), insecure=True, watchdog_period_s=0,
        node_rate_limit=0.001, node_rate_burst=3, grace_s=1,
    )  # fmt: skip
    with BackgroundCollector(config) as running, grpc.insecure_channel(running.address) as ch:
        stub = collector_pb2_grpc.CollectorStub(ch)
        acks = list(stub.Ingest(iter([batch(1, gpu_open(1), gpu_open(2), gpu_open(3))])))
        assert [a.stored for a in acks] == [3]
        with pytest.raises(grpc.RpcError) as caught:
            list(stub.Ingest(iter([batch(2, gpu_open(4))])))
        err = caught.value
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "node 'n1' is over its ingest rate limit of 0.001 events/s" in err.details()
        assert "nothing stored" in err.details()
        retry = dict(err.trailing_metadata())[RETRY_AFTER_KEY]
        assert int(retry) > 900_000  # ~1000 s for one token at 0.001/s
        # Another node is not affected.
        other = list(stub.Ingest(iter([batch(3, gpu_open(1, node="n2"))])))
        assert [a.stored for a in other] == [1]
        status = stub.GetStatus(collector_pb2.StatusRequest())
        assert {n.node: n.events_stored for n in status.nodes} == {"n1": 3, "n2": 1}
