"""Who used which GPU, when and for how long, from the event stream.

A *session* is one process's use of GPUs on one node: it starts at its first
successful ``gpu.open`` (or NVML's ``gpu.process`` "appeared", whichever is
first) and ends at its ``process.exit``; without an exit in the period it ends
at the last sign of life (``gpu.process``) or, if it is still running, at the
end of the period. Which GPU: ``/dev/nvidiaN`` opens are matched to the
node's ``gpu.device`` with minor number N, and NVML names the GPU itself.
Opening only the control nodes (nvidiactl, nvidia-uvm) identifies no GPU:
such sessions are listed under "unidentified GPU".
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from gpuaudit.v1 import events_pb2

_MINOR = re.compile(r"^/dev/nvidia(\d+)$")
UNIDENTIFIED = "unidentified GPU"


@dataclass(frozen=True)
class Gpu:
    """One physical GPU as the report names it."""

    node: str
    uuid: str  # "" when only the minor number is known
    label: str  # e.g. "gpu-01 #0 NVIDIA H100 80GB HBM3"


@dataclass
class Session:
    """One process's use of GPUs on one node."""

    node: str
    pid: int
    user: str
    uid: int
    exe: str
    container_id: str
    pod: str
    slurm_job: str
    start_ns: int
    end_ns: int = 0
    ended: bool = False  # it ended in the period (exit, or NVML saw it leave the GPU)
    left_ns: int = 0  # when NVML last saw it leave the GPU (gpu.process left/accounted)
    gpus: set[str] = field(default_factory=set)  # Gpu labels

    def seconds(self, since_ns: int, until_ns: int) -> float:
        """Duration within [since, until)."""
        start, end = max(self.start_ns, since_ns), min(self.end_ns or until_ns, until_ns)
        return max(0, end - start) / 1e9


ExitLookup = Callable[[str, int, int], "int | None"]
"""(node, pid, since_ns) -> time of that pid's first process.exit at or after since, or None.

Exits are looked up per session rather than read in bulk: every process on
every node exits, and only GPU processes matter here.
"""


class UsageModel:
    """Feeds on GPU events in time order; :meth:`sessions` gives the result."""

    def __init__(self, exit_after: ExitLookup) -> None:
        self._lookup = exit_after
        self._exits: dict[tuple[str, int, int], int | None] = {}
        self._open: dict[tuple[str, int], Session] = {}
        self._done: list[Session] = []
        self._by_minor: dict[tuple[str, int], Gpu] = {}
        self._by_uuid: dict[tuple[str, str], Gpu] = {}

    def feed(self, events: Iterable[events_pb2.Event]) -> None:
        for ev in events:
            kind = ev.WhichOneof("payload")
            handler = _HANDLERS.get(kind or "")
            if handler is not None:
                handler(self, ev)

    def sessions(self, until_ns: int) -> list[Session]:
        """Every session; those with no exit before ``until_ns`` end there (still running)."""
        for key in list(self._open):
            session = self._open[key]
            exited = self._exit_after(session.node, session.pid, session.start_ns)
            if exited is not None and exited < until_ns:
                self._finish(key, exited, ended=True)
            elif session.left_ns:
                self._finish(key, session.left_ns, ended=True)
            else:
                self._finish(key, until_ns, ended=False)  # still running
        return sorted(self._done, key=lambda s: (s.start_ns, s.node, s.pid))

    def _exit_after(self, node: str, pid: int, since_ns: int) -> int | None:
        # one query per session, however many events it has
        key = (node, pid, since_ns)
        if key not in self._exits:
            self._exits[key] = self._lookup(node, pid, since_ns)
        return self._exits[key]

    def gpus(self) -> list[Gpu]:
        return sorted({*self._by_minor.values(), *self._by_uuid.values()},
                      key=lambda g: (g.node, g.label))

    # -- per event type ----------------------------------------------------
    def _device(self, ev: events_pb2.Event) -> None:
        d = ev.gpu_device
        gpu = Gpu(ev.node, d.uuid, f"{ev.node} #{d.index} {d.name}".strip())
        if d.minor_number >= 0:
            self._by_minor[(ev.node, d.minor_number)] = gpu
        self._by_uuid[(ev.node, d.uuid)] = gpu

    def _gpu_open(self, ev: events_pb2.Event) -> None:
        if ev.gpu_open.fd < 0:
            return
        session = self._session(ev)
        m = _MINOR.match(ev.gpu_open.path)
        if m:
            minor = int(m[1])
            gpu = self._by_minor.get((ev.node, minor))
            session.gpus.add(gpu.label if gpu else f"{ev.node} /dev/nvidia{minor}")

    def _gpu_process(self, ev: events_pb2.Event) -> None:
        g = ev.gpu_process
        session = self._session(ev)
        gpu = self._by_uuid.get((ev.node, g.gpu_uuid))
        session.gpus.add(gpu.label if gpu else f"{ev.node} {g.gpu_uuid}")
        t = ev.time.ToNanoseconds()
        session.end_ns = max(session.end_ns, t)
        if g.state in ("left", "accounted"):
            session.left_ns = t

    def _session(self, ev: events_pb2.Event) -> Session:
        key = (ev.node, ev.process.pid)
        t = ev.time.ToNanoseconds()
        session = self._open.get(key)
        if session is not None:
            # the pid may have exited and been reused since the session began
            exited = self._exit_after(session.node, session.pid, session.start_ns)
            if exited is not None and exited < t:
                self._finish(key, exited, ended=True)
                session = None
        if session is None:
            p = ev.process
            session = Session(ev.node, p.pid, p.user or str(p.uid), p.uid, p.exe,
                              p.container_id, p.pod, p.slurm_job, start_ns=t, end_ns=t)
            self._open[key] = session
        return session

    def _finish(self, key: tuple[str, int], end_ns: int, ended: bool) -> None:
        session = self._open.pop(key)
        session.end_ns, session.ended = end_ns, ended
        self._done.append(session)


_HANDLERS = {
    "gpu_device": UsageModel._device,
    "gpu_open": UsageModel._gpu_open,
    "gpu_process": UsageModel._gpu_process,
}

USAGE_TYPES = ("gpu.device", "gpu.open", "gpu.process")
"""The event types the usage model reads."""
