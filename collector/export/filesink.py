"""JSON lines to a local file (OCSF by default), rotated by size.

``PATH`` is appended to; when a batch would take it past ``max_bytes`` it is
renamed ``PATH.1`` (``PATH.1`` -> ``PATH.2`` ... up to ``keep`` files, the oldest
deleted) and a new ``PATH`` started. A log shipper (Fluent Bit, Vector, the
Security Lake / Splunk forwarders) tails the file; rotation by rename is what
they follow.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from collector.export.base import Item, dumps
from collector.export.http import FORMATS, render_json


class JsonFileSink:
    """Appends one JSON object per line; rotates by size."""

    name = "ocsf_file"

    def __init__(self, path: str | Path, max_bytes: int = 100 << 20, keep: int = 5,
                 fmt: str = "ocsf", unmapped: str = "base") -> None:
        if fmt not in FORMATS:
            raise ValueError(f"file format {fmt!r}: use one of {', '.join(FORMATS)}")
        if max_bytes < 1 or keep < 0:
            raise ValueError("max_bytes must be positive and keep not negative")
        self.path, self.max_bytes, self.keep = Path(path), max_bytes, keep
        self.fmt, self.unmapped = fmt, unmapped
        self._fh: IO[bytes] | None = None

    def render(self, item: Item) -> bytes | None:
        """One line."""
        obj = render_json(item, self.fmt, self.unmapped)
        return None if obj is None else (dumps(obj) + "\n").encode()

    def send(self, batch: Sequence[Any]) -> None:
        """Append the lines (rotating first when they would not fit) and flush."""
        data = b"".join(batch)
        fh = self._open()
        if fh.tell() and fh.tell() + len(data) > self.max_bytes:
            self._rotate()
            fh = self._open()
        fh.write(data)
        fh.flush()

    def close(self) -> None:
        """Close the file."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def _open(self) -> IO[bytes]:
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
            self._fh = os.fdopen(fd, "ab")
        return self._fh

    def _rotate(self) -> None:
        self.close()
        if self.keep == 0:
            self.path.unlink(missing_ok=True)
            return
        for i in range(self.keep - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{i + 1}"))
        self.path.replace(self.path.with_name(f"{self.path.name}.1"))
