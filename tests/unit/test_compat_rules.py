"""The compat-syscall rule over synthetic events stored through the real ingest
path of an in-process collector (as tests/unit/test_rules_defaults.py does for
the other shipped rules)."""

from __future__ import annotations

import pytest

from collector.findings import load_rules
from tests.unit.test_findings_support import (
    ALICE,
    MALLORY,
    event,
    findings_collector,
    on_node,
    training_job,
)

RULE = "compat-syscall"
OPEN_INT80 = {"nr": 5, "name": "open", "mode": "int80_in_64bit", "args": [1073745920, 65, 420],
              "cs": 51, "ip": 93824992235842}


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    with findings_collector(tmp_path_factory.mktemp("compat-rules")) as h:
        yield h


def test_rule_is_shipped_enabled_and_high() -> None:
    (rule,) = [r for r in load_rules().rules if r.id == RULE]
    assert (rule.severity, list(rule.types)) == ("high", ["process.compat_syscall"])


def test_int80_open_raises_a_finding_naming_process_and_call(harness) -> None:
    harness.ingest(on_node([event("process.compat_syscall", process=MALLORY,
                                  process_compat_syscall=OPEN_INT80)], "compat-pos"))
    (f,) = [f for f in harness.findings("compat-pos") if f.rule == RULE]
    assert (f.severity, f.process.pid, f.process.exe) == ("high", 6666, "/usr/bin/bash")
    assert f.summary == ("mallory (/usr/bin/bash, pid 6666) made ia32 syscall open via "
                         "int80_in_64bit on compat-pos")


def test_unnamed_number_and_32bit_process_are_summarised_by_number(harness) -> None:
    harness.ingest(on_node([event("process.compat_syscall", process=ALICE,
                                  process_compat_syscall={"nr": 999, "mode": "ia32_process",
                                                          "cs": 35})], "compat-nr"))
    (f,) = [f for f in harness.findings("compat-nr") if f.rule == RULE]
    assert "made ia32 syscall 999 via ia32_process" in f.summary


def test_a_normal_training_job_raises_no_compat_finding(harness) -> None:
    harness.ingest(training_job("compat-neg"))
    assert RULE not in harness.rules("compat-neg")
