"""gpu.device: what each physical GPU is (identity, modes, MIG layout).

Read at agent start ("start") and on every poll; an event goes out again only
when the message differs ("changed"), e.g. MIG re-partitioned or persistence
mode switched.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from agent.gpu.nvml import NvmlHandle
from agent.record import Record
from gpuaudit.v1 import events_pb2

# Field names read_device records failures under (see NvmlHandle.call).
DEVICE_FIELDS = frozenset({
    "minor_number", "uuid", "serial", "name", "pci_bus_id", "memory_total", "persistence_mode",
    "compute_mode", "mig_mode", "mig_devices", "mig_handle", "gpu_instance_id",
    "compute_instance_id",
})
_ENABLED = {0: "disabled", 1: "enabled"}
# NVML_COMPUTEMODE_*; EXCLUSIVE_THREAD (1) was removed from drivers long ago.
_COMPUTE_MODES = {0: "default", 2: "prohibited", 3: "exclusive_process"}


def cuda_version(raw: int) -> str:
    """NVML's packed CUDA version (12040) as "12.4"."""
    return f"{raw // 1000}.{(raw % 1000) // 10}"


def scope_of(index: int, mig: int | None = None) -> str:
    """The name of a GPU (or MIG device) in unavailable-field reports."""
    return f"gpu{index}" if mig is None else f"gpu{index}/mig{mig}"


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value or "")


def system_versions(nv: NvmlHandle) -> tuple[str, str]:
    """(driver version, CUDA driver version); "" for what NVML cannot say."""
    n = nv.nvml
    driver = nv.call(n.nvmlSystemGetDriverVersion, field="driver_version", default="")
    cuda = nv.call(n.nvmlSystemGetCudaDriverVersion, field="cuda_driver_version")
    return _text(driver), cuda_version(cuda) if cuda else ""


def mig_enabled(nv: NvmlHandle, handle: Any, scope: str) -> str:
    """"enabled"/"disabled", or "" for a GPU that is not MIG-capable.

    NOT_SUPPORTED here is the normal answer of a GPU without MIG, not a
    degraded field, so it is not recorded.
    """
    modes = nv.call(nv.nvml.nvmlDeviceGetMigMode, handle, field="mig_mode", scope=scope,
                    routine=(nv.nvml.NVML_ERROR_NOT_SUPPORTED,))
    return _ENABLED.get(modes[0], "") if modes else ""


def read_mig_devices(nv: NvmlHandle, handle: Any, index: int) -> list[events_pb2.MigDevice]:
    """The MIG devices that exist on a MIG-enabled GPU (empty slots skipped)."""
    n = nv.nvml
    count = nv.call(n.nvmlDeviceGetMaxMigDeviceCount, handle, field="mig_devices",
                    scope=scope_of(index), default=0)
    out = []
    for i in range(count):
        # NOT_FOUND: no MIG device in this slot, the normal case on a partly
        # partitioned GPU.
        mig = nv.call(n.nvmlDeviceGetMigDeviceHandleByIndex, handle, i, field="mig_handle",
                      scope=scope_of(index, i), routine=(n.NVML_ERROR_NOT_FOUND,))
        if mig is not None:
            out.append(read_mig_device(nv, mig, index, i))
    return out


def read_mig_device(nv: NvmlHandle, mig: Any, index: int, i: int) -> events_pb2.MigDevice:
    """One MIG device's identity and memory."""
    n, scope = nv.nvml, scope_of(index, i)
    mem = nv.call(n.nvmlDeviceGetMemoryInfo, mig, field="memory_total", scope=scope)
    return events_pb2.MigDevice(
        index=i,
        uuid=_text(nv.call(n.nvmlDeviceGetUUID, mig, field="uuid", scope=scope, default="")),
        gpu_instance_id=nv.call(n.nvmlDeviceGetGpuInstanceId, mig, field="gpu_instance_id",
                                scope=scope, default=0),
        compute_instance_id=nv.call(n.nvmlDeviceGetComputeInstanceId, mig,
                                    field="compute_instance_id", scope=scope, default=0),
        memory_total=int(mem.total) if mem is not None else 0,
    )


def read_device(nv: NvmlHandle, index: int, handle: Any,
                versions: tuple[str, str]) -> events_pb2.GpuDevice:
    """One physical GPU as a GpuDevice (``change`` left empty)."""
    n, scope = nv.nvml, scope_of(index)

    def get(fn: Callable[..., Any], name: str, default: Any = None) -> Any:
        return nv.call(fn, handle, field=name, scope=scope, default=default)

    pci = get(n.nvmlDeviceGetPciInfo_v3, "pci_bus_id")
    mem = get(n.nvmlDeviceGetMemoryInfo, "memory_total")
    dev = events_pb2.GpuDevice(
        index=index,
        minor_number=get(n.nvmlDeviceGetMinorNumber, "minor_number", -1),
        uuid=_text(get(n.nvmlDeviceGetUUID, "uuid", "")),
        serial=_text(get(n.nvmlDeviceGetSerial, "serial", "")),
        name=_text(get(n.nvmlDeviceGetName, "name", "")),
        pci_bus_id=_text(pci.busId) if pci is not None else "",
        driver_version=versions[0],
        cuda_driver_version=versions[1],
        memory_total=int(mem.total) if mem is not None else 0,
        persistence_mode=_ENABLED.get(get(n.nvmlDeviceGetPersistenceMode, "persistence_mode"), ""),
        compute_mode=_COMPUTE_MODES.get(get(n.nvmlDeviceGetComputeMode, "compute_mode"), ""),
        mig_mode=mig_enabled(nv, handle, scope),
    )
    if dev.mig_mode == "enabled":
        dev.mig_devices.extend(read_mig_devices(nv, handle, index))
    # Only this message's own fields: a failing process query on the same GPU
    # must not turn into a gpu.device "changed".
    dev.unavailable.extend(u for u in nv.unavailable(scope)
                           if u.split(": ")[0].split(" ")[-1] in DEVICE_FIELDS)
    return dev


def gpu_handles(nv: NvmlHandle) -> list[tuple[int, Any]]:
    """(index, handle) of every GPU NVML can open; one that fails is recorded and skipped."""
    out = []
    for i in range(nv.device_count()):
        h = nv.call(nv.nvml.nvmlDeviceGetHandleByIndex, i, field="handle", scope=scope_of(i))
        if h is not None:
            out.append((i, h))
    return out


class DeviceTracker:
    """Emits gpu.device for each GPU: "start" first, then "changed" on any difference."""

    def __init__(self, nv: NvmlHandle, now_ns: Callable[[], int] = time.time_ns) -> None:
        self.nv = nv
        self.now_ns = now_ns
        self.last: dict[int, events_pb2.GpuDevice] = {}

    def poll(self) -> list[Record]:
        """Read every GPU; return the gpu.device records that are due."""
        versions = system_versions(self.nv)
        out = []
        for index, handle in gpu_handles(self.nv):
            dev = read_device(self.nv, index, handle, versions)
            prev = self.last.get(index)
            if prev is not None and prev == dev:
                continue
            self.last[index] = events_pb2.GpuDevice()
            self.last[index].CopyFrom(dev)
            dev.change = "start" if prev is None else "changed"
            out.append(Record(type="gpu.device", wall_ns=self.now_ns(), payload=dev))
        return out
