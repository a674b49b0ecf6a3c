"""Variables and conditions in a Jinja2 sandbox.

Two environments share one configuration: ``PLAIN`` renders config values,
``SHELL`` renders shell script text and passes every ``{{ }}`` result through
:func:`shell_quote`, so a value can only ever become one shell word, never
code. Both use ``StrictUndefined``: an unknown name is an error, never "".

Conditions accept Jinja expressions and the seed's SQL-like spelling
(``IS NOT NULL``, ``AND``, ``=``, ``<>``, ``TRUE``...). A small tokenizer
translates the SQL words to Jinja tokens (string literals are left alone),
then Jinja parses the result: nothing is ever ``eval``-ed or matched as a
substring.

Names a template may use: ``workspace``, ``config``, ``vars``, ``env``,
``steps`` (upstream results only) and the functions ``file_exists``,
``dir_exists`` and ``path``. :func:`references` lists what an expression uses
so the compiler can reject unknown names before anything runs.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

from jinja2 import StrictUndefined, TemplateSyntaxError, Undefined, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

ROOT_NAMES = frozenset({"workspace", "config", "vars", "env", "steps"})
FUNCTION_NAMES = frozenset({"file_exists", "dir_exists", "path"})
KNOWN_NAMES = ROOT_NAMES | FUNCTION_NAMES

_SAFE_WORD = re.compile(r"^[A-Za-z0-9_@%+=:,./-]+$")


def shell_quote(value: Any) -> str:
    """Render ``value`` as shell word(s) that can never run as code.

    Lists become several quoted words. Values holding newlines or other
    control characters use bash's ``$'...'`` quoting, so no raw newline from a
    value ever reaches the script text (it could end a here-document early).
    """
    if isinstance(value, (list, tuple)):
        return " ".join(shell_quote(v) for v in value)
    if value is None:
        text = ""
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (dict,)):
        text = json.dumps(value, sort_keys=True)
    else:
        text = str(value)
    if "\0" in text:
        raise ValueError("a value with a NUL character cannot be passed to a shell script")
    if text and _SAFE_WORD.match(text):
        return text
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        return _ansi_c_quote(text)
    return shlex.quote(text)


def _ansi_c_quote(text: str) -> str:
    out = []
    for c in text:
        if c == "\\":
            out.append("\\\\")
        elif c == "'":
            out.append("\\'")
        elif ord(c) < 32 or ord(c) == 127:
            out.append(f"\\x{ord(c):02x}")
        else:
            out.append(c)
    return "$'" + "".join(out) + "'"


def _to_json(value: Any, indent: int | None = 2) -> str:
    return json.dumps(value, indent=indent, default=str)


def _to_yaml(value: Any) -> str:
    import yaml
    return yaml.safe_dump(value, sort_keys=False, default_flow_style=False)


def _make_env(**kwargs: Any) -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=True,
                                        autoescape=False, **kwargs)
    env.filters["to_json"] = _to_json
    env.filters["to_yaml"] = _to_yaml
    env.filters["shell_quote"] = shell_quote
    return env


PLAIN = _make_env()
SHELL = _make_env(finalize=shell_quote)


def has_template(text: Any) -> bool:
    return isinstance(text, str) and ("{{" in text or "{%" in text)


_SOLE_EXPRESSION = re.compile(r"^\s*\{\{((?:(?!\}\}|\{\{).)*)\}\}\s*$", re.S)


@functools.lru_cache(maxsize=4096)
def _template(source: str, shell: bool):
    return (SHELL if shell else PLAIN).from_string(source)


@functools.lru_cache(maxsize=4096)
def _expression(source: str):
    return PLAIN.compile_expression(source, undefined_to_none=False)


# -- conditions --------------------------------------------------------------

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<string>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
  | (?P<number>\d+(?:\.\d+)?)
  | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op><>|!=|==|<=|>=|=|<|>|\(|\)|\[|\]|,|\.|\+|-|\*|/|%|~|\||:)
    """,
    re.X,
)
_SQL_WORDS = {
    "AND": "and", "OR": "or", "NOT": "not", "IS": "is", "IN": "in",
    "NULL": "none", "null": "none", "TRUE": "true", "FALSE": "false",
}


def translate_condition(text: str) -> str:
    """Translate the seed's SQL-like condition spelling into a Jinja expression.

    >>> translate_condition("workspace.ssh_public_key IS NOT NULL OR config.private = FALSE")
    'workspace.ssh_public_key is not none or config.private == false'
    """
    text = text.strip()
    sole = _SOLE_EXPRESSION.match(text)
    if sole:  # "{{ expr }}" is accepted as a condition too
        text = sole.group(1).strip()
    out: list[str] = []
    pos = 0
    previous = ""
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise TemplateSyntaxError(f"unexpected character {text[pos]!r} at position {pos}", 1)
        kind, tok = m.lastgroup, m.group()
        pos = m.end()
        if kind == "word" and previous != "." and tok in _SQL_WORDS:
            tok = _SQL_WORDS[tok]
        elif kind == "op" and tok == "=":
            tok = "=="
        elif kind == "op" and tok == "<>":
            tok = "!="
        out.append(tok)
        if kind != "space":
            previous = tok
    return "".join(out)


