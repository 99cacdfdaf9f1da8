"""nccl.* sensor: uprobes on every libnccl a process maps (agent/bpf/nccl.c).

Placeholder registered so the other sensors can be developed against the
registry; the sensor itself is being written (issue #4).
"""

from __future__ import annotations

from agent.sensors.base import BpfSensor

SENSOR = BpfSensor(name="nccl", source=None, required_tracepoints=())
