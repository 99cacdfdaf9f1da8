"""Compressed pickles (joblib's ``compress=``): decompressed as a stream.

joblib.load decompresses before it unpickles, so a compressed .joblib/.pkl
must be scanned decompressed: picklescan alone reads the compressed bytes as
a broken pickle with no imports, i.e. "safe". Decompression is streaming
(at most a chunk at a time) and the caller bounds the decompressed bytes, so
a compression bomb costs time up to that bound, not memory.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import zlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import IO, cast

Opener = Callable[[], AbstractContextManager[IO[bytes]]]

ZLIB_HEADS = (b"\x78\x01", b"\x78\x5e", b"\x78\x9c", b"\x78\xda")  # 'x' is no pickle opcode
LZ4_MAGIC = b"\x04\x22\x4d\x18"
CHUNK = 1 << 16


def detect(head: bytes) -> str:
    """The compression of a file starting with ``head``, or ""."""
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"BZh"):
        return "bz2"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "xz"
    if head.startswith(b"\x5d\x00\x00"):
        return "lzma"
    if head.startswith(ZLIB_HEADS):
        return "zlib"
    if head.startswith(LZ4_MAGIC):
        return "lz4"
    return ""


def opener(kind: str, f: IO[bytes]) -> Opener | None:
    """A factory of decompressed views of ``f`` (from its start); None: unsupported."""
    def seek0() -> IO[bytes]:
        f.seek(0)
        return f

    if kind == "gzip":
        return lambda: cast(IO[bytes], gzip.GzipFile(fileobj=seek0(), mode="rb"))
    if kind == "bz2":
        return lambda: bz2.BZ2File(seek0())
    if kind in ("xz", "lzma"):
        return lambda: lzma.LZMAFile(seek0())
    if kind == "zlib":  # buffered: pickletools takes a short read for the end of data
        return lambda: io.BufferedReader(ZlibReader(seek0()))
    return None  # lz4 is not in the standard library


class ZlibReader(io.RawIOBase):
    """A raw zlib stream (joblib's default compressor) as a seekable file.

    Seeking backwards restarts decompression from the start, as GzipFile does;
    picklescan only ever steps back one byte.
    """

    def __init__(self, raw: IO[bytes]) -> None:
        super().__init__()
        self._raw = raw
        self._base = raw.tell()
        self._restart()

    def _restart(self) -> None:
        self._raw.seek(self._base)
        self._z = zlib.decompressobj()
        self._pending = b""
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._pending and not self._z.eof:
            data = self._z.unconsumed_tail or self._raw.read(CHUNK)
            if not data:
                break
            self._pending = self._z.decompress(data, max(len(b), 1))
        n = min(len(b), len(self._pending))
        b[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        self._pos += n
        return n

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            offset += self._pos
        elif whence != io.SEEK_SET:
            raise io.UnsupportedOperation("ZlibReader cannot seek from the end")
        if offset < self._pos:
            self._restart()
        buf = bytearray(CHUNK)
        while self._pos < offset:
            if not self.readinto(memoryview(buf)[: min(CHUNK, offset - self._pos)]):
                break
        return self._pos
