"""The report as JSON (every section) and CSV (the usage: one row per session and GPU)."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from datetime import UTC, datetime
from typing import Any

from collector.report.build import Report
from collector.report.usage import UNIDENTIFIED

CSV_COLUMNS = ("node", "gpu", "user", "uid", "pid", "exe", "container_id", "pod", "slurm_job",
               "start", "end", "hours", "ended")


def rfc3339(ns: int) -> str:
    moment = datetime.fromtimestamp(ns // 1_000_000_000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ns % 1_000_000_000:09d}Z"


def render_json(report: Report) -> str:
    """Every section, sets as sorted lists, times as RFC 3339 next to their ns."""
    data = _plain(dataclasses.asdict(report))
    data["scope"]["since"] = rfc3339(report.scope.since_ns)
    data["scope"]["until"] = rfc3339(report.scope.until_ns)
    for s, raw in zip(data["sessions"], report.sessions, strict=True):
        s["start"], s["end"] = rfc3339(raw.start_ns), rfc3339(raw.end_ns)
        s["hours"] = round(raw.seconds(report.scope.since_ns, report.scope.until_ns) / 3600, 4)
    return json.dumps(data, indent=1, sort_keys=True) + "\n"


def render_csv(report: Report) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    scope = report.scope
    for s in report.sessions:
        hours = f"{s.seconds(scope.since_ns, scope.until_ns) / 3600:.4f}"
        for gpu in sorted(s.gpus) or [UNIDENTIFIED]:
            writer.writerow([_safe(str(c)) for c in (
                s.node, gpu, s.user, s.uid, s.pid, s.exe, s.container_id, s.pod, s.slurm_job,
                rfc3339(s.start_ns), rfc3339(s.end_ns), hours, "yes" if s.ended else "no")])
    return out.getvalue()


def _safe(cell: str) -> str:
    # A spreadsheet runs a cell starting with = + - @ as a formula; paths come
    # from the audited nodes (CSV injection).
    return "'" + cell if cell[:1] in ("=", "+", "-", "@") else cell


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, set):
        return sorted(_plain(v) for v in value)
    return value
