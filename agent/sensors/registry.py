"""The list of eBPF sensors. A new sensor is one module plus one line here."""

from __future__ import annotations

from agent.sensors import (
    checkpoint,
    codeload,
    compat,
    files,
    gpu_open,
    iouring,
    nccl,
    net,
    process,
    tamper,
)
from agent.sensors.base import BpfSensor

# tamper first: bcc attaches probes in program-text order, so its bpf() probe
# is live while the other sensors' programs load -- the agent's own-load
# exclusion (AGENT_TGID) is exercised from the very first load.
BPF_SENSORS: tuple[BpfSensor, ...] = (
    tamper.SENSOR, tamper.MODULE_SENSOR, gpu_open.SENSOR, process.SENSOR,
    codeload.SENSOR, files.SENSOR, checkpoint.SENSOR, nccl.SENSOR, net.SENSOR, compat.SENSOR,
    iouring.SENSOR,
)
