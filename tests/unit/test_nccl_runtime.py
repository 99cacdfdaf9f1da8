"""The nccl runtime's decoders and flush without root: the BPF object is a
stand-in whose tables behave like bcc's (ctypes keys and values), /proc is a
directory tree."""

from __future__ import annotations

import ctypes as ct
import hashlib
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from agent.nccl.attach import Library
from agent.nccl.records import (
    OP_NCCL_END,
    OP_NCCL_INIT,
    NcclCollKey,
    NcclCollVal,
    NcclEndRec,
    NcclInitRec,
    NcclMark,
)
from agent.nccl.runtime import CommName, NcclRuntime
from agent.nccl.types import comm_id
from agent.sensors.base import BootClock, MappedFile, SensorContext, SensorHooks
from tests.inbox import ListInbox

pytestmark = pytest.mark.skipif(os.uname().machine != "x86_64", reason="x86-64 ABI only")


class CommKey(ct.Structure):
    _fields_ = (("tgid", ct.c_uint32), ("pad", ct.c_uint32), ("comm", ct.c_uint64))


class CommId(ct.Structure):
    _fields_ = (("id", ct.c_uint8 * 128), ("rank", ct.c_int32), ("nranks", ct.c_int32))


class Table:
    """Enough of bcc's TableBase: ctypes keys/values, KeyError when absent."""

    def __init__(self, key: type, leaf: type) -> None:
        self.Key, self.Leaf = key, leaf
        self.data: dict[bytes, tuple[Any, Any]] = {}

    def __getitem__(self, k: Any) -> Any:
        if bytes(k) not in self.data:
            raise KeyError(k)
        return self.data[bytes(k)][1]

    def __setitem__(self, k: Any, v: Any) -> None:
        self.data[bytes(k)] = (k, v)

    def get(self, k: Any, default: Any = None) -> Any:
        return self.data.get(bytes(k), (None, default))[1]

    def pop(self, k: Any, default: Any = None) -> Any:
        return self.data.pop(bytes(k), (None, default))[1]

    def keys(self) -> list[Any]:
        return [k for k, _ in self.data.values()]

    def sum(self, _k: Any) -> Any:
        return ct.c_uint64(0)


class FakeBpf:
    def __init__(self) -> None:
        self.tables = {"nccl_coll": Table(NcclCollKey, NcclCollVal),
                       "nccl_marks": Table(NcclCollKey, NcclMark),
                       "nccl_comms": Table(CommKey, CommId),
                       "nccl_dropped": Table(ct.c_int, ct.c_uint64),
                       "accel_procs": Table(ct.c_uint32, ct.c_uint8)}
        self.uprobe_fds: dict[bytes, int] = {}

    def load_func(self, name: bytes, kind: int) -> None:
        pass

    def __getitem__(self, name: str) -> Table:
        return self.tables[name]



PID = 4242
LIB = "/venv/nvidia/nccl/lib/libnccl.so.2"
BASE, END = 0x7F0000100000, 0x7F0000900000


@pytest.fixture
def proc(tmp_path: Path) -> Path:
    d = tmp_path / str(PID)
    d.mkdir()
    (d / "maps").write_text(f"{BASE:x}-{END:x} r-xp 00100000 08:01 77 {LIB}\n")
    (d / "environ").write_bytes(b"HOME=/root\0NCCL_DEBUG=WARN\0")
    (d / "cmdline").write_bytes(b"python\0train.py\0")
    os.symlink("/usr/bin/python3.11", d / "exe")
    return tmp_path


@pytest.fixture
def runtime(proc: Path) -> NcclRuntime:
    ctx = SensorContext(bpf=FakeBpf(), inbox=ListInbox(), clock=BootClock(),
                        cfg=SimpleNamespace(nccl_flush_s=5.0), opened_gpu=lambda p: False,
                        hooks=SensorHooks(), proc_root=str(proc))
    rt = NcclRuntime(ctx)
    # as if attached: the library file is known (no bcc here)
    lib = Library(LIB, os.makedev(8, 1), 77, "ab" * 32, 19)
    rt.attacher.libs[(lib.dev, lib.inode)] = lib
    rt.attacher.remember_range(MappedFile(PID, LIB, f"/x/{BASE:x}-{END:x}", lib.dev, 77),
                                (lib.dev, lib.inode))
    return rt


