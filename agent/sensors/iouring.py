"""process.io_uring: who uses io_uring rings for what (agent/bpf/iouring.c).

Requests submitted through a ring never pass the syscall tracepoints of the
other sensors. The kernel side reports each new ring ("setup") and the first
submission of each opcode by a process ("op"), and counts the rest per
(process, opcode) in the iouring_use map. This module decodes those records
and runs the thread that turns the counts into "op_count" reports every
``AgentConfig.iouring_flush_s`` seconds (10 by default) and forgets ended processes.
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from agent import iouring_policy as policy
from agent.record import Record
from agent.sensors.base import (
    BootClock,
    BpfSensor,
    Decoder,
    SensorContext,
    header_record,
    periodic_flush,
)
from agent.sensors.loader import sensor_status
from agent.sensors.records import C, Hdr
from gpuaudit.v1 import events_pb2, iouring_pb2

log = logging.getLogger(__name__)

OP_IOURING_SETUP: int = C["OP_IOURING_SETUP"]
OP_IOURING_OP: int = C["OP_IOURING_OP"]
TYPE = "process.io_uring"
CLK_TCK = os.sysconf("SC_CLK_TCK")
# Ring ids are keyed hashes of the kernel's ring address: stable within one
# agent run, and no kernel address (a KASLR secret) ever reaches an event.
_RING_KEY = os.urandom(16)


class IouringSetupRec(ct.Structure):
    """Mirror of struct iouring_setup_rec (agent/bpf/iouring_events.h)."""

    _fields_ = (
        ("h", Hdr),
        ("ring", ct.c_uint64),
        ("fd", ct.c_int32),
        ("sq_entries", ct.c_uint32),
        ("cq_entries", ct.c_uint32),
        ("flags", ct.c_uint32),
    )


class IouringOpRec(ct.Structure):
    """Mirror of struct iouring_op_rec."""

    _fields_ = (
        ("h", Hdr),
        ("ring", ct.c_uint64),
        ("user_data", ct.c_uint64),
        ("sqe_flags", ct.c_uint32),
        ("opcode", ct.c_uint8),
        ("sq_thread", ct.c_uint8),
        ("pad", ct.c_uint8 * 2),
        ("op_name", ct.c_char * C["IOURING_OP_NAME_LEN"]),
    )


class IouringUseKey(ct.Structure):
    """Mirror of struct iouring_use_key."""

    _fields_ = (("tgid", ct.c_uint32), ("opcode", ct.c_uint32))


class IouringUse(ct.Structure):
    """Mirror of struct iouring_use (the map value)."""

    _fields_ = (
        ("first", IouringOpRec),
        ("count", ct.c_uint64),
        ("notified", ct.c_uint32),
        ("pad", ct.c_uint32),
    )


def ring_id(addr: int) -> str:
    """Opaque id of the ring at kernel address ``addr`` ("" for none)."""
    if not addr:
        return ""
    return hashlib.blake2b(addr.to_bytes(8, "little"), key=_RING_KEY, digest_size=8).hexdigest()


def decode_setup(data: bytes, clock: BootClock) -> Record:
    """A process.io_uring "setup" Record: the creator is the Record's process."""
    r = IouringSetupRec.from_buffer_copy(data)
    payload = iouring_pb2.ProcessIoUring(
        kind="setup", ring=ring_id(r.ring), ring_fd=r.fd, sq_entries=r.sq_entries,
        cq_entries=r.cq_entries, setup_flags=r.flags,
        setup_flag_names=policy.setup_flag_names(r.flags),
    )
    return header_record(TYPE, r.h, clock, payload)


def op_payload(r: IouringOpRec, kind: str, count: int, total: int) -> iouring_pb2.ProcessIoUring:
    """The payload of an "op" or "op_count" report about r's (process, opcode)."""
    name = policy.op_name(r.opcode, r.op_name.decode(errors="replace"))
    payload = iouring_pb2.ProcessIoUring(
        kind=kind, opcode=r.opcode, op_name=name, op_class=policy.op_class(r.opcode),
        count=count, total=total)
    if kind == "op":  # the details of the first submission
        payload.ring, payload.sq_thread = ring_id(r.ring), bool(r.sq_thread)
        payload.sqe_flags, payload.user_data = r.sqe_flags, r.user_data
    return payload


def decode_op(data: bytes, clock: BootClock) -> Record:
    """A process.io_uring "op" Record sent at once: the submitter is the Record's process."""
    r = IouringOpRec.from_buffer_copy(data)
    return header_record(TYPE, r.h, clock, op_payload(r, "op", 1, 1))


