"""The public JSON form of gpuaudit events.

Protobuf's JSON mapping with the proto (snake_case) field names, fields with
default values included (so ``"errno": 0`` is present on a successful open),
and one deliberate difference: 64-bit integers are written as JSON numbers,
not strings, so ``"seq": 42`` reads naturally in SOC pipelines. Values stay
below 2**53 in practice; protobuf's own JSON parser accepts both forms, so
:func:`from_json` round-trips.
"""

from __future__ import annotations

import json
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from gpuaudit.v1 import events_pb2

_INT64_TYPES = {
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED64,
    FieldDescriptor.TYPE_SFIXED64,
}


def to_dict(msg: Message) -> dict[str, Any]:
    """The JSON-ready dict of ``msg`` (see module docstring for the mapping)."""
    d = json_format.MessageToDict(
        msg,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
    )
    _int64_as_numbers(d, msg.DESCRIPTOR)
    return d


def to_json(msg: Message) -> str:
    """One compact JSON line for ``msg``."""
    return json.dumps(to_dict(msg), separators=(",", ":"), sort_keys=False)


def from_json(text: str) -> events_pb2.Event:
    """Parse the JSON form of an Event back into the message."""
    return json_format.Parse(text, events_pb2.Event())


def _int64_as_numbers(d: dict[str, Any], desc: Any) -> None:
    # desc: a message Descriptor (python or upb implementation, hence Any)
    for name, value in d.items():
        field = desc.fields_by_name.get(name)
        if field is None:
            continue
        if field.type in _INT64_TYPES:
            d[name] = [int(v) for v in value] if isinstance(value, list) else int(value)
        elif field.message_type is not None and field.message_type.full_name.startswith(
            "gpuaudit."
        ):
            items = value if isinstance(value, list) else [value]
            for item in items:
                _int64_as_numbers(item, field.message_type)
