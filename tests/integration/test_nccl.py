"""nccl.* end to end: the fake libnccl.so.2 (tests/fixtures/fakenccl) and a
driver program that makes a known set of NCCL calls, real uprobes in a real
BPF program, and the sensor's own runtime; then once through a real agent
into the collector's SQLite.

The driver maps libnccl at exec (DT_NEEDED) and waits on stdin before its
first NCCL call, so the uprobes are attached when the calls come.
"""

from __future__ import annotations

import ctypes as ct
import os
import secrets
import shutil
import subprocess
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from agent.nccl.attach import PROBES, nccl_mappings, sha256_file
from agent.nccl.runtime import NcclRuntime
from agent.nccl.types import comm_id, shrink_id, split_id
from agent.record import Record
from agent.sensors import nccl
from agent.sensors.base import BootClock, MappedFile, SensorContext, SensorHooks
from agent.sensors.loader import load_sensors
from tests.capabilities import require_bpf
from tests.fixtures.fakenccl.build import FakeNccl, build
from tests.inbox import ListInbox
from tests.integration.harness import Agent, Collector, ready_agent, wait_for

pytestmark = [pytest.mark.bpf, pytest.mark.integration]

SIZES = {"int8": 1, "float32": 4, "bfloat16": 2, "float8e4m3": 1, "float64": 8, "float16": 2,
         "uint64": 8, "int32": 4}



@dataclass
class Rig:
    """One BPF program with only the nccl sensor, its runtime, and a ring poller."""

    runtime: NcclRuntime
    inbox: ListInbox
    bpf: object
    hooks: SensorHooks
    raw: list[bytes] = field(default_factory=list)

    def drain(self) -> None:
        """Decode what the ring holds into the inbox (as the agent's processor would)."""
        self.bpf.ring_buffer_poll(50)  # type: ignore[attr-defined]
        decoders = self.runtime.decoders()
        raw, self.raw = self.raw, []
        for data in raw:
            rec = decoders[data[0]](data, self.runtime.ctx.clock)
            if rec is not None:
                self.inbox.offer(rec)

    def run(self, *drivers: Driver) -> None:
        """Probe each driver's library, let them all finish, then read
        their records and collective counters into the inbox."""
        for d in drivers:
            self.runtime.attach(d.mapping())
            d.go()
        self.drain()
        self.runtime.flush()


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> FakeNccl:
    return build(tmp_path_factory.mktemp("fakenccl"))


@pytest.fixture(scope="module")
def distro(tmp_path_factory: pytest.TempPathFactory) -> FakeNccl:
    """The fake built as Ubuntu/Fedora build: endbr64, then push %rbp."""
    return build(tmp_path_factory.mktemp("fakenccl-distro"), "distro")


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    require_bpf()
    loaded = load_sensors((nccl.SENSOR,))
    assert loaded.bpf is not None, loaded.statuses
    inbox, hooks = ListInbox(), SensorHooks()
    ctx = SensorContext(bpf=loaded.bpf, inbox=inbox, clock=BootClock(),
                        cfg=SimpleNamespace(nccl_flush_s=3600.0), opened_gpu=lambda pid: False,
                        hooks=hooks)
    runtime = NcclRuntime(ctx)
    r = Rig(runtime, inbox, loaded.bpf, hooks)
    loaded.bpf["events"].open_ring_buffer(
        lambda _c, data, size: r.raw.append(ct.string_at(data, size)))
    stop = threading.Event()
    attacher = threading.Thread(target=runtime.attacher.run, args=(stop,), daemon=True)
    attacher.start()
    yield r
    stop.set()
    attacher.join(10)
    loaded.bpf.cleanup()


