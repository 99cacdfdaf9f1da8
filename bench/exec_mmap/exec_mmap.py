"""Overhead of the agent on an exec-heavy and an mmap-heavy loop (issue #3).

Same method as bench/overhead.py: rounds alternate a baseline run and a run
under a freshly started agent (start-up not measured), and the result is the
median of per-round ratios. After each treated run the agent's own loss
accounting (kernel ring drops, code.load mappings it could not resolve) is
read back from the collector, so a low ratio bought by dropping is visible.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import RunningAgent, build, median_ratio

from tests.integration.harness import settle


def run_ns(cmd: list[str]) -> float:
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return float(out.stdout)


def losses(agent: RunningAgent) -> dict[str, int]:
    """agent.loss totals by reason, once the treated run's events are stored."""
    settle(agent.collector, "bench", timeout=120)
    totals: dict[str, int] = {}
    for ev in agent.collector.query(types=["agent.loss"]):
        totals[ev.agent_loss.reason] = max(totals.get(ev.agent_loss.reason, 0),
                                           ev.agent_loss.total)
    return totals


def measure(cmd: list[str], rounds: int) -> tuple[list[tuple[float, float]], list[dict[str, int]]]:
    pairs, lost = [], []
    for _ in range(rounds):
        base = run_ns(cmd)
        with RunningAgent() as agent:
            treated = run_ns(cmd)
            lost.append(losses(agent))
        pairs.append((base, treated))
    return pairs, lost


def report(name: str, n: int, pairs: list[tuple[float, float]],
           lost: list[dict[str, int]], unit: str) -> None:
    base = statistics.median(b for b, _ in pairs) / n
    added = statistics.median(t - b for b, t in pairs) / n
    reasons = sorted({r for d in lost for r in d})
    loss_text = ", ".join(f"{r} median {statistics.median(d.get(r, 0) for d in lost):.0f}"
                          for r in reasons) or "none"
    print(f"agent {name}: median ratio {median_ratio(pairs):.3f}x over {len(pairs)} rounds, "
          f"{n} {unit} each (baseline median {base:.0f} ns/{unit[:-1]}, added median "
          f"{added:.0f} ns); agent.loss per run: {loss_text}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--execs", type=int, default=3000, help="fork+exec per run")
    ap.add_argument("--mmaps", type=int, default=200_000, help="mmap+munmap per run")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--only", choices=("exec", "mmap"), help="run one of the two loops")
    args = ap.parse_args()
    execloop, mmaploop = build("exec_mmap/execloop.c"), build("exec_mmap/mmaploop.c")
    # the mapped file: the loop's own binary (outside the allow-list, so the
    # first mapping is reported and hashed; the rest are deduplicated)
    cases: list[tuple[str, list[str], int, str]] = [
        ("fork+exec /bin/true", [str(execloop), str(args.execs)], args.execs, "execs"),
        ("mmap(PROT_EXEC)+munmap", [str(mmaploop), str(mmaploop), str(args.mmaps)],
         args.mmaps, "mmaps"),
    ]
    for name, cmd, n, unit in cases:
        if args.only and not unit.startswith(args.only):
            continue
        run_ns(cmd)  # warm caches
        pairs, lost = measure(cmd, args.rounds)
        report(name, n, pairs, lost, unit)



if __name__ == "__main__":
    main()
