"""Decode -> enrich -> seq -> spool, without root: records built with the
ctypes mirrors, run through the real Processor, DiskSpool and JSON form."""

from __future__ import annotations

import ctypes as ct
import os
import pwd
import signal
from pathlib import Path

from agent.pipeline import Identity, Processor, build_event
from agent.queue import DroppingQueue
from agent.record import Record
from agent.sensors.base import BootClock
from agent.sensors.gpu_open import decode_gpu_open
from agent.sensors.process import (
    TargetIdentity,
    decode_exec,
    decode_exit,
    decode_signal,
    signal_name,
)
from agent.sensors.records import (
    OP_BPF_LOAD,
    OP_EXEC,
    OP_EXIT,
    OP_GPU_OPEN,
    OP_MODULE_LOAD,
    OP_PTRACE,
    OP_SIGNAL,
    OP_VM_WRITE,
    BpfLoadRec,
    ExecRec,
    ExitRec,
    GpuOpenRec,
    ModuleRec,
    PtraceRec,
    SignalRec,
    VmWriteRec,
)
from agent.sensors.registry import BPF_SENSORS
from agent.sensors.tamper import (
    bpf_prog_type_name,
    decode_bpf_load,
    decode_module_load,
    decode_ptrace,
    decode_vm_write,
    fd_path,
)
from agent.spool import DiskSpool
from gpuaudit import jsonform
from gpuaudit.v1 import events_pb2


class FixedClock(BootClock):
    def __init__(self) -> None:
        self.offset_ns = 1_000_000_000_000_000_000


def _hdr(rec: ct.Structure, op: int, pid: int = 4242) -> None:
    h = rec.h  # type: ignore[attr-defined]
    h.op, h.pid, h.tid, h.ppid, h.uid, h.gid = op, pid, pid + 1, 1, 1000, 1000
    h.ktime_ns, h.cgroup_id, h.comm = 5_000, 77, b"python3"


def gpu_open_bytes(ret: int, path: bytes = b"/dev/nvidia0") -> bytes:
    r = GpuOpenRec()
    _hdr(r, OP_GPU_OPEN)
    r.flags, r.ret, r.path = 2, ret, path
    return bytes(r)


def test_gpu_open_refused_and_successful() -> None:
    rec = decode_gpu_open(gpu_open_bytes(-6), FixedClock())
    assert rec.type == "gpu.open"
    assert (rec.pid, rec.tid, rec.ppid, rec.uid, rec.comm, rec.cgroup_id) == (
        4242, 4243, 1, 1000, "python3", 77)
    assert rec.wall_ns == 1_000_000_000_000_005_000
    p = rec.payload
    assert isinstance(p, events_pb2.GpuOpen)
    assert (p.path, p.flags, p.fd, p.errno, p.source) == ("/dev/nvidia0", 2, -1, 6, "ebpf")
    p = decode_gpu_open(gpu_open_bytes(5), FixedClock()).payload
    assert isinstance(p, events_pb2.GpuOpen)
    assert (p.fd, p.errno) == (5, 0)


def test_exec_argv_and_hints() -> None:
    r = ExecRec()
    _hdr(r, OP_EXEC)
    r.filename, r.argc, r.truncated = b"/usr/bin/python3", 3, 0
    for i, a in enumerate([b"python3", b"train.py", b"--lr=3e-4"]):
        r.argv[i].value = a
    rec = decode_exec(bytes(r), FixedClock())
    p = rec.payload
    assert isinstance(p, events_pb2.ProcessExec)
    assert list(p.argv) == ["python3", "train.py", "--lr=3e-4"]
    assert (p.filename, p.argv_truncated) == ("/usr/bin/python3", False)
    assert (rec.exe_hint, rec.argv_hint) == ("/usr/bin/python3", list(p.argv))


def test_exit_is_about_the_process_not_the_last_thread() -> None:
    r = ExitRec()
    _hdr(r, OP_EXIT)
    r.exit_code, r.signal, r.held_gpu = 0, 9, 1
    rec = decode_exit(bytes(r), FixedClock())
    p = rec.payload
    assert isinstance(p, events_pb2.ProcessExit)
    assert (p.exit_code, p.signal, p.held_gpu, rec.tid) == (0, 9, True, 4242)


def signal_bytes(target: int, sig: int = 15, result: int = 0, group: int = 1) -> bytes:
    r = SignalRec()
    _hdr(r, OP_SIGNAL)
    r.target_pid, r.signal, r.result, r.group = target, sig, result, group
    return bytes(r)


def _fake_proc(root: Path, pid: int, uid: int, comm: bytes) -> None:
    d = root / str(pid)
    d.mkdir(parents=True)
    (d / "status").write_bytes(
        b"Name:\tx\nPPid:\t1\nUid:\t%d\t%d\t%d\t%d\nGid:\t5\t5\t5\t5\n" % ((uid,) * 4))
    (d / "comm").write_bytes(comm + b"\n")


