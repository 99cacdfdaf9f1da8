"""What a sensor is: kernel C to compile, tracepoints it needs, record decoders.

Sensors plug in by being listed in agent/sensors/registry.py. The loader
feature-probes their tracepoints, compiles all enabled sensors into one bcc
program (one ring buffer), and the decoder dispatches records by op code.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf.message import Message

from agent.record import Record
from agent.sensors.records import Hdr


class BootClock:
    """Converts bpf_ktime_get_boot_ns() stamps to wall-clock ns.

    The offset is re-read by :meth:`resync` (the agent calls it on every
    heartbeat) so wall-clock steps from NTP are followed.
    """

    def __init__(self) -> None:
        self.offset_ns = 0
        self.resync()

    def resync(self) -> None:
        self.offset_ns = time.time_ns() - time.clock_gettime_ns(time.CLOCK_BOOTTIME)

    def to_wall(self, ktime_ns: int) -> int:
        return ktime_ns + self.offset_ns


Decoder = Callable[[bytes, BootClock], Record]


@dataclass(frozen=True)
class BpfSensor:
    """A sensor backed by kernel code in agent/bpf/<source>."""

    name: str
    source: str  # file name under agent/bpf/
    required_tracepoints: tuple[str, ...]  # "category:name"; missing -> sensor off
    optional_tracepoints: tuple[str, ...] = ()  # missing -> HAVE_TP_<name> not defined
    # (macro, "category:name:field"): macro defined when the tracepoint has the field
    optional_fields: tuple[tuple[str, str], ...] = ()
    decoders: dict[int, Decoder] = field(default_factory=dict)

    def source_path(self, bpf_dir: Path) -> Path:
        return bpf_dir / self.source


def header_record(type_: str, h: Hdr, clock: BootClock, payload: Message) -> Record:
    """A Record carrying the identity every kernel record header holds."""
    return Record(
        type=type_,
        wall_ns=clock.to_wall(h.ktime_ns),
        payload=payload,
        pid=h.pid,
        tid=h.tid,
        ppid=h.ppid,
        uid=h.uid,
        gid=h.gid,
        comm=h.comm.decode(errors="replace"),
        cgroup_id=h.cgroup_id,
    )
