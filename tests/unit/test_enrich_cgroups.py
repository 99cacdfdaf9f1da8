"""cgroup path parsers (table-driven, real-world layouts) and the id -> path map."""

from __future__ import annotations

import os

import pytest

from agent.cgroups import (
    CgroupIdentity,
    CgroupIdMap,
    container_id_from_path,
    find_cgroup2_root,
    identity_from_path,
    parse_proc_cgroup,
    pod_from_path,
    slurm_job_from_path,
)
from tests.fixtures.cgroup.builder import make_cgroup2

CID = "4f6a1c2e9b0d8a7f3e5c1b2a9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e"
CID2 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
POD = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
POD_US = POD.replace("-", "_")
STATIC_POD = "6c5a2f0e5e1d3f2a9b8c7d6e5f4a3b2c"

# (cgroup path, container_id, pod, slurm_job)
CASES = [
    # --- Docker ---
    (f"/system.slice/docker-{CID}.scope", CID, "", ""),  # v2, systemd driver
    (f"/docker/{CID}", CID, "", ""),  # cgroupfs driver (v1 and v2)
    (f"/system.slice/docker-{CID}.scope/init.scope", CID, "", ""),  # systemd inside
    (f"/docker/{CID}/docker/{CID2}", CID2, "", ""),  # docker-in-docker: innermost
    ("/system.slice/docker.service", "", "", ""),  # the daemon itself
    ("/docker/buildkit", "", "", ""),
    # --- Kubernetes, systemd cgroup driver ---
    (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_US}.slice/"
     f"cri-containerd-{CID}.scope", CID, POD, ""),
    (f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{POD_US}.slice/"
     f"crio-{CID}.scope", CID, POD, ""),
    (f"/kubepods.slice/kubepods-pod{POD_US}.slice/cri-containerd-{CID}.scope",
     CID, POD, ""),  # Guaranteed QoS
    (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_US}.slice",
     "", POD, ""),  # pod-level cgroup (pause / sandbox accounting)
    (f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{POD_US}.slice/"
     f"crio-conmon-{CID}.scope", "", POD, ""),  # CRI-O monitor, not the container
    (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{STATIC_POD}.slice/"
     f"cri-containerd-{CID}.scope", CID, STATIC_POD, ""),  # static pod: hash UID
    # --- Kubernetes, cgroupfs driver ---
    (f"/kubepods/burstable/pod{POD}/{CID}", CID, POD, ""),
    (f"/kubepods/pod{POD}/{CID}", CID, POD, ""),
    (f"/kubepods/besteffort/pod{POD}", "", POD, ""),
    (f"/system.slice/pod{POD}", "", "", ""),  # "pod<uid>" outside kubepods is no pod
    # --- Podman ---
    (f"/machine.slice/libpod-{CID}.scope", CID, "", ""),
    (f"/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{CID}.scope/container",
     CID, "", ""),  # rootless podman, cgroup v2
    (f"/machine.slice/libpod-conmon-{CID}.scope", "", "", ""),
    (f"/libpod_parent/libpod-{CID}", CID, "", ""),  # cgroupfs manager
    # --- Slurm ---
    ("/system.slice/slurmstepd.scope/job_42/step_0/user/task_0", "", "", "42"),  # v2
    ("/system.slice/slurmstepd.scope/job_42/step_batch/user/task_0", "", "", "42"),
    ("/system.slice/slurmstepd.scope/job_1234567/step_extern/user/task_special",
     "", "", "1234567"),
    ("/system.slice/node07_slurmstepd.scope/job_9/step_0", "", "", "9"),  # multiple-slurmd
    ("/slurm/uid_1000/job_42/step_0/task_0", "", "", "42"),  # v1 layout
    ("/slurm_node07/uid_1000/job_5/step_batch", "", "", "5"),  # v1, NodeName in path
    ("/system.slice/slurmstepd.scope/system", "", "", ""),  # slurmstepd's own cgroup
    ("/system.slice/job_42.service", "", "", ""),  # no slurm above: not a Slurm job
    # --- plain hosts ---
    ("/", "", "", ""),
    ("", "", "", ""),
    ("/user.slice/user-1000.slice/session-3.scope", "", "", ""),
    ("/system.slice/sshd.service", "", "", ""),
]


@pytest.mark.parametrize(("path", "container", "pod", "job"), CASES)
def test_parsers(path, container, pod, job):
    assert container_id_from_path(path) == container
    assert pod_from_path(path) == pod
    assert slurm_job_from_path(path) == job
    assert identity_from_path(path) == CgroupIdentity(container, pod, job)


def test_identity_merge_fills_only_empty_fields():
    a = CgroupIdentity(container_id="c1")
    b = CgroupIdentity(container_id="c2", pod="p", slurm_job="7")
    assert a.merged(b) == CgroupIdentity("c1", "p", "7")


