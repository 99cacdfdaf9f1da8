"""Attach the NCCL uprobes to every distinct libnccl a process maps.

A uprobe belongs to an inode, not to a process or a path: attached once to a
library file, it fires in every process that maps that file, those already
running included. So the unit here is the file (st_dev, st_ino), reached
through /proc/PID/map_files/START-END (which opens the very file mapped,
even deleted or replaced since) or /proc/PID/root/PATH (the process's view
of its path, inside containers too). The uprobes then hold the inode: the
library may be deleted afterwards and calls still fire.

Work is done on the attacher's own thread: listeners only queue.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from agent.nccl.prologue import Site, read_site, slow_summary
from agent.nccl.types import is_nccl_library
from agent.sensors.base import MappedFile

log = logging.getLogger(__name__)

# (symbol, BPF function in agent/bpf/nccl.c, return probe?). Plain names
# only: pnccl* are aliases at the same addresses (probing both would count
# twice), and ncclBcast calls ncclBroadcast (never probed: the same).
PROBES: tuple[tuple[str, str, bool], ...] = (
    ("ncclCommInitRank", "nccl_up_init_rank", False),
    ("ncclCommInitRankConfig", "nccl_up_init_config", False),
    ("ncclCommInitAll", "nccl_up_init_all", False),
    ("ncclCommInitRankScalable", "nccl_up_init_scalable", False),
    ("ncclCommSplit", "nccl_up_split", False),
    ("ncclCommShrink", "nccl_up_shrink", False),
    ("ncclCommInitRank", "nccl_ret_init", True),
    ("ncclCommInitRankConfig", "nccl_ret_init", True),
    ("ncclCommInitAll", "nccl_ret_init", True),
    ("ncclCommInitRankScalable", "nccl_ret_init", True),
    ("ncclCommSplit", "nccl_ret_init", True),
    ("ncclCommShrink", "nccl_ret_init", True),
    ("ncclCommDestroy", "nccl_up_destroy", False),
    ("ncclCommAbort", "nccl_up_abort", False),
    ("ncclCommDestroy", "nccl_ret_end", True),
    ("ncclCommAbort", "nccl_ret_end", True),
    ("ncclAllReduce", "nccl_up_allreduce", False),
    ("ncclBroadcast", "nccl_up_broadcast", False),
    ("ncclReduce", "nccl_up_reduce", False),
    ("ncclAllGather", "nccl_up_allgather", False),
    ("ncclReduceScatter", "nccl_up_reducescatter", False),
    ("ncclAlltoAll", "nccl_up_alltoall", False),
    ("ncclGather", "nccl_up_gather", False),
    ("ncclScatter", "nccl_up_scatter", False),
    # NCCL 2.32: the same arguments + a trailing const ncclCollConfig_t*;
    # entry points of their own, counted as the plain operation
    ("ncclAllReduceConfig", "nccl_up_allreduce", False),
    ("ncclBroadcastConfig", "nccl_up_broadcast", False),
    ("ncclReduceConfig", "nccl_up_reduce", False),
    ("ncclAllGatherConfig", "nccl_up_allgather", False),
    ("ncclReduceScatterConfig", "nccl_up_reducescatter", False),
    ("ncclAlltoAllConfig", "nccl_up_alltoall", False),
    ("ncclGatherConfig", "nccl_up_gather", False),
    ("ncclScatterConfig", "nccl_up_scatter", False),
    ("ncclPutSignal", "nccl_up_putsignal", False),
    ("ncclSignal", "nccl_up_signal", False),
    ("ncclWaitSignal", "nccl_up_waitsignal", False),
    ("ncclSend", "nccl_up_send", False),
    ("ncclRecv", "nccl_up_recv", False),
    ("ncclGroupStart", "nccl_up_group_start", False),
    ("ncclGroupEnd", "nccl_up_group_end", False),
)
BPF_FUNCTIONS = tuple(sorted({fn for _, fn, _ in PROBES}))

QUEUE_MAX = 4096
HASH_CHUNK = 1 << 20

FileKey = tuple[int, int]
"""(st_dev, st_ino) of a library file."""


@dataclass(frozen=True)
class Library:
    """A libnccl file the uprobes are attached to."""

    path: str  # as the first process that mapped it named it
    dev: int
    inode: int
    sha256: str  # "" when the file could not be read after attaching
    probes: int  # uprobes attached (symbols an older NCCL lacks are skipped)
    sites: tuple[Site, ...] = ()  # where each probed function's entry probe went

    @property
    def slow(self) -> tuple[str, ...]:
        """Probed functions whose entry probe is single-stepped (~5 us a call)."""
        return tuple(s.symbol for s in self.sites if not s.fast)

    @property
    def endbr_skipped(self) -> int:
        """Entry probes placed past an endbr64."""
        return sum(1 for s in self.sites if s.skip)


def sha256_file(path: str) -> str:
    """Hex SHA-256 of a file's content; "" when it cannot be read."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(HASH_CHUNK):
                h.update(chunk)
    except OSError:
        return ""
    return h.hexdigest()


