"""``gpuaudit report``: a compliance report for a period, as HTML, JSON or CSV."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from collector.cli_args import since_arg, split_values
from collector.cli_tls import add_tls_flags, collector_stub
from collector.report.build import Scope, build_report
from collector.report.html import render_html
from collector.report.source import StubSource
from collector.report.tabular import render_csv, render_json
from collector.timespec import SINCE_HELP

RENDERERS = {"html": render_html, "json": render_json, "csv": render_csv}


def add_report(sub: argparse._SubParsersAction, add_collector_flag: Any) -> None:
    """The ``report`` subcommand (``add_collector_flag`` is the CLI's own --collector)."""
    p = sub.add_parser("report", help="compliance report: who used which GPU, with what code, "
                       "findings and audit coverage")
    add_collector_flag(p)
    p.add_argument("--since", type=since_arg, default=since_arg("30d"), metavar="WHEN",
                   help=f"start of the period (default: 30d): {SINCE_HELP}")
    p.add_argument("--node", dest="nodes", action="append", default=[], metavar="NODE",
                   help="only this node; repeat or comma-separate")
    p.add_argument("--user", default="", help="only this user's GPU use and code")
    p.add_argument("--format", choices=sorted(RENDERERS), default="html")
    p.add_argument("--verify-result", metavar="FILE", default=None,
                   help="JSON output of `gpuaudit verify --json` to include as the "
                   "integrity section")
    p.add_argument("-o", "--output", metavar="FILE", required=True,
                   help="file to write ('-' for standard output)")
    add_tls_flags(p, "DIR/readers/NAME")
    p.set_defaults(run=run_report)


def run_report(args: argparse.Namespace) -> int:
    now = time.time_ns()
    scope = Scope(since_ns=args.since.ToNanoseconds(), until_ns=now,
                  nodes=tuple(split_values(args.nodes)), user=args.user)
    integrity = json.loads(Path(args.verify_result).read_text()) if args.verify_result else None
    with collector_stub(args) as stub:
        source = StubSource(stub)
        report = build_report(source, scope, generated_ns=now, integrity=integrity,
                              findings=lambda sc: _in_scope(source.findings(sc.since_ns), sc))
    text = RENDERERS[args.format](report)
    if args.output == "-":
        sys.stdout.write(text)
    else:
        _write_atomically(Path(args.output), text)
    return 0


def _in_scope(findings: list[dict[str, Any]], scope: Scope) -> list[dict[str, Any]]:
    """Findings of the report's nodes and user (node-level ones kept for a user report)."""
    def keep(f: dict[str, Any]) -> bool:
        if scope.nodes and f.get("node") not in scope.nodes:
            return False
        user = (f.get("process") or {}).get("user")
        return not scope.user or user in (None, scope.user)
    return [f for f in findings if keep(f)]


def _write_atomically(path: Path, text: str) -> None:
    # a half-written report must never be mistaken for a complete one
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
