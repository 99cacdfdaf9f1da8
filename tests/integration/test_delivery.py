"""Nothing lost, nothing duplicated: the delivery path under faults (issue #6).

Real processes throughout: the eBPF agent sees a workload process open a
GPU-named device node exactly K times, and the events travel through the
agent's disk spool and gRPC stream to a collector subprocess and its SQLite
file, while these tests stop the collector, SIGKILL the agent or the
collector, cut the TCP connection, or fill the spool's disk.

Each test checks the store directly: the K events are there exactly once, and
every run's seq numbers are gap-free (or the gaps are exactly the losses the
agent reported).
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import spoolfile
from gpuaudit.v1 import events_pb2
from tests.capabilities import require_bpf
from tests.integration.harness import Agent, Collector, null_device, wait_for, wait_node_ready
from tests.integration.proxy import TcpProxy

pytestmark = [pytest.mark.integration, pytest.mark.bpf]

K = 4999  # a prime: a miscount cannot hide behind a round batch size


@pytest.fixture(scope="module")
def null_gpu_node() -> Iterator[Path]:
    """A GPU-named node that opens like /dev/null (1:3); this module's own, so a
    parallel test session's fixture cannot remove it under these tests."""
    with null_device(Path("/dev/nvidia-gpuaudit-delivery")) as path:
        yield path


@pytest.fixture
def col(tmp_path: Path) -> Iterator[Collector]:
    c = Collector(tmp_path / "events.db")
    yield c
    c.stop()


def restart(col: Collector, kill: bool = False) -> Collector:
    """Stop ``col`` (SIGKILL if ``kill``) and start a new one on the same address and db."""
    if kill:
        col.proc.kill()
        col.proc.wait()
    col.stop()
    return Collector(col.db, "--listen", col.address)


def start_agent(target: str, node: str, tmp: Path, *extra: str) -> Agent:
    require_bpf()
    return Agent(target, node, tmp / f"agent-{time.monotonic_ns()}.log",
                 "--spool-dir", str(tmp / "spool"), *extra)


def open_device(path: Path, n: int, pause_every: int = 0, pause_s: float = 0.0
                ) -> subprocess.Popen[bytes]:
    """A process that opens ``path`` ``n`` times (optionally pausing, to spread them)."""
    code = (
        "import os, sys, time\n"
        f"for i in range({n}):\n"
        f"    os.close(os.open({str(path)!r}, os.O_RDONLY))\n"
        f"    if {pause_every} and i % {pause_every or 1} == 0: time.sleep({pause_s})\n"
    )
    return subprocess.Popen([sys.executable, "-c", code])


def stored_opens(col: Collector, node: str, pid: int) -> int:
    with sqlite3.connect(f"file:{col.db}?mode=ro", uri=True) as db:
        return int(db.execute(
            "SELECT COUNT(*) FROM events WHERE node = ? AND type = 'gpu.open' AND pid = ?",
            (node, pid)).fetchone()[0])


def runs(col: Collector, node: str) -> dict[str, list[int]]:
    """seq numbers stored per agent run (boot_id) of ``node``."""
    with sqlite3.connect(f"file:{col.db}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT boot_id, seq FROM events WHERE node = ? AND boot_id NOT LIKE"
                          " 'collector-%' ORDER BY boot_id, seq", (node,)).fetchall()
    out: dict[str, list[int]] = {}
    for boot_id, seq in rows:
        out.setdefault(boot_id, []).append(seq)
    return out


def assert_gap_free(col: Collector, node: str) -> None:
    for boot_id, seqs in runs(col, node).items():
        assert seqs == list(range(1, len(seqs) + 1)), f"run {boot_id} has gaps or duplicates"
    assert not col.query(types=["agent.gap"], nodes=[node]), "collector raised agent.gap"


def wait_stored(col: Collector, node: str, pid: int, want: int, timeout: float = 90) -> None:
    try:
        wait_for(lambda: stored_opens(col, node, pid) >= want, timeout)
    except AssertionError:
        raise AssertionError(f"{stored_opens(col, node, pid)} of {want} events stored") from None
    time.sleep(1.5)  # anything extra (a duplicate) would land now
    assert stored_opens(col, node, pid) == want


