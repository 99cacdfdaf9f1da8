"""process.exec's ``fileless``: was the program run from somewhere that is not
an installed file? A memfd, a deleted file, or a file under /tmp, /dev/shm,
/var/tmp or a home directory.

Decided at decode time from /proc/PID/exe (what the kernel actually runs,
symlinks resolved; "/memfd:NAME (deleted)" for a memfd, however it was run:
execveat(fd, "", AT_EMPTY_PATH), /proc/self/fd/N, /dev/fd/N) and from the
path given to exec (a script's path: its exe is the interpreter). A process
that exited before the agent read /proc/PID/exe (a millisecond or so) is
judged by the exec path alone; if that was a descriptor (/dev/fd/N,
/proc/self/fd/N) there is nothing to judge and the kind is "fd".
"""

from __future__ import annotations

import os
import pwd
import re
import time
from collections.abc import Callable, Iterable

TMP_DIRS = ("/tmp", "/dev/shm", "/var/tmp")
FD_PATH = re.compile(r"^/(dev/fd|proc/(self|\d+)(/task/\d+)?/fd)/\d+$")
HOMES_TTL_S = 60.0
UID_MIN_DEFAULT = 1000


def _under(path: str, dirs: Iterable[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in dirs)


def uid_min(login_defs: str = "/etc/login.defs") -> int:
    """UID_MIN from login.defs: the first uid of a human account."""
    try:
        with open(login_defs, encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "UID_MIN" and parts[1].isdigit():
                    return int(parts[1])
    except OSError:
        pass
    return UID_MIN_DEFAULT


class HomeDirs:
    """/root, /home and the home directory of every human account (uid >=
    UID_MIN, not nobody) in the passwd database, re-read every minute.

    System accounts are left out: their "homes" are /bin, /usr/sbin,
    /var/lib/..., /nonexistent, and binaries there are installed software.
    """

    def __init__(self, entries: Callable[[], list[pwd.struct_passwd]] = pwd.getpwall,
                 min_uid: int | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._entries = entries
        self._min_uid = uid_min() if min_uid is None else min_uid
        self._clock = clock
        self._dirs: tuple[str, ...] = ()
        self._at = float("-inf")

    def __call__(self) -> tuple[str, ...]:
        now = self._clock()
        if now - self._at > HOMES_TTL_S:
            self._dirs = self._read()
            self._at = now
        return self._dirs

    def _read(self) -> tuple[str, ...]:
        dirs = {"/root", "/home"}
        try:
            for e in self._entries():
                home = os.path.normpath(e.pw_dir or "/")
                if e.pw_uid >= self._min_uid and e.pw_uid != 65534 and home != "/":
                    dirs.add(home)
        except OSError:
            pass
        return tuple(sorted(dirs))


def path_kind(path: str, homes: Iterable[str]) -> str:
    """"memfd", "deleted", "tmp", "home" or "" for one absolute path as the
    kernel shows it (readlink of /proc/PID/exe)."""
    if path.startswith("/memfd:"):
        return "memfd"
    if path.endswith(" (deleted)"):
        return "deleted"
    clean = os.path.normpath(path)
    if _under(clean, TMP_DIRS):
        return "tmp"
    if _under(clean, homes):
        return "home"
    return ""


def fileless_kind(exe: str, filename: str, cwd: str, homes: Iterable[str]) -> str:
    """The fileless kind of one exec, "" when it ran an installed file.

    ``exe``: readlink of /proc/PID/exe ("" when the process was gone);
    ``filename``: the path given to exec; ``cwd``: readlink of /proc/PID/cwd
    ("" when gone), to place a relative ``filename``.
    """
    homes = tuple(homes)
    if exe:
        kind = path_kind(exe, homes)
        if kind:
            return kind
    if FD_PATH.match(filename):
        return "" if exe else "fd"  # exe was the descriptor's file, judged above
    given = filename if filename.startswith("/") else (
        os.path.join(cwd, filename) if cwd else "")
    return path_kind(given, homes) if given else ""
