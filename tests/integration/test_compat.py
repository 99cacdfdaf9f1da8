"""ia32 syscalls end to end: compiled programs make real `int $0x80` syscalls,
which no syscalls:sys_enter_* tracepoint sees; the real eBPF agent reports them
as process.compat_syscall over real gRPC into the collector's SQLite.

Also: the ABI probe on this machine, and the compat runtime on a real program:
the BTF offset of thread_info.status proved by the start-up self-test (and a
wrong one refused), the register heuristic as the fallback (which a forged
int $0x80 evades), and, turned off, nothing attached and the agent blind.
"""

from __future__ import annotations

import ctypes as ct
import os
import platform
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from agent.btf import MemberOffset
from agent.compat_abi import probe_ia32_abi
from agent.record import Record
from agent.sensors import compat
from agent.sensors.base import BootClock, SensorContext, SensorHooks
from agent.sensors.loader import _compile
from tests.capabilities import require_bpf
from tests.fixtures.compat.build import build
from tests.integration.harness import Agent, Collector, settle

pytestmark = [pytest.mark.bpf, pytest.mark.integration]

NODE = "it-node"
O_WRONLY_CREAT = 0o101
FORGED_RETURN = 0x1_0000_0041  # int80_forged.c: where its int $0x80 returns to

if platform.machine() != "x86_64":
    pytest.skip("the ia32 ABI exists on x86-64 only", allow_module_level=True)


