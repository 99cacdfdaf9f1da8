"""Each shipped rule, positive and negative, over synthetic events stored through
the real ingest path (gRPC Ingest, group commit, SQLite) of an in-process
collector whose findings follower evaluates them.

Every case runs on a node of its own, so the findings of one case never meet
another's. The negative control is a normal training-like job.
"""

from __future__ import annotations

import pytest

from collector.findings import load_rules
from tests.unit.test_findings_support import (
    ALICE,
    MALLORY,
    ROOT,
    event,
    findings_collector,
    gpu_open,
    on_node,
    rfc3339,
    training_job,
)

SIGKILL_BY_MALLORY = {"target_pid": 4242, "signal": 9, "signal_name": "SIGKILL",
                      "target_user": "alice", "target_comm": "python3"}


# rule id -> (events that must raise it, events that must not)
CASES: dict[str, tuple[list, list]] = {
    "compat-syscall": (
        [event("process.compat_syscall", process=MALLORY, process_compat_syscall={
            "nr": 5, "name": "open", "mode": "int80_in_64bit",
            "args": [1073745920, 65, 420], "cs": 51})],
        [],
    ),
    "gpu-signal-cross-user": (
        [event("process.signal", process=MALLORY, process_signal=SIGKILL_BY_MALLORY)],
        [event("process.signal", process=ALICE, process_signal={**SIGKILL_BY_MALLORY}),
         event("process.signal", process={**ROOT, "exe": "/usr/sbin/slurmstepd"},
               process_signal=SIGKILL_BY_MALLORY),
         event("process.signal", process=MALLORY,
               process_signal={**SIGKILL_BY_MALLORY, "signal": 10, "signal_name": "SIGUSR1"})],
    ),
    "process-ptrace-cross-user": (
        [event("process.ptrace", process=MALLORY, process_ptrace={
            "target_pid": 4242, "request": 16, "request_name": "PTRACE_ATTACH", "result": -1,
            "target_user": "alice", "target_comm": "python3"})],
        [event("process.ptrace", process=ALICE, process_ptrace={
            "target_pid": 4243, "request": 16, "request_name": "PTRACE_ATTACH",
            "target_user": "alice"})],
    ),
    "gpu-ptrace": (
        [gpu_open(ALICE),
         event("process.ptrace", t_s=1, process={**ALICE, "pid": 5000}, process_ptrace={
             "target_pid": 4242, "request": 16, "request_name": "PTRACE_ATTACH",
             "target_user": "alice"})],
        [gpu_open(ALICE), event("process.exit", t_s=1, process=ALICE),
         event("process.ptrace", t_s=2, process={**ALICE, "pid": 5000}, process_ptrace={
             "target_pid": 4242, "request": 16, "target_user": "alice"})],
    ),
    "process-vm-write": (
        [event("process.vm_write", process=MALLORY, process_vm_write={
            "target_pid": 4242, "bytes": 64, "target_user": "alice"})],
        [event("process.vm_write", process=ALICE, process_vm_write={
            "target_pid": 4243, "bytes": 64, "target_user": "alice"})],
    ),
    "kernel-module-load": (
        [event("code.module_load", process=ROOT, code_module_load={
            "syscall": "finit_module", "path": "/tmp/rootkit.ko", "result": 0})],
        [],
    ),
    "bpf-foreign-load": (
        [event("code.bpf_load", process=MALLORY, code_bpf_load={
            "prog_type": 2, "prog_type_name": "kprobe", "prog_name": "hide", "result": 5})],
        [event("code.bpf_load", process=ROOT, code_bpf_load={
            "prog_type": 15, "prog_type_name": "cgroup_device", "result": 7})],
    ),
    "code-load-untrusted": (
        [gpu_open(ALICE),
         event("code.load", process=ALICE, code_load={
            "path": "/dev/shm/x.so", "kind": "file", "file_uid": 1000}),
         event("code.load", process=ALICE, code_load={
             "path": "/home/mallory/libevil.so", "kind": "file", "file_uid": 1001}),
         event("code.load", process=ALICE, code_load={
             "path": "/opt/shared/lib.so", "kind": "file", "writable_by_others": True}),
         event("code.load", process=ALICE, code_load={
             "path": "/memfd:x (deleted)", "kind": "memfd"})],
        [gpu_open(ALICE),
         event("code.load", process=ALICE, code_load={
            "path": "/home/alice/venv/lib/libfoo.so", "kind": "file", "file_uid": 1000}),
         # the same load as the positive case, in a process that never touched a GPU
         event("code.load", process=MALLORY, code_load={
             "path": "/dev/shm/x.so", "kind": "file", "file_uid": 1000})],
    ),
    "exec-preload": (
        [event("process.exec", process=ALICE, process_exec={
            "filename": "/usr/bin/python3", "preload": {"LD_PRELOAD": "/tmp/hook.so"}}),
         event("process.exec", process=ALICE, process_exec={
             "filename": "/usr/bin/python3", "preload": {"NCCL_NET_PLUGIN": "/tmp/net.so"}})],
        [event("process.exec", process=ALICE, process_exec={
            "filename": "/usr/bin/python3", "preload": {"PYTHONPATH": "/home/alice/src"}})],
    ),
    "exec-fileless": (
        [event("process.exec", process=MALLORY, process_exec={
            "filename": "/memfd:payload (deleted)", "fileless": True, "fileless_kind": "memfd"})],
        [event("process.exec", process=MALLORY, process_exec={
            "filename": "/home/mallory/run.sh", "fileless": True, "fileless_kind": "home"})],
    ),
    "exec-from-temp": (
        [event("process.exec", process=MALLORY, process_exec={
            "filename": "/tmp/x", "fileless": True, "fileless_kind": "tmp"})],
        [event("process.exec", process=MALLORY, process_exec={"filename": "/usr/bin/ls"})],
    ),
    "checkpoint-malicious": (
        [event("checkpoint.scan", process=ALICE, checkpoint_scan={
            "path": "/data/evil.pt", "sha256": "ee" * 32, "verdict": "malicious",
            "globals": ["os.system"]})],
        [event("checkpoint.scan", process=ALICE, checkpoint_scan={
            "path": "/data/ok.pt", "verdict": "safe"})],
    ),
    "checkpoint-suspicious": (
        [event("checkpoint.scan", process=ALICE, checkpoint_scan={
            "path": "/data/odd.pt", "verdict": "suspicious", "globals": ["mylib.Model"]})],
        [event("checkpoint.scan", process=ALICE, checkpoint_scan={"verdict": "error"})],
    ),
    "checkpoint-unscanned": (
        [event("checkpoint.scan", process=ALICE, checkpoint_scan={
            "path": "/data/big.pt", "verdict": "error", "error": "scan queue full"})],
        [event("checkpoint.scan", process=ALICE, checkpoint_scan={
            "path": "/data/ok.pt", "verdict": "safe"})],
    ),
    "file-foreign-write": (
        [event("file.write", process=MALLORY, file_write={
            "path": "/opt/venv/lib/python3.11/site-packages/torch/__init__.py", "op": "open_write",
            "file_uid": 1000, "owner_mismatch": True})],
        [event("file.write", process=MALLORY, file_write={
            "path": "/opt/venv/x.py", "op": "open_write", "file_uid": 1000,
            "owner_mismatch": True, "result": -13})],
    ),
    "file-ld-preload-config": (
        [event("file.write", process=ROOT, file_write={
            "path": "/etc/ld.so.preload", "op": "create", "file_uid": 0})],
        [event("file.write", process=ROOT, file_write={"path": "/etc/hosts", "op": "create"})],
    ),
    "net-egress-outside-cluster": (
        [event("net.connect", process=ALICE, net_connect={
            "remote_addr": "203.0.113.9", "remote_port": 443, "result": -115})],
        [event("net.connect", process=ALICE, net_connect={
            "remote_addr": "127.0.0.1", "remote_port": 8080}),
         event("net.connect", process=ALICE, net_connect={
             "remote_addr": "203.0.113.9", "remote_port": 443, "result": -111})],
    ),
    "nccl-comm-abort": (
        [event("nccl.comm_end", process=ALICE, nccl_comm_end={
            "function": "ncclCommAbort", "comm_id": "c0ffee", "abort": True})],
        [event("nccl.comm_end", process=ALICE, nccl_comm_end={
            "function": "ncclCommDestroy", "comm_id": "c0ffee"})],
    ),
    "gpu-open-refused": (
        [gpu_open(MALLORY, errno=13, t_s=t) for t in (0, 10, 20)],
        [gpu_open(MALLORY, errno=13, t_s=t) for t in (0, 40, 80)]
        + [gpu_open(MALLORY, errno=6, t_s=t) for t in (1, 2, 3)],
    ),
    "gpu-process-unseen": (
        [event("gpu.process", process=MALLORY, gpu_process={
            "state": "appeared", "seen_open": False})],
        [event("gpu.process", process=MALLORY, gpu_process={
            "state": "running", "seen_open": False})],
    ),
    "audit-agent-silent": (
        [event("agent.silent", agent_silent={"silent_for_s": 15})],
        [event("agent.health", agent_health={"mode": "ebpf"})],
    ),
    "audit-events-lost": (
        [event("agent.gap", agent_gap={"cause": "reported", "reason": "kernel", "count": 12})],
        [event("agent.loss", agent_loss={"reason": "kernel", "count": 0})],
    ),
    "audit-node-impersonation": (
        [event("agent.rejected", agent_rejected={
            "claimed_node": "gpu02", "cert_names": ["gpu01"], "peer": "ipv4:10.0.0.7:5000",
            "reason": "node_mismatch", "batches": 1})],
        [],
    ),
    "iouring-unseen-op": (
        [event("process.io_uring", process=MALLORY, process_io_uring={
            "kind": "op", "opcode": 18, "op_name": "OPENAT", "op_class": "open", "count": 1,
            "total": 1})],
        [event("process.io_uring", process=MALLORY, process_io_uring={
            "kind": "op", "opcode": 16, "op_name": "CONNECT", "op_class": "network",
            "count": 1, "total": 1}),
         event("process.io_uring", process=MALLORY, process_io_uring={
             "kind": "op", "opcode": 23, "op_name": "WRITE", "op_class": "write", "count": 1,
             "total": 1})],
    ),
}

