"""Per-call cost of the agent's NCCL uprobes (issue #4: target <= 2 us added).

The driver (tests/fixtures/fakenccl) calls ncclAllReduce(float32, 1024) N
times in a loop and prints ns per call. Three copies of the library sit in
three directories: one unprobed, one with an empty BPF program at the
agent's probe site (the bare trap), one with the nccl sensor attached
(uprobes belong to an inode), so the rounds alternate without re-attaching:
drift on a noisy VM hits every side. The result is the median over rounds
of (probed - unprobed) ns per call.

Cases:
  fake-plain   the fake built with -O2 alone: ncclAllReduce starts with a mov,
               single-stepped by the kernel (the slow path)
  fake-distro  the fake built as Ubuntu/Fedora build (-fcf-protection=full,
               frame pointers): endbr64, probed 4 bytes in on push %rbp
  real         --library PATH (default: nvidia/nccl/lib/libnccl.so.2 of an
               installed nvidia-nccl-cu* wheel, if any): NCCL itself. No GPU:
               the calls pass comm=NULL, NCCL returns ncclInvalidArgument at
               once, and the entry uprobe has fired. ncclAllReduce and
               ncclAllReduceConfig. Skipped, and said so, without the library
               (CI never downloads the ~344 MB wheel).

    sudo .venv/bin/python bench/nccl_uprobe/run.py [--calls N] [--rounds R] [--library PATH]

Writes bench/out/nccl_uprobe.json too.
"""

from __future__ import annotations

import argparse
import ctypes as ct
import importlib.util
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
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))

from agent.nccl.attach import Library  # noqa: E402
from agent.nccl.prologue import read_site  # noqa: E402
from agent.nccl.runtime import NcclRuntime  # noqa: E402
from agent.sensors import nccl  # noqa: E402
from agent.sensors.base import BootClock, MappedFile, SensorContext, SensorHooks  # noqa: E402
from agent.sensors.loader import load_sensors  # noqa: E402
from tests.fixtures.fakenccl.build import LIBRARY_NAME, FakeNccl, build  # noqa: E402


class CountingInbox:
    def __init__(self) -> None:
        self.records = 0

    def offer(self, item: object) -> bool:
        self.records += 1
        return True


def ns_per_call(fake: FakeNccl, lib_dir: Path, calls: int, extra: list[str]) -> float:
    out = subprocess.run([str(fake.driver), "--bench", str(calls), *extra], check=True,
                         capture_output=True, text=True,
                         env={**os.environ, "LD_LIBRARY_PATH": str(lib_dir)})
    (line,) = [x for x in out.stdout.splitlines() if x.startswith("ns_per_call ")]
    return float(line.split()[1])


def installed_nccl() -> Path | None:
    """libnccl.so.2 of an installed nvidia-nccl-cu* wheel, or None."""
    try:
        spec = importlib.util.find_spec("nvidia.nccl")
    except ImportError:  # no nvidia namespace package at all
        return None
    for base in (spec.submodule_search_locations or []) if spec else []:
        lib = Path(base) / "lib" / "libnccl.so.2"
        if lib.exists():
            return lib
    return None


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


def noop_probe(library: Path, symbol: str) -> object:
    """An empty BPF program on ``symbol`` of ``library``, at the agent's
    probe site (past an endbr64): the bare trap cost."""
    from bcc import BPF

    site = read_site(str(library), symbol)
    b = BPF(text="int nccl_bench_noop(void *ctx) { return 0; }")
    b.attach_uprobe(name=str(library).encode(), sym=symbol.encode(), fn_name=b"nccl_bench_noop",
                    sym_off=site.skip)
    return b


def probed_runtime() -> tuple[object, NcclRuntime]:
    """The nccl sensor loaded alone, with its runtime (nothing attached yet)."""
    loaded = load_sensors((nccl.SENSOR,))
    if loaded.bpf is None:
        raise SystemExit(f"cannot load the nccl sensor: {loaded.statuses}")
    ctx = SensorContext(bpf=loaded.bpf, inbox=CountingInbox(), clock=BootClock(),
                        cfg=SimpleNamespace(nccl_flush_s=5.0), opened_gpu=lambda pid: False,
                        hooks=SensorHooks())
    return loaded.bpf, NcclRuntime(ctx)


def attach(runtime: NcclRuntime, library: Path) -> Library:
    st = os.stat(library)
    lib = runtime.attach(MappedFile(pid=os.getpid(), path=str(library), map_path=str(library),
                                    dev=st.st_dev, inode=st.st_ino))
    if lib is None:
        raise SystemExit(f"attach failed: {runtime.attacher.failed}")
    return lib


@dataclass
class Case:
    name: str
    library: Path  # the file copied three times
    symbol: str  # the function the driver calls
    extra: list[str]  # driver arguments


