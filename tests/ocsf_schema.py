"""Validate events against the vendored, compiled OCSF schema (read with ocsf-lib's model).

The schema subset is produced by ``scripts/vendor_ocsf_schema.py`` from the OCSF project's own
repository with its own compiler; this walker checks what a SIEM's OCSF ingest relies on:
no unknown attributes, required attributes present (profile attributes only when the event
declares the profile), enum ids known, base types and ranges, ``at_least_one``/``just_one``
constraints, recursively through objects and arrays.
"""

from __future__ import annotations

import gzip
import ipaddress
import json
import re
from functools import cache
from pathlib import Path
from typing import Any

from ocsf.schema import OcsfSchema, from_dict

FIXTURE = Path(__file__).parent / "fixtures" / "ocsf" / "ocsf-1.5.0-detection_finding.json.gz"


@cache
def schema() -> OcsfSchema:
    return from_dict(json.loads(gzip.decompress(FIXTURE.read_bytes())))


def _base(type_name: str) -> tuple[str, list[Any]]:
    """A type's base type and its chain of type definitions (most specific first)."""
    chain = []
    types = schema().types
    while type_name in types:
        t = types[type_name]
        chain.append(t)
        if t.type is None or t.type == type_name:
            break
        type_name = t.type
    return type_name, chain


def _check_scalar(path: str, type_name: str, value: Any) -> list[str]:
    base, chain = _base(type_name)
    errs: list[str] = []
    ok = {
        "string_t": isinstance(value, str),
        "integer_t": isinstance(value, int) and not isinstance(value, bool),
        "long_t": isinstance(value, int) and not isinstance(value, bool),
        "float_t": isinstance(value, int | float) and not isinstance(value, bool),
        "boolean_t": isinstance(value, bool),
        "json_t": True,
    }.get(base, isinstance(value, str))
    if not ok:
        return [f"{path}: {value!r} is not {type_name} ({base})"]
    for t in chain:
        if t.range and not t.range[0] <= value <= t.range[1]:
            errs.append(f"{path}: {value!r} outside {type_name} range {t.range}")
        if t.max_len and isinstance(value, str) and len(value) > t.max_len:
            errs.append(f"{path}: longer than {t.max_len}")
        if t.values and value not in t.values:
            errs.append(f"{path}: {value!r} not one of {t.values}")
        if t.regex and isinstance(value, str) and re.fullmatch(t.regex, value) is None:
            errs.append(f"{path}: {value!r} does not match {type_name}")
    if type_name == "ip_t":
        try:
            ipaddress.ip_address(value)
        except ValueError:
            errs.append(f"{path}: {value!r} is not an IP address")
    return errs


def _check_object(path: str, attrs: dict[str, Any], constraints: dict[str, list[str]] | None,
                  value: Any, profiles: set[str]) -> list[str]:
    if not isinstance(value, dict):
        return [f"{path}: expected an object, got {type(value).__name__}"]
    errs = [f"{path}.{k}: not an attribute of this OCSF object" for k in value if k not in attrs]
    for name, attr in attrs.items():
        profile = attr.profile if isinstance(attr.profile, list) else (
            [attr.profile] if attr.profile else [])
        applies = not profile or any(p in profiles for p in profile)
        if name not in value:
            if attr.requirement == "required" and applies:
                errs.append(f"{path}.{name}: required")
            continue
        items = value[name]
        if attr.is_array:
            if not isinstance(items, list):
                errs.append(f"{path}.{name}: expected an array")
                continue
        else:
            items = [items]
        for i, item in enumerate(items):
            where = f"{path}.{name}" + (f"[{i}]" if attr.is_array else "")
            if attr.enum and str(item) not in attr.enum:
                errs.append(f"{where}: {item!r} is not a defined enum value")
            if attr.type in schema().types:
                errs.extend(_check_scalar(where, attr.type, item))
            elif attr.type == "object":
                if not isinstance(item, dict):
                    errs.append(f"{where}: expected an object")
            else:
                obj = schema().objects[attr.type]
                errs.extend(_check_object(where, obj.attributes, obj.constraints, item, profiles))
    for kind, names in (constraints or {}).items():
        present = [n for n in names if n in value]
        if kind == "at_least_one" and not present:
            errs.append(f"{path}: needs at least one of {names}")
        if kind == "just_one" and len(present) != 1:
            errs.append(f"{path}: needs exactly one of {names}")
    return errs


def validate(event: dict[str, Any], class_name: str = "detection_finding") -> list[str]:
    """Every way ``event`` departs from the OCSF class; empty when it conforms."""
    cls = schema().classes[class_name]
    profiles = set(event.get("metadata", {}).get("profiles", []))
    errs = _check_object(class_name, cls.attributes, cls.constraints, event, profiles)
    if event.get("class_uid") != cls.uid:
        errs.append(f"class_uid must be {cls.uid}")
    if event.get("type_uid") != (cls.uid or 0) * 100 + int(event.get("activity_id", -1)):
        errs.append("type_uid must be class_uid * 100 + activity_id")
    return errs
