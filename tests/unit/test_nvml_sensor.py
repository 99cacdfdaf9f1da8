"""The NVML sensor (agent/gpu) against the fake libnvidia-ml.so through the real pynvml.

The scenario: GPU 0 plain with accounting on, GPU 1 in MIG mode with two MIG
devices. Tests rewrite the scenario between polls (the fake re-reads it) to
make processes appear and leave, Xids fire and calls fail.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pynvml
import pytest

from agent.gpu.nvml import open_nvml
from agent.gpu.processes import ProcessTracker
from agent.gpu.sensor import NvmlSensor
from agent.queue import DroppingQueue
from agent.record import Record
from gpuaudit.v1 import events_pb2
from tests import fakenvml

GIB = 1 << 30
NOT_SUPPORTED, NO_PERMISSION, FUNCTION_NOT_FOUND = 3, 4, 13


@pytest.fixture(scope="session")
def fake_lib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fakenvml.build(tmp_path_factory.mktemp("fakenvml"))


@pytest.fixture
def scenario(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[fakenvml.Scenario]:
    """Two GPUs (one MIG), no processes yet; pynvml's library restored afterwards."""
    monkeypatch.setattr(pynvml, "nvmlLib", pynvml.nvmlLib)  # undone at teardown
    sc = fakenvml.Scenario(tmp_path / "nvml.txt")
    sc.gpu(index=0, uuid="GPU-aaaa", serial="1650123456789", name="NVIDIA H100 80GB HBM3",
           pci="00000000:18:00.0", minor=0, mem=80 * GIB, persistence=1, accounting=1)
    sc.gpu(index=1, uuid="GPU-bbbb", serial="1650999999999", name="NVIDIA A100-SXM4-40GB",
           pci="00000000:3B:00.0", minor=1, mem=40 * GIB, mig=1, compute=3)
    sc.mig(gpu=1, index=0, uuid="MIG-1111", gi=1, ci=0, mem=10 * GIB)
    sc.mig(gpu=1, index=2, uuid="MIG-2222", gi=2, ci=0, mem=20 * GIB)
    monkeypatch.setenv(fakenvml.ENV_VAR, str(sc.write()))
    yield sc
    pynvml._nvmlGetFunctionPointer_cache.clear()  # pointers into the fake


@pytest.fixture
def sensor(fake_lib: Path, scenario: fakenvml.Scenario) -> Iterator[NvmlSensor]:
    s = NvmlSensor(library=str(fake_lib), opened=lambda pid: pid == 1234, xid_timeout_ms=50)
    assert s.start(), s.status()
    yield s
    s.close()


def payloads(records: list[Record], type_: str) -> list[Any]:
    """The payload messages, after checking every record is of ``type_``."""
    assert all(r.type == type_ for r in records), [r.type for r in records]
    return [r.payload for r in records]


def pl(rec: Record | None) -> Any:
    """A record's payload, typed loosely for field access in asserts."""
    assert rec is not None
    return rec.payload


# -- off ----------------------------------------------------------------------
def test_no_library_turns_the_sensor_off_with_the_reason(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pynvml, "nvmlLib", pynvml.nvmlLib)
    missing = tmp_path / "libnvidia-ml.so.1"
    s = NvmlSensor(library=str(missing))
    assert s.start() is False
    status = s.status()
    assert (status.name, status.state) == ("nvml", "off")
    assert f"cannot load {missing}" in status.detail
    assert s.poll() == []
    inbox: DroppingQueue[Record] = DroppingQueue(8)
    s.xid_loop(inbox)(threading.Event())  # returns at once: nothing to wait on
    assert inbox.qsize() == 0


def test_failing_nvml_init_is_off_not_an_error(fake_lib: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pynvml, "nvmlLib", pynvml.nvmlLib)
    monkeypatch.delenv(fakenvml.ENV_VAR, raising=False)  # the fake then says DRIVER_NOT_LOADED
    handle, reason = open_nvml(str(fake_lib))
    assert handle is None
    assert reason == f"nvmlInit failed with {fake_lib}: DRIVER_NOT_LOADED (Driver Not Loaded)"


