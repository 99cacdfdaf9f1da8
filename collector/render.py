"""Human-readable tables for ``gpuaudit events``, ``status`` and ``findings``.

Cells are escaped: argv and paths come from the audited processes, and an
escape sequence in a cell must not be able to rewrite the auditor's terminal.
"""

from __future__ import annotations

import errno as errno_mod
import os
import shlex
import signal
from collections.abc import Sequence
from datetime import UTC, datetime

from gpuaudit.v1 import collector_pb2, events_pb2

DETAIL_MAX = 160
"""Longest DETAIL cell before it is cut with an ellipsis."""

EVENT_COLUMNS = ("TIME", "NODE", "SEQ", "TYPE", "PID", "USER", "COMM", "DETAIL")
STATUS_COLUMNS = (
    "NODE", "BOOT_ID", "LAST_HEARTBEAT", "AGE", "LAST_SEQ", "EVENTS",
    "KERNEL_LOST", "QUEUE_DROPPED", "DECODE_ERRORS", "SPOOL_DROPPED", "GAPS/MISSING",
    "REJECTED", "SILENT", "MODE", "SENSORS",
)  # fmt: skip
"""GAPS/MISSING is ``<agent.gap events>/<events missing>``; REJECTED counts refused batches."""


def clean(text: str) -> str:
    """``text`` with every non-printable character shown as an escape."""
    if text.isprintable():
        return text
    return "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text
    )


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns two spaces apart; the last column is not padded."""
    cells = [list(header)] + [[clean(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header) - 1)]
    lines = []
    for row in cells:
        padded = [c.ljust(w) for c, w in zip(row, widths, strict=False)] + [row[-1]]
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)


def timestamp(ns: int) -> str:
    """UTC time with milliseconds, e.g. ``2024-05-01T12:00:00.123Z``."""
    moment = datetime.fromtimestamp(ns / 1e9, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def age(seconds: float) -> str:
    """A short age: ``42s``, ``3m12s``, ``2h05m``, ``3d04h``."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def event_row(ev: events_pb2.Event) -> list[str]:
    """The table cells for one event."""
    p = ev.process
    has_process = ev.HasField("process")
    return [
        timestamp(ev.time.ToNanoseconds()),
        ev.node,
        str(ev.seq),
        ev.type,
        str(p.pid) if has_process else "-",
        (p.user or str(p.uid)) if has_process else "-",
        (p.comm or os.path.basename(p.exe) or "-") if has_process else "-",
        detail(ev),
    ]


def events_table(events: Sequence[events_pb2.Event]) -> str:
    """The ``gpuaudit events`` table."""
    return table(EVENT_COLUMNS, [event_row(ev) for ev in events])


def detail(ev: events_pb2.Event) -> str:
    """One-line summary of the payload, cut at DETAIL_MAX characters."""
    kind = ev.WhichOneof("payload")
    summarize = _DETAILS.get(kind or "")
    text = summarize(ev) if summarize else ""
    return text if len(text) <= DETAIL_MAX else text[: DETAIL_MAX - 1] + "…"


def _gpu_open(ev: events_pb2.Event) -> str:
    o = ev.gpu_open
    result = _fd_or_errno(o.fd, o.errno)
    source = f" [{o.source}]" if o.source and o.source != "ebpf" else ""
    return f"{o.path} {result}{source}"


def _fd_or_errno(fd: int, errno: int) -> str:
    return f"fd={fd}" if errno == 0 else f"errno={errno} ({_errno_name(errno)})"


def _errno_name(number: int) -> str:
    return errno_mod.errorcode.get(number, "?")


def _process_exec(ev: events_pb2.Event) -> str:
    x = ev.process_exec
    text = shlex.join(x.argv) if x.argv else x.filename
    return text + (" …(truncated)" if x.argv_truncated else "")


def _process_exit(ev: events_pb2.Event) -> str:
    x = ev.process_exit
    if x.signal:
        try:
            name = signal.Signals(x.signal).name
        except ValueError:
            name = "signal"
        text = f"killed by {name} ({x.signal})"
    else:
        text = f"exit {x.exit_code}"
    return text + (" held_gpu" if x.held_gpu else "")


