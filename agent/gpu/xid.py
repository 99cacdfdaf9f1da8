"""gpu.xid: Xid errors and other critical events the GPU reports itself.

One thread blocks in nvmlEventSetWait with a short timeout (so it sees the
stop event) after registering each GPU for the critical event types it
supports. Xid events carry no pid (NVML docs, group__nvmlEventType), so the
records are node-level.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pynvml

from agent.gpu.inventory import gpu_handles, scope_of
from agent.gpu.nvml import NvmlHandle, error_name
from agent.record import Record
from gpuaudit.v1 import events_pb2

log = logging.getLogger("gpuaudit.agent.xid")

# NVML event type bit -> GpuXid.event (nvmlEventType* in pynvml / nvml.h).
EVENT_NAMES = {
    0x0001: "ecc_single_bit",
    0x0002: "ecc_double_bit",
    0x0008: "xid",
    0x0400: "retired_page_pending",
    0x0800: "retired_page_failure",
    0x4000: "gpu_unavailable",
    0x8000: "recovery_action",
}
WANTED_MASK = sum(EVENT_NAMES)
_NOT_APPLICABLE = 0xFFFFFFFF  # gpuInstanceId/computeInstanceId outside MIG


def _address(handle: Any) -> int:
    return ctypes.cast(handle, ctypes.c_void_p).value or 0


def _instance_id(value: int) -> int:
    return -1 if value == _NOT_APPLICABLE else int(value)


class XidWatcher:
    """Registers for critical events and turns each into a gpu.xid Record."""

    def __init__(self, nv: NvmlHandle, emit: Callable[[Record], object],
                 timeout_ms: int = 500, now_ns: Callable[[], int] = time.time_ns) -> None:
        self.nv = nv
        self.emit = emit
        self.timeout_ms = timeout_ms
        self.now_ns = now_ns
        self.event_set: Any = None
        self.gpus: dict[int, tuple[int, str]] = {}  # handle address -> (index, uuid)
        self.registered = 0  # GPUs registered for at least one event type
        self.errors = 0  # waits that failed other than by timeout

    def register(self) -> bool:
        """Create the event set and register every GPU; False when events are unavailable."""
        n = self.nv.nvml
        self.event_set = self.nv.call(n.nvmlEventSetCreate, field="events")
        if self.event_set is None:
            return False
        for index, handle in gpu_handles(self.nv):
            self._register_gpu(index, handle)
        return self.registered > 0

    def _register_gpu(self, index: int, handle: Any) -> None:
        n, scope = self.nv.nvml, scope_of(index)
        uuid = self.nv.call(n.nvmlDeviceGetUUID, handle, field="uuid", scope=scope, default="")
        self.gpus[_address(handle)] = (index, uuid.decode() if isinstance(uuid, bytes) else uuid)
        supported = self.nv.call(n.nvmlDeviceGetSupportedEventTypes, handle, field="events",
                                 scope=scope, default=0)
        mask = supported & WANTED_MASK
        if not mask:
            if supported:
                self.nv.mark_unavailable(scope, "events", "NONE_OF_THE_CRITICAL_TYPES")
            return
        done = self.nv.call(n.nvmlDeviceRegisterEvents, handle, mask, self.event_set,
                            field="events", scope=scope, default=False)
        if done is None:  # pynvml returns None on success
            self.registered += 1

    def run(self, stop: threading.Event) -> None:
        """Wait for events until ``stop`` is set; then free the event set."""
        try:
            while not stop.is_set():
                self.wait_once()
        finally:
            self.close()

    def wait_once(self) -> Record | None:
        """One nvmlEventSetWait; emits and returns the record, or None on timeout."""
        n = self.nv.nvml
        try:
            data = n.nvmlEventSetWait(self.event_set, self.timeout_ms)
        except pynvml.NVMLError_Timeout:
            return None
        except pynvml.NVMLError as err:
            # Not fatal (e.g. GPU_IS_LOST on one GPU); counted, and the loop
            # backs off so a persistent failure does not spin.
            self.errors += 1
            log.debug("nvmlEventSetWait: %s", error_name(err))
            time.sleep(self.timeout_ms / 1000)
            return None
        rec = self.record(data)
        self.emit(rec)
        return rec

    def record(self, data: Any) -> Record:
        """A gpu.xid Record for one nvmlEventData_t."""
        index, uuid = self._gpu_of(data.device)
        etype = int(data.eventType)
        msg = events_pb2.GpuXid(
            gpu_index=index, gpu_uuid=uuid,
            event=EVENT_NAMES.get(etype, f"event_0x{etype:x}"),
            xid=int(data.eventData),
            gpu_instance_id=_instance_id(data.gpuInstanceId),
            compute_instance_id=_instance_id(data.computeInstanceId),
        )
        return Record(type="gpu.xid", wall_ns=self.now_ns(), payload=msg)

    def _gpu_of(self, device: Any) -> tuple[int, str]:
        """(index, uuid) of the event's GPU: by handle, else by asking its UUID."""
        known = self.gpus.get(_address(device))
        if known is not None:
            return known
        uuid = self.nv.call(self.nv.nvml.nvmlDeviceGetUUID, device, field="event_uuid",
                            default="")
        uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
        for index, u in self.gpus.values():
            if u and u == uuid:
                return index, u
        return 0, uuid

    def close(self) -> None:
        """Free the event set (idempotent)."""
        if self.event_set is not None:
            self.nv.call(self.nv.nvml.nvmlEventSetFree, self.event_set, field="events")
            self.event_set = None
