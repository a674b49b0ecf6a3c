"""Reading definitions: template and action documents, the action library,
and the templates a template may extend.

Documents are YAML or JSON. JSON may carry the seed's comments (``// ...``
lines and trailing ``-- ...``), which are stripped outside string literals.
Every document is checked against its JSON Schema in ``schema/``; each
violation becomes a :class:`~dagrun.errors.Problem` naming the field.

Documents may come from anyone who can edit a template, so reading one is
bounded: at most :data:`MAX_DOCUMENT_BYTES`, valid UTF-8, nested at most
:data:`MAX_DEPTH` levels and at most :data:`MAX_NODES` values once YAML
aliases are expanded (an alias "bomb" is refused before anything walks it).
Each limit is one clear problem naming the file, never a traceback.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
from dataclasses import replace
from pathlib import Path
from collections.abc import Mapping  # for isinstance: typing's alias is several times slower
from typing import TYPE_CHECKING, Any, Iterable, Iterator

import yaml

from ..errors import ActionDefinitionError, InputError, Problem, TemplateError
from ..spec import ActionSpec, ErrorMatch, Limits, Lock, frozen_mapping
from .configs import field_path

if TYPE_CHECKING:
    import jsonschema  # loaded where a document has a problem to describe

log = logging.getLogger("dagrun")

MAX_DOCUMENT_BYTES = 1_000_000
MAX_DEPTH = 64
MAX_NODES = 2_000_000  # 100,000 steps of a few fields each; a YAML alias bomb stops here
MAX_TEXT = 16_000_000  # characters of all strings as reached (a long string's aliases count each time)
MAX_MERGES = 100  # YAML merge keys (<<) in one mapping
MAX_SEXAGESIMAL_PARTS = 16  # YAML 1.1 base-60 numbers (1:30:00): PyYAML's conversion is quadratic in parts


@functools.lru_cache(maxsize=None)
def package_dir(name: str) -> Path:
    """Folder of one of the shipped top-level folders (handlers, schema, seeds)."""
    module = __import__(f"dagrun.{name}", fromlist=["__file__"])
    return Path(module.__file__).parent


def strip_json_comments(text: str) -> str:
    """Remove ``//`` and ``--`` comments that stand outside JSON strings."""
    out: list[str] = []
    i, n = 0, len(text)
    in_string = False
    while i < n:
        c = text[i]
        if in_string:
            out.append(c)
            if c == "\\" and i + 1 < n:
                out.append(text[i + 1])
                i += 1
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
            out.append(c)
        elif text.startswith("//", i) or (text.startswith("--", i) and (i == 0 or text[i - 1].isspace())):
            while i < n and text[i] != "\n":
                i += 1
            continue
        else:
            out.append(c)
        i += 1
    return "".join(out)


