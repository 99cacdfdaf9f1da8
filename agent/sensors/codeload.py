"""code.load sensor: executable mappings of files (agent/bpf/codeload.c).

The kernel emits every successful mmap(PROT_EXEC) of a file and every
mprotect/pkey_mprotect adding PROT_EXEC (``struct code_map_rec``). The
decoder, on the processor thread, resolves the range to the mapped file
(agent/codeload/resolve.py), tells the other sensors about each new
(pid, dev, inode) through ``hooks.library_mapped``, applies the report rule
(agent/codeload/policy.py) and hands what is reported to the hashing worker
(agent/codeload/hasher.py), which offers the finished Record to the inbox.

Counted, never silent:
* ``code_unresolved`` (an agent.loss reason): an mmap(PROT_EXEC) of a file
  by a GPU/NCCL process that was unmapped, or whose process exited, before
  the agent could see which file it was;
* in this sensor's status: the same for other processes (whose mapping the
  allow-list would most often have dropped), and events sent without a hash
  because the hashing queue was full.
An mprotect range that no longer resolves is taken as anonymous memory (JIT
code), which code.load does not report.
"""

from __future__ import annotations

import ctypes as ct
import logging
import os
import time
from collections.abc import Callable

from agent.codeload.hasher import HashWorker, Job
from agent.codeload.policy import ProcState, ProcTable, allowed, is_accel_library
from agent.codeload.resolve import Mapped, Resolver
from agent.record import Record
from agent.sensors import process
from agent.sensors.base import (
    BootClock,
    BpfSensor,
    Decoder,
    Loop,
    MappedFile,
    SensorContext,
    header_record,
)
from agent.sensors.records import OP_EXEC, OP_EXIT, C, Hdr
from gpuaudit.v1 import code_pb2, events_pb2

log = logging.getLogger(__name__)

OP_CODE_MAP: int = C["OP_CODE_MAP"]
SYSCALLS = ("mmap", "mprotect", "pkey_mprotect")  # code_map_rec.syscall: enum code_map_syscall
CODE_MAP_MMAP = 0


class CodeMapRec(ct.Structure):
    _fields_ = (
        ("h", Hdr),
        ("addr", ct.c_uint64),
        ("len", ct.c_uint64),
        ("fd", ct.c_int32),
        ("prot", ct.c_uint32),
        ("flags", ct.c_uint32),
        ("syscall", ct.c_uint32),
    )


def code_record(m: Mapped, rec: Record) -> Record:
    """``rec`` (a code.load Record) with the file's identity filled in."""
    p: code_pb2.CodeLoad = rec.payload  # type: ignore[assignment]
    p.path, p.kind = m.path, m.kind
    p.size, p.file_uid = m.st.st_size, m.st.st_uid
    p.dev, p.inode = m.st.st_dev, m.st.st_ino
    return rec


