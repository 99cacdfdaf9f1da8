"""The report as one self-contained HTML file: inline CSS and SVG charts, no script.

Nothing is fetched when it is opened (an auditor may read it offline, years
later), and every string from the audited nodes -- user names, paths, argv --
is escaped: a hostile file name must not be able to inject markup.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from html import escape
from typing import Any

from collector.report.build import CodeItem, Coverage, Report, Total
from collector.report.usage import UNIDENTIFIED, Session

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf")
SEVERITY_COLORS = {"critical": "#7b0000", "high": "#d62728", "medium": "#ff7f0e",
                   "low": "#bcbd22", "info": "#1f77b4"}
CHART_WIDTH = 960
LABEL_WIDTH = 220
ROW_HEIGHT = 22

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 8px;
text-align:left;vertical-align:top}th{background:#f4f4f4}td.n{text-align:right}
.bad{color:#b00;font-weight:600}.ok{color:#070}.muted{color:#777}
code{font-size:12px;word-break:break-all}
"""


def color_for(key: str) -> str:
    """A stable color per user or GPU (the same in every report)."""
    return PALETTE[hashlib.sha256(key.encode()).digest()[0] % len(PALETTE)]


def render_html(report: Report) -> str:
    r = report
    parts = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        f"<title>gpuaudit report {_day(r.scope.since_ns)} to {_day(r.scope.until_ns)}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>GPU access audit: {_when(r.scope.since_ns)} to {_when(r.scope.until_ns)}</h1>",
        _scope_line(r),
        _summary(r),
        "<h2 id=usage-user>GPU usage timeline per user</h2>",
        timeline(r.sessions, r.scope.since_ns, r.scope.until_ns, lambda s: [s.user],
                 lambda s: sorted(s.gpus)[0] if s.gpus else UNIDENTIFIED, "usage-by-user"),
        "<h2 id=usage-gpu>GPU usage timeline per GPU</h2>",
        timeline(r.sessions, r.scope.since_ns, r.scope.until_ns,
                 lambda s: sorted(s.gpus) or [UNIDENTIFIED], lambda s: s.user, "usage-by-gpu"),
        _totals_table("Per user", "user", r.per_user),
        _totals_table("Per GPU", "GPU", r.per_gpu),
        _totals_table("Per container / pod", "workload", r.per_workload),
        _totals_table("Per Slurm job", "job", r.per_job),
        _sessions_table(r.sessions, r),
        "<h2 id=findings>Findings</h2>",
        findings_chart(r.findings, r.scope.since_ns, r.scope.until_ns),
        _findings_table(r.findings),
        "<h2 id=code>Code loaded into GPU jobs</h2>",
        _code_table("Libraries and executable mappings (code.load)", r.libraries, "kind"),
        _code_table("Checkpoints (checkpoint.scan)", r.checkpoints, "verdict"),
        "<h2 id=coverage>Audit coverage</h2>",
        _coverage_table(r.coverage),
        _integrity(r.integrity),
        f"<p class=muted>Generated {_when(r.generated_ns)} by gpuaudit.</p></body></html>",
    ]
    return "\n".join(parts)


# -- charts --------------------------------------------------------------------


def timeline(sessions: Sequence[Session], since_ns: int, until_ns: int,
             rows_of: Any, color_key: Any, chart_id: str) -> str:
    """A Gantt chart: one row per key, one bar per session, colored by ``color_key``."""
    rows: dict[str, list[Session]] = {}
    for s in sessions:
        for row in rows_of(s):
            rows.setdefault(row, []).append(s)
    if not rows:
        return "<p class=muted>No GPU use in this period.</p>"
    span = max(1, until_ns - since_ns)
    plot = CHART_WIDTH - LABEL_WIDTH
    height = ROW_HEIGHT * len(rows) + 24
    out = [f'<svg id="{chart_id}" width="{CHART_WIDTH}" height="{height}" '
           f'role="img" xmlns="http://www.w3.org/2000/svg">']
    for i, (row, items) in enumerate(sorted(rows.items())):
        y = i * ROW_HEIGHT
        out.append(f'<text x="0" y="{y + 15}" font-size="12">{escape(_cut(row, 32))}</text>')
        for s in items:
            x0 = LABEL_WIDTH + plot * (max(s.start_ns, since_ns) - since_ns) / span
            x1 = LABEL_WIDTH + plot * (min(s.end_ns, until_ns) - since_ns) / span
            key = color_key(s)
            out.append(
                f'<rect class="session" x="{x0:.1f}" y="{y + 3}" width="{max(2.0, x1 - x0):.1f}" '
                f'height="{ROW_HEIGHT - 6}" fill="{color_for(key)}"><title>'
                f'{escape(f"{s.user} pid {s.pid} on {s.node}: {key}")}</title></rect>')
    axis_y = ROW_HEIGHT * len(rows) + 16
    out.append(f'<text x="{LABEL_WIDTH}" y="{axis_y}" font-size="11">{_when(since_ns)}</text>')
    out.append(f'<text x="{CHART_WIDTH}" y="{axis_y}" font-size="11" text-anchor="end">'
               f"{_when(until_ns)}</text></svg>")
    return "".join(out)


