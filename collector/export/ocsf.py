"""gpuaudit events and findings as OCSF 1.5.0 events (JSON-ready dicts).

The mapping, type by type, is the table in docs/exports.md. Every output has the
base attributes OCSF requires (``class_uid``, ``category_uid``, ``activity_id``,
``type_uid`` = class_uid * 100 + activity_id, ``severity_id``, ``time`` in ms,
``metadata`` with ``product`` and ``version``). ``metadata.uid`` is
``node:boot_id:seq`` (the collector's dedupe key) and ``metadata.original_time``
keeps the nanosecond RFC 3339 time. Payload fields OCSF has no attribute for
(and the Slurm job, pod and cgroup) are kept under ``unmapped``, so nothing of the
gpuaudit event is lost. Event types without an OCSF class become a Base Event
(class_uid 0, activity 99 Other) carrying the whole gpuaudit event in
``unmapped``, unless the sink is told to skip them.
"""

from __future__ import annotations

from typing import Any

from collector.export import ocsf_objects as o
from collector.export.base import PRODUCT, VERSION, Item
from collector.export.ocsf_map import MAPPERS

OCSF_VERSION = "1.5.0"

SEVERITY_IDS = {"info": 1, "low": 2, "medium": 3, "high": 4, "critical": 5}
SEVERITY_NAMES = {0: "Unknown", 1: "Informational", 2: "Low", 3: "Medium", 4: "High",
                  5: "Critical", 6: "Fatal", 99: "Other"}
# Audit failure (NIST AU-5) and unsafe content deserve more than "Informational".
EVENT_SEVERITY = {"agent.silent": 3, "agent.loss": 3, "agent.gap": 3, "agent.rejected": 3,
                  "gpu.xid": 3}
CHECKPOINT_SEVERITY = {"suspicious": 3, "malicious": 4}

ANALYTIC_RULE = 1


class Unmapped(Exception):
    """The event type has no OCSF class here (the sink emits a Base Event or skips it)."""


# -- entry points


def from_item(item: Item, unmapped: str = "base") -> dict[str, Any] | None:
    """OCSF for an event or finding; None for an unmapped type when ``unmapped == "skip"``."""
    if item.kind == "finding":
        return from_finding(item.finding or {})
    d = item.native()
    try:
        return from_event(d)
    except Unmapped:
        return base_event(d) if unmapped == "base" else None


def from_event(d: dict[str, Any]) -> dict[str, Any]:
    """OCSF for one event in its public JSON form; :class:`Unmapped` for unmapped types."""
    mapper = MAPPERS.get(d.get("type", ""))
    if mapper is None:
        raise Unmapped(d.get("type", ""))
    cls, activity_id, activity_name, body = mapper(d)
    out = _header(cls, activity_id, activity_name, event_severity(d), d)
    out.update(body)
    out.setdefault("device", o.device(d.get("node", "")))
    out["unmapped"] = _leftovers(d)
    return _declare_profiles(out)


def base_event(d: dict[str, Any]) -> dict[str, Any]:
    """A Base Event (class 0, activity 99 Other) carrying the whole gpuaudit event."""
    out = _header(o.BASE, 99, d.get("type", "Other"), event_severity(d), d)
    out["message"] = f"gpuaudit {d.get('type', '')} on {d.get('node', '')}"
    out["device"] = o.device(d.get("node", ""))
    if d.get("process"):
        out["actor"] = o.actor(d["process"])
    out["unmapped"] = {"gpuaudit": d}
    return _declare_profiles(out)


def from_finding(f: dict[str, Any]) -> dict[str, Any]:
    """A Detection Finding (2004): activity Create for a new finding, Update when it recurs."""
    count = int(f.get("count", 1) or 1)
    activity_id, activity_name = (1, "Create") if count <= 1 else (2, "Update")
    sev = SEVERITY_IDS.get(str(f.get("severity", "")), 99)
    first, last = o.rfc3339_ms(f.get("first_seen")), o.rfc3339_ms(f.get("last_seen"))
    out = _base_fields(o.FINDING, activity_id, activity_name, sev, last or o.now_ms())
    if sev == 99:
        out["severity"] = str(f.get("severity", ""))
    # one uid per published state of the finding: Create, then each Update
    out["metadata"] = _metadata(f"finding:{f.get('id', '')}:{count}", None, None, "finding")
    out["message"] = str(f.get("summary") or f.get("title") or "")
    out["count"] = count
    if first:
        out["start_time"] = first
    if last:
        out["end_time"] = last
    out["status_id"], out["status"] = 1, "New"
    out["finding_info"] = _finding_info(f, first, last)
    out["device"] = o.device(str(f.get("node", "")))
    proc = f.get("process")
    if proc:
        out["actor"] = o.actor({**proc, "cmdline": []})
    out["unmapped"] = {"gpuaudit_finding": f}
    return _declare_profiles(out)


