"""Which executable mappings code.load reports, and per-process dedup state.

Rule (issue #3): a process that touched a GPU, or mapped libcuda*/libnccl*,
gets every distinct file reported once, including what it had mapped before
(read from /proc/PID/maps at that moment); any other process only gets files
outside the allow-list of system library directories. A memfd, or a file
deleted before it was mapped, is never "allowed": a system directory does not
vouch for content that has no name there any more.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, field

ACCEL_PREFIXES = ("libcuda", "libnccl")  # libcuda.so*, libcudart*, libnccl*.so (plugins too)
MAX_FILES_PER_PROCESS = 65536  # seen/reported sets are cleared beyond this (duplicates, not loss)
MAX_PROCESSES = 32768  # least recently used process state is dropped beyond this
# /proc/PID/maps reads (~100 us each) to find a mapping that is no longer one
# exact vma: a token bucket per process, so a process that maps and unmaps in a
# loop cannot make the agent read its maps for every record. A mapping left
# unresolved for lack of tokens is counted like any other unresolved one.
SCAN_RATE_PER_S = 100.0
SCAN_BURST = 100.0


def is_accel_library(path: str) -> bool:
    """libcuda*/libnccl*: a process mapping one is a GPU/NCCL process."""
    return os.path.basename(path).startswith(ACCEL_PREFIXES)


def under(path: str, dirs: list[str]) -> bool:
    """``path`` is one of ``dirs`` or inside one (on a path-component boundary)."""
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in dirs)


def allowed(path: str, kind: str, allow: list[str]) -> bool:
    """A non-GPU process's mapping that is not reported."""
    return kind == "file" and under(os.path.normpath(path), allow)


@dataclass
class ProcState:
    """What one process (one exec image) mapped, as far as code.load knows."""

    full: bool = False  # report every file: touched a GPU or mapped libcuda/libnccl
    seen: set[tuple[int, int]] = field(default_factory=set)  # (dev, inode) told to listeners
    reported: set[tuple[int, int]] = field(default_factory=set)  # (dev, inode) reported
    scan_tokens: float = SCAN_BURST
    scan_at: float = 0.0

    def may_scan(self, now: float) -> bool:
        """Take a maps-read token (refilled at SCAN_RATE_PER_S) if one is left."""
        refill = (now - self.scan_at) * SCAN_RATE_PER_S
        self.scan_tokens = min(SCAN_BURST, self.scan_tokens + refill)
        self.scan_at = now
        if self.scan_tokens < 1:
            return False
        self.scan_tokens -= 1
        return True

    def bound(self) -> None:
        if len(self.seen) > MAX_FILES_PER_PROCESS:
            self.seen.clear()
        if len(self.reported) > MAX_FILES_PER_PROCESS:
            self.reported.clear()


class ProcTable:
    """ProcState per pid, forgotten at exec and exit, bounded (LRU)."""

    def __init__(self, limit: int = MAX_PROCESSES) -> None:
        self._limit = limit
        self._procs: OrderedDict[int, ProcState] = OrderedDict()

    def get(self, pid: int) -> ProcState:
        state = self._procs.get(pid)
        if state is None:
            state = self._procs[pid] = ProcState()
            if len(self._procs) > self._limit:
                self._procs.popitem(last=False)
        else:
            self._procs.move_to_end(pid)
        return state

    def forget(self, pid: int) -> ProcState | None:
        return self._procs.pop(pid, None)

    def __contains__(self, pid: int) -> bool:
        return pid in self._procs

    def __len__(self) -> int:
        return len(self._procs)