_SIGNAL_RESULTS = ("", " ignored", " already pending", " not queued (overflow)", " info lost")
"""process.signal result (kernel TRACE_SIGNAL_*) -> suffix; delivered says nothing."""


def _target(pid: int, user: str, comm: str) -> str:
    who = " ".join(x for x in (user, comm) if x)
    return f"pid {pid}" + (f" ({who})" if who else "")


def _outcome(result: int) -> str:
    return f" failed errno={-result}" if result < 0 else ""


def _process_signal(ev: events_pb2.Event) -> str:
    s = ev.process_signal
    name = s.signal_name or f"signal {s.signal}"
    result = (_SIGNAL_RESULTS[s.result] if 0 <= s.result < len(_SIGNAL_RESULTS)
              else f" result={s.result}")
    thread = "" if s.group else " (thread)"
    return f"{name} -> {_target(s.target_pid, s.target_user, s.target_comm)}" + thread + result


def _process_ptrace(ev: events_pb2.Event) -> str:
    p = ev.process_ptrace
    name = p.request_name or f"request {p.request}"
    return f"{name} -> {_target(p.target_pid, p.target_user, p.target_comm)}" + _outcome(p.result)


def _process_vm_write(ev: events_pb2.Event) -> str:
    w = ev.process_vm_write
    return (f"{w.bytes} bytes -> {_target(w.target_pid, w.target_user, w.target_comm)}"
            + _outcome(w.result))


def _code_module_load(ev: events_pb2.Event) -> str:
    m = ev.code_module_load
    return m.syscall + (f" {m.path}" if m.path else "") + _outcome(m.result)


def _code_bpf_load(ev: events_pb2.Event) -> str:
    b = ev.code_bpf_load
    kind = b.prog_type_name or f"type {b.prog_type}"
    name = f" {b.prog_name}" if b.prog_name else ""
    return f"{kind}{name} insns={b.insn_cnt}" + (_outcome(b.result) or f" fd={b.result}")


def _agent_health(ev: events_pb2.Event) -> str:
    h = ev.agent_health
    sensors = " ".join(f"{s.name}:{s.state}" for s in h.sensors)
    return (
        f"mode={h.mode} emitted={h.events_emitted} kernel_lost={h.kernel_lost} "
        f"queue_dropped={h.queue_dropped} decode_errors={h.decode_errors} "
        f"spool_dropped={h.spool_dropped}"
        + (f" sensors={sensors}" if sensors else "")
    )


def _agent_silent(ev: events_pb2.Event) -> str:
    s = ev.agent_silent
    return f"no heartbeat for {s.silent_for_s}s, last {timestamp(s.last_seen.ToNanoseconds())}"


def _agent_loss(ev: events_pb2.Event) -> str:
    x = ev.agent_loss
    return f"lost {x.count} ({x.reason}, total {x.total})" + _seq_range(
        x.lost_boot_id, x.first_seq, x.last_seq
    )


def _agent_gap(ev: events_pb2.Event) -> str:
    g = ev.agent_gap
    why = f"reported {g.reason} at seq {g.report_seq}" if g.cause == "reported" else g.cause
    return f"missing {g.count} ({why})" + _seq_range(g.lost_boot_id, g.first_seq, g.last_seq)


def _seq_range(boot_id: str, first: int, last: int) -> str:
    return f" seq {first}-{last} of {boot_id}" if first else ""


def _agent_rejected(ev: events_pb2.Event) -> str:
    r = ev.agent_rejected
    return (
        f"refused {r.batches} batch(es) claiming {r.claimed_node!r}: {r.reason} "
        f"cert={','.join(r.cert_names)} peer={r.peer}"
    )


def _gpu_device(ev: events_pb2.Event) -> str:
    d = ev.gpu_device
    mig = f" mig={len(d.mig_devices)}" if d.mig_mode == "enabled" else ""
    missing = f" unavailable: {'; '.join(d.unavailable)}" if d.unavailable else ""
    return (f"{d.change} gpu{d.index} /dev/nvidia{d.minor_number} {d.uuid} {d.name}"
            f" driver {d.driver_version}{mig}{missing}")


