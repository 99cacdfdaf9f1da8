"""The list of eBPF sensors. A new sensor is one module plus one line here."""

from __future__ import annotations

from agent.sensors import gpu_open, process
from agent.sensors.base import BpfSensor

BPF_SENSORS: tuple[BpfSensor, ...] = (gpu_open.SENSOR, process.SENSOR)
