"""OCSF mapping of every event type and of findings, validated against the official
OCSF 1.5.0 schema (the compiled export shipped by ocsf-json-schema, turned into a
JSON Schema per class and validated with jsonschema); and the validator itself
rejects bad output."""

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


ACTIVITIES = [
    ("process.signal", {"signal": 9}, (2, "Terminate")),
    ("process.signal", {"signal": 19}, (99, "Signal")),
    ("process.ptrace", {"request_name": "PTRACE_ATTACH"}, (3, "Open")),
    ("process.ptrace", {"request_name": "PTRACE_SEIZE", "result": -1}, (3, "Open")),
    ("process.ptrace", {"request_name": "PTRACE_POKETEXT", "result": -1}, (4, "Inject")),
    ("process.ptrace", {"request_name": "PTRACE_SETREGS"}, (4, "Inject")),
    ("process.vm_write", {"result": -14}, (4, "Inject")),
    ("process.exit", {"signal": 0}, (2, "Terminate")),
    ("process.exec", {"argv": [], "filename": ""}, (1, "Launch")),
    ("net.connect", {"result": -111}, (5, "Refuse")),
    ("net.connect", {"result": -113}, (4, "Fail")),
    ("net.connect", {"result": -115}, (1, "Open")),
    ("net.connect", {"family": "ipv6", "local_addr": "fe80::1%eth0",
                     "remote_addr": "2001:db8::7", "peer_in_cluster": False}, (1, "Open")),
    ("net.connect", {"family": "ipv6", "remote_addr": "::ffff:10.0.0.7",
                     "local_addr": "", "remote_port": 0}, (1, "Open")),
    ("net.accept", {"peer_in_cluster": False, "protocol": ""}, (1, "Open")),
    ("net.listen", {"local_addr": "0.0.0.0", "local_port": 0}, (7, "Listen")),
    ("net.listen", {"local_addr": "", "family": ""}, (7, "Listen")),
    ("net.flow", {"family": "ipv6", "remote_addr": "::1"}, (6, "Traffic")),
    ("file.write", {"op": "unlink"}, (4, "Delete")),
    ("file.write", {"op": "create"}, (1, "Create")),
    ("file.write", {"op": "link"}, (1, "Create")),
    ("file.write", {"op": "open_write", "result": -13}, (3, "Update")),
    ("file.write", {"op": "truncate"}, (3, "Update")),
    ("file.write", {"op": "rename", "old_path": ""}, (5, "Rename")),
    ("file.write", {"op": "chmod"}, (99, "chmod")),
    ("gpu.open", {"errno": 6}, (14, "Open")),
    ("net.rdma_open", {"path": "/dev/infiniband/uverbs0"}, (14, "Open")),
    ("checkpoint.scan", {"verdict": "safe", "sha256": ""}, (2, "Read")),
    ("checkpoint.scan", {"verdict": "suspicious"}, (2, "Read")),
    ("checkpoint.scan", {"verdict": "error", "size": 0}, (2, "Read")),
    ("code.load", {"kind": "memfd", "sha256": "", "path": "/memfd:x (deleted)"}, (1, "Load")),
    ("code.module_load", {"path": "", "result": -1}, (1, "Load")),
    ("code.bpf_load", {"prog_name": "", "prog_type_name": "", "result": -1}, (1, "Load")),
    ("gpu.device", {"name": "", "uuid": ""}, (2, "Collect")),
]


@pytest.mark.parametrize(("etype", "payload", "activity"), ACTIVITIES,
                         ids=[f"{e}-{i}" for i, (e, _, _) in enumerate(ACTIVITIES)])
def test_activity_ids_and_variants_are_valid(etype, payload, activity):
    key = etype.replace(".", "_")
    d = jsonform.to_dict(sample_event(key))
    d[key].update(payload)
    out = ocsf.from_event(d)
    assert (out["activity_id"], out["activity_name"]) == activity
    assert ocsfschema.errors(out) == []


@pytest.mark.parametrize("bare", [True, False], ids=["pid-only", "no-process"])
@pytest.mark.parametrize("field", PAYLOADS, ids=lambda f: f.name)
def test_event_without_process_details_is_valid(field, bare):
    """A process the agent could not enrich, or a node-level event (no process)."""
    ev = sample_event(field.name)
    ev.ClearField("process")
    if bare:
        ev.process.pid = 4242
    out = ocsf.from_item(Item("event", event=ev))
    assert out is not None
    assert ocsfschema.errors(out) == []
    assert out["metadata"]["profiles"] == ["host"]


def test_endpoints_name_only_what_is_known():
    d = jsonform.to_dict(sample_event("net_connect"))
    d["net_connect"].update(local_addr="", remote_addr="")
    out = ocsf.from_event(d)
    assert out["src_endpoint"] == {"hostname": "gpu|01", "port": 7}  # the node itself
    assert "dst_endpoint" not in out  # no made-up peer
    assert ocsfschema.errors(out) == []
    d = jsonform.to_dict(sample_event("net_flow"))
    out = ocsf.from_event(d)
    assert (out["src_endpoint"], out["dst_endpoint"]) == ({"hostname": "gpu|01"},
                                                          {"ip": "10.0.0.7", "port": 7})


