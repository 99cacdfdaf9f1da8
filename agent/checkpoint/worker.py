"""The scan worker: feeds opened model files to the scanner process.

One thread takes jobs from a bounded queue and asks the scanner process
(agent/checkpoint/child.py: memory limit, idle priority, killed on timeout)
to hash, then scan them. A file is hashed once per version (dev, inode,
mtime_ns, size) and scanned once per content hash; every job still yields one
checkpoint.scan event (``cached`` says the verdict was reused). A full queue
never blocks the decoder: the job is answered at once with verdict "error"
("scan queue full") and counted.
"""

from __future__ import annotations

import os
import queue
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, Generic, TypeVar

from agent.checkpoint import scanner
from agent.checkpoint.child import ScanFailed, ScannerProcess
from agent.record import Record
from gpuaudit.v1 import checkpoint_pb2

QUEUE_SIZE = 64  # jobs waiting, each holding one open file
CACHE_SIZE = 4096  # entries per cache (versions -> sha256, sha256 -> verdict)
QUEUE_FULL = "scan queue full"
HASH_MIN_RATE = 10 << 20  # bytes/s: a hash slower than this (plus a minute) is given up
SCAN_TIMEOUT_S = 300.0  # one bounded scan (at most 64 MiB of pickle) may take this long

K = TypeVar("K")
V = TypeVar("V")


class Lru(Generic[K, V]):
    """A small bounded mapping that forgets the least recently used entry."""

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self._d: OrderedDict[K, V] = OrderedDict()
        self._size = size

    def get(self, key: K) -> V | None:
        if key not in self._d:
            return None
        self._d.move_to_end(key)
        return self._d[key]

    def put(self, key: K, value: V) -> None:
        self._d[key] = value
        self._d.move_to_end(key)
        while len(self._d) > self._size:
            self._d.popitem(last=False)


Version = tuple[int, int, int, int]  # st_dev, st_ino, st_mtime_ns, st_size


def version(f: BinaryIO) -> Version:
    st = os.fstat(f.fileno())
    return st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size


@dataclass
class ScanJob:
    """An opened model file waiting to be scanned; ``record`` gets the payload."""

    file: BinaryIO
    path: str
    record: Callable[[checkpoint_pb2.CheckpointScan], Record]


class ScanWorker:
    """Bounded queue + one thread feeding the scanner process + the two caches."""

    def __init__(self, offer: Callable[[Record], object], max_bytes: int,
                 limits: scanner.Limits = scanner.DEFAULT_LIMITS,
                 queue_size: int = QUEUE_SIZE) -> None:
        self._offer = offer
        self.max_bytes = max_bytes
        self.limits = limits
        self._q: queue.Queue[ScanJob] = queue.Queue(queue_size)
        self.stop = threading.Event()
        self.child = ScannerProcess(limits, self.stop)
        self._hashes: Lru[Version, str] = Lru()
        self._verdicts: Lru[str, scanner.Outcome] = Lru()
        self.queue_full = 0  # jobs answered "scan queue full"
        self.scanned = 0  # files actually scanned (not cached)

    def submit(self, job: ScanJob) -> None:
        """Queues ``job``, or answers it at once with "scan queue full"."""
        try:
            self._q.put_nowait(job)
        except queue.Full:
            self.queue_full += 1
            size = _size(job.file)
            job.file.close()
            outcome = scanner.Outcome("error", error=QUEUE_FULL)
            self._offer(job.record(_payload(job.path, "", size, outcome)))

    def run(self, stop: threading.Event) -> None:
        """The thread body: scans jobs until ``stop`` is set."""
        self.stop = self.child.stop = stop
        while not stop.is_set():
            try:
                job = self._q.get(timeout=0.2)
            except queue.Empty:
                continue
            self.handle(job)

    def drain(self) -> None:
        """Ends the scanner process and closes the files of jobs still queued."""
        self.child.close()
        while True:
            try:
                self._q.get_nowait().file.close()
            except queue.Empty:
                return

    def handle(self, job: ScanJob) -> None:
        """Scans one job's file and offers its checkpoint.scan record."""
        with job.file as f:
            try:
                payload = self._scan(job.path, f)
            except (OSError, ScanFailed) as e:
                outcome = scanner.Outcome("error", error=str(e))
                payload = _payload(job.path, "", _size(f), outcome)
        self._offer(job.record(payload))

    def _scan(self, path: str, f: BinaryIO) -> checkpoint_pb2.CheckpointScan:
        ver = version(f)
        size = ver[3]
        if size > self.max_bytes:
            why = f"{size} bytes, over checkpoint_max_bytes ({self.max_bytes}): not read"
            return _payload(path, "", size, scanner.Outcome("error", error=why))
        sha = self._hashes.get(ver)
        if sha is None:
            timeout = 60.0 + size / HASH_MIN_RATE
            sha = str(self.child.ask("hash", f, path, timeout)["sha256"])
        cached = self._verdicts.get(sha)
        if cached is not None:
            self._hashes.put(ver, sha)
            return _payload(path, sha, size, cached, cached=True)
        outcome = scanner.Outcome(**self.child.ask("scan", f, path, SCAN_TIMEOUT_S)["outcome"])
        self.scanned += 1
        if version(f) != ver:  # rewritten while we read it: the hash may not be what we scanned
            return _payload(path, "", size, scanner.Outcome(
                "error", format=outcome.format, error="file changed while being scanned"))
        self._hashes.put(ver, sha)
        self._verdicts.put(sha, outcome)
        return _payload(path, sha, size, outcome)


def _size(f: BinaryIO) -> int:
    try:
        return os.fstat(f.fileno()).st_size
    except OSError:
        return 0


def _payload(path: str, sha: str, size: int, o: scanner.Outcome,
             cached: bool = False) -> checkpoint_pb2.CheckpointScan:
    return checkpoint_pb2.CheckpointScan(
        path=path, sha256=sha, size=size, verdict=o.verdict, globals=o.globals,
        scanner=scanner.SCANNER, scanner_version=scanner.SCANNER_VERSION, format=o.format,
        error=o.error, cached=cached)