def findings_chart(findings: Sequence[dict[str, Any]], since_ns: int, until_ns: int) -> str:
    """Findings per day, stacked by severity."""
    if not findings:
        return "<p class=muted>No findings in this period.</p>"
    days = max(1, -(-(until_ns - since_ns) // 86_400_000_000_000))
    per_day: list[Counter[str]] = [Counter() for _ in range(days)]
    for f in findings:
        day = min(days - 1, max(0, (_ns(f.get("first_seen", "")) - since_ns) // 86_400_000_000_000))
        per_day[day][f.get("severity", "info")] += int(f.get("count", 1))
    peak = max(1, max(sum(c.values()) for c in per_day))
    width = (CHART_WIDTH - 40) / days
    out = [f'<svg id="findings-over-time" width="{CHART_WIDTH}" height="140" role="img" '
           'xmlns="http://www.w3.org/2000/svg">']
    for d, counts in enumerate(per_day):
        y = 120.0
        for severity in SEVERITY_COLORS:
            n = counts.get(severity, 0)
            if not n:
                continue
            h = 110 * n / peak
            y -= h
            out.append(f'<rect class="finding-bar" x="{40 + d * width:.1f}" y="{y:.1f}" '
                       f'width="{max(1.0, width - 1):.1f}" height="{h:.1f}" '
                       f'fill="{SEVERITY_COLORS[severity]}"><title>{n} {severity}</title></rect>')
    out.append(f'<text x="0" y="12" font-size="11">{peak}</text></svg>')
    return "".join(out)


# -- tables --------------------------------------------------------------------


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], table_id: str = "") -> str:
    if not rows:
        return "<p class=muted>None.</p>"
    attr = f' id="{table_id}"' if table_id else ""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table{attr}><tr>{head}</tr>{body}</table>"


def _totals_table(title: str, what: str, totals: Sequence[Total]) -> str:
    rows = [[escape(t.key), str(t.sessions), _hours(t.seconds),
             escape(", ".join(sorted(t.users))), escape(", ".join(sorted(t.gpus)))]
            for t in totals]
    return f"<h3>{escape(title)}</h3>" + _table(
        [what, "sessions", "GPU hours", "users", "GPUs"], rows, f"per-{what.split()[0].lower()}")


def _sessions_table(sessions: Sequence[Session], r: Report) -> str:
    rows = [[_when(s.start_ns), _when(s.end_ns) + ("" if s.ended else " (running)"),
             _hours(s.seconds(r.scope.since_ns, r.scope.until_ns)), escape(s.node), str(s.pid),
             escape(s.user), f"<code>{escape(s.exe)}</code>",
             escape(", ".join(sorted(s.gpus)) or UNIDENTIFIED),
             escape(s.pod or s.container_id[:12]), escape(s.slurm_job)] for s in sessions]
    return "<h3>Sessions</h3>" + _table(
        ["start", "end", "hours", "node", "pid", "user", "exe", "GPUs", "container/pod",
         "Slurm job"], rows, "sessions")


def _findings_table(findings: Sequence[dict[str, Any]]) -> str:
    rows = []
    for f in findings:
        p = f.get("process") or {}
        who = f"{p.get('user', '')} pid {p.get('pid', '')} {p.get('exe', '')}" if p else ""
        sev = escape(str(f.get("severity", "")))
        rows.append([f'<span class="{"bad" if sev in ("high", "critical") else ""}">{sev}</span>',
                     escape(str(f.get("rule", ""))), escape(str(f.get("title", ""))),
                     escape(str(f.get("node", ""))), escape(who), str(f.get("count", 1)),
                     escape(str(f.get("first_seen", ""))), escape(str(f.get("last_seen", "")))])
    return _table(["severity", "rule", "title", "node", "process", "count", "first", "last"],
                  rows, "findings-table")


def _code_table(title: str, items: Sequence[CodeItem], detail: str) -> str:
    rows = [[escape(i.node), f"<code>{escape(i.path)}</code>", f"<code>{escape(i.sha256)}</code>",
             _verdict(i.detail), escape(", ".join(i.globals)), str(i.processes),
             escape(", ".join(sorted(i.users)))] for i in items]
    return f"<h3>{escape(title)}</h3>" + _table(
        ["node", "path", "sha256", detail, "offending globals", "processes", "users"], rows)


def _coverage_table(coverage: Sequence[Coverage]) -> str:
    rows = []
    for c in coverage:
        gaps = "; ".join(f"{_when(a)} to {_when(b) if b else 'not resumed'}"
                         for a, b in c.heartbeat_gaps)
        lost = ", ".join(f"{k}: {v}" for k, v in sorted(c.losses.items()))
        complete = not (c.heartbeat_gaps or c.losses or c.missing_events or c.silent_now)
        rows.append([escape(c.node), escape(c.mode), _when(c.last_heartbeat_ns),
                     '<span class="bad">silent</span>' if c.silent_now else "reporting",
                     escape(gaps) or "none", escape(lost) or "none", str(c.missing_events),
                     str(c.rejected_batches),
                     '<span class="ok">complete</span>' if complete
                     else '<span class="bad">incomplete</span>'])
    return _table(["node", "mode", "last heartbeat", "now", "heartbeat gaps",
                   "reported losses", "missing events", "refused batches", "trail"],
                  rows, "coverage-table")


def _integrity(result: dict[str, Any] | None) -> str:
    if result is None:
        return ("<p class=muted>Integrity: no `gpuaudit verify` result was given to this "
                "report.</p>")
    ok = bool(result.get("ok"))
    label = '<span class="ok">intact</span>' if ok else '<span class="bad">FAILED</span>'
    return f"<h3>Integrity (gpuaudit verify)</h3><p id=integrity>{label} " \
           f"{escape(str(result.get('summary', '')))}</p>"


def _summary(r: Report) -> str:
    hours = sum(t.seconds for t in r.per_user)
    bad = [f for f in r.findings if f.get("severity") in ("high", "critical")]
    incomplete = [c.node for c in r.coverage
                  if c.heartbeat_gaps or c.losses or c.missing_events or c.silent_now]
    items = [f"{len(r.per_user)} users, {len(r.sessions)} GPU sessions, {_hours(hours)} GPU hours",
             f"{len(r.findings)} findings ({len(bad)} high or critical)",
             f"{len(r.libraries)} distinct libraries and {len(r.checkpoints)} checkpoints "
             "loaded into GPU jobs",
             f"audit trail complete on {len(r.coverage) - len(incomplete)} of "
             f"{len(r.coverage)} nodes"]
    return "<ul id=summary>" + "".join(f"<li>{escape(i)}</li>" for i in items) + "</ul>"


def _scope_line(r: Report) -> str:
    nodes = ", ".join(r.scope.nodes) or "all nodes"
    user = r.scope.user or "all users"
    return f"<p>Scope: {escape(nodes)}; {escape(user)}.</p>"


def _verdict(v: str) -> str:
    cls = "bad" if v in ("malicious", "suspicious", "error") else ""
    return f'<span class="{cls}">{escape(v)}</span>'


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f}"


def _when(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _day(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%d")


def _ns(rfc3339: str) -> int:
    try:
        moment = datetime.fromisoformat(rfc3339.replace("Z", "+00:00"))
    except ValueError:
        return 0
    return int(moment.timestamp() * 1e9)


def _cut(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"
