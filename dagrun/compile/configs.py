"""Step configs: defaults, schema validation, secret and shell fields, and
rendering in dependency order.

This is what an attempt needs at run time, so it imports nothing of the
compiler's graph building: ``run/attempt.py`` imports this module alone.

A step's config is the action's schema defaults, deep-merged with its
``default_config``, deep-merged with the step's ``action_config``; it is
validated against the action's ``config_schema`` (JSON Schema 2020-12).
Strings holding ``{{ }}`` are validated after interpolation, at run time.

Config fields may refer to other config fields (``b: "x-{{ config.a }}"``).
Top-level fields are rendered in dependency order (:func:`render_order`), so
``config.a`` in ``b`` is ``a``'s *rendered value*, never its template text,
and a field is never rendered twice; a cycle is a compile error. A rendered
value keeps the type the field's schema asks for: ``{{ workspace.id }}`` in
a ``string`` field is a string even when the id is a number.

Schema extensions: ``x-secret: true`` (or ``writeOnly``) masks a field in
records, logs and output; ``x-dagrun-format: shell`` marks shell script text,
rendered by :func:`~.expressions.render_shell`; ``x-dagrun-format: url`` a
URL whose values are percent-encoded; ``x-dagrun-format: template-file`` a
file beside the template, inlined at compile time.
"""

from __future__ import annotations

import copy
import re
from graphlib import CycleError as _GraphCycle
from graphlib import TopologicalSorter
from collections.abc import Mapping  # for isinstance: typing's alias is several times slower
from typing import Any, Callable, Iterator

from . import expressions, shell_text
from .shell_text import ShellScript

_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,), "integer": (int,), "number": (int, float), "boolean": (bool,),
    "object": (Mapping,), "array": (list, tuple), "null": (type(None),),
}


def _properties(schema: Mapping[str, Any]) -> Mapping[str, Any]:
    return schema.get("properties") or {}


def schema_defaults(schema: Mapping[str, Any]) -> dict[str, Any]:
    return {k: copy.deepcopy(v["default"]) for k, v in _properties(schema).items()
            if isinstance(v, Mapping) and "default" in v}


_fields: dict[tuple[int, str], tuple[Mapping[str, Any], frozenset[str]]] = {}


def _cached_fields(schema: Mapping[str, Any], kind: str, pick: Any) -> frozenset[str]:
    """Fields of an action schema, worked out once per schema object (a
    template uses the same few actions for thousands of steps)."""
    seen = _fields.get((id(schema), kind))
    if seen is not None and seen[0] is schema:
        return seen[1]
    found = frozenset(k for k, v in _properties(schema).items() if isinstance(v, Mapping) and pick(v))
    if len(_fields) > 4096:  # a service compiling ever-new action definitions: stay bounded
        _fields.clear()
    _fields[(id(schema), kind)] = (schema, found)  # holds the schema, so its id stays its own
    return found


def secret_fields(schema: Mapping[str, Any]) -> frozenset[str]:
    return _cached_fields(schema, "x-secret", lambda v: v.get("x-secret") or v.get("writeOnly"))


def code_fields(schema: Mapping[str, Any]) -> frozenset[str]:
    """Fields whose value names what becomes code the step's account runs
    (``x-code: true``: pip's packages, requirements file and index)."""
    return _cached_fields(schema, "x-code", lambda v: v.get("x-code") is True)


def secret_field_texts(plan: Any) -> Iterator[tuple[Any, str]]:
    """(step, text) for each template text of each secret field of a plan
    (in a field holding a mapping or a list: each text in it)."""
    for step in plan.steps.values():
        for key in step.secret_fields:
            for _, text in expressions.template_strings(step.config.get(key)):
                yield step, text


def format_fields(schema: Mapping[str, Any], kind: str) -> frozenset[str]:
    return _cached_fields(schema, kind, lambda v: v.get("x-dagrun-format") == kind)


def shell_fields(schema: Mapping[str, Any]) -> frozenset[str]:
    return format_fields(schema, "shell")


_validators: dict[int, tuple[Mapping[str, Any], Any]] = {}
_END = re.compile(r"(?<!\\)\$$")


def _pattern(validator: Any, pattern: str, instance: Any, schema: Mapping[str, Any]) -> Any:
    """``pattern`` with JSON Schema's (ECMA 262) meaning of ``$``: the end of
    the string. Python's ``$`` also matches before a final newline, which
    would let ``"alice\\n"`` through ``^[a-z]+$``."""
    if isinstance(instance, str) and not re.search(_END.sub(r"\\Z", pattern), instance):
        import jsonschema
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


def strict_validator(schema: Mapping[str, Any]) -> Any:
    """A validator for ``schema`` (its own draft) with the strict ``pattern``."""
    import jsonschema  # here: a valid document never needs it (quick_schema says so first)
    plain = copy.deepcopy(dict(schema))
    cls = jsonschema.validators.validator_for(plain)
    return jsonschema.validators.extend(cls, {"pattern": _pattern})(plain)


