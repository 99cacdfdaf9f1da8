"""The io_uring sensor's user-space side without root: opcode tables, status
details, record decoding, the count ledger and the flush over a stand-in map."""

from __future__ import annotations

import ctypes as ct
from pathlib import Path
from types import SimpleNamespace

import pytest

from agent import iouring_policy as policy
from agent.sensors import iouring
from agent.sensors.base import BootClock, SensorContext, SensorHooks
from tests.inbox import ListInbox

RING_ADDR = 0xFFFF8881_2345_6000


# -- tables ---------------------------------------------------------------
def test_opcode_names_follow_the_kernel_enum() -> None:
    named = {0: "NOP", 13: "ACCEPT", 16: "CONNECT", 18: "OPENAT", 23: "WRITE", 28: "OPENAT2",
             35: "RENAMEAT", 39: "LINKAT", 45: "SOCKET", 46: "URING_CMD", 55: "FTRUNCATE",
             29: "EPOLL", 57: "LISTEN", 62: "PIPE"}
    assert {n: policy.OP_NAMES[n] for n in named} == named
    assert len(policy.OP_NAMES) == 63


@pytest.mark.parametrize(("opcode", "cls"), [
    (18, "open"), (28, "open"), (35, "namespace"), (36, "namespace"), (38, "namespace"),
    (42, "xattr"), (16, "network"), (13, "network"), (45, "network"), (26, "send_recv"),
    (23, "write"), (55, "write"), (22, "read"), (46, "passthrough"), (0, "other"),
    (19, "other"), (44, "other"), (200, "other"),
])
def test_opcode_classes(opcode: int, cls: str) -> None:
    assert policy.op_class(opcode) == cls


def test_op_name_prefers_the_kernels_own_and_knows_no_future_number() -> None:
    assert policy.op_name(18) == "OPENAT"
    assert policy.op_name(70, "SOMETHING_NEW") == "SOMETHING_NEW"
    assert policy.op_name(70) == ""


def test_setup_flag_names() -> None:
    assert policy.setup_flag_names(0) == []
    assert policy.setup_flag_names(0b10 | 1 << 13) == ["SQPOLL", "DEFER_TASKRUN"]
    assert policy.setup_flag_names(1 << 20) == ["BIT20"]


# -- status ---------------------------------------------------------------
def test_status_details_per_sysctl_value() -> None:
    assert policy.status_detail(2, -1).startswith("io_uring disabled: nothing to watch")
    enabled = policy.status_detail(0, -1)
    assert enabled.startswith("io_uring enabled: sees which process submits")
    assert "not their arguments (paths, addresses, data)" in enabled
    assert enabled.endswith("set kernel.io_uring_disabled=2 where no workload needs io_uring")
    assert policy.status_detail(None, None) == enabled  # a kernel before 6.6: no sysctl
    assert policy.status_detail(1, 1234).startswith(
        "io_uring limited to CAP_SYS_ADMIN and group 1234 (kernel.io_uring_disabled=1)")
    assert policy.status_detail(1, -1).startswith("io_uring limited to CAP_SYS_ADMIN (")


