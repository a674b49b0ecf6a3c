"""Variables and conditions, evaluated in the bounded Jinja2 sandbox.

Only template text is a template. The template's author writes config
strings, conditions, handler scripts and template files; everything else
(workspace fields, variables, secrets, upstream results, file contents) is a
*value*: it is inserted where a ``{{ }}`` asks for it and never rendered
again. Three environments share the sandbox of :mod:`.sandbox`:

- ``PLAIN`` renders config strings and template files: values become text;
- ``SHELL`` renders shell script text: values become references to
  environment variables (:mod:`.shell_text`), never script text;
- ``URL`` renders URLs (``api_call`` lines, ``x-dagrun-format: url`` fields):
  a value that begins the URL supplies its scheme and host (it must be an
  http(s) URL); every other value is percent-encoded, one path segment or
  query value, never a ``/``, ``?`` or ``#``.

All use ``StrictUndefined``: an unknown name is an error, never "".

Conditions accept Jinja expressions and the seed's SQL-like spelling
(``IS NOT NULL``, ``AND``, ``=``, ``<>``, ``TRUE``...). A small tokenizer
translates the SQL words to Jinja tokens (string literals are left alone),
then Jinja parses the result: nothing is ever ``eval``-ed or matched as a
substring. A string literal given to ``path``, ``file_exists`` or
``dir_exists`` may hold ``{{ }}`` (``file_exists('~/{{ workspace.x }}')``):
that literal is template text, expanded when the expression is compiled;
what the functions receive at run time is never rendered.

Names a template may use: ``workspace``, ``config``, ``vars``, ``env``,
``steps`` (upstream results only) and the functions above.
:func:`references` lists what an expression uses so the compiler can reject
unknown names before anything runs.
"""

from __future__ import annotations

import functools
import json
import os
import re
import urllib.parse
from dataclasses import dataclass
from collections.abc import Mapping  # for isinstance: typing's alias is several times slower
from typing import Any, Callable, Iterable, Iterator

from jinja2 import TemplateRuntimeError, TemplateSyntaxError, Undefined, nodes

from . import shell_text
from .sandbox import BoundedSandbox, budget

ROOT_NAMES = frozenset({"workspace", "config", "vars", "env", "steps"})
FUNCTION_NAMES = frozenset({"file_exists", "dir_exists", "path"})
KNOWN_NAMES = ROOT_NAMES | FUNCTION_NAMES


def _to_json(value: Any, indent: int | None = 2) -> str:
    if indent is not None and not 0 <= int(indent) <= 16:
        raise TemplateSyntaxError("to_json: indent must be between 0 and 16", 1)
    return json.dumps(value, indent=indent, default=str)


def _path_segment(value: Any) -> str:
    """A value as one folder or file name (``~/{{ vars.project | path_segment }}``):
    a value naming ``..``, ``.`` or several folders would take a path, and
    what a script does there (``rm -rf``), out of the home."""
    text = "" if value is None else str(value)
    if not text or text in (".", "..") or "/" in text or "\0" in text:
        raise TemplateRuntimeError(f"path_segment: {text[:60]!r} is not a single folder or file name "
                                   "(empty, '.', '..', or holds a '/')")
    return text


def _to_yaml(value: Any) -> str:
    import yaml
    return yaml.safe_dump(value, sort_keys=False, default_flow_style=False)


_URL = re.compile(r"\A([a-z][a-z0-9+.-]*)://[^\s\x00-\x1f\x7f]+\Z")


def _expand_literal_args(template: nodes.Template) -> nodes.Template:
    """``path('~/{{ x }}')`` -> ``path('~/' ~ x)``: the literal is template text."""
    for call in template.find_all(nodes.Call):
        if isinstance(call.node, nodes.Name) and call.node.name in FUNCTION_NAMES:
            call.args = [_literal_to_expression(a) for a in call.args]
    return template


def _literal_to_expression(arg: nodes.Expr) -> nodes.Expr:
    if not (isinstance(arg, nodes.Const) and has_template(arg.value)):
        return arg
    inner = PLAIN.parse(arg.value)
    parts: list[nodes.Expr] = []
    for node in inner.body:
        if not isinstance(node, nodes.Output):
            raise TemplateSyntaxError("only {{ }} may appear inside a string given to path() or file_exists()",
                                      arg.lineno)
        for child in node.nodes:
            parts.append(nodes.Const(child.data) if isinstance(child, nodes.TemplateData) else child)
    return nodes.Concat(parts, lineno=arg.lineno)


