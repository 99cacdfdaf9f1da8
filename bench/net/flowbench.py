"""Cost of net.flow's byte counting per socket call (sock_send_length /
sock_recv_length), for an ordinary process and for a GPU process.

Loads the net sensor alone (as the agent compiles it) and runs bench/net/
udploop.c: send(64)+recv on loopback UDP. Rounds alternate: no program,
program loaded with the loop an ordinary process, and with its pid in
accel_procs (a GPU/NCCL process: its bytes are counted). Reports the median
added ns per iteration (two probe hits) over rounds, and -- less exposed to
a noisy machine -- the kernel's own run time per probe call
(kernel.bpf_stats_enabled, read from the programs' fdinfo).

    sudo .venv/bin/python bench/net/flowbench.py --n 500000 --rounds 7
"""

from __future__ import annotations

import argparse
import ctypes as ct
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))

from agent.sensors import net  # noqa: E402
from agent.sensors.loader import load_sensors  # noqa: E402


def build() -> Path:
    out = HERE.parent / "out" / "udploop"
    out.parent.mkdir(exist_ok=True)
    subprocess.run(["gcc", "-O2", "-o", str(out), str(HERE / "udploop.c")], check=True)
    return out


def run(binary: Path, n: int, mark: object = None) -> float:
    """ns per send+recv; ``mark(pid)`` runs before the loop starts."""
    p = subprocess.Popen([str(binary), str(n)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True)
    assert p.stdin is not None and p.stdout is not None
    pid = int(p.stdout.readline())
    if callable(mark):
        mark(pid)
    out, _ = p.communicate("go\n", timeout=600)
    return float(out)


STATS = Path("/proc/sys/kernel/bpf_stats_enabled")
PROBES = ("tracepoint__sock__sock_send_length", "tracepoint__sock__sock_recv_length")


def probe_stats(bpf: object) -> tuple[int, int]:
    """(run_time_ns, run_cnt) summed over the send/recv probes, from fdinfo."""
    time_ns = count = 0
    for name in PROBES:
        fd = bpf.funcs[name.encode()].fd  # type: ignore[attr-defined]
        text = Path(f"/proc/self/fdinfo/{fd}").read_text()
        info = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        time_ns += int(info.get("run_time_ns", "0"))
        count += int(info.get("run_cnt", "0"))
    return time_ns, count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=500_000)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    binary = build()
    rows: list[tuple[float, float, float]] = []
    per_call: list[tuple[float, float]] = []
    old_stats = STATS.read_text()
    STATS.write_text("1")
    try:
        for _ in range(args.rounds):
            round_(binary, args.n, rows, per_call)
    finally:
        STATS.write_text(old_stats)
    report(rows, per_call)


def round_(binary: Path, n: int, rows: list[tuple[float, float, float]],
           per_call: list[tuple[float, float]]) -> None:
    """One round: baseline, then ordinary and GPU runs under a fresh load."""
    base = run(binary, n)
    loaded = load_sensors((net.SENSOR,))
    assert loaded.bpf is not None, loaded.statuses
    b = loaded.bpf
    try:
        accel = b["accel_procs"]
        t0, c0 = probe_stats(b)
        ordinary = run(binary, n)
        t1, c1 = probe_stats(b)
        gpu = run(binary, n, lambda pid: accel.__setitem__(ct.c_uint32(pid), ct.c_uint8(1)))
        t2, c2 = probe_stats(b)
        counted = sum(v.bytes_sent for v in b["net_flows"].values())
        assert counted == 64 * n, counted  # exact, or the bench is void
    finally:
        b.cleanup()
    rows.append((base, ordinary, gpu))
    # other processes' socket calls hit the probes too: they are ordinary
    per_call.append(((t1 - t0) / max(c1 - c0, 1), (t2 - t1) / max(c2 - c1, 1)))
    print(f"base {base:.0f} ns  ordinary {ordinary:.0f} ns  gpu {gpu:.0f} ns  "
          f"probe ns/call: ordinary {per_call[-1][0]:.0f}, gpu {per_call[-1][1]:.0f}",
          flush=True)


def report(rows: list[tuple[float, float, float]], per_call: list[tuple[float, float]]) -> None:
    # per-round differences: drift on a shared VM hits both sides of a pair
    base = statistics.median(r[0] for r in rows)
    ordinary = statistics.median(r[1] - r[0] for r in rows)
    gpu = statistics.median(r[2] - r[0] for r in rows)
    print(f"median ns per send+recv: base {base:.0f}, added for an ordinary process "
          f"{ordinary:+.0f}, for a GPU process (bytes counted) {gpu:+.0f}")
    print(f"median in-kernel run time per probe call: ordinary process "
          f"{statistics.median(p[0] for p in per_call):.0f} ns, GPU process "
          f"{statistics.median(p[1] for p in per_call):.0f} ns")


if __name__ == "__main__":
    main()