def init_rec(uid: bytes, handle: int, rank: int = 3, nranks: int = 8) -> bytes:
    r = NcclInitRec()
    r.h.op, r.h.pid, r.h.tid, r.h.ktime_ns = OP_NCCL_INIT, PID, PID, 10**9
    r.fn, r.nranks, r.rank, r.result, r.ip, r.ncomms = 0, nranks, rank, 0, BASE + 0x40, 1
    r.comms[0] = handle
    r.id_known = 1
    ct.memmove(r.id, uid, 128)
    return bytes(r)


def test_decode_init_names_library_env_and_communicator(runtime: NcclRuntime) -> None:
    uid = hashlib.sha512(b"job").digest() * 2
    rec = runtime.decoders()[OP_NCCL_INIT](init_rec(uid, 0x55AA), runtime.ctx.clock)
    assert rec is not None
    p = rec.payload
    assert (p.function, p.nranks, p.rank, p.comm_id) == ("ncclCommInitRank", 8, 3, comm_id(uid))
    assert (p.library, p.library_sha256) == (LIB, "ab" * 32)
    assert dict(p.nccl_env) == {"NCCL_DEBUG": "WARN"} and list(p.comm_handles) == [0x55AA]


def test_decode_end_uses_the_kernel_id_or_the_init_seen(runtime: NcclRuntime) -> None:
    uid = bytes(range(128))
    runtime.decoders()[OP_NCCL_INIT](init_rec(uid, 0x77), runtime.ctx.clock)
    r = NcclEndRec()
    r.h.op, r.h.pid, r.fn, r.comm, r.known = OP_NCCL_END, PID, 1, 0x77, 0
    rec = runtime.decoders()[OP_NCCL_END](bytes(r), runtime.ctx.clock)
    assert rec is not None
    assert (rec.payload.comm_id, rec.payload.abort, rec.payload.function) == (
        comm_id(uid), True, "ncclCommAbort")
    assert runtime.flush_now.is_set()  # the last collectives follow at once


def coll(runtime: NcclRuntime, op: int, dtype: int, handle: int, calls: int, elems: int) -> None:
    v = NcclCollVal(calls=calls, elems=elems, first_ns=10**9, last_ns=2 * 10**9)
    v.hist[20] = calls - 1
    runtime.coll[NcclCollKey(PID, op, dtype, handle)] = v


def test_flush_reports_bytes_names_and_forgets_exited_processes(
        runtime: NcclRuntime, proc: Path) -> None:
    uid = bytes(128)
    runtime.decoders()[OP_NCCL_INIT](init_rec(uid, 0x99, rank=1, nranks=2), runtime.ctx.clock)
    coll(runtime, 0, 9, 0x99, calls=23, elems=23 * 1024)  # AllReduce bfloat16
    coll(runtime, 7, 255, 0, calls=5, elems=0)  # GroupStart
    assert runtime.flush() == 2
    out = {r.payload.op: r for r in runtime.ctx.inbox.items}  # type: ignore[attr-defined]
    ar = out["AllReduce"].payload
    assert (ar.comm_id, ar.rank, ar.nranks, ar.datatype, ar.calls, ar.bytes) == (
        comm_id(uid), 1, 2, "bfloat16", 23, 23 * 1024 * 2)
    assert list(ar.interval_log2_ns) == [0] * 20 + [22]
    assert out["AllReduce"].exe_hint == "/usr/bin/python3.11"
    assert (out["GroupStart"].payload.datatype, out["GroupStart"].payload.rank) == ("", -1)
    assert runtime.flush() == 0  # nothing new
    for f in ("environ", "cmdline", "exe", "maps"):
        (proc / str(PID) / f).unlink()
    (proc / str(PID)).rmdir()  # the process exits
    assert runtime.flush() == 0
    assert runtime.coll.keys() == [] and runtime.marks.keys() == []
    assert PID in runtime.idents  # kept one more flush for late ring records
    runtime.flush()
    assert PID not in runtime.idents and not runtime.names


