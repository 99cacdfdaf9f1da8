"""What the compat detector (agent/bpf/compat.c) costs per syscall, by method.

Attaches variants one at a time around single runs of a getppid() loop and an
open()/close() loop (bench/openloop.c), interleaved, and prints per-call ns:
the difference of minima over the runs (stable on a noisy VM) and of medians.

  slowpath   an empty program on syscalls:sys_enter_kill, which the loops
             never make: the syscall slow path that ANY syscall tracepoint
             turns on for every task (the agent always has it on)
  empty_raw  + an empty program on the raw tracepoint sys_enter: dispatch
  ts         + compat_sys_enter_ts, the method in use when the kernel's BTF
             gives thread_info.status: bpf_get_current_task() and one 4-byte
             bpf_probe_read_kernel, TS_COMPAT tested
  registers  + compat_sys_enter, the fallback: one 112-byte probe read of the
             saved registers, three compares
  ts_alone, registers_alone
             the same without the slow path already on: what a node running
             only this detector would pay

    sudo .venv/bin/python bench/compat/run.py [--runs 30]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from agent.sensors import compat  # noqa: E402
from agent.sensors.loader import _compile  # noqa: E402
from tests.fixtures.compat.build import build  # noqa: E402

EMPTY = r"""
int bench_empty(void *ctx) { return 0; }
int bench_empty_raw(struct bpf_raw_tracepoint_args *ctx) { return 0; }
"""

Attach = Callable[[bool], None]


def _tracepoint(obj: Any, fn: str) -> Attach:
    def f(on: bool) -> None:
        if on:
            obj.attach_tracepoint(tp="syscalls:sys_enter_kill", fn_name=fn)
        else:
            obj.detach_tracepoint(tp="syscalls:sys_enter_kill")
    return f


def _raw(obj: Any, fn: bytes) -> Attach:
    def f(on: bool) -> None:
        if on:
            obj.attach_raw_tracepoint(tp=compat.RAW_TRACEPOINT, fn_name=fn)
        else:
            obj.detach_raw_tracepoint(tp=compat.RAW_TRACEPOINT)
    return f


def programs() -> dict[str, Attach]:
    """name -> attach(True)/detach(False) of each variant.

    The two methods come from one compat.c built as the agent builds it
    (with the BTF offset, when there is one); bcc lets one object attach one
    program per tracepoint, so each method gets its own object.
    """
    from bcc import BPF

    flags = ["-DRINGBUF_PAGES=64", f"-DAGENT_TGID={os.getpid()}", *compat.cflags()]
    out = {"slow": _tracepoint(BPF(text=EMPTY), "bench_empty"),
           "empty_raw": _raw(BPF(text=EMPTY), b"bench_empty_raw"),
           "registers": _raw(_compile([compat.SENSOR], flags), compat.PROGRAM)}
    if compat.cflags():
        out["ts"] = _raw(_compile([compat.SENSOR], flags), compat.TS_PROGRAM)
    else:
        print(f"no ts arms: {compat.ti_status().reason}", file=sys.stderr)
    return out


ARMS = {"none": [], "slowpath": ["slow"], "empty_raw": ["slow", "empty_raw"],
        "ts": ["slow", "ts"], "registers": ["slow", "registers"],
        "ts_alone": ["ts"], "registers_alone": ["registers"]}
AGAINST = {"slowpath": "none", "empty_raw": "slowpath", "ts": "slowpath",
           "registers": "slowpath", "ts_alone": "none", "registers_alone": "none"}


def run(cmd: list[str], per: int) -> float:
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return int(out) / per


def loops(out: Path, getppids: int, opens: int) -> dict[str, tuple[list[str], int]]:
    """name -> (command, calls per run) of the two loop programs, built in ``out``."""
    getppid = build("getppid_loop", out)
    opener = out / "openloop"
    subprocess.run(["cc", "-O2", "-o", str(opener), str(ROOT / "bench" / "openloop.c")],
                   check=True)
    target = out / "f"
    target.write_text("x")
    return {"getppid": ([str(getppid), str(getppids)], getppids),
            "open+close": ([str(opener), str(target), str(opens)], opens)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--getppid", type=int, default=1_000_000)
    ap.add_argument("--opens", type=int, default=200_000)
    a = ap.parse_args()
    cmds = loops(Path(tempfile.mkdtemp(prefix="compat-bench-")), a.getppid, a.opens)
    attach = programs()
    arms = {arm: parts for arm, parts in ARMS.items() if all(p in attach for p in parts)}
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(a.runs):
        for arm, parts in arms.items():
            for p in parts:
                attach[p](True)
            try:
                for lname, (cmd, per) in cmds.items():
                    times.setdefault((lname, arm), []).append(run(cmd, per))
            finally:
                for p in parts:
                    attach[p](False)
    report(times)


def report(times: dict[tuple[str, str], list[float]]) -> None:
    print(f"{'loop':<11}{'arm':<16}{'min ns':>9}{'median':>9}  vs")
    for (lname, arm), xs in times.items():
        line = f"{lname:<11}{arm:<16}{min(xs):9.1f}{statistics.median(xs):9.1f}"
        if arm in AGAINST:
            base = times[(lname, AGAINST[arm])]
            line += (f"  {AGAINST[arm]}: min {min(xs) - min(base):+.1f}"
                     f" median {statistics.median(xs) - statistics.median(base):+.1f}")
        print(line)


if __name__ == "__main__":
    main()
