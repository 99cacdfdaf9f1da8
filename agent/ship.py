"""Ship spooled events to the collector over one bidirectional gRPC stream.

Batches go out while acks come back (a bounded window of batches in flight);
only acknowledged events leave the spool. Any stream failure reconnects with
jittered exponential backoff and resends from the last acknowledged seq; the
collector stores each (node, boot_id, seq) once, so resends are harmless.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Iterator

import grpc

from agent.spool import MemorySpool
from gpuaudit.v1 import collector_pb2, collector_pb2_grpc

log = logging.getLogger(__name__)

KEEPALIVE_OPTIONS = [
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
]


class Shipper:
    def __init__(
        self,
        target: str,
        spool: MemorySpool,
        batch_max: int = 1000,
        window: int = 8,
        backoff_max_s: float = 10.0,
    ) -> None:
        self.target = target
        self.spool = spool
        self.batch_max = batch_max
        self.window = window
        self.backoff_max_s = backoff_max_s
        self.connected = False
        self.reconnects = 0
        self.last_error = ""
        self._batch_id = 0

    def run(self, stop: threading.Event) -> None:
        delay = 0.2
        while not stop.is_set():
            try:
                self._stream_once(stop)
                delay = 0.2
            except grpc.RpcError as e:
                self._note_failure(e)
            self.connected = False
            if not stop.is_set():
                # full jitter: spread reconnects of many agents after an outage
                stop.wait(random.uniform(0, delay))
                delay = min(self.backoff_max_s, delay * 2)

    def _note_failure(self, e: grpc.RpcError) -> None:
        self.reconnects += 1
        msg = f"{e.code().name}: {e.details()}" if isinstance(e, grpc.Call) else str(e)
        if msg != self.last_error:
            log.warning("collector %s: %s (retrying)", self.target, msg)
        self.last_error = msg

    def _stream_once(self, stop: threading.Event) -> None:
        with grpc.insecure_channel(self.target, options=KEEPALIVE_OPTIONS) as channel:
            stub = collector_pb2_grpc.CollectorStub(channel)
            slots = threading.Semaphore(self.window)
            acks = stub.Ingest(self._batches(stop, slots))
            for ack in acks:
                if not self.connected:
                    log.info("connected to collector %s", self.target)
                    self.connected = True
                    self.last_error = ""
                self.spool.ack(ack.acked_seq)
                slots.release()

    def _batches(
        self, stop: threading.Event, slots: threading.Semaphore
    ) -> Iterator[collector_pb2.EventBatch]:
        sent = self.spool.acked_seq  # resend everything not yet acknowledged
        while not stop.is_set():
            if not slots.acquire(timeout=0.5):
                continue
            events = self.spool.read(sent, self.batch_max, timeout=0.5)
            if not events:
                slots.release()
                continue
            self._batch_id += 1
            sent = events[-1].seq
            yield collector_pb2.EventBatch(batch_id=self._batch_id, events=events)
