"""A validator for gpuaudit's OCSF output against the official OCSF 1.5.0 schema.

The schema is the compiled export of OCSF 1.5.0 (schema.ocsf.io/1.5.0/export/schema)
shipped by the ``ocsf-json-schema`` package, which turns a class, with the profiles
an event declares, into a JSON Schema (draft 2020-12): the base event and class
attributes with their requirements, types (OCSF's regexes and ranges included),
enum values (``class_uid``, ``category_uid``, ``activity_id``, ``type_uid``,
``severity_id`` ...) and ``at_least_one``/``just_one`` constraints, every object
embedded and closed, so an attribute OCSF does not define fails. ``unmapped``
(the ``object`` object) stays open, as OCSF intends.

On top of that schema, which checks each attribute on its own, :func:`errors`
checks what the OCSF export states but a JSON Schema of one attribute cannot:
``type_uid`` = ``class_uid`` * 100 + ``activity_id``; ``metadata.version`` 1.5.0
(the schema checks only that it is a string); that ``metadata.profiles``
names only profiles the class supports (the generator would silently ignore
others); that no attribute deprecated in 1.5.0 is used; and that every enum
attribute's *sibling* (``activity_id`` ->
``activity_name``, ``type_id`` -> ``type`` ...) is that value's caption, except
for 99 Other, whose sibling carries the source's own label.

``ocsf-json-schema`` and ``jsonschema`` are dev dependencies: they are imported
when the first validator is built, never by the collector itself.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from collector.export.ocsf import OCSF_VERSION


@cache
def _ocsf() -> Any:
    """The official OCSF export, wrapped by ocsf-json-schema (loaded once: ~3 MB)."""
    from ocsf_json_schema import OcsfJsonSchemaEmbedded, get_ocsf_schema

    return OcsfJsonSchemaEmbedded(get_ocsf_schema(version=OCSF_VERSION))


def class_profiles(class_uid: int) -> frozenset[str]:
    """The profiles OCSF 1.5.0 allows on a class (ValueError for an unknown class)."""
    ocsf = _ocsf()
    name = ocsf.lookup_class_name_from_uid(class_uid)
    return frozenset(ocsf.schema.schema["classes"][name].get("profiles") or [])


@cache
def json_schema(class_uid: int, profiles: tuple[str, ...] = ()) -> dict[str, Any]:
    """The official JSON Schema of one class with these profiles applied."""
    ocsf = _ocsf()
    return dict(ocsf.get_class_schema(ocsf.lookup_class_name_from_uid(class_uid),
                                      list(profiles)))


@cache
def validator(class_uid: int, profiles: tuple[str, ...] = ()) -> Any:
    """A ``jsonschema`` validator for one class and profile set."""
    import jsonschema

    return jsonschema.Draft202012Validator(
        json_schema(class_uid, profiles),
        format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def errors(event: dict[str, Any]) -> list[str]:
    """Every violation of OCSF 1.5.0 by one event, as ``path: message`` lines ([] = valid).

    The event is validated with the profiles its ``metadata.profiles`` declares.
    """
    try:
        class_uid = int(event.get("class_uid", -1))
        allowed = class_profiles(class_uid)
    except (TypeError, ValueError) as err:
        return [f"class_uid: {err}"]
    profiles = _declared_profiles(event)
    out = [f"metadata/profiles: {p!r} is not a profile of class {class_uid}"
           for p in profiles if p not in allowed]
    usable = tuple(sorted(p for p in profiles if p in allowed))
    out += [f"{'/'.join(map(str, e.absolute_path)) or '.'}: {_message(e)}"
            for e in validator(class_uid, usable).iter_errors(event)]
    out += export_errors(event)
    md = event.get("metadata")
    if isinstance(md, dict) and md.get("version", OCSF_VERSION) != OCSF_VERSION:
        out.append(f"metadata/version: {md['version']!r}, validated against {OCSF_VERSION}")
    activity, type_uid = event.get("activity_id"), event.get("type_uid")
    if isinstance(activity, int) and type_uid != class_uid * 100 + activity:
        out.append(f"type_uid: {type_uid!r} != class_uid * 100 + activity_id "
                   f"({class_uid * 100 + activity})")
    return out


def _message(err: Any) -> str:
    """jsonschema's message, except for OCSF's at_least_one / just_one constraints,
    whose message would print the whole event without naming the attributes."""
    subs = err.schema.get(err.validator) if isinstance(err.schema, dict) else None
    if err.validator in ("anyOf", "oneOf") and isinstance(subs, list) \
            and all(isinstance(s, dict) and list(s) == ["required"] for s in subs):
        names = ", ".join(n for s in subs for n in s["required"])
        how = "at least one" if err.validator == "anyOf" else "exactly one"
        return f"needs {how} of: {names}"
    return str(err.message)[:300]


def _declared_profiles(event: dict[str, Any]) -> list[str]:
    md = event.get("metadata")
    profiles = md.get("profiles") if isinstance(md, dict) else None
    # a malformed list is the schema's to report; validate without profiles then
    if not isinstance(profiles, list):
        return []
    return [p for p in profiles if isinstance(p, str)]


# The name attributes that always spell the id's caption, even for 99 Other: the
# class, the category and the event type are OCSF's own names, not the source's.
ALWAYS_CAPTION = frozenset({"class_uid", "category_uid", "type_uid"})
OTHER = 99


def export_errors(event: dict[str, Any]) -> list[str]:
    """Enum siblings that are not their id's caption, and deprecated attributes used,
    per the OCSF 1.5.0 export (the generated JSON Schema marks deprecation only)."""
    try:
        ocsf = _ocsf()
        name = ocsf.lookup_class_name_from_uid(int(event.get("class_uid", -1)))
    except (TypeError, ValueError):
        return []  # errors() reports the class
    export = ocsf.schema.schema
    return list(_walk(event, export["classes"][name]["attributes"], export["objects"], ""))


def _walk(value: Any, attrs: dict[str, Any], objects: dict[str, Any], path: str) -> Any:
    if not isinstance(value, dict):
        return
    for key, spec in attrs.items():
        if key not in value:
            continue
        if "@deprecated" in spec:
            yield f"{path}{key}: deprecated in OCSF 1.5.0 ({spec['@deprecated']})"
        sibling, enum = spec.get("sibling"), spec.get("enum") or {}
        if sibling and sibling in value and str(value[key]) in enum:
            caption = enum[str(value[key])].get("caption")
            if value[sibling] != caption and (key in ALWAYS_CAPTION or value[key] != OTHER):
                yield f"{path}{sibling}: {value[sibling]!r} is not the caption of " \
                      f"{key} {value[key]} ({caption!r})"
        sub = objects.get(spec.get("object_type") or "", {}).get("attributes")
        if spec.get("type") == "object_t" and sub:
            items = value[key] if spec.get("is_array") and isinstance(value[key], list) \
                else [value[key]]
            for i, item in enumerate(items):
                where = f"{path}{key}/{i}/" if spec.get("is_array") else f"{path}{key}/"
                yield from _walk(item, sub, objects, where)
