"""Rule files: the shipped default set plus the operator's, merged and compiled.

A rule file is YAML with two optional sections, ``lists`` (named allow-lists
the conditions read with ``in_list(NAME, value)``) and ``rules``. The operator's
files (``--rules DIR``, ``*.yaml``/``*.yml`` in name order) are read after the
defaults: a list of the same name replaces the default one (``extend_lists``
appends to it); a rule with a default's id overrides the keys it gives
(``enabled: false`` turns it off, ``add_exceptions`` appends exceptions), and a
new id adds a rule. Every rule is compiled once, at load; any problem stops
loading with a :class:`RuleError` that names the file and the rule id.
The format is documented in docs/findings.md.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from collector import strictyaml
from collector.findings.cel import CelError, Environment, Helpers, Program
from collector.findings.state import StateSpec, parse_state
from collector.storage.common import SEVERITIES
from gpuaudit.v1 import events_pb2

DEFAULT_RULES_DIR = Path(__file__).resolve().parent.parent / "rules"
"""The shipped rule set (collector/rules/*.yaml, package data)."""

EVENT_TYPES = frozenset(
    f.name.replace("_", ".", 1)
    for f in events_pb2.Event.DESCRIPTOR.oneofs_by_name["payload"].fields
)
_MITRE = re.compile(r"^T\d{4}(\.\d{3})?$")
_LIST_REF = re.compile(r"\b(?:in_list|in_list_dirs|in_list_cidrs|list_set)\(\s*\"([^\"]*)\"")
_RULE_KEYS = {"id", "title", "description", "severity", "mitre", "types", "condition",
              "exceptions", "key", "summary", "state", "enabled"}
_OVERRIDE_KEYS = _RULE_KEYS | {"add_exceptions"}
_FILE_KEYS = {"lists", "extend_lists", "rules"}


class RuleError(ValueError):
    """A rule file or rule is wrong; the message names the file and the rule id."""


@dataclass(frozen=True)
class Rule:
    """One compiled rule."""

    id: str
    title: str
    description: str
    severity: str
    mitre: tuple[str, ...]
    types: frozenset[str]              # event types it reads
    condition: Program
    exceptions: tuple[Program, ...]    # any true: the event is not a finding
    key: tuple[Program, ...]           # dedup key parts (empty: node, and pid if any)
    summary: Program | None            # one line; None: the title
    state: StateSpec | None            # count/distinct/outlier over a window
    source: str                        # file that defined (or last changed) it


@dataclass(frozen=True)
class RuleSet:
    """The enabled rules, the lists they read and the environment they were compiled in."""

    rules: tuple[Rule, ...]
    helpers: Helpers
    env: Environment
    disabled: tuple[str, ...]

    def types(self) -> frozenset[str]:
        """Every event type some rule reads."""
        return frozenset(t for r in self.rules for t in r.types)


def load_rules(operator_dir: str | Path | None = None,
               default_dir: str | Path = DEFAULT_RULES_DIR) -> RuleSet:
    """The default rules from ``default_dir`` merged with ``operator_dir``'s, compiled.

    Raises RuleError (naming file and rule) for an unreadable file, bad YAML,
    an unknown key, a wrong value or a condition that does not compile.
    """
    merged = _Merged()
    for path in _rule_files(Path(default_dir)):
        merged.add(path, _read(path), operator=False)
    if operator_dir is not None:
        directory = Path(operator_dir)
        if not directory.is_dir():
            raise RuleError(f"{directory}: not a directory of rule files")
        for path in _rule_files(directory):
            merged.add(path, _read(path), operator=True)
    return merged.compile()


def _rule_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())



def _read(path: Path) -> dict[str, Any]:
    try:
        data = strictyaml.load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise RuleError(f"{path}: {err}") from None
    data = data or {}
    if not isinstance(data, dict):
        raise RuleError(f"{path}: a rule file is a mapping with 'lists' and 'rules'")
    unknown = set(data) - _FILE_KEYS
    if unknown:
        raise RuleError(f"{path}: unknown section {sorted(unknown)[0]!r} "
                        f"(known: {', '.join(sorted(_FILE_KEYS))})")
    return data


class _Merged:
    """Raw rules and lists as the files are read, before compiling."""

    def __init__(self) -> None:
        self.rules: dict[str, dict[str, Any]] = {}
        self.sources: dict[str, str] = {}
        self.lists: dict[str, set[str]] = {}

    def add(self, path: Path, data: Mapping[str, Any], operator: bool) -> None:
        for name, values in _lists(path, data.get("lists")).items():
            self.lists[name] = set(values)
        for name, values in _lists(path, data.get("extend_lists")).items():
            self.lists.setdefault(name, set()).update(values)
        rules = data.get("rules") or []
        if not isinstance(rules, list):
            raise RuleError(f"{path}: 'rules' must be a list of rules")
        for raw in rules:
            self._add_rule(path, raw, operator)

    def _add_rule(self, path: Path, raw: Any, operator: bool) -> None:
        if not isinstance(raw, dict) or not isinstance(raw.get("id"), str) or not raw["id"]:
            raise RuleError(f"{path}: every rule needs an 'id' (a non-empty string): {raw!r}")
        rule_id = raw["id"]
        where = f"{path}: rule {rule_id!r}"
        allowed = _OVERRIDE_KEYS if operator else _RULE_KEYS
        unknown = set(raw) - allowed
        if unknown:
            raise RuleError(f"{where}: unknown key {sorted(unknown)[0]!r} "
                            f"(known: {', '.join(sorted(allowed))})")
        if rule_id in self.rules and not operator:
            raise RuleError(f"{where}: id already used in {self.sources[rule_id]}")
        base = dict(self.rules.get(rule_id, {}))
        extra = raw.get("add_exceptions", [])
        base.update({k: v for k, v in raw.items() if k != "add_exceptions"})
        if extra:
            base["exceptions"] = [*_strings(where, "exceptions", base.get("exceptions", [])),
                                  *_strings(where, "add_exceptions", extra)]
        self.rules[rule_id] = base
        self.sources[rule_id] = str(path)

    def compile(self) -> RuleSet:
        helpers = Helpers(lists={k: frozenset(v) for k, v in self.lists.items()})
        env = Environment(helpers)
        rules, disabled = [], []
        for rule_id, raw in self.rules.items():
            where = f"{self.sources[rule_id]}: rule {rule_id!r}"
            enabled = raw.get("enabled", True)
            if not isinstance(enabled, bool):
                raise RuleError(f"{where}: 'enabled' must be true or false")
            if not enabled:
                disabled.append(rule_id)
                continue
            rules.append(_compile(where, self.sources[rule_id], raw, env, helpers))
        return RuleSet(tuple(rules), helpers, env, tuple(disabled))


def _lists(path: Path, raw: Any) -> dict[str, list[str]]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise RuleError(f"{path}: lists must map a name to a list of strings")
    return {str(name): _strings(f"{path}: list {name!r}", "values", values or [])
            for name, values in raw.items()}


def _strings(where: str, what: str, values: Any) -> list[str]:
    if not isinstance(values, list) or not all(isinstance(v, str | int) for v in values):
        raise RuleError(f"{where}: {what} must be a list of strings")
    return [str(v) for v in values]


def _compile(where: str, source: str, raw: Mapping[str, Any], env: Environment,
             helpers: Helpers) -> Rule:
    severity, mitre, types = _checked_meta(where, raw)

    def expr(text: Any, result: str) -> Program:
        return _expr(env, helpers, text, result)

    try:
        return Rule(
            id=raw["id"], title=str(raw["title"]), description=str(raw.get("description", "")),
            severity=severity, mitre=mitre, types=types,
            condition=expr(raw["condition"], "bool"),
            exceptions=tuple(expr(e, "bool")
                             for e in _strings(where, "exceptions", raw.get("exceptions", []))),
            key=tuple(expr(k, "any") for k in _strings(where, "key", raw.get("key", []))),
            summary=expr(raw["summary"], "string") if "summary" in raw else None,
            state=parse_state(raw.get("state"), expr),
            source=source,
        )
    except RuleError:
        raise
    except (CelError, ValueError) as err:
        raise RuleError(f"{where}: {err}") from None


def _checked_meta(where: str, raw: Mapping[str, Any]) -> tuple[str, tuple[str, ...],
                                                               frozenset[str]]:
    """(severity, mitre, types) of ``raw``, checked; RuleError naming ``where`` otherwise."""
    for needed in ("title", "severity", "types", "condition"):
        if needed not in raw:
            raise RuleError(f"{where}: missing {needed!r}")
    severity = raw["severity"]
    if severity not in SEVERITIES:
        raise RuleError(f"{where}: severity {severity!r} is not one of {', '.join(SEVERITIES)}")
    mitre = _strings(where, "mitre", raw.get("mitre", []))
    bad = [m for m in mitre if not _MITRE.match(m)]
    if bad:
        raise RuleError(f"{where}: {bad[0]!r} is not an ATT&CK technique id (T1234 or T1234.001)")
    types = _strings(where, "types", raw["types"])
    unknown = [t for t in types if t not in EVENT_TYPES] or ([] if types else [""])
    if unknown:
        raise RuleError(f"{where}: 'types' lists unknown event type {unknown[0]!r}"
                        f" (known: {', '.join(sorted(EVENT_TYPES))})")
    return severity, tuple(mitre), frozenset(types)


def _expr(env: Environment, helpers: Helpers, source: Any, result: str) -> Program:
    if not isinstance(source, str):
        raise CelError(f"expected a CEL expression (a string), got {source!r}")
    missing = [n for n in _LIST_REF.findall(source) if n not in helpers.lists]
    if missing:
        raise CelError(f"list {missing[0]!r} is not defined in any rule file's 'lists'")
    return env.compile(source, result)


def rule_ids(rules: Iterable[Rule]) -> list[str]:
    """The ids of ``rules``, in order."""
    return [r.id for r in rules]
