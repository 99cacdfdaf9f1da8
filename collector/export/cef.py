"""ArcSight Common Event Format (CEF:0) lines for gpuaudit events and findings.

``CEF:0|gpuaudit|gpuaudit|VERSION|SignatureID|Name|Severity|Extension``. In the
seven header fields a backslash and a pipe are escaped (``\\\\``, ``\\|``) and a
line break becomes a space (a header is one line). In extension values a
backslash, an equals sign and line breaks are escaped (``\\\\``, ``\\=``, ``\\n``,
``\\r``); pipes are not. Keys come from the CEF dictionary (``rt``, ``dvchost``,
``spid``, ``suser``, ``filePath``, ``src``, ``dpt``, ...) and the custom
``csN``/``csNLabel`` pairs; docs/exports.md lists them.
"""

from __future__ import annotations

from typing import Any

from collector.export import ocsf, ocsf_objects
from collector.export.base import PRODUCT, VERSION, Item, dumps

CEF_SEVERITY = {"info": 1, "low": 3, "medium": 5, "high": 8, "critical": 10}
"""Finding severity -> CEF 0-10 (0-3 Low, 4-6 Medium, 7-8 High, 9-10 Very-High)."""
EVENT_CEF_SEVERITY = {1: 1, 3: 5, 4: 8}  # the OCSF severity_id we give an event -> CEF

NAMES = {
    "gpu.open": "GPU device opened", "process.exec": "Process executed",
    "process.exit": "Process exited", "process.signal": "Signal sent to a GPU process",
    "process.ptrace": "Process traced", "process.vm_write": "Process memory written",
    "code.load": "Code mapped executable", "code.module_load": "Kernel module load",
    "code.bpf_load": "BPF program load", "file.write": "Protected file changed",
    "checkpoint.scan": "Checkpoint scanned", "net.connect": "Network connect",
    "net.accept": "Network accept", "net.listen": "Network listen",
    "agent.loss": "Audit events lost", "agent.gap": "Audit sequence gap",
    "agent.silent": "Audit agent silent", "agent.rejected": "Audit batch rejected",
}


def escape_header(value: Any) -> str:
    """A CEF header field: ``\\`` and ``|`` escaped, line breaks replaced by spaces."""
    s = str(value).replace("\\", "\\\\").replace("|", "\\|")
    return s.replace("\r\n", " ").replace("\n", " ").replace("\r", " ")


def escape_ext(value: Any) -> str:
    """A CEF extension value: ``\\``, ``=`` and line breaks escaped."""
    s = str(value).replace("\\", "\\\\").replace("=", "\\=")
    return s.replace("\r\n", "\\n").replace("\n", "\\n").replace("\r", "\\r")


def line(signature: str, name: str, severity: int, ext: list[tuple[str, Any]]) -> str:
    """One CEF line; extension pairs with an empty or None value are left out."""
    head = "|".join(escape_header(v) for v in
                    ("CEF:0", PRODUCT, PRODUCT, VERSION, signature, name, severity))
    body = " ".join(f"{k}={escape_ext(v)}" for k, v in ext if v not in (None, ""))
    return f"{head}|{body}"


def from_item(item: Item) -> str:
    """The CEF line for an event or a finding."""
    if item.kind == "finding":
        return from_finding(item.finding or {})
    return from_event(item.native())


def from_event(d: dict[str, Any]) -> str:
    """CEF for one event in its public JSON form."""
    etype = d.get("type", "")
    key = etype.replace(".", "_")
    x = d.get(key) or {}
    sev = ocsf.event_severity(d)
    ext: list[tuple[str, Any]] = [
        ("rt", ocsf_objects.rfc3339_ms(d.get("time"))), ("dvchost", d.get("node", "")),
        ("externalId", f"{d.get('node', '')}:{d.get('boot_id', '')}:{d.get('seq', 0)}"),
        ("cat", etype),
    ]
    ext += _process_ext(d.get("process") or {})
    ext += _payload_ext(etype, x)
    ext += [("cs6Label", "payload"), ("cs6", dumps(x))]
    return line(etype, NAMES.get(etype, etype), EVENT_CEF_SEVERITY.get(sev, 1), ext)


def from_finding(f: dict[str, Any]) -> str:
    """CEF for one finding (the findings contract)."""
    ext: list[tuple[str, Any]] = [
        ("rt", ocsf_objects.rfc3339_ms(f.get("last_seen"))),
        ("start", ocsf_objects.rfc3339_ms(f.get("first_seen"))),
        ("end", ocsf_objects.rfc3339_ms(f.get("last_seen"))),
        ("cnt", f.get("count", 1)), ("dvchost", f.get("node", "")),
        ("externalId", f.get("id", "")), ("cat", "finding"), ("msg", f.get("summary", "")),
        ("flexString1Label", "dedupeKey"), ("flexString1", f.get("key", "")),
    ]
    ext += _process_ext(f.get("process") or {})
    if f.get("mitre"):
        ext += [("cs6Label", "mitre"), ("cs6", ",".join(f["mitre"]))]
    sev = CEF_SEVERITY.get(str(f.get("severity", "")), 5)
    return line(str(f.get("rule", "")), str(f.get("title", "")), sev, ext)


def _process_ext(p: dict[str, Any]) -> list[tuple[str, Any]]:
    if not p:
        return []
    out: list[tuple[str, Any]] = [("spid", p.get("pid")), ("sproc", p.get("comm", "")),
                                  ("suser", p.get("user", "")), ("suid", p.get("uid"))]
    custom = [("cs1", "exe", p.get("exe", "")),
              ("cs2", "cmdline", " ".join(p.get("cmdline") or [])),
              ("cs3", "slurmJob", p.get("slurm_job", "")),
              ("cs4", "containerId", p.get("container_id", "")), ("cs5", "pod", p.get("pod", ""))]
    for key, label, value in custom:
        if value:  # a label without its value only confuses the SIEM's parser
            out += [(f"{key}Label", label), (key, value)]
    return out


def _payload_ext(etype: str, x: dict[str, Any]) -> list[tuple[str, Any]]:
    if "target_pid" in x:
        return [("dpid", x["target_pid"]), ("duser", x.get("target_user", "")),
                ("dproc", x.get("target_comm", "")), ("outcome", _outcome(x.get("result", 0)))]
    if etype.startswith("net.") and "remote_addr" in x:
        local = [("src", x.get("local_addr", "")), ("spt", x.get("local_port") or None)]
        remote = [("dst", x.get("remote_addr", "")), ("dpt", x.get("remote_port") or None)]
        if etype == "net.accept":  # the peer initiated: it is the source
            local, remote = ([("src", x["remote_addr"]), ("spt", x.get("remote_port") or None)],
                             [("dst", x.get("local_addr", "")), ("dpt", x.get("local_port"))])
        return [*local, *remote, ("proto", x.get("protocol", "").upper())]
    if "path" in x:
        out: list[tuple[str, Any]] = [("filePath", x["path"]),
                                      ("fname", x["path"].rsplit("/", 1)[-1])]
        if x.get("sha256"):
            out += [("fileHash", x["sha256"]), ("fsize", x.get("size"))]
        if "errno" in x:
            out.append(("outcome", _outcome(-int(x["errno"]))))
        elif "result" in x:
            out.append(("outcome", _outcome(x["result"])))
        return out
    return []


def _outcome(result: Any) -> str:
    return "success" if int(result or 0) >= 0 else f"failure ({result})"
