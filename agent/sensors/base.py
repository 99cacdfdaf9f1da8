"""What a sensor is: kernel C to compile, tracepoints it needs, record decoders.

Sensors plug in by being listed in agent/sensors/registry.py. The loader
feature-probes their tracepoints, compiles all enabled sensors into one bcc
program (one ring buffer), and the decoder dispatches records by op code.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from google.protobuf.message import Message

from agent.record import Record
from agent.sensors.records import Hdr
from gpuaudit.v1 import events_pb2


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


Decoder = Callable[[bytes, BootClock], Record | None]
"""Turns one ring record into a Record; None when the record is handed on
(e.g. to a hashing worker that offers the finished Record to the inbox later)."""

Loop = Callable[[threading.Event], None]
"""A thread body: runs until the event is set."""


class Inbox(Protocol):
    """The processor's queue (agent.queue.DroppingQueue): never blocks, counts drops."""

    def offer(self, item: Any) -> bool: ...


@dataclass(frozen=True)
class MappedFile:
    """A file a process mapped executable (told to SensorHooks.library_mapped).

    ``map_path`` is /proc/PID/map_files/START-END: it opens the very file that
    is mapped even when it was deleted or replaced since, while the mapping lives.
    """

    pid: int
    path: str
    map_path: str
    dev: int
    inode: int


@dataclass
class SensorHooks:
    """Moments one sensor's user-space side tells the others about.

    Listeners run on the thread that saw the moment (usually the processor
    thread) and must return quickly: hand real work to a worker.
    """

    # a pid opened a GPU device for the first time (while the agent watched)
    gpu_touch: list[Callable[[int], None]] = field(default_factory=list)
    # a process mapped a file executable (code.load's sensor calls these)
    library_mapped: list[Callable[[MappedFile], None]] = field(default_factory=list)

    def tell_gpu_touch(self, pid: int) -> None:
        for listener in self.gpu_touch:
            listener(pid)

    def tell_library_mapped(self, mapped: MappedFile) -> None:
        for listener in self.library_mapped:
            listener(mapped)


@dataclass
class SensorContext:
    """What a sensor's user-space runtime gets from the agent."""

    bpf: Any  # the one compiled bcc.BPF program all sensors share
    inbox: Inbox  # where finished Records go (they are numbered in arrival order)
    clock: BootClock
    cfg: Any  # agent.main.AgentConfig (Any: agent.main imports this module)
    opened_gpu: Callable[[int], bool]  # pid opened a GPU device and lives
    hooks: SensorHooks
    proc_root: str = "/proc"


def periodic_flush(flush: Callable[[], object], interval_s: float, what: str
                   ) -> Callable[[threading.Event], None]:
    """A worker body: ``flush()`` every ``interval_s`` and once more at stop
    (what was counted since the last one). A failing flush is logged under
    ``what`` and never ends the thread."""

    def flush_safely() -> None:
        try:
            flush()
        except Exception as err:  # a failing flush must not end the thread
            logging.getLogger(__name__).warning("%s flush failed: %s", what, err)

    def run(stop: threading.Event) -> None:
        while not stop.wait(interval_s):
            flush_safely()
        flush_safely()

    return run


class SensorRuntime(Protocol):
    """The user-space side of a sensor that keeps state or runs threads.

    Made once after the program loaded, by ``BpfSensor.runtime(ctx)``.
    """

    def decoders(self) -> dict[int, Decoder]:
        """Decoders bound to this runtime's state; they replace the sensor's own."""
        ...

    def threads(self) -> list[tuple[str, Loop]]:
        """(name, body) of each thread to run; the agent starts and joins them."""
        ...

    def loss_counters(self) -> dict[str, Callable[[], int]]:
        """agent.loss reason -> cumulative count of events this runtime lost."""
        ...

    def status(self) -> events_pb2.SensorStatus | None:
        """A degraded state to report in agent.health, or None while all is well."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class BpfSensor:
    """A sensor backed by kernel code in agent/bpf/<source>."""

    name: str
    source: str | None  # file name under agent/bpf/; None: decodes records another emits
    required_tracepoints: tuple[str, ...]  # "category:name"; missing -> sensor off
    optional_tracepoints: tuple[str, ...] = ()  # missing -> HAVE_TP_<name> not defined
    # (macro, "category:name:field"): macro defined when the tracepoint has the field
    optional_fields: tuple[tuple[str, str], ...] = ()
    decoders: dict[int, Decoder] = field(default_factory=dict)
    # C struct name -> ctypes mirror, for tests/integration/test_alignment.py
    mirrors: dict[str, type] = field(default_factory=dict)
    runtime: Callable[[SensorContext], SensorRuntime] | None = None
    # more -D flags, computed at load (e.g. an offset from the running kernel's BTF)
    cflags: Callable[[], list[str]] | None = None

    def source_path(self, bpf_dir: Path) -> Path | None:
        return bpf_dir / self.source if self.source else None


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
