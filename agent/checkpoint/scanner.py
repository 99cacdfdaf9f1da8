"""Scans a model file for pickle imports, within fixed memory bounds.

picklescan (a deny-list of globals, by M. Maitre) finds the imports; this module
decides the verdict and the bounds. Why picklescan plus a deny-list of our own
(docs/events.md, ``checkpoint.scan``, has the comparison table): picklescan
was the only one of picklescan 1.0.5, fickling 0.1.12 and modelscan 0.8.8 that
flagged every uncompressed dangerous sample of tests/fixtures/pickles and
passed every benign one, but it rates ``importlib.import_module`` and
``marshal.loads`` only "suspicious" although both lead straight to code
execution, and calls a compressed pickle "safe" (agent/checkpoint/compressed.py
decompresses those first). :data:`DENY`
promotes every global of the modules issue #3 names (and their obvious
equivalents) to "malicious" whatever picklescan's lists say, so a later
picklescan release that relaxes an entry cannot make such a pickle "safe".

Bounds (why: a multi-GB checkpoint must not blow the agent's memory):

* the format is told from the first 8 bytes; zip archives are read through
  their central directory, and of each member only 8 bytes are read unless it
  is a pickle (``.pkl`` or a pickle PROTO header) or a ``.npy`` header: a
  10 GB tensor blob inside a torch zip costs 8 bytes of reading;
* each pickle stream is read through :class:`BoundedReader` (at most
  ``Limits.pickle_max_bytes``), after a streaming pass that counts opcodes (at
  most ``Limits.pickle_max_ops``): picklescan keeps every opcode of a stream in
  a list, so the count bounds its memory (about 150 bytes an opcode);
* a legacy (non-zip) torch file is scanned as its five pickles, never the raw
  storage bytes after them; a plain pickle is scanned to its end, within the
  same byte bound; a gzip/bz2/xz/lzma/zlib-compressed pickle (joblib's
  ``compress=``) is decompressed as a stream, the bound counting decompressed
  bytes (lz4 is not in the standard library: "error").

A stream over a bound gives verdict "error" (never "safe"), unless a
dangerous import was already seen, which gives "malicious".
"""

from __future__ import annotations

import _compat_pickle
import ast
import contextlib
import importlib.metadata
import io
import logging
import lzma
import os
import pickletools
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import IO, Any, cast

from agent.checkpoint import compressed
from agent.checkpoint.bounded import BoundedReader

try:
    from picklescan.relaxed_zipfile import RelaxedZipFile
    from picklescan.scanner import Global, SafetyLevel, ScanResult, scan_pickle_bytes
    SCANNER_VERSION = importlib.metadata.version("picklescan")
    # Findings are reported as events; picklescan's per-global warnings would
    # only flood the agent's log.
    logging.getLogger("picklescan").setLevel(logging.CRITICAL)
except ImportError:  # the runtime reports the sensor degraded
    SCANNER_VERSION = ""

SCANNER = "picklescan"

ALL = frozenset({"*"})
DENY: dict[str, frozenset[str]] = {
    "os": ALL, "posix": ALL, "nt": ALL, "subprocess": ALL, "_posixsubprocess": ALL, "pty": ALL,
    "importlib": ALL, "marshal": ALL, "runpy": ALL, "pickle": ALL, "_pickle": ALL,
    "ctypes": ALL, "code": ALL, "codeop": ALL, "commands": ALL,
    "types": frozenset({"FunctionType", "CodeType", "LambdaType", "MethodType"}),
    "builtins": frozenset({"eval", "exec", "compile", "__import__", "getattr", "open",
                           "breakpoint", "globals", "vars", "input"}),
}
"""module -> names (ALL: every name, and every submodule) that make a pickle malicious."""
DENY["__builtin__"] = DENY["builtins"]  # protocols 0-2 write builtins as __builtin__

PICKLE_EXTS = frozenset({".pkl", ".pickle", ".joblib", ".dat", ".data"})
PICKLE_PROTO_MAGIC = tuple(b"\x80" + bytes([p]) for p in range(6))
NUMPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
SEVENZIP_MAGIC = b"7z\xbc\xaf\x27\x1c"
TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
TORCH_LEGACY_PICKLES = 5  # magic, protocol, sys_info, the object, storage keys
NPY_MAX_HEADER = 1 << 20


@dataclass(frozen=True)
class Limits:
    """What one scan may read and hold (see the module docstring)."""

    pickle_max_bytes: int = 64 << 20
    pickle_max_ops: int = 1_000_000
    zip_max_members: int = 65536


@dataclass
class Outcome:
    """The verdict on one file."""

    verdict: str  # safe | suspicious | malicious | error
    globals: list[str] = field(default_factory=list)  # "module.name", sorted
    format: str = ""
    error: str = ""


