"""A JSON Schema (draft 2020-12) for the OCSF classes gpuaudit emits, built from the
vendored subset of OCSF 1.5.0 (schema/ocsf-1.5.0-subset.json), and a validator.

Per class: the required attributes (base event + class), their types and enum
values, ``class_uid``/``category_uid`` fixed, ``type_uid`` = class_uid * 100 +
activity_id for every allowed activity, and the schema's ``at_least_one``
constraints. Objects are closed (an attribute OCSF does not define fails), except
``unmapped``, which OCSF leaves to the producer. Uses ``jsonschema`` (a test
dependency, imported when a validator is built).
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

SUBSET = Path(__file__).parent / "schema" / "ocsf-1.5.0-subset.json"

PRIMITIVES: dict[str, dict[str, Any]] = {
    "string_t": {"type": "string"},
    "integer_t": {"type": "integer"},
    "long_t": {"type": "integer"},
    "timestamp_t": {"type": "integer", "minimum": 0},
    "boolean_t": {"type": "boolean"},
    "port_t": {"type": "integer", "minimum": 0, "maximum": 65535},
    "ip_t": {"type": "string", "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]},
    "object": {"type": "object"},
}


def _attr(spec: Any) -> dict[str, Any]:
    if isinstance(spec, dict):
        out = dict(_attr(spec["type"]))
        out["enum"] = spec["enum"]
        return out
    if spec.endswith("[]"):
        return {"type": "array", "items": _attr(spec[:-2])}
    if spec in PRIMITIVES:
        return PRIMITIVES[spec]
    return {"$ref": f"#/$defs/{spec}"}


def _closed(attrs: dict[str, Any], required: list[str], at_least_one: list[str]) -> dict:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {k: _attr(v) for k, v in attrs.items()},
        "required": required,
        "additionalProperties": False,
    }
    if at_least_one:
        schema["anyOf"] = [{"required": [k]} for k in at_least_one]
    return schema


@cache
def json_schema() -> dict[str, Any]:
    """The JSON Schema: ``$defs`` holds every object and one ``class_<uid>`` per class."""
    spec = json.loads(SUBSET.read_text())
    defs = {name: _closed(o["attributes"], o["required"], o.get("at_least_one", []))
            for name, o in spec["objects"].items()}
    base = spec["base_event"]
    for uid_text, c in spec["classes"].items():
        uid = int(uid_text)
        schema = _closed({**base["attributes"], **c["attributes"]},
                         sorted(set(base["required"]) | set(c["required"])),
                         c.get("at_least_one", []))
        schema["properties"]["class_uid"] = {"const": uid}
        schema["properties"]["category_uid"] = {"const": c["category_uid"]}
        schema["oneOf"] = [
            {"properties": {"activity_id": {"const": a}, "type_uid": {"const": uid * 100 + a}}}
            for a in c["activity_id"]
        ]
        defs[f"class_{uid}"] = schema
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"OCSF {spec['version']} (gpuaudit subset)",
        "$defs": defs,
        "type": "object",
        "required": ["class_uid"],
    }


def validator(class_uid: int) -> Any:
    """A ``jsonschema`` validator for one class (KeyError for a class not in the subset)."""
    import jsonschema

    schema = json_schema()
    if f"class_{class_uid}" not in schema["$defs"]:
        raise KeyError(f"OCSF class {class_uid} is not in {SUBSET.name}")
    whole = {**schema, "$ref": f"#/$defs/class_{class_uid}"}
    return jsonschema.Draft202012Validator(
        whole, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def errors(event: dict[str, Any]) -> list[str]:
    """Every schema violation of one OCSF event, as ``path: message`` lines ([] = valid)."""
    try:
        v = validator(int(event.get("class_uid", -1)))
    except (KeyError, TypeError, ValueError) as err:
        return [str(err)]
    return [f"{'/'.join(map(str, e.absolute_path)) or '.'}: {_short(e)}"
            for e in v.iter_errors(event)]


def _short(err: Any) -> str:
    if err.validator == "oneOf" and "activity_id" in str(err.schema):
        return "activity_id not allowed for this class, or type_uid != class_uid*100+activity_id"
    return str(err.message)[:300]