def spooled_opens(spool: Path, pid: int) -> int:
    """gpu.open events of ``pid`` sitting in the spool files."""
    n = 0
    for seg in sorted(spool.glob(spoolfile.SEGMENT_GLOB)):
        data = seg.read_bytes()
        _, start = spoolfile.read_header(data)
        for rec in spoolfile.iter_records(data, start, len(data)):
            ev = events_pb2.Event.FromString(rec.payload)
            n += ev.type == "gpu.open" and ev.process.pid == pid
    return n


def test_collector_down_then_back_all_k_stored_once(
        col: Collector, tmp_path: Path, null_gpu_node: Path) -> None:
    agent = start_agent(col.address, "dl-down", tmp_path)
    try:
        wait_node_ready(col, "dl-down", "ebpf", timeout=90)
        col.stop()
        work = open_device(null_gpu_node, K)
        assert work.wait(60) == 0
        time.sleep(3)  # the agent keeps producing (heartbeats) into its spool
        col = restart(col)
        wait_stored(col, "dl-down", work.pid, K)
        assert_gap_free(col, "dl-down")
    finally:
        agent.stop()
        col.stop()


def test_agent_kill_9_while_undelivered_then_restart_no_loss(
        col: Collector, tmp_path: Path, null_gpu_node: Path) -> None:
    with TcpProxy(col.address) as proxy:
        agent = start_agent(proxy.address, "dl-kill-agent", tmp_path)
        wait_node_ready(col, "dl-kill-agent", "ebpf", timeout=90)
        proxy.block()  # nothing is acknowledged from here on
        work = open_device(null_gpu_node, K)
        assert work.wait(60) == 0
        wait_for(lambda: spooled_opens(tmp_path / "spool", work.pid) == K, 60)
        agent.proc.send_signal(signal.SIGKILL)
        agent.stop()
        proxy.unblock()
        proxy.cut()  # the dead agent's hung connection
        agent = start_agent(proxy.address, "dl-kill-agent", tmp_path)
        try:
            wait_stored(col, "dl-kill-agent", work.pid, K)
            assert_gap_free(col, "dl-kill-agent")
            assert len(runs(col, "dl-kill-agent")) == 2
        finally:
            agent.stop()


def test_agent_kill_9_mid_stream_every_spooled_event_arrives_once(
        col: Collector, tmp_path: Path, null_gpu_node: Path) -> None:
    agent = start_agent(col.address, "dl-mid", tmp_path)
    wait_node_ready(col, "dl-mid", "ebpf", timeout=90)
    work = open_device(null_gpu_node, K, pause_every=500, pause_s=0.2)
    time.sleep(0.8)
    agent.proc.send_signal(signal.SIGKILL)
    agent.stop()
    first_run = max(runs(col, "dl-mid"), key=lambda b: len(runs(col, "dl-mid")[b]))
    last_spooled = max((seq for seg in (tmp_path / "spool").glob(spoolfile.SEGMENT_GLOB)
                        for _, seq in spoolfile.scan(seg.read_bytes()).records), default=0)
    assert work.wait(60) == 0
    agent = start_agent(col.address, "dl-mid", tmp_path)
    try:
        wait_for(lambda: runs(col, "dl-mid").get(first_run, [0])[-1] >= last_spooled, 60)
        time.sleep(1.5)
        assert_gap_free(col, "dl-mid")
        assert runs(col, "dl-mid")[first_run][-1] == last_spooled
    finally:
        agent.stop()


def test_collector_kill_9_mid_batches_nothing_acknowledged_is_missing(
        col: Collector, tmp_path: Path, null_gpu_node: Path) -> None:
    agent = start_agent(col.address, "dl-kill-col", tmp_path)
    try:
        wait_node_ready(col, "dl-kill-col", "ebpf", timeout=90)
        work = open_device(null_gpu_node, K, pause_every=250, pause_s=0.1)
        wait_for(lambda: stored_opens(col, "dl-kill-col", work.pid) > 0, 30, every=0.05)
        col = restart(col, kill=True)
        assert work.wait(60) == 0
        wait_stored(col, "dl-kill-col", work.pid, K)
        assert_gap_free(col, "dl-kill-col")
    finally:
        agent.stop()
        col.stop()


