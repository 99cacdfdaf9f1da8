"""checkpoint.scan user space without the kernel: which opens count, the path
resolution, the reopening, and the worker with its real scanner process."""

from __future__ import annotations

import ctypes as ct
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from agent.checkpoint import worker as worker_mod
from agent.checkpoint.child import MEMORY_LIMIT, ScanFailed, ScannerProcess
from agent.checkpoint.opener import AT_FDCWD, is_python, is_site_pth, open_opened, resolve
from agent.checkpoint.scanner import Limits
from agent.checkpoint.worker import QUEUE_FULL, ScanJob, ScanWorker
from agent.record import Record
from agent.sensors.base import BootClock, SensorContext, SensorHooks
from agent.sensors.checkpoint import LOSS_QUEUE_FULL, OP_MODEL_OPEN, CheckpointRuntime, ModelOpenRec
from agent.sensors.records import Hdr
from gpuaudit.v1 import checkpoint_pb2
from tests.fixtures.pickles import corpus
from tests.inbox import ListInbox
from tests.integration.harness import wait_for

EVIL = corpus.proto0_call("os", "system", "true")



@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A process that is not Python (its exe is sleep)."""
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait()


def _record(payload: checkpoint_pb2.CheckpointScan) -> Record:
    return Record(type="checkpoint.scan", wall_ns=0, payload=payload)


def _job(path: Path) -> ScanJob:
    return ScanJob(open(path, "rb"), str(path), _record)  # the worker closes it


@pytest.fixture
def worker() -> Iterator[tuple[ScanWorker, ListInbox]]:
    inbox = ListInbox()
    w = ScanWorker(inbox.offer, max_bytes=1 << 30)
    yield w, inbox
    w.drain()


# --- which process, which path ----------------------------------------------

def test_python_is_told_by_exe_not_comm(sleeper: subprocess.Popen[bytes]) -> None:
    assert is_python(os.getpid())
    assert not is_python(sleeper.pid)
    assert not is_python(2**22 + 12345)  # no such pid


def test_relative_path_resolves_against_the_openers_cwd(tmp_path: Path) -> None:
    proc = subprocess.Popen(["sleep", "60"], cwd=tmp_path)
    try:
        assert resolve(proc.pid, "sub/../m.pt", AT_FDCWD) == str(tmp_path / "m.pt")
        assert resolve(proc.pid, "/abs/./x.pt", AT_FDCWD) == "/abs/x.pt"
    finally:
        proc.kill()
        proc.wait()


def test_relative_path_resolves_against_dirfd(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    dirfd = os.open(tmp_path / "d", os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert resolve(os.getpid(), "m.pt", dirfd) == str(tmp_path / "d" / "m.pt")
    finally:
        os.close(dirfd)
    with pytest.raises(OSError):
        resolve(os.getpid(), "m.pt", dirfd)  # closed: cannot be resolved


def test_reopen_prefers_the_openers_fd_even_after_unlink(tmp_path: Path) -> None:
    p = tmp_path / "m.pkl"
    p.write_bytes(EVIL)
    fd = os.open(p, os.O_RDONLY)
    try:
        p.unlink()
        p.write_bytes(b"replaced")  # a new file at the same name
        opened = open_opened(os.getpid(), fd, str(p))
        with opened.file as f:
            assert (opened.via, f.read()) == ("fd", EVIL)  # what was opened, not the new file
    finally:
        os.close(fd)


def test_reopen_falls_back_to_the_path_when_the_fd_was_reused(tmp_path: Path) -> None:
    p = tmp_path / "m.pkl"
    p.write_bytes(EVIL)
    other = tmp_path / "unrelated.txt"
    other.write_text("x")
    fd = os.open(other, os.O_RDONLY)  # the opener closed the model's fd; this reused it
    try:
        opened = open_opened(os.getpid(), fd, str(p))
        with opened.file as f:
            assert (opened.via, f.read()) == ("path", EVIL)
    finally:
        os.close(fd)


# --- the runtime's decoder ---------------------------------------------------

def _rec(pid: int, ret: int, path: str, dirfd: int = AT_FDCWD) -> bytes:
    r = ModelOpenRec(h=Hdr(op=OP_MODEL_OPEN, pid=pid, tid=pid, comm=b"t"), flags=0, ret=ret,
                     dirfd=dirfd, path=path.encode())
    return bytes(r)


def _runtime(gpu_pids: set[int] = frozenset()) -> tuple[CheckpointRuntime, ListInbox]:  # type: ignore[assignment]
    inbox = ListInbox()
    ctx = SensorContext(bpf=None, inbox=inbox, clock=BootClock(),
                        cfg=SimpleNamespace(checkpoint_max_bytes=1 << 30),
                        opened_gpu=lambda pid: pid in gpu_pids, hooks=SensorHooks())
    return CheckpointRuntime(ctx), inbox


def test_decoder_keeps_python_and_gpu_processes_only(tmp_path: Path,
                                                     sleeper: subprocess.Popen[bytes]) -> None:
    p = tmp_path / "m.pkl"
    p.write_bytes(EVIL)
    rt, inbox = _runtime()
    fd = os.open(p, os.O_RDONLY)
    try:
        decode = rt.decoders()[OP_MODEL_OPEN]
        assert decode(_rec(os.getpid(), fd, str(p)), rt.ctx.clock) is None  # the agent itself
        assert rt.worker._q.qsize() == 0
        rt._self_pid = -1  # from here on this test process stands in for a Python opener
        assert decode(_rec(sleeper.pid, 3, str(p)), rt.ctx.clock) is None  # not python, no GPU
        assert decode(_rec(os.getpid(), -2, str(p)), rt.ctx.clock) is None  # failed open
        assert rt.worker._q.qsize() == 0
        assert decode(_rec(os.getpid(), fd, str(p)), rt.ctx.clock) is None  # python: queued
        assert decode(_rec(os.getpid(), fd, str(p)), rt.ctx.clock) is None  # same file again
        assert rt.worker._q.qsize() == 1 and inbox.items == []
        gpu_rt, _ = _runtime({sleeper.pid})
        # a GPU process is kept whatever it runs; its fd 3 is not this file: by path
        gpu_rt.decoders()[OP_MODEL_OPEN](_rec(sleeper.pid, 3, str(p)), rt.ctx.clock)
        assert gpu_rt.worker._q.qsize() == 1
    finally:
        os.close(fd)
        rt.close()


def test_unresolvable_open_is_reported_as_error(tmp_path: Path) -> None:
    rt, inbox = _runtime()
    rt._self_pid = -1  # this test process stands in for a Python opener
    rt.decoders()[OP_MODEL_OPEN](_rec(os.getpid(), 99999, "gone/m.pt", dirfd=99998), rt.ctx.clock)
    (rec,) = inbox.items
    assert rec.type == "checkpoint.scan" and rec.pid == os.getpid()
    assert (rec.payload.verdict, rec.payload.path) == ("error", "gone/m.pt")
    assert rec.payload.error.startswith("cannot open")


# --- the worker and the scanner process -------------------------------------

def test_worker_scans_once_per_content_and_reports_every_open(
        tmp_path: Path, worker: tuple[ScanWorker, ListInbox]) -> None:
    w, inbox = worker
    evil, copy = tmp_path / "evil.pkl", tmp_path / "copy.pkl"
    evil.write_bytes(EVIL)
    copy.write_bytes(EVIL)
    for p in (evil, evil, copy):
        w.handle(_job(p))
    verdicts = [(r.payload.verdict, list(r.payload.globals), r.payload.cached) for r in inbox.items]
    assert verdicts == [("malicious", ["os.system"], False), ("malicious", ["os.system"], True),
                        ("malicious", ["os.system"], True)]
    first = inbox.items[0].payload
    assert first.sha256 == __import__("hashlib").sha256(EVIL).hexdigest()
    assert (first.size, first.format, first.scanner) == (len(EVIL), "pickle", "picklescan")
    assert first.scanner_version and w.scanned == 1


def test_file_over_max_bytes_is_not_read(tmp_path: Path,
                                          worker: tuple[ScanWorker, ListInbox]) -> None:
    w, inbox = worker
    w.max_bytes = 16 << 30
    p = tmp_path / "huge.pt"
    with open(p, "wb") as f:
        f.truncate(20 << 30)  # sparse: 20 GiB, no disk
    asked: list[str] = []
    real_ask = w.child.ask
    w.child.ask = lambda op, *a: asked.append(op) or real_ask(op, *a)  # type: ignore[method-assign]
    w.handle(_job(p))
    (rec,) = inbox.items
    assert (rec.payload.verdict, rec.payload.sha256, rec.payload.size) == ("error", "", 20 << 30)
    assert "over checkpoint_max_bytes" in rec.payload.error
    assert asked == []  # neither hashed nor scanned: not one byte read


def test_full_queue_answers_error_and_counts(tmp_path: Path) -> None:
    inbox = ListInbox()
    w = ScanWorker(inbox.offer, max_bytes=1 << 30, queue_size=1)
    p = tmp_path / "m.pkl"
    p.write_bytes(EVIL)
    for _ in range(3):
        w.submit(_job(p))  # no thread runs: the queue holds one
    assert w.queue_full == 2
    answers = [(r.payload.verdict, r.payload.error) for r in inbox.items]
    assert answers == [("error", QUEUE_FULL)] * 2
    rt, _ = _runtime()
    assert LOSS_QUEUE_FULL in rt.loss_counters()
    w.drain()


def test_worker_thread_runs_jobs_and_stops(tmp_path: Path) -> None:
    inbox = ListInbox()
    w = ScanWorker(inbox.offer, max_bytes=1 << 30)
    p = corpus.write_torch_zip(tmp_path / "ok.pt", corpus.torch_pickle(corpus.benign_state))
    stop = threading.Event()
    t = threading.Thread(target=w.run, args=(stop,))
    t.start()
    w.submit(_job(p))
    try:
        wait_for(lambda: inbox.items, timeout=30)
    finally:
        stop.set()
        t.join()
        w.drain()
    (rec,) = inbox.items
    assert (rec.payload.verdict, rec.payload.format) == ("safe", "torch_zip")


def test_scanner_process_memory_limit_is_hard(tmp_path: Path) -> None:
    # lift the byte bound so the child tries to read 2 GiB into one bytes object
    p = tmp_path / "bomb.pkl"
    with open(p, "wb") as f:
        f.write(b"\x80\x05\x8e" + (2 << 30).to_bytes(8, "little"))
        f.truncate(3 << 30)
    child = ScannerProcess(Limits(pickle_max_bytes=4 << 30))
    try:
        with open(p, "rb") as f, pytest.raises(ScanFailed, match=f"{MEMORY_LIMIT >> 20} MiB"):
            child.ask("scan", f, "bomb.pkl", 120)
        small = tmp_path / "s.pkl"
        small.write_bytes(EVIL)
        with open(small, "rb") as f:  # the same child still answers
            assert child.ask("scan", f, "s.pkl", 60)["outcome"]["verdict"] == "malicious"
        assert child.restarts == 0
    finally:
        child.close()


def test_scanner_process_is_killed_past_its_time(tmp_path: Path) -> None:
    p = tmp_path / "big.bin"
    with open(p, "wb") as f:
        f.truncate(8 << 30)  # hashing 8 GiB of hole takes seconds
    child = ScannerProcess()
    try:
        with open(p, "rb") as f, pytest.raises(ScanFailed, match="longer than"):
            child.ask("hash", f, "big.bin", 0.05)
        assert child.restarts == 1
        small = tmp_path / "s.pkl"
        small.write_bytes(EVIL)
        with open(small, "rb") as f:  # a fresh child is started on demand
            assert child.ask("scan", f, "s.pkl", 60)["outcome"]["verdict"] == "malicious"
    finally:
        child.close()


def test_scanner_process_runs_at_idle_priority() -> None:
    child = ScannerProcess()
    try:
        small = Path(worker_mod.__file__)
        with open(small, "rb") as f:
            child.ask("hash", f, "x", 60)
        pid = child._proc.pid  # type: ignore[union-attr]
        assert os.sched_getscheduler(pid) == os.SCHED_IDLE
        assert os.getpriority(os.PRIO_PROCESS, pid) == 19
        soft, _ = (int(x) for x in _limits_as(pid))
        assert soft == MEMORY_LIMIT
    finally:
        child.close()


def _limits_as(pid: int) -> tuple[str, str]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max address space"):
            return tuple(line.split()[3:5])  # type: ignore[return-value]
    raise AssertionError("no address space limit line")


def test_mirror_size_matches_the_c_layout() -> None:
    # hdr (48) + 4 x 32-bit + path: what files_events.h lays out
    assert ct.sizeof(ModelOpenRec) == ct.sizeof(Hdr) + 16 + 256
    assert sys.byteorder == "little"


def test_site_packages_pth_files_are_not_checkpoints() -> None:
    assert is_site_pth("/usr/lib/python3/dist-packages/distutils-precedence.pth")
    assert is_site_pth("/venv/lib/python3.11/site-packages/__editable__.x.pth")
    assert not is_site_pth("/data/run1/model.pth")
    assert not is_site_pth("/venv/lib/python3.11/site-packages/pkg/weights.pth")
