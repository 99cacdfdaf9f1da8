"""NVML end to end (issue #5): the real agent loads a fake libnvidia-ml.so through
the real pynvml, and the collector must store exactly the GPU inventory, the
processes on each GPU joined with the agent's own identity (including whether it
saw the process open a /dev/nvidia* node), and the Xid the scenario raises.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpuaudit.v1 import events_pb2
from tests import fakenvml
from tests.capabilities import require_bpf
from tests.integration.harness import Agent, Collector, ready_agent, settle, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.bpf]

NODE = "nvml-node"
GPU0 = "GPU-0a0a0a0a-0000-4000-8000-000000000000"
GPU1 = "GPU-1b1b1b1b-1111-4111-8111-111111111111"
MIG0 = "MIG-2c2c2c2c-2222-4222-8222-222222222222"


@pytest.fixture
def scenario(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> fakenvml.Scenario:
    sc = fakenvml.Scenario(tmp_path / "nvml-scenario.txt")
    sc.gpu(index=0, uuid=GPU0, serial="1650000000001", minor=0, mem=85899345920,
           persistence=1, compute=0, mig=0)
    sc.gpu(index=1, uuid=GPU1, minor=1, mem=85899345920, mig=1)
    sc.mig(gpu=1, index=0, uuid=MIG0, gi=1, ci=0, mem=10737418240)
    sc.fail("nvmlDeviceGetSerial", 3, gpu=1)  # NOT_SUPPORTED: degrade that field only
    sc.write()
    monkeypatch.setenv(fakenvml.ENV_VAR, str(sc.path))
    return sc


@pytest.fixture
def agent(tmp_path: Path, scenario: fakenvml.Scenario, collector: Collector) -> Iterator[Agent]:
    require_bpf()
    lib = fakenvml.build(tmp_path / "lib")
    a = ready_agent(collector, NODE, "ebpf", tmp_path / "agent.log",
                    "--nvml-library", str(lib), "--nvml-poll", "0.3")
    yield a
    a.stop()


def gpu_events(col: Collector, type_: str) -> list[events_pb2.Event]:
    return col.query(types=[type_], nodes=[NODE], newest=False)


def test_inventory_processes_and_xid_are_stored_exactly(
        collector: Collector, agent: Agent, scenario: fakenvml.Scenario,
        null_gpu_node: Path) -> None:
    # a process that really opens a GPU-named node, then holds it
    holder = subprocess.Popen(["/bin/sh", "-c", f"exec 3<{null_gpu_node}; exec sleep 60"])
    stranger = subprocess.Popen(["sleep", "60"])  # on a GPU, never seen opening one
    try:
        wait_for(lambda: collector.query(types=["gpu.open"], nodes=[NODE], pid=holder.pid), 30)
        scenario.proc(gpu=0, pid=holder.pid, mem=1 << 30, kind="compute")
        scenario.proc(gpu=1, mig=0, pid=stranger.pid, mem=2 << 30, kind="compute").write()
        wait_for(lambda: len(gpu_events(collector, "gpu.process")) >= 2, 30)
        scenario.drop("proc", pid=holder.pid).xid(gpu=0, code=79, id=1).write()
        wait_for(lambda: gpu_events(collector, "gpu.xid"), 30)
        wait_for(lambda: any(e.gpu_process.state == "left"
                             for e in gpu_events(collector, "gpu.process")), 30)
        settle(collector, NODE)
        check_devices(collector)
        check_processes(collector, holder.pid, stranger.pid)
        check_xid_and_health(collector)
    finally:
        for p in (holder, stranger):
            p.kill()
            p.wait()


def check_devices(col: Collector) -> None:
    devs = {e.gpu_device.uuid: e.gpu_device for e in gpu_events(col, "gpu.device")}
    assert set(devs) == {GPU0, GPU1}
    g0, g1 = devs[GPU0], devs[GPU1]
    assert (g0.index, g0.minor_number, g0.serial, g0.mig_mode, g0.change) == (
        0, 0, "1650000000001", "disabled", "start")
    assert (g0.driver_version, g0.cuda_driver_version, g0.memory_total) == (
        "550.54.15", "12.4", 85899345920)
    assert (g0.persistence_mode, g0.compute_mode) == ("enabled", "default")
    assert (g1.minor_number, g1.mig_mode, g1.serial) == (1, "enabled", "")
    assert [(m.uuid, m.gpu_instance_id, m.compute_instance_id) for m in g1.mig_devices] == [
        (MIG0, 1, 0)]
    assert any(u.startswith("serial") and "NOT_SUPPORTED" in u for u in g1.unavailable)


def check_processes(col: Collector, holder: int, stranger: int) -> None:
    procs = gpu_events(col, "gpu.process")
    by = {(e.process.pid, e.gpu_process.state): e for e in procs}
    seen = by[(holder, "appeared")]
    assert (seen.gpu_process.gpu_uuid, seen.gpu_process.mig_uuid) == (GPU0, "")
    assert seen.gpu_process.used_memory == 1 << 30
    assert seen.gpu_process.seen_open is True
    assert seen.process.exe == "/usr/bin/sleep" and seen.process.uid == os.getuid()
    unseen = by[(stranger, "appeared")]
    assert (unseen.gpu_process.gpu_uuid, unseen.gpu_process.mig_uuid) == (GPU1, MIG0)
    assert unseen.gpu_process.seen_open is False  # the blind spot the collector should flag
    assert (holder, "left") in by and (stranger, "left") not in by
    appeared = [k for k in by if k[1] == "appeared"]
    assert sorted(appeared) == sorted([(holder, "appeared"), (stranger, "appeared")])


def check_xid_and_health(col: Collector) -> None:
    (xid,) = gpu_events(col, "gpu.xid")
    assert (xid.gpu_xid.gpu_uuid, xid.gpu_xid.event, xid.gpu_xid.xid) == (GPU0, "xid", 79)
    assert not xid.HasField("process")
    time.sleep(1.5)  # a heartbeat after everything above
    (hb,) = col.query(types=["agent.health"], nodes=[NODE], limit=1, newest=True)
    nvml = next(s for s in hb.agent_health.sensors if s.name == "nvml")
    assert nvml.state == "degraded" and "serial" in nvml.detail
    assert {s.name: s.state for s in hb.agent_health.sensors}["gpu_open"] == "ok"