@pytest.fixture(scope="module")
def programs(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    out = tmp_path_factory.mktemp("compat")
    return SimpleNamespace(open=build("int80_open", out), forged=build("int80_forged", out))


def _run(program: Path, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(program), *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr)
    return done


def _compat_events(collector: Collector, pid: int) -> list:
    return collector.query(types=["process.compat_syscall"], pid=pid)


def test_the_ia32_abi_is_enabled_on_this_machine() -> None:
    abi = probe_ia32_abi()
    assert (abi.state, abi.detail) == ("enabled", "int $0x80 getpid() answered")


def test_int80_open_is_reported_with_identity_and_fields(
        collector: Collector, bpf_agent: Agent, programs: SimpleNamespace,
        tmp_path: Path) -> None:
    target = tmp_path / "site-packages-evil.py"
    proc = subprocess.Popen([str(programs.open), str(target)], stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and int(out) >= 0 and target.exists()  # the bypass worked
    settle(collector, NODE)
    events = _compat_events(collector, proc.pid)
    assert sorted((e.process_compat_syscall.nr, e.process_compat_syscall.name)
                  for e in events) == [(5, "open"), (6, "close")]
    (ev,) = [e for e in events if e.process_compat_syscall.nr == 5]
    c = ev.process_compat_syscall
    assert (c.mode, c.cs) == ("int80_in_64bit", 0x33)
    assert (c.args[1], c.args[2]) == (O_WRONLY_CREAT, 0o644)
    assert 0 < c.args[0] < 1 << 32 and c.ip > 0  # the MAP_32BIT path buffer; the int's address
    assert (ev.process.pid, ev.process.tid, ev.process.uid) == (proc.pid, proc.pid, os.getuid())
    assert ev.process.ppid == os.getpid()
    assert ev.process.comm == programs.open.name[:15]
    assert ev.process.exe == str(programs.open)
    assert ev.process.cmdline == [str(programs.open), str(target)]


def test_repeated_calls_are_reported_once_per_process_and_number(
        collector: Collector, bpf_agent: Agent, programs: SimpleNamespace,
        tmp_path: Path) -> None:
    proc = subprocess.Popen([str(programs.open), str(tmp_path / "f"), "23"],
                            stdout=subprocess.PIPE, text=True)
    proc.communicate(timeout=60)
    assert proc.returncode == 0
    settle(collector, NODE)
    events = _compat_events(collector, proc.pid)
    assert sorted(e.process_compat_syscall.name for e in events) == ["close", "open"]


NATIVE_BUSY = """
import os, sys
for i in range(2000):
    os.getppid()
    fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"x")
    os.close(fd)
    os.stat(sys.argv[1])
print(os.getpid())
"""


def test_a_normal_64bit_process_yields_no_compat_event(
        collector: Collector, bpf_agent: Agent, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", NATIVE_BUSY, str(tmp_path / "n")],
                          capture_output=True, text=True, timeout=60, check=True)
    pid = int(proc.stdout)
    settle(collector, NODE)
    # the process ran and was seen (its exec is stored) but made no compat call
    assert collector.query(types=["process.exec"], pid=pid)
    assert _compat_events(collector, pid) == []


def test_forged_native_registers_are_caught_by_the_kernel_flag(
        collector: Collector, bpf_agent: Agent, programs: SimpleNamespace,
        tmp_path: Path) -> None:
    # int $0x80 with rcx == return address and r11 == rflags looks native in
    # pt_regs (it evades the register heuristic: see the fallback test below),
    # but the kernel still set TS_COMPAT for it, which is what the agent reads.
    target = tmp_path / "forged"
    proc = subprocess.Popen([str(programs.forged), str(target)], stdout=subprocess.PIPE)
    proc.communicate(timeout=60)
    assert proc.returncode == 0 and target.exists()  # the forged open worked
    settle(collector, NODE)
    (ev,) = _compat_events(collector, proc.pid)
    c = ev.process_compat_syscall
    assert (c.nr, c.name, c.mode, c.cs) == (5, "open", "int80_in_64bit", 0x33)
    assert c.ip == FORGED_RETURN and c.args[1] == FORGED_RETURN & 0xFFFFFFFF  # the forgery


def test_health_says_the_detector_watches_by_the_kernel_flag(
        collector: Collector, bpf_agent: Agent) -> None:
    settle(collector, NODE)
    health = collector.query(types=["agent.health"], nodes=[NODE], limit=1, newest=True)
    (status,) = [s for s in health[-1].agent_health.sensors if s.name == "compat"]
    # "via BTF" only after the start-up self-test saw the probe's int $0x80 and nothing else
    assert (status.state, status.detail) == (
        "ok", "watching ia32 syscalls (thread_info.status via BTF)")


def test_the_agents_self_test_leaves_no_event(collector: Collector, bpf_agent: Agent) -> None:
    # the self-test's probe (a child of the agent) makes an int $0x80 getpid
    # while the self-test program, which writes no record, is attached
    settle(collector, NODE)
    events = collector.query(types=["process.compat_syscall"], nodes=[NODE])
    assert [e for e in events if e.process.ppid == bpf_agent.proc.pid] == []


# -- the runtime on a real program, without the agent ----------------------
class ListInbox:
    def __init__(self) -> None:
        self.items: list[object] = []

    def offer(self, item: object) -> bool:
        self.items.append(item)
        return True


Build = Callable[[list[str]], Any]


@pytest.fixture
def build_program() -> Iterator[Build]:
    """Compiles compat.c alone with the given extra flags (cleaned up after the test)."""
    require_bpf()
    built: list[Any] = []

    def build_(flags: list[str]) -> Any:
        built.append(_compile([compat.SENSOR], ["-DRINGBUF_PAGES=64",
                                                f"-DAGENT_TGID={os.getpid()}", *flags]))
        return built[-1]

    yield build_
    for bpf in built:
        bpf.cleanup()


class Ring:
    """The program's ring buffer, decoded on demand."""

    def __init__(self, bpf: Any) -> None:
        self.bpf = bpf
        self.got: list[bytes] = []
        bpf["events"].open_ring_buffer(lambda _c, data, size: self.got.append(
            ct.string_at(data, size)))

    def drain(self) -> list[Record]:
        self.bpf.ring_buffer_consume()
        records = [compat.decode_compat(d, BootClock()) for d in self.got]
        self.got.clear()
        return records

    def run(self, program: Path, target: Path) -> list[Record]:
        """Records of one run of ``program`` (only its pid's)."""
        self.drain()
        proc = subprocess.Popen([str(program), str(target)], stdout=subprocess.DEVNULL)
        assert proc.wait(60) == 0
        # records are committed inside the syscall: all are in the ring once it exited
        return [r for r in self.drain() if r.pid == proc.pid]


def _runtime(bpf: Any, watch: bool = True,
             where: Callable[[], MemberOffset] = compat.ti_status) -> compat.CompatRuntime:
    ctx = SensorContext(bpf=bpf, inbox=ListInbox(), clock=BootClock(),
                        cfg=SimpleNamespace(compat_watch=watch), opened_gpu=lambda _: False,
                        hooks=SensorHooks())
    return compat.CompatRuntime(ctx, status_offset=where)


def _names(records: list[Record]) -> list[str]:
    return sorted(r.payload.name for r in records)  # type: ignore[attr-defined]


def _ours(records: list[Record]) -> list[Record]:
    """Records of this process or its children (the self-test's probe is one)."""
    return [r for r in records if os.getpid() in (r.pid, r.ppid)]


def test_runtime_proves_the_btf_offset_and_uses_the_kernel_flag(
        build_program: Build, programs: SimpleNamespace, tmp_path: Path) -> None:
    bpf = build_program(compat.cflags())
    ring = Ring(bpf)
    runtime = _runtime(bpf)
    try:
        assert runtime.attached and runtime.method == "ts_compat"
        status = runtime.status()
        assert status is not None and status.state == "ok"
        assert status.detail == "watching ia32 syscalls (thread_info.status via BTF)"
        assert _ours(ring.drain()) == []  # the self-test's int $0x80 made no record
        assert _names(ring.run(programs.open, tmp_path / "w")) == ["close", "open"]
        (forged,) = ring.run(programs.forged, tmp_path / "f")
        assert (forged.payload.name, forged.payload.ip) == (  # type: ignore[attr-defined]
            "open", FORGED_RETURN)
        assert runtime.loss_counters()["compat_rate_limited"]() == 0
    finally:
        runtime.close()
    assert not runtime.attached


def test_without_btf_the_register_heuristic_watches_and_the_forgery_evades_it(
        build_program: Build, programs: SimpleNamespace, tmp_path: Path) -> None:
    # The documented residual evasion of the fallback: int $0x80 with
    # rcx == return address and r11 == rflags looks native in pt_regs.
    bpf = build_program(compat.cflags())
    ring = Ring(bpf)
    runtime = _runtime(bpf, where=lambda: MemberOffset(None, None, "BTF off for the test"))
    try:
        assert runtime.method == "registers"
        status = runtime.status()
        assert status is not None and status.state == "degraded"
        assert status.detail == ("watching ia32 syscalls (register heuristic: a deliberate "
                                 "int $0x80 can pass as native); no thread_info.status offset: "
                                 "BTF off for the test")
        assert _names(ring.run(programs.open, tmp_path / "w")) == ["close", "open"]
        assert ring.run(programs.forged, tmp_path / "f") == []
        assert (tmp_path / "f").exists()  # the forged open did happen
    finally:
        runtime.close()


@pytest.mark.parametrize(("offset", "why"), [
    (8, "native syscalls of the probe seen as ia32"),  # thread_info.syscall_work: always set
    (0, "int $0x80 getpid (pid"),  # thread_info.flags: TIF bit 1 clear at syscall entry
])
def test_a_wrong_offset_fails_the_self_test_and_falls_back(
        build_program: Build, programs: SimpleNamespace, tmp_path: Path,
        offset: int, why: str) -> None:
    bpf = build_program([f"-DCOMPAT_TI_STATUS_OFF={offset}"])
    ring = Ring(bpf)
    runtime = _runtime(bpf, where=lambda: MemberOffset(offset, 4))
    try:
        status = runtime.status()
        assert runtime.method == "registers" and status is not None
        assert status.state == "degraded" and why in status.detail and "self-test" in status.detail
        # the self-test program writes no record: nothing bogus went out meanwhile
        assert _ours(ring.drain()) == []
        assert _names(ring.run(programs.open, tmp_path / "w")) == ["close", "open"]
    finally:
        runtime.close()


def test_runtime_turned_off_does_not_attach_and_says_blind(
        build_program: Build, programs: SimpleNamespace, tmp_path: Path) -> None:
    bpf = build_program(compat.cflags())
    ring = Ring(bpf)
    runtime = _runtime(bpf, watch=False)
    status = runtime.status()
    assert status is not None and (status.name, status.state) == ("compat", "degraded")
    assert "BLIND to ia32 syscalls" in status.detail and "ia32_emulation=false" in status.detail
    assert ring.run(programs.open, tmp_path / "o") == []
    runtime.close()
