"""cgroup identity: cgroup v2 id -> path, and what a path says about its owner.

The kernel side only knows ``bpf_get_current_cgroup_id()``: the id of the
task's cgroup in the v2 (unified) hierarchy, which equals the inode number of
that cgroup's directory in cgroupfs. :class:`CgroupIdMap` turns ids back into
paths by walking the cgroup2 mount. The pure parsers below then read the path
the way container runtimes, the kubelet and Slurm lay it out.

Paths are relative to the cgroup2 mount (``/`` is the root cgroup), which is
also what ``/proc/<pid>/cgroup`` shows to a reader in the host cgroup
namespace -- the agent must run there for the two to agree.
"""

from __future__ import annotations

import functools
import os
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

# --------------------------------------------------------------------------
# Pure parsers (table-tested in tests/unit/test_enrich_cgroups.py)
# --------------------------------------------------------------------------

_HEX64 = r"[0-9a-f]{64}"
# One regex per path component, innermost match wins (docker-in-docker etc.).
# "crio-conmon-<id>" / "libpod-conmon-<id>" hold the runtime monitor, not the
# container, and do not match because "conmon-" is not hex.
_CONTAINER_RE = re.compile(
    rf"(?:docker-|cri-containerd-|crio-)({_HEX64})\.scope"  # systemd cgroup driver
    rf"|libpod-({_HEX64})(?:\.scope)?"  # podman, systemd and cgroupfs managers
    rf"|({_HEX64})"  # cgroupfs driver: /docker/<id>, /kubepods/.../pod<uid>/<id>
)
_UUID = r"[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}"
# Static (mirror) pods have a 32-hex config hash as their UID instead of a UUID.
_POD_UID = rf"{_UUID}|[0-9a-f]{{32}}"
# systemd driver: kubepods-burstable-pod<uid with '_'>.slice (systemd reserves '-').
_POD_SLICE_RE = re.compile(rf"kubepods(?:-[a-z]+)?-pod({_POD_UID})\.slice")
# cgroupfs driver: /kubepods/[burstable|besteffort/]pod<uid>
_POD_DIR_RE = re.compile(rf"pod({_POD_UID})")
_SLURM_JOB_RE = re.compile(r"job_(\d+)")


@dataclass(frozen=True, slots=True)
class CgroupIdentity:
    """What a cgroup path reveals about its owner; "" where it reveals nothing."""

    container_id: str = ""
    pod: str = ""
    slurm_job: str = ""

    def merged(self, other: CgroupIdentity) -> CgroupIdentity:
        """Fill this identity's empty fields from ``other``."""
        return CgroupIdentity(
            self.container_id or other.container_id,
            self.pod or other.pod,
            self.slurm_job or other.slurm_job,
        )


def _components(path: str) -> list[str]:
    return [c for c in path.split("/") if c]


def container_id_from_path(path: str) -> str:
    """Container id (64 hex) from a cgroup path, innermost container first."""
    for comp in reversed(_components(path)):
        m = _CONTAINER_RE.fullmatch(comp)
        if m:
            return next(g for g in m.groups() if g)
    return ""


def pod_from_path(path: str) -> str:
    """Kubernetes pod UID (with dashes) from a cgroup path."""
    comps = _components(path)
    for i, comp in enumerate(comps):
        m = _POD_SLICE_RE.fullmatch(comp)
        # the bare "pod<uid>" form only counts below a kubepods directory
        if m is None and any(c.startswith("kubepods") for c in comps[:i]):
            m = _POD_DIR_RE.fullmatch(comp)
        if m:
            return m.group(1).replace("_", "-")
    return ""


def slurm_job_from_path(path: str) -> str:
    """Slurm job id from a cgroup path.

    cgroup v2 (Slurm >= 22.05): /system.slice/slurmstepd.scope/job_42/step_0/user/task_0
    (multiple-slurmd setups prefix the scope with the node name); cgroup v1:
    /slurm/uid_1000/job_42/step_0. A ``job_<N>`` component only counts below a
    component naming slurm, so unrelated ``job_*`` units are not mistaken.
    """
    comps = _components(path)
    for i, comp in enumerate(comps):
        m = _SLURM_JOB_RE.fullmatch(comp)
        if m and any("slurm" in c for c in comps[:i]):
            return m.group(1)
    return ""


@functools.lru_cache(maxsize=4096)
def identity_from_path(path: str) -> CgroupIdentity:
    """All three parsers at once; memoised because few distinct paths recur."""
    return CgroupIdentity(
        container_id_from_path(path), pod_from_path(path), slurm_job_from_path(path)
    )


