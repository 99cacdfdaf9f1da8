"""Which opens to scan, the absolute path opened, and the file itself.

All of it reads /proc of the opener, so it runs as soon as the record is
decoded, while the opener most likely still holds the file open.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import BinaryIO

AT_FDCWD = -100
MODEL_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle", ".joblib", ".npy", ".npz")


SITE_DIRS = ("site-packages", "dist-packages")


def is_site_pth(path: str) -> bool:
    """A Python path-configuration file (site-packages/*.pth), not a checkpoint.

    Every interpreter reads these at start-up (the site module), so the
    kernel's ".pth" suffix match sees several per Python process; changes to
    them are file.write events of the protected site-packages trees.
    """
    head, name = os.path.split(path)
    return name.endswith(".pth") and os.path.basename(head) in SITE_DIRS


def is_python(pid: int, proc_root: str = "/proc") -> bool:
    """The process runs a Python interpreter (its exe, not its comm, which it may change)."""
    try:
        exe = os.readlink(f"{proc_root}/{pid}/exe")
    except OSError:
        return False
    return os.path.basename(exe.removesuffix(" (deleted)")).startswith("python")


def resolve(pid: int, path: str, dirfd: int, proc_root: str = "/proc") -> str:
    """``path`` as the opener named it, made absolute (raises OSError when it cannot be).

    Relative paths are taken against the opener's cwd (dirfd AT_FDCWD) or the
    directory its ``dirfd`` names; ".." and "." are folded lexically.
    """
    if not path.startswith("/"):
        base = "cwd" if dirfd == AT_FDCWD else f"fd/{dirfd}"
        path = os.path.join(os.readlink(f"{proc_root}/{pid}/{base}"), path)
    return os.path.normpath(path)


@dataclass
class Opened:
    """The file a process opened, as the agent reopened it."""

    file: BinaryIO
    via: str  # "fd": the opener's own fd; "path": reopened by name


def open_opened(pid: int, fd: int, path: str, proc_root: str = "/proc") -> Opened:
    """Reopens what ``pid`` opened as ``fd`` (at absolute ``path``); raises OSError.

    /proc/PID/fd/FD is the very file opened, even if it was renamed over or
    deleted since; it is used when it still looks like that file (the fd
    number may have been closed and reused). Otherwise the path is opened
    through /proc/PID/root, so a containerised opener's path means what it
    meant to the opener.
    """
    try:
        return Opened(_open_fd(pid, fd, path, proc_root), "fd")
    except OSError:
        pass
    root = f"{proc_root}/{pid}/root"
    by_path = root + path if os.path.isdir(root) else path
    f = open(by_path, "rb")  # noqa: SIM115 - the worker closes it
    if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
        f.close()
        raise OSError(f"{path}: not a regular file")
    return Opened(f, "path")


def _open_fd(pid: int, fd: int, path: str, proc_root: str) -> BinaryIO:
    link_path = f"{proc_root}/{pid}/fd/{fd}"
    link = os.readlink(link_path)
    f = open(link_path, "rb")  # noqa: SIM115 - returned to the caller
    try:
        st = os.fstat(f.fileno())
        if stat.S_ISREG(st.st_mode) and _same_file(pid, st, link, path, proc_root):
            return f
    except OSError:
        pass
    f.close()
    raise OSError(f"fd {fd} of {pid} is no longer {path}")


def _same_file(pid: int, st: os.stat_result, link: str, path: str, proc_root: str) -> bool:
    """The fd still names the opened file: same inode as the path, or a name that fits."""
    if link.endswith(" (deleted)") or os.path.basename(link) == os.path.basename(path):
        return True
    try:  # a symlinked name (e.g. a Hugging Face cache snapshot -> blob)
        pst = os.stat(f"{proc_root}/{pid}/root{path}")
    except OSError:
        return False
    return (pst.st_dev, pst.st_ino) == (st.st_dev, st.st_ino)
