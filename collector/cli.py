"""The ``gpuaudit`` command: collector, agent, events, status.

Exit codes: 0 success, 1 runtime failure (collector unreachable, cannot
start), 2 usage error (bad flag or value).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from collector import render
from collector.ingest.validate import DEFAULT_MAX_BATCH_EVENTS
from collector.server import (
    DEFAULT_DB,
    DEFAULT_LISTEN,
    CollectorConfig,
    StartupError,
    serve,
    split_listen,
)
from collector.storage.base import MAX_QUERY_LIMIT
from collector.timespec import SINCE_HELP, parse_since
from gpuaudit.jsonform import to_json
from gpuaudit.v1 import collector_pb2, collector_pb2_grpc, events_pb2

RPC_TIMEOUT_S = 10.0
"""Deadline for every client RPC; a collector slower than this is reported."""

COLLECTOR_ENV = "GPUAUDIT_COLLECTOR"
EVENT_TYPES = sorted(
    f.name.replace("_", ".", 1)
    for f in events_pb2.Event.DESCRIPTOR.oneofs_by_name["payload"].fields
)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``gpuaudit`` command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    command: Callable[[argparse.Namespace], int] = args.run
    try:
        return command(args)
    except grpc.RpcError as err:
        print(f"gpuaudit {args.command}: {_rpc_failure(args.collector, err)}", file=sys.stderr)
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
    return parser


# -- argument types: each raises ArgumentTypeError, which argparse turns into exit 2


def _listen_arg(text: str) -> str:
    try:
        split_listen(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def _since_arg(text: str) -> Timestamp:
    try:
        moment = parse_since(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    ts = Timestamp()
    ts.FromDatetime(moment)
    return ts


def _positive(kind: Callable[[str], float | int]) -> Callable[[str], float | int]:
    def parse(text: str) -> float | int:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be greater than 0")
        return value

    return parse


def _add_collector_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--collector",
        metavar="HOST:PORT",
        type=_listen_arg,
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
    p.add_argument("--listen", metavar="HOST:PORT", type=_listen_arg, default=DEFAULT_LISTEN,
                   help=f"address to serve on; port 0 picks one (default: {DEFAULT_LISTEN})")
    p.add_argument("--db", metavar="PATH", default=DEFAULT_DB,
                   help=f"SQLite database, parent dirs created (default: {DEFAULT_DB})")
    p.add_argument("--max-batch-events", type=_positive(int), default=DEFAULT_MAX_BATCH_EVENTS,
                   help=f"largest batch accepted (default: {DEFAULT_MAX_BATCH_EVENTS})")
    _add_log_level(p)
    p.set_defaults(run=run_collector, collector=None)


def run_collector(args: argparse.Namespace) -> int:
    """``gpuaudit collector``: serve until SIGINT/SIGTERM."""
    _setup_logging(args.log_level)
    config = CollectorConfig(listen=args.listen, db=args.db, max_batch_events=args.max_batch_events)
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
    p.add_argument("--heartbeat", metavar="SECONDS", type=_positive(float), default=5.0,
                   help="agent.health interval (default: 5)")
    _add_log_level(p)
    p.set_defaults(run=run_agent_command)


def run_agent_command(args: argparse.Namespace) -> int:
    """``gpuaudit agent``: hand over to the agent package."""
    _setup_logging(args.log_level)
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
    p.add_argument("--since", type=_since_arg, metavar="WHEN", help=f"only since: {SINCE_HELP}")
    p.add_argument("--limit", type=_positive(int), default=None,
                   help="at most N events, the latest N unless --oldest "
                   f"(default: the collector's, 100; max {MAX_QUERY_LIMIT})")
    p.add_argument("--oldest", action="store_true",
                   help="the first N matches instead of the latest N")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(run=run_events)


def build_query(args: argparse.Namespace) -> collector_pb2.EventQuery:
    """The EventQuery for ``gpuaudit events`` flags; ValueError on an unknown type."""
    query = collector_pb2.EventQuery(
        types=_split(args.types),
        nodes=_split(args.nodes),
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
        print(f"gpuaudit events: error: {err}", file=sys.stderr)
        return 2
    with _stub(args.collector) as stub:
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
    p.set_defaults(run=run_status)


def run_status(args: argparse.Namespace) -> int:
    """``gpuaudit status``: print per-node status."""
    with _stub(args.collector) as stub:
        reply = stub.GetStatus(collector_pb2.StatusRequest(), timeout=RPC_TIMEOUT_S)
    print(to_json(reply) if args.json else render.status_table(reply, time.time_ns()))
    return 0


# -- helpers


def _split(values: Sequence[str]) -> list[str]:
    """Flatten repeated and comma-separated flag values."""
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


@contextmanager
def _stub(address: str) -> Iterator[collector_pb2_grpc.CollectorStub]:
    with grpc.insecure_channel(address) as channel:
        yield collector_pb2_grpc.CollectorStub(channel)


def _rpc_failure(address: str, err: grpc.RpcError) -> str:
    """One sentence for a failed RPC, naming the collector's address."""
    code = err.code() if isinstance(err, grpc.Call) else None
    details = err.details() if isinstance(err, grpc.Call) else str(err)
    if code == grpc.StatusCode.UNAVAILABLE:
        return (f"cannot reach the collector at {address} ({details}); "
                "is `gpuaudit collector` running there?")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"the collector at {address} did not answer within {RPC_TIMEOUT_S:g}s"
    return f"the collector at {address} answered {code.name if code else 'an error'}: {details}"


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


if __name__ == "__main__":
    sys.exit(main())