# -- gpu.device ----------------------------------------------------------------
def test_inventory_two_gpus_one_in_mig_mode(sensor: NvmlSensor) -> None:
    assert sensor.devices is not None
    gpu0, gpu1 = payloads(sensor.devices.poll(), "gpu.device")
    common: dict[str, Any] = dict(driver_version="550.54.15", cuda_driver_version="12.4",
                                  change="start")
    assert gpu0 == events_pb2.GpuDevice(
        index=0, minor_number=0, uuid="GPU-aaaa", serial="1650123456789",
        name="NVIDIA H100 80GB HBM3", pci_bus_id="00000000:18:00.0", memory_total=80 * GIB,
        persistence_mode="enabled", compute_mode="default", mig_mode="disabled", **common)
    assert gpu1 == events_pb2.GpuDevice(
        index=1, minor_number=1, uuid="GPU-bbbb", serial="1650999999999",
        name="NVIDIA A100-SXM4-40GB", pci_bus_id="00000000:3B:00.0", memory_total=40 * GIB,
        persistence_mode="disabled", compute_mode="exclusive_process", mig_mode="enabled",
        mig_devices=[
            events_pb2.MigDevice(index=0, uuid="MIG-1111", gpu_instance_id=1,
                                 compute_instance_id=0, memory_total=10 * GIB),
            events_pb2.MigDevice(index=2, uuid="MIG-2222", gpu_instance_id=2,
                                 compute_instance_id=0, memory_total=20 * GIB),
        ], **common)
    assert sensor.status() == events_pb2.SensorStatus(name="nvml", state="ok")


def test_device_event_again_only_when_it_changed(sensor: NvmlSensor,
                                                 scenario: fakenvml.Scenario) -> None:
    assert sensor.devices is not None
    assert len(sensor.devices.poll()) == 2
    assert sensor.devices.poll() == []
    scenario.drop("mig", uuid="MIG-2222").write()  # GPU 1 re-partitioned
    (changed,) = payloads(sensor.devices.poll(), "gpu.device")
    assert (changed.index, changed.change) == (1, "changed")
    assert [m.uuid for m in changed.mig_devices] == ["MIG-1111"]
    assert sensor.devices.poll() == []


# -- gpu.process ---------------------------------------------------------------
class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_process_appears_runs_and_leaves(sensor: NvmlSensor,
                                         scenario: fakenvml.Scenario) -> None:
    assert sensor.nv is not None
    clock = FakeClock()
    tracker = ProcessTracker(sensor.nv, opened=lambda pid: pid == 1234, running_every_s=60,
                             monotonic=clock)
    assert tracker.poll() == []
    scenario.proc(gpu=0, pid=1234, mem=3 << 20).util(gpu=0, pid=1234, sm=55, mem=12)
    scenario.proc(gpu=1, mig=2, pid=777, mem=5 << 20, kind="graphics").write()
    recs = tracker.poll()
    assert [r.pid for r in recs] == [1234, 777]
    assert payloads(recs, "gpu.process") == [
        events_pb2.GpuProcess(state="appeared", gpu_index=0, gpu_uuid="GPU-aaaa", kind="compute",
                              used_memory=3 << 20, sm_util=55, mem_util=12, seen_open=True),
        events_pb2.GpuProcess(state="appeared", gpu_index=1, gpu_uuid="GPU-bbbb",
                              mig_uuid="MIG-2222", kind="graphics", used_memory=5 << 20,
                              sm_util=-1, mem_util=-1, seen_open=False),
    ]
    clock.t += 30
    assert tracker.poll() == []  # still there, not yet due for "running"
    clock.t += 31
    assert [(r.pid, pl(r).state) for r in tracker.poll()] == [
        (1234, "running"), (777, "running")]
    scenario.drop("proc", pid=1234).write()
    (left,) = payloads(tracker.poll(), "gpu.process")
    assert (left.state, left.gpu_uuid, left.used_memory, left.seen_open) == (
        "left", "GPU-aaaa", 3 << 20, True)
    assert tracker.poll() == []


def test_accounting_reports_a_process_missed_between_polls_once(
        sensor: NvmlSensor, scenario: fakenvml.Scenario) -> None:
    assert sensor.nv is not None
    # Ended before the agent started: the first look is a baseline, not news.
    scenario.acct(gpu=0, pid=50, maxmem=1 << 20, time=10, start=1).write()
    tracker = ProcessTracker(sensor.nv)
    assert tracker.poll() == []
    # 60 ran and ended between two polls; 61 was seen by polling, then ended.
    scenario.proc(gpu=0, pid=61, mem=1 << 20).acct(gpu=0, pid=61, running=1, start=3).write()
    assert [pl(r).state for r in tracker.poll()] == ["appeared"]
    scenario.drop("proc", pid=61).drop("acct", pid=61)
    scenario.acct(gpu=0, pid=61, maxmem=1 << 20, time=900, start=3)
    scenario.acct(gpu=0, pid=60, maxmem=7 << 20, time=1500, start=2).write()
    recs = tracker.poll()
    assert [(r.pid, pl(r).state) for r in recs] == [
        (61, "left"), (60, "accounted")]
    assert recs[1].payload == events_pb2.GpuProcess(
        state="accounted", gpu_index=0, gpu_uuid="GPU-aaaa", sm_util=-1, mem_util=-1,
        max_memory=7 << 20, gpu_time_ms=1500)
    assert tracker.poll() == []


