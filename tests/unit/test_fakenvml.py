"""The real pynvml (nvidia-ml-py) over the fake libnvidia-ml.so built from C.

These tests pin down what the fake answers, through the same ctypes calls the
agent makes, so agent tests built on it exercise real pynvml code paths.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pynvml
import pytest

from tests import fakenvml

GIB = 1 << 30
NA = 0xFFFFFFFF  # NVML's "not available" gpuInstanceId/computeInstanceId on non-MIG GPUs
XID = pynvml.nvmlEventTypeXidCriticalError


@pytest.fixture(scope="session")
def fake_lib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fake library, built once per session into a pytest temp dir."""
    return fakenvml.build(tmp_path_factory.mktemp("fakenvml"))


def two_gpus(path: Path) -> fakenvml.Scenario:
    """GPU 0 plain with accounting on; GPU 1 in MIG mode with two MIG devices."""
    sc = fakenvml.Scenario(path)
    sc.gpu(
        index=0,
        uuid="GPU-aaaa",
        serial="1650123456789",
        name="NVIDIA H100 80GB HBM3",
        pci="00000000:18:00.0",
        minor=0,
        mem=80 * GIB,
        persistence=1,
        compute=0,
        mig=0,
        accounting=1,
    )
    sc.gpu(
        index=1,
        uuid="GPU-bbbb",
        serial="1650999999999",
        name="NVIDIA A100-SXM4-40GB",
        pci="00000000:3B:00.0",
        minor=1,
        mem=40 * GIB,
        mig=1,
    )
    sc.mig(gpu=1, index=0, uuid="MIG-1111", gi=1, ci=0, mem=10 * GIB)
    sc.mig(gpu=1, index=1, uuid="MIG-2222", gi=2, ci=0, mem=20 * GIB)
    sc.proc(gpu=0, pid=1234, mem=1 << 20, name="python train.py")
    sc.proc(gpu=0, pid=4321, mem=2 << 20, kind="graphics")
    sc.proc(gpu=1, mig=0, pid=2345, mem=3 << 20)
    sc.proc(gpu=1, mig=1, pid=3456, mem=4 << 20)
    sc.util(gpu=0, pid=1234, sm=37, mem=12, ts=1000)
    sc.acct(gpu=0, pid=999, maxmem=2048, time=1500, start=111, gpuutil=90, memutil=40)
    sc.acct(gpu=0, pid=1234, maxmem=1 << 20, time=77, start=222, running=1)
    sc.xid(gpu=0, code=79, id=1)
    sc.fail("nvmlDeviceGetSerial", 3, gpu=1)
    return sc


