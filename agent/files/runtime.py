"""User-space side of the open classifier's file.write part (agent/bpf/gpu_open.c,
agent/bpf/files.c): fills the kernel's tree and cwd maps, decodes file_write_rec.

Kernel verdicts are "in a tree" (emitted) or "maybe" (the kernel did not know
the process's cwd or dirfd, or the path had ".."): a maybe is resolved here,
against /proc/PID/cwd or /proc/PID/fd/N, and dropped when it is outside every
tree (counted in ``filtered``: not a loss, the kernel's filter finished here).
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from agent.files.trees import (
    ANCESTOR,
    OUTSIDE,
    ProtectedTrees,
    bloom_words,
    normalise,
    path_hash,
)
from agent.record import Record
from agent.sensors.base import BootClock, Decoder, Loop, SensorContext, header_record
from agent.sensors.files import (
    AT_FDCWD,
    FOP_NAMES,
    FW_IN_TREE,
    FW_LINK,
    FW_OPEN,
    FW_RENAME,
    FW_RMDIR,
    FW_SYMLINK,
    FW_UNLINK,
    OP_FILE_WRITE,
    OP_FILES_CWD,
    FilesCwdRec,
    FileWriteRec,
)
from gpuaudit.v1 import events_pb2, files_pb2

log = logging.getLogger(__name__)

O_CREAT = 0o100
O_TRUNC = 0o1000
O_EXCL = 0o200
CWD_CACHE = 4096  # last cwd per pid: resolves a relative path after its process exited


def open_op(flags: int) -> str:
    """FileWrite.op of a write-open: surely new (O_EXCL), else content
    destroyed (O_TRUNC), else maybe new (O_CREAT), else written in place."""
    if flags & O_CREAT and flags & O_EXCL:
        return "create"
    if flags & O_TRUNC:
        return "truncate"
    if flags & O_CREAT:
        return "create"
    return "open_write"


def file_owner(path: str, gone: bool) -> int:
    """Owner of ``path``; of its directory when ``gone`` (unlink) or missing; -1 if neither."""
    if not gone:
        try:
            return os.lstat(path).st_uid
        except OSError:
            pass
    try:
        return os.stat(os.path.dirname(path) or "/").st_uid
    except OSError:
        return -1


def owner_to_compare(r: FileWriteRec, path: str) -> int:
    """The uid a change to ``path`` is judged against (file_uid), -1 if unreadable.

    The file's owner, read just after the change; its directory's owner when
    the file is gone (unlink) or missing. A name the change itself made (a
    create, the destination of a rename, a link or symlink) belongs to the
    writer by construction, so it says nothing: then the directory's owner is
    the one whose tree was changed -- planting sitecustomize.py in root's
    site-packages, or renaming one's own file over root's module, is someone
    else's code in root's directory.
    """
    gone = r.fop in (FW_UNLINK, FW_RMDIR) and r.result >= 0
    uid = file_owner(path, gone)
    made = r.fop in (FW_RENAME, FW_LINK, FW_SYMLINK) or (r.fop == FW_OPEN and r.flags & O_CREAT)
    if made and uid == r.h.uid:
        return file_owner(path, gone=True)
    return uid


class FilesRuntime:
    """Trees in the kernel, cwd entries kept current, file.write decoded."""

    def __init__(self, ctx: SensorContext,
                 trees: Callable[[Any], ProtectedTrees] | None = None) -> None:
        self._bpf = ctx.bpf
        self._proc = ctx.proc_root
        self.trees = (trees or _trees_from_config)(ctx.cfg)
        self._tree_by_hash = self.trees.by_hash()
        self.filtered = 0  # maybes resolved to outside every tree
        self._cwd: OrderedDict[int, str] = OrderedDict()
        self._fill_trees()
        self._seed_cwds()

    # -- SensorRuntime ------------------------------------------------------
    def decoders(self) -> dict[int, Decoder]:
        return {OP_FILE_WRITE: self.decode_write, OP_FILES_CWD: self.decode_cwd}

    def threads(self) -> list[tuple[str, Loop]]:
        return []

    def loss_counters(self) -> dict[str, Callable[[], int]]:
        return {}

    def status(self) -> events_pb2.SensorStatus | None:
        return None

    def close(self) -> None:
        pass

    # -- kernel state -------------------------------------------------------
    def _fill_trees(self) -> None:
        table = self._bpf["files_trees"]
        hashes = self.trees.hashes()
        for h, kind in hashes.items():
            table[table.Key(h)] = table.Leaf(kind)
        bloom = self._bpf["files_bloom"]  # after the map: a set bit must find its entry
        for word, bits in bloom_words(hashes).items():
            bloom[bloom.Key(word)] = bloom.Leaf(bits)
        log.info("file.write: %d protected trees (%s)", len(self.trees.trees),
                 ", ".join(self.trees.trees))

    def _seed_cwds(self) -> None:
        """Every live process's cwd, so relative writes are judged in the kernel."""
        for name in os.listdir(self._proc):
            if name.isdigit():
                self.refresh_cwd(int(name), self._gen(int(name)))

    def _gen(self, pid: int) -> int:
        table = self._bpf["files_cwd_gen"]
        try:
            return int(table[table.Key(pid)].value)
        except KeyError:
            return 0

    def refresh_cwd(self, pid: int, gen: int) -> None:
        """Tell the kernel pid's cwd as of chdir generation ``gen``.

        The generation is read *before* the cwd: a chdir in between makes the
        kernel's generation newer than the entry, which then does not count.
        """
        cwd = self._readlink(f"{self._proc}/{pid}/cwd")
        if cwd is None or not cwd.startswith("/"):
            self._cwd.pop(pid, None)  # what we knew is older than this chdir
            return  # gone, or outside our mount namespace: stays unknown ("maybe")
        self._remember_cwd(pid, cwd)
        table = self._bpf["files_cwd"]
        tree = self.trees.tree_of(cwd)
        leaf = table.Leaf()
        leaf.hash = path_hash(cwd)
        leaf.tree = path_hash(tree) if tree else 0
        leaf.kind = FW_IN_TREE if tree else (ANCESTOR if self.trees.above_tree(cwd) else OUTSIDE)
        leaf.gen = gen
        table[table.Key(pid)] = leaf

    def _remember_cwd(self, pid: int, cwd: str) -> None:
        self._cwd[pid] = cwd
        self._cwd.move_to_end(pid)
        while len(self._cwd) > CWD_CACHE:
            self._cwd.popitem(last=False)

    @staticmethod
    def _readlink(path: str) -> str | None:
        try:
            return os.readlink(path)
        except OSError:
            return None

    # -- decoding -----------------------------------------------------------
    def decode_cwd(self, data: bytes, _clock: BootClock) -> Record | None:
        r = FilesCwdRec.from_buffer_copy(data)
        self.refresh_cwd(r.h.pid, r.gen)
        return None

    def absolute(self, pid: int, path: str, dirfd: int, base_hash: int = 0,
                 tree: str | None = None) -> str | None:
        """``path`` made absolute against pid's cwd or dirfd; None when unknowable.

        /proc is read now, after the syscall: the fd may have been closed or
        reused, the process may have moved on. When the kernel knew where the
        path started (``base_hash``), a reading that does not hash the same is
        discarded and the directory is looked up by its hash instead.
        """
        if path.startswith("/"):
            return normalise(path)
        if dirfd == AT_FDCWD:
            base = self._readlink(f"{self._proc}/{pid}/cwd") or self._cwd.get(pid)
        else:
            base = self._readlink(f"{self._proc}/{pid}/fd/{dirfd}")
        if base is not None and not base.startswith("/"):
            base = None  # "socket:[..]", "anon_inode:..": not a directory
        if base_hash and (base is None or path_hash(base) != base_hash):
            base = self.trees.directory(base_hash, tree)
        if base is None:
            return None
        return normalise(os.path.join(base, path)) if path else normalise(base)

    def decode_write(self, data: bytes, clock: BootClock) -> Record | None:
        r = FileWriteRec.from_buffer_copy(data)
        raw = os.fsdecode(r.path)
        kernel_tree = self._tree_by_hash.get(r.tree) if r.verdict == FW_IN_TREE else None
        path = self.absolute(r.h.pid, raw, r.dirfd, r.base, kernel_tree)
        old = ""
        old_tree = None
        if r.old_path and r.fop != FW_SYMLINK:
            old_abs = self.absolute(r.h.pid, os.fsdecode(r.old_path), r.old_dirfd, r.old_base,
                                    kernel_tree)
            old = old_abs or os.fsdecode(r.old_path)
            old_tree = self.trees.tree_of(old_abs) if old_abs else None
        elif r.old_path:
            old = os.fsdecode(r.old_path)  # a symlink's target, as written
        tree = (self.trees.tree_of(path) if path else None) or old_tree or kernel_tree
        if tree is None and r.verdict != FW_IN_TREE and path is not None:
            self.filtered += 1  # a "maybe" that resolved to outside every tree
            return None
        # emitted: in a tree, or judged in one by the kernel, or unresolvable
        # (the process is gone): better an event with a relative path than none
        return header_record("file.write", r.h, clock, self._payload(r, path or raw, old, tree))

    def _payload(self, r: FileWriteRec, path: str, old: str, tree: str | None
                 ) -> files_pb2.FileWrite:
        uid = owner_to_compare(r, path) if path.startswith("/") else -1
        is_open = r.fop == FW_OPEN
        return files_pb2.FileWrite(
            path=path, op=open_op(r.flags) if is_open else FOP_NAMES.get(r.fop, "unknown"),
            file_uid=max(uid, 0), owner_mismatch=uid >= 0 and uid != r.h.uid,
            old_path=old, tree=tree or "", flags=r.flags if is_open else 0, result=r.result,
        )


def _trees_from_config(cfg: Any) -> ProtectedTrees:
    return ProtectedTrees.build(cfg.listed("protect") if cfg is not None else [])
