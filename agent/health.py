"""agent.health: the heartbeat that carries every loss counter to the collector."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from agent.record import Record
from gpuaudit.v1 import events_pb2

VERSION = "0.1.0"


@dataclass
class HealthSources:
    """Where each counter is read from; callables so they are read fresh."""

    mode: str
    interval_s: int
    sensors: list[events_pb2.SensorStatus]
    events_emitted: Callable[[], int]
    kernel_lost: Callable[[], int] = lambda: 0
    queue_dropped: Callable[[], int] = lambda: 0
    decode_errors: Callable[[], int] = lambda: 0
    spool_dropped: Callable[[], int] = lambda: 0
    spool_pending: Callable[[], int] = lambda: 0
    spool_bytes: Callable[[], int] = lambda: 0
    extra_status: list[Callable[[], events_pb2.SensorStatus | None]] = field(default_factory=list)


def merged_statuses(src: HealthSources) -> list[events_pb2.SensorStatus]:
    """The load-time statuses, each replaced by a newer one of the same name.

    A runtime that degrades after start (a worker queue overflowing, uprobes
    that failed to attach) reports under its sensor's name; None means no news.
    """
    by_name: dict[str, events_pb2.SensorStatus] = {}
    for status in [*src.sensors, *(f() for f in src.extra_status)]:
        if status is not None:
            by_name[status.name] = status
    return list(by_name.values())


def health_record(src: HealthSources, now_ns: Callable[[], int] = time.time_ns) -> Record:
    payload = events_pb2.AgentHealth(
        events_emitted=src.events_emitted(),
        kernel_lost=src.kernel_lost(),
        queue_dropped=src.queue_dropped(),
        decode_errors=src.decode_errors(),
        spool_dropped=src.spool_dropped(),
        spool_pending=src.spool_pending(),
        spool_bytes=src.spool_bytes(),
        sensors=merged_statuses(src),
        mode=src.mode,
        interval_s=src.interval_s,
        version=VERSION,
    )
    return Record(type="agent.health", wall_ns=now_ns(), payload=payload)