class ScanLimit(Exception):
    """A stream went over a bound of :class:`Limits`."""


def loaded_as(module: str, name: str) -> tuple[str, str]:
    """What the unpickler really imports for ``module.name``.

    Protocols 0-2 are read with fix_imports: Python 2 names are mapped to
    Python 3 ones (``commands.Popen`` is ``subprocess.Popen``,
    ``__builtin__`` is ``builtins``), so the deny-list matches the mapped name.
    """
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def denied(module: str, name: str) -> bool:
    """True when DENY makes ``module.name`` (or what it is loaded as) malicious."""
    return _denied(module, name) or _denied(*loaded_as(module, name))


def _denied(module: str, name: str) -> bool:
    for mod, names in DENY.items():
        if module == mod and (names is ALL or name in names):
            return True
        if names is ALL and module.startswith(mod + "."):
            return True
    return False


class _Findings:
    """Globals and problems gathered over every stream of one file."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.globals: list[Global] = []
        self.errors: list[str] = []

    def add(self, res: ScanResult, where: str) -> None:
        self.globals.extend(res.globals)
        if res.scan_err:
            self.errors.append(f"{where}: pickle stream does not parse to its end")

    def outcome(self, fmt: str) -> Outcome:
        bad = {f"{g.module}.{g.name}" for g in self.globals
               if g.safety is SafetyLevel.Dangerous or denied(g.module, g.name)}
        odd = {f"{g.module}.{g.name}" for g in self.globals if g.safety is SafetyLevel.Suspicious}
        error = "; ".join(self.errors)
        if bad:
            return Outcome("malicious", sorted(bad | odd), fmt, error)
        if error:
            return Outcome("error", sorted(odd), fmt, error)
        return Outcome("suspicious" if odd else "safe", sorted(odd), fmt)

    def pickles(self, opener: Callable[[], AbstractContextManager[IO[bytes]]], where: str,
                count: int | None) -> None:
        """Scans ``count`` pickles (None: to the end) of the stream ``opener`` gives."""
        try:
            with opener() as raw:
                _count_ops(BoundedReader(raw, self.limits.pickle_max_bytes), count,
                           self.limits.pickle_max_ops)
            with opener() as raw:
                reader = BoundedReader(raw, self.limits.pickle_max_bytes)
                for res in _picklescan(reader, where, count):
                    self.add(res, where)
                if reader.exceeded:  # picklescan reads a short read as "no more globals"
                    raise ScanLimit(f"pickle over {self.limits.pickle_max_bytes} bytes")
        except ScanLimit as e:
            self.errors.append(f"{where}: {e}")


def _picklescan(reader: BoundedReader, where: str, count: int | None) -> Iterator[ScanResult]:
    if count is None:
        yield scan_pickle_bytes(reader, where, multiple_pickles=True)
        return
    for _ in range(count):
        yield scan_pickle_bytes(reader, where, multiple_pickles=False)


def _count_ops(reader: BoundedReader, count: int | None, max_ops: int) -> None:
    """Walks the pickles as picklescan will, holding nothing; raises ScanLimit."""
    ops = done = 0
    while count is None or done < count:
        try:
            for _ in pickletools.genops(cast(IO[bytes], reader)):
                ops += 1
                if ops > max_ops:
                    raise ScanLimit(f"pickle over {max_ops} opcodes")
        except (ScanLimit, MemoryError):  # picklescan would take MemoryError for a parse error
            raise
        except Exception:  # a parse error ends the walk, as in picklescan
            break
        done += 1
        if not reader.read(1):
            break
        reader.seek(-1, io.SEEK_CUR)
    if reader.exceeded:
        raise ScanLimit(f"pickle over {reader.tell()} bytes")


@contextlib.contextmanager
def _at(f: IO[bytes], offset: int) -> Iterator[IO[bytes]]:
    """``f`` positioned at ``offset`` (and left open)."""
    f.seek(offset)
    yield f


DEFAULT_LIMITS = Limits()


def scan(f: IO[bytes], name: str, limits: Limits = DEFAULT_LIMITS) -> Outcome:
    """The verdict on the seekable file ``f`` (``name`` only labels findings)."""
    if not SCANNER_VERSION:
        return Outcome("error", error="picklescan is not installed")
    f.seek(0)
    head = f.read(8)
    findings = _Findings(limits)
    try:
        fmt = _dispatch(f, head, name, findings)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, struct.error, zlib.error,
            lzma.LZMAError) as e:
        return Outcome("error", format=_guess(head), error=f"{type(e).__name__}: {e}")
    return findings.outcome(fmt)


def _guess(head: bytes) -> str:
    if head.startswith(ZIP_MAGIC):
        return "zip"
    if head.startswith(NUMPY_MAGIC):
        return "numpy"
    return "pickle"


def _dispatch(f: IO[bytes], head: bytes, name: str, findings: _Findings) -> str:
    if head.startswith(ZIP_MAGIC):
        return _scan_zip(f, name, findings)
    if head.startswith(SEVENZIP_MAGIC):
        findings.errors.append("7z archives are not scanned (torch and pickle cannot load them)")
        return "7z"
    if head.startswith(NUMPY_MAGIC):
        _scan_npy(lambda: _at(f, 0), name, findings)
        return "numpy"
    kind = compressed.detect(head)
    if kind:
        decompressed = compressed.opener(kind, f)
        if decompressed is None:
            findings.errors.append(f"{kind}-compressed: not scanned")
        else:
            findings.pickles(decompressed, name, None)
        return f"pickle+{kind}"
    if _is_legacy_torch(f):
        findings.pickles(lambda: _at(f, 0), name, TORCH_LEGACY_PICKLES)
        return "torch_legacy"
    findings.pickles(lambda: _at(f, 0), name, None)
    return "pickle"


def _is_legacy_torch(f: IO[bytes]) -> bool:
    """The first pickle is torch's magic number (a few bytes)."""
    try:
        first = cast(IO[bytes], BoundedReader(_seek0(f), 64))
        return any(arg == TORCH_LEGACY_MAGIC for _, arg, _ in pickletools.genops(first))
    except Exception:  # not a pickle, or not this one
        return False


