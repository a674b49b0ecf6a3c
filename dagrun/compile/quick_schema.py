"""A quick yes for documents that are valid, before jsonschema.

Compiling 10,000 steps spent most of its time in jsonschema walking valid
steps. :func:`surely_valid` understands the keywords dagrun's own schemas
and common action schemas use, and answers True only when the value is
valid under them; anything it does not understand (``$ref``, ``format``,
``if``, a float where an integer is expected...) is a "don't know", and the
caller asks jsonschema, which also words every problem. So it can make a
valid document cheaper; it can never let an invalid one through.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

# Keywords that say nothing about validity.
_NOTES = frozenset({"description", "title", "default", "examples", "$comment", "$schema", "$id", "$defs",
                    "definitions", "deprecated", "readOnly", "writeOnly"})
_KNOWN = frozenset({"type", "properties", "additionalProperties", "required", "items", "enum", "const",
                    "minLength", "maxLength", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
                    "pattern", "minItems", "maxItems", "oneOf", "anyOf", "minProperties", "maxProperties"})
_END = re.compile(r"(?<!\\)\$$")
_patterns: dict[str, re.Pattern[str]] = {}
_read: dict[int, Any] = {}  # schemas whose keywords are all understood


class _Unknown(Exception):
    """The schema says something this checker does not read."""


def surely_valid(schema: Any, value: Any) -> bool:
    """True when ``value`` is certainly valid under ``schema``; False when it
    is not, or when this checker cannot tell (ask jsonschema then)."""
    try:
        return _valid(schema, value)
    except _Unknown:
        return False


def _type_ok(kind: str, value: Any) -> bool:
    if kind == "object":
        return isinstance(value, dict)
    if kind == "array":
        return isinstance(value, list)
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "null":
        return value is None
    if kind == "integer":
        if isinstance(value, float):
            raise _Unknown  # 1.0 is an integer to JSON Schema: let jsonschema say
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    raise _Unknown


def _valid(schema: Any, value: Any) -> bool:  # noqa: C901 - one keyword per branch
    if schema is True or schema == {}:
        return True
    if schema is False:
        return False
    if type(schema) is not dict and not isinstance(schema, Mapping):
        raise _Unknown
    if _read.get(id(schema)) is not schema:  # each schema's keywords are looked at once
        for key in schema:
            if key not in _KNOWN and key not in _NOTES and not (isinstance(key, str) and key.startswith("x-")):
                raise _Unknown
        if len(_read) > 4096:  # a service checking ever-new action schemas: stay bounded
            _read.clear()
        _read[id(schema)] = schema  # kept alive here, so its id is never another's
    kind = schema.get("type")
    if kind is not None:
        kinds = kind if isinstance(kind, list) else [kind]
        if not any(_type_ok(k, value) for k in kinds):
            return False
    if "enum" in schema and not any(_same(value, option) for option in schema["enum"]):
        return False
    if "const" in schema and not _same(value, schema["const"]):
        return False
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0) or len(value) > schema.get("maxLength", len(value)):
            return False
        pattern = schema.get("pattern")
        if pattern is not None:
            compiled = _patterns.get(pattern)
            if compiled is None:
                compiled = _patterns[pattern] = re.compile(_END.sub(r"\\Z", pattern))
            if not compiled.search(value):
                return False
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"] or "maximum" in schema and value > schema["maximum"]:
            return False
        if "exclusiveMinimum" in schema and not value > schema["exclusiveMinimum"]:
            return False
        if "exclusiveMaximum" in schema and not value < schema["exclusiveMaximum"]:
            return False
    elif isinstance(value, list):
        if len(value) < schema.get("minItems", 0) or len(value) > schema.get("maxItems", len(value)):
            return False
        items = schema.get("items")
        if items is not None:
            if not isinstance(items, Mapping) and not isinstance(items, bool):
                raise _Unknown  # tuple form
            if not all(_valid(items, v) for v in value):
                return False
    elif isinstance(value, dict):
        if len(value) < schema.get("minProperties", 0) or len(value) > schema.get("maxProperties", len(value)):
            return False
        if any(key not in value for key in schema.get("required", ())):
            return False
        properties = schema.get("properties") or {}
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            sub = properties.get(key)
            if sub is None:
                if extra is False:
                    return False
                if extra is not True and not _valid(extra, item):
                    return False
            elif not _valid(sub, item):
                return False
    if "anyOf" in schema and not any(_valid(s, value) for s in schema["anyOf"]):
        return False
    if "oneOf" in schema and sum(1 for s in schema["oneOf"] if _valid(s, value)) != 1:
        return False
    return True


def _same(a: Any, b: Any) -> bool:
    """JSON equality: True is not 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    return a == b
