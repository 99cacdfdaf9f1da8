"""Which file an executable mapping is: /proc/PID/map_files and /proc/PID/maps.

The kernel record names only an address range (the mmap tracepoints carry an
fd, not a path). ``/proc/PID/map_files/START-END`` is a link to the very file
mapped there: stat() through it gives its identity, open() through it gives a
descriptor that keeps the content readable after the process exits or the file
is deleted, and readlink() gives its path ("/memfd:NAME (deleted)" for a memfd).
Its name must be the exact range of one vma; when the kernel merged or split
the mapping (ld.so remaps segments of a library with MAP_FIXED, mprotect splits
a vma), /proc/PID/maps says which vma holds the address.

Reading map_files needs CAP_SYS_ADMIN (the eBPF agent runs as root).
"""

from __future__ import annotations

import os
import stat as stat_mod
from collections.abc import Callable
from dataclasses import dataclass

PAGE = os.sysconf("SC_PAGE_SIZE")
DELETED = " (deleted)"


@dataclass(frozen=True, slots=True)
class Vma:
    """One line of /proc/PID/maps that maps a file executable."""

    start: int
    end: int
    path: str  # as the kernel prints it ("... (deleted)" included)


@dataclass(frozen=True, slots=True)
class Located:
    """A mapping's map_files link and the stat of the file behind it."""

    pid: int
    map_path: str  # /proc/PID/map_files/START-END (lower-case hex, no 0x)
    st: os.stat_result  # of the mapped file itself (stat follows the link)

    @property
    def key(self) -> tuple[int, int]:
        """(dev, inode): one file, whatever name it was mapped under."""
        return self.st.st_dev, self.st.st_ino


@dataclass(frozen=True, slots=True)
class Mapped:
    """The file behind one executable mapping, identified through map_files."""

    pid: int
    map_path: str
    path: str  # readlink of map_path, " (deleted)" removed for kind "deleted"
    kind: str  # "file", "memfd" or "deleted"
    st: os.stat_result

    @property
    def key(self) -> tuple[int, int]:
        return self.st.st_dev, self.st.st_ino


def page_range(addr: int, length: int) -> tuple[int, int]:
    """[start, end) of the pages that ``length`` bytes at ``addr`` cover."""
    start = addr & ~(PAGE - 1)
    end = (addr + max(length, 1) + PAGE - 1) & ~(PAGE - 1)
    return start, end


def classify(link: str, st: os.stat_result) -> tuple[str, str]:
    """(kind, path) of a mapped file from its map_files link and stat.

    The link text alone cannot be trusted (a file may be *named* "x (deleted)"),
    so "deleted" and "memfd" also need the file to have no links left.
    """
    if st.st_nlink == 0 and link.startswith("/memfd:"):
        return "memfd", link
    if st.st_nlink == 0:
        return "deleted", link.removesuffix(DELETED)
    return "file", link


def parse_maps_line(line: str) -> Vma | None:
    """The Vma of an executable file mapping, or None for any other line.

    Format: ``start-end perms offset dev inode   path`` (the path may hold
    spaces, so the line is split at most five times).
    """
    parts = line.rstrip("\n").split(None, 5)
    if len(parts) < 6 or "x" not in parts[1] or parts[4] == "0":
        return None  # not executable, anonymous, or [vdso]/[vsyscall]-like
    lo, _, hi = parts[0].partition("-")
    return Vma(int(lo, 16), int(hi, 16), parts[5])


class Resolver:
    """Resolves (pid, address range) to the mapped file, under ``proc_root``."""

    def __init__(self, proc_root: str = "/proc") -> None:
        self.proc_root = proc_root

    def map_path(self, pid: int, start: int, end: int) -> str:
        return f"{self.proc_root}/{pid}/map_files/{start:x}-{end:x}"

    def locate(self, pid: int, addr: int, length: int,
               scan_maps: Callable[[], bool] = lambda: True) -> Located | None:
        """The file mapped at ``addr`` in ``pid``; None when the range is not a
        file (anonymous memory) or no longer there (unmapped, process gone).

        One stat when the range is still exactly one vma; otherwise (merged
        or split since) a read of /proc/PID/maps, which costs ~100 us for a
        large process and is skipped when ``scan_maps()`` says no.
        """
        start, end = page_range(addr, length)
        found = self.stat_at(pid, start, end)
        if found is not None or not scan_maps():
            return found
        vma = self.vma_containing(pid, addr)
        return None if vma is None else self.stat_at(pid, vma.start, vma.end)

    def stat_at(self, pid: int, start: int, end: int) -> Located | None:
        """The regular file of the vma exactly [start, end), via map_files."""
        path = self.map_path(pid, start, end)
        try:
            st = os.stat(path)
        except OSError:
            return None
        return Located(pid, path, st) if stat_mod.S_ISREG(st.st_mode) else None

    def describe(self, loc: Located) -> Mapped | None:
        """Path and kind of a located mapping (None if unmapped since)."""
        try:
            link = os.readlink(loc.map_path)
        except OSError:
            return None
        kind, shown = classify(link, loc.st)
        return Mapped(pid=loc.pid, map_path=loc.map_path, path=shown, kind=kind, st=loc.st)

    def resolve(self, pid: int, addr: int, length: int) -> Mapped | None:
        """:meth:`locate` and :meth:`describe` in one."""
        loc = self.locate(pid, addr, length)
        return None if loc is None else self.describe(loc)

    def at(self, pid: int, start: int, end: int) -> Mapped | None:
        loc = self.stat_at(pid, start, end)
        return None if loc is None else self.describe(loc)

    def vmas(self, pid: int) -> list[Vma]:
        """Executable file mappings of ``pid`` ([] when it is gone)."""
        try:
            with open(f"{self.proc_root}/{pid}/maps", encoding="utf-8",
                      errors="replace") as f:
                return [v for v in map(parse_maps_line, f) if v is not None]
        except OSError:
            return []

    def vma_containing(self, pid: int, addr: int) -> Vma | None:
        return next((v for v in self.vmas(pid) if v.start <= addr < v.end), None)

    def snapshot(self, pid: int) -> list[Mapped]:
        """Every file ``pid`` has mapped executable now, one entry per vma."""
        found = (self.at(pid, v.start, v.end) for v in self.vmas(pid))
        return [m for m in found if m is not None]
