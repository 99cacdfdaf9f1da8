"""Build and drive the fake libnvidia-ml.so (tests/fixtures/fakenvml/fakenvml.c).

``build(out_dir)`` compiles the C source once per source content into
``out_dir`` and returns the library path; ``Scenario`` writes the text file the
library answers from (format: tests/fixtures/fakenvml/README.md). The library
reads ``$FAKE_NVML_SCENARIO`` at ``nvmlInit`` and re-reads the file whenever it
changes, so a test rewrites the scenario between two NVML calls to make a
process appear or leave.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
import urllib.parse
from pathlib import Path

from tests.fixtures.cprogram import CBuildError, compiler

SOURCE = Path(__file__).parent / "fixtures" / "fakenvml" / "fakenvml.c"
LIBRARY_NAME = "libnvidia-ml.so.1"
CFLAGS = ["-shared", "-fPIC", "-O1", "-pthread", "-Wall", "-Wextra", "-Werror"]
ENV_VAR = "FAKE_NVML_SCENARIO"


class FakeNvmlBuildError(CBuildError):
    """The C compiler rejected fakenvml.c (its output is in the message)."""


def build(out_dir: Path) -> Path:
    """Compile fakenvml.c into ``out_dir/fakenvml-<hash>/libnvidia-ml.so.1``; return that path.

    The directory name carries a hash of the source and flags, so an edited
    source rebuilds and an unchanged one is reused. The library is written to a
    temporary name and renamed, so a concurrent build never sees half a file.
    """
    source = SOURCE.read_bytes()
    digest = hashlib.sha256(source + " ".join(CFLAGS).encode()).hexdigest()[:12]
    target = Path(out_dir) / f"fakenvml-{digest}" / LIBRARY_NAME
    if target.exists():
        return target
    cc = compiler()
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".build-", suffix=".so")
    os.close(fd)
    try:
        proc = subprocess.run(
            [cc, *CFLAGS, "-o", tmp, str(SOURCE)], capture_output=True, text=True
        )
        if proc.returncode != 0:
            raise FakeNvmlBuildError(f"{cc} failed on {SOURCE}:\n{proc.stderr}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _value(value: object) -> str:
    """One scenario value: percent-escaped so spaces, '#' and '%' survive the parser."""
    if isinstance(value, bool):
        return "1" if value else "0"
    # '_' is escaped too: the library turns a bare '_' in GPU names into a space.
    return urllib.parse.quote(str(value), safe="-.:/+,@").replace("_", "%5F")


class Scenario:
    """Lines of a scenario file, written atomically with ``write()``.

    Methods append one line each and return ``self``, so a test reads like the
    file::

        sc = Scenario(tmp_path / "nvml.txt").gpu(index=0, uuid="GPU-0", mem=80 << 30)
        sc.proc(gpu=0, pid=1234, mem=1 << 20).write()

    ``drop(kind, **match)`` removes lines (a process leaving); write again and the
    library sees the new state on its next call.
    """

    def __init__(self, path: Path, driver: str = "550.54.15", cuda: int = 12040) -> None:
        self.path = Path(path)
        self.driver = driver
        self.cuda = cuda
        self.lines: list[tuple[str, dict[str, object]]] = []

    def add(self, line_type: str, /, **fields: object) -> Scenario:
        """Append a line of any kind (``gpu``, ``mig``, ``proc``, ``util``, ``acct``,
        ``xid``, ``event``, ``fail``); the library rejects unknown keys."""
        self.lines.append((line_type, fields))
        return self

    def gpu(self, **fields: object) -> Scenario:
        """A physical GPU: index=, uuid= required (see README for the rest)."""
        return self.add("gpu", **fields)

    def mig(self, **fields: object) -> Scenario:
        """A MIG device: gpu=, index=, uuid=; gi=, ci=, mem=."""
        return self.add("mig", **fields)

    def proc(self, **fields: object) -> Scenario:
        """A process on a GPU (or on its MIG device with mig=)."""
        return self.add("proc", **fields)

    def util(self, **fields: object) -> Scenario:
        """A process utilization sample."""
        return self.add("util", **fields)

    def acct(self, **fields: object) -> Scenario:
        """An accounting record."""
        return self.add("acct", **fields)

    def xid(self, **fields: object) -> Scenario:
        """An Xid event (gpu=, code=, id=), delivered once per event set."""
        return self.add("xid", **fields)

    def fail(self, fn: str, err: int, **fields: object) -> Scenario:
        """Make the C function ``fn`` return NVML error ``err`` (optionally for one gpu=)."""
        return self.add("fail", fn=fn, err=err, **fields)

    def drop(self, line_type: str, /, **match: object) -> Scenario:
        """Remove every ``line_type`` line whose fields include all of ``match``."""
        self.lines = [
            (k, f)
            for k, f in self.lines
            if not (k == line_type and all(f.get(key) == v for key, v in match.items()))
        ]
        return self

    def render(self) -> str:
        """The file's text."""
        out = [f"driver {_value(self.driver)}", f"cuda {int(self.cuda)}"]
        for line_type, fields in self.lines:
            pairs = " ".join(f"{key}={_value(v)}" for key, v in fields.items())
            out.append(f"{line_type} {pairs}")
        return "\n".join(out) + "\n"

    def write(self) -> Path:
        """Write the file atomically (temporary file + rename) and return its path.

        The rename gives the file a new inode, so the library notices the change
        even when size and mtime happen to match the previous version.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(self.render())
            os.replace(tmp, self.path)
        except BaseException:
            os.unlink(tmp)
            raise
        return self.path
