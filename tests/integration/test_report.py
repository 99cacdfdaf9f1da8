"""`gpuaudit report` against a real collector, its HTML looked at in a real headless browser.

A node sends a day's worth of audit events over mutual TLS: two users on one
GPU (one session ended, one still running), a library from a home directory
and a malicious checkpoint, a reported loss. The report must say who used the
GPU and for how long, list the code with its hash and verdict, and show the
loss under coverage -- in HTML (rendered by Chromium: the timeline bars are
drawn in each user's color), JSON and CSV.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from collector.report.html import color_for
from gpuaudit.v1 import collector_pb2, collector_pb2_grpc, events_pb2
from tests.capabilities import require
from tests.integration.harness import Collector, TestPki, channel, tls_args, wait_for
from tests.pngpixels import colors

pytestmark = pytest.mark.integration

NODE = "report-node"
HOUR = 3600 * 10**9
HOSTILE_PATH = "/home/mallory/<script>alert(1)</script>/libevil.so"
BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser")


def _event(seq: int, type_: str, t_ns: int, pid: int = 0, user: str = "") -> events_pb2.Event:
    ev = events_pb2.Event(type=type_, node=NODE, boot_id="report-run", seq=seq)
    ev.time.FromNanoseconds(t_ns)
    if pid:
        ev.process.pid, ev.process.user, ev.process.exe = pid, user, "/usr/bin/python3"
        ev.process.uid = {"alice": 1001, "bob": 1002}[user]
    return ev


def day_of_events(now_ns: int) -> list[events_pb2.Event]:
    t0 = now_ns - 6 * HOUR
    out = []

    def add(type_: str, at: int, pid: int = 0, user: str = "") -> events_pb2.Event:
        ev = _event(len(out) + 1, type_, at, pid, user)
        out.append(ev)
        return ev

    dev = add("gpu.device", t0).gpu_device
    dev.index, dev.minor_number, dev.uuid, dev.name = 0, 0, "GPU-aaaa", "NVIDIA H100 80GB HBM3"
    add("gpu.open", t0 + HOUR, 100, "alice").gpu_open.MergeFrom(
        events_pb2.GpuOpen(path="/dev/nvidia0", fd=5, source="ebpf"))
    lib = add("code.load", t0 + HOUR + 10**9, 100, "alice").code_load
    lib.path, lib.sha256, lib.kind, lib.writable_by_others = HOSTILE_PATH, "ab" * 32, "file", True
    add("process.exit", t0 + 3 * HOUR, 100, "alice").process_exit.held_gpu = True
    add("gpu.open", t0 + 4 * HOUR, 200, "bob").gpu_open.MergeFrom(
        events_pb2.GpuOpen(path="/dev/nvidia0", fd=5, source="ebpf"))
    scan = add("checkpoint.scan", t0 + 4 * HOUR + 10**9, 200, "bob").checkpoint_scan
    scan.path, scan.sha256, scan.verdict = "/data/ckpt/evil.pt", "cd" * 32, "malicious"
    scan.globals.append("os.system")
    loss = add("agent.loss", t0 + 5 * HOUR).agent_loss
    loss.reason, loss.count, loss.total = "kernel", 7, 7
    add("agent.health", now_ns - 10**9).agent_health.interval_s = 5
    return out


@pytest.fixture(scope="module")
def col(tmp_path_factory: pytest.TempPathFactory, pki: TestPki) -> Iterator[Collector]:
    c = Collector(tmp_path_factory.mktemp("report") / "events.db", pki=pki)
    with channel(c.address, pki.node(NODE)) as ch:
        stub = collector_pb2_grpc.CollectorStub(ch)
        batch = collector_pb2.EventBatch(batch_id=1, events=day_of_events(time.time_ns()))
        acks = list(stub.Ingest(iter([batch]), timeout=10))
    assert acks[0].stored == len(batch.events)
    # the rules raise a finding about the malicious checkpoint: the report lists it
    wait_for(lambda: list(c.stub.ListFindings(collector_pb2.FindingQuery(), timeout=10)),
             timeout=60)
    yield c
    c.stop()


def report(col: Collector, pki: TestPki, fmt: str, out: Path, *extra: str) -> str:
    cmd = [sys.executable, "-m", "collector.cli", "report", "--collector", col.address,
           "--since", "1d", "--format", fmt, "-o", str(out), *extra, *tls_args(pki.reader)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return out.read_text()


def browser() -> str:
    found = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    require(found is not None, "no headless Chromium (apt install chromium-headless-shell)")
    assert found is not None
    return found


def test_html_report_shows_who_used_the_gpu_with_what_code(col, pki, tmp_path) -> None:
    html = report(col, pki, "html", tmp_path / "report.html")
    exe = browser()
    flags = ["--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    url = (tmp_path / "report.html").as_uri()
    dom = subprocess.run([exe, *flags, "--dump-dom", url], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "HOME": str(tmp_path)}).stdout
    # what the browser parsed: both users' sessions drawn, the code and loss listed
    assert dom.count('class="session"') == 4  # 2 sessions x (per-user + per-GPU chart)
    assert 'class="finding-bar"' in dom
    for text in ("alice", "bob", "NVIDIA H100 80GB HBM3", "ab" * 32, "malicious", "os.system",
                 "kernel: 7", "incomplete", "2.00", "checkpoint-malicious"):
        assert text in dom, text
    # the hostile path is text, not markup
    assert "<script>" not in dom and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    shot = tmp_path / "report.png"
    subprocess.run([exe, *flags, f"--screenshot={shot}", "--window-size=1000,900", url],
                   capture_output=True, timeout=60, env={**os.environ, "HOME": str(tmp_path)})
    seen = colors(shot.read_bytes())
    for user in ("alice", "bob"):  # per-GPU timeline bars are colored by user
        rgb = tuple(int(color_for(user)[i:i + 2], 16) for i in (1, 3, 5))
        assert seen[rgb] > 100, (user, rgb)


def test_json_report_has_every_section(col, pki, tmp_path) -> None:
    data = json.loads(report(col, pki, "json", tmp_path / "r.json"))
    sessions = {s["user"]: s for s in data["sessions"]}
    assert sessions["alice"]["ended"] is True and sessions["alice"]["hours"] == 2.0
    assert sessions["bob"]["ended"] is False
    assert sessions["alice"]["gpus"] == ["report-node #0 NVIDIA H100 80GB HBM3"]
    assert [c["detail"] for c in data["checkpoints"]] == ["malicious"]
    assert data["libraries"][0]["path"] == HOSTILE_PATH
    assert data["coverage"][0]["losses"] == {"kernel": 7}


def test_csv_report_one_row_per_session_and_gpu_for_one_user(col, pki, tmp_path) -> None:
    text = report(col, pki, "csv", tmp_path / "r.csv", "--user", "alice")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [(r["user"], r["gpu"], r["hours"], r["ended"]) for r in rows] == [
        ("alice", "report-node #0 NVIDIA H100 80GB HBM3", "2.0000", "yes")]
