"""Tampering events end to end: real processes make real ptrace,
process_vm_writev, finit_module and bpf syscalls; a real eBPF agent reports
them over real gRPC into the collector's SQLite."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest

from agent.sensors.loader import find_tracefs
from tests.integration.harness import BPF_LOAD, SYS_BPF, Agent, Collector, settle, wait_for

pytestmark = [pytest.mark.bpf, pytest.mark.integration]

NODE = "it-node"

# Shared by the child programs: libc, and a buffer allocated before fork so it
# sits at the same address in the child.
PRELUDE = """
import ctypes as ct, os, signal, sys, time
libc = ct.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ct.c_long, ct.c_long, ct.c_void_p, ct.c_void_p]
libc.ptrace.restype = ct.c_long
buf = ct.create_string_buffer(b"gpuaudit" * 8)
child = os.fork()
if child == 0:
    time.sleep(60)
    os._exit(0)
"""

ATTACH_AND_POKE = PRELUDE + """
assert libc.ptrace(16, child, None, None) == 0, ct.get_errno()   # PTRACE_ATTACH
os.waitpid(child, 0)                                             # stopped
assert libc.ptrace(5, child, ct.addressof(buf), 0x4141) == 0, ct.get_errno()  # POKEDATA
assert libc.ptrace(2, child, ct.addressof(buf), None) == 0x4141  # PEEKDATA: a read, not reported
libc.ptrace(17, child, None, None)                               # PTRACE_DETACH
print(child, flush=True)
sys.stdin.read()  # the target lives until the test has checked its identity
os.kill(child, signal.SIGKILL)
os.waitpid(child, 0)
"""

VM_WRITE = PRELUDE + """
class Iov(ct.Structure):
    _fields_ = [("base", ct.c_void_p), ("len", ct.c_size_t)]