def test_connection_cut_repeatedly_all_k_stored_once(
        col: Collector, tmp_path: Path, null_gpu_node: Path) -> None:
    with TcpProxy(col.address) as proxy:
        agent = start_agent(proxy.address, "dl-cut", tmp_path)
        try:
            wait_node_ready(col, "dl-cut", "ebpf", timeout=90)
            proxy.cut_every(0.3)
            work = open_device(null_gpu_node, K, pause_every=250, pause_s=0.15)
            assert work.wait(60) == 0
            time.sleep(2)
            proxy.cut_every(None)
            wait_stored(col, "dl-cut", work.pid, K)
            assert_gap_free(col, "dl-cut")
            assert proxy.stats().resets >= 3
        finally:
            agent.stop()


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)], check=True)
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_spool_disk_full_loss_is_counted_reported_and_exact(
        col: Collector, tmp_path: Path, tiny_disk: Path, null_gpu_node: Path) -> None:
    require_bpf()
    agent = Agent(col.address, "dl-full", tmp_path / "agent.log",
                  "--spool-dir", str(tiny_disk / "spool"))
    try:
        wait_node_ready(col, "dl-full", "ebpf", timeout=90)
        col.stop()
        work = open_device(null_gpu_node, 4 * K)  # ~1.5 MB of events for a 512 KB disk
        assert work.wait(60) == 0
        time.sleep(3)
        assert agent.proc.poll() is None, agent.output()
        col = restart(col)
        boot_id = next(iter(runs(col, "dl-full")))
        wait_for(lambda: col.query(types=["agent.gap"], nodes=["dl-full"]), 60)
        time.sleep(2)
        stored = set(runs(col, "dl-full")[boot_id])
        losses = [e.agent_loss for e in col.query(types=["agent.loss"], nodes=["dl-full"])]
        lost = {s for lo in losses if lo.lost_boot_id == boot_id
                for s in range(lo.first_seq, lo.last_seq + 1)}
        assert lost, "no agent.loss with a seq range"
        assert {lo.reason for lo in losses} <= {"spool_full", "spool_write"}
        assert sum(lo.count for lo in losses if lo.lost_boot_id == boot_id) == len(lost)
        assert not stored & lost
        assert stored | lost == set(range(1, max(stored) + 1))
        gaps = [e.agent_gap for e in col.query(types=["agent.gap"], nodes=["dl-full"])]
        skipped = {s for g in gaps if g.cause == "seq_skip"
                   for s in range(g.first_seq, g.last_seq + 1)}
        assert skipped == lost
        assert any(g.cause == "reported" for g in gaps)
        assert agent.proc.poll() is None
    finally:
        agent.stop()
        col.stop()


def test_chunk_layout_stores_all_k_through_a_connection_cut(
        tmp_path: Path, null_gpu_node: Path) -> None:
    """The `--store chunks` layout end to end: same answers as the row layout."""
    col = Collector(tmp_path / "chunks.db", "--store", "chunks")
    try:
        with TcpProxy(col.address) as proxy:
            agent = start_agent(proxy.address, "dl-chunks", tmp_path)
            try:
                wait_node_ready(col, "dl-chunks", "ebpf", timeout=90)
                work = open_device(null_gpu_node, K, pause_every=500, pause_s=0.1)
                time.sleep(0.5)
                proxy.cut()
                assert work.wait(60) == 0

                def stored() -> int:
                    return len(col.query(types=["gpu.open"], nodes=["dl-chunks"], pid=work.pid))

                wait_for(lambda: stored() >= K, 90)
                time.sleep(1.5)
                assert stored() == K
                health = col.query(types=["agent.health"], nodes=["dl-chunks"])
                seqs = sorted(e.seq for e in col.query(nodes=["dl-chunks"], newest=False)
                              if e.boot_id == health[0].boot_id)
                assert seqs == list(range(1, len(seqs) + 1))
                assert not col.query(types=["agent.gap"], nodes=["dl-chunks"])
            finally:
                agent.stop()
    finally:
        col.stop()
