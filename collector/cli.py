"""The ``gpuaudit`` command: collector, agent, events, status, findings, certs.

Exit codes: 0 success, 1 runtime failure (collector unreachable, cannot
start), 2 usage error (bad flag or value, including TLS files that do not fit).
"""

from __future__ import annotations

import os
import sys

# `gpuaudit events|status` explain a failed TLS handshake in one line of their own
# (cli_tls.rpc_failure), but gRPC's C core also logs it, at INFO ("Handshake failed
# with error ...", grpc/grpc#38058), and with GRPC_VERBOSITY unset grpcio 1.85 lets
# INFO through to stderr. GRPC_VERBOSITY is grpc's documented knob for Python
# (grpc TROUBLESHOOTING.md; there is no Python API) and the C core reads it once,
# when grpc is first imported: by the imports just below, so main(argv) is too
# late and sys.argv is read here. A user's own GRPC_VERBOSITY wins; the collector
# and agent keep grpc's default logging.
if sys.argv[1:2] in (["events"], ["status"], ["findings"]):
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import argparse
import asyncio
import logging
import time
from collections.abc import Callable, Sequence

import grpc

from collector import render
from collector.cli_args import (
    UsageError,
    cidr_list,
    listen_arg,
    not_negative,
    positive,
    since_arg,
    split_values,
)
from collector.cli_certs import add_certs
from collector.cli_config import add_config_flag, parse_layered
from collector.cli_export import ExportConfigError, add_export_flags, hub_from_args
from collector.cli_findings import add_findings
from collector.cli_report import add_report
from collector.cli_tls import RPC_TIMEOUT_S, add_tls_flags, collector_stub, resolve_tls, rpc_failure
from collector.cli_verify import add_verify
from collector.ingest.validate import DEFAULT_MAX_BATCH_EVENTS
from collector.server import DEFAULT_DB, DEFAULT_LISTEN, CollectorConfig, StartupError, serve
from collector.storage.base import MAX_QUERY_LIMIT
from collector.timespec import SINCE_HELP
from gpuaudit.jsonform import to_json
from gpuaudit.v1 import collector_pb2, events_pb2

COLLECTOR_ENV = "GPUAUDIT_COLLECTOR"
EVENT_TYPES = sorted(
    f.name.replace("_", ".", 1)
    for f in events_pb2.Event.DESCRIPTOR.oneofs_by_name["payload"].fields
)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``gpuaudit`` command line; returns the exit code."""
    parser = build_parser()
    args = parse_layered(parser, argv)  # flags over env GPUAUDIT_* over the config file
    command: Callable[[argparse.Namespace], int] = args.run
    try:
        return command(args)
    except UsageError as err:
        print(f"gpuaudit {args.command}: error: {err}", file=sys.stderr)
        return 2
    except grpc.RpcError as err:
        print(f"gpuaudit {args.command}: {rpc_failure(args.collector, err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `gpuaudit events | head`: the reader left; say nothing more.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with all subcommands."""
    parser = argparse.ArgumentParser(prog="gpuaudit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_collector(sub)
    _add_agent(sub)
    _add_events(sub)
    _add_status(sub)
    add_findings(sub, _add_collector_flag)
    add_report(sub, _add_collector_flag)
    add_verify(sub)
    add_certs(sub)
    return parser


def _add_collector_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--collector",
        metavar="HOST:PORT",
        type=listen_arg,
        default=os.environ.get(COLLECTOR_ENV, DEFAULT_LISTEN),
        help=f"collector address (default: ${COLLECTOR_ENV} or {DEFAULT_LISTEN})",
    )


def _add_log_level(p: argparse.ArgumentParser) -> None:
    # Upper-cased so the value can go straight to logging (either case accepted).
    p.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS, default="INFO",
                   help="default: INFO")


# -- collector