class _Environment(BoundedSandbox):
    def __init__(self, *, values_are_marked: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.values_are_marked = values_are_marked

    def transform(self, template: nodes.Template) -> nodes.Template:
        if self.values_are_marked:  # a {% filter %} block's output skips finalize: values would be text
            for block in template.find_all(nodes.FilterBlock):
                raise TemplateSyntaxError("{% filter %} blocks cannot be used in shell text or URLs: "
                                          "apply the filter inside {{ }}", block.lineno)
        return super().transform(_expand_literal_args(template))


def _make_env(**kwargs: Any) -> _Environment:
    env = _Environment(values_are_marked="finalize" in kwargs, **kwargs)
    env.filters["to_json"] = _to_json
    env.filters["to_yaml"] = _to_yaml
    env.filters["path_segment"] = _path_segment
    return env


PLAIN = _make_env()
SHELL = _make_env(finalize=shell_text.finalize_marker)
URL = _make_env(finalize=shell_text.finalize_marker)


def has_template(text: Any) -> bool:
    return isinstance(text, str) and ("{{" in text or "{%" in text)


# A URL: scheme, user and password, host, port (digits or an expression), path, query, fragment.
_URL_PARTS = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://(?:([^@/?#]*)@)?([^:/?#\s@]*)(?::([0-9\0]*))?"
                        r"(/[^?#\s]*)?(?:\?([^#\s]*))?(#\S*)?")
# Text that looks like a credential: a known token prefix, or a long run of letters and digits together.
_TOKEN_LIKE = re.compile(r"(?:ghp_|gho_|ghu_|ghs_|ghr_|github_pat_|glpat-|xox[abprs]-|sk-|AKIA)|"
                         r"(?=[A-Za-z0-9_\-]*[0-9])(?=[A-Za-z0-9_\-]*[A-Za-z])[A-Za-z0-9_\-]{16,}")
# A query parameter whose name says it holds a credential.
SECRET_NAME = re.compile(r"pass|pwd|secret|token|key|auth|sig|cred|session|code", re.I)
# What the author writes inside a tag that can hold a secret: a comment, a statement ({% set x = '...' %}).
_AUTH_HEADER = re.compile(r"\s*(Bearer|Token|Basic|Digest|ApiKey)\s+\0\s*", re.I)
_AUTHOR_TOKENS = frozenset({"comment", "comment_begin", "linecomment", "block_begin", "linestatement_begin",
                            "raw_begin"})


def _constants_say_nothing(text: str) -> bool:
    """Are the constants in the expressions no text of a secret: keys
    (``vars.creds['password']``, ``hosts[0]``) and empty strings
    (``default('')``)? Any other string or number may be output."""
    try:
        tree = PLAIN.parse(text)
    except TemplateSyntaxError:
        return False
    keys = {id(node.arg) for node in tree.find_all(nodes.Getitem)}
    return all(id(node) in keys or (isinstance(node.value, str) and not node.value.strip())
               for node in tree.find_all(nodes.Const))


def written_secret(text: Any, *, in_place: bool = False) -> bool:
    """Does a secret field's value hold a secret written in the template
    itself? Anything but text that only reads its secret from elsewhere
    does: a value without ``{{ }}`` (when not empty), a mapping or a list,
    and text with ``{{ }}`` unless what the author wrote is only names and
    keys in its expressions and, around them, a URL's parts that hold no
    credential: scheme, host, a numeric port, a user beside an expression
    password, path segments and query parameters that do not look like one
    (``postgresql://app:{{ vars.pw }}@db/x?sslmode=require``; but
    ``https://TOKEN@{{ h }}``, ``...?token=abc`` or a webhook's token in the
    path write one). What cannot be told is counted: it is then given again
    at resume."""
    if text in (None, ""):
        return False
    if not has_template(text):
        if not in_place or not isinstance(text, str):
            return True
        return _shape_writes_secret(text)  # (in_place: written text put where an expression was, as a URL's part)
    try:
        tokens = list(PLAIN.lex(text))
    except TemplateSyntaxError:
        return True  # (reported as such by the compile): kept from view meanwhile
    if any(kind in _AUTHOR_TOKENS for _, kind, _ in tokens) or not _constants_say_nothing(text):
        return True
    # The author's text, each expression a NUL (no value is one: they are refused).
    shape = "".join(value if kind == "data" else "\0" if kind == "variable_begin" else "" for _, kind, value in tokens)
    return _shape_writes_secret(shape)


