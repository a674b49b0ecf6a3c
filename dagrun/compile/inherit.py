"""Template inheritance: ``extends`` chains, and child steps that override or
remove the steps of their bases.

A template may extend a base by name, by ``{name, version}`` or by
``base_template_id``, to any depth (cycles and chains deeper than
:data:`MAX_INHERITANCE_DEPTH` are errors). Base steps come first. A child step
with the same ``id`` as a base step, or failing ids the same
``sequence_order``, overrides it: its fields and config are deep-merged over
the base step's, or it replaces the base step outright when it names a
different action, or removes it with ``remove: true``. A template's own steps
never override each other (duplicates are reported by the graph stage).

Every document is checked against ``schema/template.schema.json``. Problems
are collected rather than raised, so that one report shows them all: a step
that breaks the schema is kept (its id still exists for references) but
marked, and the binding stage leaves it out of the graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Mapping  # for isinstance: typing's alias is several times slower
from typing import Any

from ..errors import Problem, TemplateError
from ..util import deep_merge
from .loader import TemplateSource, schema_problems

MAX_INHERITANCE_DEPTH = 32
INVALID = "__invalid__"  # key marking a step that failed the schema
ORIGIN = "__origin__"  # key naming the template each step (last) came from
ORIGIN_DIR = "__origin_dir__"  # the folder of that template's file, if it has one
ORIGINS = "__origins__"  # per step: which template set each field ("action_config.script": "base (base.yaml)")


@dataclass
class Merged:
    """A template after inheritance: one document, and what went wrong."""

    name: str
    document: dict[str, Any]
    chain: list[str]  # template names, root first
    problems: list[Problem] = field(default_factory=list)
    base_dir: Path | None = None  # folder of the (child) template file, for files it names
    origins: dict[str, str] = field(default_factory=dict)  # "vars.x" / "global_config.y": the template that set it


def resolve(template: Any, source: TemplateSource, *, origins: bool = False) -> Merged:
    """Open ``template`` and merge it over its bases. ``origins``: also record
    which template set each field (:data:`ORIGINS`, :attr:`Merged.origins`),
    for ``dagrun explain``; a compile does not pay for it."""
    doc, origin, base_dir = source.open(template)
    name = str(doc.get("name") or origin)
    problems: list[Problem] = []
    chain = _chain(doc, origin, base_dir, source, problems)
    found: dict[str, str] | None = {} if origins else None
    merged = _merge(chain, name, problems, found)
    return Merged(name, merged, [str(d.get("name") or o) for d, o, _ in chain], problems, base_dir, found or {})


def _leaves(value: Any, prefix: str) -> list[str]:
    """Dotted paths of the values in ``value`` (a list is one value)."""
    if (type(value) is dict or isinstance(value, Mapping)) and value:
        return [p for k, v in value.items() if not str(k).startswith("__")
                for p in _leaves(v, f"{prefix}.{k}" if prefix else str(k))]
    return [prefix] if prefix else []


def _chain(doc: dict[str, Any], origin: str, base_dir: Path | None, source: TemplateSource,
           problems: list[Problem]) -> list[tuple[dict[str, Any], str, Path | None]]:
    """``[(base_doc, origin, folder), ..., (doc, origin, folder)]``, root first."""
    chain: list[tuple[dict[str, Any], str, Path | None]] = []
    seen: list[str] = []
    top = str(doc.get("name") or origin)
    current: dict[str, Any] | None = doc
    while current is not None:
        name = str(current.get("name") or origin)
        label = f"{name}@{current.get('version', '')}"
        found = schema_problems(current, "template", name)
        problems += found
        if label in seen:
            cycle = " -> ".join(s.split("@")[0] for s in seen + [label])
            raise TemplateError(Problem(top, f"inheritance cycle: {cycle}"))
        if len(seen) >= MAX_INHERITANCE_DEPTH:
            raise TemplateError(Problem(top, f"inheritance deeper than {MAX_INHERITANCE_DEPTH} levels"))
        seen.append(label)
        chain.append((_mark_invalid(current, found), origin, base_dir))
        parent, base_id = current.get("extends"), current.get("base_template_id")
        if any(p.field in ("extends", "base_template_id") and p.step is None for p in found):
            break  # a malformed reference: reported, not followed
        if parent is None and base_id is None:
            break
        if isinstance(parent, Mapping):
            wanted, version = str(parent["name"]), parent.get("version")
        else:
            wanted, version = str(parent), None
        found_base = (source.find(wanted, version=None if version is None else str(version), near=base_dir)
                      if parent is not None else source.find("", near=base_dir, template_id=base_id))
        if found_base is None:
            what = (f"base template {wanted!r}" + (f" version {version}" if version else "")
                    if parent is not None else f"base template with template_id {base_id}")
            near = source.near_name(wanted, base_dir) if parent is not None else None
            # files beside it that could not be read: maybe the base is one (said when no name is near)
            unread = "" if near else "".join(f"; skipped {why}" for _, why in sorted(source.skipped.items())[:5])
            raise TemplateError(problems + [Problem(name, f"{what} not found"
                                                    + (f" (did you mean {near!r}?)" if near else "") + unread,
                                                    field="extends" if parent is not None else "base_template_id")])
        current, origin, base_dir = found_base[0], found_base[1], found_base[2] or base_dir
    chain.reverse()
    return chain


def _mark_invalid(doc: dict[str, Any], problems: list[Problem]) -> dict[str, Any]:
    """A copy of ``doc`` whose steps with schema problems carry :data:`INVALID`,
    and whose malformed top-level sections are dropped (defaults apply)."""
    from .loader import step_fields
    known = step_fields()
    # A step whose only problems are unknown fields is still checked in full (its
    # other mistakes are reported in the same pass); the unknown fields are dropped.
    bad_steps = {p.step for p in problems if p.step is not None and (p.field or "").split(".")[0] in known}
    bad_steps |= {p.step for p in problems if p.step is not None and not p.field}
    bad_fields = {(p.field or "").split(".")[0].split("[")[0] for p in problems if p.step is None}
    out = {k: v for k, v in doc.items() if k not in bad_fields or k in ("name", "actions")}
    steps = doc.get("actions")
    if not isinstance(steps, list):
        out["actions"] = []
        return out
    marked = []
    for i, raw in enumerate(steps):
        if not isinstance(raw, Mapping):
            continue
        label = str(raw.get("id") or raw.get("sequence_order", f"#{i + 1}"))
        step = {k: v for k, v in raw.items() if k in known or k.startswith("__")}
        if label in bad_steps or not isinstance(step.get("sequence_order"), int):
            step[INVALID] = True
            if not isinstance(step.get("action_config"), (Mapping, type(None))):
                step["action_config"] = {}
            if not isinstance(step.get("id"), str):  # ids and orders are looked up: they must be hashable
                step.pop("id", None)
            if not isinstance(step.get("sequence_order"), int):
                step["sequence_order"] = f"#{i + 1}"
        marked.append(step)
    out["actions"] = marked
    return out


class _StepIndex:
    """Inherited steps in order, found by id or sequence_order in O(1).

    A child step matches the base step with the same id when both have one,
    otherwise the base step with the same sequence_order.
    """

    def __init__(self) -> None:
        self.steps: dict[int, dict[str, Any]] = {}  # insertion-ordered by token
        self.by_id: dict[str, int] = {}
        self.by_seq: dict[Any, int] = {}
        self.next_token = 0

    def find(self, raw: Mapping[str, Any], before: int) -> int | None:
        """The step ``raw`` overrides, among those added before token ``before``."""
        if raw.get("id") and raw["id"] in self.by_id:
            token = self.by_id[raw["id"]]
            return token if token < before else None
        token = self.by_seq.get(raw.get("sequence_order"))
        if token is None or token >= before or (raw.get("id") and self.steps[token].get("id")):
            return None  # not inherited, or both have ids and they differ
        return token

    def _index(self, token: int, step: dict[str, Any]) -> None:
        if step.get("id"):
            self.by_id[step["id"]] = token
        self.by_seq[step.get("sequence_order")] = token

    def _unindex(self, token: int) -> None:
        step = self.steps[token]
        if self.by_id.get(step.get("id")) == token:
            del self.by_id[step["id"]]
        if self.by_seq.get(step.get("sequence_order")) == token:
            del self.by_seq[step.get("sequence_order")]

    def add(self, step: dict[str, Any]) -> None:
        token = self.next_token
        self.next_token += 1
        self.steps[token] = step
        self._index(token, step)

    def replace(self, token: int, step: dict[str, Any]) -> None:
        self._unindex(token)
        self.steps[token] = step
        self._index(token, step)

    def remove(self, token: int) -> None:
        self._unindex(token)
        del self.steps[token]


def _merge(chain: list[tuple[dict[str, Any], str, Path | None]], name: str,
           problems: list[Problem], origins: dict[str, str] | None) -> dict[str, Any]:
    index = _StepIndex()
    global_config: dict[str, Any] = {}
    variables: dict[str, Any] = {}
    for doc, origin, folder in chain:
        doc_name = str(doc.get("name") or origin)
        label = doc_name if doc_name == origin else f"{doc_name} ({origin})"
        global_config = deep_merge(global_config, doc.get("global_config") or {})
        variables = deep_merge(variables, doc.get("vars") or {})
        if origins is not None:
            origins.update({p: label for p in _leaves({"global_config": doc.get("global_config") or {},
                                                        "vars": doc.get("vars") or {}}, "")})
        boundary = index.next_token
        for raw in doc["actions"]:
            token = index.find(raw, boundary)
            if raw.get("remove"):
                if token is None:
                    problems.append(Problem(doc_name, "remove: no inherited step to remove",
                                            step=str(raw.get("id") or raw.get("sequence_order")), field="remove"))
                else:
                    index.remove(token)
                continue
            own = {**raw, ORIGIN: doc_name, ORIGIN_DIR: None if folder is None else str(folder)}
            if origins is not None:
                own[ORIGINS] = {p: label for p in _leaves(raw, "")}
            if token is None:
                index.add(own)
                continue
            base = index.steps[token]
            if raw.get("action_name") and raw["action_name"] != base.get("action_name"):
                index.replace(token, own)  # a different action replaces the step outright
            else:
                if origins is not None:
                    own[ORIGINS] = {**base.get(ORIGINS, {}), **own[ORIGINS]}
                merged = deep_merge({k: v for k, v in base.items() if k not in (INVALID, ORIGINS)}, own)
                if base.get(INVALID) or raw.get(INVALID):
                    merged[INVALID] = True
                index.replace(token, merged)
    top = chain[-1][0]
    return {
        "name": name,
        "version": str(top.get("version", "1.0.0")),
        "description": top.get("description") or "",
        "global_config": global_config,
        "vars": variables,
        "actions": list(index.steps.values()),
    }