def _seek0(f: IO[bytes]) -> IO[bytes]:
    f.seek(0)
    return f


def _scan_zip(f: IO[bytes], name: str, findings: _Findings) -> str:
    f.seek(0)
    with RelaxedZipFile(f) as z:
        infos = [i for i in z.infolist() if not i.is_dir()]
        if len(infos) > findings.limits.zip_max_members:
            raise ValueError(f"zip has {len(infos)} members, "
                             f"over {findings.limits.zip_max_members}")
        for info in infos:
            _scan_member(z, info, f"{name}:{info.filename}", findings)
    names = [i.filename for i in infos]
    if any(n.endswith("/data.pkl") or n == "data.pkl" for n in names):
        return "torch_zip"
    return "npz" if names and all(n.endswith(".npy") for n in names) else "zip"


def _scan_member(z: zipfile.ZipFile, info: zipfile.ZipInfo, where: str,
                 findings: _Findings) -> None:
    try:
        with z.open(info) as m:
            head = m.read(8)
    except (zipfile.BadZipFile, RuntimeError, NotImplementedError) as e:
        # torch or numpy might still read what zipfile cannot (e.g. an
        # unusual compression): not scanned must not read as "safe"
        findings.errors.append(f"{where}: unreadable zip member: {e}")
        return
    ext = os.path.splitext(info.filename)[1]
    if ext in PICKLE_EXTS or head.startswith(PICKLE_PROTO_MAGIC):
        findings.pickles(lambda: z.open(info), where, None)
    elif ext == ".npy" or head.startswith(NUMPY_MAGIC):
        _scan_npy(lambda: z.open(info), where, findings)


def _scan_npy(opener: Callable[[], AbstractContextManager[IO[bytes]]], where: str,
              findings: _Findings) -> None:
    """A .npy array: its pickle (object dtype only) follows the header."""
    with opener() as raw:
        header_len, descr = _npy_header(raw)
    if not _has_object(descr):
        return

    @contextlib.contextmanager
    def body() -> Iterator[IO[bytes]]:
        with opener() as raw:
            raw.read(header_len)
            yield raw

    findings.pickles(body, where, None)


def _npy_header(raw: IO[bytes]) -> tuple[int, Any]:
    """(bytes up to the array data, the dtype ``descr``), parsed without numpy."""
    pre = raw.read(8)
    if len(pre) < 8 or not pre.startswith(NUMPY_MAGIC):
        raise ValueError("bad .npy magic")
    major = pre[6]
    size_fmt = "<H" if major == 1 else "<I"
    size_len = struct.calcsize(size_fmt)
    (hlen,) = struct.unpack(size_fmt, raw.read(size_len))
    if hlen > NPY_MAX_HEADER:
        raise ValueError(f".npy header of {hlen} bytes")
    text = raw.read(hlen).decode("utf-8" if major >= 3 else "latin-1")
    header = ast.literal_eval(text)
    if not isinstance(header, dict) or "descr" not in header:
        raise ValueError(".npy header without descr")
    return 8 + size_len + hlen, header["descr"]


def _has_object(descr: Any) -> bool:
    """Object dtype anywhere in ``descr`` (a field name "O" errs on the safe side)."""
    if isinstance(descr, str):
        return descr.lstrip("|<>=").startswith("O")
    if isinstance(descr, (list, tuple)):
        return any(_has_object(d) for d in descr)
    return True  # unknown shape of descr: scan it
