"""The disk spool: real files, real crashes (a child killed with SIGKILL), real
disk-full (a tiny tmpfs), and exact loss accounting throughout."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from agent import spoolfile as fmt
from agent.loss import LossReporter
from agent.spool import Chunk, DiskSpool, SpoolError
from gpuaudit.v1 import events_pb2
from tests.capabilities import require

BIG = 1 << 20


def payload(seq: int, boot: str = "b1", pad: int = 0) -> bytes:
    ev = events_pb2.Event(type="gpu.open", node="n1", boot_id=boot, seq=seq)
    ev.gpu_open.path = "/dev/nvidia0" + "x" * pad
    return ev.SerializeToString()


def fill(spool: DiskSpool, seqs: range, boot: str = "b1", pad: int = 0) -> None:
    for seq in seqs:
        spool.append(seq, payload(seq, boot, pad))
    spool.flush()


def drain(spool: DiskSpool, ack: bool = True) -> list[tuple[str, int]]:
    """Read everything readable, in order, as (boot_id, seq); ack as we go."""
    out: list[tuple[str, int]] = []
    pos = spool.start()
    while (chunk := spool.read(pos, 7, BIG)) is not None:
        out += [(chunk.boot_id, events_pb2.Event.FromString(p).seq) for p in chunk.payloads]
        pos = chunk.end
        if ack:
            spool.ack(chunk)
    return out


def lost_seqs(spool: DiskSpool) -> set[int]:
    return {s for loss in spool.take_losses()
            for s in range(loss.first_seq, loss.last_seq + 1)}


def test_events_are_readable_after_flush_and_gone_after_ack(tmp_path: Path) -> None:
    spool = DiskSpool(tmp_path, "b1")
    spool.append(1, payload(1))
    assert spool.read(spool.start(), 10, BIG) is None  # buffered, not yet written
    fill(spool, range(2, 31))
    assert spool.pending() == 30
    assert [s for _, s in drain(spool)] == list(range(1, 31))
    assert spool.pending() == 0 and spool.wait_drained(0)
    assert spool.dropped == 0


def test_batches_never_mix_runs_and_a_restart_replays_the_unacked(tmp_path: Path) -> None:
    first = DiskSpool(tmp_path, "run1")
    fill(first, range(1, 11), "run1")
    chunk = first.read(first.start(), 4, BIG)
    assert chunk is not None
    first.ack(chunk)  # seq 1-4 delivered
    first.close()
    second = DiskSpool(tmp_path, "run2")
    fill(second, range(1, 4), "run2")
    got = []
    pos = second.start()
    while (c := second.read(pos, 100, BIG)) is not None:
        assert len({c.boot_id}) == 1
        got.append((c.boot_id, c.first_seq, c.last_seq))
        pos = c.end
        second.ack(c)
    assert got == [("run1", 5, 10), ("run2", 1, 3)]
    second.close()
    assert not list(tmp_path.glob(fmt.SEGMENT_GLOB)) or DiskSpool(tmp_path, "r3").pending() == 0


def test_unsaved_ack_only_causes_resends_never_loss(tmp_path: Path) -> None:
    spool = DiskSpool(tmp_path, "b1")
    fill(spool, range(1, 21))
    drain(spool)  # acked in memory; the ack file is written lazily
    os.close(spool._lock_fd)  # the process "dies" without close()
    again = DiskSpool(tmp_path, "b2")
    replay = [s for _, s in drain(again)]
    assert replay == [] or replay[-1] == 20  # a suffix of what was acked, resent (dedup'd)


def test_kill_9_loses_nothing_that_was_written(tmp_path: Path) -> None:
    child = (
        "import os, signal, sys\n"
        "from agent.spool import DiskSpool\n"
        "from tests.unit.test_spool import payload\n"
        "s = DiskSpool(sys.argv[1], 'dead', fsync_interval_s=3600)\n"
        "for seq in range(1, 1001):\n"
        "    s.append(seq, payload(seq, 'dead'))\n"
        "    if seq % 97 == 0: s.flush()\n"
        "s.flush()\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", child, str(tmp_path)], cwd=Path.cwd())
    assert proc.returncode == -signal.SIGKILL
    spool = DiskSpool(tmp_path, "new")
    assert drain(spool) == [("dead", s) for s in range(1, 1001)]
    assert spool.take_losses() == []


def test_a_torn_tail_is_cut_and_reported_with_its_seq(tmp_path: Path) -> None:
    spool = DiskSpool(tmp_path, "b1")
    fill(spool, range(1, 6))
    spool.close()
    seg = next(tmp_path.glob(fmt.SEGMENT_GLOB))
    with seg.open("ab") as f:  # a crash in the middle of writing seq 6
        f.write(fmt.encode(6, payload(6))[:-3])
    spool = DiskSpool(tmp_path, "b2")
    losses = spool.take_losses()
    assert [(lo.reason, lo.count, lo.lost_boot_id, lo.first_seq, lo.last_seq)
            for lo in losses] == [("spool_corrupt", 1, "b1", 6, 6)]
    assert [s for _, s in drain(spool)] == [1, 2, 3, 4, 5]


def test_damage_in_the_middle_skips_only_the_damaged_record(tmp_path: Path) -> None:
    spool = DiskSpool(tmp_path, "b1")
    fill(spool, range(1, 11))
    spool.close()
    seg = next(tmp_path.glob(fmt.SEGMENT_GLOB))
    data = bytearray(seg.read_bytes())
    _, start = fmt.read_header(bytes(data))
    fourth = start + 3 * len(fmt.encode(1, payload(1)))
    data[fourth + fmt.RECORD.size + 2] ^= 0xFF  # flip a payload byte of seq 4
    seg.write_bytes(bytes(data))
    spool = DiskSpool(tmp_path, "b2")
    assert lost_seqs(spool) == {4}
    assert [s for _, s in drain(spool)] == [1, 2, 3, 5, 6, 7, 8, 9, 10]


def test_full_spool_drops_oldest_and_accounts_for_every_seq(tmp_path: Path) -> None:
    spool = DiskSpool(tmp_path, "b1", max_bytes=64 * 1024, segment_bytes=8 * 1024)
    fill(spool, range(1, 2001), pad=40)  # ~150 KB into a 64 KB spool, nothing acked
    kept = {s for _, s in drain(spool)}
    lost = lost_seqs(spool)
    assert kept and lost
    assert kept | lost == set(range(1, 2001)) and not kept & lost
    assert spool.dropped == len(lost)
    assert min(kept) > max(lost)  # the oldest went
    assert spool.size_bytes() <= 64 * 1024


def test_drop_newest_keeps_the_oldest(tmp_path: Path) -> None:
    spool = DiskSpool(tmp_path, "b1", max_bytes=32 * 1024, policy="drop_newest",
                      segment_bytes=8 * 1024)
    fill(spool, range(1, 1001), pad=40)
    kept = {s for _, s in drain(spool)}
    lost = lost_seqs(spool)
    assert kept | lost == set(range(1, 1001)) and min(lost) > max(kept)


def test_partially_delivered_segment_reports_only_undelivered(tmp_path: Path) -> None:
    spool = DiskSpool(tmp_path, "b1", max_bytes=64 * 1024, segment_bytes=8 * 1024)
    fill(spool, range(1, 11), pad=40)
    chunk = spool.read(spool.start(), 5, BIG)
    assert isinstance(chunk, Chunk)
    spool.ack(chunk)  # 1-5 delivered
    fill(spool, range(11, 2001), pad=40)
    kept = {s for _, s in drain(spool)}
    lost = lost_seqs(spool)
    assert kept | lost == set(range(6, 2001)) and not kept & lost


def test_disk_full_is_counted_and_the_spool_keeps_working(tmp_path: Path) -> None:
    require(os.geteuid() == 0, "mounting a tmpfs needs root")
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], check=True)
    try:
        # default limits (256 MiB) far above the disk: the disk fills first (ENOSPC),
        # and segments are sized from the disk so there is always one to drop
        spool = DiskSpool(mnt, "b1")
        fill(spool, range(1, 5001), pad=40)
        kept = {s for _, s in drain(spool)}
        lost = lost_seqs(spool)
        assert lost and kept | lost == set(range(1, 5001)) and not kept & lost
        assert set(spool.lost) <= {"spool_full", "spool_write"}
        # everything is delivered now, yet the disk is still full of the
        # delivered head segment: writing must free it, not lose new events
        fill(spool, range(5001, 6001), pad=40)  # ~100 KB: fits once that space is freed
        assert [s for _, s in drain(spool)] == list(range(5001, 6001))
        assert spool.take_losses() == []
        spool.close()
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_one_agent_per_spool_directory(tmp_path: Path) -> None:
    DiskSpool(tmp_path, "b1")
    with pytest.raises(SpoolError, match="in use by another gpuaudit agent"):
        DiskSpool(tmp_path, "b2")


def test_unusable_directory_says_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(SpoolError, match="--spool-dir"):
        DiskSpool(tmp_path / "file" / "spool", "b1")


def test_wait_wakes_when_records_are_written(tmp_path: Path) -> None:
    spool = DiskSpool(tmp_path, "b1")
    pos = spool.start()
    timer = threading.Timer(0.05, lambda: fill(spool, range(1, 2)))
    timer.start()
    spool.wait(pos, timeout=10)
    timer.join()
    assert spool.read(pos, 10, BIG) is not None


def test_loss_reporter_turns_counters_and_spool_losses_into_events(tmp_path: Path) -> None:
    spool = DiskSpool(tmp_path, "b1", max_bytes=64 * 1024, segment_bytes=8 * 1024)
    kernel = [0]
    now = [0.0]
    rep = LossReporter({"kernel": lambda: kernel[0]}, spool, clock=lambda: now[0])
    kernel[0] = 7
    fill(spool, range(1, 2001), pad=40)
    assert rep.due() == []  # not yet a second since the last report
    now[0] = 1.5
    records = rep.due()
    by_reason = {r.payload.reason: r.payload for r in records}  # type: ignore[attr-defined]
    assert set(by_reason) == {"kernel", "spool_full"}
    assert (by_reason["kernel"].count, by_reason["kernel"].total) == (7, 7)
    full = by_reason["spool_full"]
    assert full.count == full.total == spool.dropped
    assert (full.lost_boot_id, full.first_seq) == ("b1", 1)
    assert full.last_seq - full.first_seq + 1 == full.count  # contiguous oldest run
    now[0] = 3.0
    assert rep.due() == []  # nothing new
