"""checkpoint.scan sensor: model files opened for reading, scanned once per content.

The kernel side is the open classifier in agent/bpf/gpu_open.c, which emits
``struct model_open_rec`` (agent/bpf/files_events.h) for every successful or
failed read-only open of a file named like a model (``.pt .pth .bin .ckpt
.pkl .pickle .joblib .npy .npz``) by any process. This module keeps the
successful opens of processes that touched a GPU or run Python, reopens the
file at once (the opener's own fd, while it holds it) and hands it to the
scan worker (agent/checkpoint/worker.py), which offers the finished
checkpoint.scan Record to the inbox. A process is reported once per version
(dev, inode, mtime, size) of each file it opens. site-packages/*.pth files
(Python path configuration, read by every interpreter) are not checkpoints.
"""

from __future__ import annotations

import ctypes as ct
import os
import threading
from collections.abc import Callable

from agent.checkpoint import scanner
from agent.checkpoint.opener import is_python, is_site_pth, open_opened, resolve
from agent.checkpoint.worker import Lru, ScanJob, ScanWorker, Version, version
from agent.record import Record
from agent.sensors.base import BootClock, BpfSensor, Decoder, Loop, SensorContext, header_record
from agent.sensors.loader import sensor_status
from agent.sensors.records import C, Hdr
from gpuaudit.v1 import checkpoint_pb2, events_pb2

OP_MODEL_OPEN: int = C["OP_MODEL_OPEN"]
LOSS_QUEUE_FULL = "checkpoint_queue_full"
"""agent.loss reason: opens answered "scan queue full" instead of being scanned."""


class ModelOpenRec(ct.Structure):
    _fields_ = (
        ("h", Hdr),
        ("flags", ct.c_int32),
        ("ret", ct.c_int32),
        ("dirfd", ct.c_int32),
        ("pad", ct.c_uint32),
        ("path", ct.c_char * C["MODEL_PATH_LEN"]),
    )


Maker = Callable[[checkpoint_pb2.CheckpointScan], Record]


class CheckpointRuntime:
    """Decoder (filter, resolve, reopen) in front of one ScanWorker."""

    def __init__(self, ctx: SensorContext, limits: scanner.Limits = scanner.DEFAULT_LIMITS) -> None:
        self.ctx = ctx
        self.worker = ScanWorker(ctx.inbox.offer, int(ctx.cfg.checkpoint_max_bytes), limits)
        self._reported: Lru[tuple[int, Version], bool] = Lru()
        self._self_pid = os.getpid()

    def decoders(self) -> dict[int, Decoder]:
        return {OP_MODEL_OPEN: self.decode}

    def threads(self) -> list[tuple[str, Loop]]:
        return [("checkpoint-scan", self._run)]

    def loss_counters(self) -> dict[str, Callable[[], int]]:
        return {LOSS_QUEUE_FULL: lambda: self.worker.queue_full}

    def status(self) -> events_pb2.SensorStatus | None:
        if scanner.SCANNER_VERSION:
            return None
        return sensor_status("checkpoint", "degraded",
                             "picklescan is not installed: every checkpoint.scan has verdict error")

    def close(self) -> None:
        self.worker.drain()

    def _run(self, stop: threading.Event) -> None:
        try:
            self.worker.run(stop)
        finally:
            self.worker.drain()

    def wanted(self, pid: int) -> bool:
        """GPU processes and Python processes (by exe: the comm can be changed)."""
        return self.ctx.opened_gpu(pid) or is_python(pid, self.ctx.proc_root)

    def decode(self, data: bytes, clock: BootClock) -> Record | None:
        """Reopens the file and queues it; always None (the worker emits the Record)."""
        r = ModelOpenRec.from_buffer_copy(data)
        pid = r.h.pid
        # the agent's own opens are its reopening of files it was told about
        if r.ret < 0 or pid == self._self_pid or not self.wanted(pid):
            return None

        def make(payload: checkpoint_pb2.CheckpointScan) -> Record:
            return header_record("checkpoint.scan", r.h, clock, payload)

        given = os.fsdecode(r.path)
        try:
            path = resolve(pid, given, r.dirfd, self.ctx.proc_root)
            if is_site_pth(path):
                return None
            opened = open_opened(pid, r.ret, path, self.ctx.proc_root)
        except OSError as e:
            self._refuse(make, given, f"cannot open: {e}")
            return None
        key = (pid, version(opened.file))
        if self._reported.get(key):
            opened.file.close()
            return None
        self._reported.put(key, True)
        self.worker.submit(ScanJob(opened.file, _text(path), make))
        return None

    def _refuse(self, make: Maker, path: str, error: str) -> None:
        self.ctx.inbox.offer(make(checkpoint_pb2.CheckpointScan(
            path=_text(path), verdict="error", error=_text(error), scanner=scanner.SCANNER,
            scanner_version=scanner.SCANNER_VERSION)))


def _text(s: str) -> str:
    """A str protobuf accepts: undecodable path bytes become U+FFFD."""
    return s.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


SENSOR = BpfSensor(name="checkpoint", source=None, required_tracepoints=(),
                   mirrors={"model_open_rec": ModelOpenRec}, runtime=CheckpointRuntime)