def parse_proc_cgroup(text: str) -> tuple[str, tuple[str, ...]]:
    """Split ``/proc/<pid>/cgroup`` into (v2 path, non-root v1 paths).

    Lines are ``hierarchy-id:controllers:path``; the v2 line is ``0::path``.
    Hybrid hosts (v1 controllers + a v2 hierarchy) may keep Slurm or
    container information only in the v1 paths, hence the second value.
    """
    v2 = ""
    v1: list[str] = []
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        # v2 shows a removed cgroup with this suffix (kernel proc_cgroup_show)
        path = parts[2].removesuffix(" (deleted)")
        if parts[0] == "0" and parts[1] == "":
            v2 = path
        elif path not in ("", "/") and path not in v1:
            v1.append(path)
    return v2, tuple(v1)


# --------------------------------------------------------------------------
# cgroup v2 id -> path
# --------------------------------------------------------------------------


def find_cgroup2_root(cgroup_root: str) -> str | None:
    """The cgroup2 mount at or under ``cgroup_root``, or None on a v1-only host.

    Only a cgroup2 tree may be scanned: v1 hierarchies number their inodes
    independently, so their inode numbers would alias real v2 ids. A cgroup2
    root is recognised by ``cgroup.controllers``, which v1 does not have.
    Hybrid systemd hosts mount it at ``<root>/unified``.
    """
    for cand in (cgroup_root, os.path.join(cgroup_root, "unified")):
        if os.path.exists(os.path.join(cand, "cgroup.controllers")):
            return cand
    return None


class CgroupIdMap:
    """Cached cgroup v2 id -> path map.

    A miss first checks the caller's hint (the pid's path from /proc, one stat),
    then rescans the whole tree -- but no more than once per
    ``min_rescan_interval_s``, so a burst of events from a cgroup that is
    already gone cannot turn into a burst of tree walks.
    """

    def __init__(
        self,
        cgroup_root: str = "/sys/fs/cgroup",
        *,
        min_rescan_interval_s: float = 1.0,
        max_entries: int = 262144,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._cgroup_root = cgroup_root
        self._root: str | None = None
        self._root_known = False
        self._interval = min_rescan_interval_s
        self._max_entries = max_entries
        self._monotonic = monotonic
        self._next_scan = float("-inf")
        self._paths: dict[int, str] = {}
        # keys: scans, hint_hits, misses, scan_errors, no_cgroup2
        self.stats: Counter[str] = Counter()

    def path_for(self, cgroup_id: int, hint: str = "") -> str:
        """Path of cgroup ``cgroup_id`` ("/" for the root), or "" if unknown."""
        path = self._paths.get(cgroup_id)
        if path is not None:
            return path
        root = self._v2_root()
        if root is None:
            return ""
        if hint and self._matches(root, hint, cgroup_id):
            self.stats["hint_hits"] += 1
            self._add(cgroup_id, hint)
            return hint
        now = self._monotonic()
        if now >= self._next_scan:
            self._next_scan = now + self._interval
            self._paths = self._scan(root)
            path = self._paths.get(cgroup_id)
            if path is not None:
                return path
        self.stats["misses"] += 1
        return ""

    def _v2_root(self) -> str | None:
        if not self._root_known:
            self._root = find_cgroup2_root(self._cgroup_root)
            self._root_known = True
            if self._root is None:
                self.stats["no_cgroup2"] += 1
        return self._root

    @staticmethod
    def _matches(root: str, path: str, cgroup_id: int) -> bool:
        try:
            return os.stat(root + path).st_ino == cgroup_id
        except OSError:
            return False

    def _add(self, cgroup_id: int, path: str) -> None:
        if len(self._paths) >= self._max_entries:
            self._paths.clear()  # cheap bound; the next miss rescans anyway
        self._paths[cgroup_id] = path

    def _scan(self, root: str) -> dict[int, str]:
        """Walk the cgroup2 tree: {directory inode: path relative to root}."""
        self.stats["scans"] += 1
        try:
            paths = {os.stat(root).st_ino: "/"}
        except OSError:
            self.stats["scan_errors"] += 1
            return {}
        stack = [(root, "")]
        while stack:
            dirpath, rel = stack.pop()
            try:
                with os.scandir(dirpath) as it:
                    for entry in it:
                        if entry.is_dir(follow_symlinks=False):
                            sub = f"{rel}/{entry.name}"
                            # d_ino from readdir == st_ino on kernfs: no stat per cgroup
                            paths[entry.inode()] = sub
                            stack.append((entry.path, sub))
            except OSError:  # a cgroup removed mid-walk
                self.stats["scan_errors"] += 1
        return paths
