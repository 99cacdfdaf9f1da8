"""Table rendering for `gpuaudit events` and `gpuaudit status`."""

from __future__ import annotations

import pytest

from collector import render
from gpuaudit.v1 import collector_pb2, events_pb2
from tests.unit.test_collector_support import (
    S_NS,
    T0_NS,
    gpu_open,
    health,
    process_exec,
    process_exit,
)


def test_detail_per_event_type():
    assert render.detail(gpu_open(1)) == "/dev/nvidia0 fd=7"
    assert render.detail(gpu_open(1, errno=1)) == "/dev/nvidia0 errno=1 (EPERM)"
    inventory = gpu_open(1)
    inventory.gpu_open.source = "inventory"
    assert render.detail(inventory) == "/dev/nvidia0 fd=7 [inventory]"
    assert render.detail(process_exec(1, ["/bin/sh", "-c", "echo hi"])) == "/bin/sh -c 'echo hi'"
    assert render.detail(process_exit(1, code=3)) == "exit 3"
    killed = process_exit(1, sig=9)
    killed.process_exit.held_gpu = True
    assert render.detail(killed) == "killed by SIGKILL (9) held_gpu"
    beat = health(1, lost=(1, 2, 3))
    beat.agent_health.spool_dropped = 4
    assert render.detail(beat) == (
        "mode=ebpf emitted=1 kernel_lost=1 queue_dropped=2 decode_errors=3 spool_dropped=4 "
        "sensors=gpu_open:ok exec:degraded"
    )
    silent = events_pb2.Event(type="agent.silent", agent_silent={"silent_for_s": 15})
    silent.agent_silent.last_seen.FromNanoseconds(T0_NS)
    assert render.detail(silent) == "no heartbeat for 15s, last 2023-11-14T22:13:20.000Z"


def test_truncated_argv_is_marked_and_long_detail_cut():
    ev = process_exec(1, ["/bin/echo", "x" * 500])
    ev.process_exec.argv_truncated = True
    text = render.detail(ev)
    assert len(text) == render.DETAIL_MAX and text.endswith("…")
    short = process_exec(1, ["/bin/true"])
    short.process_exec.argv_truncated = True
    assert render.detail(short) == "/bin/true …(truncated)"


def test_escape_sequences_from_audited_processes_are_neutralized():
    ev = process_exec(1, ["/bin/sh", "\x1b[2J\rfake\n"])
    ev.process.comm = "evil\x1b]0;t\x07"
    out = render.events_table([ev])
    assert "\x1b" not in out and "\r" not in out and "\x07" not in out
    assert len(out.splitlines()) == 2
    assert "evil\\x1b]0;t\\x07" in out


def test_table_aligns_columns_and_leaves_last_unpadded():
    out = render.table(("A", "BB", "C"), [["xxx", "y", "z"], ["1", "22222", "3"]])
    assert out.splitlines() == ["A    BB     C", "xxx  y      z", "1    22222  3"]


def test_event_row_without_process():
    row = render.event_row(health(5, node="gpu01", t_s=1.5))
    assert row[:7] == ["2023-11-14T22:13:21.500Z", "gpu01", "5", "agent.health", "-", "-", "-"]


def test_user_falls_back_to_uid_and_comm_to_exe():
    ev = gpu_open(1, uid=4242)
    ev.process.user, ev.process.comm, ev.process.exe = "", "", "/opt/bin/trainer"
    assert render.event_row(ev)[5:7] == ["4242", "trainer"]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (59, "59s"), (61, "1m01s"), (3600 + 5 * 60, "1h05m"), (3 * 86400 + 7200, "3d02h"),
     (-3, "0s")],
)  # fmt: skip
def test_age(seconds, text):
    assert render.age(seconds) == text


def test_status_row_shows_age_and_silence():
    node = collector_pb2.NodeStatus(node="n1", boot_id="b", last_seq=9, silent=True, mode="procfs")
    node.last_heartbeat.FromNanoseconds(T0_NS)
    node.sensors.add(name="gpu_open", state="off", detail="no bpf")
    row = render.status_row(node, now_ns=T0_NS + 75 * S_NS)
    assert len(row) == len(render.STATUS_COLUMNS)
    assert row[2:4] == ["2023-11-14T22:13:20.000Z", "1m15s"]
    assert row[12:] == ["SILENT", "procfs", "gpu_open:off(no bpf)"]


