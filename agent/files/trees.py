"""Protected trees for file.write, and the path hash the kernel filter shares.

The kernel (agent/bpf/gpu_open.c, files_walk) hashes an opened path one
component at a time with 64-bit FNV-1a and looks the hash up in files_trees
at every component end; :func:`path_hash` computes the same hash of a
normalised path, so user space can fill that map. A tree is a directory (any
path under it matches) or a single file (/etc/ld.so.preload).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

FNV_BASIS = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
MASK64 = (1 << 64) - 1

# Where the Pythons of a node keep their packages: system, /usr/local, and
# bundles under /opt (conda: /opt/conda[/envs/NAME]/lib/pythonX.Y/site-packages).
PYTHON_TREE_GLOBS = (
    "usr/lib/python3*/site-packages", "usr/lib/python3*/dist-packages",
    "usr/lib/python3/dist-packages", "usr/lib64/python3*/site-packages",
    "usr/local/lib/python3*/site-packages", "usr/local/lib/python3*/dist-packages",
    "usr/local/lib64/python3*/site-packages",
    "opt/*/lib/python3*/site-packages", "opt/*/*/lib/python3*/site-packages",
    "opt/*/envs/*/lib/python3*/site-packages",
)
ALWAYS_PROTECTED = ("/etc/ld.so.preload", "/etc/gpuaudit")
MAX_HASHES = 4096  # files_trees' size in gpu_open.c
IN_TREE = 1  # FW_IN_TREE (files_events.h)
ANCESTOR = 3  # FILES_ANCESTOR (gpu_open.c)
OUTSIDE = 4  # FILES_OUTSIDE (gpu_open.c): neither in nor above a tree
BLOOM_WORDS = 1024  # FILES_BLOOM_WORDS (gpu_open.c)
MAX_DIRS_SEARCHED = 20_000  # ProtectedTrees.directory's bound on one search


def normalise(path: str) -> str:
    """The form the kernel hashes: absolute, no "." or "//", no trailing "/"."""
    if not path.startswith("/"):
        raise ValueError(f"not an absolute path: {path!r}")
    return os.path.normpath(path).replace("//", "/")


def fnv1a64(data: bytes) -> int:
    """64-bit FNV-1a, as files_walk computes it."""
    h = FNV_BASIS
    for byte in data:
        h = ((h ^ byte) * FNV_PRIME) & MASK64
    return h


def path_hash(path: str) -> int:
    """FNV-1a 64 of the normalised path; the root ("/") hashes as "" (the basis)."""
    norm = normalise(path)
    return fnv1a64(os.fsencode("" if norm == "/" else norm))


def bloom_words(hashes: Iterable[int]) -> dict[int, int]:
    """files_bloom's content: word index -> bits, one bit (h & mask) per hash."""
    words: dict[int, int] = {}
    for h in hashes:
        bit = h & (BLOOM_WORDS * 64 - 1)
        words[bit >> 6] = words.get(bit >> 6, 0) | (1 << (bit & 63))
    return words


def python_trees(root: str = "/") -> list[str]:
    """site-/dist-packages directories of the Pythons under /usr, /usr/local, /opt."""
    found: set[str] = set()
    for pattern in PYTHON_TREE_GLOBS:
        for hit in glob.glob(os.path.join(root, pattern)):
            if os.path.isdir(hit):
                found.add("/" + os.path.relpath(hit, root) if root != "/" else hit)
    return sorted(found)


def own_trees() -> list[str]:
    """gpuaudit's own code: the agent package and the gpuaudit (proto) package."""
    import agent
    import gpuaudit

    return [str(Path(agent.__file__).resolve().parent),
            str(Path(gpuaudit.__file__).resolve().parent)]


def top_level_aliases(root: str = "/") -> dict[str, str]:
    """Symlinked top-level directories (/lib -> /usr/lib on merged-/usr systems).

    The kernel compares paths as given, not resolved, so a tree under
    /usr/lib must also be known as /lib/...: alias -> target.
    """
    out: dict[str, str] = {}
    try:
        names = os.listdir(root)
    except OSError:
        return out
    for name in names:
        link = os.path.join(root, name)
        if os.path.islink(link) and os.path.isdir(link):
            out["/" + name] = os.path.realpath(link)
    return out


