"""Findings end to end: real processes do steps of the insider-sabotage playbook
under a real eBPF agent; the real collector's rules raise findings, and
`gpuaudit findings --json` (over mTLS, reader certificate) names the rule,
severity, process and user. A training-like job beside them raises nothing."""

from __future__ import annotations

import json
import os
import pickle
import platform
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import (
    AS_NOBODY,
    BPF_LOAD,
    GPUAUDIT,
    SYS_BPF,
    Agent,
    Collector,
    null_device,
    ready_agent,
    settle,
    tls_args,
    wait_for,
)

pytestmark = [pytest.mark.bpf, pytest.mark.integration]

NODE = "it-node"

# Opens the GPU node given as argv[1], says so, and holds it until killed.
HOLDER = """
import os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
print("open", flush=True)
time.sleep(120)
"""

PTRACE_ATTACH = """
import ctypes as ct, sys
libc = ct.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ct.c_long, ct.c_long, ct.c_void_p, ct.c_void_p]
rc = libc.ptrace(16, int(sys.argv[1]), None, None)   # PTRACE_ATTACH
print(rc, ct.get_errno())
"""


# A training-like job: opens the GPU, imports from the venv, reads a benign
# checkpoint, talks to a peer in the cluster (here: a listener on loopback).
TRAINING = """
import os, pickle, socket, sys, json
fd = os.open(sys.argv[1], os.O_RDWR)
with open(sys.argv[2], "rb") as f:
    weights = pickle.load(f)
s = socket.create_connection(("127.0.0.1", int(sys.argv[3])))
s.sendall(json.dumps(weights).encode())
s.close()
os.close(fd)
"""


@pytest.fixture(scope="module")
def gpu_node() -> Iterator[Path]:
    """A node of our own under the GPU prefix (/dev/null's 1:3, so opens succeed);
    not the shared fixture's path, which another module may remove meanwhile."""
    with null_device(Path("/dev/nvidia-gpuaudit-findings")) as path:
        yield path


def findings(collector: Collector) -> list[dict]:
    """`gpuaudit findings --json` over mTLS with the reader certificate."""
    assert collector.pki is not None
    done = subprocess.run(
        [GPUAUDIT, "findings", "--collector", collector.address, "--json",
         *tls_args(collector.pki.reader)],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def finding_of(collector: Collector, rule: str, pid: int) -> dict:
    """Wait until ``rule`` has a finding about process ``pid``; return it."""
    def look() -> dict | None:
        return next((f for f in findings(collector)
                     if f["rule"] == rule and f.get("process", {}).get("pid") == pid), None)

    found = wait_for(look, timeout=60)
    assert isinstance(found, dict)
    return found


def hold_gpu(node: Path, **as_user: object) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(node)], stdout=subprocess.PIPE,
                            text=True, **as_user)  # type: ignore[call-overload]
    assert proc.stdout is not None and proc.stdout.readline().strip() == "open"
    return proc


def test_root_killing_a_gpu_job_of_nobody_is_a_high_finding(
        collector: Collector, bpf_agent: Agent, gpu_node: Path) -> None:
    holder = hold_gpu(gpu_node, **AS_NOBODY)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(30)
    f = finding_of(collector, "gpu-signal-cross-user", os.getpid())
    assert (f["severity"], f["node"]) == ("high", NODE)
    assert (f["process"]["user"], f["process"]["uid"]) == ("root", 0)
    assert f["process"]["exe"] == os.path.realpath(sys.executable)
    assert "SIGKILL" in f["summary"] and f"GPU process {holder.pid}" in f["summary"]
    assert "nobody" in f["summary"]
    assert f["mitre"] == ["T1489", "T1531"] and f["count"] >= 1
    assert f["events"][0]["node"] == NODE and f["events"][0]["seq"] > 0


def test_nobody_trying_to_ptrace_a_gpu_job_of_root_is_found(
        collector: Collector, bpf_agent: Agent, gpu_node: Path) -> None:
    holder = hold_gpu(gpu_node)
    try:
        tracer = subprocess.Popen([sys.executable, "-c", PTRACE_ATTACH, str(holder.pid)],
                                  stdout=subprocess.PIPE, text=True, **AS_NOBODY)
        out, _ = tracer.communicate(timeout=60)
        assert out.split()[0] == "-1"  # refused: still an attempt on someone else's job
        f = finding_of(collector, "process-ptrace-cross-user", tracer.pid)
        assert (f["severity"], f["process"]["user"]) == ("high", "nobody")
        assert "PTRACE_ATTACH" in f["summary"] and "refused" in f["summary"]
        gpu = finding_of(collector, "gpu-ptrace", tracer.pid)
        assert gpu["severity"] == "medium" and str(holder.pid) in gpu["summary"]
    finally:
        holder.kill()
        holder.wait(30)


def test_a_foreign_bpf_program_load_is_found(collector: Collector, bpf_agent: Agent) -> None:
    machine = platform.machine()
    if machine not in SYS_BPF:
        pytest.skip(f"no bpf syscall number for {machine}")
    loader = subprocess.Popen([sys.executable, "-c", BPF_LOAD, str(SYS_BPF[machine]), "gpuaudit_f"])
    assert loader.wait(60) == 0
    f = finding_of(collector, "bpf-foreign-load", loader.pid)
    assert (f["severity"], f["process"]["user"]) == ("high", "root")
    assert "socket_filter" in f["summary"] and "gpuaudit_f" in f["summary"]


def test_an_agent_that_goes_silent_is_found(collector: Collector, bpf_agent: Agent,
                                            tmp_path: Path) -> None:
    other = ready_agent(collector, "it-silent", "procfs", tmp_path / "silent.log",
                        "--mode", "procfs")
    other.proc.send_signal(signal.SIGKILL)  # no goodbye: heartbeats just stop
    other.stop()

    def silent() -> dict | None:
        return next((f for f in findings(collector)
                     if f["rule"] == "audit-agent-silent" and f["node"] == "it-silent"), None)

    f = wait_for(silent, timeout=90)
    assert isinstance(f, dict)
    assert f["severity"] == "high" and "process" not in f
    assert f["events"][0]["boot_id"].startswith("collector-")


def test_a_training_like_job_raises_nothing(collector: Collector, bpf_agent: Agent,
                                            gpu_node: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "weights.pkl"
    ckpt.write_bytes(pickle.dumps({"layer0": [0.1, 0.2], "step": 100}))
    with socket.socket() as peer:
        peer.bind(("127.0.0.1", 0))
        peer.listen(1)
        job = subprocess.Popen([sys.executable, "-c", TRAINING, str(gpu_node), str(ckpt),
                                str(peer.getsockname()[1])])
        conn, _ = peer.accept()
        conn.recv(4096)
        conn.close()
        assert job.wait(60) == 0
    settle(collector, NODE)
    opened = collector.query(types=["gpu.open"], pid=job.pid)
    assert opened, "the job's GPU open was not stored"
    # the follower has read past the job's events once a later heartbeat's
    # finding-free evaluation is committed; a marker finding proves it
    marker = subprocess.Popen([sys.executable, "-c", BPF_LOAD, str(SYS_BPF.get(
        platform.machine(), 321)), "gpuaudit_f"])
    marker.wait(60)
    finding_of(collector, "bpf-foreign-load", marker.pid)
    assert [f for f in findings(collector) if f.get("process", {}).get("pid") == job.pid] == []