class UseLedger:
    """How many submissions of each (tgid, opcode) were reported so far."""

    def __init__(self) -> None:
        self.reported: dict[tuple[int, int], int] = {}

    def step(self, key: tuple[int, int], count: int, notified: bool) -> tuple[str, int] | None:
        """The report to make for a map entry now: ("op" | "op_count", count) or None.

        A notified entry's first submission went out through the ring buffer
        (that record says count 1); an entry the ring buffer had no room for
        is reported here as "op", with all its submissions so far.
        """
        done = self.reported.get(key)
        if done is None:
            if not notified:
                self.reported[key] = count
                return ("op", count)
            done = self.reported[key] = 1
        if count <= done:
            return None
        self.reported[key] = count
        return ("op_count", count - done)

    def forget(self, key: tuple[int, int]) -> None:
        self.reported.pop(key, None)


def started_ns(pid: int, proc_root: str = "/proc") -> int | None:
    """Boot-time ns at which process ``pid`` started (tick precision); None when gone."""
    try:
        with open(f"{proc_root}/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[19]) * 1_000_000_000 // CLK_TCK  # field 22: starttime
    except (OSError, IndexError, ValueError):
        return None


def ended(start_ns: int | None, first_ns: int) -> bool:
    """Whether the process of an entry made at ``first_ns`` is gone: no process
    with its pid (``start_ns`` None), or one that started later (a reused pid)."""
    return start_ns is None or start_ns > first_ns


class IoUringRuntime:
    """Counts into reports, and the sensor's status from kernel.io_uring_disabled."""

    def __init__(self, ctx: SensorContext,
                 detail: Callable[[], str] = policy.current_detail) -> None:
        self.ctx = ctx
        self.detail = detail
        self.interval_s = float(ctx.cfg.iouring_flush_s)
        self.table = ctx.bpf["iouring_use"]
        self.ledger = UseLedger()
        log.info("io_uring sensor: %s", detail())

    def decoders(self) -> dict[int, Decoder]:
        return {OP_IOURING_SETUP: decode_setup, OP_IOURING_OP: decode_op}

    def threads(self) -> list[tuple[str, Callable[[threading.Event], None]]]:
        return [("iouring-flush", periodic_flush(self.flush, self.interval_s, "io_uring"))]

    def loss_counters(self) -> dict[str, Callable[[], int]]:
        return {"iouring_untracked": self.untracked}

    def untracked(self) -> int:
        """Submissions the kernel could not count (iouring_use full), summed over CPUs."""
        try:
            return int(sum(self.ctx.bpf["iouring_untracked"][ct.c_uint32(0)]))
        except Exception:  # a test context without the map
            return 0

    def status(self) -> events_pb2.SensorStatus | None:
        """Always "ok", with what is and is not seen (re-read: the sysctl can change)."""
        return sensor_status(SENSOR.name, "ok", self.detail())

    def close(self) -> None:
        pass

    def flush(self) -> None:
        """Report every (process, opcode) whose count moved; forget ended processes."""
        entries = self._read()
        # decided before the counts are read again below: only then is an
        # ended process's count final (it cannot submit any more)
        starts = {tgid: started_ns(tgid, self.ctx.proc_root) for tgid, _ in entries}
        gone = {k for k, (_, v) in entries.items() if ended(starts[k[0]], v.first.h.ktime_ns)}
        now = time.time_ns()
        for key, (raw_key, use) in self._read(set(entries)).items():
            report = self.ledger.step(key, int(use.count), bool(use.notified))
            if report is not None:
                self.ctx.inbox.offer(self._record(use, *report, now))  # full: counted "queue"
            if key in gone:
                with contextlib.suppress(KeyError):
                    del self.table[raw_key]
                self.ledger.forget(key)

    def _read(self, only: set[tuple[int, int]] | None = None
              ) -> dict[tuple[int, int], tuple[Any, IouringUse]]:
        """(tgid, opcode) -> (the map's own key object, a copy of the value)."""
        out = {}
        for k in list(self.table.keys()):
            key = (int(k.tgid), int(k.opcode))
            if only is not None and key not in only:
                continue
            try:
                v = self.table[k]
            except KeyError:
                continue
            out[key] = (k, IouringUse.from_buffer_copy(ct.string_at(ct.addressof(v),
                                                                     ct.sizeof(IouringUse))))
        return out

    def _record(self, use: IouringUse, kind: str, count: int, now: int) -> Record:
        """A report from the map: the identity is that of the first submission."""
        rec = header_record(TYPE, use.first.h, self.ctx.clock,
                            op_payload(use.first, kind, count, int(use.count)))
        if kind == "op_count":
            rec.wall_ns = now
        return rec


SENSOR = BpfSensor(
    name="iouring",
    source="iouring.c",
    required_tracepoints=("io_uring:io_uring_create", "io_uring:io_uring_submit_req"),
    decoders={OP_IOURING_SETUP: decode_setup, OP_IOURING_OP: decode_op},
    mirrors={"iouring_setup_rec": IouringSetupRec, "iouring_op_rec": IouringOpRec,
             "iouring_use_key": IouringUseKey, "iouring_use": IouringUse},
    runtime=IoUringRuntime,
)
