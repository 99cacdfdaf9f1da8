"""gpu.process: who is on each GPU (or MIG device), as NVML sees it.

Each poll lists the compute and graphics processes of every GPU; a MIG GPU is
asked per MIG device handle, because the aggregate list on the parent needs
privileges (cuda-python nvml docs, device_get_compute_running_processes_v3).
A process emits "appeared" once, "running" every ``running_every_s`` while it
stays, and "left" when it is gone. With accounting mode on, processes that
started and ended between two polls are still reported, once, as "accounted".

PIDs from NVML are host PIDs (the driver ignores PID namespaces,
NVIDIA/nvidia-docker#1483); each record carries the pid so the agent's
enricher adds user, container, pod and Slurm job.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.gpu.inventory import gpu_handles, mig_enabled, scope_of
from agent.gpu.nvml import NvmlHandle
from agent.record import Record
from gpuaudit.v1 import events_pb2

# (gpu index, MIG uuid or "", kind, pid)
Key = tuple[int, str, str, int]


@dataclass
class _Target:
    """One place processes run: a whole GPU, or one MIG device of it."""

    index: int
    gpu_uuid: str
    mig_uuid: str
    handle: Any
    scope: str  # "gpu0" or "gpu0/mig1", for unavailable-field reports


@dataclass
class _Live:
    proc: events_pb2.GpuProcess
    emitted: float  # monotonic time of the last record for it


@dataclass
class _Accounting:
    """Per-GPU accounting state: which ended processes were already handled."""

    baseline_done: bool = False
    known: set[tuple[int, int]] = field(default_factory=set)  # (pid, startTime)
    polled: set[int] = field(default_factory=set)  # pids polling saw; no "accounted" for them


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value or "")


class ProcessTracker:
    """Turns successive NVML process lists into gpu.process records."""

    def __init__(self, nv: NvmlHandle, opened: Callable[[int], bool] = lambda pid: False,
                 running_every_s: float = 60.0, now_ns: Callable[[], int] = time.time_ns,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.nv = nv
        self.opened = opened
        self.running_every_s = running_every_s
        self.now_ns = now_ns
        self.monotonic = monotonic
        self.live: dict[Key, _Live] = {}
        self._util_ts: dict[int, int] = {}  # per GPU: newest utilization sample seen
        self._util: dict[tuple[int, int], tuple[int, int]] = {}  # (gpu, pid) -> (sm, mem)
        self._acct: dict[int, _Accounting] = {}

    def poll(self) -> list[Record]:
        """One look at every GPU; the records that are due."""
        gpus = gpu_handles(self.nv)
        current: dict[Key, events_pb2.GpuProcess] = {}
        for index, handle in gpus:
            self._sample_utilization(index, handle)
            for target in self._targets(index, handle):
                current.update(self._list(target))
        out = self._diff(current)
        for index, handle in gpus:
            out.extend(self._accounted(index, handle, current))
        return out

    # -- listing ------------------------------------------------------------
    def _targets(self, index: int, handle: Any) -> list[_Target]:
        n = self.nv.nvml
        uuid = _text(self.nv.call(n.nvmlDeviceGetUUID, handle, field="uuid",
                                  scope=scope_of(index), default=""))
        if mig_enabled(self.nv, handle, scope_of(index)) != "enabled":
            return [_Target(index, uuid, "", handle, scope_of(index))]
        count = self.nv.call(n.nvmlDeviceGetMaxMigDeviceCount, handle, field="mig_devices",
                             scope=scope_of(index), default=0)
        out = []
        for i in range(count):
            mig = self.nv.call(n.nvmlDeviceGetMigDeviceHandleByIndex, handle, i,
                               field="mig_handle", scope=scope_of(index, i),
                               routine=(n.NVML_ERROR_NOT_FOUND,))
            if mig is not None:
                mig_uuid = self.nv.call(n.nvmlDeviceGetUUID, mig, field="uuid",
                                        scope=scope_of(index, i), default="")
                out.append(_Target(index, uuid, _text(mig_uuid), mig, scope_of(index, i)))
        return out

    def _list(self, t: _Target) -> dict[Key, events_pb2.GpuProcess]:
        n = self.nv.nvml
        # The _v3 names directly: the unversioned wrappers turn FUNCTION_NOT_FOUND
        # (old driver) into NVMLLibraryMismatchError, which call() would not catch.
        lists = (("compute", n.nvmlDeviceGetComputeRunningProcesses_v3),
                 ("graphics", n.nvmlDeviceGetGraphicsRunningProcesses_v3))
        out: dict[Key, events_pb2.GpuProcess] = {}
        for kind, fn in lists:
            for p in self.nv.call(fn, t.handle, field=f"{kind}_processes", scope=t.scope,
                                  default=[]):
                out[(t.index, t.mig_uuid, kind, int(p.pid))] = self._message(t, kind, p)
        return out

    def _message(self, t: _Target, kind: str, p: Any) -> events_pb2.GpuProcess:
        sm, mem = self._util.get((t.index, int(p.pid)), (-1, -1))
        return events_pb2.GpuProcess(
            gpu_index=t.index, gpu_uuid=t.gpu_uuid, mig_uuid=t.mig_uuid, kind=kind,
            used_memory=int(p.usedGpuMemory or 0), sm_util=sm, mem_util=mem,
        )

    def _sample_utilization(self, index: int, handle: Any) -> None:
        """Keep the newest SM/memory utilization sample per pid of this GPU."""
        n = self.nv.nvml
        # NOT_FOUND: no sample since last time (routine, Cldfire/nvml-wrapper#56);
        # pynvml raises NVMLError(SUCCESS) when the GPU has no process at all.
        samples = self.nv.call(n.nvmlDeviceGetProcessUtilization, handle,
                               self._util_ts.get(index, 0), field="process_utilization",
                               scope=scope_of(index), default=[],
                               routine=(n.NVML_ERROR_NOT_FOUND, n.NVML_SUCCESS))
        for s in sorted(samples, key=lambda s: int(s.timeStamp)):
            self._util[(index, int(s.pid))] = (int(s.smUtil), int(s.memUtil))
            self._util_ts[index] = max(self._util_ts.get(index, 0), int(s.timeStamp))

    # -- state changes ------------------------------------------------------
    def _diff(self, current: dict[Key, events_pb2.GpuProcess]) -> list[Record]:
        now = self.monotonic()
        out = []
        for key, proc in current.items():
            live = self.live.get(key)
            if live is None:
                proc.seen_open = self.opened(key[3])
                self.live[key] = _Live(proc, now)
                out.append(self._record("appeared", key[3], proc))
            elif now - live.emitted >= self.running_every_s:
                proc.seen_open = live.proc.seen_open or self.opened(key[3])
                self.live[key] = _Live(proc, now)
                out.append(self._record("running", key[3], proc))
        for key in [k for k in self.live if k not in current]:
            gone = self.live.pop(key)
            self._util.pop((key[0], key[3]), None)
            out.append(self._record("left", key[3], gone.proc))
        return out

    def _record(self, state: str, pid: int, proc: events_pb2.GpuProcess) -> Record:
        msg = events_pb2.GpuProcess()
        msg.CopyFrom(proc)
        msg.state = state
        return Record(type="gpu.process", wall_ns=self.now_ns(), payload=msg, pid=pid)

    # -- accounting ---------------------------------------------------------
    def _accounted(self, index: int, handle: Any,
                   current: dict[Key, events_pb2.GpuProcess]) -> list[Record]:
        """"accounted" for processes that ran and ended between two polls."""
        n, scope = self.nv.nvml, scope_of(index)
        # NOT_SUPPORTED: a GPU without accounting (and MIG GPUs, where it is
        # forced off), i.e. simply "accounting is off".
        mode = self.nv.call(n.nvmlDeviceGetAccountingMode, handle, field="accounting_mode",
                            scope=scope, routine=(n.NVML_ERROR_NOT_SUPPORTED,))
        if mode != n.NVML_FEATURE_ENABLED:
            self._acct.pop(index, None)
            return []
        acct = self._acct.setdefault(index, _Accounting())
        acct.polled.update(k[3] for k in current if k[0] == index)
        pids = self.nv.call(n.nvmlDeviceGetAccountingPids, handle, field="accounting_pids",
                            scope=scope, default=[])
        out = [rec for pid in pids if (rec := self._account_one(index, handle, pid, acct))]
        # The driver's buffer is circular: forget what it has forgotten.
        alive = set(pids)
        acct.known = {k for k in acct.known if k[0] in alive}
        acct.polled &= alive | {k[3] for k in current if k[0] == index}
        # The first look is a baseline: what ended before the agent started is
        # history, not news.
        acct.baseline_done = True
        return out

    def _account_one(self, index: int, handle: Any, pid: int,
                     acct: _Accounting) -> Record | None:
        n = self.nv.nvml
        stats = self.nv.call(n.nvmlDeviceGetAccountingStats, handle, pid,
                             field="accounting_stats", scope=scope_of(index),
                             routine=(n.NVML_ERROR_NOT_FOUND,))
        if stats is None or stats.isRunning:
            return None  # still running: polling reports it
        key = (pid, int(stats.startTime))
        if key in acct.known:
            return None
        acct.known.add(key)
        if not acct.baseline_done or pid in acct.polled:
            acct.polled.discard(pid)
            return None
        uuid = self.nv.call(n.nvmlDeviceGetUUID, handle, field="uuid", scope=scope_of(index),
                            default="")
        msg = events_pb2.GpuProcess(
            gpu_index=index, gpu_uuid=_text(uuid), sm_util=-1, mem_util=-1,
            seen_open=self.opened(pid), max_memory=int(stats.maxMemoryUsage or 0),
            gpu_time_ms=int(stats.time),
        )
        return self._record("accounted", pid, msg)
