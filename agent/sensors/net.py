"""net.* sensor: connections and flows of GPU/NCCL processes (agent/bpf/net.c).

Placeholder registered so the other sensors can be developed against the
registry; the sensor itself is being written (issue #4).
"""

from __future__ import annotations

from agent.sensors.base import BpfSensor

SENSOR = BpfSensor(name="net", source=None, required_tracepoints=())