def _add_collector(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("collector", help="run the central collector (gRPC + SQLite)")
    p.add_argument("--listen", metavar="HOST:PORT", type=listen_arg, default=DEFAULT_LISTEN,
                   help=f"address to serve on; port 0 picks one (default: {DEFAULT_LISTEN})")
    p.add_argument("--db", metavar="PATH", default=DEFAULT_DB,
                   help=f"SQLite database, parent dirs created (default: {DEFAULT_DB})")
    p.add_argument("--max-batch-events", type=positive(int), default=DEFAULT_MAX_BATCH_EVENTS,
                   help=f"largest batch accepted (default: {DEFAULT_MAX_BATCH_EVENTS})")
    defaults = CollectorConfig()
    p.add_argument("--node-rate-limit", metavar="EVENTS_PER_S", type=not_negative(float),
                   default=defaults.node_rate_limit,
                   help="events/s one node may send before RESOURCE_EXHAUSTED; 0 = no limit "
                   f"(default: {defaults.node_rate_limit:g})")
    p.add_argument("--node-rate-burst", metavar="EVENTS", type=not_negative(int),
                   default=defaults.node_rate_burst,
                   help="events a node may send at once above the rate; 0 = 2 s worth "
                   f"(default: {defaults.node_rate_burst})")
    p.add_argument("--store", choices=("rows", "chunks"), default=defaults.store,
                   help="storage layout: rows = one row per event, fast queries; chunks = one "
                   "row per batch, ~4x faster ingest, slower queries (default: rows)")
    p.add_argument("--rules", metavar="DIR", default=None,
                   help="your rule files (*.yaml), read after the shipped ones: add rules, "
                   "override or disable them by id (docs/findings.md; default: none)")
    p.add_argument("--no-findings", action="store_true",
                   help="do not run the rules (no findings; the store is not followed)")
    p.add_argument("--dsn", metavar="DSN", default="",
                   help="store in PostgreSQL instead of --db, e.g. 'host=db1 dbname=gpuaudit "
                   "user=gpuaudit' (libpq syntax; keep the password in ~/.pgpass or "
                   "$PGPASSFILE, not here); several collectors may share one database")
    p.add_argument("--signing-key", metavar="FILE", default="",
                   help="the collector's Ed25519 key for checkpoints and its own events, made "
                   "on first start (default: collector-signing.key next to --db)")
    p.add_argument("--checkpoint-dir", metavar="DIR", default="",
                   help="also append every signed checkpoint to DIR/checkpoints.jsonl: keep it "
                   "on other storage, it is what `gpuaudit verify --checkpoints` trusts")
    p.add_argument("--checkpoint-interval", metavar="SECONDS", type=not_negative(float),
                   default=300.0, help="sign a checkpoint this often; 0 = only at stop "
                   "(default: 300)")
    p.add_argument("--retention-days", metavar="DAYS", type=not_negative(float), default=365.0,
                   help="remove batches received longer ago than this, hourly, leaving a "
                   "signed checkpoint at the cut; 0 = keep everything (default: 365)")
    add_export_flags(p)
    _add_log_level(p)
    add_tls_flags(p, "DIR/collector")
    add_config_flag(p)
    p.set_defaults(run=run_collector, collector=None)


def run_collector(args: argparse.Namespace) -> int:
    """``gpuaudit collector``: serve until SIGINT/SIGTERM."""
    _setup_logging(args.log_level)
    tls = resolve_tls(args, args.listen)
    try:
        exports = hub_from_args(args)
    except ExportConfigError as err:
        raise UsageError(str(err)) from None
    config = CollectorConfig(
        listen=args.listen, db=args.db, max_batch_events=args.max_batch_events,
        tls=tls, insecure=tls is None,
        node_rate_limit=args.node_rate_limit, node_rate_burst=args.node_rate_burst,
        store=args.store, rules_dir=args.rules, findings=not args.no_findings,
        dsn=args.dsn, signing_key=args.signing_key,
        checkpoint_dir=args.checkpoint_dir, checkpoint_interval_s=args.checkpoint_interval,
        retention_days=args.retention_days,
        export_hub=exports, export_drain_s=args.export_drain,
    )
    try:
        asyncio.run(serve(config))
    except StartupError as err:
        print(f"gpuaudit collector: {err}", file=sys.stderr)
        return 1
    return 0


# -- agent (implemented in agent.main)


def _add_agent(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("agent", help="run the node agent (eBPF sensors, ships to a collector)")
    _add_collector_flag(p)
    p.add_argument("--node", metavar="NAME", default=None,
                   help="node name to report (default: the host name)")
    p.add_argument("--mode", choices=("auto", "ebpf", "procfs"), default="auto",
                   help="sensor backend; auto tries eBPF, then falls back to procfs")
    p.add_argument("--heartbeat", metavar="SECONDS", type=positive(float), default=5.0,
                   help="agent.health interval (default: 5)")
    _add_spool_flags(p)
    p.add_argument("--nvml-library", metavar="PATH", default=None,
                   help="libnvidia-ml.so to use (default: the driver's libnvidia-ml.so.1)")
    p.add_argument("--nvml-poll", dest="nvml_poll_s", metavar="SECONDS", type=positive(float),
                   default=None, help="how often to list GPU processes (default: 5)")
    p.add_argument("--no-nvml", action="store_true", help="turn the NVML sensor off")
    _add_sensor_flags(p)
    _add_log_level(p)
    add_tls_flags(p, "DIR/nodes/NODE: its CN/SAN must be --node")
    add_config_flag(p)
    p.set_defaults(run=run_agent_command)


def _add_sensor_flags(p: argparse.ArgumentParser) -> None:
    # Lists are comma-separated strings so that the file and GPUAUDIT_* env
    # layers take them like any other value. Defaults live in AgentConfig.
    p.add_argument("--protect", metavar="DIRS", default=None,
                   help="extra trees whose changes are file.write events, comma-separated "
                   "(every Python's site-/dist-packages, /etc/ld.so.preload and gpuaudit's "
                   "own files are always protected)")
    p.add_argument("--code-allow", metavar="DIRS", default=None,
                   help="system library directories: code.load of a non-GPU process is "
                   "reported only from outside them, comma-separated "
                   "(default: /lib,/lib64,/usr/lib,/usr/lib64,/usr/libexec)")
    p.add_argument("--cluster-cidrs", metavar="CIDRS", type=cidr_list, default=None,
                   help="networks inside the cluster (net.* peer_in_cluster), comma-separated "
                   "(default: none, i.e. every peer is outside)")
    p.add_argument("--checkpoint-max-bytes", metavar="BYTES", type=positive(int), default=None,
                   help="largest model file checkpoint.scan reads; bigger ones get verdict "
                   "error (default: 17179869184 = 16 GiB)")
    p.add_argument("--nccl-flush", dest="nccl_flush_s", metavar="SECONDS",
                   type=positive(float), default=None,
                   help="how often nccl.collective counters are reported (default: 5)")
    p.add_argument("--net-flow-interval", dest="net_flow_s", metavar="SECONDS",
                   type=positive(float), default=None,
                   help="how often net.flow byte counts are reported (default: 10)")
    p.add_argument("--no-compat-watch", action="store_true",
                   help="do not watch for 32-bit (int $0x80) syscalls, which the other "
                   "sensors cannot see (the agent then reports itself blind to them)")


def _add_spool_flags(p: argparse.ArgumentParser) -> None:
    # Defaults live in agent.main.AgentConfig; None here means "use them".
    p.add_argument("--spool-dir", metavar="DIR", default=None,
                   help="disk spool (default: /var/lib/gpuaudit/spool as root, else "
                   "~/.local/state/gpuaudit/spool)")
    p.add_argument("--spool-max-bytes", metavar="BYTES", type=positive(int), default=None,
                   help="spool size limit (default: 268435456 = 256 MiB)")
    p.add_argument("--spool-policy", choices=("drop_oldest", "drop_newest"), default=None,
                   help="what goes when the spool is full; counted and reported either way "
                   "(default: drop_oldest)")
    p.add_argument("--fsync-interval", dest="fsync_interval_s", metavar="SECONDS",
                   type=float, default=None,
                   help="fdatasync the spool at most this often; 0 = every write (default: 1)")


def run_agent_command(args: argparse.Namespace) -> int:
    """``gpuaudit agent``: hand over to the agent package."""
    _setup_logging(args.log_level)
    # The agent reads these two: TLS files (None = plaintext) and the explicit opt-out.
    args.tls_files = resolve_tls(args, args.collector)
    args.insecure = args.tls_files is None
    # Imported here: the collector host need not have the agent's dependencies.
    from agent.main import run_agent

    return run_agent(args)


# -- events


def _add_events(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("events", help="show stored events, oldest first")
    _add_collector_flag(p)
    p.add_argument("--type", dest="types", action="append", default=[], metavar="TYPE",
                   help=f"only this type; repeat or comma-separate ({', '.join(EVENT_TYPES)})")
    p.add_argument("--node", dest="nodes", action="append", default=[], metavar="NODE",
                   help="only this node; repeat or comma-separate")
    p.add_argument("--pid", type=int, help="only events of this process id")
    p.add_argument("--uid", type=int, help="only events of this user id")
    p.add_argument("--since", type=since_arg, metavar="WHEN", help=f"only since: {SINCE_HELP}")
    p.add_argument("--limit", type=positive(int), default=None,
                   help="at most N events, the latest N unless --oldest "
                   f"(default: the collector's, 100; max {MAX_QUERY_LIMIT})")
    p.add_argument("--oldest", action="store_true",
                   help="the first N matches instead of the latest N")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    add_tls_flags(p, "DIR/readers/NAME")
    p.set_defaults(run=run_events)


def build_query(args: argparse.Namespace) -> collector_pb2.EventQuery:
    """The EventQuery for ``gpuaudit events`` flags; ValueError on an unknown type."""
    query = collector_pb2.EventQuery(
        types=split_values(args.types),
        nodes=split_values(args.nodes),
        limit=args.limit or 0,
        newest=not args.oldest,
    )
    unknown = [t for t in query.types if t not in EVENT_TYPES]
    if unknown:
        raise ValueError(f"unknown event type {unknown[0]!r} (known: {', '.join(EVENT_TYPES)})")
    if args.pid is not None:
        query.pid = args.pid
    if args.uid is not None:
        query.uid = args.uid
    if args.since is not None:
        query.since.CopyFrom(args.since)
    return query


def run_events(args: argparse.Namespace) -> int:
    """``gpuaudit events``: query the collector and print a table or JSON lines."""
    try:
        query = build_query(args)
    except ValueError as err:
        raise UsageError(str(err)) from None
    with collector_stub(args) as stub:
        events = list(stub.QueryEvents(query, timeout=RPC_TIMEOUT_S))
    if args.json:
        for event in events:
            print(to_json(event))
    else:
        print(render.events_table(events))
    return 0


# -- status


def _add_status(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="nodes, heartbeats, counts and reported losses")
    _add_collector_flag(p)
    p.add_argument("--json", action="store_true", help="one JSON object (the StatusReply)")
    add_tls_flags(p, "DIR/readers/NAME")
    p.set_defaults(run=run_status)


def run_status(args: argparse.Namespace) -> int:
    """``gpuaudit status``: print per-node status."""
    with collector_stub(args) as stub:
        reply = stub.GetStatus(collector_pb2.StatusRequest(), timeout=RPC_TIMEOUT_S)
    print(to_json(reply) if args.json else render.status_table(reply, time.time_ns()))
    return 0


# -- helpers


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


if __name__ == "__main__":
    sys.exit(main())
