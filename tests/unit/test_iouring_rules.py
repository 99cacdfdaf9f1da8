"""The io_uring rule over synthetic events stored through the real ingest path
of an in-process collector (as tests/unit/test_rules_defaults.py does for the
other shipped rules)."""

from __future__ import annotations

import pytest

from collector.findings import load_rules
from tests.unit.test_findings_support import (
    ALICE,
    MALLORY,
    event,
    findings_collector,
    gpu_open,
    on_node,
    training_job,
)

RULE = "iouring-unseen-op"


def uring(process: dict, kind: str, opcode: int, name: str, cls: str, t_s: float = 0.0,
          count: int = 1) -> object:
    return event("process.io_uring", t_s=t_s, process=process, process_io_uring={
        "kind": kind, "opcode": opcode, "op_name": name, "op_class": cls, "count": count,
        "total": count})


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    with findings_collector(tmp_path_factory.mktemp("iouring-rules")) as h:
        yield h


def test_rule_is_shipped_enabled_and_medium() -> None:
    (rule,) = [r for r in load_rules().rules if r.id == RULE]
    assert (rule.severity, list(rule.types)) == ("medium", ["process.io_uring"])


def test_an_open_through_io_uring_raises_a_finding_naming_process_and_op(harness) -> None:
    harness.ingest(on_node([uring(MALLORY, "op", 18, "OPENAT", "open")], "uring-open"))
    (f,) = [f for f in harness.findings("uring-open") if f.rule == RULE]
    assert (f.severity, f.process.pid, f.process.exe) == ("medium", 6666, "/usr/bin/bash")
    assert f.summary == ("mallory (/usr/bin/bash, pid 6666) used io_uring OPENAT "
                         "(open, arguments not seen) on uring-open")


@pytest.mark.parametrize(("opcode", "name", "cls"), [
    (35, "RENAMEAT", "namespace"), (36, "UNLINKAT", "namespace"), (42, "SETXATTR", "xattr")])
def test_namespace_and_xattr_ops_by_anyone_raise_it(harness, opcode, name, cls) -> None:
    node = f"uring-{name.lower()}"
    harness.ingest(on_node([uring(MALLORY, "op", opcode, name, cls)], node))
    assert RULE in harness.rules(node)


def test_a_connect_raises_it_only_in_a_gpu_process(harness) -> None:
    harness.ingest(on_node([uring(MALLORY, "op", 16, "CONNECT", "network")], "uring-net-plain"))
    assert RULE not in harness.rules("uring-net-plain")
    harness.ingest(on_node([gpu_open(ALICE), uring(ALICE, "op", 16, "CONNECT", "network",
                                                   t_s=1)], "uring-net-gpu"))
    (f,) = [f for f in harness.findings("uring-net-gpu") if f.rule == RULE]
    assert f.process.pid == ALICE["pid"] and "CONNECT (network" in f.summary


def test_reads_writes_counts_and_setups_are_quiet(harness) -> None:
    harness.ingest(on_node([
        uring(MALLORY, "op", 23, "WRITE", "write"), uring(MALLORY, "op", 26, "SEND", "send_recv"),
        uring(MALLORY, "op_count", 18, "OPENAT", "open", count=22),
        event("process.io_uring", process=MALLORY, process_io_uring={
            "kind": "setup", "ring": "0123456789abcdef", "ring_fd": 3, "sq_entries": 8,
            "cq_entries": 16}),
    ], "uring-quiet"))
    assert RULE not in harness.rules("uring-quiet")


def test_a_normal_training_job_raises_no_iouring_finding(harness) -> None:
    harness.ingest(training_job("uring-neg"))
    assert RULE not in harness.rules("uring-neg")