def test_status_row_shows_loss_gap_and_rejection_counters():
    node = collector_pb2.NodeStatus(
        node="n1", spool_dropped=4, gaps=2, missing_events=9, rejected=3
    )
    row = dict(zip(render.STATUS_COLUMNS, render.status_row(node, now_ns=T0_NS), strict=True))
    assert (row["BOOT_ID"], row["SPOOL_DROPPED"], row["GAPS/MISSING"], row["REJECTED"]) == (
        "-", "4", "2/9", "3",
    )  # fmt: skip


def test_details_of_the_collector_loss_events():
    gap = events_pb2.Event(type="agent.gap", node="n1", boot_id="collector-x", seq=1)
    gap.agent_gap.cause, gap.agent_gap.lost_boot_id = "seq_skip", "b1"
    gap.agent_gap.first_seq, gap.agent_gap.last_seq, gap.agent_gap.count = 4, 6, 3
    assert render.detail(gap) == "missing 3 (seq_skip) seq 4-6 of b1"
    gap.agent_gap.cause, gap.agent_gap.reason, gap.agent_gap.report_seq = "reported", "kernel", 9
    gap.agent_gap.first_seq = 0
    assert render.detail(gap) == "missing 3 (reported kernel at seq 9)"
    rej = events_pb2.Event(type="agent.rejected", node="n1")
    r = rej.agent_rejected
    r.claimed_node, r.reason, r.batches, r.peer = "n2", "node_mismatch", 2, "ipv4:1.2.3.4:5"
    r.cert_names.extend(["n1", "10.0.0.1"])
    assert render.detail(rej) == (
        "refused 2 batch(es) claiming 'n2': node_mismatch cert=n1,10.0.0.1 peer=ipv4:1.2.3.4:5"
    )
    loss = events_pb2.Event(type="agent.loss")
    loss.agent_loss.reason, loss.agent_loss.count, loss.agent_loss.total = "spool_full", 5, 8
    loss.agent_loss.lost_boot_id, loss.agent_loss.first_seq, loss.agent_loss.last_seq = "b", 1, 5
    assert render.detail(loss) == "lost 5 (spool_full, total 8) seq 1-5 of b"


def test_gpu_event_details_name_the_gpu_and_flag_unseen_processes():
    from collector.render import detail

    ev = events_pb2.Event(type="gpu.process")
    ev.gpu_process.state, ev.gpu_process.gpu_index = "appeared", 1
    ev.gpu_process.mig_uuid, ev.gpu_process.used_memory = "MIG-x", 2 << 30
    assert detail(ev) == "appeared on gpu1 MIG-x mem=2048MiB NOT SEEN OPENING A GPU"
    ev = events_pb2.Event(type="gpu.xid")
    ev.gpu_xid.event, ev.gpu_xid.xid, ev.gpu_xid.gpu_uuid = "xid", 79, "GPU-a"
    assert detail(ev) == "xid 79 on gpu0 GPU-a"
    ev = events_pb2.Event(type="gpu.device")
    d = ev.gpu_device
    d.change, d.index, d.minor_number, d.uuid, d.name = "start", 0, 0, "GPU-a", "H100"
    d.driver_version, d.unavailable[:] = "550", ["serial: NOT_SUPPORTED"]
    assert detail(ev) == ("start gpu0 /dev/nvidia0 GPU-a H100 driver 550 "
                          "unavailable: serial: NOT_SUPPORTED")


def test_signal_detail_names_signal_target_and_outcome():
    from collector.render import detail

    ev = events_pb2.Event(type="process.signal")
    s = ev.process_signal
    s.target_pid, s.signal, s.signal_name, s.group = 4242, 15, "SIGTERM", True
    s.target_user, s.target_comm, s.result = "alice", "python", 0
    assert detail(ev) == "SIGTERM -> pid 4242 (alice python)"
    s.group, s.result = False, 1
    assert detail(ev).startswith("SIGTERM -> pid 4242 (alice python) (thread)")
    assert "ignored" in detail(ev)


def test_tamper_details_name_the_target_and_the_outcome():
    from collector.render import detail

    ev = events_pb2.Event(type="process.ptrace")
    p = ev.process_ptrace
    p.request, p.request_name, p.target_pid, p.target_user, p.target_comm = (
        16, "PTRACE_ATTACH", 4242, "alice", "python")
    assert detail(ev).startswith("PTRACE_ATTACH -> pid 4242")
    assert "alice" in detail(ev)
    ev = events_pb2.Event(type="code.bpf_load")
    b = ev.code_bpf_load
    b.prog_type, b.prog_type_name, b.prog_name, b.insn_cnt, b.result = (
        1, "socket_filter", "x", 2, 7)
    assert detail(ev) == "socket_filter x insns=2 fd=7"
    ev = events_pb2.Event(type="code.module_load")
    ev.code_module_load.syscall, ev.code_module_load.path = "finit_module", "/tmp/evil.ko"
    assert detail(ev).startswith("finit_module /tmp/evil.ko")


