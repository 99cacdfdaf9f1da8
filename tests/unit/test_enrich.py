"""Enricher over fixture /proc and cgroup trees."""

from __future__ import annotations

import pytest

from agent.enrich import Enricher, PwdUserLookup
from agent.record import Record
from gpuaudit.v1 import events_pb2
from tests.fixtures.cgroup.builder import make_cgroup2
from tests.fixtures.proc.builder import ProcTree

CID = "4f6a1c2e9b0d8a7f3e5c1b2a9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e"
POD = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
K8S_PATH = (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"
            f"{POD.replace('-', '_')}.slice/cri-containerd-{CID}.scope")
SLURM_PATH = "/system.slice/slurmstepd.scope/job_42/step_0/user/task_0"
USERS = {0: "root", 1000: "alice", 1001: "bob"}


def rec(pid, type_="gpu.open", **kw):
    payload = kw.pop("payload", events_pb2.GpuOpen(path="/dev/nvidia0"))
    return Record(type=type_, wall_ns=1, payload=payload, pid=pid, tid=kw.pop("tid", pid), **kw)


def exec_rec(pid, exe, argv, **kw):
    return rec(pid, "process.exec", payload=events_pb2.ProcessExec(filename=exe, argv=argv),
               exe_hint=exe, argv_hint=list(argv), **kw)


@pytest.fixture
def proc(tmp_path):
    return ProcTree(tmp_path / "proc")


@pytest.fixture
def cg(tmp_path):
    return make_cgroup2(tmp_path / "cgroup", [SLURM_PATH, K8S_PATH, "/user.slice"])


@pytest.fixture
def enricher(tmp_path, proc, cg):
    return Enricher(str(tmp_path / "proc"), str(tmp_path / "cgroup"), USERS.get)


def test_every_field_from_proc(proc, enricher):
    proc.add(4242, comm="train", ppid=4000, uid=(1000, 0, 0, 0), gid=1001,
             exe="/opt/venv/bin/python3.11", cmdline=["python", "train.py", "--lr", "1e-3", ""],
             cgroup=f"0::{SLURM_PATH}\n")
    p = enricher.process_for(rec(4242, tid=4250))  # the record knows only pid/tid
    assert p == events_pb2.Process(
        pid=4242, tid=4250, ppid=4000, uid=1000, gid=1001, user="alice", comm="train",
        exe="/opt/venv/bin/python3.11", cmdline=["python", "train.py", "--lr", "1e-3", ""],
        cgroup=SLURM_PATH, slurm_job="42")


def test_kernel_fields_win(proc, enricher):
    proc.add(10, comm="fromproc", ppid=9, uid=1000, gid=1000)
    p = enricher.process_for(rec(10, uid=0, gid=0, comm="fromkernel", ppid=7))
    assert (p.uid, p.gid, p.comm, p.ppid, p.user) == (0, 0, "fromkernel", 7, "root")
    # ppid 0 means "fork not seen": /proc's PPid is used
    assert enricher.process_for(rec(10, uid=1001, gid=5)).ppid == 9
    assert enricher.process_for(rec(10, uid=1001, gid=5)).user == "bob"


def test_container_and_pod_from_proc_cgroup(proc, enricher):
    proc.add(11, cgroup=f"0::{K8S_PATH}\n")
    p = enricher.process_for(rec(11))
    assert (p.cgroup, p.container_id, p.pod, p.slurm_job) == (K8S_PATH, CID, POD, "")


def test_cgroup_id_wins_over_proc(proc, enricher, cg):
    # the pid's /proc cgroup (read once per exec) is stale; the kernel's id is per event
    proc.add(12, cgroup="0::/user.slice\n")
    p = enricher.process_for(rec(12, cgroup_id=cg[K8S_PATH]))
    assert (p.cgroup, p.container_id, p.pod) == (K8S_PATH, CID, POD)
    p = enricher.process_for(rec(12, cgroup_id=cg["/user.slice"]))
    assert (p.cgroup, p.container_id, p.pod) == ("/user.slice", "", "")


def test_unknown_cgroup_id_falls_back_to_proc(proc, enricher):
    proc.add(13, cgroup=f"0::{SLURM_PATH}\n")
    p = enricher.process_for(rec(13, cgroup_id=999_999_999))
    assert (p.cgroup, p.slurm_job) == (SLURM_PATH, "42")
    assert enricher._cgroups.stats["misses"] == 1


def test_hybrid_host_v1_slurm_paths(proc, enricher):
    proc.add(14, cgroup="4:memory:/slurm/uid_1000/job_77/step_0\n"
                        "1:name=systemd:/system.slice/slurmd.service\n"
                        "0::/system.slice/slurmd.service\n")
    p = enricher.process_for(rec(14))
    assert (p.cgroup, p.slurm_job) == ("/system.slice/slurmd.service", "77")


