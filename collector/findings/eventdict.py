"""An event as its public JSON dict, fast: what the rules' CEL variables are made of.

``gpuaudit.jsonform.to_dict`` (protobuf's ``MessageToDict``) is pure Python and
costs about 70 us per event, more than all the rules together; the follower
must keep up with ingest. This walks each message by a plan made once per
message type and gives the same dict for every gpuaudit message: every field
present (defaults included; a message field only when set, like the JSON
form), 64-bit integers as numbers, Timestamps as RFC 3339 strings, maps as
dicts. tests/unit/test_findings_eventdict.py checks it equals ``to_dict`` for
every payload type.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

_TIMESTAMP = "google.protobuf.Timestamp"

# Per message type: (name, how) of its fields that are always present in the
# JSON form: how 0 scalar, 3 repeated scalar, 4 repeated message, 5 map
# (string keys, scalar values). Singular message fields (1 message, 2
# Timestamp) appear only when set: ListFields finds those, so the Event's 28
# payload fields cost nothing but the one that is set.
_plans: dict[str, list[tuple[str, int]]] = {}


def _plan(desc: Any) -> list[tuple[str, int]]:
    plan = _plans.get(desc.full_name)
    if plan is None:
        plan = _plans[desc.full_name] = [
            (f.name, how) for f in desc.fields if (how := _how(f)) not in (1, 2)
        ]
    return plan


def _how(f: FieldDescriptor) -> int:
    message = f.message_type
    if message is not None and message.GetOptions().map_entry:
        return 5
    repeated = f.is_repeated
    if message is None:
        return 3 if repeated else 0
    if repeated:
        return 4
    return 2 if message.full_name == _TIMESTAMP else 1


def event_dict(msg: Message) -> dict[str, Any]:
    """``msg`` as ``jsonform.to_dict`` gives it, for messages without enums, floats or bytes."""
    out: dict[str, Any] = {}
    for name, how in _plan(msg.DESCRIPTOR):
        value = getattr(msg, name)
        if how == 0:
            out[name] = value
        elif how == 3:
            out[name] = list(value)
        elif how == 5:
            out[name] = dict(value)
        else:
            out[name] = [event_dict(v) for v in value]
    for field, value in msg.ListFields():
        if field.message_type is not None and not field.is_repeated:
            is_time = field.message_type.full_name == _TIMESTAMP
            out[field.name] = value.ToJsonString() if is_time else event_dict(value)
    return out
