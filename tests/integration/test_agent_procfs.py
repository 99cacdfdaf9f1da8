"""Not root -> no eBPF: the agent says so once, falls back to the procfs
poller, and still reports GPU device holders (inventory and new ones)."""

from __future__ import annotations

import pwd
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.sensors.registry import BPF_SENSORS
from tests.capabilities import require
from tests.integration.harness import NOBODY, Agent, Collector, ready_agent, settle, wait_for

pytestmark = pytest.mark.integration

NODE = "procfs-node"


def _holder(path: Path) -> subprocess.Popen[bytes]:
    """A process of nobody's holding `path` open on fd 3 until killed."""
    return subprocess.Popen(["/bin/sh", "-c", f"exec 3<{path}; exec sleep 60"],
                            user=NOBODY.pw_uid, group=NOBODY.pw_gid)


@pytest.fixture(scope="module")
def early_holder(null_gpu_node: Path) -> Iterator[subprocess.Popen[bytes]]:
    p = _holder(null_gpu_node)
    time.sleep(0.3)  # let the shell exec sleep with fd 3 open
    yield p
    p.kill()
    p.wait()


@pytest.fixture(scope="module")
def procfs_agent(collector: Collector, early_holder: subprocess.Popen[bytes],
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    require(pwd.getpwuid(0) is not None and early_holder.pid > 0, "needs root to switch user")
    log = tmp_path_factory.mktemp("procfs-agent") / "agent.log"
    agent = ready_agent(collector, NODE, "procfs", log, user=NOBODY.pw_uid)
    yield agent
    agent.stop()


def test_degradation_is_stated_once_and_in_health(collector: Collector,
                                                  procfs_agent: Agent) -> None:
    settle(collector, NODE)
    out = procfs_agent.output()
    assert out.count("running in procfs mode") == 1
    assert out.count("sensor gpu_open is off: not running as root") == 1
    (hb,) = collector.query(types=["agent.health"], nodes=[NODE], limit=1, newest=True)
    assert hb.agent_health.mode == "procfs"
    states = {s.name: s.state for s in hb.agent_health.sensors}
    ebpf = {s.name for s in BPF_SENSORS}
    assert {n: st for n, st in states.items() if n in ebpf} == dict.fromkeys(ebpf, "off")
    assert set(states) == ebpf | {"nvml"}
    assert out.count("sensor nvml is off") <= 1  # said at most once (no driver here)


def test_holder_from_before_start_is_inventoried(collector: Collector, procfs_agent: Agent,
                                                 early_holder: subprocess.Popen[bytes],
                                                 null_gpu_node: Path) -> None:
    settle(collector, NODE)
    evs = collector.query(types=["gpu.open"], nodes=[NODE], pid=early_holder.pid)
    assert [(e.gpu_open.source, e.gpu_open.path, e.gpu_open.fd) for e in evs] == [
        ("inventory", str(null_gpu_node), 3)]
    assert evs[0].process.user == "nobody"
    assert evs[0].process.exe == "/usr/bin/sleep"


def test_new_holder_is_polled(collector: Collector, procfs_agent: Agent,
                              null_gpu_node: Path) -> None:
    p = _holder(null_gpu_node)
    try:
        evs = wait_for(lambda: collector.query(types=["gpu.open"], nodes=[NODE], pid=p.pid))
        assert [(e.gpu_open.source, e.gpu_open.fd) for e in evs] == [("procfs", 3)]  # type: ignore[union-attr]
    finally:
        p.kill()
        p.wait()
    exits = wait_for(lambda: collector.query(types=["process.exit"], nodes=[NODE], pid=p.pid))
    assert [e.process_exit.held_gpu for e in exits] == [True]  # type: ignore[union-attr]
