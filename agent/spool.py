"""The disk spool: every event is written here before it is sent, and deleted
only after the collector acknowledged it.

Events are appended to segment files (format in :mod:`agent.spoolfile`), one
agent run (boot_id) per segment, so a restarted agent first replays what the
previous run left, byte for byte, under the previous boot_id. The collector
stores each (node, boot_id, seq) once, so replaying something it already has
is harmless; that is why the acknowledged position is persisted lazily.

Durability (the fsync policy): appends are buffered for at most
``FLUSH_BYTES`` or until the processor goes idle, then written with one
``write(2)``: from then on a ``kill -9`` of the agent loses nothing, because
the data is in the kernel's page cache. ``fdatasync`` runs at most every
``fsync_interval_s`` (default 1 s), so a power loss or kernel crash can cost
the last second of events. Those would have been lost in the kernel's ring
buffer anyway; an fsync per event would cap the agent at the disk's sync
rate. ``fsync_interval_s=0`` syncs every write for those who want that.

When the spool is full (``max_bytes``, or the disk itself: ENOSPC) the policy
decides what goes: ``drop_oldest`` (default) deletes the oldest segment,
``drop_newest`` refuses new events. Either way the loss is recorded with its
seq range and handed to the processor, which turns it into an ``agent.loss``
event; nothing leaves the spool uncounted.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agent import spoolfile as fmt
from agent.spoolrecovery import Loss, Position, Segment, recover

log = logging.getLogger(__name__)

MiB = 1024 * 1024
FLUSH_BYTES = 64 * 1024
POLICIES = ("drop_oldest", "drop_newest")
ACK_PERSIST_S = 1.0


class SpoolError(RuntimeError):
    """The spool directory cannot be used; the message says what to do."""


@dataclass
class Chunk:
    """Consecutive records of one segment, ready to send as one batch."""

    boot_id: str
    payloads: list[bytes]
    first_seq: int
    last_seq: int
    end: Position  # read on from here; acknowledge up to here
    seqs: list[int] = field(default_factory=list)  # seq of each payload (signed with it)

    def __len__(self) -> int:
        return len(self.payloads)


class DiskSpool:
    """Append-only, bounded, checksummed spool directory; thread-safe."""

    def __init__(
        self,
        directory: str | Path,
        boot_id: str,
        max_bytes: int = 256 * MiB,
        policy: str = "drop_oldest",
        fsync_interval_s: float = 1.0,
        segment_bytes: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if policy not in POLICIES:
            raise SpoolError(f"spool policy {policy!r} is not one of {', '.join(POLICIES)}")
        self.dir = Path(directory)
        self.boot_id = boot_id
        self.max_bytes = max_bytes
        self.policy = policy
        self.fsync_interval_s = fsync_interval_s
        self._clock = clock
        self._cond = threading.Condition()
        self._segments: list[Segment] = []
        self._head: Segment | None = None
        self._fd = -1
        self._read_fds: dict[int, int] = {}
        self._buf = bytearray()
        self._buf_seqs: list[int] = []
        self._bytes = 0
        self._dirty = False
        self._last_sync = clock()
        self._last_ack_persist = 0.0
        self._ack_pos: Position = (0, 0)
        self._losses: list[Loss] = []
        self.lost: dict[str, int] = {}
        self._lock_fd = self._lock_dir()
        # Dropping happens a segment at a time: small segments keep the loss
        # granular, and a full spool (or disk) always has an older segment to drop.
        disk = os.statvfs(self.dir)
        self.segment_bytes = segment_bytes or max(
            64 * 1024, min(8 * MiB, max_bytes // 16, disk.f_blocks * disk.f_frsize // 16))
        self._flush_bytes = min(FLUSH_BYTES, self.segment_bytes // 4)
        self._recover()

    # -- start-up -----------------------------------------------------------
    def _lock_dir(self) -> int:
        try:
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as err:
            raise SpoolError(f"cannot use spool directory {self.dir}: {err.strerror} "
                             "(pass --spool-dir to a writable directory)") from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SpoolError(f"spool directory {self.dir} is in use by another gpuaudit agent "
                             "(one agent per spool; pass --spool-dir)") from None
        return fd

    def _recover(self) -> None:
        found = recover(self.dir)
        self._segments, self._ack_pos = found.segments, found.ack_pos
        self._bytes = sum(seg.size for seg in self._segments)
        for loss in found.losses:
            self._record_loss(loss)
        if self._segments:
            log.info("spool %s: %d events from earlier runs to deliver",
                     self.dir, sum(seg.unacked for seg in self._segments))

    # -- writing (processor thread) -------------------------------------------
    def append(self, seq: int, payload: bytes) -> bool:
        """Spool one serialized event; False if the policy refused it (counted)."""
        record = fmt.encode(seq, payload)
        with self._cond:
            if not self._make_room(len(record)):
                self._record_loss(Loss("spool_full", 1, self.boot_id, seq, seq))
                return False
            self._buf += record
            self._buf_seqs.append(seq)
            self._bytes += len(record)
            if len(self._buf) >= self._flush_bytes:
                self._flush_locked()
        return True

    def flush(self) -> None:
        """Write buffered records (readable by the shipper from then on); sync if due."""
        with self._cond:
            self._flush_locked()
            self._sync_if_due()

    def _make_room(self, size: int) -> bool:
        while self._bytes + size > self.max_bytes:
            if self.policy != "drop_oldest":
                return False
            self._flush_locked()  # buffered records are older than this one
            if not self._drop_oldest():
                return False
        return True

    def _drop_oldest(self) -> bool:
        """Delete the oldest segment, counting its unacknowledged records."""
        if self._segments and self._segments[0] is self._head:
            self._roll()  # make the head droppable; new records go to a new head
        if not self._segments:
            return False
        seg = self._segments.pop(0)
        if seg.unacked:
            first, last = seg.unacked_range()
            self._record_loss(Loss("spool_full", seg.unacked, seg.boot_id, first, last))
        self._bytes -= seg.size
        self._delete(seg)
        return True

    def _flush_locked(self) -> None:
        if not self._buf:
            return
        if self._head is None or self._head.size + len(self._buf) > self.segment_bytes:
            self._roll()
        while True:
            try:
                self._write_buf()
                return
            except OSError as err:
                if err.errno == errno.ENOSPC and self._drop_for_disk():
                    continue  # something was freed: try again
                self._lose_buffer(err)
                return

    def _write_buf(self) -> None:
        seg = self._ensure_head()
        try:
            written = os.pwrite(self._fd, self._buf, seg.size)
            if written != len(self._buf):
                raise OSError(errno.ENOSPC, "short write")
        except OSError:
            os.ftruncate(self._fd, seg.size)  # cut a partial record
            raise
        seg.size += len(self._buf)
        seg.records += len(self._buf_seqs)
        seg.first_seq = seg.first_seq or self._buf_seqs[0]
        seg.last_seq = self._buf_seqs[-1]
        self._buf.clear()
        self._buf_seqs.clear()
        self._dirty = True
        self._cond.notify_all()

    def _drop_for_disk(self) -> bool:
        """The disk is full before max_bytes: free what the policy allows; False if nothing."""
        head = self._head
        if head is not None and head.records and head.unacked == 0:
            self._roll()  # all delivered: rolling deletes it, nothing is lost
            return True
        return self.policy == "drop_oldest" and self._drop_oldest()

    def _lose_buffer(self, err: OSError) -> None:
        seqs = self._buf_seqs
        log.error("spool %s: cannot write %d events: %s", self.dir, len(seqs), err.strerror)
        self._record_loss(Loss("spool_write", len(seqs), self.boot_id, seqs[0], seqs[-1]))
        self._bytes -= len(self._buf)
        self._buf.clear()
        self._buf_seqs = []

    def _ensure_head(self) -> Segment:
        if self._head is None:
            self._open_head()
        assert self._head is not None
        return self._head

    def _roll(self) -> None:
        """Close the head segment; the next write starts a new one."""
        if self._head is None:
            return
        with contextlib.suppress(OSError):
            os.fdatasync(self._fd)
        os.close(self._fd)
        self._fd = -1
        if self._head.unacked == 0:  # empty or all delivered
            self._segments.remove(self._head)
            self._bytes -= self._head.size
            self._delete(self._head)
        self._head = None

    def _open_head(self) -> None:
        # Above every segment number ever acknowledged, or recovery would take
        # the new segment for an old, acknowledged one.
        segno = max([s.segno for s in self._segments] + [self._ack_pos[0]]) + 1
        path = self.dir / fmt.segment_name(segno)
        head = fmt.header(self.boot_id)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            if os.write(fd, head) != len(head):
                raise OSError(errno.ENOSPC, "short write")
        except OSError:
            os.close(fd)
            path.unlink()
            raise
        fmt.fsync_dir(self.dir)
        seg = Segment(segno, path, self.boot_id, len(head), size=len(head), acked_offset=len(head))
        self._segments.append(seg)
        self._bytes += len(head)
        self._head, self._fd = seg, fd

    def _sync_if_due(self) -> None:
        now = self._clock()
        if self._dirty and self._fd >= 0 and now - self._last_sync >= self.fsync_interval_s:
            with contextlib.suppress(OSError):
                os.fdatasync(self._fd)
            self._dirty = False
            self._last_sync = now

    # -- reading and acknowledging (shipper thread) ------------------------------
    def start(self) -> Position:
        """Where a new connection starts reading: the first unacknowledged record."""
        with self._cond:
            if not self._segments:
                return self._ack_pos
            seg = self._segments[0]
            return (seg.segno, seg.acked_offset)

    def read(self, pos: Position, max_events: int, max_bytes: int) -> Chunk | None:
        """Records after ``pos`` (one segment's worth at most), or None if none yet."""
        with self._cond:
            return self._read_locked(pos, max_events, max_bytes)

    def wait(self, pos: Position, timeout: float) -> None:
        """Block until something after ``pos`` may be readable (or timeout)."""
        with self._cond:
            if not self._readable_after(pos):
                self._cond.wait(timeout)

    def _readable_after(self, pos: Position) -> bool:
        return self._next_unread(pos) is not None

    def _read_locked(self, pos: Position, max_events: int, max_bytes: int) -> Chunk | None:
        found = self._next_unread(pos)
        return None if found is None else self._chunk(*found, max_events, max_bytes)

    def _next_unread(self, pos: Position) -> tuple[Segment, int] | None:
        """The first segment with records after ``pos``, and the offset to read from."""
        for seg in self._segments:
            if seg.segno < pos[0]:
                continue
            # a segment dropped under the reader: go on from the next one's start
            offset = pos[1] if seg.segno == pos[0] else seg.acked_offset
            if offset < seg.size:
                return seg, offset
        return None

    def _chunk(self, seg: Segment, offset: int, max_events: int, max_bytes: int) -> Chunk:
        fd = self._read_fd(seg)
        window = min(seg.size - offset, max(max_bytes, self._record_len(fd, offset)))
        data = os.pread(fd, window, offset)
        payloads: list[bytes] = []
        seqs: list[int] = []
        first = last = 0
        pos = 0
        while pos < len(data) and len(payloads) < max_events:
            rec = fmt.record_at(data, pos)
            if rec is None:
                if pos == 0:
                    return self._skip_damage(seg, offset)
                break  # a record cut by the read window: the next read gets it
            payloads.append(rec.payload)
            seqs.append(rec.seq)
            first = first or rec.seq
            last, pos = rec.seq, rec.end
        return Chunk(seg.boot_id, payloads, first, last, (seg.segno, offset + pos), seqs)

    @staticmethod
    def _record_len(fd: int, offset: int) -> int:
        head = os.pread(fd, fmt.RECORD.size, offset)
        if len(head) < fmt.RECORD.size:
            return 0
        return fmt.RECORD.size + min(fmt.RECORD.unpack(head)[1], fmt.MAX_RECORD)

    def _skip_damage(self, seg: Segment, offset: int) -> Chunk:
        """Damage in a segment written by this run (the file was altered under us).

        Returns an empty chunk past the damage; the shipper acknowledges it
        without sending. How many events the damage covered is unknown, so
        at least one is counted.
        """
        data = os.pread(self._read_fd(seg), seg.size - offset, offset)
        nxt = fmt.resync(data, 0)
        log.error("spool segment %s damaged at offset %d (%d bytes skipped)",
                  seg.path.name, offset, nxt)
        self._record_loss(Loss("spool_corrupt", 1, seg.boot_id, 0, 0))
        return Chunk(seg.boot_id, [], 0, 0, (seg.segno, offset + nxt))

    def _read_fd(self, seg: Segment) -> int:
        fd = self._read_fds.get(seg.segno)
        if fd is None:
            fd = self._read_fds[seg.segno] = os.open(seg.path, os.O_RDONLY)
        return fd

    def ack(self, chunk: Chunk) -> None:
        """The collector committed ``chunk``: forget it and everything before it."""
        with self._cond:
            segno, offset = chunk.end
            for seg in list(self._segments):
                if seg.segno > segno:
                    break
                if seg.segno < segno:
                    seg.acked, seg.acked_offset = seg.records, seg.size
                elif offset > seg.acked_offset:
                    seg.acked += len(chunk)
                    seg.acked_offset = offset
                    seg.acked_last_seq = chunk.last_seq or seg.acked_last_seq
                if seg is not self._head and seg.acked_offset >= seg.size:
                    self._segments.remove(seg)
                    self._bytes -= seg.size
                    self._delete(seg)
            self._ack_pos = chunk.end
            if self._clock() - self._last_ack_persist >= ACK_PERSIST_S:
                self._persist_ack()
            self._cond.notify_all()

    def skip(self, chunk: Chunk, reason: str) -> None:
        """Give up on ``chunk`` (the collector refuses it for good): count it as lost."""
        self._record_loss(Loss(reason, len(chunk), chunk.boot_id, chunk.first_seq, chunk.last_seq))
        self.ack(chunk)

    def _persist_ack(self) -> None:
        # Lazy and unsynced on purpose: a stale ack file only means some
        # events are sent again after a restart, and the collector dedups them.
        tmp = self.dir / "acked.tmp"
        with contextlib.suppress(OSError):
            tmp.write_text(f"{self._ack_pos[0]} {self._ack_pos[1]}\n")
            tmp.replace(self.dir / "acked")
        self._last_ack_persist = self._clock()

    def _delete(self, seg: Segment) -> None:
        fd = self._read_fds.pop(seg.segno, None)
        if fd is not None:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            seg.path.unlink()

    # -- accounting ------------------------------------------------------------
    def _record_loss(self, loss: Loss) -> None:
        with self._cond:
            self._losses.append(loss)
            self.lost[loss.reason] = self.lost.get(loss.reason, 0) + loss.count

    def take_losses(self) -> list[Loss]:
        """Losses since the last call, for the processor to report as agent.loss."""
        with self._cond:
            losses, self._losses = self._losses, []
            return losses

    @property
    def dropped(self) -> int:
        """Events lost from the spool for any reason (agent.health spool_dropped)."""
        with self._cond:
            return sum(self.lost.values())

    def pending(self) -> int:
        """Events spooled and not yet acknowledged."""
        with self._cond:
            return sum(s.unacked for s in self._segments) + len(self._buf_seqs)

    def size_bytes(self) -> int:
        with self._cond:
            return self._bytes

    def wait_drained(self, timeout: float) -> bool:
        """Block until everything spooled has been acknowledged (or timeout)."""
        self.flush()
        with self._cond:
            return self._cond.wait_for(lambda: self.pending() == 0, timeout)

    def close(self) -> None:
        """Write and sync what is buffered, remember the ack position, unlock."""
        with self._cond:
            self._flush_locked()
            if self._fd >= 0:
                with contextlib.suppress(OSError):
                    os.fdatasync(self._fd)
                os.close(self._fd)
                self._fd = -1
            self._persist_ack()
            for fd in self._read_fds.values():
                os.close(fd)
            self._read_fds.clear()
            os.close(self._lock_fd)
