"""Reading /proc: low-level readers, the fallback sensor, the start-up inventory.

* Readers (``read_at``, ``parse_status`` ...) are shared with agent/enrich.py.
  They work relative to an open ``/proc/<pid>`` directory fd: once opened, the
  fd stays bound to that process, so a pid recycled mid-read yields ENOENT
  instead of another process's data.
* :class:`ProcfsPoller` is the sensor used when eBPF is unavailable: it diffs
  successive scans into process.exec / process.exit / gpu.open records.
* :func:`inventory` reports the GPU fds already held when the agent starts.

Baseline rule: the poller's FIRST poll emits no process.exec for processes
already running (they were not seen starting), but it does emit one gpu.open
per (pid, device path) with ``source="inventory"`` -- exactly what
:func:`inventory` returns, since inventory is a one-shot poller. So in procfs
mode the poller's first poll *is* the inventory; in eBPF mode call
:func:`inventory` once after the probes are attached.

Everything here is sampling: an fd opened and closed between two polls, or a
process that lives less than one interval, is not seen. Only thread-group
leaders are listed (readdir of /proc does not show other threads), and kernel
threads are skipped. Races (pid gone, EACCES) are counted in ``stats``.
"""

from __future__ import annotations

import errno
import os
import platform
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from agent.gpupaths import is_gpu_device_path
from agent.record import Record
from gpuaudit.v1 import events_pb2

MAX_READ = 65536  # cmdline beyond this is cut (procfs argv_truncated=True)
PF_KTHREAD = 0x00200000  # task flag in /proc/<pid>/stat field 9 (include/linux/sched.h)
# The kernel ORs O_LARGEFILE into f_flags on 64-bit (force_o_largefile()); a
# user-space open() on x86_64/arm64 never passes it, and eBPF sees the flags as
# passed. Mask it so procfs and eBPF report the same flags. Value is per-arch.
_O_LARGEFILE = {"x86_64": 0o100000, "aarch64": 0o400000}.get(platform.machine(), 0)
_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_GONE = (errno.ENOENT, errno.ESRCH)


def error_key(exc: OSError) -> str:
    """Stats key for a failed /proc read: "vanished", "denied" or "errors"."""
    if exc.errno in _GONE:
        return "vanished"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "denied"
    return "errors"


def decode(data: bytes) -> str:
    """bytes from the kernel -> str valid for protobuf (bad UTF-8 replaced)."""
    return data.decode("utf-8", "replace")


def open_dir(path: str, dir_fd: int | None = None) -> int:
    """Open a directory fd (caller closes it)."""
    return os.open(path, _O_DIR, dir_fd=dir_fd)


def read_at(dir_fd: int, name: str, limit: int = MAX_READ) -> bytes:
    """Read at most ``limit`` bytes of ``name`` relative to ``dir_fd``."""
    fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        chunks: list[bytes] = []
        size = 0
        while size < limit:
            chunk = os.read(fd, min(limit - size, 16384))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def readlink_at(dir_fd: int, name: str) -> str:
    """Target of symlink ``name`` relative to ``dir_fd``."""
    return decode(os.readlink(os.fsencode(name), dir_fd=dir_fd))


@dataclass(frozen=True, slots=True)
class Status:
    """The /proc/<pid>/status lines we use."""

    ppid: int
    uid: int  # real
    gid: int  # real


def parse_status(data: bytes) -> Status:
    """Parse PPid and the real Uid/Gid (first of real/effective/saved/fs)."""
    vals: dict[bytes, bytes] = {}
    for line in data.splitlines():
        key, _, rest = line.partition(b":")
        if key in (b"PPid", b"Uid", b"Gid"):
            vals[key] = rest.split()[0]
    return Status(int(vals[b"PPid"]), int(vals[b"Uid"]), int(vals[b"Gid"]))


@dataclass(frozen=True, slots=True)
class Stat:
    """The /proc/<pid>/stat fields we use."""

    comm: str
    state: str
    ppid: int
    flags: int
    starttime: int  # clock ticks since boot; (pid, starttime) names a process uniquely


def parse_stat(data: bytes) -> Stat:
    """Parse /proc/<pid>/stat. comm may hold spaces and ')', so split at the last ')'."""
    lpar, rpar = data.index(b"("), data.rindex(b")")
    rest = data[rpar + 2 :].split()  # fields 3.. (state is field 3)
    return Stat(decode(data[lpar + 1 : rpar]), rest[0].decode(), int(rest[1]),
                int(rest[6]), int(rest[19]))