class Driver:
    """The driver program, waiting on stdin before its first NCCL call."""

    def __init__(self, fake: FakeNccl, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen([str(fake.driver), "--wait", *args], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True,
                                     env={**os.environ, **(env or {})})
        self.pid = self._expect("ready")

    def _expect(self, word: str) -> int:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        assert line and line[0] == word, f"driver said {line} (rc={self.proc.poll()})"
        return int(line[1])

    def mapping(self) -> MappedFile:
        (mapped,) = nccl_mappings(self.pid)
        return mapped

    def go(self, until: str | None = None) -> None:
        """Let it run: to its next --pause (``until="paused"``) or to its end."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        if until is not None:
            self._expect(until)
            return
        out, _ = self.proc.communicate(timeout=60)
        assert self.proc.returncode == 0 and out.strip() == "done 0", out


Calls = set[tuple[str, str, int, int]]  # (op, datatype, count, times)
Sums = dict[tuple[str, str], tuple[int, int]]  # (op, datatype) -> (calls, bytes)


def sums(records: list[Record], pid: int) -> Sums:
    """(op, datatype) -> (calls, bytes) over the nccl.collective records of ``pid``."""
    calls: Counter[tuple[str, str]] = Counter()
    nbytes: Counter[tuple[str, str]] = Counter()
    for r in records:
        if r.pid == pid:
            key = (r.payload.op, r.payload.datatype)
            calls[key] += r.payload.calls
            nbytes[key] += r.payload.bytes
    return {k: (calls[k], nbytes[k]) for k in calls}


CALLS = {  # op, datatype, count, times: primes, so a miscount shows
    ("allreduce", "float32", 1024, 23), ("allreduce", "bfloat16", 4099, 7),
    ("broadcast", "float8e4m3", 17, 5), ("reduce", "float64", 3, 11),
    ("allgather", "float16", 65537, 3), ("reducescatter", "int32", 129, 13),
    ("send", "uint64", 31, 2), ("recv", "int8", 1_000_003, 19),
}
NAMES = {"allreduce": "AllReduce", "broadcast": "Broadcast", "reduce": "Reduce",
         "allgather": "AllGather", "reducescatter": "ReduceScatter", "send": "Send",
         "recv": "Recv", "alltoall": "AlltoAll", "gather": "Gather", "scatter": "Scatter",
         "putsignal": "PutSignal", "signal": "Signal", "waitsignal": "WaitSignal"}
NO_DATA = {"signal", "waitsignal"}  # counted with datatype "" and 0 bytes
# NCCL 2.32's nccl*Config entry points count as their plain operation
NAMES.update({f"{op}config": name for op, name in list(NAMES.items())
              if op not in ("send", "recv", "putsignal") and op not in NO_DATA})
# every NCCL 2.32 collective entry point once, plain and *Config variants
# sharing a datatype so they must add up in one key
CALLS_232 = {
    ("allreduce", "float32", 1024, 3), ("allreduceconfig", "float32", 1024, 5),
    ("broadcastconfig", "int8", 17, 7), ("reduceconfig", "float64", 3, 11),
    ("allgatherconfig", "float16", 65537, 2), ("reducescatterconfig", "int32", 129, 13),
    ("alltoall", "bfloat16", 4099, 17), ("alltoallconfig", "bfloat16", 4099, 19),
    ("gather", "uint64", 31, 23), ("gatherconfig", "uint64", 31, 29),
    ("scatter", "float8e4m3", 1_000_003, 31), ("scatterconfig", "int8", 5, 37),
    ("putsignal", "float16", 4097, 41), ("signal", "int8", 0, 43), ("waitsignal", "int8", 3, 47),
}


def call_args(calls: Calls) -> list[str]:
    return [a for op, t, n, times in sorted(calls) for a in ("--call", f"{op}:{t}:{n}:{times}")]


def expected(calls: Calls, groups: int) -> Sums:
    out: Sums = {}
    for op, t, n, times in calls:
        key = (NAMES[op], "" if op in NO_DATA else t)
        was = out.get(key, (0, 0))
        out[key] = (was[0] + times, was[1] + (0 if op in NO_DATA else times * n * SIZES[t]))
    if groups:
        out[("GroupStart", "")] = out[("GroupEnd", "")] = (groups, 0)
    return out


def test_driver_calls_are_counted_exactly(rig: Rig, fake: FakeNccl) -> None:
    uid = secrets.token_bytes(128)
    d = Driver(fake, "--init", "config", "--nranks", "8", "--rank", "5", "--uid", uid.hex(),
               *call_args(CALLS), "--group", "29", "--end", "abort",
               env={"NCCL_DEBUG": "INFO", "NCCL_SOCKET_IFNAME": "=lo"})
    lib = rig.runtime.attach(d.mapping())
    assert lib is not None and lib.sha256 == sha256_file(str(fake.library))
    d.go()
    rig.drain()
    rig.runtime.flush()
    assert sums(rig.inbox.take("nccl.collective"), d.pid) == expected(CALLS, 29)

    (init,) = [r for r in rig.inbox.take("nccl.comm_init") if r.pid == d.pid]
    p = init.payload
    assert (p.function, p.nranks, p.rank, p.result) == ("ncclCommInitRankConfig", 8, 5, 0)
    assert p.comm_id == comm_id(uid) and len(p.comm_handles) == 1
    assert (p.library, p.library_sha256) == (str(fake.library), lib.sha256)
    assert dict(p.nccl_env) == {"NCCL_DEBUG": "INFO", "NCCL_SOCKET_IFNAME": "=lo"}
    (end,) = [r for r in rig.inbox.take("nccl.comm_end") if r.pid == d.pid]
    e = end.payload
    assert (e.function, e.abort, e.result, e.comm_id) == ("ncclCommAbort", True, 0, p.comm_id)
    assert e.comm_handle == p.comm_handles[0]


def test_collectives_name_their_communicator_and_rank(rig: Rig, fake: FakeNccl) -> None:
    uid = secrets.token_bytes(128)
    d = Driver(fake, "--nranks", "2", "--rank", "1", "--uid", uid.hex(),
               "--call", "allreduce:float32:8:3", "--group", "2")
    rig.run(d)
    by_op = {r.payload.op: r.payload for r in rig.inbox.take("nccl.collective") if r.pid == d.pid}
    ar = by_op["AllReduce"]
    assert (ar.comm_id, ar.rank, ar.nranks, ar.calls) == (comm_id(uid), 1, 2, 3)
    assert ar.first_call.ToNanoseconds() <= ar.last_call.ToNanoseconds()
    assert sum(ar.interval_log2_ns) == 2  # 3 calls, 2 intervals
    gs = by_op["GroupStart"]
    assert (gs.comm_id, gs.rank, gs.comm_handle, gs.datatype) == ("", -1, 0, "")
    (end,) = [r for r in rig.inbox.take("nccl.comm_end") if r.pid == d.pid]
    assert (end.payload.function, end.payload.abort) == ("ncclCommDestroy", False)


def test_same_unique_id_gives_same_comm_id(rig: Rig, fake: FakeNccl) -> None:
    shared, other = secrets.token_bytes(128), secrets.token_bytes(128)
    drivers = [Driver(fake, "--nranks", "2", "--rank", "0", "--uid", shared.hex()),
               Driver(fake, "--nranks", "2", "--rank", "1", "--uid", shared.hex()),
               Driver(fake, "--nranks", "2", "--rank", "0", "--uid", other.hex())]
    for d in drivers:
        rig.runtime.attach(d.mapping())
        d.go()
    rig.drain()
    inits = {r.pid: r.payload for r in rig.inbox.take("nccl.comm_init")}
    a, b, c = (inits[d.pid] for d in drivers)
    assert a.comm_id == b.comm_id == comm_id(shared)
    assert c.comm_id == comm_id(other) != a.comm_id
    assert [(p.rank, p.nranks) for p in (a, b, c)] == [(0, 2), (1, 2), (0, 2)]
    rig.inbox.take("nccl.comm_end")


def test_init_all_creates_one_handle_per_device(rig: Rig, fake: FakeNccl) -> None:
    d = Driver(fake, "--init", "all", "--nranks", "3", "--call", "broadcast:int8:5:2")
    rig.run(d)
    (init,) = [r.payload for r in rig.inbox.take("nccl.comm_init") if r.pid == d.pid]
    assert (init.function, init.nranks, init.rank, len(init.comm_handles)) == (
        "ncclCommInitAll", 3, -1, 3)
    (coll,) = [r.payload for r in rig.inbox.take("nccl.collective") if r.pid == d.pid]
    assert (coll.comm_id, coll.rank, coll.calls, coll.bytes) == (init.comm_id, 0, 2, 10)
    ends = [r.payload for r in rig.inbox.take("nccl.comm_end") if r.pid == d.pid]
    assert sorted(e.comm_handle for e in ends) == sorted(init.comm_handles)
    assert {e.comm_id for e in ends} == {init.comm_id}


def test_reports_are_deltas_and_exited_processes_are_forgotten(rig: Rig, fake: FakeNccl) -> None:
    d = Driver(fake, "--call", "allreduce:float16:10:7", "--pause",
               "--call", "allreduce:float16:10:4")
    rig.runtime.attach(d.mapping())
    d.go(until="paused")
    rig.runtime.flush()
    (first,) = [r.payload for r in rig.inbox.take("nccl.collective") if r.pid == d.pid]
    assert (first.calls, first.bytes) == (7, 140)
    assert rig.runtime.flush() == 0 or not [
        r for r in rig.inbox.take("nccl.collective") if r.pid == d.pid]
    d.go()
    rig.drain()
    rig.runtime.flush()
    (second,) = [r.payload for r in rig.inbox.take("nccl.collective") if r.pid == d.pid]
    assert (second.calls, second.bytes) == (4, 80)
    assert sum(second.interval_log2_ns) == 4  # each of the 4 follows a call
    assert second.first_call.ToNanoseconds() > first.last_call.ToNanoseconds()
    assert [k for k in rig.runtime.coll if k.tgid == d.pid] == []
    assert [k for k in rig.runtime.comms if k.tgid == d.pid] == []
    rig.inbox.take("nccl.comm_init")
    rig.inbox.take("nccl.comm_end")


def test_attach_through_the_hook_survives_the_library_being_deleted(
        rig: Rig, fake: FakeNccl, tmp_path: Path) -> None:
    venv_lib = tmp_path / "venv/lib/python3/site-packages/nvidia/nccl/lib"
    venv_lib.mkdir(parents=True)
    copy = venv_lib / "libnccl.so.2"
    shutil.copy(fake.library, copy)
    d = Driver(fake, "--call", "send:bfloat16:100:3", env={"LD_LIBRARY_PATH": str(venv_lib)})
    mapped = d.mapping()
    assert mapped.path == str(copy)
    rig.hooks.library_mapped.append(rig.runtime.attacher.offer)
    try:
        rig.hooks.tell_library_mapped(mapped)
        lib = wait_for(lambda: rig.runtime.attacher.library(mapped.dev, mapped.inode))
    finally:
        rig.hooks.library_mapped.remove(rig.runtime.attacher.offer)
    shutil.rmtree(tmp_path / "venv")
    d.go()
    rig.drain()
    rig.runtime.flush()
    assert sums(rig.inbox.take("nccl.collective"), d.pid) == {("Send", "bfloat16"): (3, 600)}
    (init,) = [r.payload for r in rig.inbox.take("nccl.comm_init") if r.pid == d.pid]
    assert (init.library, init.library_sha256) == (str(copy), lib.sha256)  # type: ignore[attr-defined]
    rig.inbox.take("nccl.comm_end")


def test_attach_is_once_per_library_file(rig: Rig, fake: FakeNccl) -> None:
    a, b = (Driver(fake, "--call", "allreduce:int8:1:3") for _ in range(2))
    first = rig.runtime.attach(a.mapping())
    again = rig.runtime.attach(b.mapping())
    # a teller with other device numbers for the same file (another dev_t
    # encoding): still the same file, not probed twice
    odd = rig.runtime.attach(replace(b.mapping(), dev=0xDEAD))
    assert first is not None and again is first and odd is first
    for d in (a, b):
        d.go()
    rig.drain()
    inits = [r for r in rig.inbox.take("nccl.comm_init") if r.pid in (a.pid, b.pid)]
    assert len(inits) == 2  # one uprobe per file, each call seen once
    rig.runtime.flush()
    colls = rig.inbox.take("nccl.collective")
    assert sums(colls, a.pid) == sums(colls, b.pid) == {("AllReduce", "int8"): (3, 3)}
    rig.inbox.take("nccl.comm_end")


def test_agent_stores_both_ranks_exactly_in_the_collector(
        fake: FakeNccl, collector: Collector, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The real agent: its start-up scan finds libnccl already mapped by the
    two waiting ranks; the calls reach SQLite exactly, with one comm_id."""
    require_bpf()
    uid = secrets.token_bytes(128)
    calls = {("allreduce", "bfloat16", 4099, 31), ("send", "float32", 7, 3)}
    ranks = [Driver(fake, "--nranks", "2", "--rank", str(r), "--uid", uid.hex(),
                    *call_args(calls), "--group", "5") for r in (0, 1)]
    log = tmp_path_factory.mktemp("nccl-agent") / "agent.log"
    agent: Agent = ready_agent(collector, "it-nccl", "ebpf", log, "--nccl-flush", "1")
    try:
        wait_for(lambda: "nccl: attached" in agent.output(), timeout=60)
        for d in ranks:
            d.go()
        want = expected(calls, 5)

        def stored(pid: int) -> Sums:
            evs = collector.query(types=["nccl.collective"], nodes=["it-nccl"], pid=pid)
            recs = [Record("nccl.collective", 0, e.nccl_collective, pid=pid) for e in evs]
            return sums(recs, pid)

        for d in ranks:
            wait_for(lambda d=d: stored(d.pid) == want, timeout=60)  # type: ignore[misc]
        inits = collector.query(types=["nccl.comm_init"], nodes=["it-nccl"])
        mine = {e.process.pid: e.nccl_comm_init for e in inits if e.process.pid in
                {d.pid for d in ranks}}
        assert {p.comm_id for p in mine.values()} == {comm_id(uid)}
        assert sorted(p.rank for p in mine.values()) == [0, 1]
        assert all(p.library_sha256 == sha256_file(str(fake.library)) for p in mine.values()), mine
        for e in collector.query(types=["nccl.collective"], nodes=["it-nccl"]):
            if e.process.pid in mine and e.nccl_collective.op == "AllReduce":
                assert e.nccl_collective.comm_id == comm_id(uid), e
                assert e.process.exe == str(fake.driver), e
        for d in ranks:
            ends = collector.query(types=["nccl.comm_end"], nodes=["it-nccl"], pid=d.pid)
            assert [e.nccl_comm_end.comm_id for e in ends] == [comm_id(uid)], ends
    finally:
        agent.stop()


def test_collectives_named_before_the_init_record_is_read(rig: Rig, fake: FakeNccl) -> None:
    """The flush may run before the ring's comm_init record is decoded: the
    name comes from the kernel's handle -> id map then."""
    uid = secrets.token_bytes(128)
    d = Driver(fake, "--nranks", "4", "--rank", "2", "--uid", uid.hex(),
               "--call", "reduce:int32:6:5", "--pause")
    rig.runtime.attach(d.mapping())
    d.go(until="paused")
    rig.runtime.flush()  # ring not drained yet
    (coll,) = [r.payload for r in rig.inbox.take("nccl.collective") if r.pid == d.pid]
    assert (coll.comm_id, coll.rank, coll.nranks, coll.calls, coll.bytes) == (
        comm_id(uid), 2, 4, 5, 120)
    d.go()
    rig.drain()
    rig.inbox.take("nccl.comm_init")
    rig.inbox.take("nccl.comm_end")


def test_nccl_232_entry_points_are_counted_exactly(rig: Rig, fake: FakeNccl) -> None:
    """The *Config variants (own entry points in NCCL 2.32) count as their
    plain operation; AlltoAll, Gather, Scatter and the one-sided PutSignal,
    Signal, WaitSignal (comm the 10th argument: [sp+32]) are operations of
    their own."""
    uid = secrets.token_bytes(128)
    d = Driver(fake, "--nranks", "4", "--rank", "3", "--uid", uid.hex(), *call_args(CALLS_232))
    rig.run(d)
    colls = [r for r in rig.inbox.take("nccl.collective") if r.pid == d.pid]
    assert sums(colls, d.pid) == expected(CALLS_232, 0)
    assert {(r.payload.comm_id, r.payload.rank, r.payload.nranks) for r in colls} == {
        (comm_id(uid), 3, 4)}
    rig.inbox.take("nccl.comm_init")
    rig.inbox.take("nccl.comm_end")


def test_distro_build_is_probed_past_endbr64_and_counts_exactly(
        rig: Rig, distro: FakeNccl) -> None:
    """-fcf-protection=full: every function starts with endbr64; the probes
    go 4 bytes in, onto the (emulated) push, and read the same arguments:
    the 128-byte id on the stack, the 7th argument at [sp+8], the return."""
    uid = secrets.token_bytes(128)
    calls = CALLS | CALLS_232
    d = Driver(distro, "--init", "config", "--nranks", "8", "--rank", "5", "--uid", uid.hex(),
               *call_args(calls), "--group", "7", "--end", "abort")
    lib = rig.runtime.attach(d.mapping())
    assert lib is not None
    assert {(s.skip, s.kind) for s in lib.sites} == {(4, "push")}, lib.sites
    assert len(lib.sites) == len({sym for sym, _, _ in PROBES}) and lib.slow == ()
    d.go()
    rig.drain()
    rig.runtime.flush()
    assert sums(rig.inbox.take("nccl.collective"), d.pid) == expected(calls, 7)
    (init,) = [r.payload for r in rig.inbox.take("nccl.comm_init") if r.pid == d.pid]
    assert (init.function, init.nranks, init.rank, init.result, init.comm_id) == (
        "ncclCommInitRankConfig", 8, 5, 0, comm_id(uid))
    (end,) = [r.payload for r in rig.inbox.take("nccl.comm_end") if r.pid == d.pid]
    assert (end.function, end.comm_id, end.comm_handle) == (
        "ncclCommAbort", comm_id(uid), init.comm_handles[0])


def test_slow_probes_are_reported_in_the_status(rig: Rig, fake: FakeNccl) -> None:
    """-O2 alone: leaf functions start with a mov, single-stepped: said so."""
    d = Driver(fake)
    lib = rig.runtime.attach(d.mapping())
    d.go()
    assert lib is not None and "ncclAllReduce" in lib.slow
    status = rig.runtime.status()
    assert status is not None and status.state == "ok"
    assert f"{lib.path}: {len(lib.slow)} of {len(lib.sites)} entry uprobes single-stepped" in (
        status.detail)
    rig.drain()
    rig.inbox.take("nccl.comm_init")
    rig.inbox.take("nccl.comm_end")


def test_init_rank_scalable_is_named_by_its_first_id(rig: Rig, fake: FakeNccl) -> None:
    uid = secrets.token_bytes(128)
    d = Driver(fake, "--init", "scalable", "--nranks", "16", "--rank", "9", "--uid", uid.hex(),
               "--call", "gather:int32:6:4")
    rig.run(d)
    (init,) = [r.payload for r in rig.inbox.take("nccl.comm_init") if r.pid == d.pid]
    assert (init.function, init.nranks, init.rank, init.result, init.comm_id) == (
        "ncclCommInitRankScalable", 16, 9, 0, comm_id(uid))
    (coll,) = [r.payload for r in rig.inbox.take("nccl.collective") if r.pid == d.pid]
    assert (coll.op, coll.comm_id, coll.rank, coll.nranks, coll.calls, coll.bytes) == (
        "Gather", comm_id(uid), 9, 16, 4, 96)
    rig.inbox.take("nccl.comm_end")


def test_split_children_agree_on_a_derived_comm_id(rig: Rig, fake: FakeNccl) -> None:
    """ncclCommSplit: ranks of one parent passing one color name one child,
    derived from the parent's id and the color; another color, another id;
    NCCL_SPLIT_NOCOLOR makes no communicator."""
    uid = secrets.token_bytes(128)
    colors = (3, 3, 4, -1)
    ranks = [Driver(fake, "--nranks", "4", "--rank", str(r), "--uid", uid.hex(),
                    "--split", f"{color}:{r}", "--call", "allreduce:float32:10:3")
             for r, color in enumerate(colors)]
    rig.run(*ranks)
    inits = rig.inbox.take("nccl.comm_init")
    colls = rig.inbox.take("nccl.collective")
    for r, (d, color) in enumerate(zip(ranks, colors, strict=True)):
        mine = {p.function: p for p in (x.payload for x in inits if x.pid == d.pid)}
        parent, child = mine["ncclCommInitRank"], mine["ncclCommSplit"]
        assert (child.parent_comm_id, child.parent_comm_handle) == (
            comm_id(uid), parent.comm_handles[0])
        assert (child.split_color, child.split_key, child.rank, child.nranks, child.result) == (
            color, r, -1, -1, 0)
        (coll,) = [x.payload for x in colls if x.pid == d.pid]
        if color == -1:  # no child: the calls went to the parent
            assert list(child.comm_handles) == []
            assert (coll.comm_id, coll.rank, coll.nranks) == (comm_id(uid), r, 4)
            continue
        assert child.comm_id == comm_id(split_id(uid, color)) != comm_id(uid)
        assert (coll.comm_id, coll.comm_handle, coll.rank, coll.nranks, coll.calls) == (
            child.comm_id, child.comm_handles[0], -1, 0, 3)
    rig.inbox.take("nccl.comm_end")


def test_split_of_an_unseen_parent_has_no_comm_id(
        rig: Rig, fake: FakeNccl, tmp_path: Path) -> None:
    """The parent's init ran before the probes: the child cannot be named."""
    shutil.copy(fake.library, tmp_path / fake.library.name)  # a file not probed yet
    d = Driver(fake, "--pause", "--split", "5:0", "--call", "allreduce:int8:2:2",
               env={"LD_LIBRARY_PATH": str(tmp_path)})
    d.go(until="paused")  # the parent is made before the library is probed
    rig.run(d)
    (child,) = [x.payload for x in rig.inbox.take("nccl.comm_init") if x.pid == d.pid]
    assert (child.function, child.comm_id, child.parent_comm_id, len(child.comm_handles)) == (
        "ncclCommSplit", "", "", 1)
    (coll,) = [x.payload for x in rig.inbox.take("nccl.collective") if x.pid == d.pid]
    assert (coll.comm_id, coll.comm_handle, coll.calls) == ("", child.comm_handles[0], 2)
    rig.inbox.take("nccl.comm_end")


def test_shrink_survivors_agree_on_a_derived_comm_id(rig: Rig, fake: FakeNccl) -> None:
    """ncclCommShrink: the surviving ranks, all passing one exclude list,
    name one child derived from the parent's id and the list; an excluded
    rank that calls gets none."""
    uid = secrets.token_bytes(128)
    ranks = [Driver(fake, "--nranks", "5", "--rank", str(r), "--uid", uid.hex(),
                    "--shrink", "3,1", "--call", "send:int32:2:5") for r in range(4)]
    other = Driver(fake, "--nranks", "5", "--rank", "0", "--uid", uid.hex(), "--shrink", "1")
    rig.run(*ranks, other)
    inits = rig.inbox.take("nccl.comm_init")
    colls = rig.inbox.take("nccl.collective")
    children = {}
    for r, d in enumerate(ranks):
        mine = {p.function: p for p in (x.payload for x in inits if x.pid == d.pid)}
        parent, child = mine["ncclCommInitRank"], mine["ncclCommShrink"]
        assert (child.parent_comm_id, child.parent_comm_handle, child.excluded_count,
                list(child.excluded_ranks), child.rank, child.nranks) == (
            comm_id(uid), parent.comm_handles[0], 2, [3, 1], -1, -1)
        (coll,) = [x.payload for x in colls if x.pid == d.pid]
        assert (coll.op, coll.calls, coll.bytes) == ("Send", 5, 40)
        if r in (1, 3):  # excluded: no communicator, the sends went to the parent
            assert list(child.comm_handles) == [] and coll.comm_id == comm_id(uid)
            continue
        children[r] = child.comm_id
        assert coll.comm_id == child.comm_id and coll.comm_handle == child.comm_handles[0]
    assert set(children.values()) == {comm_id(shrink_id(uid, [3, 1]))}
    (alone,) = [x.payload for x in inits if x.pid == other.pid and x.payload.function ==
                "ncclCommShrink"]
    assert alone.comm_id == comm_id(shrink_id(uid, [1])) not in children.values()
    rig.inbox.take("nccl.comm_end")
