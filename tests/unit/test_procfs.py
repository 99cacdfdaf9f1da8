"""procfs readers, the fallback poller and the start-up inventory, on fixture trees."""

from __future__ import annotations

import os

import pytest

from agent import procfs
from agent.procfs import ProcfsPoller, gpu_holders, inventory
from gpuaudit.v1 import events_pb2
from tests.fixtures.proc.builder import PF_KTHREAD, ProcTree

O_RDWR, O_CLOEXEC, O_LARGEFILE = 0o2, 0o2000000, procfs._O_LARGEFILE


class Clock:
    def __init__(self) -> None:
        self.t = 1_700_000_000_000_000_000

    def __call__(self) -> int:
        self.t += 1_000_000_000
        return self.t


@pytest.fixture
def proc(tmp_path):
    tree = ProcTree(tmp_path / "proc")
    # 100: a CUDA job: several fds on nvidia0, nvidiactl, plus non-GPU fds
    tree.add(100, comm="python3", ppid=90, uid=1000, gid=1000, exe="/usr/bin/python3.11",
             cmdline=["python3", "train.py"],
             fds={0: "/dev/null", 3: "/dev/nvidia0", 4: "/dev/nvidiactl", 5: "/dev/nvidia0",
                  6: "socket:[123]", 7: "pipe:[99]", 9: "/dev/nvidia-uvm"},
             flags={3: O_RDWR | O_CLOEXEC | O_LARGEFILE, 4: O_RDWR | O_LARGEFILE})
    # 200: a render-node user, no fdinfo for its fd (flags unreadable -> 0)
    tree.add(200, comm="vainfo", ppid=1, uid=1001, gid=1001, exe="/usr/bin/vainfo",
             cmdline=["vainfo"], fds={7: "/dev/dri/renderD128"})
    # 300: no GPU at all
    tree.add(300, comm="sshd", uid=0, gid=0, exe="/usr/sbin/sshd", cmdline=["sshd: alice"],
             fds={0: "/dev/null", 1: "/dev/pts/0"})
    # a kernel thread holding nothing and never reported
    tree.add(2, comm="kthreadd", ppid=0, uid=0, gid=0, exe=None, cmdline=[],
             task_flags=PF_KTHREAD)
    return tree


def by_type(records, type_):
    return [r for r in records if r.type == type_]


# --- readers -----------------------------------------------------------------


def test_parse_stat_with_hostile_comm():
    data = b"77 (a) b (c) S 12 77 77 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 555 1 1\n"
    st = procfs.parse_stat(data)
    assert (st.comm, st.state, st.ppid, st.flags, st.starttime) == ("a) b (c", "S", 12,
                                                                    4194560, 555)


def test_parse_status_takes_real_ids():
    st = procfs.parse_status(b"Name:\tsu\nPPid:\t9\nUid:\t1000\t0\t0\t0\nGid:\t50\t0\t0\t0\n")
    assert (st.ppid, st.uid, st.gid) == (9, 1000, 50)


@pytest.mark.parametrize(
    ("raw", "argv"),
    [(b"", []), (b"sleep\x0030\x00", ["sleep", "30"]), (b"a\x00\x00b\x00", ["a", "", "b"]),
     (b"nginx: worker process", ["nginx: worker process"])],  # setproctitle: no NULs
)
def test_split_cmdline(raw, argv):
    assert procfs.split_cmdline(raw) == argv


def test_fd_flags_masks_kernel_largefile(proc, tmp_path):
    fd = procfs.open_dir(str(tmp_path / "proc" / "100"))
    try:
        assert procfs.fd_flags(fd, 3) == O_RDWR | O_CLOEXEC
        assert procfs.fd_flags(fd, 4) == O_RDWR
        assert procfs.fd_flags(fd, 5) == 0  # no fdinfo
        assert procfs.gpu_fds(fd) == {3: "/dev/nvidia0", 4: "/dev/nvidiactl",
                                      5: "/dev/nvidia0", 9: "/dev/nvidia-uvm"}
    finally:
        os.close(fd)


# --- inventory -----------------------------------------------------------------


