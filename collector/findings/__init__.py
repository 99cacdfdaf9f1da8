"""Findings: rules over the stored event stream (issue #7, docs/findings.md).

``load_rules`` reads and compiles the rule files, ``Engine`` evaluates them,
``FindingsFollower`` runs the engine over newly stored events and
``FollowerProcess`` runs that in a child process (what the collector does),
calling the ``on_finding`` hooks in the collector (the exports subscribe there).
"""

from collector.findings.engine import Engine, finding_dict, finding_id
from collector.findings.follower import EventHook, FindingHook, FindingsFollower
from collector.findings.process import FollowerProcess
from collector.findings.rules import DEFAULT_RULES_DIR, Rule, RuleError, RuleSet, load_rules

__all__ = [
    "DEFAULT_RULES_DIR",
    "Engine",
    "EventHook",
    "FindingHook",
    "FindingsFollower",
    "FollowerProcess",
    "Rule",
    "RuleError",
    "RuleSet",
    "finding_dict",
    "finding_id",
    "load_rules",
]
