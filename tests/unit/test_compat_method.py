"""How the compat runtime tells ia32 calls apart, without root: the kernel's
TS_COMPAT flag at the BTF offset once a self-test proved it, else the register
heuristic, and what agent.health says in each case. The real program and the
real self-test run in tests/integration/test_compat.py."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from agent import btf, compat_abi
from agent.compat_abi import AbiState, Plan, watching
from agent.sensors import compat
from agent.sensors.base import BootClock, SensorContext, SensorHooks

PROBE_PID = 4242
ANSWERED = AbiState("enabled", "int $0x80 getpid() answered", PROBE_PID)
AT_16 = btf.MemberOffset(16, 4)
NO_BTF = btf.MemberOffset(None, None, "cannot load the kernel's BTF: errno 2")
SYS_ENTER = compat.RAW_TRACEPOINT


class FakeTable(dict[Any, Any]):
    """A bcc table: items() of keys with fields, clear()."""

    def __getitem__(self, key: object) -> object:
        return super().__getitem__(getattr(key, "value", key))


class FakeBpf:
    """Records attach/detach; SELFTEST_PROGRAM 'sees' ``selftest_nrs`` of the probe pid."""

    def __init__(self, selftest_nrs: tuple[int, ...] = (), refuse: bytes = b"") -> None:
        self.attached: list[bytes] = []
        self.detached: list[bytes] = []
        self.refuse = refuse
        key = compat.SELFTEST_MAP
        self.tables = {"compat_limited": FakeTable({0: [3, 4]}), key: FakeTable()}
        self.selftest_nrs = selftest_nrs

    def attach_raw_tracepoint(self, tp: bytes, fn_name: bytes) -> None:
        assert tp == SYS_ENTER and len(self.attached) == len(self.detached)  # one at a time
        if fn_name == self.refuse:
            raise Exception(f"Failed to load BPF program {fn_name!r}: No such file")
        self.attached.append(fn_name)
        if fn_name == compat.SELFTEST_PROGRAM:  # what the kernel side notes during the probe
            for nr in self.selftest_nrs:
                self.tables[compat.SELFTEST_MAP][(PROBE_PID, nr)] = 1
            self.tables[compat.SELFTEST_MAP][(1, 5)] = 1  # another process: ignored

    def detach_raw_tracepoint(self, tp: bytes) -> None:
        assert tp == SYS_ENTER
        self.detached.append(tp)

    def __getitem__(self, name: str) -> object:
        table = self.tables[name]
        if name == compat.SELFTEST_MAP:
            return SelftestView(table)
        return table


class SelftestView:
    def __init__(self, table: FakeTable) -> None:
        self.table = table

    def items(self) -> Iterator[tuple[object, object]]:
        for (tgid, nr), v in list(self.table.items()):
            yield SimpleNamespace(tgid=tgid, nr=nr), v

    def clear(self) -> None:
        self.table.clear()


def _runtime(bpf: FakeBpf, where: btf.MemberOffset = AT_16, watch: bool = True,
             abi: AbiState = ANSWERED) -> compat.CompatRuntime:
    ctx = SensorContext(bpf=bpf, inbox=SimpleNamespace(offer=lambda _: True), clock=BootClock(),
                        cfg=SimpleNamespace(compat_watch=watch), opened_gpu=lambda _: False,
                        hooks=SensorHooks())
    return compat.CompatRuntime(ctx, probe=lambda: abi, status_offset=lambda: where)


def _status(runtime: compat.CompatRuntime) -> tuple[str, str]:
    status = runtime.status()
    assert status is not None and status.name == "compat"
    return status.state, status.detail


# -- the method ----------------------------------------------------------------
def test_proved_offset_uses_the_kernel_flag() -> None:
    bpf = FakeBpf(selftest_nrs=(compat.IA32_GETPID,))
    runtime = _runtime(bpf)
    # the self-test program ran around the probe, then the detector replaced it
    assert bpf.attached == [compat.SELFTEST_PROGRAM, compat.TS_PROGRAM]
    assert runtime.method == "ts_compat"
    assert _status(runtime) == ("ok", "watching ia32 syscalls (thread_info.status via BTF)")
    assert bpf.tables[compat.SELFTEST_MAP] == {}  # emptied after reading
    runtime.close()
    runtime.close()
    assert bpf.detached == [SYS_ENTER, SYS_ENTER]


@pytest.mark.parametrize(("nrs", "why"), [
    ((), "self-test: the probe's int $0x80 getpid (pid 4242) was not seen"),
    ((20, 0, 1, 3), "self-test: 3 native syscalls of the probe seen as ia32 (nr 0, 1, 3)"),
    ((20, *range(30, 40)), "self-test: 10 native syscalls of the probe seen as ia32 "
                           "(nr 30, 31, 32, 33, 34, 35, 36, 37 ...)"),
])
def test_failed_self_test_falls_back_to_registers_degraded(nrs: tuple[int, ...],
                                                           why: str) -> None:
    bpf = FakeBpf(selftest_nrs=nrs)
    runtime = _runtime(bpf)
    assert bpf.attached == [compat.SELFTEST_PROGRAM, compat.PROGRAM]
    assert runtime.method == "registers"
    assert _status(runtime) == ("degraded", "watching ia32 syscalls (register heuristic: a "
                                "deliberate int $0x80 can pass as native); " + why)


def test_no_btf_offset_means_registers_without_a_self_test() -> None:
    bpf = FakeBpf()
    runtime = _runtime(bpf, where=NO_BTF)
    assert bpf.attached == [compat.PROGRAM] and runtime.method == "registers"
    state, detail = _status(runtime)
    assert state == "degraded" and detail.endswith(
        "; no thread_info.status offset: cannot load the kernel's BTF: errno 2")


def test_program_built_without_the_offset_means_registers() -> None:
    bpf = FakeBpf(refuse=compat.SELFTEST_PROGRAM)
    runtime = _runtime(bpf)
    assert bpf.attached == [compat.PROGRAM]
    assert "; self-test program not loadable: Failed to load BPF program" in _status(runtime)[1]


def test_probe_that_cannot_answer_cannot_prove_the_offset() -> None:
    abi = AbiState("unknown", "probe failed: mprotect failed: errno 13")
    runtime = _runtime(FakeBpf(selftest_nrs=(20,)), abi=abi)
    state, detail = _status(runtime)
    assert runtime.method == "registers" and state == "degraded"
    assert ("self-test probe gave no int $0x80 to check against (probe failed: mprotect "
            "failed: errno 13)") in detail
    assert detail.endswith("(ABI probe inconclusive: probe failed: mprotect failed: errno 13)")


@pytest.mark.parametrize(("abi", "watch", "state"), [
    (AbiState("disabled"), True, "ok"), (ANSWERED, False, "degraded")])
def test_runtime_not_watching_attaches_nothing(abi: AbiState, watch: bool, state: str) -> None:
    bpf = FakeBpf(selftest_nrs=(20,))
    runtime = _runtime(bpf, watch=watch, abi=abi)
    assert bpf.attached == [] and runtime.method is None and _status(runtime)[0] == state
    runtime.close()
    assert bpf.detached == []


def test_decoders_and_the_rate_limit_counter() -> None:
    runtime = _runtime(FakeBpf(), where=NO_BTF)
    assert runtime.decoders() == {compat.OP_COMPAT_SYSCALL: compat.decode_compat}
    assert runtime.threads() == []
    assert runtime.loss_counters()["compat_rate_limited"]() == 7  # summed over CPUs


# -- the status texts ------------------------------------------------------------
def test_watching_texts() -> None:
    assert watching(ANSWERED, by_btf=True) == Plan(
        True, "ok", "watching ia32 syscalls (thread_info.status via BTF)")
    assert watching(ANSWERED, by_btf=False) == Plan(
        True, "degraded",
        "watching ia32 syscalls (register heuristic: a deliberate int $0x80 can pass as native)")
    odd = AbiState("unknown", "probe failed: x")
    assert watching(odd, True).detail.endswith(" (ABI probe inconclusive: probe failed: x)")
    assert compat_abi.BY_BTF in watching(ANSWERED, True).detail


# -- the offset and the build flag -------------------------------------------------
@pytest.fixture
def fresh_offset() -> Iterator[None]:
    compat.ti_status.cache_clear()
    yield
    compat.ti_status.cache_clear()


@pytest.mark.parametrize(("found", "flags"), [
    (btf.MemberOffset(16, 4), ["-DCOMPAT_TI_STATUS_OFF=16"]),
    (btf.MemberOffset(None, None, "no BTF"), []),
    (btf.MemberOffset(16, 8), []),  # compat.c reads exactly 4 bytes
])
def test_build_flag_from_the_btf_answer(monkeypatch: pytest.MonkeyPatch, fresh_offset: None,
                                        found: btf.MemberOffset, flags: list[str]) -> None:
    asked: list[tuple[str, ...]] = []

    def offset_of(*path: str) -> btf.MemberOffset:
        asked.append(path)
        return found

    monkeypatch.setattr(btf, "offset_of", offset_of)
    assert compat.cflags() == flags
    assert compat.cflags() == flags
    assert asked == [("task_struct", "thread_info", "status")]  # read once per process


def test_wrong_size_says_so(monkeypatch: pytest.MonkeyPatch, fresh_offset: None) -> None:
    monkeypatch.setattr(btf, "offset_of", lambda *_: btf.MemberOffset(16, 8))
    assert compat.ti_status() == btf.MemberOffset(None, 8, "thread_info.status is 8 bytes, not 4")


def test_the_sensor_asks_for_the_build_flag() -> None:
    assert compat.SENSOR.cflags is compat.cflags



def test_a_surprise_in_the_btf_lookup_costs_the_method_not_the_agent(
        monkeypatch: pytest.MonkeyPatch, fresh_offset: None) -> None:
    def broken(*_: str) -> btf.MemberOffset:
        raise RuntimeError("libbpf went away")

    monkeypatch.setattr(btf, "offset_of", broken)
    assert compat.cflags() == []  # the loader builds without the method
    assert compat.ti_status().reason == "BTF lookup failed: RuntimeError('libbpf went away')"