def _shape_writes_secret(shape: str) -> bool:
    """Does the author's text (each expression a NUL) hold a credential?"""
    if not shape.replace("\0", "").strip():
        return False
    if _AUTH_HEADER.fullmatch(shape):
        return False  # "Bearer {{ vars.token }}": the scheme of an Authorization header, the token read
    url = _URL_PARTS.fullmatch(shape)
    if not url:
        return True
    userinfo, _, _, path, query, fragment = url.groups()
    user, colon, password = (userinfo or "").partition(":")
    if colon and password.replace("\0", "") or _TOKEN_LIKE.search(user):
        return True  # a password the author wrote; a token as the user (with a password or none: token@host)
    if fragment and fragment.replace("\0", "") != "#" or any(_TOKEN_LIKE.search(part) for part in
                                                             (path or "").split("/")):
        return True
    for parameter in filter(None, (query or "").split("&")):
        name, _, value = parameter.partition("=")
        if SECRET_NAME.search(name) and value.replace("\0", "") or _TOKEN_LIKE.search(value) or "\0" in name:
            return True
    return False


# Exactly one {{ expr }} and nothing around it (not even whitespace, which would be lost).
# Each {{ ... }} of a template string (what the secret rules read one by one).
EXPRESSION_BLOCK = re.compile(r"\{\{.*?\}\}", re.S)
_SOLE_EXPRESSION = re.compile(r"\A\{\{((?:(?!\}\}|\{\{).)*)\}\}\Z", re.S)


@functools.lru_cache(maxsize=4096)
def _template(source: str, kind: str):
    return {"plain": PLAIN, "shell": SHELL, "url": URL}[kind].from_string(source)


@functools.lru_cache(maxsize=4096)
def _expression(source: str):
    return PLAIN.compile_expression(source, undefined_to_none=False)


def sole_expression(source: str) -> str | None:
    """The expression of a string that is exactly one ``{{ expr }}``."""
    m = _SOLE_EXPRESSION.match(source)
    return m.group(1).strip() if m else None


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
    sole = sole_expression(text)
    if sole is not None:  # "{{ expr }}" is accepted as a condition too
        text = sole
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
    """A parsed condition: plain strings, so a plan holding it pickles."""

    source: str
    expression: str  # the Jinja spelling

    def evaluate(self, context: Mapping[str, Any]) -> bool:
        with budget():
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
    bases: set[int] = set()  # names read through an attribute or key (workspace.x), not whole
    for node in _walk(ast):
        if isinstance(node, (nodes.Getattr, nodes.Getitem)) and isinstance(node.node, nodes.Name):
            key = node.attr if isinstance(node, nodes.Getattr) else (
                node.arg.value if isinstance(node.arg, nodes.Const) else None)
            found.add(Reference(node.node.name, None if key is None else str(key)))
            bases.add(id(node.node))
        elif isinstance(node, nodes.Name) and node.ctx == "load" and id(node) not in bases:
            found.add(Reference(node.name, None))
        elif isinstance(node, nodes.Const) and has_template(node.value):
            found |= references(node.value)  # file_exists('~/{{ workspace.x }}')
    assigned = {n.name for n in ast.find_all(nodes.Name) if n.ctx in ("store", "param")}
    return frozenset(r for r in found if r.root not in assigned and r.root != "_dagrun_loop")


@functools.lru_cache(maxsize=1024)
def leaf_references(source: str) -> frozenset[tuple[str, ...]]:
    """The dotted paths a template string reads (``vars.pw``,
    ``steps.gen.result.pw``), as far as they are written with constant
    attributes and keys: ``("vars", "pw")``, ``("steps", "gen", "result", "pw")``."""
    found: set[tuple[str, ...]] = set()
    inner: set[int] = set()  # nodes that are the base of a longer path
    paths: list[tuple[nodes.Node, tuple[str, ...]]] = []
    for node in _walk(PLAIN.parse(source)):
        path: list[str] = []
        current = node
        while isinstance(current, (nodes.Getattr, nodes.Getitem)):
            key = current.attr if isinstance(current, nodes.Getattr) else (
                current.arg.value if isinstance(current.arg, nodes.Const) else None)
            if key is None:
                path = []
                break
            path.insert(0, str(key))
            inner.add(id(current.node))
            current = current.node
        if path and isinstance(current, nodes.Name):
            paths.append((node, (current.name, *path)))
    found = {p for node, p in paths if id(node) not in inner}
    return frozenset(found)


