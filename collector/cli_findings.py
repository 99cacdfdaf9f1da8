"""``gpuaudit findings``: the findings the collector's rules raised (docs/findings.md).

A table, or with ``--json`` one finding per line in its public JSON form (the
same dict the exports get).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

from collector import render
from collector.cli_args import positive, since_arg
from collector.cli_tls import RPC_TIMEOUT_S, add_tls_flags, collector_stub
from collector.findings import finding_dict
from collector.storage.base import MAX_QUERY_LIMIT
from collector.storage.common import DEFAULT_FINDINGS_LIMIT, SEVERITIES
from collector.timespec import SINCE_HELP
from gpuaudit.v1 import collector_pb2


def add_findings(sub: argparse._SubParsersAction,
                 add_collector_flag: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``gpuaudit findings`` to the subcommands (``add_collector_flag``: --collector)."""
    p = sub.add_parser("findings", help="findings the collector's rules raised")
    add_collector_flag(p)
    p.add_argument("--since", type=since_arg, metavar="WHEN",
                   help=f"only findings seen since: {SINCE_HELP}")
    p.add_argument("--severity", choices=SEVERITIES, default=None, metavar="MIN",
                   help=f"only this severity or higher ({', '.join(SEVERITIES)})")
    p.add_argument("--limit", type=positive(int), default=None,
                   help=f"the N most recently seen (default: {DEFAULT_FINDINGS_LIMIT}; "
                   f"max {MAX_QUERY_LIMIT})")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    add_tls_flags(p, "DIR/readers/NAME")
    p.set_defaults(run=run_findings)


def build_finding_query(args: argparse.Namespace) -> collector_pb2.FindingQuery:
    """The FindingQuery for the ``gpuaudit findings`` flags."""
    query = collector_pb2.FindingQuery(min_severity=args.severity or "", limit=args.limit or 0)
    if args.since is not None:
        query.since.CopyFrom(args.since)
    return query


def run_findings(args: argparse.Namespace) -> int:
    """``gpuaudit findings``: query the collector, print a table or JSON lines."""
    with collector_stub(args) as stub:
        findings = list(stub.ListFindings(build_finding_query(args), timeout=RPC_TIMEOUT_S))
    if args.json:
        for finding in findings:
            print(json.dumps(finding_dict(finding), separators=(",", ":")))
    else:
        print(render.findings_table(findings))
    return 0
