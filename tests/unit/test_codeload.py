"""code.load's user-space logic without root or eBPF: resolving mappings from a
fake /proc (map_files links are symlinks to real files), the report rule,
dedup, the hash cache and the bounded hashing queue."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from agent.codeload.hasher import DirCheck, HashWorker, Job, sha256_fd
from agent.codeload.policy import ProcTable, allowed, is_accel_library
from agent.codeload.resolve import PAGE, Resolver, classify, page_range, parse_maps_line
from agent.main import AgentConfig
from agent.record import Record
from agent.sensors.base import BootClock, MappedFile, SensorContext, SensorHooks
from agent.sensors.codeload import OP_CODE_MAP, CodeLoadRuntime, CodeMapRec
from agent.sensors.records import OP_EXIT, ExitRec
from gpuaudit.v1 import code_pb2
from tests.inbox import ListInbox

PID = 4242



class FakeProc:
    """A /proc with one process whose map_files links point at real files."""

    def __init__(self, root: Path, pid: int = PID) -> None:
        self.root, self.pid = root, pid
        (root / str(pid) / "map_files").mkdir(parents=True)
        self.lines: list[str] = []
        self._write_maps()

    def map(self, start: int, end: int, target: Path, perms: str = "r-xp") -> None:
        (self.root / str(self.pid) / "map_files" / f"{start:x}-{end:x}").symlink_to(target)
        st = target.stat()
        self.lines.append(f"{start:x}-{end:x} {perms} 00000000 00:00 {st.st_ino}   {target}")
        self._write_maps()

    def _write_maps(self) -> None:
        (self.root / str(self.pid) / "maps").write_text("".join(f"{x}\n" for x in self.lines))


def _lib(d: Path, name: str, content: bytes = b"\x7fELF code") -> Path:
    p = d / name
    p.write_bytes(content)
    return p


# -- resolve ---------------------------------------------------------------
def test_page_range_rounds_to_whole_pages() -> None:
    assert page_range(0x7F0000001000, 1) == (0x7F0000001000, 0x7F0000001000 + PAGE)
    assert page_range(0x7F0000001000 + 5, PAGE) == (0x7F0000001000, 0x7F0000001000 + 2 * PAGE)


def test_maps_lines_keep_only_executable_file_mappings() -> None:
    v = parse_maps_line("7f1a2c000000-7f1a2c1c5000 r-xp 00028000 08:01 1835 "
                        "  /opt/my lib/libx.so (deleted)\n")
    assert v is not None and (v.start, v.end, v.path) == (
        0x7F1A2C000000, 0x7F1A2C1C5000, "/opt/my lib/libx.so (deleted)")
    assert parse_maps_line("7f1a2c000000-7f1a2c1c5000 r--p 0 08:01 1835 /usr/lib/libc.so.6") is None
    assert parse_maps_line("7ffd1000-7ffd3000 r-xp 00000000 00:00 0    [vdso]") is None
    assert parse_maps_line("55d4e000-55d6f000 rwxp 00000000 00:00 0") is None


def test_kind_needs_no_links_left_not_just_the_name(tmp_path: Path) -> None:
    st = os.stat(_lib(tmp_path, "a"))
    gone = os.stat_result((*st[:3], 0, *st[4:]))  # st_nlink = 0
    assert classify("/memfd:jit (deleted)", gone) == ("memfd", "/memfd:jit (deleted)")
    assert classify("/tmp/x.so (deleted)", gone) == ("deleted", "/tmp/x.so")
    assert classify("/tmp/x.so (deleted)", st) == ("file", "/tmp/x.so (deleted)")


def test_resolve_exact_range_then_the_vma_holding_the_address(tmp_path: Path) -> None:
    proc = FakeProc(tmp_path / "proc")
    lib = _lib(tmp_path, "liba.so")
    proc.map(0x10000, 0x10000 + 4 * PAGE, lib)
    r = Resolver(str(tmp_path / "proc"))
    m = r.resolve(PID, 0x10000, 4 * PAGE - 100)
    assert m is not None and (m.path, m.kind, m.key) == (
        str(lib), "file", (lib.stat().st_dev, lib.stat().st_ino))
    # a sub-range (mprotect of part of a vma, or a merged vma): found through maps
    m2 = r.resolve(PID, 0x10000 + PAGE, PAGE)
    assert m2 is not None and m2.map_path == m.map_path
    assert r.resolve(PID, 0x90000, PAGE) is None  # anonymous / unmapped
    assert r.resolve(PID + 1, 0x10000, PAGE) is None  # process gone
    assert [x.path for x in r.snapshot(PID)] == [str(lib)]


# -- policy ----------------------------------------------------------------
def test_allow_list_matches_whole_components_and_never_allows_memfd() -> None:
    allow = ["/usr/lib", "/lib64/"]
    assert allowed("/usr/lib/x86_64-linux-gnu/libc.so.6", "file", allow)
    assert allowed("/lib64/ld-linux-x86-64.so.2", "file", allow)
    assert not allowed("/usr/lib2/evil.so", "file", allow)
    assert not allowed("/usr/lib/../../tmp/evil.so", "file", allow)
    assert not allowed("/usr/lib/libc.so.6", "deleted", allow)
    assert not allowed("/memfd:x (deleted)", "memfd", allow)


def test_accel_libraries_by_name() -> None:
    assert is_accel_library("/usr/lib/x86_64-linux-gnu/libcuda.so.1")
    assert is_accel_library("/opt/venv/nvidia/nccl/lib/libnccl.so.2")
    assert not is_accel_library("/opt/mylibcuda/libfoo.so")


def test_proc_table_is_bounded_least_recently_used() -> None:
    t = ProcTable(limit=2)
    t.get(1).full = True
    t.get(2)
    t.get(1)  # 1 is now the most recent
    t.get(3)
    assert 2 not in t and 1 in t and t.get(1).full and len(t) == 2


def test_maps_reads_per_process_are_rate_limited() -> None:
    from agent.codeload.policy import SCAN_BURST, ProcState

    s = ProcState()
    now = 1000.0
    assert all(s.may_scan(now) for _ in range(int(SCAN_BURST)))
    assert not s.may_scan(now)
    assert s.may_scan(now + 0.011)  # 100/s: one token back after 10 ms


# -- hashing ---------------------------------------------------------------
def test_sha256_of_a_descriptor_and_the_size_bound(tmp_path: Path) -> None:
    data = os.urandom(3 * (1 << 20) + 17)  # more than one read chunk
    fd = os.open(_lib(tmp_path, "big", data), os.O_RDONLY)
    try:
        assert sha256_fd(fd) == (hashlib.sha256(data).hexdigest(), "")
        assert sha256_fd(fd, size_limit=1000) == ("", "larger than 1000 bytes")
    finally:
        os.close(fd)


def _job(path: Path, kind: str = "file") -> Job:
    payload = code_pb2.CodeLoad(path=str(path), kind=kind, file_uid=os.getuid())
    return Job(Record(type="code.load", wall_ns=1, payload=payload), os.open(path, os.O_RDONLY))


def test_hash_cache_is_keyed_by_identity_mtime_and_size(tmp_path: Path) -> None:
    lib = _lib(tmp_path, "libc1.so", b"AAAA")
    w = HashWorker(ListInbox())
    first = w.finish(_job(lib)).payload.sha256  # type: ignore[attr-defined]
    st = lib.stat()
    lib.write_bytes(b"BBBB")  # same inode and size; put the old mtime back
    os.utime(lib, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert w.finish(_job(lib)).payload.sha256 == first  # type: ignore[attr-defined]
    os.utime(lib, ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # a new mtime: read again
    assert w.finish(_job(lib)).payload.sha256 == hashlib.sha256(b"BBBB").hexdigest()  # type: ignore[attr-defined]


def test_later_jobs_open_their_file_when_hashed(tmp_path: Path) -> None:
    lib = _lib(tmp_path, "liblater.so", b"later")
    w = HashWorker(ListInbox(), later_max=1)
    job = Job(Record(type="code.load", wall_ns=1, payload=code_pb2.CodeLoad()), -1, str(lib))
    assert w.submit_later(job)
    assert not w.submit_later(job) and w.unhashed == 1  # bounded too
    assert w.finish(w._later.popleft()).payload.sha256 == hashlib.sha256(b"later").hexdigest()  # type: ignore[attr-defined]
    gone = Job(Record(type="code.load", wall_ns=1, payload=code_pb2.CodeLoad()), -1,
               str(tmp_path / "no-such"))
    assert w.finish(gone).payload.hash_error == "process gone"  # type: ignore[attr-defined]


def test_full_queue_refuses_and_counts_and_stop_drains_unhashed(tmp_path: Path) -> None:
    inbox = ListInbox()
    w = HashWorker(inbox, queue_max=1)
    lib = _lib(tmp_path, "libq.so")
    assert w.submit(_job(lib))
    extra = _job(lib)
    assert not w.submit(extra) and w.unhashed == 1
    os.close(extra.fd)
    stop = threading.Event()
    stop.set()
    w.run(stop)  # stopping with a job queued: it goes out, unhashed
    (rec,) = inbox.items
    assert rec.payload.hash_error == "agent stopping"


def test_writable_by_others_through_the_file_or_a_directory(tmp_path: Path) -> None:
    d = tmp_path / "shared"
    d.mkdir()
    lib = _lib(d, "libw.so")
    os.chmod(lib, 0o644)
    os.chmod(tmp_path, 0o755)
    os.chmod(d, 0o755)
    assert not DirCheck().writable_by_others(str(lib), os.getuid())
    os.chmod(d, 0o777)
    assert DirCheck().writable_by_others(str(lib), os.getuid())
    os.chmod(d, 0o1777)  # sticky: others cannot rename or unlink the owner's file
    assert not DirCheck().writable_by_others(str(lib), os.getuid())
    os.chmod(lib, 0o664)
    w = HashWorker(ListInbox())
    assert w.finish(_job(lib)).payload.writable_by_others  # type: ignore[attr-defined]


# -- the runtime: report rule and dedup -------------------------------------
class FakeMap(dict[int, int]):
    """A bcc table stand-in: keys and values are ctypes numbers."""

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key.value, value.value)


def _runtime(tmp_path: Path, gpu: set[int] | None = None,
             allow: str = "") -> tuple[CodeLoadRuntime, ListInbox, list[MappedFile], FakeMap]:
    inbox, told, accel = ListInbox(), [], FakeMap()
    hooks = SensorHooks()
    hooks.library_mapped.append(told.append)
    cfg = AgentConfig(collector="x", code_allow=allow or str(tmp_path / "sys"))
    ctx = SensorContext(bpf={"accel_procs": accel}, inbox=inbox, clock=BootClock(), cfg=cfg,
                        opened_gpu=lambda pid: pid in (gpu or set()), hooks=hooks,
                        proc_root=str(tmp_path / "proc"))
    rt = CodeLoadRuntime(ctx, worker=HashWorker(inbox))
    return rt, inbox, told, accel


def _map_rec(addr: int, length: int = PAGE, syscall: int = 0, pid: int = PID) -> bytes:
    r = CodeMapRec()
    r.h.op, r.h.pid, r.h.tid, r.h.comm = OP_CODE_MAP, pid, pid, b"python3"
    r.addr, r.len, r.fd, r.prot, r.syscall = addr, length, 3, 5, syscall
    return bytes(r)


def _drain(rt: CodeLoadRuntime, inbox: ListInbox) -> list[code_pb2.CodeLoad]:
    """What the worker would offer: jobs holding a descriptor, then the later ones."""
    w = rt.worker
    while not w._q.empty() or w._later:
        inbox.offer(w.finish(w._q.get_nowait() if not w._q.empty() else w._later.popleft()))
    return [r.payload for r in inbox.items]


@pytest.fixture
def files(tmp_path: Path) -> SimpleNamespace:
    (tmp_path / "sys").mkdir()
    (tmp_path / "tmp").mkdir()
    proc = FakeProc(tmp_path / "proc")
    ns = SimpleNamespace(proc=proc, libc=_lib(tmp_path / "sys", "libc.so.6", b"libc"),
                         evil=_lib(tmp_path / "tmp", "libevil.so", b"evil"),
                         cuda=_lib(tmp_path / "sys", "libcuda.so.1", b"cuda"))
    proc.map(0x10000, 0x10000 + PAGE, ns.libc)
    proc.map(0x20000, 0x20000 + PAGE, ns.evil)
    proc.map(0x30000, 0x30000 + PAGE, ns.cuda)
    return ns


def test_non_gpu_process_reports_only_outside_the_allow_list(tmp_path: Path,
                                                             files: SimpleNamespace) -> None:
    rt, inbox, told, _ = _runtime(tmp_path)
    clock = BootClock()
    assert rt.decode_map(_map_rec(0x10000), clock) is None
    assert rt.decode_map(_map_rec(0x20000), clock) is None  # handed to the worker
    assert rt.decode_map(_map_rec(0x20000), clock) is None  # same file again: once
    (p,) = _drain(rt, inbox)
    assert (p.path, p.source, p.syscall, p.kind) == (str(files.evil), "mmap", "mmap", "file")
    assert p.sha256 == hashlib.sha256(b"evil").hexdigest()
    # every new (pid, dev, inode) is told, reported or not
    assert [m.path for m in told] == [str(files.libc), str(files.evil)]


def test_gpu_touch_reports_what_was_mapped_before_from_maps(tmp_path: Path,
                                                            files: SimpleNamespace) -> None:
    rt, inbox, _, _ = _runtime(tmp_path)
    rt.decode_map(_map_rec(0x20000), BootClock())  # reported before the touch
    rt.on_gpu_touch(PID)
    got = {(p.path, p.source) for p in _drain(rt, inbox)}
    assert got == {(str(files.evil), "mmap"), (str(files.libc), "maps"),
                   (str(files.cuda), "maps")}


def test_mapping_libcuda_marks_the_process_for_the_kernel(tmp_path: Path,
                                                          files: SimpleNamespace) -> None:
    rt, inbox, _, accel = _runtime(tmp_path)
    rt.decode_map(_map_rec(0x30000), BootClock())
    assert accel == {PID: 1}
    got = sorted((p.path, p.source) for p in _drain(rt, inbox))
    assert got == sorted([(str(files.cuda), "mmap"), (str(files.libc), "maps"),
                          (str(files.evil), "maps")])


def test_exec_and_exit_forget_the_process(tmp_path: Path, files: SimpleNamespace) -> None:
    rt, inbox, told, _ = _runtime(tmp_path)
    rt.decode_map(_map_rec(0x20000), BootClock())
    e = ExitRec()
    e.h.op, e.h.pid, e.h.tid = OP_EXIT, PID, PID
    rt.decoders()[OP_EXIT](bytes(e), BootClock())
    rt.decode_map(_map_rec(0x20000), BootClock())  # a new process with the same pid
    assert [p.path for p in _drain(rt, inbox)] == [str(files.evil)] * 2
    assert len(told) == 2


def test_unresolved_mappings_are_counted_by_kind_of_process(tmp_path: Path,
                                                            files: SimpleNamespace) -> None:
    rt, _, _, _ = _runtime(tmp_path, gpu={PID})
    assert rt.decode_map(_map_rec(0x90000), BootClock()) is None  # mmap: lost
    assert rt.decode_map(_map_rec(0x90000, syscall=1), BootClock()) is None  # mprotect: anonymous
    assert rt.decode_map(_map_rec(0x90000, pid=PID + 1), BootClock()) is None
    assert (rt.unresolved_gpu, rt.unresolved_other) == (1, 1)
    assert rt.loss_counters()["code_unresolved"]() == 1
    status = rt.status()
    assert status is not None and status.state == "ok" and "1 exec mappings" in status.detail


def test_full_hash_queue_emits_at_once_with_hash_error(tmp_path: Path,
                                                       files: SimpleNamespace) -> None:
    rt, _, _, _ = _runtime(tmp_path)
    rt.worker = HashWorker(ListInbox(), queue_max=1)
    rt.worker.submit(_job(files.libc))
    rec = rt.decode_map(_map_rec(0x20000), BootClock())
    assert rec is not None
    p = rec.payload
    assert isinstance(p, code_pb2.CodeLoad)
    assert (p.path, p.sha256, p.hash_error) == (str(files.evil), "", "hash queue full")
    status = rt.status()
    assert status is not None and status.state == "degraded"
