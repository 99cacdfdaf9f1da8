"""A read-only file view that refuses to hand out more than a byte budget.

picklescan (and pickletools under it) read a pickle with ``read(n)``,
``readline()`` and ``seek(-1, 1)``. An argument length in a pickle is
attacker-controlled (BINBYTES8 can announce 2**64 bytes) and protocol-0
lines have no length at all, so every read is clamped to what is left of the
budget. When the budget runs out the view returns nothing more and sets
:attr:`exceeded`: the parser then fails on a short read, and the caller must
check the flag, because picklescan turns parse errors into "no globals".
"""

from __future__ import annotations

import io
from typing import IO


class BoundedReader(io.RawIOBase):
    """At most ``budget`` bytes of ``raw`` from its current position."""

    def __init__(self, raw: IO[bytes], budget: int) -> None:
        super().__init__()
        self._raw = raw
        self._budget = budget
        self._start = raw.tell()
        self.exceeded = False

    def _left(self) -> int:
        return self._budget - (self._raw.tell() - self._start)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        left = self._left()
        want = left + 1 if size is None or size < 0 else min(size, left + 1)
        data = self._raw.read(want) if want > 0 else b""
        if len(data) > left:
            self.exceeded = True
            self._raw.seek(self._start + self._budget)
            return b""
        return data

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def readline(self, size: int | None = -1) -> bytes:
        left = self._left()
        want = left + 1 if size is None or size < 0 else min(size, left + 1)
        line = self._raw.readline(want) if want > 0 else b""
        if len(line) > left:
            self.exceeded = True
            self._raw.seek(self._start + self._budget)
            return b""
        return line

    def tell(self) -> int:
        return self._raw.tell() - self._start

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            offset += self.tell()
        elif whence == io.SEEK_END:
            raise io.UnsupportedOperation("BoundedReader cannot seek from the end")
        offset = max(0, min(offset, self._budget))
        self._raw.seek(self._start + offset)
        return offset
