"""gpu.open sensor: opens of /dev/nvidia* and /dev/dri/renderD* (agent/bpf/gpu_open.c)."""

from __future__ import annotations

from agent.record import Record
from agent.sensors.base import BootClock, BpfSensor, header_record
from agent.sensors.records import OP_GPU_OPEN, GpuOpenRec
from gpuaudit.v1 import events_pb2


def decode_gpu_open(data: bytes, clock: BootClock) -> Record:
    r = GpuOpenRec.from_buffer_copy(data)
    ok = r.ret >= 0
    payload = events_pb2.GpuOpen(
        path=r.path.decode(errors="replace"),
        flags=r.flags,
        fd=r.ret if ok else -1,
        errno=0 if ok else -r.ret,
        source="ebpf",
    )
    return header_record("gpu.open", r.h, clock, payload)


SENSOR = BpfSensor(
    name="gpu_open",
    source="gpu_open.c",
    required_tracepoints=("syscalls:sys_enter_openat", "syscalls:sys_exit_openat"),
    optional_tracepoints=(
        "syscalls:sys_enter_openat2",
        "syscalls:sys_exit_openat2",
        "syscalls:sys_enter_open",
        "syscalls:sys_exit_open",
    ),
    decoders={OP_GPU_OPEN: decode_gpu_open},
)
