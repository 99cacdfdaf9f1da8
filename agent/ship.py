"""Ship spooled events to the collector over one bidirectional gRPC stream.

Batches go out while acks come back (a bounded window of batches in flight);
a batch leaves the spool only when its Ack says it is committed. Any stream
failure reconnects with jittered exponential backoff and resends from the
first unacknowledged record; the collector stores each (node, boot_id, seq)
once, so resends are harmless.

Failures the collector names get their own answer:

* RESOURCE_EXHAUSTED from the node's rate limit: wait the ``retry-after-ms``
  it sends (events wait in the spool); for a message over the collector's
  size limit: halve the batch size.
* INVALID_ARGUMENT: the collector will never take that batch. Resend it one
  event per batch to find the refused events, then give those up as an
  ``agent.loss`` (reason ``rejected``) instead of blocking the spool forever.
* Streams carry a deadline and are recycled when it expires; a batch with no
  Ack for ``ack_timeout_s`` means a stuck connection and forces a reconnect.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import grpc

from agent.spool import Chunk, DiskSpool, Position
from gpuaudit.v1 import collector_pb2

log = logging.getLogger(__name__)

INGEST_METHOD = "/gpuaudit.v1.Collector/Ingest"
MiB = 1024 * 1024

# Paired with the collector's server options (collector/server.py): it permits
# pings every >= 10 s without data, so 20 s here never earns a GOAWAY.
KEEPALIVE_OPTIONS = [
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_send_message_length", 16 * MiB),
]


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def encode_batch(batch_id: int, payloads: list[bytes], signature: bytes = b"") -> bytes:
    """An EventBatch in protobuf wire format, built from serialized Events.

    The spool keeps events serialized; concatenating them behind the field
    tags (1: batch_id varint, 2: events length-delimited, 3: the serialized
    BatchSignature) avoids parsing and re-serializing every event on the way
    out -- and the collector stores, and verify checks, the very bytes signed.
    """
    out = bytearray(b"\x08" + _varint(batch_id))
    for payload in payloads:
        out += b"\x12" + _varint(len(payload))
        out += payload
    if signature:
        out += b"\x1a" + _varint(len(signature)) + signature
    return bytes(out)


class Signer(Protocol):
    """agent.signing.BatchSigner: the serialized BatchSignature of a batch."""

    def sign(self, boot_id: str, seqs: Sequence[int], bodies: Sequence[bytes]) -> bytes: ...


@dataclass
class _InFlight:
    batch_id: int
    chunk: Chunk
    sent_at: float


class Shipper:
    """Streams the spool to one collector until stopped."""

    def __init__(
        self,
        target: str,
        spool: DiskSpool,
        credentials: grpc.ChannelCredentials | None = None,
        batch_max: int = 1000,
        batch_bytes: int = 4 * MiB,
        window: int = 8,
        backoff_max_s: float = 10.0,
        ack_timeout_s: float = 30.0,
        stream_deadline_s: float = 600.0,
        on_ack: Callable[[Chunk, float], None] | None = None,
        signer: Signer | None = None,
    ) -> None:
        self.target = target
        self.spool = spool
        self.credentials = credentials
        self.batch_max = batch_max
        self.batch_bytes = batch_bytes
        self.window = window
        self.backoff_max_s = backoff_max_s
        self.ack_timeout_s = ack_timeout_s
        self.stream_deadline_s = stream_deadline_s
        self.on_ack = on_ack  # (chunk, ack time) for benches measuring latency
        self.signer = signer  # None: batches go unsigned (no TLS identity to sign with)
        self.connected = False
        self.reconnects = 0
        self.last_error = ""
        self._batch_id = 0
        self._inflight: deque[_InFlight] = deque()
        self._lock = threading.Lock()
        self._probe_until: Position | None = None
        self._call: grpc.Call | None = None

    # -- the reconnect loop ------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        delay = 0.2
        while not stop.is_set():
            wait = 0.0
            try:
                self._stream_once(stop)
            except grpc.RpcError as e:
                wait = self._after_failure(e)
            if self.connected:
                delay = 0.2  # it worked for a while: a new failure starts the backoff afresh
            self.connected = False
            if wait < 0:  # an expected stream rotation: straight back
                continue
            if not stop.is_set():
                # full jitter spreads the reconnects of many agents after an outage
                stop.wait(max(wait, random.uniform(0, delay)))
                delay = min(self.backoff_max_s, delay * 2)

    def _channel(self) -> grpc.Channel:
        if self.credentials is None:
            return grpc.insecure_channel(self.target, options=KEEPALIVE_OPTIONS)
        return grpc.secure_channel(self.target, self.credentials, options=KEEPALIVE_OPTIONS)

    def _stream_once(self, stop: threading.Event) -> None:
        with self._channel() as channel:
            ingest = channel.stream_stream(
                INGEST_METHOD,
                request_serializer=lambda b: b,  # already wire format (encode_batch)
                response_deserializer=collector_pb2.Ack.FromString,
            )
            slots = threading.Semaphore(self.window)
            with self._lock:
                self._inflight.clear()
            call = ingest(self._batches(stop, slots), timeout=self.stream_deadline_s)
            self._call = call
            for ack in call:
                self._on_ack(ack)
                slots.release()

    def _on_ack(self, ack: collector_pb2.Ack) -> None:
        if not self.connected:
            log.info("connected to collector %s", self.target)
            self.connected = True
            self.last_error = ""
        with self._lock:
            front = self._inflight.popleft() if self._inflight else None
        if front is None or front.batch_id != ack.batch_id:
            raise _protocol_error(f"ack for batch {ack.batch_id}, expected "
                                  f"{front.batch_id if front else 'none'}")
        self.spool.ack(front.chunk)
        if self.on_ack is not None:
            self.on_ack(front.chunk, time.time())

    # -- what goes out -------------------------------------------------------------
    def _batches(self, stop: threading.Event, slots: threading.Semaphore) -> Iterator[bytes]:
        pos = self.spool.start()  # resend everything not yet acknowledged
        while not stop.is_set():
            self._check_stuck()
            if not slots.acquire(timeout=0.5):
                continue
            chunk = self.spool.read(pos, self._max_events(pos), self.batch_bytes)
            if chunk is None:
                slots.release()
                self.spool.wait(pos, 0.5)
                continue
            pos = chunk.end
            if not chunk.payloads:  # damage the spool skipped: nothing to send
                self.spool.ack(chunk)
                slots.release()
                continue
            yield self._send(chunk)

    def _max_events(self, pos: Position) -> int:
        if self._probe_until is not None and pos < self._probe_until:
            return 1
        self._probe_until = None
        return self.batch_max

    def _send(self, chunk: Chunk) -> bytes:
        self._batch_id += 1
        with self._lock:
            self._inflight.append(_InFlight(self._batch_id, chunk, time.monotonic()))
        signature = (self.signer.sign(chunk.boot_id, chunk.seqs, chunk.payloads)
                     if self.signer is not None else b"")
        return encode_batch(self._batch_id, chunk.payloads, signature)

    def _check_stuck(self) -> None:
        with self._lock:
            oldest = self._inflight[0].sent_at if self._inflight else None
        if oldest is not None and time.monotonic() - oldest > self.ack_timeout_s:
            log.warning("collector %s: no ack for %.0fs; reconnecting", self.target,
                        self.ack_timeout_s)
            if self._call is not None:
                self._call.cancel()

    # -- failures --------------------------------------------------------------------
    def _after_failure(self, e: grpc.RpcError) -> float:
        """Handle a failed stream; the minimum wait before reconnecting (-1: none)."""
        code = e.code() if isinstance(e, grpc.Call) else None
        details = (e.details() or "") if isinstance(e, grpc.Call) else str(e)
        if code == grpc.StatusCode.DEADLINE_EXCEEDED and self.connected:
            log.debug("ingest stream reached its deadline; reopening")
            return -1.0
        self.reconnects += 1
        self._note(f"{code.name if code else 'error'}: {details}")
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return self._resource_exhausted(e, details)
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            self._refused_batch(details)
        if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
            return self.backoff_max_s  # a configuration problem: no point hurrying
        return 0.0

    def _note(self, msg: str) -> None:
        if msg != self.last_error:
            log.warning("collector %s: %s (events wait in the spool; retrying)", self.target, msg)
        self.last_error = msg

    def _resource_exhausted(self, e: grpc.RpcError, details: str) -> float:
        if "larger than max" in details and self.batch_bytes > 64 * 1024:
            self.batch_bytes //= 2
            log.warning("collector refuses messages this large; batches now <= %d bytes",
                        self.batch_bytes)
            return 0.0
        return _retry_after_s(e)

    def _refused_batch(self, details: str) -> None:
        if "more than the maximum" in details and self.batch_max > 1:
            self.batch_max //= 2  # the collector takes smaller batches than we send
            log.warning("collector refuses batches this large; now <= %d events", self.batch_max)
            return
        with self._lock:
            front = self._inflight[0] if self._inflight else None
        if front is None:
            return
        if len(front.chunk) == 1:
            log.error("collector refuses event seq %d of run %s for good; counted as lost",
                      front.chunk.first_seq, front.chunk.boot_id)
            self.spool.skip(front.chunk, "rejected")
            return
        # Find out which events it refuses: resend them one per batch.
        self._probe_until = front.chunk.end


def _retry_after_s(e: grpc.RpcError) -> float:
    """The collector's retry-after-ms trailer, in seconds (1 s if absent)."""
    trailers: tuple[tuple[str, str | bytes], ...] = (
        e.trailing_metadata() or () if isinstance(e, grpc.Call) else ())
    for key, value in trailers:
        if key == "retry-after-ms":
            try:
                return max(0.0, int(value) / 1000)
            except (TypeError, ValueError):
                break
    return 1.0


class _ProtocolError(grpc.RpcError):
    def __init__(self, message: str) -> None:
        super().__init__(message)


def _protocol_error(message: str) -> grpc.RpcError:
    return _ProtocolError(f"collector broke the ack protocol: {message}")