def config_validator(schema: Mapping[str, Any]) -> Any:
    """One validator per action schema object (they live as long as the library)."""
    entry = _validators.get(id(schema))
    if entry is None or entry[0] is not schema:
        entry = _validators[id(schema)] = (schema, strict_validator(schema))
    return entry[1]


_relaxed_schemas: dict[tuple[int, frozenset[str]], tuple[Mapping[str, Any], Mapping[str, Any]]] = {}


def _relaxed(schema: Mapping[str, Any], fields: frozenset[str]) -> Mapping[str, Any]:
    """``schema`` with its ``fields`` properties accepting anything (made once
    per schema object and set of fields)."""
    key = (id(schema), fields)
    entry = _relaxed_schemas.get(key)
    if entry is None or entry[0] is not schema:
        properties = schema.get("properties")
        relaxed = dict(schema)
        if isinstance(properties, Mapping):
            relaxed["properties"] = {**properties, **{k: True for k in fields if k in properties}}
        if len(_relaxed_schemas) > 4096:  # ever-new action schemas: stay bounded
            _relaxed_schemas.clear()
        entry = _relaxed_schemas[key] = (schema, relaxed)
    return entry[1]


def field_path(parts: Any) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


from .quick_schema import surely_valid  # noqa: E402


def config_problems(config: Mapping[str, Any], schema: Mapping[str, Any], *,
                    allow_templates: bool) -> list[tuple[str, str]]:
    """``(field, message)`` for each schema violation. With ``allow_templates``,
    a violation by a string still holding ``{{ }}`` is deferred to run time."""
    if not schema:
        return []
    plain = {k: (v.text if isinstance(v, ShellScript) else v) for k, v in config.items()}
    found = []
    for key, prop in (schema.get("properties") or {}).items():
        # A mapping whose names become something (environment variable names) is written out by the
        # template's author: a value rendered from a variable never supplies the names.
        if isinstance(prop, Mapping) and prop.get("x-dagrun-keys") == "literal" and key in plain:
            value = plain[key]
            if isinstance(value, str) and expressions.has_template(value) or isinstance(value, Mapping) and any(
                    expressions.has_template(str(name)) for name in value):
                found.append((key, "its names are written in the template: give a mapping (its values may "
                                   "hold {{ }}, its names may not)"))
            elif isinstance(value, Mapping):
                found += [(f"{key}.{name}", f"{name} is run (or loaded from) as code by bash or the programs it "
                                            "starts (or trusted to hold no option, as USER and PWD): its value "
                                            "cannot hold {{ }}")
                          for name, item in value.items() if shell_text.runs_as_code(str(name))
                          and isinstance(item, str) and expressions.has_template(item)]
    if surely_valid(schema, plain):  # the common case, without jsonschema's walk
        return found
    if allow_templates:
        # A field whose whole value is a template string is checked once rendered: with only those
        # fields unconstrained, a quick yes means jsonschema would report nothing that is not deferred.
        deferred = frozenset(k for k, v in plain.items() if isinstance(v, str) and expressions.has_template(v))
        if deferred and surely_valid(_relaxed(schema, deferred), plain):
            return found
    for error in config_validator(schema).iter_errors(plain):
        if allow_templates and expressions.has_template(error.instance):
            continue
        if error.validator == "additionalProperties" and isinstance(error.instance, Mapping):
            import difflib
            known = list((error.schema.get("properties") or {}).keys())
            for key in sorted(str(k) for k in set(error.instance) - set(known)):
                close = difflib.get_close_matches(key, known, n=1)
                found.append((field_path([*error.absolute_path, key]),
                              "unknown field" + (f" (did you mean {close[0]!r}?)" if close else
                                                 f" (it has: {', '.join(known)})")))
            continue
        found.append((field_path(error.absolute_path) or "action_config", _said(error, secret_fields(schema))))
    return found


# What the standard library's patterns mean, said to whoever typed the value (a web form's user).
PATTERN_TEXT = {
    r"^[^-\s\x00-\x1f][^\x00-\x1f]*$": "must not start with '-' or a space, nor hold control characters",
    r"^[^-\x00-\x1f][^\x00-\x1f]*$": "must not start with '-', nor hold control characters",
    r"^[A-Za-z_][A-Za-z0-9_]*$": "letters, digits and _ only, not starting with a digit",
    r"^[A-Za-z0-9_]+$": "letters, digits and _ only",
    r"^[a-z_][a-z0-9_-]{0,31}$": "a Linux user name: lowercase letters, digits, _ and -, starting with a letter "
                                 "or _, at most 32 characters",
    r"^0?[0-7]{3}$": "an octal file mode such as 644 or 0755",
    r"^(?!.*\.[Vv][Ss][Ii][Xx](@|$))[A-Za-z0-9-]+\.[A-Za-z0-9.-]+(@[0-9A-Za-z.-]+)?$":
        "an extension's id, publisher.name or publisher.name@version (not a .vsix file)",
}


