"""Overhead of the agent on an open()/close() loop (issue: target <= 1.15x).

Rounds alternate baseline and treated runs so drift on a noisy 2-core VM
hits both sides. Two estimators are printed: the median of per-round ratios
(each round's runs reduced to their median) and the ratio of the fastest
runs, which is the cost of the code path with the least disturbance from the
host (run-to-run spread on the development VM is +-20%, the minima move
+-10 ns). With auditd's auditctl present, the same is measured for an audit
watch on the GPU paths. bench/open_floor.py splits the agent's cost into
layers and shows the floor any syscall-tracepoint open sensor pays.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

from common import RunningAgent, build, median_ratio


def loop_ns(binary: Path, path: str, n: int) -> float:
    out = subprocess.run([str(binary), path, str(n)], check=True, capture_output=True, text=True)
    return float(out.stdout)


def measure(
    binary: Path, path: str, n: int, rounds: int, runs: int,
    treated: Callable[[], AbstractContextManager[object]],
) -> list[tuple[list[float], list[float]]]:
    """Per round: `runs` baseline loops, then `runs` loops under a fresh
    `treated()` context (for the agent a whole agent lifetime per round;
    start-up happens before the treated loops, so it is not measured)."""
    rounds_out = []
    for _ in range(rounds):
        base = [loop_ns(binary, path, n) for _ in range(runs)]
        with treated():
            t = [loop_ns(binary, path, n) for _ in range(runs)]
        rounds_out.append((base, t))
    return rounds_out


def summary(name: str, rounds: list[tuple[list[float], list[float]]], n: int) -> str:
    pairs = [(statistics.median(b), statistics.median(t)) for b, t in rounds]
    bmin = min(x for b, _ in rounds for x in b)
    tmin = min(x for _, t in rounds for x in t)
    return (f"{name} open/close: median ratio {median_ratio(pairs):.3f}x "
            f"(added median {statistics.median(t - b for b, t in pairs) / n:.0f} ns/op); "
            f"fastest runs {tmin / bmin:.3f}x "
            f"(+{(tmin - bmin) / n:.0f} ns on {bmin / n:.0f} ns/op) "
            f"over {len(rounds)} rounds x {len(rounds[0][0])} runs of {n} opens")


class AuditWatch:
    """auditctl watches on the GPU device paths, as an auditd deployment would set.

    Audit is enabled (and auditd started, if it is not running) only for the
    measurement; the previous state is restored afterwards. With audit
    disabled the watches would cost nothing and the comparison would be void.
    """

    PATHS = ("/dev/nvidia0", "/dev/nvidiactl", "/dev/nvidia-uvm")

    def __enter__(self) -> AuditWatch:
        self.was_enabled = "enabled 1" in _auditctl("-s")
        self.started = None
        if subprocess.run(["pgrep", "-x", "auditd"], capture_output=True).returncode != 0:
            self.started = subprocess.Popen(["auditd", "-f"], stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL)
        _auditctl("-e", "1")
        for p in self.PATHS:
            _auditctl("-w", p, "-p", "rwxa", "-k", "gpuaudit-bench")
        return self

    def __exit__(self, *exc: object) -> None:
        _auditctl("-D", "-k", "gpuaudit-bench")
        if not self.was_enabled:
            _auditctl("-e", "0")
        if self.started is not None:
            self.started.terminate()
            self.started.wait(10)


def _auditctl(*args: str) -> str:
    return subprocess.run(["auditctl", *args], capture_output=True, text=True).stdout


def audit_available() -> bool:
    if shutil.which("auditctl") is None or os.geteuid() != 0:
        return False
    return subprocess.run(["auditctl", "-s"], capture_output=True).returncode == 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=100_000, help="open/close pairs per run")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=4, help="runs per side and round")
    args = ap.parse_args()
    binary = build("openloop.c")
    with tempfile.NamedTemporaryFile(prefix="gpuaudit-bench-") as f:
        loop_ns(binary, f.name, args.n)  # warm caches
        rounds = measure(binary, f.name, args.n, args.rounds, args.runs, RunningAgent)
        print(summary("agent ", rounds, args.n))
        if audit_available():
            rounds = measure(binary, f.name, args.n, args.rounds, args.runs, AuditWatch)
            print(summary("auditd", rounds, args.n) + " (watch on GPU paths)")
        else:
            print("auditd: not available (auditctl missing or audit not enabled); skipped")


if __name__ == "__main__":
    main()