def read_exe(dir_fd: int) -> tuple[str, bool]:
    """(executable path, deleted?) -- the kernel appends " (deleted)" to unlinked files."""
    exe = readlink_at(dir_fd, "exe")
    if exe.endswith(" (deleted)"):
        return exe.removesuffix(" (deleted)"), True
    return exe, False


def split_cmdline(data: bytes) -> list[str]:
    """argv from /proc/<pid>/cmdline: NUL-separated, NUL-terminated."""
    if not data:
        return []  # kernel threads and zombies
    return [decode(a) for a in data.removesuffix(b"\0").split(b"\0")]


def gpu_fds(dir_fd: int) -> dict[int, str]:
    """{fd number: device path} for every GPU device fd of the process."""
    fd_dir = open_dir("fd", dir_fd)
    try:
        found: dict[int, str] = {}
        for name in os.listdir(fd_dir):
            try:
                target = readlink_at(fd_dir, name)
            except OSError:
                continue  # closed between listdir and readlink: not held any more
            if is_gpu_device_path(target):
                found[int(name)] = target
        return found
    finally:
        os.close(fd_dir)


def fd_flags(dir_fd: int, fd: int) -> int:
    """open(2) flags of ``fd`` from fdinfo ("flags:" is octal), 0 if unreadable."""
    try:
        data = read_at(dir_fd, f"fdinfo/{fd}", 4096)
    except OSError:
        return 0
    for line in data.splitlines():
        if line.startswith(b"flags:"):
            return int(line.split()[1], 8) & ~_O_LARGEFILE
    return 0


@dataclass(slots=True)
class _Seen:
    """What the poller remembers about a live process."""

    stat: Stat
    uid: int
    gid: int
    exe: str
    fds: dict[int, str]
    held_gpu: bool = False


