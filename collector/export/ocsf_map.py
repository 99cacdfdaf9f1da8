"""One mapper per gpuaudit event type: (OCSF class, activity_id, activity_name,
class-specific attributes). docs/exports.md has the same table."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from collector.export import ocsf_objects as o

TERMINATING_SIGNALS = {1, 2, 3, 6, 9, 15}  # HUP INT QUIT ABRT KILL TERM: a request to end it
PTRACE_OPEN = {"PTRACE_ATTACH", "PTRACE_SEIZE"}  # the rest we report write into the tracee
FILE_OPS = {"create": (1, "Create"), "open_write": (3, "Update"), "truncate": (3, "Update"),
            "rename": (5, "Rename"), "link": (1, "Create"), "unlink": (4, "Delete")}
EINPROGRESS, ECONNREFUSED = 115, 111

Mapped = tuple[o.Cls, int, str, dict[str, Any]]


def _exec(d: dict) -> Mapped:
    p, x = d.get("process") or {}, d["process_exec"]
    proc = o.process({**p, "exe": x.get("filename") or p.get("exe", ""),
                     "cmdline": x.get("argv") or p.get("cmdline", [])})
    actor = {"process": {"pid": int(p.get("ppid", 0))}, "user": o.user(p.get("uid", 0),
                                                                      p.get("user", ""))}
    return o.PROCESS, 1, "Launch", {"actor": actor, "process": proc, **o.status(True)}


def _exit(d: dict) -> Mapped:
    p, x = d.get("process") or {}, d["process_exit"]
    body = {"actor": o.actor(p), "process": o.process(p), "exit_code": int(x.get("exit_code", 0))}
    if x.get("signal"):
        body["status_detail"] = f"killed by signal {x['signal']}"
    return o.PROCESS, 2, "Terminate", body


def _signal(d: dict) -> Mapped:
    p, x = d.get("process") or {}, d["process_signal"]
    target = o.target(x.get("target_pid", 0), x.get("target_comm", ""), x.get("target_user", ""))
    sig = int(x.get("signal", 0))
    act = (2, "Terminate") if sig in TERMINATING_SIGNALS else (99, "Signal")
    body = {"actor": o.actor(p), "process": target,
            "status_detail": f"{x.get('signal_name') or sig} sent", **o.status(True)}
    return o.PROCESS, act[0], act[1], body


def _ptrace(d: dict) -> Mapped:
    p, x = d.get("process") or {}, d["process_ptrace"]
    target = o.target(x.get("target_pid", 0), x.get("target_comm", ""), x.get("target_user", ""))
    act = (3, "Open") if x.get("request_name") in PTRACE_OPEN else (4, "Inject")
    res = int(x.get("result", 0))
    body = {"actor": o.actor(p), "process": target, **o.status(res >= 0, res),
            "status_detail": str(x.get("request_name", ""))}
    return o.PROCESS, act[0], act[1], body


def _vm_write(d: dict) -> Mapped:
    p, x = d.get("process") or {}, d["process_vm_write"]
    target = o.target(x.get("target_pid", 0), x.get("target_comm", ""), x.get("target_user", ""))
    res = int(x.get("result", 0))
    body = {"actor": o.actor(p), "process": target, **o.status(res >= 0, res),
            "status_detail": f"process_vm_writev {x.get('bytes', 0)} bytes"}
    return o.PROCESS, 4, "Inject", body


def _device_open(key: str) -> Callable[[dict], Mapped]:
    def mapper(d: dict) -> Mapped:
        p, x = d.get("process") or {}, d[key]
        err = int(x.get("errno", 0))
        body = {"actor": o.actor(p), "file": o.file(x.get("path", ""), o.FILE_CHAR_DEVICE),
                **o.status(err == 0, err)}
        return o.FILE, 14, "Open", body
    return mapper


def _file_write(d: dict) -> Mapped:
    p, x = d.get("process") or {}, d["file_write"]
    # 99 Other: activity_name carries the source's own label (OCSF's rule for Other)
    act = FILE_OPS.get(x.get("op", ""), (99, x.get("op") or "Other"))
    owner = o.user(x.get("file_uid", 0))
    res = int(x.get("result", 0))
    body: dict[str, Any] = {"actor": o.actor(p), **o.status(res >= 0, res)}
    if x.get("op") == "rename" and x.get("old_path"):
        body["file"] = o.file(x["old_path"], owner=owner)
        body["file_result"] = o.file(x.get("path", ""), owner=owner)
    else:
        body["file"] = o.file(x.get("path", ""), owner=owner)
    return o.FILE, act[0], act[1], body


def _checkpoint(d: dict) -> Mapped:
    p, x = d.get("process") or {}, d["checkpoint_scan"]
    f = o.file(x.get("path", ""), size=int(x.get("size", 0)), hashes=o.hashes(x.get("sha256")))
    body = {"actor": o.actor(p), "file": f,
            "status_detail": f"checkpoint scan verdict: {x.get('verdict', '')}"}
    return o.FILE, 2, "Read", body


def _code_load(d: dict) -> Mapped:
    p, x = d.get("process") or {}, d["code_load"]
    f = o.file(x.get("path", ""), size=int(x.get("size", 0)), hashes=o.hashes(x.get("sha256")),
              owner=o.user(x.get("file_uid", 0)))
    module = {"file": f, "load_type_id": o.LOAD_MAPPED, "load_type": "Mapped",
              "type": f"executable mapping ({x.get('kind', 'file')})"}
    return o.MODULE, 1, "Load", {"actor": o.actor(p), "module": module}


def _module_load(d: dict) -> Mapped:
    p, x = d.get("process") or {}, d["code_module_load"]
    module: dict[str, Any] = {"load_type_id": o.LOAD_STANDARD, "load_type": "Standard",
                              "type": f"Linux kernel module ({x.get('syscall', '')})"}
    if x.get("path"):
        module["file"] = o.file(x["path"])
    res = int(x.get("result", 0))
    return o.MODULE, 1, "Load", {"actor": o.actor(p), "module": module, **o.status(res >= 0, res)}


def _bpf_load(d: dict) -> Mapped:
    p, x = d.get("process") or {}, d["code_bpf_load"]
    module = {"load_type_id": o.LOAD_OTHER, "load_type": "BPF program",
              "type": f"BPF program ({x.get('prog_type_name') or x.get('prog_type', '')})"}
    if x.get("prog_name"):
        module["function_name"] = x["prog_name"]
    res = int(x.get("result", 0))
    return o.MODULE, 1, "Load", {"actor": o.actor(p), "module": module, **o.status(res >= 0, res)}


def _conn_info(x: dict, direction: int) -> dict:
    if x.get("peer_in_cluster") and direction != 0:
        direction = o.DIRECTION_LATERAL
    info: dict[str, Any] = {"direction_id": direction,
                            "protocol_name": x.get("protocol", "") or "unknown"}
    if x.get("family") in ("ipv4", "ipv6"):
        info["protocol_ver_id"] = 4 if x["family"] == "ipv4" else 6
    return info


def _net(kind: str) -> Callable[[dict], Mapped]:
    def mapper(d: dict) -> Mapped:
        p, x = d.get("process") or {}, d[f"net_{kind}"]
        # the local end is on the node: named by it when the kernel gave no address
        local = o.endpoint(x.get("local_addr", ""), x.get("local_port"),
                           d.get("node") or "unknown")
        remote = o.endpoint(x.get("remote_addr", ""), x.get("remote_port"))
        res = int(x.get("result", 0))
        ok = res >= 0 or res == -EINPROGRESS
        body: dict[str, Any] = {"actor": o.actor(p), **o.status(ok, res)}
        if kind == "listen":
            act = (7, "Listen")
            ends = {"dst_endpoint": local}
            info = _conn_info(x, 0)
        elif kind == "accept":
            act = (1, "Open")
            ends = {"src_endpoint": remote, "dst_endpoint": local}
            info = _conn_info(x, o.DIRECTION_INBOUND)
        else:
            act = (1, "Open") if ok else ((5, "Refuse") if res == -ECONNREFUSED else (4, "Fail"))
            ends = {"src_endpoint": local, "dst_endpoint": remote}
            info = _conn_info(x, o.DIRECTION_OUTBOUND)
        body.update({k: v for k, v in ends.items() if v is not None}, connection_info=info)
        return o.NETWORK, act[0], act[1], body
    return mapper


def _flow(d: dict) -> Mapped:
    p, x = d.get("process") or {}, d["net_flow"]
    sent, recv = int(x.get("bytes_sent", 0)), int(x.get("bytes_received", 0))
    # bytes_out flow from src (the process's node) to dst (the peer)
    ends = {"src_endpoint": o.endpoint("", None, d.get("node") or "unknown"),
            "dst_endpoint": o.endpoint(x.get("remote_addr", ""), x.get("remote_port"))}
    body = {"actor": o.actor(p), **{k: v for k, v in ends.items() if v is not None},
            "connection_info": _conn_info(x, 0),
            "traffic": {"bytes_out": sent, "bytes_in": recv, "bytes": sent + recv}}
    return o.NETWORK, 6, "Traffic", body


def _gpu_device(d: dict) -> Mapped:
    x = d["gpu_device"]
    device = o.device(d.get("node", ""))
    device["desc"] = f"GPU {x.get('index', 0)}: {x.get('name', '')} {x.get('uuid', '')}".strip()
    return o.INVENTORY, 2, "Collect", {"device": device}


MAPPERS: dict[str, Callable[[dict], Mapped]] = {
    "process.exec": _exec,
    "process.exit": _exit,
    "process.signal": _signal,
    "process.ptrace": _ptrace,
    "process.vm_write": _vm_write,
    "gpu.open": _device_open("gpu_open"),
    "net.rdma_open": _device_open("net_rdma_open"),
    "file.write": _file_write,
    "checkpoint.scan": _checkpoint,
    "code.load": _code_load,
    "code.module_load": _module_load,
    "code.bpf_load": _bpf_load,
    "net.connect": _net("connect"),
    "net.accept": _net("accept"),
    "net.listen": _net("listen"),
    "net.flow": _flow,
    "gpu.device": _gpu_device,
}
"""Types with an OCSF class; every other type is a Base Event (or skipped)."""