def test_inventory_one_record_per_pid_and_path(proc, tmp_path):
    recs = inventory(str(tmp_path / "proc"), clock=lambda: 42)
    got = sorted((r.pid, r.payload.path, r.payload.fd, r.payload.flags) for r in recs)
    assert got == [
        (100, "/dev/nvidia-uvm", 9, 0),
        (100, "/dev/nvidia0", 3, O_RDWR | O_CLOEXEC),  # lowest of fds 3 and 5
        (100, "/dev/nvidiactl", 4, O_RDWR),
        (200, "/dev/dri/renderD128", 7, 0),
    ]
    assert {r.type for r in recs} == {"gpu.open"}
    assert {r.payload.source for r in recs} == {"inventory"}
    assert {r.payload.errno for r in recs} == {0}
    r = next(r for r in recs if r.pid == 200)
    assert (r.uid, r.gid, r.comm, r.ppid, r.wall_ns, r.tid) == (1001, 1001, "vainfo", 1, 42, 0)
    assert gpu_holders(recs) == {100, 200}


def test_inventory_of_missing_root_is_empty(tmp_path):
    p = ProcfsPoller(str(tmp_path / "nope"))
    assert p.poll() == []
    assert p.stats["vanished"] == 1


# --- poller diffs ----------------------------------------------------------------


def test_first_poll_is_baseline_then_quiet(proc, tmp_path):
    p = ProcfsPoller(str(tmp_path / "proc"), Clock())
    first = p.poll()
    assert by_type(first, "process.exec") == []  # already running: not seen starting
    assert len(by_type(first, "gpu.open")) == 4
    assert p.gpu_pids() == {100, 200}
    assert p.poll() == []
    assert p.stats["polls"] == 2


def test_exec_open_exit_across_polls(proc, tmp_path):
    clock = Clock()
    p = ProcfsPoller(str(tmp_path / "proc"), clock)
    p.poll()
    proc.add(400, comm="nvidia-smi", ppid=300, uid=(1001, 1001, 1001, 1001), gid=1001,
             exe="/usr/bin/nvidia-smi", cmdline=["nvidia-smi", "-q"],
             fds={3: "/dev/nvidiactl"}, flags={3: O_RDWR | O_CLOEXEC | O_LARGEFILE},
             starttime=5000)
    proc.open_fd(100, 11, "/dev/nvidia1", O_RDWR | O_LARGEFILE)  # new fd of a known pid
    proc.close_fd(100, 5)  # a close is not an event
    proc.remove(200)  # held a GPU
    proc.remove(300)  # did not
    recs = p.poll()
    assert [(r.type, r.pid) for r in recs] == [
        ("gpu.open", 100), ("process.exec", 400), ("gpu.open", 400),
        ("process.exit", 200), ("process.exit", 300)]
    ex = recs[1]
    assert ex.payload == events_pb2.ProcessExec(
        filename="/usr/bin/nvidia-smi", argv=["nvidia-smi", "-q"], source="procfs")
    assert (ex.exe_hint, ex.argv_hint) == ("/usr/bin/nvidia-smi", ["nvidia-smi", "-q"])
    assert (ex.pid, ex.tid, ex.ppid, ex.uid, ex.gid, ex.comm, ex.wall_ns) == (
        400, 400, 300, 1001, 1001, "nvidia-smi", clock.t)
    assert recs[0].payload == events_pb2.GpuOpen(path="/dev/nvidia1", fd=11, flags=O_RDWR,
                                                 errno=0, source="procfs")
    assert recs[2].payload == events_pb2.GpuOpen(path="/dev/nvidiactl", fd=3,
                                                 flags=O_RDWR | O_CLOEXEC, source="procfs")
    ex200, ex300 = recs[3], recs[4]
    assert ex200.payload == events_pb2.ProcessExit(exit_code=0, held_gpu=True, source="procfs")
    assert (ex200.uid, ex200.comm, ex200.ppid, ex200.tid) == (1001, "vainfo", 1, 200)
    assert ex300.payload.held_gpu is False
    assert p.gpu_pids() == {100, 400}


def test_every_new_fd_is_reported_after_baseline(proc, tmp_path):
    p = ProcfsPoller(str(tmp_path / "proc"))
    p.poll()
    proc.open_fd(100, 12, "/dev/nvidia0")
    proc.open_fd(100, 13, "/dev/nvidia0")
    assert [r.payload.fd for r in p.poll()] == [12, 13]  # like eBPF: one per open