def test_deleted_exe_is_stripped_and_remembered(proc, enricher):
    proc.add(15, exe="/tmp/payload (deleted)")
    assert enricher.process_for(rec(15)).exe == "/tmp/payload"
    assert enricher.exe_deleted(15) is True
    assert enricher.exe_deleted(999) is False


def test_hints_for_a_pid_already_gone(enricher):
    # exec seen by the kernel; the process exited before the pipeline looked
    p = enricher.process_for(exec_rec(500, "/usr/bin/nvidia-smi", ["nvidia-smi", "-L"],
                                      uid=1000, gid=1000, comm="nvidia-smi", ppid=1))
    assert (p.exe, list(p.cmdline), p.user, p.comm) == (
        "/usr/bin/nvidia-smi", ["nvidia-smi", "-L"], "alice", "nvidia-smi")
    # later events of the pid (no hints) get the cached identity
    p = enricher.process_for(rec(500, uid=1000, gid=1000))
    assert (p.exe, list(p.cmdline)) == ("/usr/bin/nvidia-smi", ["nvidia-smi", "-L"])
    assert enricher.stats["vanished"] == 1  # one failed lookup, not one per event


def test_relative_exec_filename_yields_to_proc(proc, enricher):
    proc.add(16, exe="/home/alice/a.out")
    p = enricher.process_for(exec_rec(16, "./a.out", ["./a.out"]))
    assert (p.exe, list(p.cmdline)) == ("/home/alice/a.out", ["./a.out"])
    p = enricher.process_for(exec_rec(17, "./gone", ["./gone"]))  # no /proc: keep it
    assert p.exe == "./gone"


def test_cache_reads_once_per_exec(proc, enricher):
    proc.add(20, exe="/bin/bash", cmdline=["bash"], comm="bash")
    assert enricher.process_for(rec(20)).exe == "/bin/bash"
    proc.set_exe(20, "/usr/bin/python3")
    proc.write(20, "cmdline", b"python3\0job.py\0")
    proc.write(20, "comm", "python3\n")
    p = enricher.process_for(rec(20))  # not re-read: still cached
    assert (p.exe, list(p.cmdline)) == ("/bin/bash", ["bash"])
    # an exec record re-reads /proc; its hints override what /proc says
    p = enricher.process_for(exec_rec(20, "/usr/bin/python3", ["python3", "job.py"]))
    assert (p.exe, list(p.cmdline), p.comm) == ("/usr/bin/python3", ["python3", "job.py"],
                                                "python3")
    # an exec record without hints (e.g. procfs could not read them) still re-reads
    proc.set_exe(20, "/usr/bin/perl")
    assert enricher.process_for(rec(20, "process.exec")).exe == "/usr/bin/perl"


def test_exec_of_a_dead_pid_keeps_cgroup_and_ids_not_the_old_image(proc, enricher):
    proc.add(21, exe="/bin/bash", cmdline=["bash"], uid=1001, ppid=33,
             cgroup=f"0::{SLURM_PATH}\n")
    enricher.process_for(rec(21))
    proc.remove(21)
    p = enricher.process_for(rec(21, "process.exec"))  # no hints, and /proc is gone
    assert (p.exe, list(p.cmdline)) == ("", [])  # bash is not what runs any more
    assert (p.slurm_job, p.uid, p.ppid, p.user) == ("42", 1001, 33, "bob")


def test_exit_uses_cache_then_forget(proc, enricher):
    proc.add(30, exe="/usr/bin/python3", cmdline=["python3", "x.py"], cgroup=f"0::{K8S_PATH}\n")
    enricher.process_for(rec(30))
    proc.remove(30)
    exit_rec = rec(30, "process.exit", payload=events_pb2.ProcessExit(held_gpu=True))
    p = enricher.process_for(exit_rec)
    assert (p.exe, list(p.cmdline), p.container_id, p.pod, p.uid) == (
        "/usr/bin/python3", ["python3", "x.py"], CID, POD, 1000)
    enricher.forget(30)
    assert 30 not in enricher._cache
    p = enricher.process_for(rec(30, uid=5))
    assert (p.exe, list(p.cmdline), p.container_id, p.uid) == ("", [], "", 5)
    enricher.forget(12345)  # unknown pid: no error


