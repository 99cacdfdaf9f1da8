"""``gpuaudit verify``: check a store offline; exit 0 intact, 1 tampered, 2 unusable."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cryptography import x509

from collector.cli_args import since_arg
from collector.integrity.checkpoint import read_copies
from collector.integrity.readers import PostgresReader, SqliteReader, StoreReader
from collector.integrity.verify import Trust, verify
from collector.timespec import SINCE_HELP

EXIT_INTACT, EXIT_TAMPERED, EXIT_UNUSABLE = 0, 1, 2


def add_verify(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify", help="check the stored audit trail for tampering, offline "
                       "(straight on the database; the collector may be down)")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--db", metavar="PATH", help="SQLite store (either layout)")
    where.add_argument("--dsn", metavar="DSN", help="PostgreSQL store")
    p.add_argument("--since", type=since_arg, metavar="WHEN",
                   help=f"check only events from then on (chains are always checked whole): "
                   f"{SINCE_HELP}")
    p.add_argument("--ca", metavar="FILE",
                   help="CA certificate(s): node signatures must come from certificates it "
                   "issued for that node (without it they are checked but not anchored)")
    p.add_argument("--checkpoints", metavar="DIR",
                   help="the copies of signed checkpoints kept outside the database "
                   "(the collector's --checkpoint-dir); their key becomes the trusted one")
    p.add_argument("--collector-key", metavar="HEX", action="append", default=[],
                   help="trusted collector public key (hex, from its start-up log); repeat")
    p.add_argument("--json", action="store_true", help="the report as one JSON object")
    p.set_defaults(run=run_verify)


def run_verify(args: argparse.Namespace) -> int:
    try:
        trust = _trust(args)
        reader: StoreReader = SqliteReader(Path(args.db)) if args.db else PostgresReader(args.dsn)
    except (OSError, ValueError) as err:
        print(f"gpuaudit verify: {err}", file=sys.stderr)
        return EXIT_UNUSABLE
    try:
        report = verify(reader, trust, args.since.ToNanoseconds() if args.since else 0)
    finally:
        reader.close()
    if args.json:
        print(json.dumps(report.to_dict(), sort_keys=True))
    else:
        for problem in report.problems:
            print(problem.line())
        print(report.summary())
    return EXIT_INTACT if report.ok else EXIT_TAMPERED


def _trust(args: argparse.Namespace) -> Trust:
    trust = Trust(collector_keys={bytes.fromhex(k) for k in args.collector_key})
    if args.ca:
        trust.ca_certs = x509.load_pem_x509_certificates(Path(args.ca).read_bytes())
    if args.checkpoints:
        trust.checkpoint_copies = read_copies(Path(args.checkpoints))
    return trust