def test_signal_header_is_the_sender_payload_names_the_target(tmp_path: Path) -> None:
    _fake_proc(tmp_path, 4300, 1001, b"python")
    target = TargetIdentity(proc_root=str(tmp_path), user_lookup={1001: "alice"}.__getitem__)
    rec = decode_signal(signal_bytes(4300, sig=15, result=1, group=0), FixedClock(), target)
    assert rec.type == "process.signal"
    assert (rec.pid, rec.tid, rec.uid, rec.comm) == (4242, 4243, 1000, "python3")
    p = rec.payload
    assert isinstance(p, events_pb2.ProcessSignal)
    assert (p.target_pid, p.signal, p.signal_name, p.result, p.group) == (
        4300, 15, "SIGTERM", 1, False)
    assert (p.target_user, p.target_comm) == ("alice", "python")


def test_signal_to_a_vanished_or_unreadable_target_keeps_the_event(tmp_path: Path) -> None:
    target = TargetIdentity(proc_root=str(tmp_path), user_lookup=lambda uid: "never")
    p = decode_signal(signal_bytes(4301, sig=9), FixedClock(), target).payload
    assert isinstance(p, events_pb2.ProcessSignal)
    assert (p.target_pid, p.signal_name, p.target_user, p.target_comm) == (4301, "SIGKILL", "", "")
    (tmp_path / "4302").mkdir()  # a pid directory whose files are gone (mid-teardown)
    assert target(4302) == ("", "")


def test_signal_names_follow_libc() -> None:
    assert [signal_name(n) for n in (15, 9, 19, 10)] == ["SIGTERM", "SIGKILL", "SIGSTOP", "SIGUSR1"]
    assert signal_name(int(signal.SIGRTMIN) + 3) == "SIGRTMIN+3"
    assert signal_name(int(signal.SIGRTMAX)) == "SIGRTMAX"
    assert signal_name(32) == ""  # glibc-internal: no name in `kill -l`
    assert signal_name(200) == ""


def test_signal_record_becomes_a_process_signal_event(tmp_path: Path) -> None:
    spool = DiskSpool(str(tmp_path / "spool"), "boot1")
    proc, _, _ = _processor(spool)
    proc.handle(signal_bytes(os.getpid()))  # a live target: the real /proc is read
    (ev,) = spooled(spool)
    assert (ev.type, ev.WhichOneof("payload"), ev.process.pid) == (
        "process.signal", "process_signal", 4242)
    s = ev.process_signal
    assert (s.target_pid, s.signal, s.group) == (os.getpid(), 15, True)
    assert s.target_user == pwd.getpwuid(os.getuid()).pw_name
    assert s.target_comm == Path(f"/proc/{os.getpid()}/comm").read_text().strip()


class StubEnricher:
    """Stands in for /proc: returns identity from the record, remembers forgets."""

    def __init__(self) -> None:
        self.forgotten: list[int] = []

    def process_for(self, rec: Record) -> events_pb2.Process:
        return events_pb2.Process(pid=rec.pid, uid=rec.uid or 0, comm=rec.comm)

    def forget(self, pid: int) -> None:
        self.forgotten.append(pid)


def _processor(spool: DiskSpool) -> tuple[Processor, StubEnricher, DroppingQueue[bytes | Record]]:
    decoders = {op: d for s in BPF_SENSORS for op, d in s.decoders.items()}
    inbox: DroppingQueue[bytes | Record] = DroppingQueue(16)
    enr = StubEnricher()
    return Processor(inbox, decoders, FixedClock(), enr, Identity("n1", "boot1"), spool), enr, inbox


def spooled(spool: DiskSpool) -> list[events_pb2.Event]:
    spool.flush()
    chunk = spool.read(spool.start(), 1000, 1 << 20)
    return [events_pb2.Event.FromString(p) for p in chunk.payloads] if chunk else []


def test_processor_numbers_gap_free_and_counts_bad_records(tmp_path: Path) -> None:
    spool = DiskSpool(tmp_path, "boot1")
    proc, enr, _ = _processor(spool)
    ex = ExitRec()
    _hdr(ex, OP_EXIT)
    for item in [gpu_open_bytes(-6), b"\xff garbage", b"", bytes(ex),
                 Record(type="agent.health", wall_ns=1, payload=events_pb2.AgentHealth())]:
        proc.handle(item)
    events = spooled(spool)
    assert [e.seq for e in events] == [1, 2, 3]
    assert [e.type for e in events] == ["gpu.open", "process.exit", "agent.health"]
    assert proc.decode_errors == 2
    assert enr.forgotten == [4242]  # cache dropped only after the exit was enriched
    assert events[1].process.pid == 4242
    assert not events[2].HasField("process")  # node-level event