@pytest.fixture
def use_fake(fake_lib: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Point pynvml at the fake, as the agent's --nvml-library does; undo afterwards.

    pynvml caches function pointers by name only, so the cache is cleared on
    both sides: otherwise later tests would call into the fake with nvmlLib unset.
    """
    monkeypatch.setattr(pynvml, "nvmlLib", ctypes.CDLL(str(fake_lib)))
    pynvml._nvmlGetFunctionPointer_cache.clear()
    yield
    pynvml._nvmlGetFunctionPointer_cache.clear()


@pytest.fixture
def scenario(
    use_fake: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[fakenvml.Scenario]:
    """NVML initialised over the two-GPU scenario; yields it for rewriting."""
    sc = two_gpus(tmp_path / "nvml.txt")
    monkeypatch.setenv(fakenvml.ENV_VAR, str(sc.write()))
    pynvml.nvmlInit()
    yield sc
    pynvml.nvmlShutdown()


def handle(index: int) -> Any:
    """pynvml's handle for GPU ``index`` (a ctypes pointer)."""
    return pynvml.nvmlDeviceGetHandleByIndex(index)


def address(h: Any) -> int:
    """Where a device handle points (ctypes pointers compare by identity)."""
    return ctypes.cast(h, ctypes.c_void_p).value or 0


def pids(procs: list[Any]) -> list[int]:
    return [p.pid for p in procs]


def test_system_versions_and_count(scenario: fakenvml.Scenario) -> None:
    assert pynvml.nvmlSystemGetDriverVersion() == "550.54.15"
    assert pynvml.nvmlSystemGetCudaDriverVersion() == 12040
    assert pynvml.nvmlSystemGetCudaDriverVersion_v2() == 12040
    assert pynvml.nvmlDeviceGetCount() == 2


def test_identity_fields(scenario: fakenvml.Scenario) -> None:
    h = handle(0)
    assert pynvml.nvmlDeviceGetUUID(h) == "GPU-aaaa"
    assert pynvml.nvmlDeviceGetName(h) == "NVIDIA H100 80GB HBM3"
    assert pynvml.nvmlDeviceGetSerial(h) == "1650123456789"
    assert pynvml.nvmlDeviceGetMinorNumber(handle(1)) == 1
    assert pynvml.nvmlDeviceGetIndex(handle(1)) == 1
    pci = pynvml.nvmlDeviceGetPciInfo(handle(1))
    assert (pci.busId, pci.busIdLegacy) == ("00000000:3B:00.0", "0000:3B:00.0")
    assert (pci.domain, pci.bus, pci.device) == (0, 0x3B, 0)
    assert pynvml.nvmlDeviceGetPersistenceMode(h) == 1
    assert pynvml.nvmlDeviceGetComputeMode(h) == pynvml.NVML_COMPUTEMODE_DEFAULT
    assert address(pynvml.nvmlDeviceGetHandleByUUID(b"GPU-bbbb")) == address(handle(1))


def test_memory_defaults_to_what_processes_hold(scenario: fakenvml.Scenario) -> None:
    mem = pynvml.nvmlDeviceGetMemoryInfo(handle(0))
    assert (mem.total, mem.used, mem.free) == (80 * GIB, 3 << 20, 80 * GIB - (3 << 20))
    v2 = pynvml.nvmlDeviceGetMemoryInfo(handle(0), version=pynvml.nvmlMemory_v2)
    assert (v2.total, v2.used, v2.reserved) == (80 * GIB, 3 << 20, 0)


def test_configured_call_raises_not_supported(scenario: fakenvml.Scenario) -> None:
    with pytest.raises(pynvml.NVMLError_NotSupported) as err:
        pynvml.nvmlDeviceGetSerial(handle(1))
    assert err.value.value == pynvml.NVML_ERROR_NOT_SUPPORTED
    assert str(err.value) == "Not Supported"
    assert pynvml.nvmlDeviceGetUUID(handle(1)) == "GPU-bbbb"  # only that call on that GPU


def test_mig_devices_handles_and_ids(scenario: fakenvml.Scenario) -> None:
    gpu0, gpu1 = handle(0), handle(1)
    assert pynvml.nvmlDeviceGetMigMode(gpu0) == [0, 0]
    assert pynvml.nvmlDeviceGetMigMode(gpu1) == [1, 1]
    assert pynvml.nvmlDeviceGetMaxMigDeviceCount(gpu1) == 7
    migs = [pynvml.nvmlDeviceGetMigDeviceHandleByIndex(gpu1, i) for i in (0, 1)]
    with pytest.raises(pynvml.NVMLError_NotFound):
        pynvml.nvmlDeviceGetMigDeviceHandleByIndex(gpu1, 2)
    # pynvml returns the c_uint itself here, not an int
    assert pynvml.nvmlDeviceIsMigDeviceHandle(migs[0]).value == 1
    assert pynvml.nvmlDeviceIsMigDeviceHandle(gpu1).value == 0
    assert [pynvml.nvmlDeviceGetUUID(m) for m in migs] == ["MIG-1111", "MIG-2222"]
    assert [pynvml.nvmlDeviceGetGpuInstanceId(m) for m in migs] == [1, 2]
    assert [pynvml.nvmlDeviceGetComputeInstanceId(m) for m in migs] == [0, 0]
    assert [pynvml.nvmlDeviceGetMemoryInfo(m).total for m in migs] == [10 * GIB, 20 * GIB]
    assert pynvml.nvmlDeviceGetName(migs[0]) == "NVIDIA A100-SXM4-40GB MIG"
    parent = pynvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(migs[1])
    assert address(parent) == address(gpu1)
    assert address(pynvml.nvmlDeviceGetHandleByUUID(b"MIG-2222")) == address(migs[1])
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlDeviceGetGpuInstanceId(gpu1)


def test_processes_per_gpu_and_per_mig_device(scenario: fakenvml.Scenario) -> None:
    compute = pynvml.nvmlDeviceGetComputeRunningProcesses(handle(0))
    assert [(p.pid, p.usedGpuMemory, p.gpuInstanceId) for p in compute] == [(1234, 1 << 20, NA)]
    assert pids(pynvml.nvmlDeviceGetGraphicsRunningProcesses(handle(0))) == [4321]
    aggregate = pynvml.nvmlDeviceGetComputeRunningProcesses_v3(handle(1))
    assert [(p.pid, p.gpuInstanceId, p.computeInstanceId) for p in aggregate] == [
        (2345, 1, 0),
        (3456, 2, 0),
    ]
    mig1 = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(handle(1), 1)
    assert pids(pynvml.nvmlDeviceGetComputeRunningProcesses(mig1)) == [3456]
    assert pynvml.nvmlDeviceGetGraphicsRunningProcesses(mig1) == []
    assert pynvml.nvmlSystemGetProcessName(1234) == "python train.py"
    with pytest.raises(pynvml.NVMLError_NotFound):
        pynvml.nvmlSystemGetProcessName(4321)


def test_process_utilization_since_timestamp(scenario: fakenvml.Scenario) -> None:
    samples = pynvml.nvmlDeviceGetProcessUtilization(handle(0), 0)
    assert [(s.pid, s.smUtil, s.memUtil, s.timeStamp) for s in samples] == [(1234, 37, 12, 1000)]
    with pytest.raises(pynvml.NVMLError_NotFound):  # routine: nothing newer than ts 1000
        pynvml.nvmlDeviceGetProcessUtilization(handle(0), 1000)
    mig0 = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(handle(1), 0)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlDeviceGetProcessUtilization(mig0, 0)


def test_accounting(scenario: fakenvml.Scenario) -> None:
    gpu0 = handle(0)
    assert pynvml.nvmlDeviceGetAccountingMode(gpu0) == pynvml.NVML_FEATURE_ENABLED
    assert pynvml.nvmlDeviceGetAccountingMode(handle(1)) == pynvml.NVML_FEATURE_DISABLED  # MIG
    assert pynvml.nvmlDeviceGetAccountingPids(gpu0) == [999, 1234]
    ended = pynvml.nvmlDeviceGetAccountingStats(gpu0, 999)
    assert (ended.maxMemoryUsage, ended.time, ended.startTime, ended.isRunning) == (
        2048,
        1500,
        111,
        0,
    )
    assert (ended.gpuUtilization, ended.memoryUtilization) == (90, 40)
    running = pynvml.nvmlDeviceGetAccountingStats(gpu0, 1234)
    assert (running.isRunning, running.time) == (1, 0)
    with pytest.raises(pynvml.NVMLError_NotFound):
        pynvml.nvmlDeviceGetAccountingStats(gpu0, 5)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlDeviceGetAccountingPids(handle(1))


def test_xid_delivered_once_per_event_set_then_timeout(scenario: fakenvml.Scenario) -> None:
    gpu0 = handle(0)
    assert pynvml.nvmlDeviceGetSupportedEventTypes(gpu0) & XID
    events = pynvml.nvmlEventSetCreate()
    try:
        pynvml.nvmlDeviceRegisterEvents(gpu0, XID, events)
        got = pynvml.nvmlEventSetWait(events, 1000)
        assert (got.eventType, got.eventData) == (XID, 79)
        assert (got.gpuInstanceId, got.computeInstanceId) == (NA, NA)
        assert address(got.device) == address(gpu0)
        with pytest.raises(pynvml.NVMLError_Timeout):
            pynvml.nvmlEventSetWait(events, 0)
        scenario.xid(gpu=0, code=48, id=2).write()
        assert pynvml.nvmlEventSetWait(events, 1000).eventData == 48
    finally:
        pynvml.nvmlEventSetFree(events)


def test_event_not_registered_is_not_delivered(scenario: fakenvml.Scenario) -> None:
    events = pynvml.nvmlEventSetCreate()
    try:
        with pytest.raises(pynvml.NVMLError_NotSupported):  # 0x4000 is not in the GPU's mask
            pynvml.nvmlDeviceRegisterEvents(handle(0), 0x4000, events)
        pynvml.nvmlDeviceRegisterEvents(handle(1), XID, events)  # the Xid is on GPU 0
        with pytest.raises(pynvml.NVMLError_Timeout):
            pynvml.nvmlEventSetWait(events, 0)
    finally:
        pynvml.nvmlEventSetFree(events)


def test_event_thread_waits_while_poll_thread_reads(scenario: fakenvml.Scenario) -> None:
    """One thread blocks in nvmlEventSetWait while another polls and rewrites the
    scenario; the waiter gets the Xid written after it started waiting."""
    scenario.drop("xid").write()
    events = pynvml.nvmlEventSetCreate()
    pynvml.nvmlDeviceRegisterEvents(handle(0), XID, events)
    got: list[int] = []
    started = threading.Event()

    def wait() -> None:
        started.set()
        got.append(pynvml.nvmlEventSetWait(events, 60_000).eventData)

    waiter = threading.Thread(target=wait)
    waiter.start()
    try:
        started.wait()
        for _ in range(50):  # the poll thread is not blocked by the waiter
            assert pids(pynvml.nvmlDeviceGetComputeRunningProcesses(handle(0))) == [1234]
        scenario.xid(gpu=0, code=13, id=7).write()
    finally:
        waiter.join(120)
        pynvml.nvmlEventSetFree(events)
    assert got == [13]


def test_process_appears_then_leaves(scenario: fakenvml.Scenario) -> None:
    gpu0 = handle(0)
    assert pids(pynvml.nvmlDeviceGetComputeRunningProcesses(gpu0)) == [1234]
    scenario.proc(gpu=0, pid=5555, mem=5 << 20).write()
    assert pids(pynvml.nvmlDeviceGetComputeRunningProcesses(gpu0)) == [1234, 5555]
    assert pynvml.nvmlDeviceGetMemoryInfo(gpu0).used == 8 << 20
    scenario.drop("proc", pid=5555).drop("proc", pid=1234).write()
    assert pynvml.nvmlDeviceGetComputeRunningProcesses(gpu0) == []


def test_broken_rewrite_keeps_last_good_state(
    scenario: fakenvml.Scenario, capfd: pytest.CaptureFixture[str]
) -> None:
    scenario.proc(gpu=0, pid=6, colour="red").write()
    assert pids(pynvml.nvmlDeviceGetComputeRunningProcesses(handle(0))) == [1234]
    assert "unknown key 'colour'" in capfd.readouterr().err


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("gpu index=0 uuid=GPU-x bogus=1", "line 3: unknown key 'bogus'"),
        ("proc gpu=4 pid=1", "line 3: gpu=4 is not defined"),
        ("gpu index=1 uuid=GPU-x", "gpu indexes must be 0..N-1"),
        ("gpu index=0 uuid=GPU-x mem=lots", "line 3: mem=lots is not a number"),
        ("frobnicate now=1", "line 3: unknown line type 'frobnicate'"),
    ],
)
def test_bad_scenario_fails_init_and_says_why(
    use_fake: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    line: str,
    message: str,
) -> None:
    path = tmp_path / "bad.txt"
    path.write_text(f"driver 1.2\ncuda 12000\n{line}\n")
    monkeypatch.setenv(fakenvml.ENV_VAR, str(path))
    with pytest.raises(pynvml.NVMLError_Unknown):
        pynvml.nvmlInit()
    assert message in capfd.readouterr().err