def read_text(path: Path, limit: int = MAX_DOCUMENT_BYTES) -> str:
    """A text file, bounded and UTF-8, or one clear problem."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    return _decode(data, path, limit)


def _read_regular_at(dir_fd: int, path: Path, limit: int = MAX_DOCUMENT_BYTES) -> str:
    import errno
    import os
    import stat
    try:  # (O_NONBLOCK: a FIFO put there does not hold the command while its writer swaps folders)
        with os.fdopen(os.open(path.name, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW, dir_fd=dir_fd), "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                raise InputError(f"cannot read {path}: not a regular file")
            data = fh.read(limit + 1)
    except OSError as exc:
        why = "a symlink (whose owner could point it anywhere): name the file itself" \
            if exc.errno == errno.ELOOP else exc.strerror or exc
        raise InputError(f"cannot read {path}: {why}") from None
    return _decode(data, path, limit)


def read_beneath(folder: Path, name: str, limit: int = MAX_DOCUMENT_BYTES) -> str | None:
    """The file ``name`` inside ``folder`` (None when there is none), opened
    component by component from the folder's descriptor without following
    a symlink: whoever can write in the folder cannot swap a checked path
    for a link to a file only dagrun may read."""
    import errno
    import os
    import stat
    parts = name.split("/")
    if name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"{name!r} is outside the folder {folder}")
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts[:-1]:
            try:
                next_fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except FileNotFoundError:
                return None
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise ValueError(f"{name!r} goes through a symlink or a file: refused") from None
                raise
            os.close(fd)
            fd = next_fd
        try:
            handle = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise ValueError(f"{name!r} is a symlink: refused") from None
            if exc.errno == errno.EISDIR:
                return None
            raise
        with os.fdopen(handle, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                return None
            data = fh.read(limit + 1)
    finally:
        os.close(fd)
    return _decode(data, folder / name, limit)


def _decode(data: bytes, path: Path, limit: int) -> str:
    if len(data) > limit:
        raise TemplateError(Problem(str(path), f"larger than {limit} bytes"))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise TemplateError(Problem(str(path), f"not UTF-8 text (byte {exc.start}, line {line})")) from None


class _Refused(Exception):
    """A value PyYAML would expand at a cost out of proportion to the text."""


_MERGE_TAG = "tag:yaml.org,2002:merge"


class _BoundedLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """PyYAML's safe loader (libyaml's when PyYAML has it: ten times faster);
    aliases are counted by :func:`check_shape`. What PyYAML expands while
    it reads, before any check can see it, is bounded here: merge keys
    (``<<: *base`` copies the base's pairs into every mapping that merges
    it; each ``<<`` in a mapping costs a pass over it) and base-60 numbers."""

    _pairs = 0

    def flatten_mapping(self, node: Any) -> None:
        if len(node.value) > MAX_MERGES and sum(1 for key, _ in node.value if key.tag == _MERGE_TAG) > MAX_MERGES:
            raise _Refused(f"more than {MAX_MERGES} merge keys (<<) in one mapping (line {node.start_mark.line + 1})")
        super().flatten_mapping(node)
        self._pairs += len(node.value)
        if self._pairs > MAX_NODES:
            raise _Refused(f"more than {MAX_NODES} values (YAML aliases and merge keys included)")

    def construct_yaml_int(self, node: Any) -> int:
        self._few_parts(node)
        return super().construct_yaml_int(node)

    def construct_yaml_float(self, node: Any) -> float:
        self._few_parts(node)
        return super().construct_yaml_float(node)

    def _few_parts(self, node: Any) -> None:
        if isinstance(node.value, str) and node.value.count(":") >= MAX_SEXAGESIMAL_PARTS:
            raise _Refused(f"a base-60 number of more than {MAX_SEXAGESIMAL_PARTS} parts "
                           f"(line {node.start_mark.line + 1})")


_BoundedLoader.add_constructor("tag:yaml.org,2002:int", _BoundedLoader.construct_yaml_int)
_BoundedLoader.add_constructor("tag:yaml.org,2002:float", _BoundedLoader.construct_yaml_float)


def _yaml_error(exc: yaml.YAMLError) -> str:
    """What PyYAML says, with lines and columns, without its "<unicode string>"."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    if mark is None or problem is None:
        return str(exc).replace('in "<unicode string>", ', "")
    context = getattr(exc, "context", None)
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1}" + (f", {context})" if context else ")")


def parse_text(text: str, source: str, *, json_document: bool) -> Any:
    try:
        if json_document:
            return json.loads(strip_json_comments(text))
        return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 - a SafeLoader subclass
    except _Refused as exc:
        raise TemplateError(Problem(source, str(exc))) from None
    except RecursionError:
        raise TemplateError(Problem(source, f"nested more than {MAX_DEPTH} levels deep")) from None
    except json.JSONDecodeError as exc:
        raise TemplateError(Problem(source, f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})")) \
            from None
    except yaml.YAMLError as exc:
        raise TemplateError(Problem(source, f"not valid YAML: {_yaml_error(exc)}")) from None
    except (ValueError, ArithmeticError) as exc:  # e.g. an integer of more digits than Python converts
        raise TemplateError(Problem(source, f"a value cannot be read: {exc}")) from None


