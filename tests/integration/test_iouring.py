"""io_uring end to end: a compiled program opens a file for writing through
IORING_OP_OPENAT (no openat(2), so no syscall tracepoint sees it); the real
eBPF agent reports the ring and the operation as process.io_uring over real
gRPC into the collector's SQLite. A normal process opening the same way with
openat(2) yields no io_uring event.

Also, without the agent: the sensor compiled alone, its counts flushed on
demand (23 writes), and SQPOLL submissions attributed to the ring's process.
"""

from __future__ import annotations

import ctypes as ct
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from agent import iouring_policy as policy
from agent.record import Record
from agent.sensors import iouring
from agent.sensors.base import BootClock, SensorContext, SensorHooks
from agent.sensors.loader import _compile
from tests.capabilities import require_bpf
from tests.fixtures.iouring.build import build
from tests.inbox import ListInbox
from tests.integration.harness import Agent, Collector, settle, wait_for

pytestmark = [pytest.mark.bpf, pytest.mark.integration]

NODE = "it-node"
OPENAT, WRITE = 18, 23
WRITES = 23


@pytest.fixture(scope="module")
def uring_ops(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build("uring_ops", tmp_path_factory.mktemp("iouring"))


def _run(*argv: str) -> tuple[int, int, int]:
    """(pid, ring fd, file fd) of a finished run of the program."""
    proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    ring_fd, file_fd = map(int, out.split())
    return proc.pid, ring_fd, file_fd


def _uring_events(collector: Collector, pid: int) -> list:
    return collector.query(types=["process.io_uring"], pid=pid)


def test_an_openat_through_a_ring_is_reported_with_identity_and_fields(
        collector: Collector, bpf_agent: Agent, uring_ops: Path, tmp_path: Path) -> None:
    target = tmp_path / "site-packages-evil.py"
    pid, ring_fd, file_fd = _run(str(uring_ops), str(target))
    assert target.exists() and file_fd >= 0  # the open really happened, through the ring
    settle(collector, NODE)
    events = _uring_events(collector, pid)
    assert sorted(e.process_io_uring.kind for e in events) == ["op", "setup"]
    (setup,) = [e for e in events if e.process_io_uring.kind == "setup"]
    (op,) = [e for e in events if e.process_io_uring.kind == "op"]
    s, o = setup.process_io_uring, op.process_io_uring
    assert (s.ring_fd, s.sq_entries, s.cq_entries, s.setup_flags) == (ring_fd, 8, 16, 0)
    assert (o.opcode, o.op_name, o.op_class, o.count, o.total) == (OPENAT, "OPENAT", "open", 1, 1)
    assert o.ring == s.ring and len(o.ring) == 16 and not o.sq_thread
    for ev in (setup, op):
        assert (ev.process.pid, ev.process.tid, ev.process.uid) == (pid, pid, os.getuid())
        assert ev.process.ppid == os.getpid()
        assert ev.process.comm == uring_ops.name[:15]
        assert ev.process.exe == str(uring_ops)
        assert ev.process.cmdline == [str(uring_ops), str(target)]


def test_the_agent_reports_the_counts_of_an_ended_process(
        collector: Collector, bpf_agent: Agent, uring_ops: Path, tmp_path: Path) -> None:
    pid, _, _ = _run(str(uring_ops), str(tmp_path / "c"), str(WRITES))

    def writes() -> list:
        return [e.process_io_uring for e in _uring_events(collector, pid)
                if e.process_io_uring.opcode == WRITE]

    # the agent's flush thread reports counts every 10 s
    got = wait_for(lambda: len(writes()) == 2 and writes(), timeout=60)
    assert sorted((w.kind, w.count, w.total) for w in got) == [  # type: ignore[union-attr]
        ("op", 1, 1), ("op_count", WRITES - 1, WRITES)]


NATIVE_OPEN = """
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o644)
os.write(fd, b"x")
os.close(fd)
print(os.getpid())
"""


def test_the_same_open_with_openat_yields_no_iouring_event(
        collector: Collector, bpf_agent: Agent, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", NATIVE_OPEN, str(tmp_path / "n")],
                          capture_output=True, text=True, timeout=60, check=True)
    pid = int(done.stdout)
    settle(collector, NODE)
    assert collector.query(types=["process.exec"], pid=pid)  # seen, but no ring used
    assert _uring_events(collector, pid) == []


def test_health_says_what_is_not_seen(collector: Collector, bpf_agent: Agent) -> None:
    settle(collector, NODE)
    health = collector.query(types=["agent.health"], nodes=[NODE], limit=1, newest=True)
    (status,) = [s for s in health[-1].agent_health.sensors if s.name == "iouring"]
    assert (status.state, status.detail) == ("ok", policy.current_detail())
    assert "not their arguments" in status.detail or "disabled" in status.detail


# -- the sensor alone, flushed on demand ----------------------------------
@pytest.fixture
def program() -> Iterator[object]:
    require_bpf()
    bpf = _compile([iouring.SENSOR], ["-DRINGBUF_PAGES=64", f"-DAGENT_TGID={os.getpid()}"])
    yield bpf
    bpf.cleanup()


def _runtime(bpf: object) -> tuple[iouring.IoUringRuntime, ListInbox]:
    inbox = ListInbox()
    ctx = SensorContext(bpf=bpf, inbox=inbox, clock=BootClock(),
                        cfg=SimpleNamespace(iouring_flush_s=10.0),
                        opened_gpu=lambda _: False, hooks=SensorHooks())
    return iouring.IoUringRuntime(ctx), inbox


def _ring_records(bpf: object, *argv: str) -> tuple[int, str, list[Record]]:
    """Run the program: its pid, its output, and its records from the ring buffer."""
    got: list[bytes] = []
    ring = bpf["events"]  # type: ignore[index]
    ring.open_ring_buffer(lambda _ctx, data, size: got.append(ct.string_at(data, size)))
    proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    # records are committed inside the syscalls: all are in the ring once it exited
    bpf.ring_buffer_consume()  # type: ignore[attr-defined]
    decode = {iouring.OP_IOURING_SETUP: iouring.decode_setup,
              iouring.OP_IOURING_OP: iouring.decode_op}
    records = [decode[d[0]](d, BootClock()) for d in got]
    return proc.pid, out, [r for r in records if r.pid == proc.pid]


def test_counts_are_exact_and_the_ended_process_is_forgotten(
        program: object, uring_ops: Path, tmp_path: Path) -> None:
    runtime, inbox = _runtime(program)
    pid, _, records = _ring_records(program, str(uring_ops), str(tmp_path / "w"), str(WRITES))
    assert sorted((r.payload.kind, r.payload.op_name) for r in records) == [
        ("op", "OPENAT"), ("op", "WRITE"), ("setup", "")]
    assert (tmp_path / "w").read_bytes() == b"x" * WRITES
    runtime.flush()
    counts = [(r.payload.kind, r.payload.op_name, r.payload.count, r.payload.total)
              for r in inbox.items if r.pid == pid]
    assert counts == [("op_count", "WRITE", WRITES - 1, WRITES)]
    assert all(k.tgid != pid for k in program["iouring_use"])  # type: ignore[index]
    assert runtime.untracked() == 0


def test_sqpoll_submissions_belong_to_the_rings_process(
        program: object, uring_ops: Path, tmp_path: Path) -> None:
    pid, _, records = _ring_records(program, str(uring_ops), "--sqpoll", str(tmp_path / "s"))
    (setup,) = [r for r in records if r.payload.kind == "setup"]
    (op,) = [r for r in records if r.payload.kind == "op"]
    assert "SQPOLL" in setup.payload.setup_flag_names
    assert (op.pid, op.payload.op_name, op.payload.sq_thread) == (pid, "OPENAT", True)
    assert op.tid != pid and op.comm == f"iou-sqp-{pid}"  # the kernel thread, in its process
    assert op.payload.ring == setup.payload.ring


def test_the_kernel_names_every_opcode_as_the_agents_table_does(
        program: object, tmp_path_factory: pytest.TempPathFactory) -> None:
    all_ops = build("all_ops", tmp_path_factory.mktemp("iouring"))
    _, out, records = _ring_records(program, str(all_ops))
    assert len(out.splitlines()) == 70  # every request completed
    ops = [r.payload for r in records if r.payload.kind == "op"]
    named = {p.opcode: p.op_name for p in ops}
    # only the requests the kernel took are named (a malformed one is refused before)
    assert {0, 13, 16, 23, 45, 46, 55} <= set(named)
    assert len(named) >= 30  # 35 on linux 6.18 (the rest fail in their prep)
    assert named == {op: policy.OP_NAMES[op] for op in named}
    assert all(p.op_class == policy.op_class(p.opcode) for p in ops)
