"""file.write sensor: rename, link, symlink, unlink, rmdir and truncate under
protected trees (agent/bpf/files.c).

Write-opens come from the open classifier (agent/bpf/gpu_open.c) in the same
record, struct file_write_rec; both are decoded by agent.files.runtime, the
gpu_open sensor's runtime, which owns the trees and the cwd state they share.
files.c needs gpu_open.c's walk: compiled without it, it is empty, and this
sensor says so in agent.health.
"""

from __future__ import annotations

import ctypes as ct
from typing import Any

from agent.sensors.base import BpfSensor, Decoder, Loop, SensorContext
from agent.sensors.records import C, Hdr
from gpuaudit.v1 import events_pb2

OP_FILE_WRITE: int = C["OP_FILE_WRITE"]
OP_FILES_CWD: int = C["OP_FILES_CWD"]
FW_IN_TREE: int = C["FW_IN_TREE"]
FW_MAYBE: int = C["FW_MAYBE"]
AT_FDCWD = -100

# file_write_rec.fop -> FileWrite.op ("open" is refined by the flags)
FOP_NAMES = {
    C["FW_OPEN"]: "open_write", C["FW_RENAME"]: "rename", C["FW_LINK"]: "link",
    C["FW_SYMLINK"]: "link", C["FW_UNLINK"]: "unlink", C["FW_RMDIR"]: "unlink",
    C["FW_TRUNCATE"]: "truncate",
}
FW_OPEN: int = C["FW_OPEN"]
FW_UNLINK: int = C["FW_UNLINK"]
FW_RMDIR: int = C["FW_RMDIR"]
FW_SYMLINK: int = C["FW_SYMLINK"]
FW_RENAME: int = C["FW_RENAME"]
FW_LINK: int = C["FW_LINK"]


class FileWriteRec(ct.Structure):
    _fields_ = (
        ("h", Hdr),
        ("fop", ct.c_uint32),
        ("flags", ct.c_int32),
        ("dirfd", ct.c_int32),
        ("old_dirfd", ct.c_int32),
        ("result", ct.c_int64),
        ("tree", ct.c_uint64),
        ("base", ct.c_uint64),
        ("old_base", ct.c_uint64),
        ("verdict", ct.c_uint32),
        ("pad", ct.c_uint32),
        ("path", ct.c_char * C["FILE_PATH_LEN"]),
        ("old_path", ct.c_char * C["FILE_PATH_LEN"]),
    )


class FilesCwdRec(ct.Structure):
    _fields_ = (
        ("h", Hdr),
        ("gen", ct.c_uint32),
        ("pad", ct.c_uint32),
    )


class FilesProbeCheck:
    """Reports the sensor off when files.c compiled without gpu_open.c."""

    def __init__(self, ctx: SensorContext) -> None:
        self._off = not _has_table(ctx.bpf, "files_inflight")

    def decoders(self) -> dict[int, Decoder]:
        return {}

    def threads(self) -> list[tuple[str, Loop]]:
        return []

    def loss_counters(self) -> dict[str, Any]:
        return {}

    def status(self) -> events_pb2.SensorStatus | None:
        if not self._off:
            return None
        return events_pb2.SensorStatus(name="file_write", state="off",
                                       detail="needs the gpu_open sensor (its path walk)")

    def close(self) -> None:
        pass


def _has_table(bpf: Any, name: str) -> bool:
    try:
        bpf[name]
    except KeyError:
        return False
    return True


SENSOR = BpfSensor(
    name="file_write",
    source="files.c",
    required_tracepoints=tuple(
        f"syscalls:sys_{side}_{call}" for call in
        ("renameat2", "linkat", "symlinkat", "unlinkat", "truncate")
        for side in ("enter", "exit")),
    optional_tracepoints=tuple(
        f"syscalls:sys_enter_{call}" for call in
        ("renameat", "rename", "link", "symlink", "unlink", "rmdir")),
    mirrors={"file_write_rec": FileWriteRec, "files_cwd_rec": FilesCwdRec},
    runtime=FilesProbeCheck,
)
