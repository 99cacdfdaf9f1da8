"""Check the nccl sensor against a REAL libnccl.so.2 (no GPU needed).

Symbol level: every function of agent/nccl/attach.PROBES is exported (plain
names, never pnccl*), no two of them share an address (one call, one count),
NCCL_UNIQUE_ID_BYTES of the wheel's nccl.h is our NCCL_ID_LEN, the version
(ncclGetVersion through ctypes), each probed function's probe site and
whether the kernel emulates it (fast) or single-steps it (slow), and every
exported nccl* function we do not probe, those that look like a collective
or a communicator constructor marked.

Traced run (root): the nccl sensor is attached to the library, and a child
process loads it with ctypes and calls ncclCommInitRank with a known unique
id, and ncclCommInitRankScalable with it as the first of two (both fail
without a GPU, but the entry probes have read nranks, rank and the id),
then ncclAllReduce and ncclAllReduceConfig with comm=NULL a known number of
times (NCCL returns ncclInvalidArgument at once, after the entry probe
fired): the sensor's records must say exactly that.

    sudo .venv/bin/python bench/nccl_uprobe/check_real.py --library .../libnccl.so.2 \
        [--header .../nccl.h] [--no-trace]

Exit 1 when a check fails. Writes bench/out/nccl_check_real.json too.
"""

from __future__ import annotations

import argparse
import ctypes as ct
import json
import os
import re
import secrets
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))

from agent.nccl.attach import PROBES  # noqa: E402
from agent.nccl.prologue import read_site  # noqa: E402
from agent.nccl.runtime import NcclRuntime  # noqa: E402
from agent.nccl.types import ID_LEN, comm_id  # noqa: E402
from agent.sensors import nccl  # noqa: E402
from agent.sensors.base import BootClock, MappedFile, SensorContext, SensorHooks  # noqa: E402
from agent.sensors.loader import load_sensors  # noqa: E402
from tests.inbox import ListInbox  # noqa: E402

# names of exported functions that make a communicator or move data
INTERESTING = re.compile(r"Init|Split|Shrink|Grow|Reduce|Gather|Scatter|Broadcast|Bcast|"
                         r"AlltoAll|Send|Recv|Put|Signal|Wait|Group")
# unprobed on purpose: why
NOT_PROBED = {
    "ncclBcast": "calls ncclBroadcast (probed): probing both would count twice",
    "ncclGroupSimulateEnd": "a simulation: no communication",
    "ncclResetDebugInit": "reloads logging settings (deprecated); no communicator",
    "ncclResetDebugInitInternal": "reloads logging settings; no communicator",
}
# not probed yet, and known: reported as gaps (a new name not listed here or
# above fails the check: a new NCCL added an entry point to look at)
KNOWN_GAPS = {
    "ncclCommGrow": "derived communicator: not seen, its collectives unnamed",
}


def exported_functions(library: Path) -> dict[str, int]:
    """Defined FUNC symbols of the dynamic symbol table -> address."""
    out = subprocess.run(["readelf", "--dyn-syms", "-W", str(library)], check=True,
                         capture_output=True, text=True).stdout
    syms: dict[str, int] = {}
    for line in out.splitlines():
        f = line.split()
        if len(f) >= 8 and f[3] == "FUNC" and f[6] != "UND":
            syms[f[7].split("@")[0]] = int(f[1], 16)
    return syms


def header_id_bytes(header: Path) -> int | None:
    m = re.search(r"#define NCCL_UNIQUE_ID_BYTES (\d+)", header.read_text())
    return int(m.group(1)) if m else None


def nccl_version(library: Path) -> int | None:
    try:
        lib = ct.CDLL(str(library))
        v = ct.c_int(0)
        return v.value if lib.ncclGetVersion(ct.byref(v)) == 0 else None
    except OSError:
        return None


def symbol_checks(library: Path, header: Path | None) -> dict:
    probed = sorted({sym for sym, _, _ in PROBES})
    exported = exported_functions(library)
    sites = {}
    for sym in probed:
        if sym in exported:
            s = read_site(str(library), sym)
            sites[sym] = {"skip": s.skip, "kind": s.kind, "fast": s.fast,
                          "bytes": s.head[:6].hex(" ")}
    addrs = Counter(exported[s] for s in probed if s in exported)
    unprobed = sorted(s for s in exported if s.startswith("nccl") and s not in probed)
    return {
        "library": str(library),
        "version": nccl_version(library),
        "header_NCCL_UNIQUE_ID_BYTES": header_id_bytes(header) if header else None,
        "our_NCCL_ID_LEN": ID_LEN,
        "missing": [s for s in probed if s not in exported],
        "shared_addresses": sorted(s for s in probed if s in exported and addrs[exported[s]] > 1),
        "pnccl_aliases_same_address": all(exported.get("p" + s) in (None, exported[s])
                                          for s in probed if s in exported),
        "sites": sites,
        "slow": sorted(s for s, v in sites.items() if not v["fast"]),
        "unprobed_interesting": {s: NOT_PROBED.get(s) or KNOWN_GAPS.get(s, "NEW: NOT PROBED")
                                 for s in unprobed if INTERESTING.search(s)},
        "known_gaps": sorted(s for s in unprobed if s in KNOWN_GAPS),
        "unprobed_other": [s for s in unprobed if not INTERESTING.search(s)],
    }