def _gpu_process(ev: events_pb2.Event) -> str:
    p = ev.gpu_process
    where = p.mig_uuid or p.gpu_uuid
    seen = "" if p.seen_open else " NOT SEEN OPENING A GPU"
    return f"{p.state} on gpu{p.gpu_index} {where} mem={p.used_memory >> 20}MiB{seen}"


def _gpu_xid(ev: events_pb2.Event) -> str:
    x = ev.gpu_xid
    return f"{x.event} {x.xid} on gpu{x.gpu_index} {x.gpu_uuid}"


def _code_load(ev: events_pb2.Event) -> str:
    c = ev.code_load
    digest = c.sha256[:12] if c.sha256 else f"no sha256 ({c.hash_error})" if c.hash_error else ""
    kind = f"[{c.kind}]" if c.kind and c.kind != "file" else ""
    writable = "writable-by-others" if c.writable_by_others else ""
    return " ".join(p for p in (c.path, digest, kind, writable) if p)


def _file_write(ev: events_pb2.Event) -> str:
    w = ev.file_write
    what = f"{w.old_path} -> {w.path}" if w.old_path else w.path
    mismatch = f" owner_mismatch (file uid {w.file_uid})" if w.owner_mismatch else ""
    return f"{w.op} {what}{mismatch}" + _outcome(w.result)


def _checkpoint_scan(ev: events_pb2.Event) -> str:
    c = ev.checkpoint_scan
    why = " ".join(c.globals) if c.globals else c.error
    return f"{c.verdict.upper()} {c.path}" + (f": {why}" if why else "")


def _nccl_comm_init(ev: events_pb2.Event) -> str:
    i = ev.nccl_comm_init
    where = (f"rank {i.rank}/{i.nranks}" if i.rank >= 0
             else f"{i.nranks} ranks" if i.nranks > 0 else "")
    parent = f"child of {i.parent_comm_id[:12] or '?'}" if i.parent_comm_handle else ""
    parts = [i.function, "comm", i.comm_id[:12] or "?", where, parent]
    return (" ".join(p for p in parts if p)
            + (f" failed ncclResult={i.result}" if i.result else ""))


def _nccl_collective(ev: events_pb2.Event) -> str:
    c = ev.nccl_collective
    return f"{c.op} {c.datatype} x{c.calls} {c.bytes} bytes comm {c.comm_id[:12] or '?'}"


def _nccl_comm_end(ev: events_pb2.Event) -> str:
    e = ev.nccl_comm_end
    return f"{e.function} comm {e.comm_id[:12] or '?'}" + (" ABORT" if e.abort else "")


def _peer(addr: str, port: int, in_cluster: bool) -> str:
    return f"{addr}:{port} " + ("in-cluster" if in_cluster else "OUTSIDE cluster")


def _net_connection(ev: events_pb2.Event) -> str:
    kind = ev.WhichOneof("payload") or ""
    n = getattr(ev, kind)
    if kind == "net_listen":
        return f"{n.protocol} listen {n.local_addr}:{n.local_port}" + _outcome(n.result)
    return (f"{n.protocol} {n.local_addr}:{n.local_port} -> "
            + _peer(n.remote_addr, n.remote_port, n.peer_in_cluster) + _outcome(n.result))


def _net_flow(ev: events_pb2.Event) -> str:
    f = ev.net_flow
    return (f"{f.protocol} " + _peer(f.remote_addr, f.remote_port, f.peer_in_cluster)
            + f" sent={f.bytes_sent} received={f.bytes_received}")


def _net_rdma_open(ev: events_pb2.Event) -> str:
    o = ev.net_rdma_open
    return f"{o.path} {_fd_or_errno(o.fd, o.errno)}"


def _process_compat_syscall(ev: events_pb2.Event) -> str:
    c = ev.process_compat_syscall
    return f"ia32 {c.name or 'syscall'} (nr {c.nr}) via {c.mode}"


