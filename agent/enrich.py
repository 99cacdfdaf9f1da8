"""Process identity for events: user, exe, cmdline, cgroup, container, pod, Slurm job.

The kernel side knows ids only (pid/tid/ppid/uid/gid/comm/cgroup_id); the
:class:`Enricher` adds the rest from /proc and cgroupfs, per event, on the
pipeline thread. It must be cheap, so everything read from /proc is cached per
pid and re-read only when the pid execs (a process.exec record) -- and it must
cope with processes that are already gone, so exec records carry the exe and
argv as hints, and an exit is enriched from the cache before :meth:`forget`.

A known limit: a pid reused by a fork without exec, after a missed exit,
inherits the cached identity of its predecessor until its next exec.
"""

from __future__ import annotations

import os
import pwd
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from agent import procfs
from agent.cgroups import CgroupIdentity, CgroupIdMap, identity_from_path, parse_proc_cgroup
from agent.record import Record
from gpuaudit.v1 import events_pb2

EXEC_TYPE = "process.exec"


class PwdUserLookup:
    """uid -> user name through NSS, cached (misses too: LDAP/SSSD lookups are slow)."""

    def __init__(self, max_entries: int = 4096) -> None:
        self._names: dict[int, str] = {}
        self._max = max_entries

    def __call__(self, uid: int) -> str:
        """The user name, or "" when the node does not know ``uid``."""
        name = self._names.get(uid)
        if name is None:
            try:
                name = pwd.getpwuid(uid).pw_name
            except (KeyError, OverflowError):
                name = ""
            if len(self._names) >= self._max:
                self._names.clear()
            self._names[uid] = name
        return name


@dataclass(slots=True)
class _PidInfo:
    """What /proc (and exec hints) said about one pid since its last exec."""

    exe: str = ""
    exe_deleted: bool = False
    cmdline: list[str] = field(default_factory=list)
    cgroup: str = ""  # v2 path from /proc/<pid>/cgroup
    cgroup_v1: tuple[str, ...] = ()  # non-root v1 paths (hybrid hosts)
    ppid: int = 0
    uid: int | None = None
    gid: int | None = None
    comm: str = ""
    # Process blocks already built for this image, by the record fields that
    # vary: a busy GPU process emits thousands of events with the same block.
    built: dict[tuple[object, ...], events_pb2.Process] = field(default_factory=dict)


BUILT_PER_PID = 256  # threads x uid changes; beyond that, build every time


