"""decode -> enrich -> number -> spool, on one processor thread.

Everything that becomes an event passes through here, so seq numbers are
assigned in one place, in order, without gaps (per boot_id).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Protocol

from agent.queue import DroppingQueue
from agent.record import Record
from agent.sensors.base import BootClock, Decoder, SensorHooks
from gpuaudit.v1 import events_pb2

log = logging.getLogger(__name__)


class ProcessEnricher(Protocol):
    def process_for(self, rec: Record) -> events_pb2.Process: ...
    def forget(self, pid: int) -> None: ...


class EventSpool(Protocol):
    """Where numbered events go (agent.spool.DiskSpool)."""

    def append(self, seq: int, payload: bytes) -> bool: ...
    def flush(self) -> None: ...


class LossEvents(Protocol):
    """Source of agent.loss records (agent.loss.LossReporter)."""

    def due(self, force: bool = False) -> list[Record]: ...


@dataclass
class Identity:
    """Who is speaking: stamped on every event."""

    node: str
    boot_id: str


def build_event(
    rec: Record, ident: Identity, seq: int, process: events_pb2.Process | None
) -> events_pb2.Event:
    """The envelope for one record; the payload field is the type with '.' -> '_'."""
    ev = events_pb2.Event(type=rec.type, node=ident.node, boot_id=ident.boot_id, seq=seq)
    # Timestamp's own FromNanoseconds is pure Python and shows in profiles
    ev.time.seconds, ev.time.nanos = divmod(rec.wall_ns, 1_000_000_000)
    if process is not None:
        ev.process.CopyFrom(process)
    getattr(ev, rec.type.replace(".", "_")).CopyFrom(rec.payload)
    return ev


class Processor:
    """Consumes raw ring records (bytes) and ready Records from one queue."""

    def __init__(
        self,
        inbox: DroppingQueue[bytes | Record],
        decoders: dict[int, Decoder],
        clock: BootClock,
        enricher: ProcessEnricher,
        ident: Identity,
        spool: EventSpool,
        losses: LossEvents | None = None,
        hooks: SensorHooks | None = None,
    ) -> None:
        self.inbox = inbox
        self.decoders = decoders
        self.clock = clock
        self.enricher = enricher
        self.ident = ident
        self.spool = spool
        self.losses = losses
        self.hooks = hooks or SensorHooks()
        self.seq = 0  # last seq assigned == events emitted
        # pids seen opening a GPU device node (successfully), until they exit:
        # NVML's gpu.process says whether the agent saw the open (seen_open)
        self.gpu_openers: set[int] = set()
        self.decode_errors = 0
        self._last_error_log = 0.0

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set() or self.inbox.qsize():
            item = self.inbox.get(timeout=0.2)
            if item is not None:
                self.handle(item)
            if item is None or not self.inbox.qsize():
                # idle: make what we have readable by the shipper now (the
                # spool also flushes by itself every 64 KiB under load)
                self.spool.flush()
            self.report_losses()
        self.report_losses(force=True)
        self.spool.flush()

    def report_losses(self, force: bool = False) -> None:
        """Emit agent.loss events for losses counted since the last report."""
        if self.losses is not None:
            for rec in self.losses.due(force):
                self.handle(rec)

    def handle(self, item: bytes | Record) -> None:
        rec = self._decode(item) if isinstance(item, bytes) else item
        if rec is None:
            return
        process = self.enricher.process_for(rec) if rec.pid else None
        self.seq += 1
        event = build_event(rec, self.ident, self.seq, process)
        self.spool.append(self.seq, event.SerializeToString())
        if rec.type == "gpu.open" and getattr(rec.payload, "fd", -1) >= 0:
            if rec.pid not in self.gpu_openers:
                self.gpu_openers.add(rec.pid)
                self.hooks.tell_gpu_touch(rec.pid)
        elif rec.type == "process.exit":
            self.enricher.forget(rec.pid)
            self.gpu_openers.discard(rec.pid)

    def opened_gpu(self, pid: int) -> bool:
        """Whether ``pid`` opened a GPU device node while the agent watched (and lives)."""
        return pid in self.gpu_openers

    def _decode(self, data: bytes) -> Record | None:
        decoder = self.decoders.get(data[0]) if data else None
        try:
            if decoder is None:
                raise ValueError(f"unknown op {data[0] if data else None}")
            return decoder(data, self.clock)
        except Exception as e:  # per-record errors are counted, never raised
            self.decode_errors += 1
            self._log_rate_limited("undecodable record (%d bytes): %s", len(data), e)
            return None

    def _log_rate_limited(self, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last_error_log > 10:
            self._last_error_log = now
            log.warning(msg + " (further errors counted in agent.health)", *args)