CHILD = textwrap.dedent("""
    import ctypes as ct, sys
    class Uid(ct.Structure):
        _fields_ = [("internal", ct.c_char * 128)]
    lib = ct.CDLL(sys.argv[1])
    uid = Uid(); ct.memmove(ct.byref(uid), bytes.fromhex(sys.argv[2]), 128)
    lib.ncclCommInitRank.argtypes = [ct.POINTER(ct.c_void_p), ct.c_int, Uid, ct.c_int]
    comm = ct.c_void_p(0)
    r = lib.ncclCommInitRank(ct.byref(comm), int(sys.argv[3]), uid, int(sys.argv[4]))
    print("init", r, flush=True)
    ids = (Uid * 2)(uid, Uid())
    lib.ncclCommInitRankScalable.argtypes = [ct.POINTER(ct.c_void_p), ct.c_int, ct.c_int, ct.c_int,
                                             ct.POINTER(Uid), ct.c_void_p]
    r = lib.ncclCommInitRankScalable(ct.byref(comm), int(sys.argv[3]), int(sys.argv[4]), 2, ids,
                                     None)
    print("scalable", r, flush=True)
    buf = (ct.c_char * 64)()
    p = ct.c_void_p
    lib.ncclAllReduce.argtypes = [p, p, ct.c_size_t, ct.c_int, ct.c_int, p, p]
    lib.ncclAllReduceConfig.argtypes = [p, p, ct.c_size_t, ct.c_int, ct.c_int, p, p, p]
    results = set()
    for _ in range(int(sys.argv[5])):
        results.add(lib.ncclAllReduce(ct.addressof(buf), ct.addressof(buf), 1024, 7, 0, None, None))
    for _ in range(int(sys.argv[6])):
        results.add(lib.ncclAllReduceConfig(ct.addressof(buf), ct.addressof(buf), 1024, 7, 0,
                                            None, None, None))
    print("colls", sorted(results), flush=True)
""")


def traced_run(library: Path, nranks: int = 4, rank: int = 2, plain: int = 37,
               config: int = 41) -> dict:
    """Attach the sensor to ``library``, make known calls from a child, read the records."""
    loaded = load_sensors((nccl.SENSOR,))
    if loaded.bpf is None:
        return {"error": f"cannot load the nccl sensor: {loaded.statuses}"}
    inbox = ListInbox()
    ctx = SensorContext(bpf=loaded.bpf, inbox=inbox, clock=BootClock(),
                        cfg=SimpleNamespace(nccl_flush_s=3600.0), opened_gpu=lambda p: False,
                        hooks=SensorHooks())
    runtime = NcclRuntime(ctx)
    raw: list[bytes] = []
    loaded.bpf["events"].open_ring_buffer(lambda _c, d, n: raw.append(ct.string_at(d, n)))
    try:
        st = os.stat(library)
        lib = runtime.attach(MappedFile(os.getpid(), str(library), str(library), st.st_dev,
                                        st.st_ino))
        if lib is None:
            return {"error": f"attach failed: {runtime.attacher.failed}"}
        uid = secrets.token_bytes(128)
        child = subprocess.run([sys.executable, "-c", CHILD, str(library), uid.hex(), str(nranks),
                                str(rank), str(plain), str(config)], capture_output=True,
                               text=True, timeout=120)
        loaded.bpf.ring_buffer_poll(100)
        for data in raw:
            rec = runtime.decoders()[data[0]](data, ctx.clock)
            if rec is not None:
                inbox.offer(rec)
        runtime.flush()
        inits = [r.payload for r in inbox.take("nccl.comm_init")]
        colls = [r.payload for r in inbox.take("nccl.collective")]
        got = {
            "child_said": [x for x in child.stdout.splitlines()
                           if x.startswith(("init", "scalable", "colls"))],
            "child_stderr_tail": child.stderr.strip().splitlines()[-3:],
            "inits": [{"function": p.function, "nranks": p.nranks, "rank": p.rank,
                       "comm_id_matches": p.comm_id == comm_id(uid), "result": p.result}
                      for p in inits],
            "collectives": [{"op": p.op, "datatype": p.datatype, "calls": p.calls,
                             "bytes": p.bytes, "comm_handle": p.comm_handle} for p in colls],
            "probes": lib.probes,
        }
        got["ok"] = ([p.function for p in inits] == ["ncclCommInitRank", "ncclCommInitRankScalable"]
                     and all((p.nranks, p.rank, p.comm_id) == (nranks, rank, comm_id(uid))
                             and p.result != 0 for p in inits)
                     and [(p.op, p.datatype, p.calls, p.bytes) for p in colls]
                     == [("AllReduce", "float32", plain + config, (plain + config) * 4096)])
        return got
    finally:
        loaded.bpf.cleanup()


def symbol_checks_of(result: dict[str, object]) -> dict:
    sym = result["symbols"]
    assert isinstance(sym, dict)
    return sym


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--library", type=Path, required=True)
    ap.add_argument("--header", type=Path, default=None,
                    help="nccl.h (default: ../include/nccl.h of the library, as in the wheel)")
    ap.add_argument("--no-trace", action="store_true", help="symbol checks only (no root)")
    args = ap.parse_args()
    traced: dict = {}
    header = args.header or args.library.parent.parent / "include" / "nccl.h"
    found = header if header.exists() else None
    result: dict[str, object] = {"symbols": symbol_checks(args.library, found)}
    if not args.no_trace:
        traced = result["traced"] = traced_run(args.library)
    sym = symbol_checks_of(result)
    ok = (not sym["missing"] and not sym["shared_addresses"] and sym["pnccl_aliases_same_address"]
          and sym["header_NCCL_UNIQUE_ID_BYTES"] in (None, ID_LEN)
          and all(not v.startswith("NEW") for v in sym["unprobed_interesting"].values())
          and (args.no_trace or traced.get("ok", False)))
    result["ok"] = ok
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "nccl_check_real.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
