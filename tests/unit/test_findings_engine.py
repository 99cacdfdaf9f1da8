"""The rules engine on its own: dedup and counts, state windows, helpers, errors."""

from __future__ import annotations

import textwrap

import pytest

from collector.findings import Engine, finding_dict, load_rules
from collector.findings.cel import in_cidrs, in_dirs, seconds_between
from collector.findings.state import parse_duration
from tests.unit.test_findings_support import ALICE, MALLORY, event, numbered

SIGKILL = {"target_pid": 4242, "signal": 9, "signal_name": "SIGKILL", "target_user": "alice"}


def engine_with(tmp_path, text: str | None = None) -> Engine:
    if text is not None:
        (tmp_path / "site.yaml").write_text(textwrap.dedent(text))
    return Engine(load_rules(tmp_path if text is not None else None))


def test_ten_thousand_repeats_are_one_finding_with_a_count(tmp_path):
    engine = engine_with(tmp_path)
    events = numbered([event("process.signal", t_s=i / 1000, process=MALLORY,
                             process_signal=SIGKILL) for i in range(10_000)])
    (finding,) = engine.evaluate(events)
    assert finding.count == 10_000
    assert finding.first_seen.ToNanoseconds() < finding.last_seen.ToNanoseconds()
    assert [e.seq for e in finding.events] == list(range(1, 9))  # the first few only


def test_different_keys_are_different_findings(tmp_path):
    engine = engine_with(tmp_path)
    found = engine.evaluate(numbered([
        event("process.signal", process=MALLORY, process_signal=SIGKILL),
        event("process.signal", process=MALLORY, process_signal={**SIGKILL, "target_pid": 9}),
        event("process.signal", node="n2", process=MALLORY, process_signal=SIGKILL),
    ]))
    assert sorted(f.key for f in found) == ["n1/mallory/4242", "n1/mallory/9", "n2/mallory/4242"]
    assert len({f.id for f in found}) == 3


def test_the_finding_json_has_the_contract_fields(tmp_path):
    (finding,) = engine_with(tmp_path).evaluate(numbered([
        event("process.signal", process=MALLORY, process_signal=SIGKILL)]))
    data = finding_dict(finding)
    assert set(data) == {"id", "rule", "title", "severity", "mitre", "node", "process", "summary",
                         "count", "first_seen", "last_seen", "events", "key"}
    assert set(data["process"]) == {"pid", "uid", "user", "exe", "comm", "container_id", "pod",
                                    "slurm_job"}
    assert data["count"] == 1 and data["events"] == [{"node": "n1", "boot_id": "b-n1", "seq": 1}]
    assert data["first_seen"] == "2023-11-14T22:13:20Z"


def test_a_node_level_finding_has_no_process(tmp_path):
    (finding,) = engine_with(tmp_path).evaluate(numbered([
        event("agent.silent", agent_silent={"silent_for_s": 15})]))
    assert "process" not in finding_dict(finding)
    assert finding.key == "n1"


COUNT_RULE = """
rules:
  - id: burst
    title: Burst of refused opens
    severity: low
    types: [gpu.open]
    condition: gpu_open.errno != 0
    state: {by: [node, process.user], within: 10s, count: 3}
"""


def refused(t_s: float, user: dict = MALLORY, node: str = "n1"):
    return event("gpu.open", node=node, t_s=t_s, process=user, gpu_open={"errno": 13})


def test_count_within_a_window_fires_once_per_burst(tmp_path):
    engine = engine_with(tmp_path, COUNT_RULE)
    # 2 in the window, then 3 within 10 s (fires), then 3 more (fires again)
    times = [0, 5, 30, 31, 32, 33, 34, 35]
    found = [f for f in engine.evaluate(numbered([refused(t) for t in times]))
             if f.rule == "burst"]
    assert len(found) == 1 and found[0].count == 2
    assert found[0].key == "n1/mallory"
    assert "3 times within" in found[0].summary


def test_count_groups_are_separate(tmp_path):
    engine = engine_with(tmp_path, COUNT_RULE)
    events = [refused(0, MALLORY), refused(1, ALICE), refused(2, MALLORY), refused(3, ALICE),
              refused(4, MALLORY, node="n2")]
    assert [f for f in engine.evaluate(numbered(events)) if f.rule == "burst"] == []


DISTINCT_RULE = """
rules:
  - id: many-users
    title: Many users signal one job
    severity: medium
    types: [process.signal]
    condition: "true"
    state:
      by: [node, string(process_signal.target_pid)]
      within: 1m
      count: 3
      distinct: process.user
"""


def test_distinct_values_within_a_window(tmp_path):
    engine = engine_with(tmp_path, DISTINCT_RULE)

    def sig(t_s, user):
        return event("process.signal", t_s=t_s, process={**MALLORY, "user": user},
                     process_signal=SIGKILL)

    quiet = engine.evaluate(numbered([sig(0, "a"), sig(1, "a"), sig(2, "b"), sig(100, "c")]))
    assert "many-users" not in {f.rule for f in quiet}
    loud = engine.evaluate(numbered([sig(101, "d"), sig(102, "e")], start=10))
    (finding,) = [f for f in loud if f.rule == "many-users"]
    assert "3 distinct: c, d, e" in finding.summary


def test_is_gpu_process_follows_opens_and_exits(tmp_path):
    engine = engine_with(tmp_path)
    open_ = event("gpu.open", process=ALICE, gpu_open={"path": "/dev/nvidia0"})
    engine.evaluate(numbered([open_]))
    assert engine.gpu("n1", 4242) and not engine.gpu("n2", 4242)
    engine.evaluate(numbered([event("process.exit", process=ALICE)], start=2))
    assert not engine.gpu("n1", 4242)


def test_an_evaluation_error_is_counted_not_raised(tmp_path):
    engine = engine_with(tmp_path, """
        rules:
          - id: divides
            title: t
            severity: info
            types: [gpu.open]
            condition: "true"
            key: [string(100 / gpu_open.errno)]
    """)
    found = engine.evaluate(numbered([event("gpu.open", process=ALICE, gpu_open={"errno": 0})]))
    assert "divides" not in {f.rule for f in found}
    assert engine.errors["divides"] == 1


def test_helpers():
    assert in_dirs("/home/a/x.so", ["/home"]) and not in_dirs("/homeless/x", ["/home"])
    assert in_dirs("/tmp", ["/tmp/"])
    assert in_cidrs("10.1.2.3", ["10.0.0.0/8"]) and not in_cidrs("nope", ["10.0.0.0/8"])
    assert in_cidrs("::1", ["::1/128"])
    assert seconds_between("2023-11-14T22:13:20Z", "2023-11-14T22:13:21.5Z") == 1.5
    assert parse_duration("90s") == 90 * 10**9 and parse_duration("1h") == 3600 * 10**9
    with pytest.raises(ValueError):
        parse_duration("0s")
