"""The collector feeds its export sinks: what a commit newly stored, and findings.

A real collector with an OCSF file sink; a node sends, over mutual TLS, a batch
holding a foreign BPF program load and sends it again. The OCSF file must get
each stored event exactly once (the resend stores nothing new, so exports
nothing), and the Detection Finding the rules raise about it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpuaudit.v1 import collector_pb2, collector_pb2_grpc, events_pb2
from tests.integration.harness import Collector, TestPki, channel, wait_for
from tests.unit.test_collector_support import gpu_open

pytestmark = pytest.mark.integration

NODE = "export-node"


def bpf_load(seq: int) -> events_pb2.Event:
    ev = gpu_open(seq, node=NODE, boot_id="export-run", t_s=seq)
    ev.ClearField("gpu_open")
    ev.type = "code.bpf_load"
    ev.code_bpf_load.prog_type, ev.code_bpf_load.prog_name = 2, "sniff"
    ev.code_bpf_load.prog_type_name = "kprobe"
    return ev


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_stored_events_and_findings_reach_the_sink_once(tmp_path: Path, pki: TestPki) -> None:
    out = tmp_path / "ocsf.jsonl"
    col = Collector(tmp_path / "events.db", "--ocsf-file", str(out), pki=pki)
    try:
        batch = collector_pb2.EventBatch(batch_id=1, events=[
            gpu_open(1, node=NODE, boot_id="export-run", t_s=1), bpf_load(2)])
        with channel(col.address, pki.node(NODE)) as ch:
            stub = collector_pb2_grpc.CollectorStub(ch)
            for _ in range(2):  # the second is a resend: all duplicates
                list(stub.Ingest(iter([batch]), timeout=10))

        def finding_written() -> list[dict[str, object]]:
            return [o for o in lines(out) if o.get("class_uid") == 2004]

        (finding,) = wait_for(finding_written, timeout=60)  # type: ignore[misc]
        assert "bpf-foreign-load" in json.dumps(finding)
    finally:
        col.stop()
    uids = [o["metadata"]["uid"] for o in lines(out)  # type: ignore[index]
            if o.get("class_uid") != 2004]
    assert uids == [f"{NODE}:export-run:1", f"{NODE}:export-run:2"]
