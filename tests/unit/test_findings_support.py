"""Builders and a collector harness shared by the findings and rules tests (no tests here).

Events are built from their JSON form's field names, so a test reads like the
contract: ``event("process.signal", process_signal={"signal": 9, ...})``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from collector.server import BackgroundCollector, CollectorConfig, RunningCollector
from gpuaudit.v1 import collector_pb2, collector_pb2_grpc, events_pb2

T0_NS = 1_700_000_000 * 1_000_000_000
OWN_TYPES = frozenset({"agent.silent", "agent.gap", "agent.rejected"})
ALICE = {"pid": 4242, "uid": 1000, "user": "alice", "comm": "python3",
         "exe": "/home/alice/venv/bin/python3", "slurm_job": "42"}
MALLORY = {"pid": 6666, "uid": 1001, "user": "mallory", "comm": "sh", "exe": "/usr/bin/bash"}
ROOT = {"pid": 1, "uid": 0, "user": "root", "comm": "systemd", "exe": "/usr/lib/systemd/systemd"}


def event(type_: str, *, node: str = "n1", t_s: float = 0.0, process: dict | None = None,
          **payload: dict) -> events_pb2.Event:
    """An event of ``type_`` at T0 + ``t_s``; ``process`` None: node-level; seq left 0."""
    ev = events_pb2.Event(type=type_, node=node, boot_id="b-" + node)
    ev.time.FromNanoseconds(T0_NS + int(t_s * 1e9))
    if process is not None:
        json_format.ParseDict(process, ev.process)
    field = type_.replace(".", "_", 1)
    json_format.ParseDict(payload.get(field, {}), getattr(ev, field))
    getattr(ev, field).SetInParent()
    return ev


def gpu_open(process: dict, errno: int = 0, t_s: float = 0.0, node: str = ""
             ) -> events_pb2.Event:
    """An eBPF gpu.open of /dev/nvidia0 (refused with ``errno`` when not 0)."""
    return event("gpu.open", node=node, t_s=t_s, process=process,
                 gpu_open={"path": "/dev/nvidia0", "errno": errno, "fd": -1 if errno else 4,
                           "source": "ebpf"})


def rfc3339(t_s: float) -> str:
    """T0 + ``t_s`` seconds in the JSON form of a Timestamp."""
    ts = Timestamp()
    ts.FromNanoseconds(T0_NS + int(t_s * 1e9))
    return ts.ToJsonString()


def on_node(events: list[events_pb2.Event], node: str) -> list[events_pb2.Event]:
    """The events, moved to ``node`` (a boot of its own): one case per node
    keeps the cases' state windows apart."""
    for ev in events:
        ev.node, ev.boot_id = node, "b-" + node
    return events


def numbered(events: list[events_pb2.Event], start: int = 1) -> list[events_pb2.Event]:
    """``events`` with seq start, start+1, ... per (node, boot_id) in order."""
    nxt: dict[tuple[str, str], int] = {}
    for ev in events:
        run = (ev.node, ev.boot_id)
        ev.seq = nxt.get(run, start)
        nxt[run] = ev.seq + 1
    return events