STRAGGLER = "nccl-straggler"
ALWAYS_QUIET = {"gpu-open-user-not-allowed", "gpu-open-exe-not-allowed"}  # inert: lists empty


def straggler_events(slow_gap_s: float) -> list:
    """Four ranks of one communicator; the fourth calls every ``slow_gap_s`` seconds."""
    events = []
    for rank, gap in enumerate([0.1, 0.1, 0.12, slow_gap_s]):
        calls = 50
        first, last = 100.0, 100.0 + gap * (calls - 1)
        events.append(event("nccl.collective", node=f"rank{rank}", t_s=120,
                            process={**ALICE, "pid": 7000 + rank}, nccl_collective={
            "comm_id": "c0ffee", "op": "AllReduce", "datatype": "float16", "calls": calls,
            "first_call": rfc3339(first), "last_call": rfc3339(last)}))
    return events


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    with findings_collector(tmp_path_factory.mktemp("rules")) as h:
        yield h


def test_every_enabled_default_rule_has_a_case():
    enabled = {r.id for r in load_rules().rules}
    assert enabled == set(CASES) | {STRAGGLER} | ALWAYS_QUIET


@pytest.mark.parametrize("rule", sorted(CASES))
def test_rule_fires_on_its_positive_case(harness, rule):
    node = f"pos-{rule}"
    harness.ingest(on_node(CASES[rule][0], node))
    found = [f for f in harness.findings(node) if f.rule == rule]
    assert found, harness.rules(node)
    finding = found[0]
    rule_def = next(r for r in load_rules().rules if r.id == rule)
    assert (finding.severity, list(finding.mitre)) == (rule_def.severity, list(rule_def.mitre))
    assert finding.summary and finding.summary != rule_def.title  # the summary expression ran
    assert finding.events[0].node == node