def test_event_json_matches_contract() -> None:
    rec = decode_gpu_open(gpu_open_bytes(-6), FixedClock())
    ev = build_event(rec, Identity("n1", "b1"), 42, events_pb2.Process(pid=4242, uid=1000))
    d = jsonform.to_dict(ev)
    assert d["type"] == "gpu.open" and d["seq"] == 42 and d["node"] == "n1"
    assert d["gpu_open"] == {"path": "/dev/nvidia0", "flags": 2, "fd": -1, "errno": 6,
                             "source": "ebpf"}
    assert d["process"]["pid"] == 4242
    assert jsonform.from_json(jsonform.to_json(ev)) == ev


def test_dropping_queue_counts_instead_of_blocking() -> None:
    q: DroppingQueue[int] = DroppingQueue(2)
    assert [q.offer(i) for i in range(4)] == [True, True, False, False]
    assert q.dropped == 2
    assert (q.get(0), q.get(0), q.get(0)) == (0, 1, None)


def _tamper_bytes(rec: ct.Structure, op: int, **fields: object) -> bytes:
    _hdr(rec, op)
    for name, value in fields.items():
        setattr(rec, name, value)
    return bytes(rec)


def test_ptrace_header_is_the_tracer_payload_names_the_tracee(tmp_path: Path) -> None:
    _fake_proc(tmp_path, 4300, 1001, b"python")
    target = TargetIdentity(proc_root=str(tmp_path), user_lookup={1001: "alice"}.__getitem__)
    data = _tamper_bytes(PtraceRec(), OP_PTRACE, target_pid=4300, request=0x4206, result=-1)
    rec = decode_ptrace(data, FixedClock(), target)
    assert (rec.type, rec.pid, rec.comm) == ("process.ptrace", 4242, "python3")
    p = rec.payload
    assert isinstance(p, events_pb2.ProcessPtrace)
    assert (p.target_pid, p.request, p.request_name, p.result) == (4300, 0x4206, "PTRACE_SEIZE", -1)
    assert (p.target_user, p.target_comm) == ("alice", "python")


def test_vm_write_splits_bytes_from_errno(tmp_path: Path) -> None:
    target = TargetIdentity(proc_root=str(tmp_path), user_lookup=lambda uid: "never")
    ok = decode_vm_write(_tamper_bytes(VmWriteRec(), OP_VM_WRITE, target_pid=9, result=4096),
                         FixedClock(), target).payload
    refused = decode_vm_write(_tamper_bytes(VmWriteRec(), OP_VM_WRITE, target_pid=9, result=-1),
                              FixedClock(), target).payload
    assert isinstance(ok, events_pb2.ProcessVmWrite)
    assert isinstance(refused, events_pb2.ProcessVmWrite)
    assert (ok.bytes, ok.result, ok.target_user) == (4096, 0, "")  # vanished target kept
    assert (refused.bytes, refused.result) == (0, -1)


def test_module_load_resolves_finit_fd_and_not_init(tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []

    def resolve(pid: int, fd: int) -> str:
        seen.append((pid, fd))
        return "/tmp/x/hide.ko"

    finit = decode_module_load(_tamper_bytes(ModuleRec(), OP_MODULE_LOAD, syscall=1, fd=7,
                                             flags=2, result=-8), FixedClock(), resolve)
    init = decode_module_load(_tamper_bytes(ModuleRec(), OP_MODULE_LOAD, syscall=0, fd=-1,
                                            result=0), FixedClock(), resolve)
    assert isinstance(finit.payload, events_pb2.ModuleLoad)
    assert isinstance(init.payload, events_pb2.ModuleLoad)
    assert (finit.payload.syscall, finit.payload.path, finit.payload.flags,
            finit.payload.result) == ("finit_module", "/tmp/x/hide.ko", 2, -8)
    assert (init.payload.syscall, init.payload.path) == ("init_module", "")
    assert seen == [(4242, 7)]


def test_fd_path_reads_proc_and_gives_empty_when_gone(tmp_path: Path) -> None:
    with open(tmp_path / "m.ko", "wb") as f:
        assert fd_path(os.getpid(), f.fileno()) == str(tmp_path / "m.ko")
    assert fd_path(os.getpid(), 10**6) == ""
    assert fd_path(os.getpid(), -1) == ""


def test_bpf_load_names_the_program_type() -> None:
    data = _tamper_bytes(BpfLoadRec(), OP_BPF_LOAD, prog_type=1, insn_cnt=2, result=5,
                         prog_name=b"gpuaudit_t")
    p = decode_bpf_load(data, FixedClock()).payload
    assert isinstance(p, events_pb2.BpfLoad)
    assert (p.prog_type, p.prog_type_name, p.prog_name, p.insn_cnt, p.result) == (
        1, "socket_filter", "gpuaudit_t", 2, 5)
    assert bpf_prog_type_name(26) == "tracing" and bpf_prog_type_name(999) == ""


def test_tamper_ops_are_registered_once() -> None:
    ops = [op for s in BPF_SENSORS for op in s.decoders]
    assert len(ops) == len(set(ops))
    assert {OP_PTRACE, OP_VM_WRITE, OP_MODULE_LOAD, OP_BPF_LOAD} <= set(ops)
