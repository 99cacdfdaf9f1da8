"""Overhead of the agent on an open()/close() loop (issue: target <= 1.15x).

Rounds alternate baseline and treated runs so drift on a noisy 2-core VM
hits both sides; the result is the median of per-round ratios. With auditd's
auditctl present, the same is measured for an audit watch on the GPU paths.
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
    binary: Path, path: str, n: int, rounds: int,
    treated: Callable[[], AbstractContextManager[object]],
) -> list[tuple[float, float]]:
    """Interleave: baseline, then the same loop under a fresh `treated()` context.

    For the agent that is a whole agent lifetime per round (start-up happens
    before the treated loop, so it is not measured).
    """
    pairs = []
    for _ in range(rounds):
        base = loop_ns(binary, path, n)
        with treated():
            t = loop_ns(binary, path, n)
        pairs.append((base, t))
    return pairs


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
    ap.add_argument("--n", type=int, default=300_000, help="open/close pairs per run")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    binary = build("openloop.c")
    with tempfile.NamedTemporaryFile(prefix="gpuaudit-bench-") as f:
        loop_ns(binary, f.name, args.n)  # warm caches
        pairs = measure(binary, f.name, args.n, args.rounds, RunningAgent)
        print(f"agent  open/close: median ratio {median_ratio(pairs):.3f}x "
              f"over {args.rounds} rounds, {args.n} opens each "
              f"(baseline median {statistics.median(b for b, _ in pairs) / args.n:.0f} ns/op, "
              f"added median {statistics.median(t - b for b, t in pairs) / args.n:.0f} ns/op)")
        if audit_available():
            pairs = measure(binary, f.name, args.n, args.rounds, AuditWatch)
            print(f"auditd open/close: median ratio {median_ratio(pairs):.3f}x "
                  "(watch on GPU paths)")
        else:
            print("auditd: not available (auditctl missing or audit not enabled); skipped")


if __name__ == "__main__":
    main()