class ProcfsPoller:
    """Fallback sensor: diffs /proc scans into exec / exit / gpu.open records.

    process.exit has ``exit_code=0``: the status is gone once the parent has
    reaped the child, and a zombie's status is not exposed in /proc. Zombies
    count as exited. A reused pid is told apart by its start time.
    """

    def __init__(self, proc_root: str = "/proc", clock: Callable[[], int] = time.time_ns) -> None:
        self._root = proc_root
        self._clock = clock
        self._seen: dict[int, _Seen] | None = None  # None until the baseline poll
        # keys: polls, vanished, denied, errors
        self.stats: Counter[str] = Counter()

    def gpu_pids(self) -> set[int]:
        """Pids that held a GPU device fd at the last poll."""
        return {pid for pid, s in (self._seen or {}).items() if s.fds}

    def poll(self) -> list[Record]:
        """Scan /proc once; return records for what changed since the last poll."""
        now = self._clock()
        baseline = self._seen is None
        old = self._seen or {}
        seen: dict[int, _Seen] = {}
        out: list[Record] = []
        try:
            root_fd = open_dir(self._root)
        except OSError as exc:
            self.stats[error_key(exc)] += 1
            return []
        try:
            # sorted: records come out in a stable order, whatever readdir returns
            for pid in sorted(int(n) for n in os.listdir(root_fd) if n.isdigit()):
                cur = self._visit(root_fd, pid, old.get(pid), baseline, now, out)
                if cur is not None:
                    seen[pid] = cur
        finally:
            os.close(root_fd)
        out.extend(self._exit(pid, s, now) for pid, s in old.items() if pid not in seen)
        self._seen = seen
        self.stats["polls"] += 1
        return out

    def _visit(self, root_fd: int, pid: int, prev: _Seen | None, baseline: bool, now: int,
               out: list[Record]) -> _Seen | None:
        """Scan one pid; append its records to ``out``; return its new state."""
        try:
            dir_fd = open_dir(str(pid), root_fd)
        except OSError as exc:
            self.stats[error_key(exc)] += 1
            return None
        mark = len(out)
        try:
            return self._scan_pid(pid, dir_fd, prev, baseline, now, out)
        except (OSError, ValueError, IndexError, KeyError) as exc:  # raced with exit, odd content
            self.stats[error_key(exc) if isinstance(exc, OSError) else "errors"] += 1
            del out[mark:]  # no half-reported process; if it still runs, next poll retries
            return prev
        finally:
            os.close(dir_fd)

    def _scan_pid(self, pid: int, dir_fd: int, prev: _Seen | None, baseline: bool,
                  now: int, out: list[Record]) -> _Seen | None:
        stat = parse_stat(read_at(dir_fd, "stat"))
        if stat.state in ("Z", "X") or stat.flags & PF_KTHREAD:
            return None  # zombies have exited; kernel threads never exec
        if prev is not None and prev.stat.starttime != stat.starttime:
            out.append(self._exit(pid, prev, now))  # pid reused between polls
            prev = None
        if prev is None:
            status = parse_status(read_at(dir_fd, "status"))
            prev = _Seen(stat, status.uid, status.gid, self._exe(dir_fd), {})
            if not baseline:
                out.append(self._exec(pid, dir_fd, prev, now))
        elif prev.stat.comm != stat.comm:
            self._maybe_exec(pid, dir_fd, prev, stat, now, out)
        prev.stat = stat
        self._diff_fds(pid, dir_fd, prev, baseline, now, out)
        return prev

    def _maybe_exec(self, pid: int, dir_fd: int, prev: _Seen, stat: Stat, now: int,
                    out: list[Record]) -> None:
        """comm changed: an exec if the executable changed too (not just a prctl rename).

        An exec of the same binary keeps both, and is not seen.
        """
        exe = self._exe(dir_fd)
        if exe and exe != prev.exe:
            status = parse_status(read_at(dir_fd, "status"))  # setuid binaries change uid
            new = _Seen(stat, status.uid, status.gid, exe, prev.fds, prev.held_gpu)
            out.append(self._exec(pid, dir_fd, new, now))  # may raise: prev stays as it was
            prev.uid, prev.gid, prev.exe = new.uid, new.gid, exe

    def _exe(self, dir_fd: int) -> str:
        try:
            return read_exe(dir_fd)[0]
        except OSError as exc:
            self.stats[error_key(exc)] += 1
            return ""

    def _exec(self, pid: int, dir_fd: int, seen: _Seen, now: int) -> Record:
        raw = read_at(dir_fd, "cmdline")
        argv = split_cmdline(raw)
        payload = events_pb2.ProcessExec(
            filename=seen.exe, argv=argv, argv_truncated=len(raw) >= MAX_READ, source="procfs"
        )
        rec = self._record("process.exec", pid, seen, now, payload)
        rec.tid = pid  # after exec the process is single-threaded: tid == pid
        rec.exe_hint, rec.argv_hint = seen.exe, argv
        return rec

    def _exit(self, pid: int, seen: _Seen, now: int) -> Record:
        payload = events_pb2.ProcessExit(exit_code=0, held_gpu=seen.held_gpu, source="procfs")
        rec = self._record("process.exit", pid, seen, now, payload)
        rec.tid = pid
        return rec

    def _diff_fds(self, pid: int, dir_fd: int, seen: _Seen, baseline: bool, now: int,
                  out: list[Record]) -> None:
        """gpu.open for each fd not held (with that target) at the last poll."""
        try:
            fds = gpu_fds(dir_fd)
        except OSError as exc:
            self.stats[error_key(exc)] += 1
            return  # keep the old set so a transient EACCES does not re-report
        new = {fd: p for fd, p in fds.items() if seen.fds.get(fd) != p}
        if baseline:  # inventory: one record per (pid, path), lowest fd
            new = {min(fd for fd, q in new.items() if q == p): p for p in set(new.values())}
        source = "inventory" if baseline else "procfs"
        for fd in sorted(new):
            payload = events_pb2.GpuOpen(path=new[fd], fd=fd, errno=0,
                                         flags=fd_flags(dir_fd, fd), source=source)
            out.append(self._record("gpu.open", pid, seen, now, payload))
        seen.fds = fds
        seen.held_gpu = seen.held_gpu or bool(fds)

    @staticmethod
    def _record(type_: str, pid: int, seen: _Seen, now: int,
                payload: events_pb2.GpuOpen | events_pb2.ProcessExec | events_pb2.ProcessExit
                ) -> Record:
        # tid stays 0 (unknown) for gpu.open: /proc does not say which thread opened
        return Record(type=type_, wall_ns=now, payload=payload, pid=pid, ppid=seen.stat.ppid,
                      uid=seen.uid, gid=seen.gid, comm=seen.stat.comm)


def inventory(proc_root: str = "/proc", clock: Callable[[], int] = time.time_ns) -> list[Record]:
    """gpu.open records (source="inventory") for GPU fds held right now.

    One record per (pid, device path), with the lowest fd holding it. Call at
    agent start so a job started before the agent is not invisible.
    """
    return ProcfsPoller(proc_root, clock).poll()


def gpu_holders(records: Iterable[Record]) -> set[int]:
    """Pids with a gpu.open among ``records`` (e.g. seed eBPF's held_gpu map)."""
    return {r.pid for r in records if r.type == "gpu.open"}