def test_decode_split_names_parent_and_derived_child(runtime: NcclRuntime) -> None:
    from agent.nccl.types import FN_SPLIT, split_id

    uid = hashlib.sha512(b"parent").digest() * 2
    runtime.decoders()[OP_NCCL_INIT](init_rec(uid, 0x1000), runtime.ctx.clock)
    r = NcclInitRec.from_buffer_copy(init_rec(split_id(uid, 2), 0x2000, rank=-1, nranks=-1))
    r.fn, r.parent, r.color, r.key = FN_SPLIT, 0x1000, 2, 5
    rec = runtime.decoders()[OP_NCCL_INIT](bytes(r), runtime.ctx.clock)
    assert rec is not None
    p = rec.payload
    assert (p.function, p.comm_id, p.rank, p.nranks) == (
        "ncclCommSplit", comm_id(split_id(uid, 2)), -1, -1)
    assert (p.parent_comm_id, p.parent_comm_handle, p.split_color, p.split_key) == (
        comm_id(uid), 0x1000, 2, 5)
    # the child's collectives: its comm_id, rank unknown, size 0 (unknown)
    assert runtime._comm_name(PID, 0x2000) == CommName(comm_id(split_id(uid, 2)), -1, 0)
    r.id_known = 0
    unseen = runtime.decoders()[OP_NCCL_INIT](bytes(r), runtime.ctx.clock)
    assert unseen is not None and unseen.payload.comm_id == ""


def test_status_reports_slow_probes_and_failures(runtime: NcclRuntime) -> None:
    from agent.nccl.prologue import Site

    assert runtime.status() is None  # the library of the fixture has no sites
    slow = Site("ncclSend", 0x10, 0x10, 0, b"\xb8\x04\x00\x00\x00", "other")
    fast = Site("ncclAllReduce", 0x20, 0x20, 4, b"\x55", "push")
    lib = Library("/opt/libnccl.so.2", 1, 2, "", 2, (slow, fast))
    runtime.attacher.libs[(1, 2)] = lib
    s = runtime.status()
    assert s is not None and (s.name, s.state) == ("nccl", "ok")
    assert s.detail == ("/opt/libnccl.so.2: 1 of 2 entry uprobes single-stepped (slow path): "
                        "ncclSend (b8 04 00 00)")
    runtime.attacher.failed[(3, 4)] = "/x/libnccl.so.2: gone"
    s = runtime.status()
    assert s is not None and s.state == "degraded"
    assert s.detail.startswith("cannot attach uprobes to /x/libnccl.so.2: gone; /opt/")


def test_decode_shrink_names_parent_and_excluded_ranks(runtime: NcclRuntime) -> None:
    from agent.nccl.types import FN_SHRINK, shrink_id

    uid = hashlib.sha512(b"parent").digest() * 2
    runtime.decoders()[OP_NCCL_INIT](init_rec(uid, 0x1000), runtime.ctx.clock)
    excluded = list(range(40, 20, -1))  # 20 ranks: the record holds the first 16
    r = NcclInitRec.from_buffer_copy(
        init_rec(shrink_id(uid, excluded), 0x3000, rank=-1, nranks=-1))
    r.fn, r.parent, r.nexcluded = FN_SHRINK, 0x1000, len(excluded)
    r.excluded[:] = excluded[:16]
    rec = runtime.decoders()[OP_NCCL_INIT](bytes(r), runtime.ctx.clock)
    assert rec is not None
    p = rec.payload
    assert (p.function, p.comm_id, p.parent_comm_id, p.parent_comm_handle) == (
        "ncclCommShrink", comm_id(shrink_id(uid, excluded)), comm_id(uid), 0x1000)
    assert (p.excluded_count, list(p.excluded_ranks), p.split_color) == (20, excluded[:16], 0)
