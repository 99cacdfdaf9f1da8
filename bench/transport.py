"""One agent -> collector -> SQLite: the highest sustained lossless rate, and latency.

The agent's real data path runs in this process: raw gpu.open ring records
(built like the kernel's, stamped with CLOCK_BOOTTIME at production) go into
the agent's bounded queue at a paced rate, then the real Processor (decode,
/proc enrichment, seq), the real DiskSpool (in a temp dir, default fsync
policy) and the real Shipper (gRPC stream, window of 8) deliver them to a
real `gpuaudit collector` subprocess writing SQLite with synchronous=FULL.
Only the kernel is left out (bench/overhead measures that side).

For each rate in ``--rates`` it produces for ``--seconds`` and calls the rate
lossless when the queue dropped nothing, the spool lost nothing, and the
backlog drains within ``--drain`` seconds after production stops (so the
pipeline kept up instead of merely buffering). Latency is event time (when
the record was produced) to the Ack that says it is committed, sampled on the
first and last event of every batch, at ``--latency-rate``.

    bench/transport                          # rates 20k..80k, 10 s each, mTLS
    bench/transport --rates 30000,50000 --insecure
"""

from __future__ import annotations

import argparse
import os
import statistics
import struct
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.enrich import Enricher  # noqa: E402
from agent.pipeline import Identity, Processor  # noqa: E402
from agent.queue import DroppingQueue  # noqa: E402
from agent.record import Record  # noqa: E402
from agent.sensors.base import BootClock  # noqa: E402
from agent.sensors.records import OP_GPU_OPEN, GpuOpenRec  # noqa: E402
from agent.sensors.registry import BPF_SENSORS  # noqa: E402
from agent.ship import Shipper  # noqa: E402
from agent.spool import Chunk, DiskSpool  # noqa: E402
from gpuaudit.v1 import events_pb2  # noqa: E402
from tests.integration.harness import Collector, session_pki  # noqa: E402

TICK_S = 0.005


def ring_template() -> bytearray:
    """A gpu.open record as the kernel sensor emits it, for this process."""
    r = GpuOpenRec()
    pid = os.getpid()
    r.h.op, r.h.pid, r.h.tid, r.h.ppid = OP_GPU_OPEN, pid, threading.get_native_id(), os.getppid()
    r.h.uid, r.h.gid, r.h.comm = os.getuid(), os.getgid(), b"bench"
    r.flags, r.ret, r.path = os.O_RDWR, 3, b"/dev/nvidia0"
    return bytearray(bytes(r))


KTIME_OFFSET = GpuOpenRec.h.offset + type(GpuOpenRec().h).ktime_ns.offset


def ring_record(template: bytearray, ktime_ns: int) -> bytes:
    """The template stamped with ``ktime_ns``: one copy, like RingReader's."""
    struct.pack_into("<Q", template, KTIME_OFFSET, ktime_ns)
    return bytes(template)


@dataclass
class Latency:
    """Event time -> Ack time, sampled on the first and last event of each batch."""

    samples: list[float] = field(default_factory=list)

    def on_ack(self, chunk: Chunk, acked_at: float) -> None:
        for payload in (chunk.payloads[0], chunk.payloads[-1]):
            ev = events_pb2.Event.FromString(payload)
            self.samples.append(acked_at - ev.time.ToNanoseconds() / 1e9)

    def quantile(self, q: float) -> float:
        return statistics.quantiles(self.samples, n=100)[int(q * 100) - 1] if len(
            self.samples) > 2 else float("nan")