def test_read_sysctl(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("2\n")
    (tmp_path / "b").write_text("x\n")
    assert policy.read_sysctl(tmp_path / "a") == 2
    assert policy.read_sysctl(tmp_path / "b") is None
    assert policy.read_sysctl(tmp_path / "missing") is None
    assert policy.current_detail(tmp_path / "a", tmp_path / "missing").startswith(
        "io_uring disabled")


# -- decoding -------------------------------------------------------------
def _hdr(h: iouring.Hdr, op: int, tid: int = 4242, comm: bytes = b"trainer") -> None:
    h.op, h.pid, h.tid, h.ppid, h.uid, h.gid = op, 4242, tid, 1, 1000, 1000
    h.ktime_ns, h.cgroup_id, h.comm = 5_000_000_000, 77, comm


def setup_rec(flags: int = 2) -> iouring.IouringSetupRec:
    r = iouring.IouringSetupRec()
    _hdr(r.h, iouring.OP_IOURING_SETUP)
    r.ring, r.fd, r.sq_entries, r.cq_entries, r.flags = RING_ADDR, 5, 8, 16, flags
    return r


def op_rec(opcode: int = 18, name: bytes = b"OPENAT") -> iouring.IouringOpRec:
    r = iouring.IouringOpRec()
    _hdr(r.h, iouring.OP_IOURING_OP, tid=4243, comm=b"iou-sqp-4242")
    r.ring, r.user_data, r.sqe_flags, r.opcode, r.sq_thread = RING_ADDR, 0xBEEF, 16, opcode, 1
    r.op_name = name
    return r


def test_decode_setup_names_the_ring_without_its_address() -> None:
    rec = iouring.decode_setup(bytes(setup_rec()), BootClock())
    p = rec.payload
    assert (rec.type, rec.pid, rec.uid, rec.comm, rec.cgroup_id) == (
        "process.io_uring", 4242, 1000, "trainer", 77)
    assert (p.kind, p.ring_fd, p.sq_entries, p.cq_entries, p.setup_flags) == ("setup", 5, 8, 16, 2)
    assert list(p.setup_flag_names) == ["SQPOLL"]
    assert p.ring == iouring.ring_id(RING_ADDR) and len(p.ring) == 16
    assert f"{RING_ADDR:x}" not in p.ring and p.opcode == 0 and p.count == 0


def test_decode_op_reports_the_first_submission() -> None:
    rec = iouring.decode_op(bytes(op_rec()), BootClock())
    p = rec.payload
    assert (rec.pid, rec.tid, rec.comm) == (4242, 4243, "iou-sqp-4242")
    assert (p.kind, p.opcode, p.op_name, p.op_class, p.count, p.total) == (
        "op", 18, "OPENAT", "open", 1, 1)
    assert (p.ring, p.sq_thread, p.sqe_flags, p.user_data) == (
        iouring.ring_id(RING_ADDR), True, 16, 0xBEEF)


def test_op_payload_for_a_count_leaves_the_first_submissions_details_out() -> None:
    p = iouring.op_payload(op_rec(23, b""), "op_count", 22, 23)
    assert (p.kind, p.op_name, p.op_class, p.count, p.total) == (
        "op_count", "WRITE", "write", 22, 23)
    assert (p.ring, p.sq_thread, p.user_data) == ("", False, 0)


def test_ring_ids_are_stable_and_distinct() -> None:
    assert iouring.ring_id(RING_ADDR) == iouring.ring_id(RING_ADDR)
    assert iouring.ring_id(RING_ADDR) != iouring.ring_id(RING_ADDR + 0x1000)
    assert iouring.ring_id(0) == ""


# -- the ledger -----------------------------------------------------------
def test_ledger_after_a_first_submission_sent_through_the_ring() -> None:
    ledger = iouring.UseLedger()
    assert ledger.step((1, 18), 1, True) is None  # the ring record said count 1
    assert ledger.step((1, 18), 5, True) == ("op_count", 4)
    assert ledger.step((1, 18), 5, True) is None
    assert ledger.step((1, 18), 6, True) == ("op_count", 1)


def test_ledger_reports_a_first_submission_the_ring_had_no_room_for() -> None:
    ledger = iouring.UseLedger()
    assert ledger.step((1, 18), 3, False) == ("op", 3)
    assert ledger.step((1, 18), 4, False) == ("op_count", 1)
    ledger.forget((1, 18))
    assert ledger.step((1, 18), 2, False) == ("op", 2)


# -- process liveness -----------------------------------------------------
def _stat(root: Path, pid: int, start_ticks: int) -> None:
    (root / str(pid)).mkdir(exist_ok=True)
    # a comm with ") " in it must not shift the fields
    rest = " ".join(["S"] + ["0"] * 18 + [str(start_ticks)] + ["0"] * 10)
    (root / str(pid) / "stat").write_text(f"{pid} (a) b) {rest}\n")


def test_started_ns(tmp_path: Path) -> None:
    _stat(tmp_path, 10, 300)
    assert iouring.started_ns(10, str(tmp_path)) == 300 * 1_000_000_000 // iouring.CLK_TCK
    assert iouring.started_ns(11, str(tmp_path)) is None
    assert iouring.ended(None, 5) and iouring.ended(6, 5)  # gone; pid reused later
    assert not iouring.ended(5, 5) and not iouring.ended(4, 5)


# -- the flush over a stand-in map ----------------------------------------
class FakeTable:
    """Enough of a bcc hash map: keys(), [key], del [key]."""

    def __init__(self) -> None:
        self.entries: dict[tuple[int, int], tuple[iouring.IouringUseKey, iouring.IouringUse]] = {}

    def put(self, tgid: int, opcode: int, count: int, notified: bool, first_ns: int) -> None:
        v = iouring.IouringUse()
        v.first = op_rec(opcode, policy.OP_NAMES[opcode].encode())
        v.first.h.pid, v.first.h.ktime_ns = tgid, first_ns
        v.count, v.notified = count, int(notified)
        self.entries[(tgid, opcode)] = (iouring.IouringUseKey(tgid, opcode), v)

    def keys(self) -> list[iouring.IouringUseKey]:
        return [k for k, _ in self.entries.values()]

    def __getitem__(self, k: iouring.IouringUseKey) -> iouring.IouringUse:
        return self.entries[(k.tgid, k.opcode)][1]

    def __delitem__(self, k: iouring.IouringUseKey) -> None:
        del self.entries[(k.tgid, k.opcode)]


def _runtime(tmp_path: Path, table: FakeTable) -> tuple[iouring.IoUringRuntime, ListInbox]:
    inbox = ListInbox()
    ctx = SensorContext(bpf={"iouring_use": table}, inbox=inbox, clock=BootClock(),
                        cfg=SimpleNamespace(iouring_flush_s=10.0), opened_gpu=lambda _: False,
                        hooks=SensorHooks(),
                        proc_root=str(tmp_path))
    return iouring.IoUringRuntime(ctx, detail=lambda: "d"), inbox


def test_flush_reports_increases_and_forgets_ended_processes(tmp_path: Path) -> None:
    _stat(tmp_path, 100, 1)  # alive, started at boot + 1 tick
    table = FakeTable()
    table.put(100, 23, 23, True, 5_000_000_000)
    table.put(200, 18, 2, False, 5_000_000_000)  # its process ended; the ring had no room
    _stat(tmp_path, 300, 600 * iouring.CLK_TCK)  # pid 300 reused after its entry was made
    table.put(300, 16, 4, True, 5_000_000_000)
    runtime, inbox = _runtime(tmp_path, table)
    runtime.flush()
    got = {(r.pid, r.payload.kind, r.payload.op_name, r.payload.count, r.payload.total)
           for r in inbox.items}
    assert got == {(100, "op_count", "WRITE", 22, 23), (200, "op", "OPENAT", 2, 2),
                   (300, "op_count", "CONNECT", 3, 4)}
    assert list(table.entries) == [(100, 23)]  # the ended processes' entries are deleted
    (late,) = [r for r in inbox.items if r.payload.kind == "op"]
    assert late.wall_ns == runtime.ctx.clock.to_wall(5_000_000_000)  # when it happened
    assert (late.uid, late.comm, late.cgroup_id) == (1000, "iou-sqp-4242", 77)
    inbox.items.clear()
    runtime.flush()
    assert inbox.items == []  # nothing moved
    table.put(100, 23, 30, True, 5_000_000_000)
    runtime.flush()
    assert [(r.payload.count, r.payload.total) for r in inbox.items] == [(7, 30)]


def test_runtime_status_loss_counter_and_thread(tmp_path: Path) -> None:
    runtime, _ = _runtime(tmp_path, FakeTable())
    status = runtime.status()
    assert status is not None
    assert (status.name, status.state, status.detail) == ("iouring", "ok", "d")
    assert runtime.loss_counters()["iouring_untracked"]() == 0  # no such map here
    assert [name for name, _ in runtime.threads()] == ["iouring-flush"]
    assert set(runtime.decoders()) == {iouring.OP_IOURING_SETUP, iouring.OP_IOURING_OP}


def test_mirrors_have_the_c_sizes() -> None:
    # the real check is tests/integration/test_alignment.py against bcc
    assert ct.sizeof(iouring.IouringOpRec) == 104
    assert ct.sizeof(iouring.IouringUse) == 120
    assert ct.sizeof(iouring.IouringSetupRec) == 80
