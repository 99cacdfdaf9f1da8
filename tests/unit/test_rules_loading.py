"""Loading rule files: the defaults, the operator's overrides, and clear errors."""

from __future__ import annotations

import textwrap

import pytest

from collector.findings import RuleError, load_rules
from collector.findings.rules import DEFAULT_RULES_DIR
from collector.storage.common import SEVERITIES

GOOD = """
rules:
  - id: my-rule
    title: Mine
    severity: low
    types: [gpu.open]
    condition: gpu_open.errno == 0
"""


@pytest.fixture
def rules_dir(tmp_path):
    def write(text: str, name: str = "site.yaml"):
        (tmp_path / name).write_text(textwrap.dedent(text))
        return tmp_path

    return write


def by_id(ruleset):
    return {r.id: r for r in ruleset.rules}


def test_the_shipped_rules_load_and_are_well_formed():
    rules = load_rules().rules
    assert len(rules) >= 20
    for rule in rules:
        assert rule.severity in SEVERITIES
        assert rule.mitre, rule.id
        assert rule.description and rule.title, rule.id
        assert rule.source.startswith(str(DEFAULT_RULES_DIR))


def test_an_operator_rule_is_added(rules_dir):
    rules = by_id(load_rules(rules_dir(GOOD)))
    assert rules["my-rule"].severity == "low"
    assert "gpu-signal-cross-user" in rules


def test_an_operator_file_overrides_keys_of_a_default_rule(rules_dir):
    rules = by_id(load_rules(rules_dir("""
        rules:
          - id: gpu-signal-cross-user
            severity: critical
            add_exceptions: ['process.user == "backup"']
    """)))
    rule = rules["gpu-signal-cross-user"]
    assert rule.severity == "critical"
    assert rule.title == "GPU process signalled by another user"  # untouched keys kept
    assert [e.source for e in rule.exceptions][-1] == 'process.user == "backup"'
    assert len(rule.exceptions) == 2  # the default's job_managers exception stays


def test_an_operator_file_disables_and_enables_rules(rules_dir):
    ruleset = load_rules(rules_dir("""
        rules:
          - id: kernel-module-load
            enabled: false
          - id: gpu-open-outside-job
            enabled: true
    """))
    assert "kernel-module-load" not in by_id(ruleset)
    assert "kernel-module-load" in ruleset.disabled
    assert "gpu-open-outside-job" in by_id(ruleset)


def test_lists_are_replaced_or_extended(rules_dir):
    helpers = load_rules(rules_dir("""
        lists:
          gpu_users: [alice, bob]
        extend_lists:
          job_managers: [/opt/sched/bin/agent]
    """)).helpers
    assert helpers.lists["gpu_users"] == {"alice", "bob"}
    assert "/opt/sched/bin/agent" in helpers.lists["job_managers"]
    assert "/usr/sbin/slurmstepd" in helpers.lists["job_managers"]


@pytest.mark.parametrize(("text", "message"), [
    ("rules:\n  - id: bad\n    title: t\n    severity: low\n    types: [gpu.open]\n"
     "    condition: gpu_open.errno ==\n", "Syntax error"),
    ("rules:\n  - id: bad\n    title: t\n    severity: low\n    types: [gpu.open]\n"
     "    condition: nosuch(node)\n", "undeclared reference to 'nosuch'"),
    ("rules:\n  - id: bad\n    title: t\n    severity: low\n    types: [gpu.open]\n"
     "    condition: size(node) + 1\n", "gives INT, not bool"),
    ("rules:\n  - id: bad\n    title: t\n    severity: urgent\n    types: [gpu.open]\n"
     "    condition: 'true'\n", "severity 'urgent'"),
    ("rules:\n  - id: bad\n    title: t\n    severity: low\n    types: [gpu.opn]\n"
     "    condition: 'true'\n", "unknown event type 'gpu.opn'"),
    ("rules:\n  - id: bad\n    title: t\n    severity: low\n    types: [gpu.open]\n"
     "    condition: 'true'\n    mitre: [X1]\n", "'X1' is not an ATT&CK technique id"),
    ("rules:\n  - id: bad\n    title: t\n    severity: low\n    types: [gpu.open]\n"
     "    condition: 'true'\n    colour: red\n", "unknown key 'colour'"),
    ("rules:\n  - id: bad\n    title: t\n    severity: low\n    types: [gpu.open]\n"
     "    condition: in_list(\"nope\", process.user)\n", "list 'nope' is not defined"),
    ("rules:\n  - id: bad\n    title: t\n    severity: low\n    types: [gpu.open]\n"
     "    condition: 'true'\n    state: {by: [node], within: soon, count: 2}\n",
     "window 'soon'"),
    ("rules:\n  - id: bad\n    severity: low\n    types: [gpu.open]\n    condition: 'true'\n",
     "missing 'title'"),
    ("rules:\n  - id: bad\n    id: bad2\n", "given twice"),
])
def test_a_bad_rule_fails_loading_naming_file_and_rule(rules_dir, text, message):
    directory = rules_dir(text, "broken.yaml")
    with pytest.raises(RuleError) as err:
        load_rules(directory)
    assert message in str(err.value)
    assert str(directory / "broken.yaml") in str(err.value)
    if "given twice" not in message:
        assert "rule 'bad'" in str(err.value)


def test_a_missing_rules_directory_is_an_error(tmp_path):
    with pytest.raises(RuleError, match="not a directory"):
        load_rules(tmp_path / "nope")


def test_a_default_id_defined_twice_in_the_defaults_is_an_error(tmp_path):
    (tmp_path / "a.yaml").write_text(GOOD)
    (tmp_path / "b.yaml").write_text(GOOD)
    with pytest.raises(RuleError, match=r"id already used in .*a\.yaml"):
        load_rules(default_dir=tmp_path)