class Pipeline:
    """The agent's processor, spool and shipper, wired as in agent/main.py."""

    def __init__(self, target: str, tmp: Path, tls: object | None) -> None:
        self.inbox: DroppingQueue[bytes | Record] = DroppingQueue(65536)
        self.spool = DiskSpool(tmp / "spool", "bench-run")
        decoders = {op: d for s in BPF_SENSORS for op, d in s.decoders.items()}
        self.processor = Processor(self.inbox, decoders, BootClock(), Enricher(),
                                   Identity("bench", "bench-run"), self.spool)
        creds = tls.channel_credentials() if tls is not None else None  # type: ignore[attr-defined]
        self.latency = Latency()
        self.shipper = Shipper(target, self.spool, credentials=creds, on_ack=self._on_ack)
        self.measure = False
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.processor.run, args=(self.stop,), daemon=True),
                        threading.Thread(target=self.shipper.run, args=(self.stop,), daemon=True)]
        for t in self.threads:
            t.start()

    def _on_ack(self, chunk: Chunk, acked_at: float) -> None:
        if self.measure:
            self.latency.on_ack(chunk, acked_at)

    def produce(self, rate: int, seconds: float) -> int:
        """Offer ``rate`` records/s for ``seconds``; returns how many were offered."""
        offered = 0
        template = ring_template()
        start = time.monotonic()
        while (elapsed := time.monotonic() - start) < seconds:
            due = int(rate * elapsed) - offered
            now_ns = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
            for _ in range(due):
                self.inbox.offer(ring_record(template, now_ns))
            offered += due
            time.sleep(TICK_S)
        return offered

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(10)
        self.spool.close()


@dataclass
class Step:
    rate: int
    offered: int
    dropped: int
    drained_s: float
    lossless: bool


def run_rate(p: Pipeline, rate: int, seconds: float, drain_s: float) -> Step:
    dropped0, lost0 = p.inbox.dropped, p.spool.dropped
    offered = p.produce(rate, seconds)
    t0 = time.monotonic()
    while p.inbox.qsize() and time.monotonic() - t0 < drain_s:
        time.sleep(0.005)
    drained = p.spool.wait_drained(max(0.0, drain_s - (time.monotonic() - t0)))
    drained_s = time.monotonic() - t0
    dropped = p.inbox.dropped - dropped0 + p.spool.dropped - lost0
    return Step(rate, offered, dropped, drained_s, drained and dropped == 0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", default="20000,30000,40000,50000,60000,80000")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--drain", type=float, default=1.0,
                    help="backlog must drain this fast after production stops: a pipeline "
                    "that keeps up has at most a second of events in flight")
    ap.add_argument("--latency-rate", type=int, default=5000)
    ap.add_argument("--insecure", action="store_true", help="plaintext instead of mTLS")
    ap.add_argument("--store", choices=("rows", "chunks"), default="rows",
                    help="the collector's storage layout")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        tls = None if args.insecure else session_pki().node("bench")
        col = Collector(tmp / "bench.db", "--node-rate-limit", "0", "--store", args.store,
                        insecure=args.insecure)
        p = Pipeline(col.address, tmp, tls)
        try:
            return report(p, args)
        finally:
            p.close()
            col.stop()


def report(p: Pipeline, args: argparse.Namespace) -> int:
    best = 0
    for rate in (int(r) for r in args.rates.split(",")):
        step = run_rate(p, rate, args.seconds, args.drain)
        print(f"rate {step.rate:>7}/s  offered {step.offered:>7}  dropped {step.dropped:>6}  "
              f"drained in {step.drained_s:4.1f}s  {'lossless' if step.lossless else 'LOSSY'}",
              flush=True)
        if not step.lossless:
            break
        best = rate
    p.spool.wait_drained(60)  # an overloaded step's backlog must not count as latency
    p.measure = True
    run_rate(p, args.latency_rate, args.seconds, args.drain)
    p.measure = False
    lat = p.latency
    print(f"latency at {args.latency_rate}/s: p50 {lat.quantile(0.5) * 1000:.1f} ms, "
          f"p99 {lat.quantile(0.99) * 1000:.1f} ms ({len(lat.samples)} samples)")
    print(f"highest lossless sustained rate: {best} events/s "
          f"(agent pipeline + spool + {'plaintext' if args.insecure else 'mTLS'} gRPC "
          f"+ collector + SQLite {args.store}, one 2-core machine)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