src = ct.create_string_buffer(b"X" * 64)
local, remote = Iov(ct.addressof(src), 64), Iov(ct.addressof(buf), 64)
libc.process_vm_writev.restype = ct.c_ssize_t
n = libc.process_vm_writev(child, ct.byref(local), 1, ct.byref(remote), 1, 0)
assert n == 64, ct.get_errno()
# into itself: not tampering with anyone, not reported
assert libc.process_vm_writev(os.getpid(), ct.byref(local), 1, ct.byref(local), 1, 0) == 64
print(child, flush=True)
sys.stdin.read()  # the target lives until the test has checked its identity
os.kill(child, signal.SIGKILL)
os.waitpid(child, 0)
"""


FINIT_BOGUS = """
import ctypes as ct, os, sys
libc = ct.CDLL(None, use_errno=True)
fd = os.open(sys.argv[1], os.O_RDONLY)
rc = libc.syscall(int(sys.argv[2]), fd, b"", 0)
assert rc == -1, rc
sys.stdin.read()  # keep the fd open until the test has seen the event
"""
SYS_FINIT_MODULE = {"x86_64": 313, "aarch64": 273}


def _run(program: str, *args: str) -> tuple[int, str]:
    proc = subprocess.run([sys.executable, "-c", program, *args], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.returncode, proc.stdout.strip()


def _start_tracer(program: str) -> tuple[subprocess.Popen[str], int]:
    """Run ``program``; it prints its target's pid and keeps the target alive until stdin closes."""
    proc = subprocess.Popen([sys.executable, "-c", program], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip().isdigit(), f"tracer failed (rc={proc.poll()})"
    return proc, int(line)


def _finish(proc: subprocess.Popen[str]) -> None:
    proc.communicate(timeout=60)
    assert proc.returncode == 0


def _syscall_nr(table: dict[str, int]) -> str:
    machine = platform.machine()
    if machine not in table:
        pytest.skip(f"no syscall number for {machine}")
    return str(table[machine])


def test_ptrace_attach_and_poke_name_tracer_and_tracee(collector: Collector,
                                                       bpf_agent: Agent) -> None:
    proc, child = _start_tracer(ATTACH_AND_POKE)
    settle(collector, NODE)
    events = collector.query(types=["process.ptrace"], pid=proc.pid)
    assert [(e.process_ptrace.request_name, e.process_ptrace.result) for e in events] == [
        ("PTRACE_ATTACH", 0), ("PTRACE_POKEDATA", 0)]
    for ev in events:
        assert (ev.process.pid, ev.process.exe) == (proc.pid, events[0].process.exe)
        assert ev.process.exe.endswith(Path(sys.executable).resolve().name)
        p = ev.process_ptrace
        assert p.target_pid == child
        # the forked child is a python too; read while it lived (root's)
        assert (p.target_user, p.target_comm) == ("root", ev.process.comm)
    assert [e.process_ptrace.request for e in events] == [16, 5]
    _finish(proc)


def test_process_vm_writev_into_child_reports_bytes(collector: Collector,
                                                    bpf_agent: Agent) -> None:
    proc, child = _start_tracer(VM_WRITE)
    settle(collector, NODE)
    (ev,) = collector.query(types=["process.vm_write"], pid=proc.pid)
    w = ev.process_vm_write
    assert (w.target_pid, w.bytes, w.result) == (child, 64, 0)
    assert (w.target_user, w.target_comm) == ("root", ev.process.comm)
    _finish(proc)


def test_bpf_prog_load_by_another_process_is_reported(collector: Collector,
                                                      bpf_agent: Agent) -> None:
    proc = subprocess.Popen([sys.executable, "-c", BPF_LOAD, _syscall_nr(SYS_BPF), "gpuaudit_t"],
                            stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    settle(collector, NODE)
    (ev,) = collector.query(types=["code.bpf_load"], pid=proc.pid)
    b = ev.code_bpf_load
    assert (b.prog_type, b.prog_type_name, b.prog_name, b.insn_cnt, b.result) == (
        1, "socket_filter", "gpuaudit_t", 2, int(out))


def test_agent_own_bpf_loads_are_not_reported(collector: Collector, bpf_agent: Agent) -> None:
    # the tamper sensor is attached first, so the agent's later program loads
    # pass its probe: only the AGENT_TGID filter keeps them out
    settle(collector, NODE)
    assert collector.query(types=["code.bpf_load"], pid=bpf_agent.proc.pid) == []
    health = collector.query(types=["agent.health"], nodes=[NODE], limit=1, newest=True)
    states = {s.name: s.state for s in health[-1].agent_health.sensors}
    assert states["tamper"] == "ok"


def _module_tracepoints() -> bool:
    tracefs = find_tracefs()
    return tracefs is not None and (
        tracefs / "events" / "syscalls" / "sys_enter_finit_module").is_dir()


def test_finit_module_attempt_is_reported_with_its_file(collector: Collector, bpf_agent: Agent,
                                                        tmp_path: Path) -> None:
    if not _module_tracepoints():
        # a kernel without module support: the sensor is off and says so
        settle(collector, NODE)
        health = collector.query(types=["agent.health"], nodes=[NODE], limit=1, newest=True)
        (status,) = [s for s in health[-1].agent_health.sensors if s.name == "module_load"]
        assert status.state == "off" and "sys_enter_finit_module" in status.detail
        pytest.skip("kernel has no module tracepoints (built without module support)")
    bogus = tmp_path / "bogus.ko"
    bogus.write_bytes(b"not an ELF module")  # never loadable: the attempt is the event
    proc = subprocess.Popen([sys.executable, "-c", FINIT_BOGUS, str(bogus),
                             _syscall_nr(SYS_FINIT_MODULE)], stdin=subprocess.PIPE)
    try:
        wait_for(lambda: collector.query(types=["code.module_load"], pid=proc.pid), timeout=30)
    finally:
        proc.communicate(b"", timeout=30)
    assert proc.returncode == 0
    (ev,) = collector.query(types=["code.module_load"], pid=proc.pid)
    m = ev.code_module_load
    assert (m.syscall, m.path, m.flags) == ("finit_module", str(bogus), 0)
    assert m.result < 0
