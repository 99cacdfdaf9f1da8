"""file.write sensor: changes under protected trees (agent/bpf/files.c).

Placeholder registered so the other sensors can be developed against the
registry; the sensor itself is being written (issue #3).
"""

from __future__ import annotations

from agent.sensors.base import BpfSensor

SENSOR = BpfSensor(name="file_write", source=None, required_tracepoints=())