def _process_io_uring(ev: events_pb2.Event) -> str:
    u = ev.process_io_uring
    if u.kind == "setup":
        return f"ring {u.ring} set up (fd {u.ring_fd}, {u.sq_entries} entries)"
    count = f" x{u.count}" if u.kind == "op_count" else ""
    return f"{u.op_name} ({u.op_class}){count} on ring {u.ring}"


_DETAILS = {
    "gpu_open": _gpu_open,
    "gpu_device": _gpu_device,
    "gpu_process": _gpu_process,
    "gpu_xid": _gpu_xid,
    "process_exec": _process_exec,
    "process_exit": _process_exit,
    "process_signal": _process_signal,
    "process_ptrace": _process_ptrace,
    "process_vm_write": _process_vm_write,
    "code_module_load": _code_module_load,
    "code_bpf_load": _code_bpf_load,
    "code_load": _code_load,
    "file_write": _file_write,
    "checkpoint_scan": _checkpoint_scan,
    "nccl_comm_init": _nccl_comm_init,
    "nccl_collective": _nccl_collective,
    "nccl_comm_end": _nccl_comm_end,
    "net_connect": _net_connection,
    "net_accept": _net_connection,
    "net_listen": _net_connection,
    "net_flow": _net_flow,
    "net_rdma_open": _net_rdma_open,
    "process_compat_syscall": _process_compat_syscall,
    "process_io_uring": _process_io_uring,
    "agent_health": _agent_health,
    "agent_silent": _agent_silent,
    "agent_loss": _agent_loss,
    "agent_gap": _agent_gap,
    "agent_rejected": _agent_rejected,
}


def status_row(n: collector_pb2.NodeStatus, now_ns: int) -> list[str]:
    """The table cells for one node; ``now_ns`` gives the heartbeat's age."""
    beat = n.HasField("last_heartbeat")
    beat_ns = n.last_heartbeat.ToNanoseconds()
    sensors = " ".join(_sensor(s) for s in n.sensors)
    return [
        n.node, n.boot_id or "-",
        timestamp(beat_ns) if beat else "never",
        age((now_ns - beat_ns) / 1e9) if beat else "-",
        str(n.last_seq), str(n.events_stored),
        str(n.kernel_lost), str(n.queue_dropped), str(n.decode_errors), str(n.spool_dropped),
        f"{n.gaps}/{n.missing_events}", str(n.rejected),
        "SILENT" if n.silent else "no", n.mode or "-", sensors or "-",
    ]  # fmt: skip


def _sensor(s: events_pb2.SensorStatus) -> str:
    return f"{s.name}:{s.state}" + (f"({s.detail})" if s.detail else "")


def status_table(reply: collector_pb2.StatusReply, now_ns: int) -> str:
    """The ``gpuaudit status`` table plus a totals line."""
    rows = [status_row(n, now_ns) for n in reply.nodes]
    totals = f"{len(reply.nodes)} node(s), {reply.events_stored} event(s) stored in {reply.db}"
    return table(STATUS_COLUMNS, rows) + "\n" + totals


FINDING_COLUMNS = ("LAST_SEEN", "SEVERITY", "RULE", "NODE", "PID", "USER", "COUNT", "SUMMARY")


def finding_row(f: collector_pb2.Finding) -> list[str]:
    """The table cells for one finding."""
    has_process = f.HasField("process")
    p = f.process
    return [
        timestamp(f.last_seen.ToNanoseconds()), f.severity.upper(), f.rule, f.node,
        str(p.pid) if has_process else "-",
        (p.user or str(p.uid)) if has_process else "-",
        str(f.count), _cut(f.summary),
    ]  # fmt: skip


def _cut(text: str) -> str:
    return text if len(text) <= DETAIL_MAX else text[: DETAIL_MAX - 1] + "…"


def findings_table(findings: Sequence[collector_pb2.Finding]) -> str:
    """The ``gpuaudit findings`` table plus a count line."""
    rows = [finding_row(f) for f in findings]
    return table(FINDING_COLUMNS, rows) + f"\n{len(findings)} finding(s)"
