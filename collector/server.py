"""The collector process: gRPC server, storage and watchdog, started in named steps.

Start-up is an ordered list of small steps; each step that acquires something
registers its release on one AsyncExitStack, so teardown always runs, in
reverse, however far start-up got (Falco's run_steps/teardown_steps).

In-process use (tests, benches)::

    config = CollectorConfig(listen="127.0.0.1:0", db=path, insecure=True)
    async with running_collector(config) as c:
        ...  # c.port, c.address

    with BackgroundCollector(config) as c:
        ...  # same, from synchronous code: the collector runs on its own thread

A collector serves either mutual TLS (``tls=TlsFiles...``) or, only when asked
explicitly, plaintext (``insecure=True``); with neither it refuses to start.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from collector.findings import (
    FindingHook,
    FollowerProcess,
    RuleError,
    RuleSet,
    load_rules,
)
from collector.ingest.group import DEFAULT_MAX_GROUP_EVENTS, GroupCommitter
from collector.ingest.ratelimit import NodeRateLimiter
from collector.ingest.received import add_collector_service
from collector.ingest.rejections import WINDOW_S, Rejections
from collector.ingest.servicer import IngestPolicy, IngestServicer
from collector.ingest.validate import DEFAULT_MAX_BATCH_EVENTS
from collector.integrity.checkpoint import CheckpointWriter
from collector.integrity.keys import CollectorKey
from collector.query.servicer import QueryServicer
from collector.retention import Retention
from collector.storage.base import Storage
from collector.storage.chunks import ChunkStorage
from collector.storage.postgres import PostgresStorage
from collector.storage.sqlite import SqliteStorage
from collector.watchdog import Watchdog
from gpuaudit.tls import TlsConfigError, TlsFiles
from gpuaudit.v1 import collector_pb2_grpc

log = logging.getLogger(__name__)

# The asyncio health servicer; grpc_health's stubs (grpc-stubs 1.53) predate it.
AsyncHealthServicer: Any = health.aio.HealthServicer  # type: ignore[attr-defined]

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_DB = "/var/lib/gpuaudit/events.db"
MiB = 1024 * 1024

RETENTION_EVERY_S = 3600.0
"""How often retention looks for batches past their age (and once at start)."""

STORES: dict[str, type[SqliteStorage]] = {"rows": SqliteStorage, "chunks": ChunkStorage}
"""Storage layouts (README, "Storage layouts"): same API, same answers, different costs."""


@dataclass(frozen=True)
class CollectorConfig:
    """Everything the collector process needs to start."""

    listen: str = DEFAULT_LISTEN             # HOST:PORT; port 0 picks a free port
    db: str = DEFAULT_DB                     # SQLite file, parent dirs created
    max_batch_events: int = DEFAULT_MAX_BATCH_EVENTS
    max_message_bytes: int = 16 * MiB        # largest EventBatch accepted
    watchdog_period_s: float = 2.0           # 0 disables the periodic watchdog
    grace_s: float = 5.0                     # in-flight RPCs get this long at stop
    tls: TlsFiles | None = None              # mutual TLS (client certificates required)
    insecure: bool = False                   # plaintext, no identity checks (explicit opt-in)
    node_rate_limit: float = 100_000.0       # events/s per node; 0 = no limit
    node_rate_burst: int = 0                 # bucket size in events; 0 = two seconds' worth
    max_group_events: int = DEFAULT_MAX_GROUP_EVENTS  # most events per group commit
    store: str = "rows"                      # "rows" (row per event) or "chunks" (row per batch)
    rules_dir: str | None = None             # operator rule files over the defaults (--rules)
    findings: bool = True                    # run the rules over stored events
    finding_hooks: tuple[FindingHook, ...] = ()  # called with each finding's JSON dict (exports)
    dsn: str = ""                            # PostgreSQL instead of the SQLite file `db`
    signing_key: str = ""                    # Ed25519 key file; "": collector-signing.key by `db`
    checkpoint_dir: str = ""                 # where signed checkpoints are also copied ("": none)
    checkpoint_interval_s: float = 300.0     # 0: only at stop
    retention_days: float = 365.0            # 0: keep everything
    export_hub: Any = None                   # collector.export.ExportHub, not started; None: none
    export_drain_s: float = 5.0              # time the sinks get at stop to deliver


class StartupError(Exception):
    """The collector could not start; the message says what to do."""


@dataclass
class RunningCollector:
    """A started collector: where it listens and its parts."""

    host: str
    port: int
    storage: Storage
    watchdog: Watchdog
    server: grpc.aio.Server
    committer: GroupCommitter
    rejections: Rejections
    findings: FollowerProcess | None = None  # None when findings are off

    @property
    def address(self) -> str:
        """``HOST:PORT`` with the port actually bound."""
        return f"{self.host}:{self.port}"


def split_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (IPv6 as ``[::1]:PORT``) into host and port; ValueError if malformed."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"listen address {listen!r} is not HOST:PORT (port 0-65535)")
    return host, int(port)


def server_options(config: CollectorConfig) -> list[tuple[str, Any]]:
    """gRPC channel arguments for the collector's server.

    Keepalive is paired with the agent's client (agent/ship.py): the agent
    pings every 20 s (timeout 10 s), also with no call in flight, and sends
    up to 16 MiB per message. The server must accept pings that often (it
    allows one per 10 s, half the agent's interval, so jitter never counts as
    a strike and earns a GOAWAY "too_many_pings"), and accepts messages up to
    ``max_message_bytes`` (default the agent's 16 MiB); larger ones get gRPC's
    own RESOURCE_EXHAUSTED "Received message larger than max (N vs. M)".
    """
    return [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        # Ping idle agent connections so a node that vanished (power cut, no
        # FIN) is noticed and its stream released.
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
        # gRPC sets SO_REUSEPORT by default: a second collector would bind the
        # same port and silently split the agents between two databases.
        ("grpc.so_reuseport", 0),
    ]


@dataclass
class _Startup:
    """State the start-up steps fill in, in order."""

    config: CollectorConfig
    clock: Callable[[], int]
    stack: contextlib.AsyncExitStack
    storage: Storage | None = None
    watchdog: Watchdog | None = None
    committer: GroupCommitter | None = None
    rejections: Rejections | None = None
    server: grpc.aio.Server | None = None
    rules: RuleSet | None = None
    findings: FollowerProcess | None = None
    health: Any = field(default_factory=AsyncHealthServicer)
    port: int = 0
    key: CollectorKey | None = None


async def _check_transport(s: _Startup) -> None:
    tls, host = s.config.tls, split_listen(s.config.listen)[0]
    if tls is not None:
        try:
            tls.check()
        except TlsConfigError as err:
            raise StartupError(f"TLS: {err}") from err
        return
    if not s.config.insecure:
        raise StartupError(
            "no TLS configured: pass --tls-dir DIR (see `gpuaudit certs`) "
            "or --insecure for plaintext"
        )
    if not is_loopback(host):
        log.warning(
            "serving PLAINTEXT on %s (--insecure): anyone who can reach it can write "
            "events under any node name and read the audit trail; use --tls-dir",
            s.config.listen,
        )


def is_loopback(host: str) -> bool:
    """Whether ``host`` (as in a listen address) only accepts local connections."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


async def _load_rules(s: _Startup) -> None:
    if not s.config.findings:
        return
    try:
        s.rules = load_rules(s.config.rules_dir)
    except RuleError as err:
        raise StartupError(f"rules: {err}") from err
    # Loaded here to fail start-up with a clear message; the findings process
    # loads the same files again.
    log.info("findings: %d rules loaded (%d disabled)", len(s.rules.rules), len(s.rules.disabled))


async def _start_findings(s: _Startup) -> None:
    # A process of its own following the store, beside ingest
    # (collector.findings.process); registered after the storage, so it stops
    # before the storage closes.
    if s.rules is None:
        return
    assert s.storage is not None
    s.findings = FollowerProcess(s.storage, s.config.db, s.config.store, s.config.rules_dir,
                                 log_level=logging.getLogger().getEffectiveLevel(),
                                 dsn=s.config.dsn)
    s.findings.on_finding.extend(s.config.finding_hooks)
    if s.config.export_hub is not None:
        s.findings.on_finding.append(s.config.export_hub.publish_finding)
    s.findings.start()
    s.stack.callback(s.findings.stop)


def signing_key_path(config: CollectorConfig) -> Path:
    """The collector's key file: --signing-key, else next to the SQLite database."""
    return Path(config.signing_key or Path(config.db).parent / "collector-signing.key")


async def _load_key(s: _Startup) -> None:
    path = signing_key_path(s.config)
    try:
        s.key = CollectorKey.load_or_create(path)
    except (OSError, ValueError) as err:
        if s.config.signing_key or s.config.dsn:
            raise StartupError(f"collector signing key {path}: {err} (check --signing-key)"
                               ) from err
        raise StartupError(  # the default key lives next to the database
            f"cannot open database {s.config.db}: no usable signing key beside it ({path}: "
            f"{err}); check permissions or pass --db / --signing-key") from err
    log.info("signing key %s (public %s)", path, s.key.public_raw.hex())


async def _open_storage(s: _Startup) -> None:
    if s.config.dsn:
        try:
            s.storage = PostgresStorage(s.config.dsn, clock=s.clock, key=s.key)
        except Exception as err:
            raise StartupError(f"{err} (check --dsn and that the server runs)") from err
    else:
        try:
            store = STORES[s.config.store]
            s.storage = store(s.config.db, clock=s.clock, key=s.key)
        except Exception as err:
            raise StartupError(
                f"cannot open database {s.config.db}: {err} (check permissions or pass --db)"
            ) from err
    s.stack.callback(s.storage.close)
    s.watchdog = Watchdog(s.storage, clock=s.clock)


async def _start_checkpoints(s: _Startup) -> None:
    assert s.storage is not None and s.key is not None
    copies = Path(s.config.checkpoint_dir) if s.config.checkpoint_dir else None
    interval = s.config.checkpoint_interval_s or float("inf")
    writer = CheckpointWriter(s.storage, s.key, copies, interval, s.clock)
    if interval != float("inf"):
        writer.start()
    # registered after the storage: the last checkpoint is written before it closes
    s.stack.callback(writer.close)
    if s.config.retention_days > 0:
        retention = Retention(s.storage, writer, s.config.retention_days, RETENTION_EVERY_S,
                              s.clock)
        retention.start()
        s.stack.callback(retention.close)


async def _start_exports(s: _Startup) -> None:
    """Events each commit newly stored, and findings, go to the export sinks."""
    hub = s.config.export_hub
    if hub is None:
        return
    assert s.storage is not None
    hub.start()
    # registered before the committer: it closes after the last commit, draining
    s.stack.callback(hub.close, s.config.export_drain_s)
    s.storage.on_stored.append(lambda events: _publish_all(hub, events))


def _publish_all(hub: Any, events: list[Any]) -> None:
    for event in events:
        hub.publish_event(event)


async def _start_committer(s: _Startup) -> None:
    assert s.storage is not None
    s.committer = GroupCommitter(s.storage, s.config.max_group_events)
    s.committer.start()
    # Teardown runs these after server.stop: batches still queued are
    # committed (their streams are gone, the agents resend; storing them is
    # harmless), and refusals still being counted get their agent.rejected.
    s.stack.callback(s.committer.close)
    s.rejections = Rejections(s.storage)
    s.stack.callback(s.rejections.flush, True)


def _ingest_policy(config: CollectorConfig) -> IngestPolicy:
    limiter = None
    if config.node_rate_limit > 0:
        limiter = NodeRateLimiter(config.node_rate_limit, config.node_rate_burst)
    return IngestPolicy(config.max_batch_events, tls=config.tls is not None, limiter=limiter)


async def _build_server(s: _Startup) -> None:
    assert s.storage is not None and s.committer is not None
    s.server = grpc.aio.server(options=server_options(s.config))
    tls = s.config.tls is not None
    service = _CollectorService(
        IngestServicer(s.committer, _ingest_policy(s.config), s.rejections),
        QueryServicer(s.storage, tls=tls),
    )
    add_collector_service(service, s.server)
    health_pb2_grpc.add_HealthServicer_to_server(s.health, s.server)


async def _bind(s: _Startup) -> None:
    assert s.server is not None
    try:
        if s.config.tls is not None:
            credentials = s.config.tls.server_credentials()
            s.port = s.server.add_secure_port(s.config.listen, credentials)
        else:
            s.port = s.server.add_insecure_port(s.config.listen)
    except RuntimeError as err:
        s.port = 0
        log.debug("bind failed: %s", err)
    if s.port == 0:
        raise StartupError(
            f"cannot listen on {s.config.listen}: address in use or not local "
            "(is another collector running? pass --listen HOST:PORT)"
        )


async def _start_server(s: _Startup) -> None:
    assert s.server is not None
    await s.server.start()
    s.stack.push_async_callback(s.server.stop, s.config.grace_s)


async def _mark_serving(s: _Startup) -> None:
    await s.health.set(health.OVERALL_HEALTH, health_pb2.HealthCheckResponse.SERVING)
    await s.health.set("gpuaudit.v1.Collector", health_pb2.HealthCheckResponse.SERVING)
    # Runs before server.stop: load balancers and agents see NOT_SERVING
    # during the grace period instead of connection errors.
    s.stack.push_async_callback(s.health.enter_graceful_shutdown)


async def _start_watchdog(s: _Startup) -> None:
    assert s.watchdog is not None
    if s.config.watchdog_period_s <= 0:
        return
    task = asyncio.create_task(s.watchdog.run(s.config.watchdog_period_s), name="watchdog")

    async def stop_watchdog() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    s.stack.push_async_callback(stop_watchdog)


async def _start_rejection_flush(s: _Startup) -> None:
    assert s.rejections is not None
    task = asyncio.create_task(_flush_every(s.rejections, WINDOW_S), name="rejections")

    async def stop_flush() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    s.stack.push_async_callback(stop_flush)


async def _flush_every(rejections: Rejections, period_s: float) -> None:
    # Counts of refusals that stopped coming would otherwise wait for the
    # next refusal (or shutdown) to be recorded.
    while True:
        await asyncio.sleep(period_s)
        await asyncio.to_thread(rejections.flush)


STARTUP_STEPS: tuple[tuple[str, Callable[[_Startup], Awaitable[None]]], ...] = (
    ("check transport", _check_transport),
    ("load rules", _load_rules),
    ("load signing key", _load_key),
    ("open storage", _open_storage),
    ("start checkpoints", _start_checkpoints),
    ("start exports", _start_exports),
    ("start committer", _start_committer),
    ("start findings", _start_findings),
    ("build server", _build_server),
    ("bind", _bind),
    ("start server", _start_server),
    ("mark serving", _mark_serving),
    ("start watchdog", _start_watchdog),
    ("start rejection flush", _start_rejection_flush),
)


@contextlib.asynccontextmanager
async def running_collector(
    config: CollectorConfig, clock: Callable[[], int] = time.time_ns
) -> AsyncIterator[RunningCollector]:
    """Start a collector, yield it, and tear it down on exit (even after errors).

    ``clock`` (ns since the epoch) is shared by storage and watchdog.
    Raises StartupError when a step fails.
    """
    try:
        host, _ = split_listen(config.listen)
    except ValueError as err:
        raise StartupError(str(err)) from err
    async with contextlib.AsyncExitStack() as stack:
        s = _Startup(config, clock, stack)
        for name, step in STARTUP_STEPS:
            log.debug("start-up step: %s", name)
            await step(s)
        assert s.storage and s.watchdog and s.server and s.committer and s.rejections
        yield RunningCollector(
            host, s.port, s.storage, s.watchdog, s.server, s.committer, s.rejections, s.findings
        )


async def serve(config: CollectorConfig, out: TextIO = sys.stdout) -> None:
    """Run a collector until SIGINT or SIGTERM, then stop gracefully.

    Prints ``gpuaudit collector listening on HOST:PORT`` (the bound port) to
    ``out`` once it accepts connections.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with running_collector(config) as collector:
        print(f"gpuaudit collector listening on {collector.address}", file=out, flush=True)
        log.info("storing events in %s", collector.storage.describe())
        await stop.wait()
        log.info("stopping (grace %.1fs)", config.grace_s)


class BackgroundCollector:
    """A collector on its own thread and event loop, for synchronous callers."""

    def __init__(self, config: CollectorConfig, clock: Callable[[], int] = time.time_ns) -> None:
        """Prepare (not start) a collector with ``config`` and ``clock``."""
        self._config = config
        self._clock = clock
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name="collector", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._running: RunningCollector | None = None
        self._error: BaseException | None = None

    def start(self, timeout: float = 30.0) -> RunningCollector:
        """Start and wait until it serves; re-raises a start-up error."""
        self._thread.start()
        if not self._ready.wait(timeout):
            raise StartupError(f"collector did not start within {timeout}s")
        if self._error is not None:
            raise self._error
        assert self._running is not None
        return self._running

    def stop(self) -> None:
        """Stop gracefully and wait for teardown to finish."""
        if self._thread.is_alive() and self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join()

    def __enter__(self) -> RunningCollector:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _main(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            async with running_collector(self._config, self._clock) as running:
                self._running = running
                self._ready.set()
                await self._stop.wait()
        except BaseException as err:  # handed to start(); the thread must not die silently
            self._error = err
        finally:
            self._ready.set()


class _CollectorService(collector_pb2_grpc.CollectorServicer):
    """The generated service interface, delegating to the two servicers."""

    def __init__(self, ingest: IngestServicer, query: QueryServicer) -> None:
        self._ingest = ingest
        self._query = query

    # Real async (generator) functions, not plain forwarders: grpc.aio picks
    # how to drive a handler by inspecting the function it is given.
    async def Ingest(self, request_iterator: Any, context: Any) -> AsyncIterator[Any]:
        async for ack in self._ingest.Ingest(request_iterator, context):
            yield ack

    async def QueryEvents(self, request: Any, context: Any) -> AsyncIterator[Any]:
        async for event in self._query.QueryEvents(request, context):
            yield event

    async def GetStatus(self, request: Any, context: Any) -> Any:
        return await self._query.GetStatus(request, context)

    async def ListFindings(self, request: Any, context: Any) -> AsyncIterator[Any]:
        async for finding in self._query.ListFindings(request, context):
            yield finding
