"""docs/events.md, the public event reference, cannot drift from the contract.

The proto is the source of truth; the document must follow it:
* every message has a section whose first table lists exactly its fields, with
  their proto types (a removed or renamed field fails as surely as a new one);
* every payload of ``Event.payload`` has its own ``## `type` — `Message` `` section
  with JSON examples that parse, have that type, and are exactly what
  gpuaudit.jsonform prints (defaults included, 64-bit ints as numbers);
* the size-limit table matches the #defines of agent/bpf/events.h and the
  per-sensor record headers it includes (agent/bpf/*_events.h).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from agent.sensors.records import record_headers
from gpuaudit import jsonform
from gpuaudit.v1 import events_pb2

ROOT = Path(__file__).resolve().parents[2]
DOC_PATH = ROOT / "docs" / "events.md"
PAYLOAD_FILE = events_pb2.DESCRIPTOR


def _contract_messages() -> dict[str, Descriptor]:
    """Every message of the contract: events.proto's and those of the files it imports
    (code.proto, nccl.proto, ...), all in package gpuaudit.v1."""
    found: dict[str, Descriptor] = {}
    for file in (PAYLOAD_FILE, *PAYLOAD_FILE.dependencies):
        if file.package == PAYLOAD_FILE.package:
            found.update(file.message_types_by_name)
    return found


MESSAGES = _contract_messages()
PAYLOAD = events_pb2.Event.DESCRIPTOR.oneofs_by_name["payload"]

# proto scalar type names, by FieldDescriptor.TYPE_* value
SCALARS = {
    getattr(FieldDescriptor, n): n.removeprefix("TYPE_").lower()
    for n in dir(FieldDescriptor)
    if n.startswith("TYPE_") and n not in ("TYPE_MESSAGE", "TYPE_GROUP", "TYPE_ENUM")
}


@dataclass(frozen=True)
class Section:
    level: int
    title: str
    own: str  # text up to the next heading of any level
    full: str  # text up to the next heading of the same or a higher level


@cache
def sections() -> list[Section]:
    text = DOC_PATH.read_text()
    heads = [
        (m.start(), len(m.group(1)), m.group(2).strip(), m.end())
        for m in re.finditer(r"^(#{1,6}) (.+)$", text, flags=re.M)
    ]
    out = []
    for i, (_, level, title, body) in enumerate(heads):
        nxt = heads[i + 1][0] if i + 1 < len(heads) else len(text)
        end = next((s for s, lv, _, _ in heads[i + 1 :] if lv <= level), len(text))
        out.append(Section(level, title, text[body:nxt], text[body:end]))
    return out


def section_naming(name: str) -> Section:
    """The one section whose heading names ``name`` in backticks."""
    found = [s for s in sections() if f"`{name}`" in s.title]
    assert len(found) == 1, f"docs/events.md: want one heading with `{name}`, got {found}"
    return found[0]


def message_section(message: str) -> Section:
    """The section with ``message``'s field table: the first heading naming it.

    A message several types share (``NetConnection`` for net.connect, net.accept
    and net.listen) is described once, under the first of them.
    """
    found = [s for s in sections() if f"`{message}`" in s.title]
    assert found, f"docs/events.md: no heading names `{message}`"
    return found[0]


def first_table(text: str) -> dict[str, str]:
    """First markdown table in ``text``: first column (backticks stripped) -> second."""
    rows: dict[str, str] = {}
    lines = [ln.strip() for ln in text.splitlines()]
    start = next((i for i, ln in enumerate(lines) if ln.startswith("|")), None)
    assert start is not None, "no table"
    for ln in lines[start + 2 :]:  # skip the header and the |---| line
        if not ln.startswith("|"):
            break
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", ln)[1:-1]]
        key = cells[0].strip("`")
        assert key not in rows, f"row {key} listed twice"
        rows[key] = cells[1]
    return rows


def doc_type(f: FieldDescriptor) -> str:
    """How the reference spells a field's type."""
    entry = f.message_type
    if entry is not None and entry.GetOptions().map_entry:
        # a protobuf map: a JSON object, spelled as in the .proto
        key, value = (doc_type(entry.fields_by_name[n]) for n in ("key", "value"))
        return f"map<{key}, {value}>"
    if f.message_type is not None:
        base = (
            "timestamp"
            if f.message_type.full_name == "google.protobuf.Timestamp"
            else f"`{f.message_type.name}`"
        )
    elif f.enum_type is not None:
        base = f"`{f.enum_type.name}`"
    else:
        base = SCALARS[f.type]
    if f.is_repeated:
        return f"list of {base}" if base.startswith("`") else f"list of {base}s"
    return base


def expected_rows(desc: Descriptor) -> dict[str, str]:
    rows = {f.name: doc_type(f) for f in desc.fields if f.containing_oneof is None}
    rows.update({o.name: "oneof" for o in desc.oneofs})
    return rows