def test_fd_number_reused_for_a_gpu(proc, tmp_path):
    p = ProcfsPoller(str(tmp_path / "proc"))
    p.poll()
    proc.open_fd(300, 0, "/dev/nvidia2")  # fd 0 was /dev/null
    recs = p.poll()
    assert [(r.pid, r.payload.path, r.payload.fd) for r in recs] == [(300, "/dev/nvidia2", 0)]
    proc.open_fd(300, 0, "/dev/nvidia3")  # same fd, different GPU
    assert [r.payload.path for r in p.poll()] == ["/dev/nvidia3"]


def test_held_gpu_is_sticky(proc, tmp_path):
    p = ProcfsPoller(str(tmp_path / "proc"))
    p.poll()
    proc.close_fd(200, 7)
    assert p.poll() == []
    proc.remove(200)
    (ex,) = p.poll()
    assert (ex.type, ex.payload.held_gpu) == ("process.exit", True)


def test_pid_reuse_is_exit_then_exec(proc, tmp_path):
    p = ProcfsPoller(str(tmp_path / "proc"))
    p.poll()
    proc.remove(300)
    proc.add(300, comm="bash", exe="/bin/bash", cmdline=["bash"], starttime=9999)
    recs = p.poll()
    assert [(r.type, r.pid, r.comm) for r in recs] == [
        ("process.exit", 300, "sshd"), ("process.exec", 300, "bash")]


def test_exec_in_place_is_seen_prctl_rename_is_not(proc, tmp_path):
    p = ProcfsPoller(str(tmp_path / "proc"))
    p.poll()
    proc.set_stat(300, comm="sshd-session", ppid=1)  # renamed, same binary
    assert p.poll() == []
    proc.set_stat(300, comm="python3", ppid=1)
    proc.set_exe(300, "/usr/bin/python3")
    proc.write(300, "cmdline", b"python3\0-c\0pass\0")
    proc.write(300, "status", "Name:\tpython3\nPPid:\t1\nUid:\t1000\t1000\t1000\t1000\n"
                              "Gid:\t1000\t1000\t1000\t1000\n")
    (ex,) = p.poll()
    assert (ex.type, ex.pid, ex.exe_hint, ex.argv_hint, ex.uid) == (
        "process.exec", 300, "/usr/bin/python3", ["python3", "-c", "pass"], 1000)


def test_zombies_count_as_exited_and_kthreads_are_ignored(proc, tmp_path):
    p = ProcfsPoller(str(tmp_path / "proc"))
    p.poll()
    proc.set_stat(100, comm="python3", ppid=90, state="Z")
    proc.add(3, comm="kworker/0:2", ppid=2, exe=None, cmdline=[], task_flags=PF_KTHREAD)
    (ex,) = p.poll()
    assert (ex.type, ex.pid, ex.payload.held_gpu) == ("process.exit", 100, True)
    proc.remove(100)  # reaped later: no second exit
    assert p.poll() == []


def test_races_are_counted_not_raised(proc, tmp_path):
    p = ProcfsPoller(str(tmp_path / "proc"))
    p.poll()
    proc.add(500, exe="/bin/x", fds={3: "/dev/nvidia0"})
    os.remove(tmp_path / "proc" / "500" / "status")  # vanished between stat and status
    proc.write(300, "stat", "garbage")  # half-written / unexpected content
    assert p.poll() == []
    assert p.stats["vanished"] == 1
    assert p.stats["errors"] == 1
    # next poll, the new process is readable: it is reported then, fds included
    proc.write(500, "status", "PPid:\t1\nUid:\t7\t7\t7\t7\nGid:\t7\t7\t7\t7\n")
    proc.set_stat(300, comm="sshd", ppid=1)
    recs = p.poll()
    assert [(r.type, r.pid, r.uid) for r in recs] == [("process.exec", 500, 7),
                                                      ("gpu.open", 500, 7)]


def test_fd_dir_unreadable_keeps_known_fds(proc, tmp_path):
    p = ProcfsPoller(str(tmp_path / "proc"))
    p.poll()
    fd_dir = tmp_path / "proc" / "200" / "fd"
    fd_dir.rename(tmp_path / "fd-away")
    assert p.poll() == []  # no fd dir (as with EACCES): no closes inferred, nothing re-reported
    (tmp_path / "fd-away").rename(fd_dir)
    assert p.poll() == []
    assert p.stats["vanished"] == 1
