"""The rules' fast event dict equals the public JSON form for every payload type."""

from __future__ import annotations

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.timestamp_pb2 import Timestamp

from collector.findings.eventdict import event_dict
from gpuaudit.jsonform import to_dict
from gpuaudit.v1 import events_pb2
from tests.unit.test_findings_support import ALICE, event

TIMESTAMP = Timestamp.DESCRIPTOR.full_name
WIDE = {FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64}
PAYLOADS = [f.name for f in events_pb2.Event.DESCRIPTOR.oneofs_by_name["payload"].fields]


def filled(message) -> None:
    """Give every scalar, repeated, map and message field of ``message`` a value."""
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value["NCCL_NET_PLUGIN"] = "/tmp/x.so"
        elif field.message_type is not None and field.message_type.full_name == TIMESTAMP:
            value.FromNanoseconds(1_700_000_000_123_456_789)
        elif field.message_type is not None:
            filled(value.add() if field.is_repeated else value)
        elif field.is_repeated:
            value.append("a" if field.type == field.TYPE_STRING else 7)
        elif field.type == field.TYPE_STRING:
            setattr(message, field.name, "x")
        elif field.type == field.TYPE_BOOL:
            setattr(message, field.name, True)
        else:
            setattr(message, field.name, 2**40 + 3 if field.type in WIDE else 5)


def test_every_payload_filled_and_empty_gives_the_json_form():
    for name in PAYLOADS:
        empty = event(name.replace("_", ".", 1), process=ALICE)
        assert event_dict(empty) == to_dict(empty), name
        full = events_pb2.Event(type=name.replace("_", ".", 1))
        filled(getattr(full, name))
        full.process.CopyFrom(empty.process)
        assert event_dict(full) == to_dict(full), name


def test_a_node_level_event_has_no_process_key():
    ev = event("agent.silent", agent_silent={"silent_for_s": 3})
    assert "process" not in event_dict(ev) and "process" not in to_dict(ev)