def _ev(kind: str, **payload: object) -> events_pb2.Event:
    return events_pb2.Event(type=kind, **payload)


@pytest.mark.parametrize(("event", "text"), [
    (_ev("code.load", code_load={"path": "/tmp/x.so", "sha256": "ab" * 32, "kind": "deleted",
                                 "writable_by_others": True}),
     "/tmp/x.so abababababab [deleted] writable-by-others"),
    (_ev("code.load", code_load={"path": "/lib/a.so", "hash_error": "queue full"}),
     "/lib/a.so no sha256 (queue full)"),
    (_ev("file.write", file_write={"path": "/v/site.py", "op": "rename", "old_path": "/tmp/s.py",
                                   "owner_mismatch": True, "file_uid": 1000}),
     "rename /tmp/s.py -> /v/site.py owner_mismatch (file uid 1000)"),
    (_ev("file.write", file_write={"path": "/v/a.py", "op": "open", "result": -13}),
     "open /v/a.py failed errno=13"),
    (_ev("checkpoint.scan", checkpoint_scan={"path": "/m.pt", "verdict": "malicious",
                                             "globals": ["os.system"]}),
     "MALICIOUS /m.pt: os.system"),
    (_ev("nccl.comm_init", nccl_comm_init={"function": "ncclCommInitRank", "rank": 1, "nranks": 4,
                                           "comm_id": "0123456789abcdef"}),
     "ncclCommInitRank comm 0123456789ab rank 1/4"),
    (_ev("nccl.comm_init", nccl_comm_init={"function": "ncclCommSplit", "rank": -1, "nranks": -1,
                                           "comm_id": "", "parent_comm_handle": 7, "result": 2}),
     "ncclCommSplit comm ? child of ? failed ncclResult=2"),
    (_ev("nccl.collective", nccl_collective={"op": "AllReduce", "datatype": "float16", "calls": 3,
                                             "bytes": 60, "comm_id": "c0ffee"}),
     "AllReduce float16 x3 60 bytes comm c0ffee"),
    (_ev("nccl.comm_end", nccl_comm_end={"function": "ncclCommAbort", "comm_id": "c0ffee",
                                         "abort": True}),
     "ncclCommAbort comm c0ffee ABORT"),
    (_ev("net.connect", net_connect={"protocol": "tcp", "local_addr": "10.0.0.2", "local_port": 5,
                                     "remote_addr": "8.8.8.8", "remote_port": 443}),
     "tcp 10.0.0.2:5 -> 8.8.8.8:443 OUTSIDE cluster"),
    (_ev("net.listen", net_listen={"protocol": "tcp", "local_addr": "0.0.0.0",
                                   "local_port": 29500}),
     "tcp listen 0.0.0.0:29500"),
    (_ev("net.flow", net_flow={"protocol": "tcp", "remote_addr": "10.0.0.3", "remote_port": 29500,
                               "peer_in_cluster": True, "bytes_sent": 10, "bytes_received": 20}),
     "tcp 10.0.0.3:29500 in-cluster sent=10 received=20"),
    (_ev("net.rdma_open", net_rdma_open={"path": "/dev/infiniband/uverbs0", "errno": 13, "fd": -1}),
     "/dev/infiniband/uverbs0 errno=13 (EACCES)"),
    (_ev("process.compat_syscall", process_compat_syscall={"nr": 5, "name": "open",
                                                           "mode": "int80_in_64bit"}),
     "ia32 open (nr 5) via int80_in_64bit"),
    (_ev("process.io_uring", process_io_uring={"kind": "op_count", "op_name": "OPENAT",
                                               "op_class": "open", "count": 22, "ring": "r1"}),
     "OPENAT (open) x22 on ring r1"),
    (_ev("process.io_uring", process_io_uring={"kind": "setup", "ring": "r1", "ring_fd": 3,
                                               "sq_entries": 8}),
     "ring r1 set up (fd 3, 8 entries)"),
])
def test_details_of_the_sensor_events(event, text):
    assert render.detail(event) == text


def test_every_payload_type_has_a_detail():
    """A new event type must say something in `gpuaudit events` too."""
    payloads = {f.name for f in events_pb2.Event.DESCRIPTOR.oneofs_by_name["payload"].fields}
    assert payloads == set(render._DETAILS)
