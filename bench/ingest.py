"""Many simulated agents -> one collector -> SQLite: how many events/s get stored.

Starts a real ``gpuaudit collector --insecure`` on 127.0.0.1:0 with a fresh
database, then N simulated agents that behave like the real shipper
(agent/ship.py): each has its own connection and one bidi Ingest stream, keeps
a window of batches in flight and waits for their Acks; its events carry its
own node name and boot_id and a gap-free seq from 1, mostly ``gpu.open`` and
``process.exec`` with a full Process block, plus a heartbeat now and then.

Every batch is built and serialized before the clock starts, and the agents
run in a few client processes, so neither client-side protobuf work nor one
Python GIL is what gets measured. After the run the stored count is checked
exactly: the Acks, GetStatus, and SQLite itself (every node holds seq 1..E,
once). Any difference fails the run (exit 1).

    bench/ingest                          # 50 agents x 20 000 events, batches of 1000
    bench/ingest --agents 10 --events 5000 --batch 500 --json
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import multiprocessing as mp
import os
import re
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402

from gpuaudit.v1 import collector_pb2, collector_pb2_grpc, events_pb2  # noqa: E402

INGEST = "/gpuaudit.v1.Collector/Ingest"
HEARTBEAT_INTERVAL_S = 60  # declared by the simulated agents: no agent.silent mid-run
T0_NS = 1_763_750_000 * 1_000_000_000


@dataclass(frozen=True)
class Settings:
    """What to run: flags, with the defaults the issue's target is judged at."""

    agents: int = 50
    events: int = 20_000           # per agent
    batch: int = 1000              # events per batch (agent/ship.py batch_max)
    window: int = 8                # batches in flight per agent (agent/ship.py window)
    procs: int = 2                 # client processes
    heartbeat_every: int = 10_000  # an agent.health every this many events
    dir: str | None = None         # where the database goes (default: a temp dir)
    tls: bool = False
    collector_args: tuple[str, ...] = ()


@dataclass
class AgentResult:
    """What one simulated agent saw."""

    node: str
    sent: int = 0
    stored: int = 0
    duplicates: int = 0
    acked_seq: int = 0
    latencies_s: list[float] = field(default_factory=list)
    error: str = ""


# -- building the agents' traffic (before the clock starts) ------------------------


def node_name(index: int) -> str:
    return f"bench-{index:03d}"


def _process(pid: int) -> events_pb2.Process:
    job = 90000 + pid % 50
    return events_pb2.Process(
        pid=pid, tid=pid + pid % 7, ppid=pid - 17, uid=1000 + pid % 40, gid=1000 + pid % 40,
        user=f"user{pid % 40}", comm="python", exe="/home/alice/venvs/llm/bin/python3.11",
        cmdline=["python", "train.py", "--config", f"cfg/run{pid % 13}.yaml"],
        cgroup=f"/system.slice/slurmstepd.scope/job_{job}/step_0/user/task_0",
        slurm_job=str(job),
    )  # fmt: skip


def make_event(node: str, boot_id: str, seq: int, heartbeat_every: int) -> events_pb2.Event:
    """Event ``seq`` of a simulated agent run, shaped like the real agent's."""
    ev = events_pb2.Event(node=node, boot_id=boot_id, seq=seq)
    ev.time.FromNanoseconds(T0_NS + seq * 37_000)
    if seq % heartbeat_every == 1:
        ev.type = "agent.health"
        h = ev.agent_health
        h.events_emitted, h.mode, h.version = seq - 1, "ebpf", "bench"
        h.interval_s = HEARTBEAT_INTERVAL_S
        h.sensors.add(name="gpu_open", state="ok")
        h.sensors.add(name="process", state="ok")
        return ev
    ev.process.CopyFrom(_process(40000 + seq % 997))
    if seq % 4:
        ev.type = "gpu.open"
        o = ev.gpu_open
        o.path, o.flags, o.fd, o.source = f"/dev/nvidia{seq % 8}", 524290, 20 + seq % 9, "ebpf"
    else:
        ev.type = "process.exec"
        x = ev.process_exec
        x.filename, x.source = "/home/alice/venvs/llm/bin/python", "ebpf"
        x.argv.extend(ev.process.cmdline)
    return ev


