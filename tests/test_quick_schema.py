"""The quick schema check may only ever say "valid" when jsonschema agrees:
tried on every shipped action's config schema and the template schema, with
values of every JSON type and the edge cases JSON Schema is particular
about (booleans are not integers, 1.0 is, ``$`` is the end of the string)."""

from __future__ import annotations

import itertools

from dagrun.api import list_actions
from dagrun.compile.configs import strict_validator
from dagrun.compile.loader import _validator
from dagrun.compile.quick_schema import surely_valid

VALUES = [None, True, False, 0, 1, -1, 2**40, 1.0, 1.5, "", "a", "alice", "alice\n", "Alice", "x" * 300,
          "{{ vars.x }}", "/abs/path", "~/rel", [], ["a"], [1], ["a", "a"], [{"name": "x"}], {}, {"a": 1},
          {"name": "lock", "capacity": 2}, {"name": "lock", "capacity": 0}, {"name": "lock", "scope": "nowhere"}]


def agrees(schema, value, validator) -> None:
    if surely_valid(schema, value):
        errors = list(validator.iter_errors(value))
        assert not errors, (schema, value, errors[0].message)


def test_it_never_calls_an_invalid_config_valid():
    checked = 0
    for action in list_actions().values():
        schema = action.config_schema
        if not schema:
            continue
        validator = strict_validator(schema)
        names = list((schema.get("properties") or {}))
        base = dict(action.default_config or {})
        agrees(schema, base, validator)
        for name, value in itertools.product(names + ["unknown_field"], VALUES):
            agrees(schema, {**base, name: value}, validator)
            checked += 1
    assert checked > 1000


def test_it_never_calls_an_invalid_template_valid():
    validator = _validator("template")
    step = {"sequence_order": 10, "action_name": "noop"}
    fields = ["id", "sequence_order", "action_name", "requires", "locks", "max_retries", "timeout_seconds", "phase",
              "run_as", "skip_on_error", "conflicts_with", "condition_expression", "nonsense"]
    for name, value in itertools.product(fields, VALUES):
        agrees(validator.schema, {"name": "t", "actions": [{**step, name: value}]}, validator)
    assert surely_valid(validator.schema, {"name": "t", "actions": [step]})  # and it does say yes


def test_a_templated_field_is_deferred_exactly_as_jsonschema_would(monkeypatch):
    """With ``{{ }}`` fields left to run time, the quick path reports the
    same problems as jsonschema's walk (which the quick path skips when it
    can): every shipped action schema, a templated value in each field, and
    every edge value in each other field."""
    from dagrun.compile import configs
    templated = ["{{ vars.x }}", "{{ vars.x }} and text", "{% if vars.x %}a{% endif %}"]
    cases = []
    for action in list_actions().values():
        schema = action.config_schema
        names = list((schema or {}).get("properties") or {})
        base = dict(action.default_config or {})
        for name in names:
            for text in templated:
                cases.append((schema, {**base, name: text}))
                for other, value in itertools.product([n for n in names if n != name][:3] + ["unknown_field"],
                                                      VALUES):
                    cases.append((schema, {**base, name: text, other: value}))
    quick = [configs.config_problems(config, schema, allow_templates=True) for schema, config in cases]
    monkeypatch.setattr(configs, "surely_valid", lambda *_: False)  # every case through jsonschema
    walked = [configs.config_problems(config, schema, allow_templates=True) for schema, config in cases]
    assert len(cases) > 1000
    assert quick == walked