class Enricher:
    """Turns a sensor :class:`Record` into the ``Process`` block of an event."""

    def __init__(
        self,
        proc_root: str = "/proc",
        cgroup_root: str = "/sys/fs/cgroup",
        user_lookup: Callable[[int], str] | None = None,
        *,
        max_pids: int = 65536,
        cgroup_map: CgroupIdMap | None = None,
    ) -> None:
        self._proc_root = proc_root
        self._user = user_lookup or PwdUserLookup()
        self._max_pids = max_pids
        self._cgroups = cgroup_map or CgroupIdMap(cgroup_root)
        # LRU: a pid that keeps producing events stays; churn evicts the idle ones
        self._cache: OrderedDict[int, _PidInfo] = OrderedDict()
        # keys: vanished, denied, errors (failed /proc reads), evicted,
        # user_lookup_errors, internal_errors
        self.stats: Counter[str] = Counter()

    def __len__(self) -> int:
        """Number of pids in the cache."""
        return len(self._cache)

    def process_for(self, rec: Record) -> events_pb2.Process:
        """The Process block for ``rec``. Never raises; failures are counted in stats."""
        try:
            info = self._info_for(rec)
            key = (rec.tid, rec.ppid, rec.uid, rec.gid, rec.comm, rec.cgroup_id)
            process = info.built.get(key)
            if process is None:
                process = self._build(rec, info)
                if len(info.built) < BUILT_PER_PID:
                    info.built[key] = process
            return process
        except Exception:  # last line of defence: per-event errors must not stop the loop
            self.stats["internal_errors"] += 1
            return events_pb2.Process(pid=rec.pid, tid=rec.tid, ppid=rec.ppid,
                                      uid=rec.uid or 0, gid=rec.gid or 0, comm=rec.comm)

    def forget(self, pid: int) -> None:
        """Drop the cache for ``pid``; call after its process.exit was enriched."""
        self._cache.pop(pid, None)

    def identity_of(self, pid: int) -> tuple[str, str] | None:
        """(user, comm) of ``pid`` as last seen in its events, None when never seen.

        For a process that is gone by the time an event about it is decoded (a
        signal's target killed and reaped at once): the agent saw its earlier
        events (a GPU holder opened a GPU), so it still knows who it was.
        """
        info = self._cache.get(pid)
        if info is None:
            return None
        # the kernel's uid and comm of its latest event (in the blocks built for
        # it) win over what /proc said, as they do in the events themselves
        for block in reversed(info.built.values()):
            return block.user, block.comm
        return self._user_name(info.uid), info.comm

    def exe_deleted(self, pid: int) -> bool:
        """Whether the cached executable of ``pid`` had been unlinked ("(deleted)")."""
        info = self._cache.get(pid)
        return info is not None and info.exe_deleted

    # -- cache ---------------------------------------------------------------

    def _info_for(self, rec: Record) -> _PidInfo:
        pid = rec.pid
        if pid <= 0:
            return _PidInfo()  # node-level record: nothing to look up
        info = self._cache.get(pid)
        if info is None or rec.type == EXEC_TYPE:
            # a new image: re-read, keeping what exec does not change if /proc is gone
            info = self._load(pid, info)
            self._cache[pid] = info
            if len(self._cache) > self._max_pids:
                self._cache.popitem(last=False)
                self.stats["evicted"] += 1
        self._cache.move_to_end(pid)
        if rec.exe_hint or rec.argv_hint:
            _apply_hints(info, rec)
            info.built.clear()
        return info

    def _load(self, pid: int, prev: _PidInfo | None) -> _PidInfo:
        """Read /proc/<pid> once; on failure fall back to ``prev``'s exec-stable fields."""
        info = _PidInfo()
        if prev is not None:  # cgroup, parent and ids survive exec (setuid aside)
            info.cgroup, info.cgroup_v1 = prev.cgroup, prev.cgroup_v1
            info.ppid, info.uid, info.gid = prev.ppid, prev.uid, prev.gid
        try:
            dir_fd = procfs.open_dir(f"{self._proc_root}/{pid}")
        except OSError as exc:
            self.stats[procfs.error_key(exc)] += 1
            return info
        try:
            self._read_into(info, dir_fd)
        finally:
            os.close(dir_fd)
        return info

    def _read_into(self, info: _PidInfo, dir_fd: int) -> None:
        """Fill ``info`` from an open /proc/<pid>; each file fails on its own."""
        readers: tuple[Callable[[_PidInfo, int], None], ...] = (
            _read_status, _read_exe, _read_cmdline, _read_comm, _read_cgroup)
        for read in readers:
            try:
                read(info, dir_fd)
            except OSError as exc:
                self.stats[procfs.error_key(exc)] += 1
            except (ValueError, KeyError, IndexError):  # malformed content
                self.stats["errors"] += 1

    # -- building the message ------------------------------------------------

    def _build(self, rec: Record, info: _PidInfo) -> events_pb2.Process:
        uid = rec.uid if rec.uid is not None else info.uid
        gid = rec.gid if rec.gid is not None else info.gid
        cgroup, ident = self._cgroup(rec, info)
        return events_pb2.Process(
            pid=rec.pid, tid=rec.tid,
            ppid=rec.ppid or info.ppid,
            uid=uid or 0, gid=gid or 0,
            user=self._user_name(uid),
            comm=rec.comm or info.comm,
            exe=info.exe, cmdline=info.cmdline,
            cgroup=cgroup, container_id=ident.container_id, pod=ident.pod,
            slurm_job=ident.slurm_job,
        )

    def _user_name(self, uid: int | None) -> str:
        if uid is None:
            return ""
        try:
            return self._user(uid)
        except Exception:  # a pluggable lookup (NSS, LDAP) failing must not cost the event
            self.stats["user_lookup_errors"] += 1
            return ""

    def _cgroup(self, rec: Record, info: _PidInfo) -> tuple[str, CgroupIdentity]:
        """cgroup path (kernel's id first: it is per event, /proc's is per exec) and identity."""
        path = ""
        if rec.cgroup_id:
            path = self._cgroups.path_for(rec.cgroup_id, hint=info.cgroup)
        path = path or info.cgroup
        ident = identity_from_path(path)
        # hybrid hosts: Slurm's v1 plugin / old runtimes only mark the v1 paths
        for v1 in info.cgroup_v1:
            ident = ident.merged(identity_from_path(v1))
        return path, ident


def _apply_hints(info: _PidInfo, rec: Record) -> None:
    """Exec hints fill in what /proc could not give (the process is already gone).

    /proc/<pid>/exe, when readable, is the kernel's resolved binary and wins
    over the exec filename, which may be a symlink (a venv's bin/python) or
    relative ("./a.out"). Without /proc, an absolute filename is resolved here.
    """
    if rec.exe_hint and not info.exe:
        hint = rec.exe_hint
        info.exe = os.path.realpath(hint) if os.path.isabs(hint) else hint
        info.exe_deleted = False
    if rec.argv_hint:
        info.cmdline = list(rec.argv_hint)


def _read_status(info: _PidInfo, dir_fd: int) -> None:
    st = procfs.parse_status(procfs.read_at(dir_fd, "status"))
    info.ppid, info.uid, info.gid = st.ppid, st.uid, st.gid


def _read_exe(info: _PidInfo, dir_fd: int) -> None:
    info.exe, info.exe_deleted = procfs.read_exe(dir_fd)


def _read_cmdline(info: _PidInfo, dir_fd: int) -> None:
    info.cmdline = procfs.split_cmdline(procfs.read_at(dir_fd, "cmdline"))


def _read_comm(info: _PidInfo, dir_fd: int) -> None:
    info.comm = procfs.decode(procfs.read_at(dir_fd, "comm", 64).removesuffix(b"\n"))


def _read_cgroup(info: _PidInfo, dir_fd: int) -> None:
    text = procfs.decode(procfs.read_at(dir_fd, "cgroup"))
    info.cgroup, info.cgroup_v1 = parse_proc_cgroup(text)