# -- gpu.xid -------------------------------------------------------------------
def test_xid_is_emitted_once(sensor: NvmlSensor, scenario: fakenvml.Scenario) -> None:
    inbox: DroppingQueue[Record] = DroppingQueue(16)
    stop = threading.Event()
    thread = threading.Thread(target=sensor.xid_loop(inbox), args=(stop,))
    thread.start()
    try:
        scenario.xid(gpu=1, code=79, id=1).write()
        rec = inbox.get(timeout=10)
        # The event was delivered; give the thread more waits to (wrongly) repeat it.
        assert sensor.xid is not None
        for _ in range(3):
            assert sensor.xid.wait_once() is None
    finally:
        stop.set()
        thread.join(timeout=10)
    assert rec is not None and rec.type == "gpu.xid" and rec.pid == 0
    assert rec.payload == events_pb2.GpuXid(gpu_index=1, gpu_uuid="GPU-bbbb", event="xid", xid=79,
                                            gpu_instance_id=-1, compute_instance_id=-1)
    assert inbox.qsize() == 0
    assert not thread.is_alive()


# -- degraded --------------------------------------------------------------------
def test_not_supported_degrades_only_that_field_and_is_named(
        fake_lib: Path, scenario: fakenvml.Scenario) -> None:
    scenario.fail("nvmlDeviceGetSerial", NOT_SUPPORTED, gpu=0)
    scenario.fail("nvmlDeviceGetComputeRunningProcesses_v3", NO_PERMISSION, gpu=0)
    scenario.proc(gpu=0, pid=10, mem=1 << 20, kind="graphics").write()
    s = NvmlSensor(library=str(fake_lib))
    assert s.start()
    try:
        recs = s.poll()
        gpu0, gpu1 = (pl(r) for r in recs if r.type == "gpu.device")
        assert (gpu0.serial, list(gpu0.unavailable)) == ("", ["serial: NOT_SUPPORTED"])
        assert (gpu0.uuid, gpu0.memory_total, gpu0.persistence_mode) == ("GPU-aaaa", 80 * GIB,
                                                                         "enabled")
        assert (gpu1.serial, list(gpu1.unavailable)) == ("1650999999999", [])
        # The graphics list on the same GPU still works.
        assert [(r.pid, pl(r).kind) for r in recs if r.type == "gpu.process"] == [
            (10, "graphics")]
        assert s.status() == events_pb2.SensorStatus(
            name="nvml", state="degraded",
            detail="unavailable: gpu0 compute_processes: NO_PERMISSION; "
                   "gpu0 serial: NOT_SUPPORTED")
        assert [r.type for r in s.poll()] == []  # degraded is stable, not an event per poll
    finally:
        s.close()


def test_old_driver_without_a_function_degrades_not_crashes(
        fake_lib: Path, scenario: fakenvml.Scenario) -> None:
    scenario.fail("nvmlDeviceGetGraphicsRunningProcesses_v3", FUNCTION_NOT_FOUND).write()
    s = NvmlSensor(library=str(fake_lib))
    assert s.start()
    try:
        assert len(s.poll()) == 2
        assert s.status().detail == (
            "unavailable: gpu0 graphics_processes: FUNCTION_NOT_FOUND; "
            "gpu1/mig0 graphics_processes: FUNCTION_NOT_FOUND; "
            "gpu1/mig2 graphics_processes: FUNCTION_NOT_FOUND")
    finally:
        s.close()


def test_poll_loop_feeds_the_inbox_like_the_procfs_poller(sensor: NvmlSensor) -> None:
    inbox: DroppingQueue[Record] = DroppingQueue(16)
    stop = threading.Event()
    stop.set()  # one poll, then return: the first poll runs before the first wait
    sensor.poll_loop(inbox, every_s=60)(stop)
    got = [inbox.get(timeout=1) for _ in range(inbox.qsize())]
    assert [(r.type, pl(r).change) for r in got if r] == [
        ("gpu.device", "start"), ("gpu.device", "start")]


def test_library_pointer_switch_leaves_no_stale_function_pointers(
        fake_lib: Path, scenario: fakenvml.Scenario) -> None:
    handle, reason = open_nvml(str(fake_lib))
    assert handle is not None, reason
    handle.shutdown()
    assert isinstance(pynvml.nvmlLib, ctypes.CDLL)
    assert pynvml.nvmlLib._name == str(fake_lib)
    # Re-opening rebinds cleanly and still answers.
    handle, reason = open_nvml(str(fake_lib))
    assert handle is not None and handle.device_count() == 2
    handle.shutdown()