def training_job(node: str) -> list[events_pb2.Event]:
    """A normal training-like job: GPU, venv libraries, a safe checkpoint, in-cluster peers."""
    me = dict(ALICE)
    return [
        event("process.exec", node=node, process=me, process_exec={
            "filename": me["exe"], "argv": ["python3", "train.py"], "source": "ebpf",
            "preload": {"PYTHONPATH": "/home/alice/src",
                        "LD_LIBRARY_PATH": "/usr/local/cuda/lib64"}}),
        event("gpu.open", node=node, t_s=1, process=me, gpu_open={
            "path": "/dev/nvidia0", "flags": 2, "fd": 5, "source": "ebpf"}),
        event("gpu.process", node=node, t_s=1.5, process=me, gpu_process={
            "state": "appeared", "gpu_uuid": "GPU-1", "kind": "compute", "seen_open": True}),
        event("code.load", node=node, t_s=2, process=me, code_load={
            "path": "/home/alice/venv/lib/python3.11/site-packages/torch/lib/libtorch.so",
            "sha256": "ab" * 32, "file_uid": 1000, "kind": "file", "source": "mmap"}),
        event("code.load", node=node, t_s=2, process=me, code_load={
            "path": "/usr/lib/x86_64-linux-gnu/libcuda.so.1", "file_uid": 0, "kind": "file"}),
        event("checkpoint.scan", node=node, t_s=3, process=me, checkpoint_scan={
            "path": "/data/ckpt/model.pt", "sha256": "cd" * 32, "verdict": "safe",
            "scanner": "picklescan", "format": "torch_zip"}),
        event("file.write", node=node, t_s=3.5, process=me, file_write={
            "path": "/home/alice/venv/lib/python3.11/site-packages/x.pyc", "op": "create",
            "file_uid": 1000, "tree": "/home/alice/venv/lib/python3.11/site-packages"}),
        event("net.connect", node=node, t_s=4, process=me, net_connect={
            "family": "ipv4", "protocol": "tcp", "remote_addr": "10.0.0.5", "remote_port": 29500,
            "peer_in_cluster": True, "result": 0}),
        event("nccl.comm_end", node=node, t_s=60, process=me, nccl_comm_end={
            "function": "ncclCommDestroy", "comm_id": "c0ffee"}),
        event("process.exit", node=node, t_s=61, process=me, process_exit={"held_gpu": True}),
    ]


class FindingsHarness:
    """A real collector (in process, real gRPC, SQLite) whose findings follower runs."""

    def __init__(self, running: RunningCollector) -> None:
        self.running = running
        self.channel = grpc.insecure_channel(running.address)
        self.stub = collector_pb2_grpc.CollectorStub(self.channel)
        self._batch = 0

    def ingest(self, events: list[events_pb2.Event]) -> None:
        """Send ``events`` (numbered if needed) through Ingest, one batch per run, and wait.

        Events only the collector raises (agent.silent, .gap, .rejected) go the
        way the watchdog and ingest store them: ``storage.store_own``.
        """
        storage = self.running.storage
        for ev in [e for e in events if e.type in OWN_TYPES]:
            ev.boot_id = storage.own.boot_id
            storage.store_own(ev)
        events = [e for e in events if e.type not in OWN_TYPES]
        if not events:
            self.settle()
            return
        if any(ev.seq == 0 for ev in events):
            numbered(events)
        runs: dict[tuple[str, str], list[events_pb2.Event]] = {}
        for ev in events:
            runs.setdefault((ev.node, ev.boot_id), []).append(ev)
        batches = []
        for run in runs.values():
            self._batch += 1
            batches.append(collector_pb2.EventBatch(batch_id=self._batch, events=run))
        acks = list(self.stub.Ingest(iter(batches), timeout=30))
        assert len(acks) == len(batches)
        self.settle()

    def settle(self, timeout: float = 30) -> None:
        """Until the follower has evaluated everything stored."""
        follower = self.running.findings
        assert follower is not None
        deadline = time.monotonic() + timeout
        while not follower.caught_up():
            assert time.monotonic() < deadline, "findings follower did not catch up"
            time.sleep(0.02)

    def findings(self, node: str | None = None, **query: object) -> list[collector_pb2.Finding]:
        """Stored findings (over ListFindings), of ``node`` only when given."""
        q = collector_pb2.FindingQuery(**query)  # type: ignore[arg-type]
        found = list(self.stub.ListFindings(q, timeout=30))
        return [f for f in found if node is None or f.node == node]

    def rules(self, node: str) -> set[str]:
        """The rule ids that fired for ``node``."""
        return {f.rule for f in self.findings(node)}


@contextmanager
def findings_collector(tmp: Path, store: str = "rows",
                       rules_dir: str | None = None) -> Iterator[FindingsHarness]:
    """A :class:`FindingsHarness` on a fresh database under ``tmp``."""
    config = CollectorConfig(listen="127.0.0.1:0", db=str(tmp / "events.db"), insecure=True,
                             watchdog_period_s=0, grace_s=1, store=store, rules_dir=rules_dir,
                             node_rate_limit=0)
    with BackgroundCollector(config) as running:
        harness = FindingsHarness(running)
        try:
            yield harness
        finally:
            harness.channel.close()