def test_init_failures_and_uninitialized_calls(
    use_fake: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(fakenvml.ENV_VAR, raising=False)
    with pytest.raises(pynvml.NVMLError_DriverNotLoaded):
        pynvml.nvmlInit()
    sc = fakenvml.Scenario(tmp_path / "nvml.txt").fail("nvmlInitWithFlags", 9)
    monkeypatch.setenv(fakenvml.ENV_VAR, str(sc.write()))
    with pytest.raises(pynvml.NVMLError_DriverNotLoaded):
        pynvml.nvmlInit()
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        pynvml.nvmlDeviceGetCount()


def test_escaped_values_round_trip(
    use_fake: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sc = fakenvml.Scenario(tmp_path / "nvml.txt", driver="555.1 beta#2")
    sc.gpu(index=0, uuid="GPU-0", serial="S_1", name="Tesla T4 100%").write()
    (tmp_path / "hand.txt").write_text("gpu index=0 uuid=GPU-0 name=NVIDIA_L4  # comment\n")
    monkeypatch.setenv(fakenvml.ENV_VAR, str(sc.path))
    pynvml.nvmlInit()
    try:
        assert pynvml.nvmlSystemGetDriverVersion() == "555.1 beta#2"
        assert pynvml.nvmlDeviceGetName(handle(0)) == "Tesla T4 100%"
        assert pynvml.nvmlDeviceGetSerial(handle(0)) == "S_1"
    finally:
        pynvml.nvmlShutdown()
    monkeypatch.setenv(fakenvml.ENV_VAR, str(tmp_path / "hand.txt"))
    pynvml.nvmlInit()
    try:
        assert pynvml.nvmlDeviceGetName(handle(0)) == "NVIDIA L4"  # bare '_' means space
    finally:
        pynvml.nvmlShutdown()


def test_build_reuses_an_unchanged_library(tmp_path: Path, fake_lib: Path) -> None:
    first = fakenvml.build(tmp_path)
    assert fakenvml.build(tmp_path) == first
    assert first.name == "libnvidia-ml.so.1"


def test_shutdown_ends_a_pending_wait(
    use_fake: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent stops its event thread by shutting NVML down; the wait must return."""
    sc = fakenvml.Scenario(tmp_path / "nvml.txt").gpu(index=0, uuid="GPU-0")
    monkeypatch.setenv(fakenvml.ENV_VAR, str(sc.write()))
    pynvml.nvmlInit()
    events = pynvml.nvmlEventSetCreate()
    pynvml.nvmlDeviceRegisterEvents(handle(0), XID, events)
    errors: list[Exception] = []
    started = threading.Event()

    def wait() -> None:
        started.set()
        try:
            pynvml.nvmlEventSetWait(events, 60_000)
        except pynvml.NVMLError as err:
            errors.append(err)

    waiter = threading.Thread(target=wait)
    waiter.start()
    started.wait()
    pynvml.nvmlShutdown()
    waiter.join(120)
    assert [type(e) for e in errors] == [pynvml.NVMLError_Uninitialized]
