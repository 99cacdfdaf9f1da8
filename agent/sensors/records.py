"""ctypes mirrors of the structs in agent/bpf/events.h.

They let records be decoded, and decoding be tested, without root or bcc.
tests/integration/test_alignment.py asserts that bcc's own view of each C
struct has the same size and field offsets, so the two cannot drift apart.
"""

from __future__ import annotations

import ctypes as ct
import re
from pathlib import Path

BPF_DIR = Path(__file__).resolve().parent.parent / "bpf"


def record_headers() -> list[Path]:
    """events.h and the per-sensor record headers it includes (agent/bpf/*_events.h)."""
    return [BPF_DIR / "events.h", *sorted(BPF_DIR.glob("*_events.h"))]


def _header_constants() -> dict[str, int]:
    """The numeric #defines of the record headers: one source of truth for sizes and ops."""
    text = "\n".join(p.read_text() for p in record_headers())
    return {m[1]: int(m[2]) for m in re.finditer(r"^#define (\w+) (\d+)\b", text, re.M)}


C = _header_constants()
OP_GPU_OPEN: int = C["OP_GPU_OPEN"]
OP_EXEC: int = C["OP_EXEC"]
OP_EXIT: int = C["OP_EXIT"]
OP_SIGNAL: int = C["OP_SIGNAL"]
OP_PTRACE: int = C["OP_PTRACE"]
OP_VM_WRITE: int = C["OP_VM_WRITE"]
OP_MODULE_LOAD: int = C["OP_MODULE_LOAD"]
OP_BPF_LOAD: int = C["OP_BPF_LOAD"]


class Hdr(ct.Structure):
    _fields_ = (
        ("op", ct.c_uint8),
        ("pad", ct.c_uint8 * 3),
        ("pid", ct.c_uint32),
        ("tid", ct.c_uint32),
        ("ppid", ct.c_uint32),
        ("uid", ct.c_uint32),
        ("gid", ct.c_uint32),
        ("ktime_ns", ct.c_uint64),
        ("cgroup_id", ct.c_uint64),
        ("comm", ct.c_char * C["COMM_LEN"]),
    )


class GpuOpenRec(ct.Structure):
    _fields_ = (
        ("h", Hdr),
        ("flags", ct.c_int32),
        ("ret", ct.c_int32),
        ("path", ct.c_char * C["OPEN_PATH_LEN"]),
    )


class ExecRec(ct.Structure):
    _fields_ = (
        ("h", Hdr),
        ("old_tid", ct.c_uint32),
        ("argc", ct.c_uint32),
        ("truncated", ct.c_uint32),
        ("pad", ct.c_uint32),
        ("filename", ct.c_char * C["EXEC_FILENAME_LEN"]),
        ("argv", (ct.c_char * C["EXEC_ARG_LEN"]) * C["EXEC_MAX_ARGS"]),
    )


class ExitRec(ct.Structure):
    _fields_ = (
        ("h", Hdr),
        ("exit_code", ct.c_int32),
        ("signal", ct.c_int32),
        ("held_gpu", ct.c_uint32),
        ("pad", ct.c_uint32),
    )


class SignalRec(ct.Structure):
    _fields_ = (
        ("h", Hdr),
        ("target_pid", ct.c_uint32),
        ("signal", ct.c_int32),
        ("result", ct.c_int32),
        ("group", ct.c_int32),
    )


class PtraceRec(ct.Structure):
    _fields_ = (
        ("h", Hdr),
        ("target_pid", ct.c_uint32),
        ("pad", ct.c_uint32),
        ("request", ct.c_int64),
        ("result", ct.c_int64),
    )


class VmWriteRec(ct.Structure):
    _fields_ = (
        ("h", Hdr),
        ("target_pid", ct.c_uint32),
        ("pad", ct.c_uint32),
        ("result", ct.c_int64),
    )


class ModuleRec(ct.Structure):
    _fields_ = (
        ("h", Hdr),
        ("syscall", ct.c_uint32),
        ("fd", ct.c_int32),
        ("flags", ct.c_int32),
        ("pad", ct.c_uint32),
        ("result", ct.c_int64),
    )


class BpfLoadRec(ct.Structure):
    _fields_ = (
        ("h", Hdr),
        ("prog_type", ct.c_uint32),
        ("insn_cnt", ct.c_uint32),
        ("result", ct.c_int64),
        ("prog_name", ct.c_char * C["BPF_PROG_NAME_LEN"]),
    )


# C struct name -> mirror, for the alignment check.
MIRRORS: dict[str, type[ct.Structure]] = {
    "hdr": Hdr,
    "gpu_open_rec": GpuOpenRec,
    "exec_rec": ExecRec,
    "exit_rec": ExitRec,
    "signal_rec": SignalRec,
    "ptrace_rec": PtraceRec,
    "vm_write_rec": VmWriteRec,
    "module_rec": ModuleRec,
    "bpf_load_rec": BpfLoadRec,
}
