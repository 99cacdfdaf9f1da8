"""file.write, net.rdma_open and the model-file open record end to end: real
processes make real open/rename/link/unlink/truncate/chdir syscalls in and
out of a temporary protected tree; a real eBPF agent started with --protect
reports them over real gRPC into the collector's SQLite."""

from __future__ import annotations

import contextlib
import ctypes as ct
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.sensors import gpu_open
from agent.sensors.checkpoint import OP_MODEL_OPEN, ModelOpenRec
from agent.sensors.loader import find_tracefs, sensor_cflags
from agent.sensors.records import BPF_DIR
from tests.capabilities import require, require_bpf
from tests.integration.harness import Agent, Collector, null_device, ready_agent, settle

pytestmark = [pytest.mark.bpf, pytest.mark.integration]

NODE = "it-files"
NOBODY = 65534
PYTHON = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable


@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    """A world-traversable temp dir holding the protected tree and an outside dir."""
    d = Path(tempfile.mkdtemp(prefix="gpuaudit-files-"))
    d.chmod(0o755)
    (d / "tree").mkdir(mode=0o755)
    (d / "outside").mkdir(mode=0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def tree(base: Path) -> Path:
    return base / "tree"


@pytest.fixture(scope="module")
def outside(base: Path) -> Path:
    return base / "outside"


@pytest.fixture(scope="module")
def files_agent(collector: Collector, tree: Path,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    require_bpf()
    log = tmp_path_factory.mktemp("files-agent") / "agent.log"
    agent = ready_agent(collector, NODE, "ebpf", log, "--protect", str(tree))
    yield agent
    agent.stop()


# Every program prints its pid when done, then waits for its stdin to close:
# it lives (its cwd and fds readable in /proc) until the test has its events.
DONE = """
print(os.getpid(), flush=True)
sys.stdin.read()
"""


@contextlib.contextmanager
def running(program: str, *args: str, user: int | None = None) -> Iterator[int]:
    """Run ``program`` (as ``user``) until it is done; yield its pid; then let it exit."""
    kw: dict[str, object] = {} if user is None else {"user": user, "group": user,
                                                     "extra_groups": []}
    proc = subprocess.Popen([PYTHON, "-c", program + DONE, *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd="/", **kw)  # type: ignore[call-overload]
    assert proc.stdout is not None
    line = proc.stdout.readline()
    try:
        assert line.strip().isdigit(), proc.communicate(timeout=30)[1]
        yield int(line)
    finally:
        _, err = proc.communicate("", timeout=30)
    assert proc.returncode == 0, err


def run_py(program: str, *args: str) -> int:
    """Run ``program`` to its end; its pid."""
    with running(program, *args) as pid:
        return pid


def writes(collector: Collector, pid: int) -> list[tuple[str, str, str]]:
    """(op, path, old_path) of the file.write events of ``pid``, in order."""
    settle(collector, NODE)
    return [(e.file_write.op, e.file_write.path, e.file_write.old_path)
            for e in collector.query(types=["file.write"], pid=pid)]


OPENS = """
import os, sys
tree, out = sys.argv[1], sys.argv[2]
for d in (tree, out):
    open(f"{d}/t.py", "w").close()                                  # O_TRUNC: truncate
    os.close(os.open(f"{d}/c.py", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))  # create
    os.close(os.open(f"{d}/t.py", os.O_WRONLY))                     # open_write
    os.close(os.open(f"{d}/t.py", os.O_RDONLY))                     # read: nothing
    os.close(os.open(f"{d}/.//t.py", os.O_RDWR))                    # unnormalised: open_write
"""


def test_write_opens_in_the_tree_and_only_there(collector: Collector, files_agent: Agent,
                                                tree: Path, outside: Path) -> None:
    with running(OPENS, str(tree), str(outside)) as pid:
        assert writes(collector, pid) == [
            ("truncate", f"{tree}/t.py", ""), ("create", f"{tree}/c.py", ""),
            ("open_write", f"{tree}/t.py", ""), ("open_write", f"{tree}/t.py", "")]
    ev = collector.query(types=["file.write"], pid=pid)
    health = collector.query(types=["agent.health"], nodes=[NODE], limit=1, newest=True)
    states = {s.name: s.state for s in health[-1].agent_health.sensors}
    assert (states["gpu_open"], states["file_write"]) == ("ok", "ok")
    for e in ev:
        w = e.file_write
        assert (w.tree, w.file_uid, w.owner_mismatch) == (str(tree), 0, False)
        assert w.result >= 0 and w.flags & 3  # an fd, opened for writing
        assert e.process.pid == pid and e.process.uid == 0


MUTATIONS = """
import os, sys
tree, out = sys.argv[1], sys.argv[2]
for d in (tree, out):
    for name in ("a", "b", "gone"):
        open(f"{d}/{name}.py", "x").close()
for d in (tree, out):
    os.rename(f"{d}/a.py", f"{d}/b.py")          # rename over
    os.link(f"{d}/b.py", f"{d}/hard.py")
    os.symlink("/etc/passwd", f"{d}/sym.py")
    os.truncate(f"{d}/b.py", 0)
    os.unlink(f"{d}/gone.py")
os.link(f"{tree}/b.py", f"{out}/escape.py")      # a hard link out of the tree
os.rename(f"{out}/escape.py", f"{tree}/back.py")  # and a rename into it
"""


def test_rename_link_symlink_truncate_unlink(collector: Collector, files_agent: Agent,
                                             tree: Path, outside: Path) -> None:
    t, o = str(tree), str(outside)
    with running(MUTATIONS, t, o) as pid:
        got = writes(collector, pid)
    assert got == [
        ("create", f"{t}/a.py", ""), ("create", f"{t}/b.py", ""), ("create", f"{t}/gone.py", ""),
        ("rename", f"{t}/b.py", f"{t}/a.py"), ("link", f"{t}/hard.py", f"{t}/b.py"),
        ("link", f"{t}/sym.py", "/etc/passwd"), ("truncate", f"{t}/b.py", ""),
        ("unlink", f"{t}/gone.py", ""),
        ("link", f"{o}/escape.py", f"{t}/b.py"), ("rename", f"{t}/back.py", f"{o}/escape.py"),
    ]


RELATIVE = """
import os, sys
tree, out = sys.argv[1], sys.argv[2]
os.chdir(out)
open("rel-out.py", "w").close()                  # outside: nothing
os.chdir(tree)                                   # cd into the tree
open("rel.py", "w").close()
os.rename("rel.py", "rel2.py")
if os.fork() == 0:                               # a child inherits the cwd
    open("child.py", "w").close()
    os._exit(0)
os.wait()
os.chdir("..")                                   # ".." : the kernel says "maybe"
open("tree/dotdot.py", "w").close()
open("outside/dotdot.py", "w").close()           # resolved outside: nothing
for flags in (os.O_RDONLY | os.O_DIRECTORY, os.O_RDONLY, os.O_PATH):
    fd = os.open(tree, flags)                    # a dirfd of the tree, any flavour
    os.close(os.open("viafd.py", os.O_WRONLY | os.O_CREAT, dir_fd=fd))
    os.unlink("viafd.py", dir_fd=fd)
    os.close(fd)
fd = os.open(out, os.O_RDONLY)                   # a dirfd outside: nothing
os.close(os.open("viafd.py", os.O_WRONLY | os.O_CREAT, dir_fd=fd))
up = os.open(os.path.dirname(tree), os.O_RDONLY) # a dirfd above the tree
os.close(os.open("tree/above.py", os.O_WRONLY | os.O_CREAT, dir_fd=up))
os.fchdir(up)
os.close(os.open("tree/fchdir.py", os.O_WRONLY | os.O_CREAT))
"""


def test_relative_paths_after_chdir_and_through_dirfds(collector: Collector, files_agent: Agent,
                                                       tree: Path, outside: Path) -> None:
    t = str(tree)
    with running(RELATIVE, t, str(outside)) as pid:
        got = writes(collector, pid)
    assert got == [
        ("truncate", f"{t}/rel.py", ""), ("rename", f"{t}/rel2.py", f"{t}/rel.py"),
        ("truncate", f"{t}/dotdot.py", ""),
        *[("create", f"{t}/viafd.py", ""), ("unlink", f"{t}/viafd.py", "")] * 3,
        ("create", f"{t}/above.py", ""), ("create", f"{t}/fchdir.py", ""),
    ]
    settle(collector, NODE)
    children = [e for e in collector.query(types=["file.write"]) if e.process.ppid == pid]
    assert [(e.file_write.op, e.file_write.path) for e in children] == [
        ("truncate", f"{t}/child.py")]


AS_USER = """
import os, sys
path = sys.argv[1]
try:
    os.close(os.open(path, os.O_WRONLY))
except PermissionError:
    pass
"""


def test_owner_mismatch_for_another_users_file(collector: Collector, files_agent: Agent,
                                               tree: Path) -> None:
    require(os.geteuid() == 0, "needs root to run as nobody and chown")
    shared = tree / "shared"
    shared.mkdir(mode=0o777, exist_ok=True)
    shared.chmod(0o1777)
    roots = shared / "roots.py"
    roots.write_text("x")
    roots.chmod(0o644)
    mine = shared / "nobodys.py"
    mine.write_text("x")
    os.chown(mine, NOBODY, NOBODY)
    with (running(AS_USER, str(roots), user=NOBODY) as refused,  # nobody -> root's: EACCES
          running(AS_USER, str(mine), user=NOBODY) as own,       # nobody -> its own file
          running(AS_USER, str(mine)) as root):                  # root -> nobody's file
        settle(collector, NODE)

    def one(pid: int) -> tuple[int, int, bool, int]:
        (e,) = collector.query(types=["file.write"], pid=pid)
        w = e.file_write
        return e.process.uid, w.file_uid, w.owner_mismatch, w.result

    assert one(refused) == (NOBODY, 0, True, -13)
    assert one(own)[:3] == (NOBODY, NOBODY, False)
    assert one(root)[:3] == (0, NOBODY, True)


@pytest.fixture(scope="module")
def rdma_node() -> Iterator[Path]:
    """/dev/infiniband/uverbs-gpuaudit-test: /dev/null's 1:3 under the RDMA prefix."""
    require(os.geteuid() == 0, "needs root to mknod")
    ib = Path("/dev/infiniband")
    made_dir = not ib.exists()
    ib.mkdir(exist_ok=True)
    with null_device(ib / "uverbs-gpuaudit-test") as node:
        yield node
    if made_dir:
        ib.rmdir()


RDMA = """
import os, sys
os.close(os.open(sys.argv[1], os.O_RDWR | os.O_CLOEXEC))
try:
    os.open(sys.argv[1] + "-missing", os.O_RDWR)
except FileNotFoundError:
    pass
"""


def test_rdma_open_success_and_refusal(collector: Collector, files_agent: Agent,
                                       rdma_node: Path) -> None:
    with running(RDMA, str(rdma_node)) as pid:
        settle(collector, NODE)
    got = [(e.net_rdma_open.path, e.net_rdma_open.flags, e.net_rdma_open.errno,
            e.net_rdma_open.fd >= 0) for e in collector.query(types=["net.rdma_open"], pid=pid)]
    flags = os.O_RDWR | os.O_CLOEXEC  # Python's os.open adds O_CLOEXEC
    assert got == [(str(rdma_node), flags, 0, True), (f"{rdma_node}-missing", flags, 2, False)]


# -- the model-file record, read straight from the ring of our own program ----

MODELS = """
import os, sys
d = sys.argv[1]
for name in ("w.pt", "w.pth", "w.bin", "w.ckpt", "w.pkl", "w.pickle", "w.joblib", "w.npy",
             "w.npz", "w.safetensors", "w.py", "pt"):
    open(os.path.join(d, name), "wb").close()
for name in ("w.pt", "w.pth", "w.bin", "w.ckpt", "w.pkl", "w.pickle", "w.joblib", "w.npy",
             "w.npz", "w.safetensors", "w.py", "pt"):
    os.close(os.open(os.path.join(d, name), os.O_RDONLY))
os.chdir(d)
os.close(os.open("w.pt", os.O_RDONLY))                  # relative, as given
try:
    os.open("missing.ckpt", os.O_RDONLY)
except FileNotFoundError:
    pass
"""


def _classifier_program() -> Any:
    from bcc import BPF

    tracefs = find_tracefs()
    assert tracefs is not None
    text = "".join(f'#line 1 "{p}"\n{p.read_text()}\n'
                   for p in (BPF_DIR / "common.h", BPF_DIR / "gpu_open.c"))
    flags = [f"-I{BPF_DIR}", *sensor_cflags(gpu_open.SENSOR, tracefs)]
    return BPF(text=text.encode(), cflags=flags)


def test_model_file_read_opens_emit_model_open_rec(outside: Path) -> None:
    require_bpf()
    bpf: Any = _classifier_program()
    recs: list[ModelOpenRec] = []
    lock = threading.Lock()

    def on_record(_ctx: object, data: int, size: int) -> None:
        raw = ct.string_at(data, size)
        if raw[0] == OP_MODEL_OPEN:
            with lock:
                recs.append(ModelOpenRec.from_buffer_copy(raw))

    bpf["events"].open_ring_buffer(on_record)
    try:
        pid = run_py(MODELS, str(outside))
        bpf.ring_buffer_consume()
    finally:
        bpf.cleanup()
    d = str(outside)
    # (Python's start-up reads the *.pth files of site-packages: model suffix too)
    mine = [(r.path.decode(), r.ret >= 0, -r.ret if r.ret < 0 else 0, r.dirfd)
            for r in recs if r.h.pid == pid
            and (not r.path.endswith(b".pth") or r.path.startswith(d.encode()))]
    expected = [(f"{d}/w.{s}", True, 0, -100)
                for s in ("pt", "pth", "bin", "ckpt", "pkl", "pickle", "joblib", "npy", "npz")]
    assert mine == [*expected, ("w.pt", True, 0, -100), ("missing.ckpt", False, 2, -100)]
    assert all(r.flags & 3 == 0 for r in recs if r.h.pid == pid)  # read-only opens only
