"""nccl.* sensor: uprobes on every libnccl a process maps (agent/bpf/nccl.c).

nccl.comm_init and nccl.comm_end come through the ring buffer; nccl.collective
is read from the kernel's per-(process, communicator, op, datatype) counters
every --nccl-flush seconds. The probes are attached at run time, per library
file (agent/nccl/attach.py); the sensor needs no tracepoint.
"""

from __future__ import annotations

from agent.nccl.records import MIRRORS
from agent.nccl.runtime import NcclRuntime
from agent.sensors.base import BpfSensor

SENSOR = BpfSensor(
    name="nccl",
    source="nccl.c",
    required_tracepoints=(),
    mirrors=MIRRORS,
    runtime=NcclRuntime,
)
