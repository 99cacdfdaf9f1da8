"""Spool recovery: what an earlier agent run (or a crash) left in the spool.

Also the spool's bookkeeping types, shared with :mod:`agent.spool`.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from agent import spoolfile as fmt

log = logging.getLogger("agent.spool")

Position = tuple[int, int]  # (segment number, byte offset in it)


@dataclass
class Loss:
    """Events that left the spool without being acknowledged."""

    reason: str        # spool_full, spool_write, spool_corrupt, rejected
    count: int
    lost_boot_id: str
    first_seq: int
    last_seq: int


@dataclass
class Segment:
    segno: int
    path: Path
    boot_id: str
    first_offset: int
    size: int = 0            # bytes written (readable) so far
    records: int = 0
    first_seq: int = 0
    last_seq: int = 0
    acked: int = 0           # records acknowledged by the collector
    acked_offset: int = 0    # acknowledged up to this offset
    acked_last_seq: int = 0
    offsets: list[tuple[int, int]] = field(default_factory=list)  # (offset, seq); recovery only

    @property
    def unacked(self) -> int:
        return self.records - self.acked

    def unacked_range(self) -> tuple[int, int]:
        return max(self.first_seq, self.acked_last_seq + 1), self.last_seq


@dataclass
class Recovered:
    """The spool as recovery found it."""

    ack_pos: Position
    segments: list[Segment] = field(default_factory=list)
    losses: list[Loss] = field(default_factory=list)


def recover(directory: Path) -> Recovered:
    """Scan a spool directory left by an earlier run (or a crash).

    Segments wholly acknowledged are deleted; damaged records are dropped and
    returned as losses; the rest is what still has to be delivered.
    """
    found = Recovered(ack_pos=_read_ack_file(directory))
    ack_segno, ack_offset = found.ack_pos
    for path in sorted(directory.glob(fmt.SEGMENT_GLOB)):
        seg = _recover_segment(path, found.losses)
        if seg is None:
            continue
        if seg.segno < ack_segno:
            seg.acked, seg.acked_offset = seg.records, seg.size
        elif seg.segno == ack_segno:
            _apply_acked_offset(seg, ack_offset)
        seg.offsets = []
        if seg.unacked == 0:
            with contextlib.suppress(FileNotFoundError):
                seg.path.unlink()
            continue
        found.segments.append(seg)
    return found


def _recover_segment(path: Path, losses: list[Loss]) -> Segment | None:
    data = path.read_bytes()
    try:
        res = fmt.scan(data)
    except fmt.SpoolFormatError as err:
        bad = path.with_suffix(".bad")
        path.rename(bad)
        count = data.count(fmt.RECORD.pack(fmt.RECORD_MAGIC, 0, 0, 0)[:4])
        losses.append(Loss("spool_corrupt", count, "", 0, 0))
        log.error("spool segment %s: %s; moved aside as %s", path, err, bad.name)
        return None
    for first, last in res.lost_seqs:
        losses.append(Loss("spool_corrupt", last - first + 1, res.boot_id, first, last))
    if res.torn_bytes or res.damaged_bytes:
        log.warning("spool segment %s: %d damaged and %d torn bytes dropped (crash during a "
                    "write?)", path.name, res.damaged_bytes, res.torn_bytes)
        os.truncate(path, res.valid_end)
    seqs = [seq for _, seq in res.records]
    return Segment(
        segno=fmt.segno_of(path), path=path, boot_id=res.boot_id,
        first_offset=res.first_offset, size=res.valid_end, records=len(seqs),
        first_seq=seqs[0] if seqs else 0, last_seq=seqs[-1] if seqs else 0,
        acked_offset=res.first_offset, offsets=res.records,
    )


def _apply_acked_offset(seg: Segment, offset: int) -> None:
    before = [(o, s) for o, s in seg.offsets if o < offset]
    seg.acked = len(before)
    seg.acked_offset = max(seg.first_offset, min(offset, seg.size))
    seg.acked_last_seq = before[-1][1] if before else 0


def _read_ack_file(directory: Path) -> Position:
    try:
        segno, offset = (directory / "acked").read_text().split()
        return int(segno), int(offset)
    except (OSError, ValueError):
        return (0, 0)  # nothing acknowledged yet (or unreadable: resend, dedup'd)
