"""ia32 syscalls end to end: compiled programs make real `int $0x80` syscalls,
which no syscalls:sys_enter_* tracepoint sees; the real eBPF agent reports them
as process.compat_syscall over real gRPC into the collector's SQLite.

Also: the ABI probe on this machine, and the compat runtime attaching (or,
turned off, not attaching and saying the agent is blind) on a real program.
"""

from __future__ import annotations

import ctypes as ct
import os
import platform
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

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


def test_forged_native_registers_evade_the_detector(
        collector: Collector, bpf_agent: Agent, programs: SimpleNamespace,
        tmp_path: Path) -> None:
    # Pins the documented residual evasion (docs: process.compat_syscall):
    # int $0x80 with rcx == return address and r11 == rflags looks native in
    # pt_regs. If this starts failing, the detector got stronger: update the docs.
    target = tmp_path / "forged"
    proc = subprocess.Popen([str(programs.forged), str(target)], stdout=subprocess.PIPE)
    proc.communicate(timeout=60)
    assert proc.returncode == 0 and target.exists()
    settle(collector, NODE)
    assert collector.query(types=["process.exec"], pid=proc.pid)
    assert _compat_events(collector, proc.pid) == []


def test_health_says_the_detector_watches(collector: Collector, bpf_agent: Agent) -> None:
    settle(collector, NODE)
    health = collector.query(types=["agent.health"], nodes=[NODE], limit=1, newest=True)
    (status,) = [s for s in health[-1].agent_health.sensors if s.name == "compat"]
    assert (status.state, status.detail) == ("ok", "watching ia32 syscalls")


# -- the runtime on a real program, without the agent ----------------------
class ListInbox:
    def __init__(self) -> None:
        self.items: list[object] = []

    def offer(self, item: object) -> bool:
        self.items.append(item)
        return True


@pytest.fixture
def compat_program() -> Iterator[object]:
    require_bpf()
    bpf = _compile([compat.SENSOR], ["-DRINGBUF_PAGES=64", f"-DAGENT_TGID={os.getpid()}"])
    yield bpf
    bpf.cleanup()


def _runtime(bpf: object, watch: bool) -> compat.CompatRuntime:
    ctx = SensorContext(bpf=bpf, inbox=ListInbox(), clock=BootClock(),
                        cfg=SimpleNamespace(compat_watch=watch), opened_gpu=lambda _: False,
                        hooks=SensorHooks())
    return compat.CompatRuntime(ctx)


def _records_of(bpf: object, program: Path, target: Path) -> list[Record]:
    """Records the program's run leaves in the ring, decoded; only those of its pid."""
    got: list[bytes] = []
    ring = bpf["events"]  # type: ignore[index]
    ring.open_ring_buffer(lambda _ctx, data, size: got.append(ct.string_at(data, size)))
    proc = subprocess.Popen([str(program), str(target)], stdout=subprocess.DEVNULL)
    assert proc.wait(60) == 0
    # records are committed inside the syscall: all are in the ring once it exited
    bpf.ring_buffer_consume()  # type: ignore[attr-defined]
    records = [compat.decode_compat(d, BootClock()) for d in got]
    return [r for r in records if r.pid == proc.pid]


def test_runtime_attaches_when_watching(compat_program: object, programs: SimpleNamespace,
                                        tmp_path: Path) -> None:
    runtime = _runtime(compat_program, watch=True)
    try:
        assert runtime.attached and runtime.status() is not None
        names = sorted(r.payload.name for r in _records_of(compat_program, programs.open,
                                                            tmp_path / "w"))
        assert names == ["close", "open"]
        assert runtime.loss_counters()["compat_rate_limited"]() == 0
    finally:
        runtime.close()
    assert not runtime.attached


def test_runtime_turned_off_does_not_attach_and_says_blind(
        compat_program: object, programs: SimpleNamespace, tmp_path: Path) -> None:
    runtime = _runtime(compat_program, watch=False)
    status = runtime.status()
    assert status is not None and (status.name, status.state) == ("compat", "degraded")
    assert "BLIND to ia32 syscalls" in status.detail and "ia32_emulation=false" in status.detail
    assert _records_of(compat_program, programs.open, tmp_path / "o") == []
    runtime.close()