def event_severity(d: dict[str, Any]) -> int:
    """OCSF severity_id of an event (the syslog and CEF severities derive from it)."""
    if d.get("type") == "checkpoint.scan":
        return CHECKPOINT_SEVERITY.get((d.get("checkpoint_scan") or {}).get("verdict", ""), 1)
    return EVENT_SEVERITY.get(d.get("type", ""), 1)


# -- common parts


def _declare_profiles(out: dict[str, Any]) -> dict[str, Any]:
    """List the OCSF profiles the event uses in ``metadata.profiles``.

    ``host`` always: every output is about a node (``device``) and most about a
    process on it (``actor``), which Network Activity, Detection Finding and the
    Base Event define only through that profile. ``container`` when a process
    carries ``container``, an attribute of that profile only.
    """
    profiles = ["host"]
    procs = [out.get("process"), (out.get("actor") or {}).get("process")]
    if any(isinstance(p, dict) and "container" in p for p in procs):
        profiles.append("container")
    out["metadata"]["profiles"] = profiles
    return out



def _base_fields(cls: o.Cls, activity_id: int, activity_name: str, sev: int, t_ms: int) -> dict:
    class_uid, category_uid, class_name, category_name = cls
    return {
        "class_uid": class_uid, "class_name": class_name,
        "category_uid": category_uid, "category_name": category_name,
        "activity_id": activity_id, "activity_name": activity_name,
        "type_uid": class_uid * 100 + activity_id,
        # the caption of type_uid: for 99 Other, activity_name carries our label instead
        "type_name": f"{class_name}: {'Other' if activity_id == 99 else activity_name}",
        "severity_id": sev, "severity": SEVERITY_NAMES.get(sev, "Other"),
        "time": t_ms,
    }


def _header(cls: o.Cls, activity_id: int, activity_name: str, sev: int, d: dict) -> dict:
    t = d.get("time", "")
    out = _base_fields(cls, activity_id, activity_name, sev, o.rfc3339_ms(t) or o.now_ms())
    uid = f"{d.get('node', '')}:{d.get('boot_id', '')}:{d.get('seq', 0)}"
    out["metadata"] = _metadata(uid, t or None, int(d.get("seq", 0)), d.get("type", ""))
    return out


def _metadata(uid: str, original_time: str | None, seq: int | None, code: str) -> dict:
    md: dict[str, Any] = {
        "version": OCSF_VERSION,
        "product": {"name": PRODUCT, "vendor_name": PRODUCT, "version": VERSION},
        "uid": uid,
        "event_code": code,
        "log_name": "gpuaudit",
        "logged_time": o.now_ms(),
    }
    if original_time:
        md["original_time"] = original_time
    if seq is not None:
        md["sequence"] = seq
    return md


def _leftovers(d: dict) -> dict:
    """The payload and the job identity OCSF has no attribute for."""
    key = d["type"].replace(".", "_")
    p = d.get("process") or {}
    out: dict[str, Any] = {key: d.get(key, {})}
    job = {k: p[k] for k in ("cgroup", "pod", "slurm_job", "gid") if p.get(k)}
    if job:
        out["process"] = job
    return out


def _finding_info(f: dict, first: int, last: int) -> dict:
    rule = str(f.get("rule", ""))
    info: dict[str, Any] = {
        "uid": str(f.get("id", "")),
        "title": str(f.get("title", "")),
        "desc": str(f.get("summary", "")),
        "types": [rule] if rule else [],
        "analytic": {"uid": rule, "name": rule, "type_id": ANALYTIC_RULE, "type": "Rule"},
    }
    if first:
        info["created_time"] = info["first_seen_time"] = first
    if last:
        info["modified_time"] = info["last_seen_time"] = last
    attacks = [_attack(m) for m in f.get("mitre") or []]
    if attacks:
        info["attacks"] = attacks
    related = [{"uid": f"{e.get('node', '')}:{e.get('boot_id', '')}:{e.get('seq', 0)}"}
               for e in f.get("events") or []]
    if related:
        info["related_events"] = related
    return info


def _attack(mitre_id: str) -> dict:
    """T1055 -> technique; T1055.008 -> technique + sub_technique; TA0040 -> tactic."""
    m = str(mitre_id)
    if m.startswith("TA"):
        return {"tactic": {"uid": m}}
    if "." in m:
        return {"technique": {"uid": m.split(".")[0]}, "sub_technique": {"uid": m}}
    return {"technique": {"uid": m}}
