"""OCSF mapping of every event type and of findings, validated against the vendored
OCSF 1.5.0 subset with jsonschema; and the validator itself rejects bad output."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from google.protobuf.descriptor import FieldDescriptor

from collector.export import ocsf, ocsfschema
from collector.export.base import Item
from gpuaudit import jsonform
from gpuaudit.v1 import events_pb2

HOSTILE = 'a|b=c\\d\ne]f"g'
REALISTIC = {  # fields whose values OCSF types constrain (ip_t) or that read better real
    "local_addr": "10.0.0.5", "remote_addr": "10.0.0.7", "path": "/dev/nvidia0",
    "old_path": "/opt/site-packages/x.py", "sha256": "ab" * 32, "family": "ipv4",
    "protocol": "tcp", "request_name": "PTRACE_POKEDATA", "op": "rename",
    "verdict": "malicious", "signal_name": "SIGKILL",
}
PAYLOADS = [f for f in events_pb2.Event.DESCRIPTOR.oneofs_by_name["payload"].fields]


def event_type(field_name: str) -> str:
    """gpu_open -> gpu.open, process_vm_write -> process.vm_write."""
    return field_name.replace("_", ".", 1)


def _fill(msg: Any) -> None:
    for f in msg.DESCRIPTOR.fields:
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            getattr(msg, f.name)["NCCL_NET_PLUGIN"] = HOSTILE
        elif f.message_type is not None and f.message_type.full_name == "google.protobuf.Timestamp":
            getattr(msg, f.name).FromNanoseconds(1_795_286_000_123_456_789)
        elif f.message_type is not None:
            sub = getattr(msg, f.name).add() if _repeated(f) else getattr(msg, f.name)
            _fill(sub)
        elif _repeated(f):
            getattr(msg, f.name).extend([_scalar(f), _scalar(f)])
        else:
            setattr(msg, f.name, _scalar(f))


def _repeated(f: FieldDescriptor) -> bool:
    return bool(f.is_repeated)


def _scalar(f: FieldDescriptor) -> Any:
    if f.type == FieldDescriptor.TYPE_STRING:
        return REALISTIC.get(f.name, HOSTILE)
    if f.type == FieldDescriptor.TYPE_BOOL:
        return True
    if f.name in ("result", "errno"):
        return 0
    return 9 if f.name == "signal" else 7


def sample_event(field_name: str, seq: int = 1, node: str = "gpu|01") -> events_pb2.Event:
    """An event of that payload with every field set (hostile strings where free text)."""
    ev = events_pb2.Event(type=event_type(field_name), node=node, boot_id="b=1", seq=seq)
    ev.time.FromNanoseconds(1_795_286_000_123_456_789)
    ev.process.pid, ev.process.tid, ev.process.ppid = 4242, 4243, 4100
    ev.process.uid, ev.process.gid, ev.process.user = 1000, 1000, "ali|ce"
    ev.process.comm, ev.process.exe = "py=thon", "/usr/bin/python3"
    ev.process.cmdline.extend(["python3", HOSTILE])
    ev.process.slurm_job, ev.process.container_id = "42", "c0ffee"
    _fill(getattr(ev, field_name))
    return ev


def sample_finding(count: int = 3, severity: str = "high") -> dict[str, Any]:
    """A finding per the findings contract, with hostile strings."""
    return {
        "id": "f-1", "rule": "gpu_process_tampered", "title": "GPU job | tampered",
        "severity": severity, "mitre": ["T1055", "T1055.008", "TA0040"], "node": "gpu01",
        "process": {"pid": 77, "uid": 1001, "user": "mallory", "exe": "/tmp/x=y",
                    "comm": "x", "container_id": "", "pod": "", "slurm_job": "42"},
        "summary": "mallory ptraced alice's job\nthen wrote into it \\ twice",
        "count": count, "first_seen": "2026-11-21T18:33:20.123456789Z",
        "last_seen": "2026-11-21T18:35:00Z",
        "events": [{"node": "gpu01", "boot_id": "b1", "seq": 5}], "key": "k|1",
    }


EXPECTED_CLASS = {
    "process.exec": 1007, "process.exit": 1007, "process.signal": 1007,
    "process.ptrace": 1007, "process.vm_write": 1007, "gpu.open": 1001,
    "net.rdma_open": 1001, "file.write": 1001, "checkpoint.scan": 1001, "code.load": 1005,
    "code.module_load": 1005, "code.bpf_load": 1005, "net.connect": 4001,
    "net.accept": 4001, "net.listen": 4001, "net.flow": 4001, "gpu.device": 5001,
}


@pytest.mark.parametrize("field", PAYLOADS, ids=lambda f: f.name)
def test_every_event_type_maps_to_a_valid_ocsf_event(field):
    ev = sample_event(field.name)
    out = ocsf.from_item(Item("event", event=ev))
    assert out is not None
    assert ocsfschema.errors(out) == []
    assert out["class_uid"] == EXPECTED_CLASS.get(ev.type, 0)
    assert out["type_uid"] == out["class_uid"] * 100 + out["activity_id"]
    assert out["category_uid"] == out["class_uid"] // 1000
    assert out["metadata"]["uid"] == "gpu|01:b=1:1"
    assert out["metadata"]["original_time"] == "2026-11-21T18:33:20.123456789Z"
    assert out["time"] == 1_795_286_000_123


def test_unmapped_types_are_base_events_carrying_the_whole_event_or_skipped():
    ev = sample_event("agent_loss")
    out = ocsf.from_item(Item("event", event=ev))
    assert out is not None
    assert (out["class_uid"], out["activity_id"], out["type_uid"]) == (0, 99, 99)
    assert out["severity_id"] == 3  # an audit loss is not informational (AU-5)
    assert out["unmapped"]["gpuaudit"] == jsonform.to_dict(ev)
    assert ocsf.from_item(Item("event", event=ev), unmapped="skip") is None


def test_mapped_events_keep_their_payload_and_job_identity():
    ev = sample_event("gpu_open")
    out = ocsf.from_event(jsonform.to_dict(ev))
    assert out["unmapped"]["gpu_open"] == jsonform.to_dict(ev)["gpu_open"]
    assert out["unmapped"]["process"]["slurm_job"] == "42"
    assert out["actor"]["process"]["cmd_line"] == "python3 'a|b=c\\d\ne]f\"g'"


@pytest.mark.parametrize(("etype", "payload", "activity"), [
    ("process.signal", {"signal": 9}, (2, "Terminate")),
    ("process.signal", {"signal": 19}, (99, "Signal")),
    ("process.ptrace", {"request_name": "PTRACE_ATTACH"}, (3, "Open")),
    ("process.ptrace", {"request_name": "PTRACE_POKETEXT", "result": -1}, (4, "Inject")),
    ("net.connect", {"result": -111}, (5, "Refuse")),
    ("net.connect", {"result": -113}, (4, "Fail")),
    ("net.connect", {"result": -115}, (1, "Open")),
    ("file.write", {"op": "unlink"}, (4, "Delete")),
    ("file.write", {"op": "create"}, (1, "Create")),
])
def test_activity_ids(etype, payload, activity):
    key = etype.replace(".", "_")
    d = jsonform.to_dict(sample_event(key))
    d[key].update(payload)
    out = ocsf.from_event(d)
    assert (out["activity_id"], out["activity_name"]) == activity
    assert ocsfschema.errors(out) == []


def test_failed_open_is_a_failure_with_the_errno():
    d = jsonform.to_dict(sample_event("gpu_open"))
    d["gpu_open"]["errno"] = 6
    out = ocsf.from_event(d)
    assert (out["status_id"], out["status_code"]) == (2, "6")


@pytest.mark.parametrize(("count", "activity"), [(1, 1), (5, 2)])
@pytest.mark.parametrize(("severity", "severity_id"),
                         [("info", 1), ("low", 2), ("medium", 3), ("high", 4), ("critical", 5)])
def test_findings_are_valid_detection_findings(count, activity, severity, severity_id):
    out = ocsf.from_item(Item("finding", finding=sample_finding(count, severity)))
    assert out is not None
    assert ocsfschema.errors(out) == []
    assert (out["class_uid"], out["category_uid"], out["activity_id"]) == (2004, 2, activity)
    assert out["type_uid"] == 200400 + activity
    assert out["severity_id"] == severity_id
    info = out["finding_info"]
    assert info["uid"] == "f-1" and info["analytic"]["uid"] == "gpu_process_tampered"
    assert info["attacks"] == [
        {"technique": {"uid": "T1055"}},
        {"technique": {"uid": "T1055"}, "sub_technique": {"uid": "T1055.008"}},
        {"tactic": {"uid": "TA0040"}},
    ]
    assert info["related_events"] == [{"uid": "gpu01:b1:5"}]
    assert out["actor"]["user"] == {"uid": "1001", "name": "mallory"}
    assert out["count"] == count and out["end_time"] == out["time"]


def test_node_level_finding_has_no_actor_and_is_valid():
    f = sample_finding()
    del f["process"]
    out = ocsf.from_finding(f)
    assert "actor" not in out and ocsfschema.errors(out) == []


def _valid_exec() -> dict[str, Any]:
    return ocsf.from_event(jsonform.to_dict(sample_event("process_exec")))


@pytest.mark.parametrize(("break_it", "where"), [
    (lambda o: o.pop("actor"), "actor"),
    (lambda o: o.pop("metadata"), "metadata"),
    (lambda o: o["metadata"].pop("product"), "product"),
    (lambda o: o.update(severity_id=7), "severity_id"),
    (lambda o: o.update(type_uid=100702), "type_uid"),
    (lambda o: o.update(activity_id=6, type_uid=100706), "activity_id"),
    (lambda o: o.update(category_uid=4), "category_uid"),
    (lambda o: o.update(time="2026-11-21"), "time"),
    (lambda o: o["process"].update(pid="4242"), "pid"),
    (lambda o: o["process"].update(command_line="x"), "command_line"),
    (lambda o: o["process"].pop("pid"), "pid"),
    (lambda o: o["device"].pop("type_id"), "type_id"),
    (lambda o: o["actor"]["user"].update(uid=1000), "uid"),
])
def test_validator_rejects_broken_output(break_it, where):
    out = _valid_exec()
    assert ocsfschema.errors(out) == []
    broken = copy.deepcopy(out)
    break_it(broken)
    errs = ocsfschema.errors(broken)
    assert errs, f"breaking {where} went unnoticed"


def test_validator_knows_only_the_classes_it_was_given():
    assert ocsfschema.errors({"class_uid": 3002}) == [
        "'OCSF class 3002 is not in ocsf-1.5.0-subset.json'"]