def build_batches(index: int, s: Settings) -> list[bytes]:
    """One agent's whole run, as serialized EventBatch messages in send order."""
    node, boot_id = node_name(index), secrets.token_hex(16)
    batches = []
    for batch_id, first in enumerate(range(1, s.events + 1, s.batch), start=1):
        last = min(first + s.batch, s.events + 1)
        events = [make_event(node, boot_id, seq, s.heartbeat_every) for seq in range(first, last)]
        batch = collector_pb2.EventBatch(batch_id=batch_id, events=events)
        batches.append(batch.SerializeToString())
    return batches


# -- one client process: its share of the agents, on one asyncio loop -------------


def _identity(data: bytes) -> bytes:
    return data


def _channel(address: str, index: int, creds: grpc.ChannelCredentials | None) -> grpc.aio.Channel:
    # A local subchannel pool: without it, channels to one target with equal
    # arguments share one TCP connection, and 50 agents would be 2 connections.
    options: list[tuple[str, Any]] = [
        ("grpc.use_local_subchannel_pool", 1), ("grpc.max_send_message_length", -1),
    ]
    if creds is None:
        return grpc.aio.insecure_channel(address, options=options)
    options.append(("grpc.ssl_target_name_override", "localhost"))
    return grpc.aio.secure_channel(address, creds, options=options)


async def run_agent(
    channel: grpc.aio.Channel, node: str, batches: list[bytes], window: int
) -> AgentResult:
    """Stream ``batches`` like agent/ship.py: ``window`` in flight, each freed by its Ack."""
    result = AgentResult(node)
    ingest = channel.stream_stream(
        INGEST, request_serializer=_identity, response_deserializer=collector_pb2.Ack.FromString
    )
    slots = asyncio.Semaphore(window)
    sent_at: collections.deque[float] = collections.deque()

    async def requests() -> Any:
        for data in batches:
            await slots.acquire()
            sent_at.append(time.monotonic())
            yield data

    try:
        async for ack in ingest(requests(), timeout=600):
            result.latencies_s.append(time.monotonic() - sent_at.popleft())
            result.stored += ack.stored
            result.duplicates += ack.duplicates
            result.acked_seq = ack.acked_seq
            result.sent += ack.stored + ack.duplicates
            slots.release()
    except grpc.aio.AioRpcError as err:
        result.error = f"{err.code().name}: {err.details()}"
    return result


async def _run_agents(
    address: str, work: dict[int, list[bytes]], s: Settings, tls_root: str | None
) -> list[AgentResult]:
    channels = {i: _channel(address, i, _node_creds(tls_root, i)) for i in work}
    try:
        # Connect first, so the timed part does not include TCP/TLS handshakes.
        await asyncio.gather(*(ch.channel_ready() for ch in channels.values()))
        return list(
            await asyncio.gather(
                *(run_agent(channels[i], node_name(i), b, s.window) for i, b in work.items())
            )
        )
    finally:
        await asyncio.gather(*(ch.close(None) for ch in channels.values()))


def client_process(
    address: str, indices: list[int], s: Settings, tls_root: str | None,
    ready: Any, go: Any, results: Any,
) -> None:  # fmt: skip
    """Build this process's agents' batches, wait for ``go``, run them, report."""
    work = {i: build_batches(i, s) for i in indices}
    ready.put(os.getpid())
    go.wait()
    start = time.monotonic()
    agents = asyncio.run(_run_agents(address, work, s, tls_root))
    results.put((start, time.monotonic(), [asdict(a) for a in agents]))


def _node_creds(tls_root: str | None, index: int) -> grpc.ChannelCredentials | None:
    if tls_root is None:
        return None
    from collector.certs import node_dir
    from gpuaudit.tls import TlsFiles

    return TlsFiles.from_dir(node_dir(Path(tls_root), node_name(index))).channel_credentials()


# -- the collector under test ----------------------------------------------------------


