"""More of the #7 playbook, with real processes under a real eBPF agent: who may use
the GPUs, memory written into another user's GPU job, and the system-wide preload
list. A collector of its own, whose operator rule file allows only root on GPUs
(the shipped gpu_users list is empty: the rule is inert until an operator fills it).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.capabilities import require, require_bpf
from tests.integration.harness import (
    AS_NOBODY,
    Agent,
    Collector,
    TestPki,
    null_device,
    ready_agent,
)
from tests.integration.test_playbook import (
    _child,
    _finish,
    alive,
    findings,
    wait_finding,
)

pytestmark = [pytest.mark.bpf, pytest.mark.integration]

NODE = "pb-access"
PYTHON = os.path.realpath(sys.executable)
PRELOAD = Path("/etc/ld.so.preload")

# Opens the GPU node and lives until stdin closes.
GPU_HOLDER = """
import os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
print("open", flush=True)
sys.stdin.read()
"""

# A GPU holder with a buffer at a known address, for the writer below.
GPU_TARGET = """
import ctypes as ct, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
buf = ct.create_string_buffer(b"weights!" * 8)
print(ct.addressof(buf), flush=True)
sys.stdin.read()
"""

# Writes 64 bytes into process argv[1] at address argv[2] (process_vm_writev).
VM_WRITER = """
import ctypes as ct, sys
class Iov(ct.Structure):
    _fields_ = [("base", ct.c_void_p), ("len", ct.c_size_t)]
libc = ct.CDLL(None, use_errno=True)
libc.process_vm_writev.restype = ct.c_ssize_t
src = ct.create_string_buffer(b"X" * 64)
local, remote = Iov(ct.addressof(src), 64), Iov(int(sys.argv[2]), 64)
n = libc.process_vm_writev(int(sys.argv[1]), ct.byref(local), 1, ct.byref(remote), 1, 0)
assert n == 64, ct.get_errno()
print("written", flush=True)
sys.stdin.read()
"""


@pytest.fixture(scope="module")
def collector(tmp_path_factory: pytest.TempPathFactory, pki: TestPki) -> Iterator[Collector]:
    rules = tmp_path_factory.mktemp("operator-rules")
    (rules / "site.yaml").write_text("lists:\n  gpu_users: [root]\n")
    col = Collector(tmp_path_factory.mktemp("pb-access") / "events.db", "--rules", str(rules),
                    pki=pki)
    yield col
    col.stop()


@pytest.fixture(scope="module")
def gpu_node() -> Iterator[Path]:
    with null_device(Path(f"/dev/nvidia-gpuaudit-access-{os.getpid()}")) as path:
        yield path


@pytest.fixture(scope="module")
def agent(collector: Collector, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    require_bpf()
    a = ready_agent(collector, NODE, "ebpf", tmp_path_factory.mktemp("pb-access-agent") / "log")
    yield a
    a.stop()


def about(pid: int):  # type: ignore[no-untyped-def]
    return lambda f: f.get("process", {}).get("pid") == pid


def test_a_user_not_allowed_on_gpus_opens_one(collector: Collector, agent: Agent,
                                              gpu_node: Path) -> None:
    with alive(GPU_HOLDER, str(gpu_node), done="open") as allowed, \
            alive(GPU_HOLDER, str(gpu_node), done="open", **AS_NOBODY) as intruder:
        f = wait_finding(collector, "gpu-open-user-not-allowed", about(intruder.pid))
    assert (f["severity"], f["node"], f["process"]["user"]) == ("high", NODE, "nobody")
    assert str(gpu_node) in f["summary"]
    # root is on the operator's list: its open raised nothing
    assert not [g for g in findings(collector)
                if g["rule"] == "gpu-open-user-not-allowed" and about(allowed.pid)(g)]


def test_memory_written_into_another_users_gpu_job(collector: Collector, agent: Agent,
                                                   gpu_node: Path) -> None:
    target = _child([PYTHON, "-c", GPU_TARGET, str(gpu_node)], **AS_NOBODY)
    try:
        assert target.stdout is not None
        address = target.stdout.readline().strip()
        with alive(VM_WRITER, str(target.pid), address, done="written") as writer:
            f = wait_finding(collector, "process-vm-write", about(writer.pid))
    finally:
        _finish(target)
    assert (f["severity"], f["node"], f["process"]["user"]) == ("high", NODE, "root")
    assert f["process"]["exe"] == PYTHON


def test_the_system_wide_preload_list_written(collector: Collector, agent: Agent) -> None:
    # Only where the file does not exist: an empty list preloads nothing, and
    # the test removes it again. A host that has one is not touched.
    require(not PRELOAD.exists(), f"{PRELOAD} exists on this host; not touching it")
    try:
        with alive("open('/etc/ld.so.preload', 'w').close(); print('written', flush=True);"
                   " import sys; sys.stdin.read()", done="written") as writer:
            f = wait_finding(collector, "file-ld-preload-config", about(writer.pid))
    finally:
        PRELOAD.unlink(missing_ok=True)
    assert (f["severity"], f["node"], f["process"]["user"]) == ("critical", NODE, "root")
