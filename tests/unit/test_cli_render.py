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
    assert row[2:4] == ["2023-11-14T22:13:20.000Z", "1m15s"]
    assert row[9:] == ["SILENT", "procfs", "gpu_open:off(no bpf)"]