class CollectorProcess:
    """``gpuaudit collector`` as a subprocess on 127.0.0.1:0 with its own database."""

    def __init__(self, db: Path, extra: list[str]) -> None:
        self.db = db
        # A file, not a pipe: a pipe nobody drains blocks the collector once full.
        self.log = db.with_suffix(".log")
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "collector.cli", "collector", "--listen", "127.0.0.1:0",
                 "--db", str(db), "--log-level", "WARNING", *extra],
                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        self.address = self._wait_listening()

    def _wait_listening(self, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            if m := re.search(r"listening on (\S+:\d+)", self.log.read_text()):
                return m.group(1)
            time.sleep(0.05)
        self.proc.kill()
        raise SystemExit("collector did not start:\n" + self.log.read_text())

    def log_tail(self) -> str:
        return self.log.read_text()[-2000:]

    def cpu_seconds(self) -> float:
        """User + system CPU the collector has used so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def get_status(address: str, tls_root: str | None) -> collector_pb2.StatusReply:
    if tls_root is None:
        channel = grpc.insecure_channel(address)
    else:
        from collector.certs import reader_dir
        from gpuaudit.tls import TlsFiles

        creds = TlsFiles.from_dir(reader_dir(Path(tls_root), "bench")).channel_credentials()
        channel = grpc.secure_channel(
            address, creds, options=[("grpc.ssl_target_name_override", "localhost")]
        )
    with channel:
        return collector_pb2_grpc.CollectorStub(channel).GetStatus(
            collector_pb2.StatusRequest(), timeout=30
        )


# -- verification: exactly what was sent, nothing more, nothing less ---------------------


def _chunk_seq_rows(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
    """(node, count, distinct seq, min, max) from a chunk store, decoding every chunk."""
    seqs: dict[str, list[int]] = collections.defaultdict(list)
    for node, body in conn.execute("SELECT node, body FROM chunks WHERE node LIKE 'bench-%'"
                                   " AND boot_id NOT LIKE 'collector-%'"):
        seqs[node] += [ev.seq for ev in collector_pb2.EventBatch.FromString(body).events]
    return [(n, len(v), len(set(v)), min(v), max(v)) for n, v in seqs.items()]


def verify_sqlite(db: Path, s: Settings) -> list[str]:
    """Problems in the database: every agent must hold seq 1..events exactly once."""
    with sqlite3.connect(db) as conn:
        chunked = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'chunks'").fetchone()
        rows = _chunk_seq_rows(conn) if chunked else conn.execute(
            "SELECT node, COUNT(*), COUNT(DISTINCT seq), MIN(seq), MAX(seq) FROM events"
            " WHERE node LIKE 'bench-%' AND boot_id NOT LIKE 'collector-%' GROUP BY node"
        ).fetchall()
    expected = {node_name(i): (s.events, s.events, 1, s.events) for i in range(s.agents)}
    found = {row[0]: tuple(row[1:]) for row in rows}
    return [
        f"sqlite: {node} holds (count, distinct seq, min, max) = {found.get(node)}, expected {want}"
        for node, want in expected.items()
        if found.get(node) != want
    ]


def verify(
    agents: list[AgentResult], status: collector_pb2.StatusReply, db: Path, s: Settings
) -> list[str]:
    total = s.agents * s.events
    problems = [f"{a.node}: {a.error}" for a in agents if a.error]
    acked = sum(a.stored for a in agents)
    if acked != total or any(a.duplicates for a in agents):
        problems.append(f"acks: {acked} stored, {sum(a.duplicates for a in agents)} duplicates"
                        f" (expected {total} and 0)")
    stored_by_status = sum(n.events_stored for n in status.nodes if n.node.startswith("bench-"))
    if stored_by_status != total:
        problems.append(f"GetStatus: {stored_by_status} events stored, expected {total}")
    return problems + verify_sqlite(db, s)


# -- running it ---------------------------------------------------------------------------


@dataclass
class Report:
    """The numbers a run produced."""

    agents: int
    events_per_agent: int
    batch: int
    window: int
    procs: int
    tls: bool
    events: int
    seconds: float
    events_per_s: float
    ack_p50_ms: float
    ack_p99_ms: float
    collector_cpu_s: float
    verified: bool
    problems: list[str]

    def line(self) -> str:
        verdict = (f"verified {self.events} stored exactly once" if self.verified
                   else f"FAILED verification ({len(self.problems)} problems)")
        return (
            f"ingest: {self.events_per_s:,.0f} events/s stored -- {self.agents} agents x "
            f"{self.events_per_agent} events, batch {self.batch}, window {self.window}, "
            f"{self.procs} client procs{', mTLS' if self.tls else ''}: {self.events} events in "
            f"{self.seconds:.2f} s; ack latency p50 {self.ack_p50_ms:.0f} ms p99 "
            f"{self.ack_p99_ms:.0f} ms; collector CPU {self.collector_cpu_s / self.seconds:.2f} "
            f"cores; {verdict}"
        )


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else 0.0


def run(s: Settings, workdir: Path) -> Report:
    """One measured run in ``workdir``; the collector is stopped before verifying SQLite."""
    tls_root = _make_pki(workdir, s) if s.tls else None
    extra = ["--tls-dir", str(Path(tls_root) / "collector")] if tls_root else ["--insecure"]
    collector = CollectorProcess(workdir / "bench.db", [*extra, *s.collector_args])
    try:
        start, end, agents, cpu = _drive(collector, s, tls_root)
        status = get_status(collector.address, tls_root)
    finally:
        collector.stop()
    problems = verify(agents, status, collector.db, s)
    latencies = [x for a in agents for x in a.latencies_s]
    total, seconds = s.agents * s.events, end - start
    return Report(
        s.agents, s.events, s.batch, s.window, s.procs, s.tls, total, seconds, total / seconds,
        _percentile(latencies, 0.5) * 1000, _percentile(latencies, 0.99) * 1000, cpu,
        not problems, problems,
    )  # fmt: skip


def _drive(
    collector: CollectorProcess, s: Settings, tls_root: str | None
) -> tuple[float, float, list[AgentResult], float]:
    """Start the client processes, release them together, collect their results."""
    ctx = mp.get_context("spawn")  # no gRPC state inherited through fork
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    shares = [list(range(p, s.agents, s.procs)) for p in range(s.procs)]
    procs = [
        ctx.Process(target=client_process,
                    args=(collector.address, share, s, tls_root, ready, go, results))
        for share in shares if share
    ]  # fmt: skip
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=600)
    cpu_before = collector.cpu_seconds()
    go.set()
    outcomes = [results.get(timeout=900) for _ in procs]
    cpu = collector.cpu_seconds() - cpu_before
    for p in procs:
        p.join()
    agents = [AgentResult(**a) for _, _, share in outcomes for a in share]
    return min(o[0] for o in outcomes), max(o[1] for o in outcomes), agents, cpu


def _make_pki(workdir: Path, s: Settings) -> str:
    root = workdir / "pki"
    nodes = [arg for i in range(s.agents) for arg in ("--node", node_name(i))]
    subprocess.run(
        [sys.executable, "-m", "collector.cli", "certs", "init", "--out", str(root),
         *nodes, "--reader", "bench"],
        cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    return str(root)


def parse_args(argv: list[str] | None = None) -> tuple[Settings, bool]:
    d = Settings()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--agents", type=int, default=d.agents, help=f"simulated agents ({d.agents})")
    p.add_argument("--events", type=int, default=d.events, help=f"per agent ({d.events})")
    p.add_argument("--batch", type=int, default=d.batch, help=f"events per batch ({d.batch})")
    p.add_argument("--window", type=int, default=d.window, help=f"batches in flight ({d.window})")
    p.add_argument("--procs", type=int, default=d.procs, help=f"client processes ({d.procs})")
    p.add_argument("--heartbeat-every", type=int, default=d.heartbeat_every,
                   help=f"an agent.health every N events ({d.heartbeat_every})")
    p.add_argument("--dir", help="put the database here (default: a temp dir); "
                   "it should be on the disk a real collector would use")
    p.add_argument("--tls", action="store_true", help="mutual TLS (certs from `gpuaudit certs`)")
    p.add_argument("--collector-arg", action="append", default=[], metavar="ARG",
                   help="extra argument for `gpuaudit collector` (repeat)")
    p.add_argument("--json", action="store_true", help="also print the report as JSON")
    a = p.parse_args(argv)
    if min(a.agents, a.events, a.batch, a.window, a.procs, a.heartbeat_every) < 1:
        p.error("--agents, --events, --batch, --window, --procs must be at least 1")
    settings = Settings(a.agents, a.events, a.batch, a.window, min(a.procs, a.agents),
                        a.heartbeat_every, a.dir, a.tls, tuple(a.collector_arg))
    return settings, a.json


def main(argv: list[str] | None = None) -> int:
    s, as_json = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="gpuaudit-ingest-", dir=s.dir))
    try:
        report = run(s, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    for problem in report.problems[:20]:
        print(f"  problem: {problem}", file=sys.stderr)
    print(report.line())
    if as_json:
        print(json.dumps(asdict(report)))
    return 0 if report.verified else 1


if __name__ == "__main__":
    sys.exit(main())