def check_shape(data: Any, source: str) -> None:
    """Refuse documents too deep or too large once aliases are expanded
    (values, and characters of text, counted each time they are reached),
    and text that is not Unicode (a lone surrogate, which JSON's escapes
    can make). Level by level (each a flat list of references, no tuple per
    value), and it stops at the first bound: it never walks, nor lists, a
    bomb whole (the next level is bounded as it fills: about 16 MB at
    most)."""
    too_many = f"more than {MAX_NODES} values (YAML aliases included)"
    level, depth, nodes, text = [data], 1, 0, 0
    while level:
        if depth > MAX_DEPTH:
            raise TemplateError(Problem(source, f"nested more than {MAX_DEPTH} levels deep"))
        nodes += len(level)
        below: list[Any] = []
        extend = below.extend
        for value in level:
            kind = type(value)
            if kind is str:  # the common leaves first, by exact type (an ABC check costs more than the walk)
                text += len(value)
                if text > MAX_TEXT or len(value) > MAX_DOCUMENT_BYTES or not value.isascii():  # (rarely: a call)
                    _check_text(value, text, source)
            elif kind is dict or isinstance(value, Mapping):
                extend(value.values())
                if _STR_KEYS.issuperset(map(type, value)):  # the common keys: checked together, in C
                    keys = "".join(value)
                    text += len(keys)
                    if text > MAX_TEXT or len(keys) > MAX_DOCUMENT_BYTES or not keys.isascii():
                        _check_text(keys, text, source, max(map(len, value), default=0), "a key")
                else:  # numbers, YAML complex keys (tuples), ...: checked as values are
                    extend(value)
                if nodes + len(below) > MAX_NODES:
                    raise TemplateError(Problem(source, too_many))
            elif kind is list or isinstance(value, (list, tuple, set, frozenset)):
                extend(value)
                if nodes + len(below) > MAX_NODES:
                    raise TemplateError(Problem(source, too_many))
            elif isinstance(value, str):
                text += len(value)
                _check_text(str(value), text, source)
            elif isinstance(value, (bytes, bytearray)):
                text += len(value)
                _check_text("", text, source, len(value))
            elif isinstance(value, float) and not math.isfinite(value):
                raise TemplateError(Problem(source, f"{value} is not a number dagrun can use (only finite numbers)"))
            elif isinstance(value, int) and value.bit_length() > 256:
                raise TemplateError(Problem(source, "a number too large to be meant (more than 256 bits)"))
        level, depth = below, depth + 1


def _check_text(value: str, total: int, source: str, longest: int | None = None, what: str = "a string") -> None:
    """One string (or the keys of a mapping, joined: ``longest`` is the
    longest key), with ``total`` characters of text so far."""
    if (len(value) if longest is None else longest) > MAX_DOCUMENT_BYTES:
        raise TemplateError(Problem(source, f"{what} longer than {MAX_DOCUMENT_BYTES} characters"))
    if total > MAX_TEXT:
        raise TemplateError(Problem(source, f"more than {MAX_TEXT} characters of text (YAML aliases included)"))
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise TemplateError(Problem(source, "text that is not valid Unicode (a lone surrogate)")) from None


_STR_KEYS = frozenset({str})


def names_a_file(ref: Any) -> bool:
    """Does a reference name a file: a suffix, a folder, a Path? A bare name
    is a stored or seed template's, never a file of the working folder (root
    running `dagrun run demo` in a folder a user can write must not run that
    user's ./demo)."""
    return isinstance(ref, Path) or Path(ref).suffix in (".yaml", ".yml", ".json") or "/" in str(ref)


def read_document(path: Path, *, dir_fd: int | None = None) -> dict[str, Any]:
    """A document file (``dir_fd``: ``path``'s name in that open folder, a
    regular file only: what the caller writes beside it stays in the same
    folder, whatever its path leads to meanwhile)."""
    text = read_text(path) if dir_fd is None else _read_regular_at(dir_fd, path)
    data = parse_text(text, str(path), json_document=path.suffix.lower() == ".json")
    if not isinstance(data, dict):
        raise TemplateError(Problem(str(path), "expected a mapping at the top level"))
    check_shape(data, str(path))
    return data