@dataclass(frozen=True, slots=True)
class Condition:
    source: str
    expression: str  # the Jinja spelling

    def evaluate(self, context: Mapping[str, Any]) -> bool:
        return bool(_expression(self.expression)(**context))


def compile_condition(text: str) -> Condition:
    """Parse a condition; raises ``TemplateSyntaxError`` on bad syntax."""
    expression = translate_condition(text)
    _expression(expression)
    return Condition(text, expression)


# -- static analysis ----------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Reference:
    root: str
    attr: str | None  # first attribute or constant key below the root, if any


@functools.lru_cache(maxsize=4096)
def references(source: str, *, condition: bool = False) -> frozenset[Reference]:
    """Names (and first attributes) used by a template string or condition."""
    text = "{{ " + translate_condition(source) + " }}" if condition else source
    ast = PLAIN.parse(text)
    found: set[Reference] = set()
    for node in _walk(ast):
        if isinstance(node, (nodes.Getattr, nodes.Getitem)) and isinstance(node.node, nodes.Name):
            key = node.attr if isinstance(node, nodes.Getattr) else (
                node.arg.value if isinstance(node.arg, nodes.Const) else None)
            found.add(Reference(node.node.name, None if key is None else str(key)))
        elif isinstance(node, nodes.Name) and node.ctx == "load":
            found.add(Reference(node.name, None))
        elif isinstance(node, nodes.Const) and has_template(node.value):
            found |= references(node.value)  # file_exists('~/{{ workspace.x }}')
    assigned = {n.name for n in ast.find_all(nodes.Name) if n.ctx in ("store", "param")}
    return frozenset(r for r in found if r.root not in assigned)


def _walk(node: nodes.Node) -> Iterator[nodes.Node]:
    yield node
    for child in node.iter_child_nodes():
        yield from _walk(child)


def parse_template(source: str, *, shell: bool = False) -> None:
    """Raise ``TemplateSyntaxError`` if ``source`` is not a valid template."""
    _template(source, shell)


# -- rendering ---------------------------------------------------------------

def render_string(source: str, context: Mapping[str, Any], *, shell: bool = False) -> Any:
    """Render one string. A string that is exactly one ``{{ expr }}`` keeps the
    expression's native type (a list stays a list) outside shell text."""
    if not has_template(source):
        return source
    if not shell:
        sole = _SOLE_EXPRESSION.match(source)
        if sole:
            value = _expression(sole.group(1).strip())(**context)
            if isinstance(value, Undefined):
                value._fail_with_undefined_error()  # raises UndefinedError naming the variable
            return value
    return _template(source, shell).render(context)


def render_text(source: str, context: Mapping[str, Any], *, shell: bool = False) -> str:
    """Render a whole document (a file template): always text."""
    return _template(source, shell).render(context)


def render_value(value: Any, context: Mapping[str, Any], *, shell_fields: frozenset[str] = frozenset(),
                 _top: bool = True) -> Any:
    """Render every template string inside a config structure.

    Top-level keys in ``shell_fields`` hold shell script text and are rendered
    with shell quoting.
    """
    if isinstance(value, str):
        return render_string(value, context)
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if _top and key in shell_fields and isinstance(item, str):
                out[key] = render_string(item, context, shell=True)
            else:
                out[key] = render_value(item, context, _top=False)
        return out
    if isinstance(value, (list, tuple)):
        return [render_value(v, context, _top=False) for v in value]
    return value


def template_strings(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Yield ``(field_path, string)`` for every template string in a structure."""
    if isinstance(value, str):
        if has_template(value):
            yield path, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from template_strings(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from template_strings(item, f"{path}[{i}]")


def expand_path(text: str, home: str | None) -> str:
    """Expand ``~`` to the workspace's home directory (or the user's)."""
    if home and (text == "~" or text.startswith("~/")):
        return home + text[1:]
    return os.path.expanduser(text)


def make_functions(context_ref: Callable[[], Mapping[str, Any]], home: str | None) -> dict[str, Any]:
    """The functions conditions and templates may call, bound to one context."""

    def path(text: str) -> str:
        return expand_path(str(render_string(str(text), context_ref())), home)

    def file_exists(text: str) -> bool:
        return os.path.exists(path(text))

    def dir_exists(text: str) -> bool:
        return os.path.isdir(path(text))

    return {"file_exists": file_exists, "dir_exists": dir_exists, "path": path}


def build_context(*, workspace: Any, config: Mapping[str, Any], variables: Mapping[str, Any],
                  env: Mapping[str, str], steps: Mapping[str, Any], home: str | None) -> dict[str, Any]:
    context: dict[str, Any] = {
        "workspace": workspace, "config": config, "vars": variables, "env": env, "steps": steps,
    }
    context.update(make_functions(lambda: context, home))
    return context
