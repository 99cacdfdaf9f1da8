"""OCSF 1.5.0 objects built from gpuaudit's JSON (device, user, file, process,
actor, endpoint, status), the classes' ids, and time conversions."""

from __future__ import annotations

import os
import shlex
import time
from datetime import UTC, datetime, timedelta
from typing import Any

# (class_uid, category_uid, class_name, category_name)
PROCESS = (1007, 1, "Process Activity", "System Activity")
FILE = (1001, 1, "File System Activity", "System Activity")
MODULE = (1005, 1, "Module Activity", "System Activity")
NETWORK = (4001, 4, "Network Activity", "Network Activity")
FINDING = (2004, 2, "Detection Finding", "Findings")
INVENTORY = (5001, 5, "Device Inventory Info", "Discovery")
BASE = (0, 0, "Base Event", "Uncategorized")
Cls = tuple[int, int, str, str]

FILE_REGULAR, FILE_CHAR_DEVICE = 1, 3
SHA256 = 3  # fingerprint.algorithm_id
LOAD_STANDARD, LOAD_MAPPED, LOAD_OTHER = 1, 4, 99
DIRECTION_INBOUND, DIRECTION_OUTBOUND, DIRECTION_LATERAL = 1, 2, 3
DEVICE_SERVER = 1
STATUS_SUCCESS, STATUS_FAILURE = 1, 2
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def device(node: str) -> dict:
    """The node as an OCSF device (a server, named by the agent's node name)."""
    return {"hostname": node or "unknown", "name": node or "unknown",
            "type_id": DEVICE_SERVER, "type": "Server"}


def user(uid: Any, name: str = "") -> dict:
    """An OCSF user; OCSF's ``uid`` is a string."""
    u: dict[str, Any] = {"uid": str(uid)}
    if name:
        u["name"] = name
    return u


def file(path: str, type_id: int = FILE_REGULAR, **extra: Any) -> dict:
    """An OCSF file (name and type_id are required); empty extras are left out."""
    f = {"name": os.path.basename(path.rstrip("/")) or path or "unknown", "type_id": type_id}
    if path:
        f["path"] = path
    f.update({k: v for k, v in extra.items() if v not in (None, "")})
    return f


def process(p: dict) -> dict:
    """An OCSF process from gpuaudit's Process (JSON form)."""
    out: dict[str, Any] = {"pid": int(p.get("pid", 0))}
    if p.get("comm"):
        out["name"] = p["comm"]
    if p.get("tid"):
        out["tid"] = int(p["tid"])
    if p.get("cmdline"):
        out["cmd_line"] = shlex.join(p["cmdline"])
    if p.get("exe"):
        out["file"] = file(p["exe"])
    if "uid" in p:
        out["user"] = user(p["uid"], p.get("user", ""))
    if p.get("ppid"):
        out["parent_process"] = {"pid": int(p["ppid"])}
    if p.get("container_id"):
        out["container"] = {"uid": p["container_id"]}
    return out


def actor(p: dict) -> dict:
    """The OCSF actor: the process that did it, and its user."""
    a: dict[str, Any] = {"process": process(p)}
    if "uid" in p:
        a["user"] = user(p["uid"], p.get("user", ""))
    return a


def target(pid: int, comm: str, user_name: str) -> dict:
    """The process acted upon (signal, ptrace, vm_write target)."""
    t: dict[str, Any] = {"pid": int(pid)}
    if comm:
        t["name"] = comm
    if user_name:
        t["user"] = {"name": user_name}
    return t


def status(ok: bool, code: Any = None) -> dict:
    """status_id 1 Success, or 2 Failure with the errno / -errno as status_code."""
    if ok:
        return {"status_id": STATUS_SUCCESS, "status": "Success"}
    return {"status_id": STATUS_FAILURE, "status": "Failure", "status_code": str(code)}


def hashes(sha256: str | None) -> list[dict] | None:
    """file.hashes for a hex SHA-256, or None."""
    return [{"algorithm_id": SHA256, "algorithm": "SHA-256", "value": sha256}] if sha256 else None


def endpoint(addr: str, port: Any, host: str = "") -> dict | None:
    """An OCSF network_endpoint: the address, else ``host`` (the node, for a local
    endpoint whose address the kernel did not report); None when neither is known,
    since OCSF requires an endpoint to name something (at_least_one ip, hostname...)."""
    if addr:
        ep: dict[str, Any] = {"ip": addr}
    elif host:
        ep = {"hostname": host}
    else:
        return None
    if port:
        ep["port"] = int(port)
    return ep


def rfc3339_ms(text: Any) -> int:
    """Milliseconds since the epoch of an RFC 3339 time (digits past ms cut); 0 if unset."""
    if not text:
        return 0
    s = str(text).replace("Z", "+00:00")
    if "." in s:  # fromisoformat wants 6 fraction digits at most
        head, rest = s.split(".", 1)
        n = len(rest) - len(rest.lstrip("0123456789"))
        s = f"{head}.{rest[:n][:6].ljust(6, '0')}{rest[n:]}"
    # integer arithmetic: timestamp() * 1000 can round .123 down to .122
    return (datetime.fromisoformat(s) - EPOCH) // timedelta(milliseconds=1)


def now_ms() -> int:
    """Now, in milliseconds since the epoch."""
    return time.time_ns() // 1_000_000