@functools.cache
def load_schema(name: str) -> dict[str, Any]:
    return json.loads((package_dir("schema") / f"{name}.schema.json").read_text())


def _inline_refs(node: Any, defs: Mapping[str, Any]) -> Any:
    """Replace local ``{"$ref": "#/$defs/x"}`` by the definition: resolving
    references costs jsonschema more than the checks themselves."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/") and len(node) == 1:
            return _inline_refs(defs[ref[len("#/$defs/"):]], defs)
        return {k: _inline_refs(v, defs) for k, v in node.items() if k != "$defs"}
    if isinstance(node, list):
        return [_inline_refs(v, defs) for v in node]
    return node


@functools.cache
def _inlined_schema(name: str) -> dict[str, Any]:
    schema = load_schema(name)
    return _inline_refs(schema, schema.get("$defs", {}))


@functools.cache
def _validator(name: str) -> jsonschema.protocols.Validator:
    from .configs import strict_validator  # jsonschema: loaded only for a document with a problem
    return strict_validator(_inlined_schema(name))


from .quick_schema import surely_valid  # noqa: E402


def schema_problems(document: Any, schema: str, source: str) -> list[Problem]:
    """Validate ``document`` against ``schema/<schema>.schema.json``."""
    if surely_valid(_inlined_schema(schema), document):  # the common case, without jsonschema's walk
        return []
    validator = _validator(schema)
    problems = []
    for error in sorted(validator.iter_errors(document), key=lambda e: list(map(str, e.absolute_path))):
        path = list(error.absolute_path)
        step = None
        if schema == "template" and len(path) >= 2 and path[0] == "actions":
            item = document["actions"][path[1]]
            step = str(item.get("id") or item.get("sequence_order", f"#{path[1] + 1}")) if isinstance(item, dict) else f"#{path[1] + 1}"
            path = path[2:]
        if error.validator == "additionalProperties" and isinstance(error.instance, Mapping):
            known = list((error.schema.get("properties") or {}).keys())
            for key in sorted(str(k) for k in set(error.instance) - set(known)):
                problems.append(Problem(source, f"unknown field{_did_you_mean(key, known)}", step=step,
                                        field=field_path([*path, key])))
            continue
        problems.append(Problem(source, _describe(error), step=step, field=field_path(path) or None))
    return problems


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    import difflib
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


@functools.cache
def step_fields() -> frozenset[str]:
    """The fields a template step may have."""
    return frozenset(load_schema("template")["$defs"]["step"]["properties"])


def _describe(error: jsonschema.ValidationError) -> str:
    if error.validator == "additionalProperties":
        return error.message.replace("Additional properties are not allowed", "unknown field(s)")
    if error.validator == "oneOf":
        return f"{error.instance!r} has the wrong shape"
    return error.message


# -- actions ------------------------------------------------------------------

def _locks(items: Iterable[Any]) -> tuple[Lock, ...]:
    return tuple(Lock.parse(i) for i in items or ())


def _nested_schema_keyword(schema: Any) -> str | None:
    """The path of a ``$schema`` below the top of ``schema``, if any."""
    stack: list[tuple[Any, str]] = [(schema, "")]
    while stack:
        node, path = stack.pop()
        if isinstance(node, Mapping):
            if path and "$schema" in node:
                return path
            stack.extend((v, f"{path}.{k}" if path else str(k)) for k, v in node.items())
        elif isinstance(node, list):
            stack.extend((v, f"{path}[{i}]") for i, v in enumerate(node))
    return None


# What dagrun reads in a config schema, on a top-level property only (configs.py):
# anywhere else it would be silently ignored (a nested "secret" stored in clear,
# a nested "shell" field rendered as plain text), so it is refused.
_EXTENSIONS = {"x-secret", "writeOnly", "x-dagrun-format", "x-dagrun-url-schemes", "x-dagrun-inline-to",
               "x-dagrun-keys"}
_FORMATS = {"shell", "url", "template-file"}
# Keywords whose value maps names to schemas (the names are no keywords), and keywords whose value is data.
_NAMED_SCHEMAS = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas",
                            "dependencies"})
_DATA = frozenset({"default", "const", "enum", "examples", "required", "$comment", "title", "description"})
_REFS = ("$ref", "$dynamicRef", "$recursiveRef")


def extension_problems(schema: Any) -> list[str]:
    """Where ``schema`` (a config schema) puts a dagrun extension that would
    not be read: anywhere but directly on a top-level property (every
    mapping is looked into, whatever keyword holds it), or an unknown one;
    and where jsonschema would apply one that dagrun does not read: through
    a reference (each must be a path in this schema to a part without
    marks) or below an ``$id``."""
    found: list[str] = []
    # (node, path, is it a schema (else a mapping of names to schemas), is it a top-level property)
    stack: list[tuple[Any, str, bool, bool]] = [(schema, "", True, False)]
    while stack:
        node, path, is_schema, top = stack.pop()
        if isinstance(node, (list, tuple)):
            stack.extend((v, f"{path}[{i}]", is_schema, False) for i, v in enumerate(node))
            continue
        if not isinstance(node, Mapping):
            continue
        join = (lambda key: f"{path}.{key}") if path else str
        if not is_schema:
            stack.extend((v, join(k), True, path == "properties") for k, v in node.items())
            continue
        where = path or "the top"
        for key, value in node.items():
            if key in _DATA:
                continue
            if key in _EXTENSIONS or str(key).startswith("x-dagrun-"):
                if key == "writeOnly" and not value:
                    continue
                if key not in _EXTENSIONS:
                    found.append(f"unknown extension {key} (at {where}); dagrun reads "
                                 f"{', '.join(sorted(_EXTENSIONS))}")
                elif not top:
                    owner = path.split(".")[1] if path.startswith("properties.") else None
                    found.append(f"{key} is read on a top-level property of config_schema only (found at {where})"
                                 + (f"; mark the field {owner!r} itself"
                                    if owner and key in ("x-secret", "writeOnly") else ""))
                elif key == "x-dagrun-format" and value not in _FORMATS:
                    found.append(f"x-dagrun-format at {where} is {value!r}; expected one of "
                                 f"{', '.join(sorted(_FORMATS))}")
                continue
            if key == "$id" and path:  # the "#/..." of a reference below it would be another document's
                found.append(f"$id at {where}: only the top of config_schema may name itself")
            if key in _REFS and isinstance(value, str):
                target = _pointer(schema, value)
                if target is None:
                    found.append(f"{key} {value!r} at {where} is not a path in this schema (#/...): dagrun reads "
                                 "its marks only where they are written, and refuses a reference it cannot follow")
                elif marks := _marked(target):
                    found.append(f"{where} takes {', '.join(sorted(marks))} through {key} {value}, which "
                                 f"dagrun does not follow: mark the top-level property itself")
            stack.append((value, join(key), key not in _NAMED_SCHEMAS or not isinstance(value, Mapping), False))
    return sorted(found)


def _marked(node: Any) -> set[str]:
    """The dagrun extensions anywhere in ``node``."""
    found: set[str] = set()
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, Mapping):
            found |= {str(k) for k, v in item.items()
                      if (k in _EXTENSIONS or str(k).startswith("x-dagrun-")) and not (k == "writeOnly" and not v)}
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return found


def _pointer(document: Any, reference: str) -> Any:
    """What a local JSON pointer (``#`` or ``#/a/b``, percent-encoded or not)
    in ``document`` names; None for anything else (an anchor, another
    document, a path to nothing)."""
    from urllib.parse import unquote
    if reference != "#" and not reference.startswith("#/"):
        return None
    node = document
    # As jsonschema's referencing reads it: the fragment is percent-decoded first, then split ("%2F" is a "/").
    for part in (p.replace("~1", "/").replace("~0", "~") for p in unquote(reference[2:]).split("/") if p):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, (list, tuple)) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def parse_action(doc: Mapping[str, Any], *, source: str = "<dict>", base_dir: Path | None = None,
                 library: bool = False, shipped: bool = False) -> ActionSpec:
    """``shipped``: an action of dagrun's own library, whose config schema
    the test suite checks against its metaschema (a third of start-up)."""
    name = doc.get("name", source) if isinstance(doc, Mapping) else source
    label = f"action {name}" if source == "<dict>" else f"{source}: action {name}"  # which file, of a folder
    problems = schema_problems(doc, "action", label)
    if not problems and doc.get("config_schema") and not shipped:
        import jsonschema
        try:
            jsonschema.validators.validator_for(doc["config_schema"]).check_schema(doc["config_schema"])
        except jsonschema.SchemaError as exc:
            where = ".".join(["config_schema", *map(str, exc.path)])
            message = exc.message
            if exc.path and exc.path[-1] == "type" and exc.validator == "anyOf":
                message = (f"{exc.instance!r} is not a JSON Schema type (array, boolean, integer, null, number, "
                           "object, string)")
            problems.append(Problem(label, f"invalid JSON Schema: {message}", field=where))
        else:
            where = _nested_schema_keyword(doc["config_schema"])
            if where is not None:
                # jsonschema would check that part with the stock validator of its draft, whose
                # pattern lets "alice\n" through "^[a-z]+$": one schema, one draft, checked strictly.
                problems.append(Problem(label, f"$schema is allowed only at the top of config_schema "
                                               f"(found at {where})", field="config_schema"))
            problems += [Problem(label, message, field="config_schema")
                         for message in extension_problems(doc["config_schema"])]
            problems += _default_problems(doc, label)
    matches = {}
    for key in ("retry_when", "never_retry_when"):
        try:
            matches[key] = ErrorMatch.parse(doc.get(key)) if not problems else None
        except re.error as exc:
            problems.append(Problem(label, f"bad regular expression: {exc}", field=f"{key}.output_matches"))
    if doc.get("works_in_home") is False and not library:
        problems.append(Problem(label, UNTRUSTED_WORKS_IN_HOME, field="works_in_home"))
    if problems:
        raise ActionDefinitionError(problems)
    return ActionSpec(
        name=doc["name"],
        display_name=doc.get("display_name") or doc["name"].replace("_", " ").capitalize(),
        category=doc.get("category", "custom"),
        description=doc.get("description") or "",
        action_type=doc["action_type"],
        execution_handler=doc["execution_handler"],
        validation_handler=doc.get("validation_handler"),
        rollback_handler=doc.get("rollback_handler"),
        config_schema=frozen_mapping(doc.get("config_schema")),
        default_config=frozen_mapping(doc.get("default_config")),
        max_retries=doc.get("max_retries", 3),
        timeout_seconds=float(doc.get("timeout_seconds", 300)),
        retry_delay_seconds=float(doc.get("retry_delay_seconds", 5)),
        exponential_backoff=doc.get("exponential_backoff", True),
        max_retry_delay_seconds=float(doc.get("max_retry_delay_seconds", 300)),
        retry_jitter=doc.get("retry_jitter", False),
        retry_when=matches["retry_when"], never_retry_when=matches["never_retry_when"],
        requires_actions=tuple(doc.get("requires_actions", ())),
        conflicts_with_actions=tuple(doc.get("conflicts_with_actions", ())),
        locks=_locks(doc.get("locks")),
        condition_expression=doc.get("condition_expression"),
        estimated_duration_seconds=doc.get("estimated_duration_seconds"),
        requires_sudo=doc.get("requires_sudo", False),
        requires_network=doc.get("requires_network", False),
        disk_space_required_mb=doc.get("disk_space_required_mb"),
        is_active=doc.get("is_active", True),
        is_system=doc.get("is_system", True),
        check_first=doc.get("check_first", False),
        limits=Limits.parse(doc.get("limits")),
        works_in_home=doc.get("works_in_home", True),
        source=source,
        base_dir=base_dir,
        library=library,
    )


def _action_files(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*")):
        if path.suffix in (".yaml", ".yml") or (path.suffix == ".json" and not path.name.endswith(".schema.json")):
            if path.is_file():
                yield path


def _default_problems(doc: Mapping[str, Any], label: str) -> list[Problem]:
    """An action's default_config must fit its config_schema (an unknown
    field, a wrong type), told with the action, not at every step using it.
    Required fields may be missing (a step gives them); templated values
    are checked once rendered."""
    defaults = doc.get("default_config")
    schema = doc["config_schema"]
    if not isinstance(defaults, Mapping) or not defaults or not isinstance(schema, Mapping):
        return []
    from .configs import strict_validator
    from .expressions import has_template
    plain = {k: v for k, v in defaults.items() if not has_template(v)}
    found = []
    for error in strict_validator({**schema, "required": []}).iter_errors(plain):
        where = ".".join(["default_config", *map(str, error.path)])
        if error.validator == "additionalProperties" and not error.path:
            extra = sorted(set(plain) - set(schema.get("properties") or {}))
            found += [Problem(label, f"{key!r} is not a field of config_schema", field=f"default_config.{key}")
                      for key in extra]
        else:
            found.append(Problem(label, error.message, field=where))
    return found


def load_action_file(path: Path, *, library: bool = False, shipped: bool = False) -> list[ActionSpec]:
    """A file holds one action, or a list of actions under ``actions:``."""
    doc = read_document(path)
    items = doc["actions"] if isinstance(doc.get("actions"), list) else [doc]
    return [parse_action(item, source=str(path), base_dir=path.parent, library=library, shipped=shipped)
            for item in items]


@functools.cache
def standard_library() -> Mapping[str, ActionSpec]:
    """The actions shipped in ``handlers/`` (loaded once per process)."""
    library: dict[str, ActionSpec] = {}
    problems: list[Problem] = []
    for path in _action_files(package_dir("handlers")):
        try:
            for action in load_action_file(path, library=True, shipped=True):
                library[action.name] = action
        except TemplateError as exc:
            problems += exc.problems
    if problems:
        raise ActionDefinitionError(problems)
    return frozen_mapping(library)


UNTRUSTED_WORKS_IN_HOME = ("works_in_home: false is honoured only for the library's and the operator's trusted actions "
                           "(--trusted-actions, trusted_actions=): an untrusted action always has its home checked")


def build_library(extra: Iterable[Any] | None = None, trusted: Iterable[Any] | None = None, *,
                  check_handlers: bool = False) -> dict[str, ActionSpec]:
    """The standard library extended (or overridden) by user-defined actions:
    dicts, ActionSpecs, definition files or folders of them. ``trusted``
    ones are the operator's own: like the standard library, they may need
    root and run unsandboxed; the others are untrusted code.
    ``check_handlers``: build the given actions' handlers now (validate, a
    service starting); a compile does it for the actions its steps use,
    naming the step."""
    library = dict(standard_library())
    problems: list[Problem] = []
    items = [(item, False) for item in extra or ()] + [(item, True) for item in trusted or ()]
    for item, is_trusted in items:
        try:
            if isinstance(item, ActionSpec):
                found = [item if item.library == is_trusted else replace(item, library=is_trusted)]
                misplaced = extension_problems(item.config_schema)
                if misplaced:
                    raise ActionDefinitionError([Problem(f"action {item.name}", message, field="config_schema")
                                                 for message in misplaced])
                if not is_trusted and not item.works_in_home:
                    raise ActionDefinitionError([Problem(f"action {item.name}", UNTRUSTED_WORKS_IN_HOME,
                                                         field="works_in_home")])
            elif isinstance(item, Mapping):
                found = [parse_action(item, library=is_trusted)]
            else:
                path = Path(item)
                if path.is_dir():  # each file's problems, not the first file's only
                    found = []
                    for file in _action_files(path):
                        try:
                            found += load_action_file(file, library=is_trusted)
                        except TemplateError as exc:
                            problems += exc.problems
                elif path.exists():
                    found = load_action_file(path, library=is_trusted)
                else:
                    raise InputError(f"action definition {path} does not exist")
            for action in found:
                library[action.name] = action
                if check_handlers:
                    problems += handler_problems(action)
        except TemplateError as exc:
            problems += exc.problems
    if problems:
        raise ActionDefinitionError(problems)
    return library


def handler_problems(action: ActionSpec) -> list[Problem]:
    """A handler that cannot be built (bad Jinja, shell text that puts a
    value where bash would parse it, a missing file): told when the action
    is given, not when a template first uses it. (The standard library's
    are checked by its tests.)"""
    from ..run.handler_types import handler_problems as problems_of
    return [Problem(f"action {action.name}", message, field=field) for field, message in problems_of(action)]


# -- templates ----------------------------------------------------------------

class TemplateSource:
    """Finds templates by path, by name (optionally pinned to a version) or by
    ``template_id``: in given documents, beside the extending file, then in
    the shipped ``seeds/templates``."""

    def __init__(self, documents: Iterable[Mapping[str, Any]] = (), search_dirs: Iterable[Path] = ()):
        self.documents = [dict(d) for d in documents]
        self.search_dirs = [Path(d) for d in search_dirs]
        self.skipped: dict[str, str] = {}  # files beside it that are no templates: said only if no base is found

    def _candidates(self, near: Path | None) -> Iterator[tuple[dict[str, Any], str, Path | None]]:
        for doc in self.documents:
            yield doc, doc.get("name", "<dict>"), None
        dirs = ([near] if near else []) + self.search_dirs + [package_dir("seeds") / "templates"]
        seen: set[Path] = set()
        for directory in dirs:
            for path in sorted(directory.glob("*")):
                if path.suffix in (".yaml", ".yml", ".json") and path not in seen:
                    seen.add(path)
                    try:
                        yield read_document(path), str(path), path.parent
                    except (TemplateError, InputError) as exc:  # a neighbour that is not a template
                        log.debug("skipped %s while looking for templates: %s", path, exc)
                        self.skipped[str(path)] = str(exc)
                        continue

    def open(self, ref: Any) -> tuple[dict[str, Any], str, Path | None]:
        """Resolve what a user passed: a dict, a path, or a template name.
        A legacy monolithic config is converted on the fly."""
        from .legacy import convert, is_legacy
        doc, origin, base_dir = self._open(ref)
        if is_legacy(doc):
            doc = convert(doc)
        return doc, origin, base_dir

    def _open(self, ref: Any) -> tuple[dict[str, Any], str, Path | None]:
        if isinstance(ref, Mapping):
            check_shape(ref, str(ref.get("name", "<dict>")))
            return dict(ref), str(ref.get("name", "<dict>")), None
        path = Path(ref)
        if names_a_file(ref):
            if not path.exists():
                raise InputError(f"template file {path} does not exist")
            return read_document(path), str(path), path.parent.resolve()
        for doc in self.documents:  # templates given (or stored in the database) come first
            if doc.get("name") == str(ref):
                return dict(doc), str(ref), None
        seeds = package_dir("seeds") / "templates"
        for suffix in (".yaml", ".yml", ".json"):  # by file name: dagrun run demo
            if (seeds / f"{ref}{suffix}").exists():
                p = seeds / f"{ref}{suffix}"
                return read_document(p), str(p), seeds
        found = self.find(str(ref), near=None)
        if found is None:
            near = self.near_name(str(ref))
            raise InputError(f"no template file or seed template named {ref!r}"
                             + (f": did you mean {near!r}?" if near else " (dagrun templates lists them)")
                             + (f"; a file is named with its folder: ./{ref}" if path.is_file() else ""))
        return found

    def near_name(self, name: str, near: Path | None = None) -> str | None:
        """The known template name closest to a mistyped ``name``, if any."""
        import difflib
        names = {str(doc.get("name")) for doc, _, _ in self._candidates(near) if doc.get("name")}
        return next(iter(difflib.get_close_matches(name, sorted(names), n=1)), None)

    def find(self, name: str, *, version: str | None = None, near: Path | None = None,
             template_id: Any = None) -> tuple[dict[str, Any], str, Path | None] | None:
        for doc, source, base_dir in self._candidates(near):
            if template_id is not None:
                if str(doc.get("template_id")) == str(template_id):
                    return doc, source, base_dir
                continue
            stem = Path(source).stem if base_dir else None
            if doc.get("name") == name or stem == name:
                if version is None or str(doc.get("version")) == str(version):
                    return doc, source, base_dir
        return None