def _said(error: Any, secret: frozenset[str] = frozenset()) -> str:
    """A violation as the user who typed the value reads it: the schema's
    own ``errorMessage`` (as ajv-errors spells it) for a user-defined action,
    what a library pattern means, else jsonschema's message. Never a
    secret's value: not in or about a secret field (an enum of tokens, the
    value given), nor the whole config (``oneOf`` quotes it, an action's
    secret default included)."""
    path = list(error.absolute_path)
    if (path and path[0] in secret) or (not path and isinstance(error.instance, Mapping)
                                         and secret & set(error.instance)):
        return f"does not meet its schema's {error.validator} (not shown: it is about a secret)"
    schema = error.schema if isinstance(error.schema, Mapping) else {}
    if isinstance(schema.get("errorMessage"), str):
        return f"{error.instance!r}: {schema['errorMessage']}"
    if error.validator == "pattern" and error.validator_value in PATTERN_TEXT:
        return f"{error.instance!r}: {PATTERN_TEXT[error.validator_value]}"
    return error.message


def config_references(value: Any) -> set[str]:
    """Top-level config fields the templates inside ``value`` read."""
    from jinja2 import TemplateSyntaxError
    names: set[str] = set()
    for _, text in expressions.template_strings(value):
        try:
            names |= {r.attr for r in expressions.references(text) if r.root == "config" and r.attr}
        except TemplateSyntaxError:  # reported where the field is parsed
            continue
    return names


def render_order(config: Mapping[str, Any]) -> tuple[str, ...]:
    """Templated top-level fields, each after the fields it reads.
    Raises ``ValueError`` naming the fields of a cycle."""
    graph: dict[str, set[str]] = {}
    for key, value in config.items():
        if any(True for _ in expressions.template_strings(value)):
            reads = config_references(value)
            if key in reads:
                raise ValueError(f"config.{key} refers to itself")
            graph[key] = {name for name in reads if name in config}
    if not any(graph.values()):  # the common case: no field reads another; the sorter would keep this order
        return tuple(graph)
    try:
        return tuple(TopologicalSorter(graph).static_order())
    except _GraphCycle as exc:
        cycle = exc.args[1]
        raise ValueError("config fields refer to each other in a cycle: "
                         + " -> ".join(f"config.{n}" for n in cycle)) from None


def coerce(value: Any, schema: Mapping[str, Any] | None) -> Any:
    """Give a rendered value the type its schema asks for, where the value
    is a scalar that reads naturally as a string (``7`` in a string field)."""
    if not isinstance(schema, Mapping):
        return value
    kinds = schema.get("type")
    allowed = [kinds] if isinstance(kinds, str) else list(kinds or [])
    if isinstance(value, Mapping):
        props = _properties(schema)
        return {k: coerce(v, props.get(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        items = schema.get("items")
        return [coerce(v, items if isinstance(items, Mapping) else None) for v in value]
    if not allowed or "string" not in allowed or value is None:
        return value
    if any(isinstance(value, _JSON_TYPES[k]) and not (k in ("integer", "number") and isinstance(value, bool))
           for k in allowed if k in _JSON_TYPES):
        return value
    if isinstance(value, (int, float, bool)):
        return ("true" if value else "false") if isinstance(value, bool) else str(value)
    return value


def render_config(config: Mapping[str, Any], order: tuple[str, ...], *, schema: Mapping[str, Any],
                  shell: frozenset[str], make_context: Callable[[Mapping[str, Any]], Mapping[str, Any]]) -> dict[str, Any]:
    """Render a step's config: fields in ``order`` (see :func:`render_order`),
    shell fields as :class:`ShellScript`, each value coerced to its schema."""
    rendered = dict(config)
    context = make_context(rendered)  # later fields see the rendered values of earlier ones
    props = _properties(schema)
    urls = format_fields(schema, "url")
    for key in order:
        value = rendered[key]
        if key in shell and isinstance(value, str):
            rendered[key] = expressions.render_shell(value, context)
        elif key in urls and isinstance(value, str):
            rendered[key] = expressions.render_url(value, context, (props.get(key) or {}).get("x-dagrun-url-schemes"))
        else:
            rendered[key] = coerce(render_value(value, context), props.get(key))
    return rendered


def render_value(value: Any, context: Mapping[str, Any]) -> Any:
    """Render every template string inside a structure (strings that are one
    ``{{ expr }}`` keep the expression's type)."""
    if isinstance(value, str):
        return expressions.render_string(value, context)
    if isinstance(value, Mapping):
        return {key: render_value(item, context) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [render_value(v, context) for v in value]
    return value
