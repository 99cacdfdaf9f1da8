"""On-disk format of the spool: segment files of checksummed records.

A segment holds the events of one agent run (boot_id), in seq order::

    segment = HEADER_MAGIC boot_id "\\n" record*
    record  = RECORD(magic, length, crc32(payload), seq) payload
    payload = one serialized gpuaudit.v1.Event

Every record carries its own magic and checksum, so recovery can tell a torn
tail (the agent or the host died mid-write: the file simply ends early) from
damage in the middle (a bad sector, someone editing the file), and can resync
on the next intact record after damage instead of losing the rest of the file.
The seq in the header lets recovery and loss accounting work without parsing
protobuf.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

HEADER_MAGIC = b"GPUAUDIT-SPOOL 1 "
RECORD = struct.Struct("<IIIQ")  # magic, payload length, crc32 of payload, seq
RECORD_MAGIC = 0x5350_4741  # "AGPS" little-endian: unlikely inside protobuf text
MAX_RECORD = 16 * 1024 * 1024  # larger lengths are damage, not events
SEGMENT_GLOB = "seg-*.log"


def segment_name(segno: int) -> str:
    """File name of segment ``segno``; zero-padded so names sort in order."""
    return f"seg-{segno:016d}.log"


def segno_of(path: Path) -> int:
    """The segment number encoded in a segment file name."""
    return int(path.name[4:-4])


def header(boot_id: str) -> bytes:
    """The bytes a segment of ``boot_id`` starts with."""
    return HEADER_MAGIC + boot_id.encode() + b"\n"


def encode(seq: int, payload: bytes) -> bytes:
    """One record: header then payload."""
    return RECORD.pack(RECORD_MAGIC, len(payload), zlib.crc32(payload), seq) + payload


class SpoolFormatError(ValueError):
    """A segment file does not start with a gpuaudit spool header."""


def read_header(data: bytes) -> tuple[str, int]:
    """(boot_id, offset of the first record) of a segment's bytes."""
    if not data.startswith(HEADER_MAGIC):
        raise SpoolFormatError("not a gpuaudit spool segment (bad header)")
    end = data.find(b"\n", len(HEADER_MAGIC), len(HEADER_MAGIC) + 256)
    if end < 0:
        raise SpoolFormatError("segment header is truncated")
    return data[len(HEADER_MAGIC):end].decode(errors="replace"), end + 1


@dataclass
class Parsed:
    """A record found in a segment."""

    offset: int  # where its header starts
    end: int     # offset just past its payload
    seq: int
    payload: bytes


def record_at(data: bytes | memoryview, offset: int) -> Parsed | None:
    """The intact record at ``offset``, or None (damaged, torn or absent)."""
    if offset + RECORD.size > len(data):
        return None
    magic, length, crc, seq = RECORD.unpack_from(data, offset)
    end = offset + RECORD.size + length
    if magic != RECORD_MAGIC or length > MAX_RECORD or end > len(data):
        return None
    payload = bytes(data[offset + RECORD.size:end])
    if zlib.crc32(payload) != crc:
        return None
    return Parsed(offset, end, seq, payload)


def resync(data: bytes, offset: int) -> int:
    """Offset of the next intact record after damage at ``offset`` (len(data) if none)."""
    magic = struct.pack("<I", RECORD_MAGIC)
    pos = offset + 1
    while True:
        pos = data.find(magic, pos)
        if pos < 0:
            return len(data)
        if record_at(data, pos) is not None:
            return pos
        pos += 1


@dataclass
class ScanResult:
    """What recovery found in one segment file."""

    boot_id: str
    first_offset: int       # where records start
    valid_end: int          # offset after the last intact record (truncate here)
    records: list[tuple[int, int]]  # (offset, seq) of every intact record
    damaged_bytes: int      # bytes skipped in the middle (not counting a torn tail)
    torn_bytes: int         # bytes of an incomplete last record
    lost_seqs: list[tuple[int, int]]  # (first, last) seq ranges lost to damage or a torn tail


def scan(data: bytes) -> ScanResult:
    """Walk a segment's bytes; keep intact records, measure damage and a torn tail."""
    boot_id, offset = read_header(data)
    first = offset
    records: list[tuple[int, int]] = []
    lost: list[tuple[int, int]] = []
    damaged = 0
    valid_end = offset
    while offset < len(data):
        rec = record_at(data, offset)
        if rec is None:
            nxt = resync(data, offset)
            prev_seq = records[-1][1] if records else 0
            if nxt == len(data):  # nothing intact after: a torn tail
                lost.append(_torn_range(data, offset, prev_seq))
                break
            nxt_seq = RECORD.unpack_from(data, nxt)[3]
            lost.append((prev_seq + 1, max(prev_seq + 1, nxt_seq - 1)))
            damaged += nxt - offset
            offset = nxt
            continue
        records.append((rec.offset, rec.seq))
        offset = valid_end = rec.end
    return ScanResult(boot_id, first, valid_end, records, damaged, len(data) - valid_end, lost)


def _torn_range(data: bytes, offset: int, prev_seq: int) -> tuple[int, int]:
    # A torn record's header usually survived and names its seq; if not, the
    # lost record is the one after the last intact record.
    if offset + RECORD.size <= len(data):
        magic, _, _, seq = RECORD.unpack_from(data, offset)
        if magic == RECORD_MAGIC and seq > prev_seq:
            return (seq, seq)
    return (prev_seq + 1, prev_seq + 1)


def iter_records(data: bytes | memoryview, offset: int, end: int) -> Iterator[Parsed]:
    """Intact records between ``offset`` and ``end``, skipping damage."""
    view = data[:end]
    while offset < end:
        rec = record_at(view, offset)
        if rec is None:
            offset = resync(bytes(view), offset)
            continue
        yield rec
        offset = rec.end


def fsync_dir(path: Path) -> None:
    """Make a created, renamed or deleted entry in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