def _walk(node: nodes.Node) -> Iterator[nodes.Node]:
    yield node
    for child in node.iter_child_nodes():
        yield from _walk(child)


def parse_template(source: str, *, shell: bool = False) -> None:
    """Raise ``TemplateSyntaxError`` if ``source`` is not a valid template, or
    :class:`~.shell_text.UnsafeContext` if shell text puts a value where bash
    would parse it."""
    _template(source, "shell" if shell else "plain")
    if shell:
        shell_text.check_source(source)


# -- rendering ---------------------------------------------------------------

def render_string(source: str, context: Mapping[str, Any]) -> Any:
    """Render one config string. A string that is exactly one ``{{ expr }}``
    keeps the expression's native type (a list stays a list)."""
    if not has_template(source):
        return source
    with budget():
        sole = sole_expression(source)
        if sole is not None:
            value = _expression(sole)(**context)
            if isinstance(value, Undefined):
                value._fail_with_undefined_error()  # raises UndefinedError naming the variable
            return value
        return _template(source, "plain").render(context)


def render_text(source: str, context: Mapping[str, Any]) -> str:
    """Render a whole document (a template file): always text."""
    with budget():
        return _template(source, "plain").render(context)


def render_shell(source: str, context: Mapping[str, Any]) -> shell_text.ShellScript:
    """Render shell script text: values become environment variables."""
    if not has_template(source):
        shell_text.check_plain(source)  # $DAGRUN_WORKSPACE_ID and the like hold values too
        return shell_text.ShellScript(source, {})
    values, token = shell_text.collecting()
    try:
        with budget():
            rendered = _template(source, "shell").render(context)
    finally:
        shell_text.release(token)
    return shell_text.substitute(rendered, values)


def render_url(source: str, context: Mapping[str, Any], schemes: Iterable[str] | None = None) -> str:
    """Render a URL: a value that begins it must be a URL itself (http(s),
    or one of ``schemes``: ``postgresql`` takes ``postgresql+psycopg2``
    too), the others are percent-encoded."""
    allowed = tuple(schemes or ("http", "https"))
    source = source.strip()
    values, token = shell_text.collecting()
    try:
        with budget():
            rendered = _template(source, "url").render(context)
    finally:
        shell_text.release(token)

    def value(m: re.Match) -> str:
        text = shell_text.as_text(values[int(m.group(1))])
        if m.start() == 0:
            scheme = _URL.match(text)
            if scheme is None or scheme.group(1).split("+", 1)[0] not in allowed:
                raise ValueError(f"{text!r} is not a URL of {'/'.join(allowed)}")
            return text
        if text in (".", ".."):  # as a path segment, a server (or a proxy) walks up, %-encoded or not
            raise ValueError(f"{text!r} cannot be a part of a URL (it would name the folder above)")
        return urllib.parse.quote(text, safe="")

    return shell_text.MARKER.sub(value, rendered)


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
    """``~`` is the workspace home; a relative path is relative to it too.
    Without a home (no workspace), ``~`` is left alone."""
    text = str(text)
    if home:
        if text == "~" or text.startswith("~/"):
            return home + text[1:]
        if not text.startswith(("/", "~")):
            return os.path.join(home, text)
    return text


def make_functions(home: str | None) -> dict[str, Callable[[Any], Any]]:
    """The functions conditions and templates may call. They take values as
    they are: nothing they receive is rendered."""

    def path(text: Any) -> str:
        return expand_path(str(text), home)

    def file_exists(text: Any) -> bool:
        return os.path.exists(path(text))

    def dir_exists(text: Any) -> bool:
        return os.path.isdir(path(text))

    return {"file_exists": file_exists, "dir_exists": dir_exists, "path": path}


def build_context(*, workspace: Any, config: Mapping[str, Any], variables: Mapping[str, Any],
                  env: Mapping[str, str], steps: Mapping[str, Any], home: str | None) -> dict[str, Any]:
    context: dict[str, Any] = {
        "workspace": workspace, "config": config, "vars": variables, "env": env, "steps": steps,
    }
    context.update(make_functions(home))
    return context