def test_type_and_keyword_checks_agree_with_jsonschema_both_ways():
    """A type tested together with its own keywords (string and pattern,
    array and items, object and properties) and unions of types: the quick
    check says valid exactly when jsonschema does (floats aside: 1.0 is an
    integer to JSON Schema, and the quick check leaves that to jsonschema)."""
    schemas = [
        {"type": "string", "pattern": "^[a-z]+$"}, {"type": "string", "minLength": 2, "maxLength": 5},
        {"type": "array", "items": {"type": "string"}}, {"type": "array", "minItems": 1},
        {"type": "array", "uniqueItems": True, "items": {"type": "string"}},
        {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}},
        {"type": "object", "additionalProperties": False}, {"type": ["string", "null"]},
        {"type": ["boolean", "null"]}, {"type": ["object", "array"]}, {"type": ["string", "integer"]},
        {"type": ["integer", "null"], "minimum": 1}, {"type": "string"}, {"type": "object"},
        {"pattern": "^a"}, {"items": {"type": "integer"}}, {"properties": {"a": {"type": "integer"}}},
    ]
    for schema in schemas:
        validator = strict_validator(schema)
        for value in VALUES:
            valid = not list(validator.iter_errors(value))
            quick = surely_valid(schema, value)
            assert not quick or valid, (schema, value)
            if not isinstance(value, float):
                assert quick == valid, (schema, value)


def test_what_jsonschema_reads_otherwise_is_left_to_it():
    """Cases where a quick yes would be wrong: nested booleans in enum and
    const (True is not 1 at any depth), draft 4's boolean exclusive bounds
    and missing const, NaN and Decimal (a rendered value may be either)
    under bounds inside oneOf, and draft 3's forms, which must not crash."""
    from decimal import Decimal
    draft4 = "http://json-schema.org/draft-04/schema#"
    cases = [
        ({"enum": [[1, "x"]]}, [True, "x"]), ({"const": {"debug": 0}}, {"debug": False}),
        ({"$schema": draft4, "type": "integer", "minimum": 1024, "exclusiveMinimum": True}, 1024),
        ({"$schema": draft4, "type": "integer", "maximum": 0, "exclusiveMaximum": True}, 0),
        ({"oneOf": [{"$schema": draft4, "const": "b"}, {"type": "string"}]}, "a"),
        ({"oneOf": [{"exclusiveMinimum": 0}, {"type": "number"}]}, float("nan")),
        ({"maximum": 0}, Decimal(5)),
        ({"oneOf": [{"type": "number"}, {"maximum": 3}]}, Decimal(1)),
    ]
    for schema, value in cases:
        errors = list(strict_validator(schema).iter_errors(value))
        assert errors, (schema, value)  # each is invalid...
        assert not surely_valid(schema, value), (schema, value)  # ...and never called valid
    assert surely_valid({"enum": [[1, "x"]]}, [1, "x"]) and surely_valid({"const": {"a": [1]}}, {"a": [1]})
    for schema in ({"properties": {"a": {"type": "string", "required": True}}},
                   {"type": ["string", {"type": "integer"}]}):
        assert surely_valid(schema, {"a": "x"}) is False  # draft 3: "don't know", not a TypeError


def test_no_wrong_yes_through_oneof_from_nan_bounds_float_subclasses_identity_or_nested_drafts():
    """A False inside oneOf must mean invalid, or oneOf turns it into a wrong
    yes: NaN as a bound, a float subclass (a rendered value) under an
    integer type, the very same NaN object (jsonschema's equality starts
    with identity), a non-dict mapping as a subschema, and a $schema below
    the top (jsonschema checks that part with the stock validator of its
    draft)."""
    from collections import UserDict
    nan = float("nan")
    same_list = [nan]

    class Real(float):
        pass
    cases = [
        ({"oneOf": [{"exclusiveMinimum": nan}, {"type": "integer"}]}, 5),
        ({"oneOf": [{"exclusiveMaximum": nan}, {"type": "integer"}]}, 5),
        ({"oneOf": [{"type": "integer"}, {"type": "number"}]}, Real(2.0)),
        ({"oneOf": [{"const": nan}, {}]}, nan),
        ({"oneOf": [{"enum": [same_list]}, {"type": "array"}]}, same_list),
        ({"oneOf": [{"type": "object"}, {"additionalProperties": UserDict({"type": "string"})}]}, {"a": 1}),
        ({"oneOf": [{"$schema": "https://json-schema.org/draft/2020-12/schema", "pattern": "^a+$"},
                    {"type": "string"}]}, "a\n"),
    ]
    for schema, value in cases:
        assert list(strict_validator(schema).iter_errors(value)), (schema, value)
        assert not surely_valid(schema, value), (schema, value)