def test_cache_is_bounded_lru(proc, tmp_path):
    e = Enricher(str(tmp_path / "proc"), str(tmp_path / "nocg"), USERS.get, max_pids=3)
    for pid in (1, 2, 3):
        proc.add(pid, exe=f"/bin/p{pid}")
        e.process_for(rec(pid))
    e.process_for(rec(1))  # touch pid 1: now pid 2 is the oldest
    proc.add(4, exe="/bin/p4")
    e.process_for(rec(4))
    assert len(e) == 3
    assert sorted(e._cache) == [1, 3, 4]
    assert e.stats["evicted"] == 1
    for pid in range(100, 200):  # churn: many short-lived pids never grow the cache
        e.process_for(exec_rec(pid, "/bin/true", ["true"]))
    assert len(e) == 3
    assert e.stats["evicted"] == 101


def test_never_raises(proc, tmp_path):
    def broken_lookup(uid):
        raise RuntimeError("nss down")

    proc.add(40, exe="/bin/x")
    e = Enricher(str(tmp_path / "proc"), str(tmp_path / "cgroup"), broken_lookup)
    p = e.process_for(rec(40, uid=1000, gid=1000, comm="x"))
    assert (p.pid, p.uid, p.comm, p.exe, p.user) == (40, 1000, "x", "/bin/x", "")
    assert e.stats["user_lookup_errors"] == 1
    # anything unexpected deeper down still yields the record's own fields
    e._cgroups = None  # type: ignore[assignment]
    p = e.process_for(rec(40, uid=1000, gid=1000, comm="x", cgroup_id=5))
    assert (p.pid, p.uid, p.gid, p.comm) == (40, 1000, 1000, "x")
    assert e.stats["internal_errors"] == 1


def test_malformed_proc_files_are_counted(proc, enricher):
    proc.add(41, exe="/bin/ok", cmdline=["ok"])
    proc.write(41, "status", "Name:\tok\n")  # no PPid/Uid lines
    p = enricher.process_for(rec(41))
    assert (p.exe, list(p.cmdline), p.uid, p.user) == ("/bin/ok", ["ok"], 0, "")
    assert enricher.stats["errors"] == 1


def test_missing_exe_link_is_counted(proc, enricher):
    proc.add(42, exe=None, cmdline=[], comm="kworker/0:1")  # kernel-thread-like
    p = enricher.process_for(rec(42))
    assert (p.exe, list(p.cmdline), p.comm) == ("", [], "kworker/0:1")
    assert enricher.stats["vanished"] == 1


def test_node_level_record_reads_nothing(enricher):
    p = enricher.process_for(Record(type="agent.health", wall_ns=1,
                                    payload=events_pb2.AgentHealth()))
    assert p == events_pb2.Process()
    assert len(enricher) == 0
    assert sum(enricher.stats.values()) == 0


def test_bad_utf8_does_not_break_protobuf(proc, enricher):
    proc.add(43)
    proc.write(43, "cmdline", b"python3\0caf\xe9\0")
    p = enricher.process_for(rec(43))
    assert list(p.cmdline) == ["python3", "caf\ufffd"]
    assert p.SerializeToString()


def test_pwd_lookup_caches_hits_and_misses(monkeypatch):
    calls = []
    import pwd

    real = pwd.getpwuid

    def counting(uid):
        calls.append(uid)
        return real(uid)

    monkeypatch.setattr(pwd, "getpwuid", counting)
    lookup = PwdUserLookup()
    assert lookup(0) == "root"
    assert lookup(0) == "root"
    assert lookup(2**31 - 7) == ""
    assert lookup(2**31 - 7) == ""
    assert calls == [0, 2**31 - 7]


def test_proc_exe_wins_over_a_symlinked_exec_filename(proc, enricher):
    # a venv's bin/python is a symlink; the kernel's resolved binary is the exe
    proc.add(30, exe="/usr/bin/python3.11")
    p = enricher.process_for(exec_rec(30, "/opt/venv/bin/python", ["python", "train.py"]))
    assert (p.exe, list(p.cmdline)) == ("/usr/bin/python3.11", ["python", "train.py"])


def test_symlinked_exec_filename_is_resolved_when_proc_is_gone(enricher, tmp_path):
    real = tmp_path / "python3.11"
    real.write_text("")
    link = tmp_path / "python"
    link.symlink_to(real)
    assert enricher.process_for(exec_rec(31, str(link), ["python"])).exe == str(real)


def test_a_reaped_target_is_named_from_the_agents_memory(tmp_path, enricher):
    from agent.sensors.process import TargetIdentity

    # the target opened a GPU (an event the enricher saw), then was killed and reaped
    enricher.process_for(exec_rec(700, "/usr/bin/python3", ["python3", "train.py"],
                                  uid=1001, gid=1001, comm="python3", ppid=1))
    targets = TargetIdentity(str(tmp_path / "proc"), USERS.get)
    assert targets(700) == ("", "")  # /proc has nothing, and nothing remembered yet
    targets.remembered = enricher.identity_of
    assert targets(700) == ("bob", "python3")
    assert targets(701) == ("", "")  # never seen: unknown, not guessed
