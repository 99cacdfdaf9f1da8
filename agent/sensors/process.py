"""process.exec / process.exit / process.signal sensor (agent/bpf/process.c)."""

from __future__ import annotations

import os
import signal as signal_mod
from collections.abc import Callable

from agent import procfs
from agent.enrich import PwdUserLookup
from agent.record import Record
from agent.sensors.base import BootClock, BpfSensor, header_record
from agent.sensors.records import OP_EXEC, OP_EXIT, OP_SIGNAL, ExecRec, ExitRec, SignalRec
from gpuaudit.v1 import events_pb2


def decode_exec(data: bytes, clock: BootClock) -> Record:
    r = ExecRec.from_buffer_copy(data)
    argc = min(r.argc, len(r.argv))
    argv = [r.argv[i].value.decode(errors="replace") for i in range(argc)]
    filename = r.filename.decode(errors="replace")
    payload = events_pb2.ProcessExec(
        filename=filename, argv=argv, argv_truncated=bool(r.truncated), source="ebpf"
    )
    rec = header_record("process.exec", r.h, clock, payload)
    rec.exe_hint = filename
    rec.argv_hint = argv
    return rec


def decode_exit(data: bytes, clock: BootClock) -> Record:
    r = ExitRec.from_buffer_copy(data)
    payload = events_pb2.ProcessExit(
        exit_code=r.exit_code, signal=r.signal, held_gpu=bool(r.held_gpu), source="ebpf"
    )
    rec = header_record("process.exit", r.h, clock, payload)
    # The exiting task may be a non-leader thread (last one out); the event is
    # about the process.
    rec.tid = rec.pid
    return rec


def signal_name(number: int) -> str:
    """"SIGTERM" for 15, "SIGRTMIN+3" for a real-time signal, "" when unnamed.

    Names follow this host's libc (as ``kill -l`` does): glibc keeps kernel
    signals 32 and 33 for itself, so its SIGRTMIN is 34 and they are unnamed.
    """
    try:
        return signal_mod.Signals(number).name
    except ValueError:
        low, high = int(signal_mod.SIGRTMIN), int(signal_mod.SIGRTMAX)
        return f"SIGRTMIN+{number - low}" if low < number < high else ""


class TargetIdentity:
    """(user, comm) of a signal's target pid, from /proc, "" for what is unknown.

    Read when the record is decoded, right after the kernel emitted it, so the
    target normally still exists (a killed one stays readable as a zombie until
    reaped). Never raises: a vanished or unreadable target gives ("", "").
    """

    def __init__(self, proc_root: str = "/proc",
                 user_lookup: Callable[[int], str] | None = None) -> None:
        self._proc_root = proc_root
        self._user = user_lookup or PwdUserLookup()

    def __call__(self, pid: int) -> tuple[str, str]:
        try:
            dir_fd = procfs.open_dir(f"{self._proc_root}/{pid}")
        except OSError:
            return "", ""
        try:
            return self._user_of(dir_fd), self._comm_of(dir_fd)
        finally:
            os.close(dir_fd)

    def _user_of(self, dir_fd: int) -> str:
        try:
            return self._user(procfs.parse_status(procfs.read_at(dir_fd, "status")).uid)
        except (OSError, ValueError, KeyError, IndexError):
            return ""

    @staticmethod
    def _comm_of(dir_fd: int) -> str:
        try:
            return procfs.decode(procfs.read_at(dir_fd, "comm", 64).removesuffix(b"\n"))
        except OSError:
            return ""


_TARGETS = TargetIdentity()


def decode_signal(data: bytes, clock: BootClock,
                  target: Callable[[int], tuple[str, str]] = _TARGETS) -> Record:
    """A process.signal Record: the header (sender) is the Record's process."""
    r = SignalRec.from_buffer_copy(data)
    user, comm = target(r.target_pid)
    payload = events_pb2.ProcessSignal(
        target_pid=r.target_pid, signal=r.signal, signal_name=signal_name(r.signal),
        result=r.result, group=bool(r.group), target_user=user, target_comm=comm,
    )
    return header_record("process.signal", r.h, clock, payload)


SENSOR = BpfSensor(
    name="process",
    source="process.c",
    required_tracepoints=(
        "sched:sched_process_exec",
        "sched:sched_process_exit",
        "sched:sched_process_fork",
        "syscalls:sys_enter_execve",
        "syscalls:sys_exit_execve",
        "syscalls:sys_enter_execveat",
        "syscalls:sys_exit_execveat",
        "syscalls:sys_enter_exit_group",
        "syscalls:sys_enter_exit",
        "signal:signal_generate",
        "signal:signal_deliver",
    ),
    optional_fields=(("HAVE_EXIT_GROUP_DEAD", "sched:sched_process_exit:group_dead"),),
    decoders={OP_EXEC: decode_exec, OP_EXIT: decode_exit, OP_SIGNAL: decode_signal},
)
