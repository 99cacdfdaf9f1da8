"""process.exec / process.exit sensor (agent/bpf/process.c)."""

from __future__ import annotations

from agent.record import Record
from agent.sensors.base import BootClock, BpfSensor, header_record
from agent.sensors.records import OP_EXEC, OP_EXIT, ExecRec, ExitRec
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
    decoders={OP_EXEC: decode_exec, OP_EXIT: decode_exit},
)