@pytest.mark.parametrize("rule", sorted(r for r in CASES if CASES[r][1]))
def test_rule_is_quiet_on_its_negative_case(harness, rule):
    node = f"neg-{rule}"
    harness.ingest(on_node(CASES[rule][1], node))
    assert rule not in harness.rules(node)


def test_a_normal_training_job_raises_nothing(harness):
    harness.ingest(training_job("train-1"))
    assert harness.findings("train-1") == []


def test_straggler_rank_is_named_and_balanced_ranks_are_not(harness):
    harness.ingest(straggler_events(slow_gap_s=0.11))
    assert not [f for f in harness.findings() if f.rule == STRAGGLER]
    slow = straggler_events(slow_gap_s=2.0)
    for ev in slow:
        ev.boot_id, ev.time.seconds = "b2-" + ev.node, ev.time.seconds + 1
    harness.ingest(slow)
    found = [f for f in harness.findings() if f.rule == STRAGGLER]
    assert [(f.node, f.process.pid) for f in found] == [("rank3", 7003)]
    assert "vs median" in found[0].summary


def test_signal_finding_names_sender_and_target(harness):
    harness.ingest(on_node([event("process.signal", process=MALLORY,
                                  process_signal=SIGKILL_BY_MALLORY)], "sig"))
    (f,) = harness.findings("sig")
    assert (f.process.user, f.process.pid, f.process.exe) == ("mallory", 6666, "/usr/bin/bash")
    assert "SIGKILL" in f.summary and "alice" in f.summary