@pytest.mark.parametrize(
    ("text", "v2", "v1"),
    [
        ("0::/system.slice/sshd.service\n", "/system.slice/sshd.service", ()),
        (  # hybrid host: Slurm's v1 plugin marks only the v1 hierarchies
            "12:memory:/slurm/uid_1000/job_42/step_0/task_0\n"
            "11:freezer:/slurm/uid_1000/job_42/step_0\n"
            "3:cpu,cpuacct:/\n"
            "1:name=systemd:/system.slice/slurmd.service\n"
            "0::/system.slice/slurmd.service\n",
            "/system.slice/slurmd.service",
            ("/slurm/uid_1000/job_42/step_0/task_0", "/slurm/uid_1000/job_42/step_0",
             "/system.slice/slurmd.service"),
        ),
        ("0::/kubepods.slice/x.scope (deleted)\n", "/kubepods.slice/x.scope", ()),
        (f"4:memory:/docker/{CID}\n", "", (f"/docker/{CID}",)),  # v1-only host
        ("0::/a:b/c\n", "/a:b/c", ()),  # ':' inside a path
        ("garbage\n\n", "", ()),
    ],
)
def test_parse_proc_cgroup(text, v2, v1):
    assert parse_proc_cgroup(text) == (v2, v1)


TREE = [
    "/system.slice/slurmstepd.scope/job_42/step_0/user/task_0",
    f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_US}.slice/"
    f"cri-containerd-{CID}.scope",
    "/user.slice/user-1000.slice",
]


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_id_map_resolves_every_directory(tmp_path):
    ids = make_cgroup2(tmp_path / "cg", TREE)
    m = CgroupIdMap(str(tmp_path / "cg"))
    for path, cgid in ids.items():
        assert m.path_for(cgid) == path
    assert m.stats["scans"] == 1  # one walk served all lookups
    assert ids["/"] != ids["/user.slice"]


def test_id_map_rescan_is_rate_limited(tmp_path):
    root = tmp_path / "cg"
    make_cgroup2(root, TREE)
    clock = FakeClock()
    m = CgroupIdMap(str(root), monotonic=clock)
    assert m.path_for(1) == ""  # forces the first scan; id 1 is not in a tmp tree
    (root / "system.slice" / "new.scope").mkdir()
    new_id = os.stat(root / "system.slice" / "new.scope").st_ino
    for _ in range(50):  # a burst of misses within the interval: no further walks
        assert m.path_for(new_id) == ""
    assert m.stats["scans"] == 1
    assert m.stats["misses"] == 51
    clock.t += 1.0
    assert m.path_for(new_id) == "/system.slice/new.scope"
    assert m.stats["scans"] == 2


def test_id_map_hint_avoids_a_scan(tmp_path):
    root = tmp_path / "cg"
    ids = make_cgroup2(root, TREE)
    m = CgroupIdMap(str(root), monotonic=FakeClock())
    path = "/system.slice/slurmstepd.scope/job_42"
    assert m.path_for(ids[path], hint=path) == path
    assert m.stats["hint_hits"] == 1
    assert m.stats["scans"] == 0
    # a wrong hint (the pid moved) is not trusted: the id is looked up by scanning
    assert m.path_for(ids["/user.slice"], hint=path) == "/user.slice"
    assert m.stats["scans"] == 1


def test_id_map_hybrid_host_uses_unified(tmp_path):
    root = tmp_path / "cg"
    (root / "memory" / "slurm").mkdir(parents=True)  # v1 hierarchy: must not be scanned
    ids = make_cgroup2(root / "unified", ["/system.slice/slurmd.service"])
    assert find_cgroup2_root(str(root)) == str(root / "unified")
    m = CgroupIdMap(str(root))
    assert m.path_for(ids["/system.slice/slurmd.service"]) == "/system.slice/slurmd.service"
    v1_id = os.stat(root / "memory" / "slurm").st_ino
    assert m.path_for(v1_id) == ""


def test_id_map_v1_only_host_maps_nothing(tmp_path):
    (tmp_path / "cg" / "memory").mkdir(parents=True)
    m = CgroupIdMap(str(tmp_path / "cg"))
    assert find_cgroup2_root(str(tmp_path / "cg")) is None
    assert m.path_for(os.stat(tmp_path / "cg" / "memory").st_ino) == ""
    assert m.stats["no_cgroup2"] == 1
    assert m.stats["scans"] == 0


def test_id_map_bound(tmp_path):
    root = tmp_path / "cg"
    ids = make_cgroup2(root, ["/a", "/b", "/c"])
    m = CgroupIdMap(str(root), max_entries=2, monotonic=FakeClock())
    for p in ("/a", "/b", "/c"):
        assert m.path_for(ids[p], hint=p) == p
    assert len(m._paths) <= 2
