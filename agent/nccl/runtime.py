"""The nccl sensor's user-space side: decoders for nccl.comm_init and
nccl.comm_end, the attacher thread, and the thread that reports the kernel's
collective counters as nccl.collective every --nccl-flush seconds."""

from __future__ import annotations

import ctypes as ct
import logging
import os
import platform
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from agent.nccl.attach import BPF_FUNCTIONS, Attacher, Library
from agent.nccl.deltas import CollKey, Counters, Delta, Ledger, Mark
from agent.nccl.records import OP_NCCL_END, OP_NCCL_INIT, NcclEndRec, NcclInitRec
from agent.nccl.types import (
    END_FUNCTIONS,
    FN_ABORT,
    FN_INIT_ALL,
    FN_SHRINK,
    FN_SPLIT,
    INIT_FUNCTIONS,
    MAX_EXCLUDED,
    OPS,
    comm_id,
    datatype_name,
    datatype_size,
    nccl_env,
)
from agent.record import Record
from agent.sensors.base import BootClock, Decoder, MappedFile, SensorContext, header_record
from gpuaudit.v1 import events_pb2, nccl_pb2

log = logging.getLogger(__name__)

ENV_MAX = 65536  # /proc/PID/environ bytes read


@dataclass(frozen=True)
class CommName:
    """What the reports say about one communicator handle of one process."""

    comm_id: str
    rank: int
    nranks: int


UNKNOWN = CommName("", -1, 0)


@dataclass(frozen=True)
class Ident:
    """Who a process was, kept for the reports made after it exited (its
    last nccl.collective comes after its process.exit, when /proc has
    nothing left and the enricher has forgotten it)."""

    ppid: int = 0
    uid: int | None = None
    gid: int | None = None
    comm: str = ""
    cgroup_id: int = 0
    exe: str = ""
    argv: tuple[str, ...] = ()


def read_exe_argv(pid: int, proc_root: str = "/proc") -> tuple[str, tuple[str, ...]]:
    """/proc/PID/exe and cmdline; empty when the process is gone."""
    try:
        exe = os.readlink(f"{proc_root}/{pid}/exe")
        with open(f"{proc_root}/{pid}/cmdline", "rb") as f:
            argv = tuple(a.decode(errors="replace") for a in f.read().split(b"\0")[:-1])
    except OSError:
        return "", ()
    return exe, argv


def read_environ(pid: int, proc_root: str = "/proc") -> bytes | None:
    """/proc/PID/environ (the environment the process was started with)."""
    try:
        with open(f"{proc_root}/{pid}/environ", "rb") as f:
            return f.read(ENV_MAX)
    except OSError:
        return None


def _stamp(ts: object, wall_ns: int) -> None:
    ts.seconds, ts.nanos = divmod(wall_ns, 1_000_000_000)  # type: ignore[attr-defined]


