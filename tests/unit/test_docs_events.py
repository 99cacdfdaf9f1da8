"""docs/events.md documents every field and type of the event contract, and its
examples are valid events of the type of their section."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from gpuaudit import jsonform
from gpuaudit.v1 import events_pb2

DOC = (Path(__file__).resolve().parents[2] / "docs" / "events.md").read_text()


def _sections() -> dict[str, str]:
    parts = re.split(r"^## ", DOC, flags=re.M)
    return {p.split("\n", 1)[0].strip().strip("`"): p for p in parts[1:]}


def _payload_types() -> list[str]:
    oneof = events_pb2.Event.DESCRIPTOR.oneofs_by_name["payload"]
    return [f.name.replace("_", ".", 1) for f in oneof.fields]


@pytest.mark.parametrize("type_", _payload_types())
def test_every_event_type_has_a_section_with_a_valid_example(type_: str) -> None:
    section = _sections().get(type_)
    assert section is not None, f"docs/events.md has no '## `{type_}`' section"
    examples = re.findall(r"```json\n(.*?)\n```", section, flags=re.S)
    assert examples, f"section {type_} has no JSON example"
    for text in examples:
        ev = jsonform.from_json(text)
        assert ev.type == type_
        assert ev.WhichOneof("payload") == type_.replace(".", "_")


@pytest.mark.parametrize("message", sorted(events_pb2.DESCRIPTOR.message_types_by_name))
def test_every_field_is_documented(message: str) -> None:
    desc = events_pb2.DESCRIPTOR.message_types_by_name[message]
    undocumented = [f.name for f in desc.fields
                    if f.containing_oneof is None and f"| `{f.name}` |" not in DOC]
    assert not undocumented, f"{message}: fields missing from docs/events.md: {undocumented}"


def test_examples_use_the_json_form_exactly() -> None:
    # what we print is what the doc shows: re-serialising an example changes nothing
    for text in re.findall(r"```json\n(\{.*?)\n```", DOC, flags=re.S):
        assert jsonform.to_dict(jsonform.from_json(text)) == json.loads(text)
