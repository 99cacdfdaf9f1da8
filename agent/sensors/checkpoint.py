"""checkpoint.scan sensor: model files opened for reading, scanned once per content.

The kernel side is the open classifier in agent/bpf/gpu_open.c, which emits
``struct model_open_rec`` (agent/bpf/files_events.h); this module decodes it.
Being written (issue #3).
"""

from __future__ import annotations

import ctypes as ct

from agent.sensors.base import BpfSensor
from agent.sensors.records import C, Hdr

OP_MODEL_OPEN: int = C["OP_MODEL_OPEN"]


class ModelOpenRec(ct.Structure):
    _fields_ = (
        ("h", Hdr),
        ("flags", ct.c_int32),
        ("ret", ct.c_int32),
        ("dirfd", ct.c_int32),
        ("pad", ct.c_uint32),
        ("path", ct.c_char * C["MODEL_PATH_LEN"]),
    )


SENSOR = BpfSensor(name="checkpoint", source=None, required_tracepoints=(),
                   mirrors={"model_open_rec": ModelOpenRec})
