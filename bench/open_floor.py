"""Where the agent's cost on an open()/close() loop goes, and its floor.

`bench/overhead` gives one number for the whole agent. This splits it, in one
run, into layers that any syscall-tracepoint open sensor pays, so the agent's
own share is visible:

  slowpath   an empty program on a syscall the loop never makes
             (syscalls:sys_enter_kill): the syscall slow path that enabling
             ANY syscall tracepoint imposes on every syscall of the node
  enter+exit empty programs on sys_enter_openat and sys_exit_openat: the
             tracepoint dispatch of a sensor that pairs an open with its result
  +read      the same, the enter program also reading the path with one
             bpf_probe_read_user_str: the floor of any open sensor that judges
             the path in the kernel (the agent must: /dev/nvidia*, protected
             trees, model files)
  programs   the agent's compiled sensors (agent/bpf/*.c), without its user
             space: the classifier's own logic on top of the floor
  agent      the whole agent (collector + agent process), as bench/overhead;
             its compat sensor (ia32 syscalls: a program on the raw sys_enter
             tracepoint, so on every syscall) is on where the ia32 ABI is
  agent -c   the same with --no-compat-watch

Each layer is measured against runs without it, interleaved; the probes are
attached and detached around single runs, so drift on a noisy VM hits both
sides. Two estimators are printed: the difference of the minimum run times
(the cost of the code path, least disturbed by the host) and of the medians.

    sudo .venv/bin/python bench/open_floor.py [--n 60000] [--runs 30]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from common import RunningAgent, build

FLOOR_PROGRAMS = r"""
struct floor_path { char p[256]; };
BPF_PERCPU_ARRAY(floor_scratch, struct floor_path, 1);

int floor_empty(void *ctx) { return 0; }

/* syscalls:sys_enter_openat's record: 8 common bytes, the syscall number
 * (padded to 8), then the arguments as 8-byte fields (see its format file). */
struct floor_openat_args { u64 common; u64 nr; u64 dfd; const char *filename; u64 flags; };

int floor_read_path(struct floor_openat_args *args)
{
    u32 zero = 0;
    struct floor_path *s = floor_scratch.lookup(&zero);
    if (s)
        bpf_probe_read_user_str(s->p, sizeof(s->p), args->filename);
    return 0;
}
"""

Probe = tuple[str, str]  # (tracepoint, function)
LAYERS: dict[str, list[Probe]] = {
    "slowpath": [("syscalls:sys_enter_kill", "floor_empty")],
    "enter+exit": [("syscalls:sys_enter_openat", "floor_empty"),
                   ("syscalls:sys_exit_openat", "floor_empty")],
    "+read": [("syscalls:sys_enter_openat", "floor_read_path"),
              ("syscalls:sys_exit_openat", "floor_empty")],
}


class Loop:
    """bench/openloop.c on one file: ns per open/close pair."""

    def __init__(self, path: str, n: int) -> None:
        self.binary = build("openloop.c")
        self.path = path
        self.n = n

    def ns(self) -> float:
        out = subprocess.run([str(self.binary), self.path, str(self.n)],
                             check=True, capture_output=True, text=True)
        return float(out.stdout) / self.n


def interleave(loop: Loop, runs: int, on: Callable[[], None], off: Callable[[], None]
               ) -> tuple[list[float], list[float]]:
    """(baseline run times, treated run times), one of each per round."""
    base, treated = [], []
    for _ in range(runs):
        base.append(loop.ns())
        on()
        treated.append(loop.ns())
        off()
    return base, treated


def probes_layer(bpf: Any, probes: list[Probe]) -> tuple[Callable[[], None], Callable[[], None]]:
    def on() -> None:
        for tp, fn in probes:
            bpf.attach_tracepoint(tp=tp, fn_name=fn)

    def off() -> None:
        for tp, _ in probes:
            bpf.detach_tracepoint(tp=tp)
    return on, off


@contextmanager
def agent_programs() -> Iterator[None]:
    """The agent's sensors compiled and attached, without its user space."""
    from agent.sensors.loader import load_sensors
    from agent.sensors.registry import BPF_SENSORS
    bpf = load_sensors(BPF_SENSORS).bpf
    try:
        yield
    finally:
        bpf.cleanup()


def per_lifetime(loop: Loop, rounds: int, per: int,
                 ctx: Callable[[], AbstractContextManager[object]]
                 ) -> tuple[list[float], list[float]]:
    """Layers too slow to attach per run (compile, start a process): several
    runs inside each lifetime, the same number of baseline runs between."""
    base: list[float] = []
    treated: list[float] = []
    for _ in range(rounds):
        base += [loop.ns() for _ in range(per)]
        with ctx():
            treated += [loop.ns() for _ in range(per)]
    return base, treated


def report(name: str, base: list[float], treated: list[float]) -> None:
    bmin, tmin = min(base), min(treated)
    bmed, tmed = statistics.median(base), statistics.median(treated)
    print(f"{name:11s} min {tmin / bmin:.3f}x (+{tmin - bmin:4.0f} ns)   "
          f"median {tmed / bmed:.3f}x (+{tmed - bmed:4.0f} ns)   "
          f"baseline min {bmin:.0f} ns/op", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=60_000, help="open/close pairs per run")
    ap.add_argument("--runs", type=int, default=30, help="interleaved runs per probe layer")
    ap.add_argument("--rounds", type=int, default=3, help="lifetimes of the programs/agent layers")
    args = ap.parse_args()
    from bcc import BPF

    with tempfile.NamedTemporaryFile(prefix="gpuaudit-bench-") as f:
        loop = Loop(f.name, args.n)
        for _ in range(3):
            loop.ns()  # warm caches
        bpf = BPF(text=FLOOR_PROGRAMS)
        try:
            for name, probes in LAYERS.items():
                report(name, *interleave(loop, args.runs, *probes_layer(bpf, probes)))
        finally:
            bpf.cleanup()
        per = max(1, args.runs // args.rounds)
        report("programs", *per_lifetime(loop, args.rounds, per, agent_programs))
        report("agent", *per_lifetime(loop, args.rounds, per, RunningAgent))
        report("agent -c", *per_lifetime(loop, args.rounds, per,
                                         lambda: RunningAgent("--no-compat-watch")))


if __name__ == "__main__":
    main()