def maps_lines(pid: int, proc_root: str = "/proc") -> list[str]:
    """The lines of /proc/PID/maps, [] when the process is gone."""
    try:
        with open(f"{proc_root}/{pid}/maps") as f:
            return f.readlines()
    except OSError:
        return []


def parse_maps_line(line: str) -> tuple[int, int, str, int, int, str] | None:
    """(start, end, perms, dev, inode, path) of one maps line; None without a path."""
    parts = line.split(maxsplit=5)
    if len(parts) < 6:
        return None
    start, _, end = parts[0].partition("-")
    major, _, minor = parts[3].partition(":")
    try:
        return (int(start, 16), int(end, 16), parts[1], os.makedev(int(major, 16), int(minor, 16)),
                int(parts[4]), parts[5].rstrip("\n"))
    except ValueError:
        return None


def nccl_mappings(pid: int, proc_root: str = "/proc") -> Iterator[MappedFile]:
    """The executable mappings of libnccl files in one process."""
    for line in maps_lines(pid, proc_root):
        m = parse_maps_line(line)
        if m is None or "x" not in m[2] or not is_nccl_library(m[5]):
            continue
        start, end, _, dev, inode, path = m
        yield MappedFile(pid=pid, path=path, dev=dev, inode=inode,
                         map_path=f"{proc_root}/{pid}/map_files/{start:x}-{end:x}")


def mapping_at(pid: int, ip: int, proc_root: str = "/proc") -> tuple[str, int, int] | None:
    """(path, dev, inode) of the file mapped at address ``ip`` in ``pid``."""
    for line in maps_lines(pid, proc_root):
        m = parse_maps_line(line)
        if m is not None and m[0] <= ip < m[1]:
            return m[5], m[3], m[4]
    return None


def scan(proc_root: str = "/proc") -> Iterator[MappedFile]:
    """Every libnccl mapping of every process (at start: mapped before the agent)."""
    try:
        pids = [int(p) for p in os.listdir(proc_root) if p.isdigit()]
    except OSError:
        return
    for pid in pids:
        yield from nccl_mappings(pid, proc_root)


