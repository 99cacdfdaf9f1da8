from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.capabilities import require, require_bpf
from tests.integration.harness import (
    Agent,
    Collector,
    TestPki,
    null_device,
    ready_agent,
    session_pki,
)

NVIDIA_MAJOR = 195


@pytest.fixture(scope="session")
def pki() -> TestPki:
    """The session's test PKI: collector and reader certificates, ``pki.node(name)``."""
    return session_pki()


@pytest.fixture(scope="module")
def collector(tmp_path_factory: pytest.TempPathFactory, pki: TestPki) -> Iterator[Collector]:
    col = Collector(tmp_path_factory.mktemp("collector") / "events.db", pki=pki)
    yield col
    col.stop()


@pytest.fixture(scope="module")
def bpf_agent(collector: Collector, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    require_bpf()
    log = tmp_path_factory.mktemp("agent") / "agent.log"
    agent = ready_agent(collector, "it-node", "ebpf", log)
    yield agent
    agent.stop()


@pytest.fixture(scope="module")
def nvidia0() -> Iterator[Path]:
    """A /dev/nvidia0 character node (major 195). Created if absent, and then
    removed afterwards; an existing one (a real GPU node) is left alone."""
    require(os.geteuid() == 0, "needs root to mknod /dev/nvidia0")
    path = Path("/dev/nvidia0")
    created = False
    if not path.exists():
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(NVIDIA_MAJOR, 0))
        os.chmod(path, 0o666)  # mknod applies the umask
        created = True
    yield path
    if created:
        path.unlink()


@pytest.fixture(scope="module")
def null_gpu_node() -> Iterator[Path]:
    """/dev/nvidia-gpuaudit-test: a node under the GPU prefix whose open
    succeeds (it is /dev/null's 1:3), standing in for a GPU with a driver."""
    with null_device(Path("/dev/nvidia-gpuaudit-test")) as path:
        yield path


@pytest.fixture
def nvidia_null_holder(bpf_agent: Agent, null_gpu_node: Path) -> int:
    """pid of a process that opened a GPU node successfully and then exited."""
    proc = subprocess.Popen(["/bin/sh", "-c", f"exec 3<{null_gpu_node}; exit 0"])
    assert proc.wait(30) == 0
    return proc.pid