class CodeLoadRuntime:
    """Per-process state, the decoders and the hashing worker of code.load."""

    def __init__(self, ctx: SensorContext, resolver: Resolver | None = None,
                 worker: HashWorker | None = None) -> None:
        self.ctx = ctx
        self.allow = ctx.cfg.listed("code_allow")
        self.resolver = resolver or Resolver(ctx.proc_root)
        self.worker = worker or HashWorker(ctx.inbox)
        self.procs = ProcTable()
        self.unresolved_gpu = 0  # loss: code_unresolved
        self.unresolved_other = 0
        ctx.hooks.gpu_touch.append(self.on_gpu_touch)

    # -- SensorRuntime -----------------------------------------------------
    def decoders(self) -> dict[int, Decoder]:
        # exec and exit end a process image: its dedup state must go with it.
        # They are process.c's records; this wraps that sensor's decoders.
        exec_, exit_ = process.SENSOR.decoders[OP_EXEC], process.SENSOR.decoders[OP_EXIT]
        return {OP_CODE_MAP: self.decode_map,
                OP_EXEC: self._forgetting(exec_), OP_EXIT: self._forgetting(exit_)}

    def threads(self) -> list[tuple[str, Loop]]:
        return [("code-hash", self.worker.run)]

    def loss_counters(self) -> dict[str, Callable[[], int]]:
        return {"code_unresolved": lambda: self.unresolved_gpu,
                "code_rate_limited": self.rate_limited}

    def rate_limited(self) -> int:
        """Records codeload.c held back (per-process rate limit), summed over CPUs."""
        try:
            return int(sum(self.ctx.bpf["codeload_limited"][ct.c_uint32(0)]))
        except Exception:  # a test context without the map
            return 0

    def status(self) -> events_pb2.SensorStatus | None:
        unhashed, other = self.worker.unhashed, self.unresolved_other
        if not unhashed and not other:
            return None
        detail = (f"{unhashed} code.load sent without sha256 (hash queue full); "
                  f"{other} exec mappings of non-GPU processes gone before they were resolved")
        return events_pb2.SensorStatus(name="code_load", state="degraded" if unhashed else "ok",
                                       detail=detail)

    def close(self) -> None:
        self.worker.close()

    # -- decoding ----------------------------------------------------------
    def _forgetting(self, decode: Decoder) -> Decoder:
        def wrapped(data: bytes, clock: BootClock) -> Record | None:
            rec = decode(data, clock)
            if rec is not None:
                self.procs.forget(rec.pid)
            return rec
        return wrapped

    def decode_map(self, data: bytes, clock: BootClock) -> Record | None:
        r = CodeMapRec.from_buffer_copy(data)
        pid = r.h.pid
        state = self.procs.get(pid)
        loc = self.resolver.locate(pid, r.addr, r.len, lambda: state.may_scan(time.monotonic()))
        if loc is None:
            if r.syscall == CODE_MAP_MMAP:  # surely a file: it is lost
                self._count_unresolved(pid, state)
            return None
        if loc.key in state.seen and (loc.key in state.reported or not state.full):
            return None  # known file: no readlink, nothing to tell or report
        m = self.resolver.describe(loc)
        if m is None:
            if r.syscall == CODE_MAP_MMAP:
                self._count_unresolved(pid, state)
            return None
        payload = code_pb2.CodeLoad(source="mmap", syscall=SYSCALLS[r.syscall % len(SYSCALLS)])
        return self.handle(m, header_record("code.load", r.h, clock, payload))

    def _count_unresolved(self, pid: int, state: ProcState) -> None:
        if state.full or self.ctx.opened_gpu(pid):
            self.unresolved_gpu += 1
        else:
            self.unresolved_other += 1

    def handle(self, m: Mapped, rec: Record) -> Record | None:
        """Tell the listeners, apply the report rule; the Record to emit now, if any."""
        state = self.procs.get(m.pid)
        self._tell(m, state)
        if m.key in state.reported:
            return None
        accel = is_accel_library(m.path)
        full = state.full or accel or self.ctx.opened_gpu(m.pid)
        if not full and allowed(m.path, m.kind, self.allow):
            return None
        state.reported.add(m.key)
        state.bound()
        out = self.submit(m, rec)
        if accel:
            self._mark_accel(m.pid)
        if full:
            self.go_full(m.pid, state)
        return out

    def _tell(self, m: Mapped, state: ProcState) -> None:
        if m.key in state.seen:
            return
        state.seen.add(m.key)
        self.ctx.hooks.tell_library_mapped(
            MappedFile(pid=m.pid, path=m.path, map_path=m.map_path, dev=m.st.st_dev,
                       inode=m.st.st_ino))

    def submit(self, m: Mapped, rec: Record) -> Record | None:
        """Hand ``rec`` to the worker with the file open; the Record itself
        when it must go out now (file unopenable, queue full)."""
        code_record(m, rec)
        try:
            fd = os.open(m.map_path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            rec.payload.hash_error = f"open failed: {e.strerror}"  # type: ignore[attr-defined]
            return rec
        if self.worker.submit(Job(rec, fd)):
            return None
        os.close(fd)
        rec.payload.hash_error = "hash queue full"  # type: ignore[attr-defined]
        return rec

    # -- GPU/NCCL processes ------------------------------------------------
    def on_gpu_touch(self, pid: int) -> None:
        """hooks.gpu_touch: from now on every file of ``pid`` is reported."""
        self.go_full(pid, self.procs.get(pid))

    def go_full(self, pid: int, state: ProcState) -> None:
        """Switch ``pid`` to report-everything, reporting what it already has
        mapped (source "maps") that was not reported yet."""
        if state.full:
            return
        state.full = True
        for m in self.resolver.snapshot(pid):
            self._tell(m, state)
            if m.key in state.reported:
                continue
            state.reported.add(m.key)
            rec = Record(type="code.load", wall_ns=time.time_ns(), pid=pid, tid=pid,
                         payload=code_pb2.CodeLoad(source="maps"))
            # long mapped and possibly hundreds: opened when hashed, not now
            if not self.worker.submit_later(Job(code_record(m, rec), -1, m.map_path)):
                rec.payload.hash_error = "hash queue full"  # type: ignore[attr-defined]
                self.ctx.inbox.offer(rec)

    def _mark_accel(self, pid: int) -> None:
        """Into the kernel's accel_procs: the network sensor's GPU/NCCL filter."""
        try:
            self.ctx.bpf["accel_procs"][ct.c_uint32(pid)] = ct.c_uint8(1)
        except Exception as e:  # a full or missing map must not stop decoding
            log.debug("accel_procs update for %d failed: %s", pid, e)


SENSOR = BpfSensor(
    name="code_load",
    source="codeload.c",
    required_tracepoints=(
        "syscalls:sys_enter_mmap",
        "syscalls:sys_exit_mmap",
        "syscalls:sys_enter_mprotect",
        "syscalls:sys_exit_mprotect",
    ),
    optional_tracepoints=("syscalls:sys_enter_pkey_mprotect",),
    decoders={},  # stateful: CodeLoadRuntime.decoders()
    mirrors={"code_map_rec": CodeMapRec},
    runtime=CodeLoadRuntime,
)