def _file_key(path: str) -> FileKey | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class Attacher:
    """Attaches the uprobes once per library file; thread-safe and idempotent."""

    def __init__(self, bpf: object, on_process: Callable[[int], None],
                 proc_root: str = "/proc") -> None:
        self.bpf = bpf
        self.on_process = on_process  # told every pid seen mapping a libnccl
        self.proc_root = proc_root
        self.libs: dict[FileKey, Library] = {}
        self.failed: dict[FileKey, str] = {}
        self.jobs: queue.Queue[MappedFile | Callable[[], None]] = queue.Queue(QUEUE_MAX)
        self.dropped = 0  # mappings not queued (queue full)
        # pid -> (start, end, file) of its libnccl mappings told to attach():
        # names the library of a call even after the process exited
        self.ranges: dict[int, list[tuple[int, int, FileKey]]] = {}
        self._lock = threading.Lock()

    def offer(self, mapped: MappedFile) -> None:
        """SensorHooks.library_mapped listener: queue a libnccl mapping, at once."""
        if is_nccl_library(mapped.path):
            self.submit(mapped)

    def submit(self, job: MappedFile | Callable[[], None]) -> bool:
        """Queue a mapping to attach, or a callable to run after the ones
        queued; False (and a mapping counted as dropped) when the queue is full."""
        try:
            self.jobs.put_nowait(job)
        except queue.Full:
            if isinstance(job, MappedFile):
                self.dropped += 1
            return False
        return True

    def run(self, stop: threading.Event) -> None:
        """Thread body: attach what is mapped already, then whatever is queued."""
        found = list(scan(self.proc_root))
        for mapped in found:  # every process known before the first probe fires
            self.on_process(mapped.pid)
            self.remember_range(mapped, (mapped.dev, mapped.inode))
        for mapped in found:
            if stop.is_set():
                return
            self.attach(mapped)
        while not stop.is_set():
            try:
                job = self.jobs.get(timeout=0.2)
            except queue.Empty:
                continue
            if isinstance(job, MappedFile):
                self.attach(job)
            else:
                job()

    def library(self, dev: int, inode: int) -> Library | None:
        return self.libs.get((dev, inode))

    def attach(self, mapped: MappedFile) -> Library | None:
        """Attach to ``mapped``'s file unless done already; the Library, or None on failure.

        The file is known by the (dev, inode) its mapping was told with and by
        the stat() of the path that opens it: both name it afterwards, so a
        teller whose device numbers differ from stat's (overlayfs, another
        dev_t encoding) cannot make the same file be probed twice (which
        would count every call twice).
        """
        self.on_process(mapped.pid)
        told = (mapped.dev, mapped.inode)
        self.remember_range(mapped, told)
        with self._lock:
            if told in self.libs:
                return self.libs[told]
            target = self._reachable_path(mapped)
            key = _file_key(target) or told
            if key in self.libs:
                self.libs[told] = self.libs[key]
                return self.libs[key]
            try:
                probes, sites = self._attach_all(target)
            except Exception as err:  # bcc raises plain Exception
                # tried again at the file's next mapping: the process may just
                # have exited (its map_files gone), and that must not leave the
                # library unprobed for good
                if told not in self.failed:
                    log.warning("nccl: cannot attach uprobes to %s: %s", mapped.path, err)
                self.failed[told] = f"{mapped.path}: {err}"
                return None
            lib = Library(mapped.path, key[0], key[1], sha256_file(target), probes, tuple(sites))
            self.libs[key] = self.libs[told] = lib
            self.failed.pop(told, None)
        log.info("nccl: attached %d uprobes to %s (dev %d, inode %d, sha256 %s); "
                 "%d of %d entry probes past an endbr64, %d single-stepped (slow path)",
                 probes, mapped.path, lib.dev, lib.inode, lib.sha256, lib.endbr_skipped,
                 len(sites), len(lib.slow))
        if lib.slow:
            log.warning("nccl: %s: %s", mapped.path, slow_summary(sites))
        return lib

    def slow_probes(self) -> dict[str, str]:
        """Library path -> what is on the slow single-step path, for each
        attached library that has any (the sensor's status detail)."""
        return {lib.path: slow_summary(list(lib.sites)) for lib in set(self.libs.values())
                if lib.slow}

    def remember_range(self, mapped: MappedFile, key: FileKey) -> None:
        """Note where ``mapped`` lies in its process (from its map_files name)."""
        start, _, end = mapped.map_path.rsplit("/", 1)[-1].partition("-")
        try:
            span = (int(start, 16), int(end, 16), key)
        except ValueError:
            return
        spans = self.ranges.setdefault(mapped.pid, [])
        if span not in spans:
            spans.append(span)

    def locate(self, pid: int, ip: int) -> tuple[str, Library | None] | None:
        """The library mapped at ``ip`` in ``pid``: (path, Library or None if
        not attached yet); None when unknown (process gone, mapping not told)."""
        for start, end, key in self.ranges.get(pid, ()):
            if start <= ip < end and key in self.libs:
                return self.libs[key].path, self.libs[key]
        found = mapping_at(pid, ip, self.proc_root)
        if found is None:
            return None
        path, dev, inode = found
        return path, self.libs.get((dev, inode))

    def forget(self, pid: int) -> None:
        """Drop what is kept about an exited process."""
        self.ranges.pop(pid, None)

    def _reachable_path(self, mapped: MappedFile) -> str:
        """A path that opens the mapped file now: map_files (the mapping itself,
        even deleted), else the path inside the process's root; the one whose
        (dev, inode) matches first, else the first that exists."""
        candidates = (mapped.map_path, f"{self.proc_root}/{mapped.pid}/root{mapped.path}")
        existing = []
        for candidate in candidates:
            try:
                st = os.stat(candidate)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) == (mapped.dev, mapped.inode):
                return candidate
            existing.append(candidate)
        return existing[0] if existing else mapped.map_path  # bcc then says why not

    def _attach_all(self, target: str) -> tuple[int, list[Site]]:
        """Attach every probe whose symbol the library has; raise if it has none.
        Returns the uprobes attached and the entry site of each probed function.

        Entry and return probes of a function go to its probe site (past an
        endbr64: prologue.py), so they share one breakpoint. All or nothing
        per file: if the file vanished half-way (its process exited), the
        probes already attached are taken off again, so the next mapping
        attaches afresh without probing any function twice (which would
        count its calls twice).
        """
        bpf = self.bpf
        before = set(bpf.uprobe_fds)  # type: ignore[attr-defined]
        missing: list[str] = []
        sites: dict[str, Site] = {}
        placed: dict[tuple[int, bool], str] = {}  # (file offset, return?) -> symbol
        for sym, fn, ret in PROBES:
            if sym in missing:
                continue
            try:
                site = sites.get(sym) or read_site(target, sym)
                first = placed.setdefault((site.offset, ret), sym)
                if first != sym:
                    # an alias of a function probed already (a build that
                    # folded two entry points): one call must count once
                    log.warning("nccl: %s: %s is at %s's address: counted as %s",
                                target, sym, first, first)
                    continue
                if ret:
                    # bcc's attach_uretprobe has no sym_off: addr= is an ELF
                    # address, which bcc turns into the file offset
                    bpf.attach_uretprobe(name=target.encode(), addr=site.vaddr + site.skip,  # type: ignore[attr-defined]
                                         fn_name=fn.encode())
                else:
                    bpf.attach_uprobe(name=target.encode(), sym=sym.encode(),  # type: ignore[attr-defined]
                                      fn_name=fn.encode(), sym_off=site.skip)
                sites[sym] = site
            except Exception:
                missing.append(sym)
        added = set(bpf.uprobe_fds) - before  # type: ignore[attr-defined]
        if not added or (missing and not os.path.exists(target)):
            for ev_name in added:
                bpf.detach_uprobe_event(ev_name)  # type: ignore[attr-defined]
            raise RuntimeError("none of the NCCL symbols could be probed" if not added
                               else f"{target} vanished while attaching")
        if missing:
            log.warning("nccl: %s lacks %s (older NCCL?)", target, ", ".join(sorted(set(missing))))
        return len(added), list(sites.values())