def run_case(case: Case, fake: FakeNccl, runtime: NcclRuntime, prog_fd: int,
             args: argparse.Namespace, tmp: Path) -> dict[str, object]:
    """Alternating rounds of the three copies; what was added per call."""
    dirs = {name: tmp / case.name / name for name in ("plain", "noop", "agent")}
    for d in dirs.values():
        d.mkdir(parents=True)
        shutil.copy(case.library, d / LIBRARY_NAME)
    noop = noop_probe(dirs["noop"] / LIBRARY_NAME, case.symbol)
    lib = attach(runtime, dirs["agent"] / LIBRARY_NAME)
    site = next(s for s in lib.sites if s.symbol == case.symbol)
    rounds: list[dict[str, float]] = []
    run0 = prog_runtime(prog_fd)
    try:
        for _ in range(args.rounds):
            rounds.append({name: ns_per_call(fake, d, args.calls, case.extra)
                           for name, d in dirs.items()})
    finally:
        run1 = prog_runtime(prog_fd)
        noop.cleanup()  # type: ignore[attr-defined]
        for d in dirs.values():  # the probed copy stays in the kernel's hands until cleanup
            (d / LIBRARY_NAME).unlink()
    med = {name: statistics.median(r[name] for r in rounds) for name in dirs}
    added = statistics.median(r["agent"] - r["plain"] for r in rounds)
    trap = statistics.median(r["noop"] - r["plain"] for r in rounds)
    runs = run1[1] - run0[1]
    prog_ns = (run1[0] - run0[0]) / runs if runs else None
    return {"library": str(case.library), "symbol": case.symbol,
            "probe_site": {"skip": site.skip, "kind": site.kind, "fast": site.fast,
                           "bytes": site.head[:8].hex(" ")},
            "slow_probes_of_library": list(lib.slow), "rounds": rounds,
            "median_ns_per_call": med, "added_us_per_call": added / 1000,
            "empty_uprobe_us_per_call": trap / 1000,
            "agent_program_us_per_call": (added - trap) / 1000,
            "bpf_stats_program_ns_per_run": prog_ns, "bpf_stats_runs": runs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--library", type=Path, default=None,
                    help="a real libnccl.so.2 (default: an installed nvidia-nccl-cu* wheel's)")
    args = ap.parse_args()
    out_dir = ROOT / "bench" / "out"
    fakes = {v: build(out_dir / "nccl_uprobe", v) for v in ("plain", "distro")}
    fake = fakes["plain"]  # its driver runs every case (LD_LIBRARY_PATH picks the library)
    cases = [Case("fake-plain", fakes["plain"].library, "ncclAllReduce", []),
             Case("fake-distro", fakes["distro"].library, "ncclAllReduce", [])]
    real = args.library or installed_nccl()
    if real is None or not real.exists():
        print(f"real libnccl: {'not found' if real is None else f'{real} does not exist'}; "
              "skipped (pip download nvidia-nccl-cu13 --no-deps, unzip the wheel, then "
              "--library .../nvidia/nccl/lib/libnccl.so.2)")
    else:
        cases += [Case("real", real, "ncclAllReduce", ["--null-comm"]),
                  Case("real-config", real, "ncclAllReduceConfig",
                       ["--null-comm", "--bench-op", "allreduceconfig"])]
    stats_fd = enable_bpf_stats()
    bpf, runtime = probed_runtime()
    prog_fd = bpf.funcs[b"nccl_up_allreduce"].fd  # type: ignore[attr-defined]
    stop = threading.Event()
    flusher = threading.Thread(target=runtime.flush_loop, args=(stop,), daemon=True)
    flusher.start()  # the agent's reader runs too, as in production
    results: dict[str, object] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for case in cases:
                results[case.name] = r = run_case(case, fake, runtime, prog_fd, args, Path(tmp))
                report(case.name, r, args)
    finally:
        stop.set()
        flusher.join(10)
        bpf.cleanup()  # type: ignore[attr-defined]
        if stats_fd >= 0:
            os.close(stats_fd)
    result = {"calls_per_round": args.calls, "cases": results, "target_us": 2.0,
              "kernel": os.uname().release}
    (out_dir / "nccl_uprobe.json").write_text(json.dumps(result, indent=2) + "\n")


def report(name: str, r: dict, args: argparse.Namespace) -> None:
    med, site = r["median_ns_per_call"], r["probe_site"]
    prog_ns = r["bpf_stats_program_ns_per_run"]
    print(f"[{name}] {r['symbol']} ns/call (median of {args.rounds} rounds x {args.calls} "
          f"calls): unprobed {med['plain']:.1f}, empty uprobe {med['noop']:.1f}, "
          f"agent {med['agent']:.1f}; probe site +{site['skip']} {site['kind']} "
          f"({'emulated' if site['fast'] else 'single-stepped'}: {site['bytes']})")
    print(f"[{name}] added by the agent: {r['added_us_per_call']:.3f} us/call (target <= 2 us), "
          f"of which the uprobe trap {r['empty_uprobe_us_per_call']:.3f} us, the agent's "
          f"program {r['agent_program_us_per_call']:.3f} us; kernel bpf_stats: "
          f"{prog_ns if prog_ns is None else round(prog_ns)} ns per run over "
          f"{r['bpf_stats_runs']} runs", flush=True)


if __name__ == "__main__":
    main()