class NcclRuntime:
    """Made once per agent run by the sensor (BpfSensor.runtime)."""

    def __init__(self, ctx: SensorContext) -> None:
        if platform.machine() != "x86_64":
            raise RuntimeError(f"the NCCL uprobes read arguments per the x86-64 ABI; "
                               f"this machine is {platform.machine()}")
        from bcc import BPF

        self.ctx = ctx
        self.interval_s = float(ctx.cfg.nccl_flush_s)
        bpf = ctx.bpf
        for fn in BPF_FUNCTIONS:  # verifier verdicts now, not at the first mapping
            bpf.load_func(fn.encode(), BPF.KPROBE)
        self.coll = bpf["nccl_coll"]
        self.marks = bpf["nccl_marks"]
        self.comms = bpf["nccl_comms"]
        self.dropped = bpf["nccl_dropped"]
        self.accel = bpf["accel_procs"]
        self.attacher = Attacher(bpf, self._seen_process, ctx.proc_root)
        self.ledger = Ledger()
        self.names: dict[tuple[int, int], CommName] = {}
        self.environ: dict[int, bytes] = {}  # read when a process was seen mapping libnccl
        self.idents: dict[int, Ident] = {}  # from its nccl.comm_init
        self.flush_now = threading.Event()
        self._dying: set[int] = set()  # exited, forgotten at the next flush
        self._lock = threading.Lock()
        ctx.hooks.library_mapped.append(self.attacher.offer)

    # -- SensorRuntime --------------------------------------------------------
    def decoders(self) -> dict[int, Decoder]:
        return {OP_NCCL_INIT: self.decode_init, OP_NCCL_END: self.decode_end}

    def threads(self) -> list[tuple[str, Callable[[threading.Event], None]]]:
        return [("nccl-attach", self.attacher.run), ("nccl-flush", self.flush_loop)]

    def loss_counters(self) -> dict[str, Callable[[], int]]:
        return {"nccl_map_full": self.kernel_dropped,
                "nccl_attach_queue": lambda: self.attacher.dropped}

    def status(self) -> events_pb2.SensorStatus | None:
        """Degraded while a library could not be probed; "ok" with a detail
        while some probes sit on the slow single-step path (prologue.py),
        so an operator sees why NCCL calls cost ~5 us more there."""
        failed = dict(self.attacher.failed)
        slow = self.attacher.slow_probes()
        if not failed and not slow:
            return None
        details = []
        if failed:
            details.append("cannot attach uprobes to " + "; ".join(sorted(failed.values())))
        details += [f"{path}: {what}" for path, what in sorted(slow.items())]
        return events_pb2.SensorStatus(name="nccl", state="degraded" if failed else "ok",
                                       detail="; ".join(details))

    def close(self) -> None:
        pass  # the uprobes go with the BPF object (agent teardown)

    # -- attaching --------------------------------------------------------------
    def attach(self, mapped: MappedFile) -> Library | None:
        """Attach to a mapping now, on the caller's thread (tests, tools)."""
        return self.attacher.attach(mapped)

    def _seen_process(self, pid: int) -> None:
        """A process maps libnccl: it is an accelerator process for the net
        sensor, and its environment is kept for its nccl.comm_init."""
        self.accel[ct.c_uint32(pid)] = ct.c_uint8(1)
        env = read_environ(pid, self.ctx.proc_root)
        if env is not None:
            self.environ[pid] = env
        exe, argv = read_exe_argv(pid, self.ctx.proc_root)
        if exe and pid not in self.idents:
            self.idents[pid] = Ident(exe=exe, argv=argv)

    def kernel_dropped(self) -> int:
        """Collective calls the kernel could not count (nccl_coll full)."""
        return int(self.dropped.sum(ct.c_int(0)).value)

    # -- ring records -------------------------------------------------------------
    def decode_init(self, data: bytes, clock: BootClock) -> Record | None:
        """nccl.comm_init; None when handed to the attacher to add the library hash."""
        r = NcclInitRec.from_buffer_copy(data)
        pid = r.h.pid
        cid = comm_id(bytes(r.id)) if r.id_known else ""
        handles = [int(h) for h in r.comms[: r.ncomms]]
        for i, handle in enumerate(handles):
            rank = i if r.fn == FN_INIT_ALL else r.rank
            # a split child's size is not known: nccl.collective says 0 then
            self.names[(pid, handle)] = CommName(cid, rank, max(r.nranks, 0))
        env = read_environ(pid, self.ctx.proc_root) or self.environ.get(pid, b"")
        payload = nccl_pb2.NcclCommInit(
            function=INIT_FUNCTIONS.get(r.fn, f"fn{r.fn}"), nranks=r.nranks, rank=r.rank,
            comm_id=cid, nccl_env=nccl_env(env), result=r.result, comm_handles=handles)
        if r.fn in (FN_SPLIT, FN_SHRINK):
            payload.parent_comm_handle = r.parent
            payload.parent_comm_id = self._comm_name(pid, int(r.parent)).comm_id
        if r.fn == FN_SPLIT:
            payload.split_color, payload.split_key = r.color, r.key
        if r.fn == FN_SHRINK:
            payload.excluded_count = r.nexcluded
            payload.excluded_ranks.extend(r.excluded[:max(0, min(r.nexcluded, MAX_EXCLUDED))])
        rec = header_record("nccl.comm_init", r.h, clock, payload)
        self._remember_ident(rec)
        where = self.attacher.locate(pid, r.ip)
        if where is not None and where[1] is None:
            # attached, but its hash is still being computed: finish on the
            # attacher's thread, after the job that computes it
            ip = r.ip
            if self.attacher.submit(lambda: self._finish_init(rec, pid, ip)):
                return None
            # queue full: sent now without the hash rather than not at all
        self._name_library(payload, where)
        return rec

    def _remember_ident(self, rec: Record) -> None:
        """Keep who made this init, for the reports after the process exited."""
        exe, argv = read_exe_argv(rec.pid, self.ctx.proc_root)
        if not exe:  # gone already: what was read when it mapped libnccl
            before = self.idents.get(rec.pid, Ident())
            exe, argv = before.exe, before.argv
        self.idents[rec.pid] = Ident(rec.ppid, rec.uid, rec.gid, rec.comm, rec.cgroup_id,
                                     exe, argv)

    def _finish_init(self, rec: Record, pid: int, ip: int) -> None:
        self._name_library(rec.payload, self.attacher.locate(pid, ip))  # type: ignore[arg-type]
        self.ctx.inbox.offer(rec)  # a full inbox counts it (loss reason "queue")

    @staticmethod
    def _name_library(payload: nccl_pb2.NcclCommInit, where: tuple | None) -> None:
        if where is None:
            return
        path, lib = where
        payload.library = path
        payload.library_sha256 = lib.sha256 if lib is not None else ""

    def decode_end(self, data: bytes, clock: BootClock) -> Record:
        r = NcclEndRec.from_buffer_copy(data)
        if r.known:
            cid = comm_id(bytes(r.id))
        else:
            cid = self.names.get((r.h.pid, int(r.comm)), UNKNOWN).comm_id
        payload = nccl_pb2.NcclCommEnd(
            function=END_FUNCTIONS.get(r.fn, f"fn{r.fn}"), comm_id=cid, abort=r.fn == FN_ABORT,
            result=r.result, comm_handle=r.comm)
        self.flush_now.set()  # the communicator's last collectives follow promptly
        return header_record("nccl.comm_end", r.h, clock, payload)

    # -- collective reports ---------------------------------------------------------
    def flush_loop(self, stop: threading.Event) -> None:
        """Thread body: report every interval (sooner after a comm_end), and once at stop."""
        while not stop.is_set():
            deadline = time.monotonic() + self.interval_s
            while not stop.is_set() and not self.flush_now.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.flush_now.wait(min(left, 0.25))
            self.flush_now.clear()
            self.flush()
        self.flush()

    def flush(self) -> int:
        """Offer one nccl.collective per key that made calls since the last
        read; then forget the exited processes. Returns the reports made."""
        with self._lock:
            keys = list(self.coll.keys())
            comm_keys = list(self.comms.keys())
            pids = ({k.tgid for k in keys} | {k.tgid for k in comm_keys} | set(list(self.environ))
                    | {k[0] for k in list(self.names)} | set(list(self.idents)))
            # liveness before reading: an exited process makes no more calls,
            # so its read below is final and its state can go afterwards
            dead = {p for p in pids if not os.path.exists(f"{self.ctx.proc_root}/{p}")}
            made = 0
            for key in keys:
                delta = self._read(key)
                if delta is not None:
                    self.ctx.inbox.offer(self._record(delta))
                    made += 1
            self._forget(dead, keys, comm_keys)
            return made

    def _read(self, key: object) -> Delta | None:
        read_ns = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        try:
            v = self.coll[key]
        except KeyError:
            return None
        mark = self.marks.get(key)
        k: CollKey = (key.tgid, key.op, key.datatype, key.comm)  # type: ignore[attr-defined]
        now = Counters(v.calls, v.elems, v.first_ns, v.last_ns, tuple(v.hist))
        seen = None if mark is None else Mark(mark.calls, mark.first_ns, mark.first_call)
        delta = self.ledger.delta(k, now, seen, read_ns)
        if delta is not None:
            # re-arm: the kernel stamps the first call past now.calls
            self.marks[key] = self.marks.Leaf(now.calls, 0, 0)
        return delta

    def _record(self, d: Delta) -> Record:
        tgid, op, dtype, handle = d.key
        name = self._comm_name(tgid, handle) if handle else UNKNOWN
        clock = self.ctx.clock
        payload = nccl_pb2.NcclCollective(
            comm_id=name.comm_id, op=OPS.get(op, f"op{op}"), datatype=datatype_name(dtype),
            calls=d.calls, bytes=d.elems * datatype_size(dtype), interval_log2_ns=d.hist,
            comm_handle=handle, rank=name.rank, nranks=name.nranks)
        _stamp(payload.first_call, clock.to_wall(d.first_ns))
        _stamp(payload.last_call, clock.to_wall(d.last_ns))
        who = self.idents.get(tgid, Ident())
        return Record(type="nccl.collective", wall_ns=clock.to_wall(d.last_ns), payload=payload,
                      pid=tgid, tid=tgid, ppid=who.ppid, uid=who.uid, gid=who.gid, comm=who.comm,
                      cgroup_id=who.cgroup_id, exe_hint=who.exe, argv_hint=list(who.argv))

    def _comm_name(self, tgid: int, handle: int) -> CommName:
        known = self.names.get((tgid, handle))
        if known is not None:
            return known
        # the init record may still be in the ring: the kernel wrote the name first
        try:
            v = self.comms[self.comms.Key(tgid, 0, handle)]
        except KeyError:
            return UNKNOWN
        name = CommName(comm_id(bytes(v.id)), v.rank, max(v.nranks, 0))
        if v.rank >= 0:  # InitAll's ranks come with its record
            self.names[(tgid, handle)] = name
        return name

    def _forget(self, dead: set[int], keys: list, comm_keys: list) -> None:
        """Remove the state of exited processes: their kernel entries now
        (their final counts were just read), what user space keeps about them
        one flush later (their last ring records may still be on the way, and
        their decoders need the library and identity found at attach time)."""
        for key in keys:
            if key.tgid in dead:
                self.coll.pop(key, None)
                self.marks.pop(key, None)
        for key in comm_keys:
            if key.tgid in dead:
                self.comms.pop(key, None)
        for pid in dead:
            self.ledger.forget(pid)
        for pid in self._dying:
            self.attacher.forget(pid)
            self.environ.pop(pid, None)
            self.idents.pop(pid, None)
        for name_key in list(self.names):
            if name_key[0] in self._dying:
                self.names.pop(name_key, None)
        self._dying = dead
