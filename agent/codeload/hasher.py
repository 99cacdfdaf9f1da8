"""SHA-256 of mapped files, off the processor thread.

The decoder opens the mapped file through /proc/PID/map_files at once (so the
content stays readable after the process exits or the file is deleted) and
hands the descriptor here with an almost finished code.load Record; this
worker hashes it, fills ``sha256`` and ``writable_by_others`` and offers the
Record to the agent's inbox.

Bounds: at most ``queue_max`` jobs wait (256), and each holds one open
descriptor, so the worker holds at most queue_max + 1 descriptors. When the
queue is full the decoder emits the event at once with ``hash_error`` set
(counted in :attr:`HashWorker.unhashed`), never drops it. Files found in
/proc/PID/maps when a process becomes a GPU process (hundreds for a PyTorch
job, long mapped already) wait in a second queue of up to ``later_max``
(65536) jobs that hold no descriptor: the worker opens them when it gets to
them, and a process gone by then gives ``hash_error`` "process gone". Digests are cached
by (dev, inode, mtime_ns, size), 4096 entries (LRU): the same library mapped
by every rank of a job is read once. Files over ``max_bytes`` (4 GiB) are not
read. Memory: one 1 MiB read buffer.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import queue
import stat as stat_mod
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from agent.record import Record
from agent.sensors.base import Inbox
from gpuaudit.v1 import code_pb2

QUEUE_MAX = 256
LATER_MAX = 65536
CACHE_MAX = 4096
HASH_MAX_BYTES = 4 << 30
CHUNK = 1 << 20
DIR_TTL_S = 10.0  # directory permission answers are reused this long

CacheKey = tuple[int, int, int, int]  # dev, inode, mtime_ns, size


def cache_key(st: os.stat_result) -> CacheKey:
    return st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size


@dataclass
class Job:
    """A code.load Record waiting for its hash; ``fd`` is the mapped file
    (-1: open ``open_path`` when the job's turn comes)."""

    record: Record  # payload: code_pb2.CodeLoad, all but sha256/writable_by_others
    fd: int
    open_path: str = ""


def sha256_fd(fd: int, size_limit: int = HASH_MAX_BYTES) -> tuple[str, str]:
    """(hex digest, "") of the file behind ``fd``, or ("", why not)."""
    h = hashlib.sha256()
    offset = 0
    try:
        if os.fstat(fd).st_size > size_limit:
            return "", f"larger than {size_limit} bytes"
        while True:
            # pread: independent of the descriptor's offset; hashlib drops the
            # GIL for large updates, so the processor thread keeps running
            chunk = os.pread(fd, CHUNK, offset)
            if not chunk:
                return h.hexdigest(), ""
            h.update(chunk)
            offset += len(chunk)
    except OSError as e:
        return "", f"read failed: {e.strerror}"


class DirCheck:
    """Can someone other than a file's owner replace it through a directory?

    A directory on the path lets another user rename or unlink the file when
    it is group- or world-writable without the sticky bit, or when another
    non-root user owns it. Answers are cached for ``DIR_TTL_S``.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._cache: OrderedDict[tuple[str, int], tuple[float, bool]] = OrderedDict()

    def writable_by_others(self, path: str, owner: int) -> bool:
        parent = os.path.dirname(path)
        while True:
            if self._dir_open_to_others(parent, owner):
                return True
            up = os.path.dirname(parent)
            if up == parent:
                return False
            parent = up

    def _dir_open_to_others(self, d: str, owner: int) -> bool:
        now = self._clock()
        hit = self._cache.get((d, owner))
        if hit is not None and now - hit[0] < DIR_TTL_S:
            return hit[1]
        try:
            st = os.stat(d)
        except OSError:
            answer = False  # gone: nothing to replace the file through
        else:
            sticky = bool(st.st_mode & stat_mod.S_ISVTX)
            answer = (bool(st.st_mode & 0o022) and not sticky) or (
                st.st_uid not in (0, owner) and bool(st.st_mode & 0o200))
        self._cache[(d, owner)] = (now, answer)
        if len(self._cache) > 1024:
            self._cache.popitem(last=False)
        return answer


def writable_by_others(payload: code_pb2.CodeLoad, mode: int, dirs: DirCheck) -> bool:
    """Group/other write bit on the file, or (for a named file) a directory
    on its path that lets another user replace it."""
    if mode & 0o022:
        return True
    return payload.kind == "file" and dirs.writable_by_others(payload.path, payload.file_uid)


class HashWorker:
    """The hashing thread and its bounded queue; see the module docstring."""

    def __init__(self, inbox: Inbox, queue_max: int = QUEUE_MAX, cache_max: int = CACHE_MAX,
                 max_bytes: int = HASH_MAX_BYTES, later_max: int = LATER_MAX) -> None:
        self._inbox = inbox
        self._q: queue.Queue[Job] = queue.Queue(queue_max)
        self._later: deque[Job] = deque()
        self._later_max = later_max
        self._cache: OrderedDict[CacheKey, str] = OrderedDict()
        self._cache_max = cache_max
        self._max_bytes = max_bytes
        self._lock = threading.Lock()
        self.dirs = DirCheck()
        self.unhashed = 0  # events emitted without a hash because the queue was full

    def submit(self, job: Job) -> bool:
        """Queue ``job``; False when full (the caller emits it unhashed)."""
        try:
            self._q.put_nowait(job)
            return True
        except queue.Full:
            with self._lock:
                self.unhashed += 1
            return False

    def submit_later(self, job: Job) -> bool:
        """Queue a descriptor-less job (``open_path`` set); False when full."""
        with self._lock:
            if len(self._later) >= self._later_max:
                self.unhashed += 1
                return False
            self._later.append(job)
            return True

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            job = self._next()
            if job is not None:
                self._inbox.offer(self.finish(job))
        self._drain("agent stopping")

    def _next(self) -> Job | None:
        """A job holding a descriptor first (it pins a file), then a later one."""
        try:
            return self._q.get_nowait()
        except queue.Empty:
            pass
        try:
            return self._later.popleft()
        except IndexError:
            pass
        try:
            return self._q.get(timeout=0.2)
        except queue.Empty:
            return None

    def finish(self, job: Job) -> Record:
        """Hash ``job``'s file (or take the cached digest) and complete its Record."""
        payload: code_pb2.CodeLoad = job.record.payload  # type: ignore[assignment]
        if job.fd < 0:
            try:
                job.fd = os.open(job.open_path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as e:
                payload.hash_error = "process gone" if e.errno == errno.ENOENT else (
                    f"open failed: {e.strerror}")
                return job.record
        try:
            st = os.fstat(job.fd)
            key = cache_key(st)
            digest = self._cache.get(key)
            if digest is None:
                digest, payload.hash_error = sha256_fd(job.fd, self._max_bytes)
                if digest:
                    self._remember(key, digest)
            payload.sha256 = digest
            payload.writable_by_others = writable_by_others(payload, st.st_mode, self.dirs)
        finally:
            os.close(job.fd)
        return job.record

    def _remember(self, key: CacheKey, digest: str) -> None:
        self._cache[key] = digest
        if len(self._cache) > self._cache_max:
            self._cache.popitem(last=False)

    def _drain(self, why: str) -> None:
        """At stop: queued jobs go out at once, unhashed, instead of vanishing."""
        while True:
            try:
                job = self._q.get_nowait()
            except queue.Empty:
                try:
                    job = self._later.popleft()
                except IndexError:
                    return
            if job.fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(job.fd)
            job.record.payload.hash_error = why  # type: ignore[attr-defined]
            self._inbox.offer(job.record)

    def close(self) -> None:
        self._drain("agent stopping")
