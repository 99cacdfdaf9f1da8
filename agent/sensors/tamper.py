"""Tampering sensors: process.ptrace, process.vm_write, code.bpf_load
(agent/bpf/tamper.c) and code.module_load (agent/bpf/module.c).

Module loading is a sensor of its own: kernels built without module support
lack its tracepoints, and that must not switch off the other three.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from agent.record import Record
from agent.sensors.base import BootClock, BpfSensor, header_record
from agent.sensors.process import TARGETS
from agent.sensors.records import (
    OP_BPF_LOAD,
    OP_MODULE_LOAD,
    OP_PTRACE,
    OP_VM_WRITE,
    BpfLoadRec,
    ModuleRec,
    PtraceRec,
    VmWriteRec,
)
from gpuaudit.v1 import events_pb2

PTRACE_REQUESTS = {
    4: "PTRACE_POKETEXT",
    5: "PTRACE_POKEDATA",
    6: "PTRACE_POKEUSER",
    13: "PTRACE_SETREGS",
    15: "PTRACE_SETFPREGS",
    16: "PTRACE_ATTACH",
    0x4205: "PTRACE_SETREGSET",
    0x4206: "PTRACE_SEIZE",
}
"""The requests tamper.c reports (its ptrace_reported() filter), by number."""

# enum bpf_prog_type (uapi/linux/bpf.h); append-only in the kernel.
BPF_PROG_TYPES = (
    "unspec", "socket_filter", "kprobe", "sched_cls", "sched_act", "tracepoint", "xdp",
    "perf_event", "cgroup_skb", "cgroup_sock", "lwt_in", "lwt_out", "lwt_xmit", "sock_ops",
    "sk_skb", "cgroup_device", "sk_msg", "raw_tracepoint", "cgroup_sock_addr", "lwt_seg6local",
    "lirc_mode2", "sk_reuseport", "flow_dissector", "cgroup_sysctl", "raw_tracepoint_writable",
    "cgroup_sockopt", "tracing", "struct_ops", "ext", "lsm", "sk_lookup", "syscall", "netfilter",
)

MODULE_SYSCALLS = ("init_module", "finit_module")

Target = Callable[[int], tuple[str, str]]
_TARGETS = TARGETS  # shared: the agent tells it what it remembers


def decode_ptrace(data: bytes, clock: BootClock, target: Target = _TARGETS) -> Record:
    """A process.ptrace Record: the header (tracer) is the Record's process."""
    r = PtraceRec.from_buffer_copy(data)
    user, comm = target(r.target_pid)
    payload = events_pb2.ProcessPtrace(
        target_pid=r.target_pid, request=r.request,
        request_name=PTRACE_REQUESTS.get(r.request, ""), result=r.result,
        target_user=user, target_comm=comm,
    )
    return header_record("process.ptrace", r.h, clock, payload)


def decode_vm_write(data: bytes, clock: BootClock, target: Target = _TARGETS) -> Record:
    """A process.vm_write Record: the header (writer) is the Record's process."""
    r = VmWriteRec.from_buffer_copy(data)
    user, comm = target(r.target_pid)
    ok = r.result >= 0
    payload = events_pb2.ProcessVmWrite(
        target_pid=r.target_pid, bytes=r.result if ok else 0, result=0 if ok else r.result,
        target_user=user, target_comm=comm,
    )
    return header_record("process.vm_write", r.h, clock, payload)


def fd_path(pid: int, fd: int, proc_root: str = "/proc") -> str:
    """What fd `fd` of process `pid` names, "" when it is closed or unreadable.

    Read at decode time, just after the syscall returned: a loader normally
    still holds the module file open then; a vanished one gives "".
    """
    if fd < 0:
        return ""
    try:
        return os.readlink(f"{proc_root}/{pid}/fd/{fd}")
    except OSError:
        return ""


def decode_module_load(data: bytes, clock: BootClock,
                       resolve: Callable[[int, int], str] = fd_path) -> Record:
    """A code.module_load Record; finit_module's fd resolved to its file."""
    r = ModuleRec.from_buffer_copy(data)
    finit = r.syscall == 1
    payload = events_pb2.ModuleLoad(
        syscall=MODULE_SYSCALLS[1 if finit else 0],
        path=resolve(r.h.pid, r.fd) if finit else "",
        flags=r.flags, result=r.result,
    )
    return header_record("code.module_load", r.h, clock, payload)


def bpf_prog_type_name(prog_type: int) -> str:
    """"socket_filter" for 1, ... ; "" for a type newer than this table."""
    return BPF_PROG_TYPES[prog_type] if 0 <= prog_type < len(BPF_PROG_TYPES) else ""


def decode_bpf_load(data: bytes, clock: BootClock) -> Record:
    """A code.bpf_load Record: the loader is the Record's process."""
    r = BpfLoadRec.from_buffer_copy(data)
    payload = events_pb2.BpfLoad(
        prog_type=r.prog_type, prog_type_name=bpf_prog_type_name(r.prog_type),
        prog_name=r.prog_name.decode(errors="replace"), insn_cnt=r.insn_cnt,
        result=r.result,
    )
    return header_record("code.bpf_load", r.h, clock, payload)


SENSOR = BpfSensor(
    name="tamper",
    source="tamper.c",
    required_tracepoints=(
        "syscalls:sys_enter_ptrace",
        "syscalls:sys_exit_ptrace",
        "syscalls:sys_enter_process_vm_writev",
        "syscalls:sys_exit_process_vm_writev",
        "syscalls:sys_enter_bpf",
        "syscalls:sys_exit_bpf",
    ),
    decoders={OP_PTRACE: decode_ptrace, OP_VM_WRITE: decode_vm_write,
              OP_BPF_LOAD: decode_bpf_load},
)

MODULE_SENSOR = BpfSensor(
    name="module_load",
    source="module.c",
    required_tracepoints=(
        "syscalls:sys_enter_init_module",
        "syscalls:sys_exit_init_module",
        "syscalls:sys_enter_finit_module",
        "syscalls:sys_exit_finit_module",
    ),
    decoders={OP_MODULE_LOAD: decode_module_load},
)