def payload_types() -> list[str]:
    return [f.name.replace("_", ".", 1) for f in PAYLOAD.fields]


def examples(section: Section) -> list[str]:
    return re.findall(r"^```json\n(.*?)\n```$", section.full, flags=re.M | re.S)


# -- fields ------------------------------------------------------------------


@pytest.mark.parametrize("message", sorted(MESSAGES))
def test_every_message_field_is_documented_with_its_type(message: str) -> None:
    desc = MESSAGES[message]
    documented = first_table(message_section(message).own)
    want = expected_rows(desc)
    assert sorted(set(want) - set(documented)) == [], f"{message}: undocumented fields"
    assert sorted(set(documented) - set(want)) == [], f"{message}: documented, not in proto"
    wrong = {k: (documented[k], want[k]) for k in want if documented[k] != want[k]}
    assert wrong == {}, f"{message}: (doc type, proto type) differ"


def test_every_documented_field_has_a_meaning() -> None:
    text = DOC_PATH.read_text()
    for row in re.findall(r"^\| `\w+` \|.*$", text, flags=re.M):
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", row)[1:-1]]
        assert len(cells) == 3 and all(cells), f"row needs field, type, meaning: {row}"


# -- event types -------------------------------------------------------------------


def test_type_sections_match_the_payload_oneof() -> None:
    documented = {
        m.group(1)
        for s in sections()
        if s.level == 2
        if (m := re.match(r"`([a-z]+\.[a-z_.]+)`", s.title))
    }
    assert documented == set(payload_types())


@pytest.mark.parametrize("field", list(PAYLOAD.fields), ids=lambda f: f.name)
def test_payload_section_names_type_and_message(field: FieldDescriptor) -> None:
    type_ = field.name.replace("_", ".", 1)
    section = section_naming(type_)
    assert section.level == 2
    assert field.message_type is not None
    assert section.title == f"`{type_}` — `{field.message_type.name}`"


NODE_LEVEL_TYPES = {"gpu.device", "gpu.xid"}
"""Event types about the node or a GPU, not a process (no process block)."""


@pytest.mark.parametrize("type_", payload_types())
def test_examples_are_valid_events_of_their_section(type_: str) -> None:
    found = examples(section_naming(type_))
    assert found, f"section {type_} has no ```json example"
    for text in found:
        assert "\n" not in text, "an example is one JSON line, as exported"
        ev = jsonform.from_json(text)  # rejects unknown or mistyped fields
        assert ev.type == type_
        assert ev.WhichOneof("payload") == type_.replace(".", "_")
        assert ev.seq >= 1 and ev.boot_id and ev.node and ev.time.seconds > 0
        node_level = type_.startswith("agent.") or type_ in NODE_LEVEL_TYPES
        assert ev.HasField("process") != node_level, "process block: events about a process only"
        if type_ == "agent.silent":
            assert ev.boot_id.startswith("collector-")


def test_examples_are_exactly_the_json_form() -> None:
    # what the agent/collector prints is what the doc shows: defaults present,
    # 64-bit ints as numbers, nothing extra
    everything = [t for s in sections() if s.level == 2 for t in examples(s)]
    assert len(everything) >= len(payload_types())
    for text in everything:
        assert jsonform.to_dict(jsonform.from_json(text)) == json.loads(text)


# -- limits and policy -----------------------------------------------------------------


CODE_PREFIXES = ("OP_", "FW_")


def events_h_limits() -> dict[str, int]:
    text = "\n".join(p.read_text() for p in record_headers())
    defines = re.findall(r"^#define (\w+) (\d+)\b", text, flags=re.M)
    # OP_* (record op codes) and FW_* (file.write op and verdict codes) are codes,
    # not sizes; every other number a record header #defines bounds something
    return {name: int(value) for name, value in defines if not name.startswith(CODE_PREFIXES)}


def test_size_limits_match_events_h() -> None:
    limits = events_h_limits()
    assert {"EXEC_MAX_ARGS", "EXEC_ARG_LEN", "EXEC_FILENAME_LEN"} <= set(limits)
    found = [s for s in sections() if s.title == "Size limits"]
    assert len(found) == 1
    table = first_table(found[0].own)
    assert {k: int(v) for k, v in table.items()} == limits


def test_exec_section_states_the_argv_limits() -> None:
    limits = events_h_limits()
    text = section_naming("process.exec").own
    assert f"at most {limits['EXEC_MAX_ARGS']} arguments" in text
    assert f"at most {limits['EXEC_ARG_LEN'] - 1} bytes each" in text
    assert f"at most {limits['EXEC_FILENAME_LEN'] - 1} bytes" in text
    assert f"at most {limits['OPEN_PATH_LEN'] - 1} bytes" in section_naming("gpu.open").own


def test_compatibility_policy_is_stated() -> None:
    policy = [s for s in sections() if s.title == "Compatibility policy"]
    assert len(policy) == 1
    assert "reserved" in policy[0].own and "never renamed" in policy[0].own
