"""Ingest into PostgreSQL: one collector vs two collectors sharing the database.

The same simulated agents as bench/ingest.py (real shipper behaviour: one bidi
stream each, a window of batches in flight), split over the client processes;
with ``--collectors 2`` each client process talks to its own collector, both
writing to one PostgreSQL database. The run starts a throwaway PostgreSQL
server (tests/pgserver.py) and checks afterwards, in the database, that every
node holds seq 1..E exactly once.

Both configurations run in one invocation so the ratio is measured under the
same conditions; absolute numbers depend on the machine (on a 2-core VM the
collectors, PostgreSQL and the clients all share the same two cores).

    bench/pg_ingest                       # 20 agents x 10 000 events, 1 vs 2 collectors
    bench/pg_ingest --agents 10 --events 5000 --json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import ingest  # noqa: E402  (bench/ingest.py: the simulated agents)

from tests.pgserver import PgServer  # noqa: E402


@dataclass
class Run:
    collectors: int
    events: int
    seconds: float
    events_per_s: float
    problems: list[str]


def run(pg: PgServer, s: ingest.Settings, collectors: int, workdir: Path) -> Run:
    dsn = pg.create_db(f"bench_{collectors}_{time.monotonic_ns()}")
    cols = [ingest.CollectorProcess(workdir / f"c{collectors}-{i}.db",
                                    ["--insecure", "--dsn", dsn]) for i in range(collectors)]
    try:
        start, end, agents = _drive([c.address for c in cols], s)
    finally:
        for c in cols:
            c.stop()
    problems = [f"{a.node}: {a.error}" for a in agents if a.error] + verify(dsn, s)
    total = s.agents * s.events
    return Run(collectors, total, end - start, total / (end - start), problems)


def _drive(addresses: list[str], s: ingest.Settings) -> tuple[float, float, list]:
    ctx = mp.get_context("spawn")
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    shares = [list(range(p, s.agents, s.procs)) for p in range(s.procs)]
    procs = [ctx.Process(target=ingest.client_process,
                         args=(addresses[n % len(addresses)], share, s, None, ready, go, results))
             for n, share in enumerate(shares) if share]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=600)
    go.set()
    outcomes = [results.get(timeout=900) for _ in procs]
    for p in procs:
        p.join()
    agents = [ingest.AgentResult(**a) for _, _, share in outcomes for a in share]
    return min(o[0] for o in outcomes), max(o[1] for o in outcomes), agents


def verify(dsn: str, s: ingest.Settings) -> list[str]:
    import psycopg

    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT node, COUNT(*), COUNT(DISTINCT seq), MIN(seq), MAX(seq) FROM events"
            " WHERE node LIKE 'bench-%%' AND boot_id NOT LIKE 'collector-%%' GROUP BY node"
        ).fetchall()
    found = {r[0]: tuple(r[1:]) for r in rows}
    want = (s.events, s.events, 1, s.events)
    return [f"{ingest.node_name(i)}: {found.get(ingest.node_name(i))}, expected {want}"
            for i in range(s.agents) if found.get(ingest.node_name(i)) != want]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--agents", type=int, default=20)
    p.add_argument("--events", type=int, default=10_000)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--procs", type=int, default=2, help="client processes (>= collectors)")
    p.add_argument("--rounds", type=int, default=2,
                   help="alternate 1 and 2 collectors this many times; the best of each counts "
                   "(the first run also pays for cold caches)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    s = replace(ingest.Settings(), agents=a.agents, events=a.events, batch=a.batch,
                procs=max(2, a.procs))
    pg = PgServer()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            every = [run(pg, s, n, Path(tmp)) for _ in range(a.rounds) for n in (1, 2)]
    finally:
        pg.stop()
    runs = [max((r for r in every if r.collectors == n), key=lambda r: r.events_per_s)
            for n in (1, 2)]
    if a.json:
        print(json.dumps([asdict(r) for r in every]))
    for r in every:
        verdict = "verified" if not r.problems else f"FAILED: {r.problems[:3]}"
        print(f"pg_ingest: {r.collectors} collector(s): {r.events_per_s:,.0f} events/s "
              f"({r.events} events in {r.seconds:.2f} s); {verdict}")
    print(f"pg_ingest: two collectors / one = {runs[1].events_per_s / runs[0].events_per_s:.2f}x")
    return 0 if all(not r.problems for r in every) else 1


if __name__ == "__main__":
    sys.exit(main())
