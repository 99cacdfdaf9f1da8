"""Enricher and poller against the REAL /proc, with a real child process.

No root needed: a process may read its own children's /proc entries.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys

import pytest

from agent import procfs
from agent.cgroups import find_cgroup2_root
from agent.enrich import Enricher
from agent.procfs import ProcfsPoller, inventory
from agent.record import Record
from gpuaudit.v1 import events_pb2

SLEEP = os.path.realpath(shutil.which("sleep") or "/usr/bin/sleep")


@pytest.fixture
def sleeper():
    child = subprocess.Popen(["sleep", "30"])  # Popen returns once the exec succeeded
    try:
        yield child
    finally:
        child.kill()
        child.wait()


def test_enrich_real_child(sleeper):
    e = Enricher()  # real /proc, real /sys/fs/cgroup, real pwd
    rec = Record(type="gpu.open", wall_ns=1, payload=events_pb2.GpuOpen(), pid=sleeper.pid)
    p = e.process_for(rec)
    assert p.exe == SLEEP
    assert list(p.cmdline) == ["sleep", "30"]
    assert p.comm == "sleep"
    assert p.ppid == os.getpid()
    assert p.uid == os.getuid()
    assert p.gid == os.getgid()
    assert p.user == pwd.getpwuid(os.getuid()).pw_name
    with open(f"/proc/{sleeper.pid}/cgroup") as f:
        v2 = [ln.split(":", 2)[2] for ln in f.read().splitlines() if ln.startswith("0::")]
    assert p.cgroup == (v2[0] if v2 else "")
    assert e.stats["vanished"] == 0


def test_enrich_real_cgroup_id(sleeper):
    root = find_cgroup2_root("/sys/fs/cgroup")
    if root is None:
        pytest.skip("no cgroup2 hierarchy on this host")
    with open(f"/proc/{sleeper.pid}/cgroup") as f:
        path = next(ln[3:] for ln in f.read().splitlines() if ln.startswith("0::"))
    cgid = os.stat(root + path).st_ino  # what bpf_get_current_cgroup_id() returns
    e = Enricher()
    rec = Record(type="gpu.open", wall_ns=1, payload=events_pb2.GpuOpen(), pid=sleeper.pid,
                 cgroup_id=cgid)
    assert e.process_for(rec).cgroup == path
    e2 = Enricher()  # the id alone (no /proc hint): found by walking the tree
    assert e2._cgroups.path_for(cgid) == path
    assert e2._cgroups.stats["scans"] == 1


def test_enrich_real_child_after_it_is_gone(sleeper):
    e = Enricher()
    rec = Record(type="gpu.open", wall_ns=1, payload=events_pb2.GpuOpen(), pid=sleeper.pid)
    assert e.process_for(rec).exe == SLEEP
    sleeper.kill()
    sleeper.wait()
    assert not os.path.exists(f"/proc/{sleeper.pid}")
    exit_rec = Record(type="process.exit", wall_ns=2, payload=events_pb2.ProcessExit(),
                      pid=sleeper.pid)
    p = e.process_for(exit_rec)  # served from the cache
    assert (p.exe, list(p.cmdline), p.ppid) == (SLEEP, ["sleep", "30"], os.getpid())
    e.forget(sleeper.pid)
    assert e.process_for(exit_rec).exe == ""


def test_poller_sees_real_child_come_and_go():
    poller = ProcfsPoller()
    poller.poll()  # baseline
    child = subprocess.Popen(["sleep", "30"])
    try:
        recs = [r for r in poller.poll() if r.pid == child.pid]
        assert [r.type for r in recs] == ["process.exec"]
        ex = recs[0]
        assert ex.payload.filename == SLEEP
        assert list(ex.payload.argv) == ["sleep", "30"]
        assert ex.payload.source == "procfs"
        assert (ex.ppid, ex.uid, ex.gid, ex.comm) == (os.getpid(), os.getuid(), os.getgid(),
                                                      "sleep")
        assert [r for r in poller.poll() if r.pid == child.pid] == []
    finally:
        child.kill()
        child.wait()
    recs = [r for r in poller.poll() if r.pid == child.pid]
    assert [(r.type, r.payload.held_gpu, r.payload.source) for r in recs] == [
        ("process.exit", False, "procfs")]


THREADED = (
    "import threading, time\n"
    "for _ in range(3):\n"
    "    threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n"
    "print('up', flush=True); time.sleep(30)\n"
)


def test_poller_reports_processes_not_threads():
    poller = ProcfsPoller()
    poller.poll()
    child = subprocess.Popen([sys.executable, "-c", THREADED], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdout.readline() == b"up\n"
        tids = {int(t) for t in os.listdir(f"/proc/{child.pid}/task")}
        assert len(tids) == 4
        recs = poller.poll()
        assert [r.type for r in recs if r.pid == child.pid] == ["process.exec"]
        assert not {r.pid for r in recs} & (tids - {child.pid})
    finally:
        child.kill()
        child.wait()


def test_real_inventory_runs_and_reports_only_gpu_paths():
    recs = inventory()
    assert all(r.type == "gpu.open" and r.payload.source == "inventory" for r in recs)
    assert all(r.payload.path.startswith(("/dev/nvidia", "/dev/dri/renderD")) for r in recs)
    # this test process holds no GPU device
    assert os.getpid() not in {r.pid for r in recs}


def _gpu_node() -> str | None:
    for path in ("/dev/nvidiactl", "/dev/dri/renderD128"):
        if os.access(path, os.R_OK | os.W_OK):
            return path
    return None


@pytest.mark.gpu
@pytest.mark.skipif(_gpu_node() is None, reason="no accessible GPU device node")
def test_real_gpu_fd_inventory_and_poller():
    path = _gpu_node()
    assert path is not None
    poller = ProcfsPoller()
    poller.poll()
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        recs = [r for r in poller.poll() if r.pid == os.getpid()]
        assert [(r.type, r.payload.path, r.payload.fd, r.payload.source) for r in recs] == [
            ("gpu.open", path, fd, "procfs")]
        assert recs[0].payload.flags == os.O_RDWR | os.O_CLOEXEC  # O_LARGEFILE masked
        inv = [r for r in inventory() if r.pid == os.getpid()]
        assert [(r.payload.path, r.payload.fd, r.payload.source) for r in inv] == [
            (path, fd, "inventory")]
    finally:
        os.close(fd)


def test_real_fdinfo_flags_match_what_open_was_given():
    fd = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC | os.O_APPEND)
    dir_fd = procfs.open_dir(f"/proc/{os.getpid()}")
    try:
        # the kernel adds O_LARGEFILE on 64-bit; eBPF would not see it, so it is masked
        assert procfs.fd_flags(dir_fd, fd) == os.O_RDWR | os.O_CLOEXEC | os.O_APPEND
    finally:
        os.close(dir_fd)
        os.close(fd)
