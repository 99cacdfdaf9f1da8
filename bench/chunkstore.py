"""Row store vs chunk store behind the collector's group committer: us per stored event.

No network and no gRPC: the events are built and parsed before the clock
starts (the servicer hands the store parsed events), then N simulated agent
runs submit their 1000-event batches to one GroupCommitter, interleaved
(round robin, as concurrent agents arrive), and the clock stops when the last
future resolves. Each store gets a fresh file in the same directory, so both
pay the same fsyncs (synchronous=FULL). Counts are checked exactly after the run.

    bench/chunkstore.py                       # 50 runs x 4000 events, batches of 1000
    bench/chunkstore.py --agents 50 --events 20000 --dir /var/tmp
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench.ingest import make_event, node_name  # noqa: E402
from collector.ingest.group import GroupCommitter  # noqa: E402
from collector.storage.chunks import ChunkStorage  # noqa: E402
from collector.storage.sqlite import SqliteStorage  # noqa: E402
from gpuaudit.v1 import collector_pb2, events_pb2  # noqa: E402

STORES = {"rows": SqliteStorage, "chunks": ChunkStorage}


def build(agents: int, events: int, batch: int) -> list[list[events_pb2.Event]]:
    """All batches, interleaved across agents, as parsed events (a wire round trip)."""
    runs = []
    for index in range(agents):
        node, boot_id = node_name(index), f"boot-{index:03d}"
        batches = []
        for first in range(1, events + 1, batch):
            evs = [make_event(node, boot_id, s, 10_000) for s in range(first, first + batch)]
            wire = collector_pb2.EventBatch(events=evs).SerializeToString()
            batches.append(list(collector_pb2.EventBatch.FromString(wire).events))
        runs.append(batches)
    return [run[i] for i in range(len(runs[0])) for run in runs]


def measure(kind: str, batches: list[list[events_pb2.Event]], workdir: Path) -> float:
    """Seconds to store ``batches`` through a GroupCommitter into a fresh ``kind`` store."""
    store = STORES[kind](workdir / f"{kind}.db", run_id="bench")
    committer = GroupCommitter(store)
    committer.start()
    try:
        start = time.perf_counter()
        futures = [committer.submit(b) for b in batches]
        results = [f.result() for f in futures]
        elapsed = time.perf_counter() - start
        total = sum(len(b) for b in batches)
        stored = sum(r.stored for r in results)
        if stored != total or store.status().events_stored != total:
            raise SystemExit(f"{kind}: stored {stored} of {total}")
        print(f"  {kind}: {committer.groups} groups", file=sys.stderr)
        return elapsed
    finally:
        committer.close()
        store.close()


def main() -> int:
    """Parse flags, run each store once, print us/event and events/s."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, default=50)
    ap.add_argument("--events", type=int, default=4000, help="per agent")
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--dir", default=None, help="where the databases go (default: a temp dir)")
    args = ap.parse_args()
    batches = build(args.agents, args.events, args.batch)
    total = sum(len(b) for b in batches)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for kind in STORES:
            seconds = measure(kind, batches, Path(tmp))
            print(
                f"{kind:>6}: {total} events in {seconds:.2f} s = "
                f"{seconds / total * 1e6:.2f} us/event, {total / seconds:,.0f} events/s"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
