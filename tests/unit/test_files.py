"""file.write user space without root: the path hash the kernel shares, tree
discovery, and decoding file_write_rec against a fake /proc and fake maps."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from agent.files.runtime import FilesRuntime, open_op
from agent.files.trees import (
    ANCESTOR,
    FNV_BASIS,
    IN_TREE,
    OUTSIDE,
    ProtectedTrees,
    fnv1a64,
    path_hash,
    python_trees,
)
from agent.queue import DroppingQueue
from agent.sensors.base import BootClock, SensorContext, SensorHooks
from agent.sensors.files import (
    FW_IN_TREE,
    FW_MAYBE,
    OP_FILE_WRITE,
    OP_FILES_CWD,
    FilesCwdRec,
    FileWriteRec,
)
from agent.sensors.gpu_open import OP_RDMA_OPEN, decode_rdma_open
from agent.sensors.records import C, GpuOpenRec
from gpuaudit.v1 import files_pb2

FNV_PRIME = 0x100000001B3


def continue_hash(h: int, rel: str) -> int:
    """The kernel walk's continuation from a directory's hash (files_walk)."""
    for comp in rel.split("/"):
        if comp in ("", "."):
            continue
        for byte in b"/" + comp.encode():
            h = ((h ^ byte) * FNV_PRIME) & (2**64 - 1)
    return h


def test_path_hash_is_fnv1a_of_the_normalised_path() -> None:
    assert path_hash("/") == FNV_BASIS
    assert continue_hash(FNV_BASIS, "a") == path_hash("/a")
    # the published FNV-1a 64 test vectors
    assert (fnv1a64(b""), fnv1a64(b"a"), fnv1a64(b"foobar")) == (
        FNV_BASIS, 0xAF63DC4C8601EC8C, 0x85944171F73967E8)
    assert path_hash("/a") == fnv1a64(b"/a")
    assert path_hash("/usr/lib/") == path_hash("/usr//./lib") == path_hash("/usr/lib")


def test_relative_paths_continue_from_the_directory_hash() -> None:
    # what makes cwd/dirfd-relative paths judgeable in the kernel
    base = "/usr/lib/python3"
    assert continue_hash(path_hash(base), "dist-packages/./x.py") == path_hash(
        base + "/dist-packages/x.py")
    assert continue_hash(path_hash("/"), "etc/ld.so.preload") == path_hash("/etc/ld.so.preload")


def test_trees_with_aliases_ancestors_and_lookup() -> None:
    t = ProtectedTrees.build(["/usr/lib/python3/dist-packages", "/etc/ld.so.preload"],
                             discover=False, aliases={"/lib": "/usr/lib"})
    assert t.tree_of("/lib/python3/dist-packages/torch/__init__.py") == \
        "/usr/lib/python3/dist-packages"
    assert t.tree_of("/etc/ld.so.preload") == "/etc/ld.so.preload"
    assert t.tree_of("/etc/ld.so.preload.d") is None and t.tree_of("/usr/lib/python3") is None
    h = t.hashes()
    assert h[path_hash("/lib/python3/dist-packages")] == IN_TREE
    assert h[path_hash("/usr/lib/python3")] == ANCESTOR and h[path_hash("/etc")] == ANCESTOR
    assert path_hash("/") not in h  # every walk starts there
    assert t.by_hash()[path_hash("/lib/python3/dist-packages")] == "/usr/lib/python3/dist-packages"


@pytest.mark.parametrize("bad", ["relative/dir", "/", "//"])
def test_protect_rejects_relative_and_root(bad: str) -> None:
    with pytest.raises(ValueError, match="protect"):
        ProtectedTrees.build([bad], discover=False, aliases={})


def test_python_trees_found_under_usr_local_and_opt(tmp_path: Path) -> None:
    for d in ("usr/lib/python3/dist-packages", "usr/local/lib/python3.11/site-packages",
              "opt/conda/lib/python3.10/site-packages",
              "opt/conda/envs/train/lib/python3.12/site-packages",
              "home/u/lib/python3/site-packages"):
        (tmp_path / d).mkdir(parents=True)
    (tmp_path / "usr/lib/python3.9").mkdir()
    (tmp_path / "usr/lib/python3.9/site-packages").write_text("a file, not a tree")
    assert python_trees(str(tmp_path)) == [
        "/opt/conda/envs/train/lib/python3.12/site-packages",
        "/opt/conda/lib/python3.10/site-packages", "/usr/lib/python3/dist-packages",
        "/usr/local/lib/python3.11/site-packages"]


@pytest.mark.parametrize(("flags", "op"), [
    (os.O_WRONLY, "open_write"), (os.O_RDWR | os.O_APPEND, "open_write"),
    (os.O_WRONLY | os.O_CREAT, "create"), (os.O_WRONLY | os.O_CREAT | os.O_EXCL, "create"),
    (os.O_WRONLY | os.O_CREAT | os.O_TRUNC, "truncate"), (os.O_RDWR | os.O_TRUNC, "truncate"),
])
def test_open_op_from_flags(flags: int, op: str) -> None:
    assert open_op(flags) == op


# -- the runtime against fake maps and a fake /proc ---------------------------

class FakeTable(dict[Any, Any]):
    @staticmethod
    def Key(*args: int) -> Any:
        return args if len(args) > 1 else args[0]

    @staticmethod
    def Leaf(*args: int) -> Any:
        return args[0] if args else SimpleNamespace()


class FakeBpf(dict[str, FakeTable]):
    def __missing__(self, name: str) -> FakeTable:
        self[name] = FakeTable()
        return self[name]


@pytest.fixture
def world(tmp_path: Path) -> SimpleNamespace:
    tree, out, proc = tmp_path / "tree", tmp_path / "out", tmp_path / "proc"
    for d in (tree, out, proc / "100" / "fd", proc / "200" / "fd"):
        d.mkdir(parents=True)
    (proc / "100" / "cwd").symlink_to(tree)
    (proc / "200" / "cwd").symlink_to(out)
    (proc / "100" / "fd" / "7").symlink_to(out)
    bpf = FakeBpf()
    bpf["files_cwd_gen"][200] = SimpleNamespace(value=3)
    ctx = SensorContext(bpf=bpf, inbox=DroppingQueue(8), clock=BootClock(), cfg=None,
                        opened_gpu=lambda _pid: False, hooks=SensorHooks(), proc_root=str(proc))
    rt = FilesRuntime(ctx, trees=lambda _cfg: ProtectedTrees.build([str(tree)], discover=False,
                                                                 aliases={}))
    return SimpleNamespace(rt=rt, bpf=bpf, tree=tree, out=out, proc=proc)


def write_rec(pid: int, path: str, verdict: int, fop: int = 1, flags: int = os.O_WRONLY,
              dirfd: int = -100, result: int = 3, tree: int = 0, old: str = "") -> bytes:
    r = FileWriteRec()
    r.h.op, r.h.pid, r.h.tid, r.h.uid, r.h.comm = OP_FILE_WRITE, pid, pid, 1000, b"python3"
    r.fop, r.flags, r.dirfd, r.old_dirfd, r.result = fop, flags, dirfd, -100, result
    r.verdict, r.tree, r.path, r.old_path = verdict, tree, path.encode(), old.encode()
    return bytes(r)


def test_seeding_tells_the_kernel_every_cwd(world: SimpleNamespace) -> None:
    cwd = world.bpf["files_cwd"]
    assert (cwd[100].hash, cwd[100].kind, cwd[100].gen) == (
        path_hash(str(world.tree)), FW_IN_TREE, 0)
    assert cwd[100].tree == path_hash(str(world.tree))
    assert (cwd[200].hash, cwd[200].kind, cwd[200].gen) == (
        path_hash(str(world.out)), OUTSIDE, 3)
    assert world.bpf["files_trees"][path_hash(str(world.tree))] == IN_TREE


def test_maybe_resolved_into_the_tree_is_reported(world: SimpleNamespace) -> None:
    (world.tree / "x.py").write_text("")
    rec = world.rt.decode_write(write_rec(100, "./x.py", FW_MAYBE), BootClock())
    w = rec.payload
    assert isinstance(w, files_pb2.FileWrite) and rec.type == "file.write"
    assert (w.path, w.op, w.tree, w.result) == (str(world.tree / "x.py"), "open_write",
                                                str(world.tree), 3)
    assert (w.file_uid, w.owner_mismatch) == (os.getuid(), os.getuid() != 1000)


def test_maybe_resolved_outside_is_filtered_not_reported(world: SimpleNamespace) -> None:
    assert world.rt.decode_write(write_rec(100, "y.py", FW_MAYBE, dirfd=7), BootClock()) is None
    assert world.rt.filtered == 1


def test_kernel_verdict_stands_when_the_process_is_gone(world: SimpleNamespace) -> None:
    tree_hash = path_hash(str(world.tree))
    rec = world.rt.decode_write(write_rec(999, "z.py", FW_IN_TREE, tree=tree_hash), BootClock())
    assert (rec.payload.path, rec.payload.tree) == ("z.py", str(world.tree))


def test_unlink_owner_is_the_directory_and_rename_keeps_old_path(world: SimpleNamespace) -> None:
    gone = world.rt.decode_write(write_rec(100, "gone.py", FW_IN_TREE, fop=C["FW_UNLINK"],
                                           flags=0, result=0), BootClock())
    assert (gone.payload.op, gone.payload.file_uid, gone.payload.flags) == (
        "unlink", world.tree.stat().st_uid, 0)
    moved = world.rt.decode_write(write_rec(200, f"{world.tree}/new.py", FW_IN_TREE,
                                            fop=C["FW_RENAME"], result=0, old="old.py"),
                                  BootClock())
    assert (moved.payload.op, moved.payload.old_path) == ("rename", str(world.out / "old.py"))


def test_chdir_record_refreshes_the_cwd_entry(world: SimpleNamespace) -> None:
    (world.proc / "200" / "cwd").unlink()
    (world.proc / "200" / "cwd").symlink_to(world.tree)
    r = FilesCwdRec()
    r.h.op, r.h.pid, r.gen = OP_FILES_CWD, 200, 4
    assert world.rt.decode_cwd(bytes(r), BootClock()) is None
    entry = world.bpf["files_cwd"][200]
    assert (entry.hash, entry.kind, entry.gen) == (path_hash(str(world.tree)), FW_IN_TREE, 4)


def test_rdma_open_decodes_like_gpu_open() -> None:
    r = GpuOpenRec()
    r.h.op, r.h.pid, r.flags, r.ret, r.path = OP_RDMA_OPEN, 7, 2, -13, b"/dev/infiniband/uverbs0"
    rec = decode_rdma_open(bytes(r), BootClock())
    p = rec.payload
    assert (rec.type, p.path, p.flags, p.fd, p.errno) == (
        "net.rdma_open", "/dev/infiniband/uverbs0", 2, -1, 13)


def test_always_protected_preload_and_own_files() -> None:
    import agent

    t = ProtectedTrees.build([])
    own = str(Path(agent.__file__).resolve().parent)
    for path in ("/etc/ld.so.preload", "/etc/gpuaudit/gpuaudit.yaml", f"{own}/sensors/files.py"):
        assert t.tree_of(path) is not None, path
    assert t.tree_of("/etc/passwd") is None


def test_directory_found_by_its_hash(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "pkg" / "sub").mkdir(parents=True)
    t = ProtectedTrees.build([str(tree)], discover=False, aliases={})
    assert t.directory(path_hash(str(tree / "pkg" / "sub")), str(tree)) == str(tree / "pkg/sub")
    assert t.directory(path_hash(str(tmp_path)), None) == str(tmp_path)  # above the tree
    assert t.directory(path_hash("/nowhere"), str(tree)) is None
    (tree / "nowhere").mkdir()
    assert t.directory(path_hash("/nowhere"), str(tree)) is None  # a miss is remembered


def test_a_name_the_writer_made_is_judged_by_its_directorys_owner(tmp_path: Path) -> None:
    from agent.files.runtime import O_CREAT, owner_to_compare
    from agent.sensors.files import FileWriteRec

    made = tmp_path / "sitecustomize.py"  # in root's (the test's) directory...
    made.write_text("")
    os.chown(made, 1000, 1000)  # ...now owned by the writer, uid 1000, who created it
    r = FileWriteRec.from_buffer_copy(write_rec(100, str(made), FW_IN_TREE, flags=O_CREAT | 1))
    assert owner_to_compare(r, str(made)) == tmp_path.stat().st_uid
    # written in place (no O_CREAT): the file's own owner is the one that counts
    r = FileWriteRec.from_buffer_copy(write_rec(100, str(made), FW_IN_TREE, flags=1))
    assert owner_to_compare(r, str(made)) == 1000
