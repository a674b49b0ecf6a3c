"""A quick yes for documents that are valid, before jsonschema.

Compiling 10,000 steps spent most of its time in jsonschema walking valid
steps. :func:`surely_valid` understands the keywords dagrun's own schemas
and common action schemas use, and answers True only when the value is
valid under them; anything it does not understand (``$ref``, ``format``,
``if``, a float where an integer is expected...) is a "don't know", and the
caller asks jsonschema, which also words every problem. So it can make a
valid document cheaper; it can never let an invalid one through.

Each schema is turned once into a checker (a closure over what its keywords
say), so checking a value costs a few comparisons per keyword.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence  # for isinstance: typing's alias is several times slower
from numbers import Number
from typing import Any, Callable

# Keywords that say nothing about validity.
_NOTES = frozenset({"description", "title", "default", "examples", "$comment", "$schema", "$id", "$defs",
                    "definitions", "deprecated", "readOnly", "writeOnly"})
_KNOWN = frozenset({"type", "properties", "additionalProperties", "required", "items", "enum", "const",
                    "minLength", "maxLength", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
                    "pattern", "minItems", "maxItems", "uniqueItems", "oneOf", "anyOf", "minProperties",
                    "maxProperties"})
_END = re.compile(r"(?<!\\)\$$")
# The drafts whose meaning of the keywords above this module reads (the default, without $schema, is 2020-12).
_DRAFTS = ("draft-06", "draft-07", "2019-09", "2020-12")

Checker = Callable[[Any], bool]


class _Unknown(Exception):
    """The schema (or a value's type under it) says something this checker
    does not read."""


_checkers: dict[int, tuple[Any, Checker | None]] = {}  # id(schema) -> (schema, its checker or None)


def surely_valid(schema: Any, value: Any) -> bool:
    """True when ``value`` is certainly valid under ``schema``; False when it
    is not, or when this checker cannot tell (ask jsonschema then)."""
    check = _checker(schema)
    if check is None:
        return False
    try:
        return check(value)
    except _Unknown:
        return False


def _checker(schema: Any) -> Checker | None:
    seen = _checkers.get(id(schema))
    if seen is not None and seen[0] is schema:
        return seen[1]
    try:
        check: Checker | None = _build(schema, root=True)
    except _Unknown:
        check = None
    if len(_checkers) > 4096:  # a service checking ever-new action schemas: stay bounded
        _checkers.clear()
    _checkers[id(schema)] = (schema, check)  # holds the schema, so its id stays its own
    return check


def _true(_value: Any) -> bool:
    return True


def _false(_value: Any) -> bool:
    return False


def _integer(value: Any) -> bool:
    if isinstance(value, float):
        raise _Unknown  # 1.0 is an integer to JSON Schema: let jsonschema say
    return isinstance(value, int) and not isinstance(value, bool)


def _plain_number(value: Any) -> bool:
    """Is ``value`` an int or a float this module can compare? A NaN (every
    comparison false) or another kind of number (a Decimal, from a rendered
    value) is a "don't know": inside ``oneOf`` a wrong answer either way
    would be a wrong yes."""
    if isinstance(value, (int, float)):
        if value != value:  # NaN
            raise _Unknown
        return not isinstance(value, bool)
    if isinstance(value, Number):
        raise _Unknown
    return False


_TYPES: dict[str, Checker] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "integer": _integer,
    "number": _plain_number,
}


# The keywords whose checker also tests the type, when it is the only one.
_OWN_KEYWORDS = {
    "string": ("minLength", "maxLength", "pattern"),
    "array": ("minItems", "maxItems", "items", "uniqueItems"),
    "object": ("properties", "additionalProperties", "required", "minProperties", "maxProperties"),
}
_PLAIN_TYPES = {"object": dict, "array": list, "string": str, "null": type(None), "boolean": bool}


def _type_test(kinds: list[str]) -> Checker:
    if len(kinds) == 1:
        return _TYPES[kinds[0]]
    if all(k in _PLAIN_TYPES for k in kinds):  # one isinstance: no int among them, so bool's is exact
        plain = tuple(_PLAIN_TYPES[k] for k in kinds)
        return lambda v: isinstance(v, plain)
    tests = tuple(_TYPES[k] for k in kinds)

    def any_type(v: Any) -> bool:
        for test in tests:
            if test(v):
                return True
        return False
    return any_type


def _unknown(_value: Any) -> bool:
    raise _Unknown


def _part(schema: Any) -> Checker:
    """The checker of a subschema; one this module does not read says
    "don't know" only when a value is checked against it (a property that
    is absent costs nothing)."""
    try:
        return _build(schema)
    except _Unknown:
        return _unknown


def _same(a: Any, b: Any) -> bool:
    """JSON equality, at every level (as jsonschema's): True is not 1."""
    if a is b:  # jsonschema's first test too: the same NaN object equals itself
        return True
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, Sequence) and isinstance(b, Sequence):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _build(schema: Any, root: bool = False) -> Checker:  # noqa: C901 - one keyword per branch
    if schema is True:
        return _true
    if schema is False:
        return _false
    if not isinstance(schema, dict):  # a non-dict Mapping is no schema to jsonschema (it is "truthy")
        raise _Unknown
    if not schema:
        return _true
    for key in schema:
        if key not in _KNOWN and key not in _NOTES and not (isinstance(key, str) and key.startswith("x-")):
            raise _Unknown
    if "$schema" in schema and (not root or not any(d in str(schema["$schema"]) for d in _DRAFTS)):
        # Draft 4 and older read exclusiveMinimum, required and type otherwise; below the top,
        # jsonschema switches to that draft's own validator (its pattern is not the strict one).
        raise _Unknown
    checks: list[Checker] = []
    kind = schema.get("type")
    if kind is not None and not (isinstance(kind, str) or isinstance(kind, list) and
                                 all(isinstance(k, str) for k in kind)):
        raise _Unknown
    if "required" in schema and not (isinstance(schema["required"], list) and
                                     all(isinstance(k, str) for k in schema["required"])):
        raise _Unknown
    # A single type whose own keywords follow (string, array, object) is
    # tested by their checker, which then refuses other types: one call per
    # value instead of two, for every step of a template.
    only = kind if isinstance(kind, str) else None
    if kind is not None:
        kinds = kind if isinstance(kind, list) else [kind]
        if any(k not in _TYPES for k in kinds):
            raise _Unknown
        if only not in _OWN_KEYWORDS or not any(k in schema for k in _OWN_KEYWORDS[only]):
            checks.append(_type_test(kinds))
            only = None
    if "enum" in schema:
        options = list(schema["enum"])
        checks.append(lambda v: any(_same(v, o) for o in options))
    if "const" in schema:
        const = schema["const"]
        checks.append(lambda v: _same(v, const))
    strings = [k for k in ("minLength", "maxLength", "pattern") if k in schema]
    if strings:
        low, high = schema.get("minLength", 0), schema.get("maxLength")
        pattern = re.compile(_END.sub(r"\\Z", schema["pattern"])) if "pattern" in schema else None

        strict_text = only == "string"

        def text(v: Any) -> bool:
            if not isinstance(v, str):
                return not strict_text
            if len(v) < low or high is not None and len(v) > high:
                return False
            return pattern is None or pattern.search(v) is not None
        checks.append(text)
    numbers = [(k, schema[k]) for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum") if k in schema]
    if numbers:
        if not all(_plain_number(limit) for _, limit in numbers):  # a NaN, a bool or no number: let jsonschema say
            raise _Unknown

        def number(v: Any) -> bool:
            if not _plain_number(v):
                return True
            for key, limit in numbers:  # jsonschema's own comparisons, so that they fail alike
                if key == "minimum" and v < limit or key == "maximum" and v > limit \
                        or key == "exclusiveMinimum" and v <= limit or key == "exclusiveMaximum" and v >= limit:
                    return False
            return True
        checks.append(number)
    if any(k in schema for k in ("minItems", "maxItems", "items", "uniqueItems")):
        low_items, high_items = schema.get("minItems", 0), schema.get("maxItems")
        items = schema.get("items")
        if items is not None and not isinstance(items, (Mapping, bool)):
            raise _Unknown  # the tuple form
        item = _part(items) if items is not None else None
        unique = schema.get("uniqueItems", False)
        if unique not in (True, False):
            raise _Unknown

        strict_array = only == "array"

        def array(v: Any) -> bool:
            if not isinstance(v, list):
                return not strict_array
            if len(v) < low_items or high_items is not None and len(v) > high_items:
                return False
            if unique and len(v) > 1:
                if not all(type(x) is str for x in v):
                    raise _Unknown  # JSON equality of other values (1 == 1.0, True != 1): let jsonschema say
                if len(set(v)) != len(v):
                    return False
            return item is None or all(item(x) for x in v)
        checks.append(array)
    if any(k in schema for k in ("properties", "additionalProperties", "required", "minProperties", "maxProperties")):
        properties = {k: _part(sub) for k, sub in (schema.get("properties") or {}).items()}
        extra = schema.get("additionalProperties", True)
        extra_check = None if extra is True or extra is False else _part(extra)
        required = tuple(schema.get("required", ()))
        low_props, high_props = schema.get("minProperties", 0), schema.get("maxProperties")

        strict_mapping = only == "object"

        def mapping(v: Any) -> bool:
            if not isinstance(v, dict):
                return not strict_mapping
            if len(v) < low_props or high_props is not None and len(v) > high_props:
                return False
            for key in required:
                if key not in v:
                    return False
            get = properties.get
            for key, value in v.items():
                sub = get(key)
                if sub is None:
                    if extra is False or extra_check is not None and not extra_check(value):
                        return False
                elif not sub(value):
                    return False
            return True
        checks.append(mapping)
    if "anyOf" in schema:
        any_of = [_part(s) for s in schema["anyOf"]]
        checks.append(lambda v: any(f(v) for f in any_of))
    if "oneOf" in schema:
        one_of = [_part(s) for s in schema["oneOf"]]
        checks.append(lambda v: sum(1 for f in one_of if f(v)) == 1)
    if len(checks) == 1:
        return checks[0]
    if len(checks) == 2:
        first, second = checks
        return lambda v: first(v) and second(v)
    return lambda v: all(f(v) for f in checks)