@dataclass
class ProtectedTrees:
    """The trees, each under every name the kernel may see it by."""

    trees: list[str]  # canonical (realpath) trees, as configured and found
    names: dict[str, str] = field(default_factory=dict)  # any name -> canonical tree
    # directory(): hash -> path, or None when a bounded search did not find it
    # (cached too, so a process repeating a write there cannot make us re-scan)
    found: dict[int, str | None] = field(default_factory=dict)

    @classmethod
    def build(cls, configured: Iterable[str], discover: bool = True,
              aliases: dict[str, str] | None = None) -> ProtectedTrees:
        """Configured trees (``cfg.listed("protect")``) plus the automatic ones."""
        wanted = [*configured]
        for p in wanted:
            if not p.startswith("/") or normalise(p) == "/":
                raise ValueError(f"protect: {p!r} must be an absolute path other than /")
        if discover:
            wanted += [*python_trees(), *ALWAYS_PROTECTED, *own_trees()]
        aliases = top_level_aliases() if aliases is None else aliases
        trees = sorted({os.path.realpath(p) for p in wanted})
        names: dict[str, str] = {}
        for tree, given in [(os.path.realpath(p), normalise(p)) for p in wanted]:
            names[tree] = tree
            names[given] = tree
            for alias, target in aliases.items():
                if tree.startswith(target + "/"):
                    names[alias + tree[len(target):]] = tree
        return cls(trees=trees, names=names)

    def hashes(self) -> dict[int, int]:
        """files_trees' content: path_hash -> IN_TREE for every name of a tree,
        ANCESTOR for every directory above one ("/" excluded: it hashes as the
        start of every walk). At most MAX_HASHES."""
        out: dict[int, int] = {}
        for name in self.names:
            parent = os.path.dirname(name)
            while parent != "/":
                out.setdefault(path_hash(parent), ANCESTOR)
                parent = os.path.dirname(parent)
        for name in self.names:
            out[path_hash(name)] = IN_TREE  # a tree inside another tree stays a tree
        if len(out) > MAX_HASHES:
            raise ValueError(f"{len(out)} protected paths; at most {MAX_HASHES} fit the kernel map")
        return out

    def by_hash(self) -> dict[int, str]:
        """path_hash of every name -> its canonical tree (the kernel reports
        the hash of the protected prefix it matched)."""
        return {path_hash(name): tree for name, tree in self.names.items()}

    def above_tree(self, path: str) -> bool:
        """Whether directory ``path`` (absolute) holds a tree somewhere below it."""
        norm = normalise(path)
        prefix = norm.rstrip("/") + "/"
        return any(name.startswith(prefix) for name in self.names)

    def directory(self, h: int, tree: str | None, limit: int = MAX_DIRS_SEARCHED) -> str | None:
        """The directory whose path hashes to ``h``: one above a tree, or one
        inside ``tree`` (searched, at most ``limit`` directories), else None.

        How a relative path is resolved when its dirfd or cwd can no longer
        be read from /proc (closed, reused, the process gone): the kernel
        reports the hash of the directory it started from.
        """
        for name in self.names:
            parent = name
            while parent != "/":
                if path_hash(parent) == h:
                    return parent
                parent = os.path.dirname(parent)
        if h in self.found or tree is None:
            return self.found.get(h)
        seen = 0
        for name, canon in self.names.items():
            if canon != tree:
                continue
            for root, _dirs, _files in os.walk(canon):
                seen += 1
                if seen > limit:
                    break
                path = name + root[len(canon):]
                if path_hash(path) == h:
                    self.found[h] = path
                    return path
        self.found[h] = None
        return None

    def tree_of(self, path: str) -> str | None:
        """The canonical tree ``path`` (absolute) is in or is, else None."""
        norm = normalise(path)
        probe = norm
        while True:
            if probe in self.names:
                return self.names[probe]
            if probe == "/":
                return None
            probe = os.path.dirname(probe)
