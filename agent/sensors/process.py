"""process.exec / process.exit / process.signal sensor (agent/bpf/process.c)."""

from __future__ import annotations

import ctypes as ct
import os
import signal as signal_mod
from collections import OrderedDict
from collections.abc import Callable

from agent import procfs
from agent.codeload.fileless import HomeDirs, fileless_kind
from agent.enrich import PwdUserLookup
from agent.record import Record
from agent.sensors.base import BootClock, BpfSensor, header_record
from agent.sensors.records import (
    OP_EXEC,
    OP_EXIT,
    OP_SIGNAL,
    C,
    ExecRec,
    ExitRec,
    Hdr,
    SignalRec,
)
from gpuaudit.v1 import events_pb2

OP_EXEC_ENV: int = C["OP_EXEC_ENV"]

# The variables process.c's env_index() looks for, in its order (bit i of
# exec_env_rec.set is PRELOAD_VARS[i]).
PRELOAD_VARS = (
    "LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "PYTHONPATH", "PYTHONSTARTUP",
    "NCCL_NET_PLUGIN", "NCCL_PROFILER_PLUGIN", "NCCL_TUNER_PLUGIN",
)


class ExecEnvRec(ct.Structure):
    _fields_ = (
        ("h", Hdr),
        ("old_tid", ct.c_uint32),
        ("set", ct.c_uint32),
        ("cut", ct.c_uint32),
        ("partial", ct.c_uint32),
        ("val", (ct.c_char * C["EXEC_ENV_VAL_LEN"]) * C["EXEC_ENV_VARS"]),
    )


def environ_preload(data: bytes) -> dict[str, str]:
    """The preload variables in a /proc/PID/environ image (last one wins, as in ld.so)."""
    found: dict[str, str] = {}
    for entry in data.split(b"\0"):
        name, eq, value = entry.partition(b"=")
        key = name.decode(errors="replace")
        if eq and key in PRELOAD_VARS:
            found[key] = procfs.decode(value)
    return found


class ExecDecoder:
    """process.exec records, with fileless/preload read around them.

    The kernel emits a process's exec_env_rec (when a preload variable was
    set) just before its exec_rec; :meth:`decode_env` keeps it until
    :meth:`decode_exec` takes it. /proc is read at decode time for what the
    kernel cannot say: /proc/PID/exe for ``fileless``, and /proc/PID/environ
    only to complete a value longer than EXEC_ENV_VAL_LEN - 1 bytes or
    variables beyond the first EXEC_ENV_SCAN entries (a process already gone
    keeps what the kernel read).
    """

    PENDING_MAX = 1024

    def __init__(self, proc_root: str = "/proc",
                 homes: Callable[[], tuple[str, ...]] | None = None) -> None:
        self._proc_root = proc_root
        self._homes = homes or HomeDirs()
        self._pending: OrderedDict[int, ExecEnvRec] = OrderedDict()

    def decode_env(self, data: bytes, clock: BootClock) -> Record | None:
        r = ExecEnvRec.from_buffer_copy(data)
        self._pending[r.h.pid] = r
        if len(self._pending) > self.PENDING_MAX:  # only if exec records went undecodable
            self._pending.popitem(last=False)
        return None

    def decode_exec(self, data: bytes, clock: BootClock) -> Record:
        r = ExecRec.from_buffer_copy(data)
        argc = min(r.argc, len(r.argv))
        argv = [r.argv[i].value.decode(errors="replace") for i in range(argc)]
        filename = r.filename.decode(errors="replace")
        env = self._pending.pop(r.h.pid, None)
        if env is not None and env.old_tid != r.old_tid:
            env = None
        exe, cwd = self._links(r.h.pid)
        kind = fileless_kind(exe, filename, cwd, self._homes())
        payload = events_pb2.ProcessExec(
            filename=filename, argv=argv, argv_truncated=bool(r.truncated), source="ebpf",
            fileless=bool(kind), fileless_kind=kind, preload=self._preload(r.h.pid, env),
        )
        rec = header_record("process.exec", r.h, clock, payload)
        rec.exe_hint = filename
        rec.argv_hint = argv
        return rec

    def _links(self, pid: int) -> tuple[str, str]:
        """(exe, cwd) readlinks of ``pid``, "" for what is gone."""
        out = []
        for name in ("exe", "cwd"):
            try:
                out.append(os.readlink(f"{self._proc_root}/{pid}/{name}"))
            except OSError:
                out.append("")
        return out[0], out[1]

    def _preload(self, pid: int, env: ExecEnvRec | None) -> dict[str, str]:
        if env is None:
            return {}
        found = {name: procfs.decode(env.val[i].value)
                 for i, name in enumerate(PRELOAD_VARS) if env.set & (1 << i)}
        if env.cut or env.partial:
            try:
                with open(f"{self._proc_root}/{pid}/environ", "rb") as f:
                    found.update(environ_preload(f.read(procfs.MAX_READ * 4)))
            except OSError:
                pass  # gone: keep what the kernel read
        return found


_EXEC = ExecDecoder()
decode_exec = _EXEC.decode_exec
decode_exec_env = _EXEC.decode_env


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
    reaped). A target already gone is looked up in what the agent remembers of
    it (``remembered``). Never raises: an unknown target gives ("", "").
    """

    def __init__(self, proc_root: str = "/proc",
                 user_lookup: Callable[[int], str] | None = None) -> None:
        self._proc_root = proc_root
        self._user = user_lookup or PwdUserLookup()
        # Who a pid was, from the agent's own earlier events (Enricher.identity_of),
        # for a target already reaped; set by the agent at start.
        self.remembered: Callable[[int], tuple[str, str] | None] = lambda _pid: None

    def __call__(self, pid: int) -> tuple[str, str]:
        try:
            dir_fd = procfs.open_dir(f"{self._proc_root}/{pid}")
        except OSError:
            return self.remembered(pid) or ("", "")
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


TARGETS = TargetIdentity()
"""The one TargetIdentity the decoders of process.signal, ptrace and vm_write share."""
_TARGETS = TARGETS


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
    decoders={OP_EXEC: decode_exec, OP_EXEC_ENV: decode_exec_env, OP_EXIT: decode_exit,
              OP_SIGNAL: decode_signal},
    mirrors={"exec_env_rec": ExecEnvRec},
)
