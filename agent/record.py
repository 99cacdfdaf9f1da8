"""The unit that flows from a sensor to the pipeline, before enrichment.

A sensor (eBPF or procfs) turns what it observed into a :class:`Record`: the
kernel-side identity it knows, plus the typed payload message of the event.
The enricher turns a Record into a full ``gpuaudit.v1.Event`` by adding the
process block (user, exe, cmdline, cgroup, container/pod/Slurm job).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from google.protobuf.message import Message


@dataclass(slots=True)
class Record:
    """One observation, not yet enriched or numbered."""

    type: str  # dotted event type, e.g. "gpu.open"
    wall_ns: int  # wall-clock time of the observation, ns since the epoch
    payload: Message  # the payload message for `type` (e.g. events_pb2.GpuOpen)
    pid: int = 0  # tgid; 0 for node-level events
    tid: int = 0
    ppid: int = 0  # 0 when unknown; the enricher then asks /proc
    uid: int | None = None  # None when the sensor does not know (enricher asks /proc)
    gid: int | None = None
    comm: str = ""
    cgroup_id: int = 0  # cgroup v2 id (inode of the cgroup dir); 0 when unknown
    # exec details the enricher caches for the pid (short-lived processes are
    # gone from /proc before we look): filename and argv of a process.exec.
    exe_hint: str = ""
    argv_hint: list[str] = field(default_factory=list)
