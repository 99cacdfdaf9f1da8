"""code.load sensor: executable mappings of files (agent/bpf/codeload.c).

Placeholder registered so the other sensors can be developed against the
registry; the sensor itself is being written (issue #3).
"""

from __future__ import annotations

from agent.sensors.base import BpfSensor

SENSOR = BpfSensor(name="code_load", source=None, required_tracepoints=())
