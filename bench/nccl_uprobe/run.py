"""Per-call cost of the agent's NCCL uprobes (issue #4: target <= 2 us added).

The driver (tests/fixtures/fakenccl) calls ncclAllReduce(float32, 1024) N
times in a loop and prints ns per call. Two copies of the fake libnccl.so.2
sit in two directories; the sensor's uprobes are attached to one of them
only (uprobes belong to an inode), so probed and unprobed rounds can
alternate without re-attaching: drift on a noisy VM hits both sides. The
result is the median over rounds of (probed - unprobed) ns per call.

    sudo .venv/bin/python bench/nccl_uprobe/run.py [--calls N] [--rounds R]

Writes bench/out/nccl_uprobe.json too.
"""

from __future__ import annotations

import argparse
import ctypes as ct
import json
import os
import platform
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))

from agent.nccl.runtime import NcclRuntime  # noqa: E402
from agent.sensors import nccl  # noqa: E402
from agent.sensors.base import BootClock, MappedFile, SensorContext, SensorHooks  # noqa: E402
from agent.sensors.loader import load_sensors  # noqa: E402
from tests.fixtures.fakenccl.build import FakeNccl, build  # noqa: E402


class CountingInbox:
    def __init__(self) -> None:
        self.records = 0

    def offer(self, item: object) -> bool:
        self.records += 1
        return True


def ns_per_call(fake: FakeNccl, lib_dir: Path, calls: int) -> float:
    out = subprocess.run([str(fake.driver), "--bench", str(calls)], check=True,
                         capture_output=True, text=True,
                         env={**os.environ, "LD_LIBRARY_PATH": str(lib_dir)})
    (line,) = [x for x in out.stdout.splitlines() if x.startswith("ns_per_call ")]
    return float(line.split()[1])


SYS_BPF = {"x86_64": 321, "aarch64": 280}
BPF_OBJ_GET_INFO_BY_FD, BPF_ENABLE_STATS = 15, 32
RUN_TIME_OFF = 192  # struct bpf_prog_info: run_time_ns, then run_cnt (uapi, stable)
_libc = ct.CDLL(None, use_errno=True)


def _bpf(cmd: int, attr: bytes) -> tuple[int, ct.Array[ct.c_char]]:
    buf = ct.create_string_buffer(attr, 128)
    return _libc.syscall(SYS_BPF[platform.machine()], cmd, buf, len(attr)), buf


def enable_bpf_stats() -> int:
    """An fd that keeps BPF run-time statistics on until closed; -1 if refused."""
    fd, _ = _bpf(BPF_ENABLE_STATS, struct.pack("<I", 0))  # BPF_STATS_RUN_TIME
    return fd


def prog_runtime(prog_fd: int) -> tuple[int, int]:
    """(run_time_ns, run_cnt) of a loaded BPF program."""
    info = ct.create_string_buffer(256)
    rc, _ = _bpf(BPF_OBJ_GET_INFO_BY_FD,
                 struct.pack("<IIQ", prog_fd, len(info), ct.addressof(info)))
    if rc != 0:
        return 0, 0
    run_ns, runs = struct.unpack_from("<QQ", info.raw, RUN_TIME_OFF)
    return run_ns, runs


def noop_probe(library: Path) -> object:
    """An empty BPF program on ncclAllReduce of ``library``: the bare trap cost."""
    from bcc import BPF

    b = BPF(text="int nccl_bench_noop(void *ctx) { return 0; }")
    b.attach_uprobe(name=str(library).encode(), sym=b"ncclAllReduce", fn_name=b"nccl_bench_noop")
    return b


def probed_runtime(library: Path) -> tuple[object, NcclRuntime]:
    """The nccl sensor loaded alone, with its uprobes attached to ``library``."""
    loaded = load_sensors((nccl.SENSOR,))
    if loaded.bpf is None:
        raise SystemExit(f"cannot load the nccl sensor: {loaded.statuses}")
    ctx = SensorContext(bpf=loaded.bpf, inbox=CountingInbox(), clock=BootClock(),
                        cfg=SimpleNamespace(nccl_flush_s=5.0), opened_gpu=lambda pid: False,
                        hooks=SensorHooks())
    runtime = NcclRuntime(ctx)
    st = os.stat(library)
    lib = runtime.attach(MappedFile(pid=os.getpid(), path=str(library), map_path=str(library),
                                    dev=st.st_dev, inode=st.st_ino))
    if lib is None:
        raise SystemExit(f"attach failed: {runtime.attacher.failed}")
    return loaded.bpf, runtime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=2_000_000)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    out_dir = ROOT / "bench" / "out"
    fake = build(out_dir / "nccl_uprobe")
    stats_fd = enable_bpf_stats()
    with tempfile.TemporaryDirectory() as tmp:
        dirs = {name: Path(tmp, name) for name in ("plain", "noop", "agent")}
        for d in dirs.values():
            d.mkdir()
            shutil.copy(fake.library, d / fake.library.name)
        noop = noop_probe(dirs["noop"] / fake.library.name)
        bpf, runtime = probed_runtime(dirs["agent"] / fake.library.name)
        prog_fd = bpf.funcs[b"nccl_up_allreduce"].fd  # type: ignore[attr-defined]
        stop = threading.Event()
        flusher = threading.Thread(target=runtime.flush_loop, args=(stop,), daemon=True)
        flusher.start()  # the agent's reader runs too, as in production
        rounds: list[dict[str, float]] = []
        run0 = prog_runtime(prog_fd)
        try:
            for _ in range(args.rounds):
                rounds.append({name: ns_per_call(fake, d, args.calls) for name, d in dirs.items()})
        finally:
            run1 = prog_runtime(prog_fd)
            stop.set()
            flusher.join(10)
            bpf.cleanup()  # type: ignore[attr-defined]
            noop.cleanup()  # type: ignore[attr-defined]
            if stats_fd >= 0:
                os.close(stats_fd)
    med = {name: statistics.median(r[name] for r in rounds) for name in dirs}
    added = statistics.median(r["agent"] - r["plain"] for r in rounds)
    trap = statistics.median(r["noop"] - r["plain"] for r in rounds)
    runs = run1[1] - run0[1]
    prog_ns = (run1[0] - run0[0]) / runs if runs else None
    result = {"calls_per_round": args.calls, "rounds": rounds, "median_ns_per_call": med,
              "added_us_per_call": added / 1000, "empty_uprobe_us_per_call": trap / 1000,
              "agent_program_us_per_call": (added - trap) / 1000,
              "bpf_stats_program_ns_per_run": prog_ns, "bpf_stats_runs": runs,
              "target_us": 2.0, "kernel": os.uname().release}
    (out_dir / "nccl_uprobe.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"ncclAllReduce ns/call (median of {args.rounds} rounds x {args.calls} calls): "
          f"unprobed {med['plain']:.1f}, empty uprobe {med['noop']:.1f}, agent {med['agent']:.1f}")
    print(f"added by the agent: {added / 1000:.3f} us/call (target <= 2 us), of which the "
          f"uprobe trap {trap / 1000:.3f} us, the agent's program "
          f"{(added - trap) / 1000:.3f} us; "
          f"kernel bpf_stats: {prog_ns if prog_ns is None else round(prog_ns)} ns per run "
          f"over {runs} runs")


if __name__ == "__main__":
    main()
