"""The open classifier (agent/bpf/gpu_open.c): gpu.open for /dev/nvidia* and
/dev/dri/renderD*, net.rdma_open for /dev/infiniband/*, file.write for
write-opens under protected trees (decoded by agent.files.runtime, this
sensor's runtime), and the model-file opens checkpoint.scan decodes
(agent/sensors/checkpoint.py).
"""

from __future__ import annotations

from agent.files.runtime import FilesRuntime
from agent.record import Record
from agent.sensors.base import BootClock, BpfSensor, header_record
from agent.sensors.records import OP_GPU_OPEN, C, GpuOpenRec
from gpuaudit.v1 import events_pb2, net_pb2

OP_RDMA_OPEN: int = C["OP_RDMA_OPEN"]


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


def decode_rdma_open(data: bytes, clock: BootClock) -> Record:
    """net.rdma_open: the kernel sends it as a gpu_open_rec with op OP_RDMA_OPEN."""
    r = GpuOpenRec.from_buffer_copy(data)
    ok = r.ret >= 0
    payload = net_pb2.RdmaOpen(
        path=r.path.decode(errors="replace"),
        flags=r.flags,
        fd=r.ret if ok else -1,
        errno=0 if ok else -r.ret,
    )
    return header_record("net.rdma_open", r.h, clock, payload)


SENSOR = BpfSensor(
    name="gpu_open",
    source="gpu_open.c",
    required_tracepoints=(
        "syscalls:sys_enter_openat", "syscalls:sys_exit_openat",
        # cwd tracking for relative paths (file.write)
        "syscalls:sys_enter_chdir", "syscalls:sys_exit_chdir",
        "syscalls:sys_enter_fchdir", "syscalls:sys_exit_fchdir",
    ),
    optional_tracepoints=(
        "syscalls:sys_enter_openat2",
        "syscalls:sys_exit_openat2",
        "syscalls:sys_enter_open",
        "syscalls:sys_exit_open",
    ),
    decoders={OP_GPU_OPEN: decode_gpu_open, OP_RDMA_OPEN: decode_rdma_open},
    runtime=FilesRuntime,
)
