"""The NVML sensor: GPU inventory, processes per GPU, Xid events, for the agent.

Usage from the agent::

    gpu = NvmlSensor(library=None, opened=holds_gpu)   # holds_gpu(pid) -> bool
    if gpu.start():                   # False: sensor "off", status() says why
        spawn(gpu.poll_loop(inbox, poll_s)); spawn(gpu.xid_loop(inbox))
    health_sources.extra_status.append(gpu.status)
    ...                               # after the threads ended: gpu.close()

Nothing here raises into the agent: no NVML means "off", a field NVML will not
give means "degraded" with that field named, an unexpected failure in one poll
is counted, logged and the next poll runs.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol

from agent.gpu.inventory import DeviceTracker
from agent.gpu.nvml import NvmlHandle, open_nvml
from agent.gpu.processes import ProcessTracker
from agent.gpu.xid import XidWatcher
from agent.record import Record
from gpuaudit.v1 import events_pb2

log = logging.getLogger("gpuaudit.agent.gpu")

NAME = "nvml"


class Inbox(Protocol):
    """What the sensor needs of the agent's inbox (agent.queue.DroppingQueue)."""

    def offer(self, item: Any) -> bool: ...


class NvmlSensor:
    """gpu.device, gpu.process and gpu.xid records from NVML."""

    def __init__(self, library: str | None = None,
                 opened: Callable[[int], bool] = lambda pid: False,
                 running_every_s: float = 60.0, xid_timeout_ms: int = 500) -> None:
        self.library = library
        self.opened = opened
        self.running_every_s = running_every_s
        self.xid_timeout_ms = xid_timeout_ms
        self.nv: NvmlHandle | None = None
        self.off_reason = "not started"
        self.devices: DeviceTracker | None = None
        self.processes: ProcessTracker | None = None
        self.xid: XidWatcher | None = None
        self.poll_errors = 0

    def start(self) -> bool:
        """Open NVML and register for events; False (sensor off) when NVML is absent."""
        self.nv, self.off_reason = open_nvml(self.library)
        if self.nv is None:
            log.warning("GPU sensor nvml is off: %s", self.off_reason)
            return False
        self.devices = DeviceTracker(self.nv)
        self.processes = ProcessTracker(self.nv, self.opened, self.running_every_s)
        self.xid = XidWatcher(self.nv, emit=lambda rec: None, timeout_ms=self.xid_timeout_ms)
        if not self.xid.register():
            log.warning("GPU sensor nvml: no Xid/critical events on this node (%s)",
                        "; ".join(self.nv.unavailable()) or "no GPU")
        return True

    def poll(self) -> list[Record]:
        """gpu.device then gpu.process records due now ([] when off)."""
        if self.devices is None or self.processes is None:
            return []
        try:
            return [*self.devices.poll(), *self.processes.poll()]
        except Exception:  # one bad poll must not end the sensor
            self.poll_errors += 1
            log.debug("nvml poll failed", exc_info=True)
            return []

    def poll_loop(self, inbox: Inbox, every_s: float) -> Callable[[threading.Event], None]:
        """A thread target (like agent.main's procfs loop) that polls every ``every_s``.

        The first poll runs at once, so gpu.device "start" goes out at agent start.
        """
        def run(stop: threading.Event) -> None:
            while True:
                for rec in self.poll():
                    inbox.offer(rec)
                if stop.wait(every_s):
                    return
        return run

    def xid_loop(self, inbox: Inbox) -> Callable[[threading.Event], None]:
        """A thread target that waits for NVML events and puts gpu.xid records in ``inbox``."""
        def run(stop: threading.Event) -> None:
            xid = self.xid
            if xid is None or xid.event_set is None or not xid.registered:
                return
            xid.emit = inbox.offer
            xid.run(stop)
        return run

    def status(self) -> events_pb2.SensorStatus:
        """"ok", "degraded" naming every unavailable field, or "off" with the reason."""
        if self.nv is None:
            return events_pb2.SensorStatus(name=NAME, state="off", detail=self.off_reason)
        problems = self.nv.unavailable()
        if self.poll_errors:
            problems.append(f"{self.poll_errors} polls failed")
        if not problems:
            return events_pb2.SensorStatus(name=NAME, state="ok")
        return events_pb2.SensorStatus(name=NAME, state="degraded",
                                       detail="unavailable: " + "; ".join(problems))

    def close(self) -> None:
        """Free the event set and shut NVML down (call after the threads ended)."""
        if self.xid is not None:
            self.xid.close()
        if self.nv is not None:
            self.nv.shutdown()
            self.nv = None
            self.off_reason = "stopped"