def test_profiles_are_declared_for_what_is_used():
    out = ocsf.from_event(jsonform.to_dict(sample_event("gpu_open")))
    assert out["metadata"]["profiles"] == ["host", "container"]
    assert out["actor"]["process"]["container"] == {"uid": "c0ffee"}


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


def test_finding_of_an_unknown_severity_is_other_and_valid():
    out = ocsf.from_finding(sample_finding(1, "severe-ish"))
    assert (out["severity_id"], out["severity"]) == (99, "severe-ish")
    assert ocsfschema.errors(out) == []


def test_node_level_finding_has_no_actor_and_is_valid():
    f = sample_finding()
    del f["process"]
    out = ocsf.from_finding(f)
    assert "actor" not in out and ocsfschema.errors(out) == []


def _valid(field: str = "process_exec") -> dict[str, Any]:
    return ocsf.from_item(Item("event", event=sample_event(field))) or {}


BROKEN: list[tuple[str, Any, str]] = [  # (payload, how to break it, what the error names)
    ("process_exec", lambda o: o.pop("actor"), "actor"),
    ("process_exec", lambda o: o.pop("metadata"), "metadata"),
    ("process_exec", lambda o: o["metadata"].pop("product"), "product"),
    ("process_exec", lambda o: o["metadata"].update(version="1.4.0"), "version"),
    ("process_exec", lambda o: o.update(severity_id=7), "severity_id"),
    ("process_exec", lambda o: o.update(type_uid=100702), "type_uid"),
    ("process_exec", lambda o: o.update(activity_id=6, type_uid=100706), "activity_id"),
    ("process_exec", lambda o: o.update(category_uid=4), "category_uid"),
    ("process_exec", lambda o: o.update(class_name="Process"), "class_name"),
    ("process_exec", lambda o: o.update(activity_name="Start"), "activity_name"),
    ("process_exec", lambda o: o.update(time="2026-11-21"), "time"),
    ("process_exec", lambda o: o["process"].update(pid="4242"), "pid"),
    ("process_exec", lambda o: o["process"].update(command_line="x"), "command_line"),
    ("process_exec", lambda o: o["process"].pop("pid"), "process"),
    ("process_exec", lambda o: o["process"]["file"].update(bogus=1), "bogus"),
    ("process_exec", lambda o: o["device"].pop("type_id"), "type_id"),
    ("process_exec", lambda o: o["process"].update(lineage=["/sbin/init"]), "deprecated"),
    ("process_exec", lambda o: o["device"].update(type="Laptop"), "device/type"),
    ("process_exec", lambda o: o["actor"]["user"].update(uid=1000), "uid"),
    # the profiles: what is used must be declared, and only the class's profiles exist
    ("process_exec", lambda o: o["metadata"].update(profiles=["host"]), "container"),
    ("process_exec", lambda o: o["metadata"].update(profiles=["host", "container", "cloud"]),
     "cloud"),
    ("process_exec", lambda o: o["metadata"].update(profiles=["host", "container", "gpu"]),
     "gpu"),
    ("net_connect", lambda o: o["metadata"].update(profiles=[]), "actor"),
    ("net_connect", lambda o: o.pop("dst_endpoint") and o.pop("src_endpoint"), "endpoint"),
    ("net_connect", lambda o: o["dst_endpoint"].update(ip="10.0.0.256"), "ip"),
    ("net_connect", lambda o: o["dst_endpoint"].update(port=70000), "port"),
    ("net_connect", lambda o: o["connection_info"].update(direction_id=7), "direction_id"),
    ("checkpoint_scan", lambda o: o["file"]["hashes"][0].update(value="not-hex"), "value"),
    ("checkpoint_scan", lambda o: o["file"]["hashes"][0].update(algorithm="SHA-1"),
     "algorithm"),
    ("code_load", lambda o: o["module"].pop("load_type_id"), "load_type_id"),
    ("gpu_device", lambda o: o.pop("device"), "device"),
    ("agent_loss", lambda o: o.update(type_uid=100), "type_uid"),
]


@pytest.mark.parametrize(("field", "break_it", "where"), BROKEN,
                         ids=[f"{f}-{w}" for f, _, w in BROKEN])
def test_validator_rejects_broken_output(field, break_it, where):
    out = _valid(field)
    assert ocsfschema.errors(out) == []
    broken = copy.deepcopy(out)
    break_it(broken)
    errs = ocsfschema.errors(broken)
    assert any(where in e for e in errs), f"breaking {where} went unnoticed: {errs}"


def test_broken_finding_is_rejected():
    out = ocsf.from_finding(sample_finding())
    assert ocsfschema.errors(out) == []
    for key, value in [("analytic", {"type_id": 1}), ("attacks", [{}]), ("uid", 1),
                       ("product_uid", "x")]:
        broken = copy.deepcopy(out)
        broken["finding_info"][key] = value
        assert any(key in e for e in ocsfschema.errors(broken)), key


def test_validator_uses_the_whole_official_schema():
    """Classes gpuaudit does not emit are known too (Authentication needs a user)."""
    errs = ocsfschema.errors({"class_uid": 3002})
    assert ".: 'user' is a required property" in errs
    assert ".: 'metadata' is a required property" in errs
    assert ocsfschema.errors({"class_uid": 1234}) == [
        "class_uid: No class found for uid 1234"]
