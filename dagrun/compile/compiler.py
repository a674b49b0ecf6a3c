"""Compile a template into an immutable :class:`~dagrun.spec.Plan`.

Pipeline (every stage collects problems; nothing runs unless all pass):

1. resolve the template and its bases (``extends`` / ``base_template_id``,
   any depth, cycles rejected) and check each document against
   ``schema/template.schema.json``;
2. merge steps base-first: a child step with the same id or
   ``sequence_order`` overrides the base step (config deep-merged) or
   removes it (``remove: true``);
3. bind each step to its action: defaults, deep-merged config validated
   against the action's ``config_schema`` (strings holding ``{{ }}`` are
   checked again after interpolation, at run time);
4. add edges: ``requires``, action ``requires_actions``, phase barriers
   (sinks of a phase -> sources of the next non-empty phase) and, with
   ``parallel_execution_enabled: false``, a chain in sequence order;
5. reject cycles (printing the cycle), parse conditions and ``{{ }}``
   expressions and check every name they use (``steps.<id>`` must be
   upstream);
6. derive conflicts, lock capacities and each step's bottom level (the
   remaining critical path) for the scheduler.
"""

from __future__ import annotations

import difflib
import copy
from pathlib import Path
from typing import Any, Iterable, Mapping

import jsonschema
import networkx as nx
from jinja2 import TemplateSyntaxError

from . import expressions
from ..errors import CycleError, InputError, Problem, TemplateError
from ..run.handler_types import build_handlers
from .loader import TemplateSource, build_library, schema_problems
from ..spec import (ActionSpec, GlobalConfig, Lock, Phase, Plan, RetryPolicy, StepSpec,
                   frozen_mapping)
from ..util import deep_merge
from ..workspace import normalize_workspace

DEFAULT_DURATION = 1.0
MAX_INHERITANCE_DEPTH = 32


def compile_template(template: Any, *, actions: Iterable[Any] | None = None,
                     variables: Mapping[str, Any] | None = None, workspace: Any = None,
                     templates: Iterable[Mapping[str, Any]] = (),
                     library: Mapping[str, ActionSpec] | None = None) -> Plan:
    """Compile ``template`` (a path, a seed template name, or a dict).

    ``actions`` extends or overrides the standard action library; ``templates``
    are extra documents a template may extend by name. When ``workspace`` is
    given, references to its fields (and to ``env``) are checked too.
    """
    if library is None:
        library = build_library(actions)
    source = TemplateSource(templates)
    doc, origin, base_dir = source.open(template)
    chain = _inheritance_chain(doc, origin, base_dir, source)
    name = str(doc.get("name", origin))
    merged = _merge_chain(chain, name)
    ws = normalize_workspace(workspace) if workspace is not None else None
    return _Compiler(name, merged, library, variables or {}, ws).compile()


# -- inheritance --------------------------------------------------------------

def _inheritance_chain(doc: dict[str, Any], origin: str, base_dir: Path | None,
                       source: TemplateSource) -> list[tuple[dict[str, Any], str]]:
    """``[(base_doc, origin), ..., (doc, origin)]``, root first."""
    chain: list[tuple[dict[str, Any], str]] = []
    seen: list[str] = []
    current: dict[str, Any] | None = doc
    while current is not None:
        label = f"{current.get('name', origin)}@{current.get('version', '')}"
        problems = schema_problems(current, "template", str(current.get("name", origin)))
        if problems:
            raise TemplateError(problems)
        if label in seen:
            cycle = " -> ".join(s.split("@")[0] for s in seen + [label])
            raise TemplateError(Problem(str(doc.get("name", origin)), f"inheritance cycle: {cycle}"))
        if len(seen) >= MAX_INHERITANCE_DEPTH:
            raise TemplateError(Problem(str(doc.get("name", origin)), "inheritance deeper than 32 levels"))
        seen.append(label)
        chain.append((current, origin))
        parent = current.get("extends")
        base_id = current.get("base_template_id")
        if parent is None and base_id is None:
            break
        if isinstance(parent, Mapping):
            wanted, version = parent["name"], parent.get("version")
        else:
            wanted, version = parent, None
        found = (source.find(str(wanted), version=None if version is None else str(version), near=base_dir)
                 if parent is not None else source.find("", near=base_dir, template_id=base_id))
        if found is None:
            what = f"base template {wanted!r}" + (f" version {version}" if version else "") if parent is not None \
                else f"base template with template_id {base_id}"
            raise TemplateError(Problem(str(current.get("name", origin)), f"{what} not found",
                                        field="extends" if parent is not None else "base_template_id"))
        current, origin, base_dir = found[0], found[1], found[2] or base_dir
    chain.reverse()
    return chain


class _StepIndex:
    """Inherited steps in order, found by id or sequence_order in O(1).

    A child step matches the base step with the same id when both have one,
    otherwise the base step with the same sequence_order.
    """

    def __init__(self) -> None:
        self.steps: dict[int, dict[str, Any]] = {}  # insertion-ordered by token
        self.by_id: dict[str, int] = {}
        self.by_seq: dict[int, int] = {}
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
        self.by_seq[step["sequence_order"]] = token

    def _unindex(self, token: int) -> None:
        step = self.steps[token]
        if self.by_id.get(step.get("id")) == token:
            del self.by_id[step["id"]]
        if self.by_seq.get(step["sequence_order"]) == token:
            del self.by_seq[step["sequence_order"]]

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


def _merge_chain(chain: list[tuple[dict[str, Any], str]], name: str) -> dict[str, Any]:
    index = _StepIndex()
    global_config: dict[str, Any] = {}
    variables: dict[str, Any] = {}
    for doc, origin in chain:
        global_config = deep_merge(global_config, doc.get("global_config") or {})
        variables = deep_merge(variables, doc.get("vars") or {})
        boundary = index.next_token
        for raw in doc.get("actions") or []:
            # A template's own steps never override each other (duplicates
            # are reported later); only inherited ones can be matched.
            token = index.find(raw, boundary)
            if raw.get("remove"):
                if token is None:
                    raise TemplateError(Problem(str(doc.get("name", origin)), "remove: no inherited step to remove",
                                                step=str(raw.get("id") or raw["sequence_order"])))
                index.remove(token)
            elif token is None:
                index.add(dict(raw))
            else:
                base = index.steps[token]
                if raw.get("action_name") and raw["action_name"] != base.get("action_name"):
                    index.replace(token, dict(raw))  # a different action replaces the step outright
                else:
                    index.replace(token, deep_merge(base, raw))
    steps = list(index.steps.values())
    top = chain[-1][0]
    return {
        "name": name,
        "version": str(top.get("version", "1.0.0")),
        "description": top.get("description") or "",
        "global_config": global_config,
        "vars": variables,
        "actions": steps,
    }


# -- binding, edges and checks ------------------------------------------------

def _schema_defaults(schema: Mapping[str, Any]) -> dict[str, Any]:
    props = schema.get("properties") or {}
    return {k: v["default"] for k, v in props.items() if isinstance(v, Mapping) and "default" in v}


def _secret_fields(schema: Mapping[str, Any]) -> frozenset[str]:
    props = schema.get("properties") or {}
    return frozenset(k for k, v in props.items()
                     if isinstance(v, Mapping) and (v.get("x-secret") or v.get("writeOnly")))


def _shell_fields(schema: Mapping[str, Any]) -> frozenset[str]:
    props = schema.get("properties") or {}
    return frozenset(k for k, v in props.items() if isinstance(v, Mapping) and v.get("x-dagrun-format") == "shell")


_validators: dict[int, tuple[Mapping[str, Any], Any]] = {}


def _config_validator(schema: Mapping[str, Any]) -> Any:
    """One validator per action schema object (they live as long as the library)."""
    entry = _validators.get(id(schema))
    if entry is None or entry[0] is not schema:
        plain = copy.deepcopy(dict(schema))  # the top level is a read-only proxy
        entry = _validators[id(schema)] = (schema, jsonschema.validators.validator_for(plain)(plain))
    return entry[1]


def config_problems(config: Mapping[str, Any], schema: Mapping[str, Any], *, allow_templates: bool) -> list[tuple[str, str]]:
    """``(field, message)`` for each schema violation. With ``allow_templates``,
    a violation by a string still holding ``{{ }}`` is deferred to run time."""
    if not schema:
        return []
    validator = _config_validator(schema)
    found = []
    for error in validator.iter_errors(dict(config)):
        if allow_templates and expressions.has_template(error.instance):
            continue
        from .loader import field_path
        found.append((field_path(error.absolute_path) or "action_config", error.message))
    return found


class _Compiler:
    def __init__(self, name: str, doc: dict[str, Any], library: Mapping[str, ActionSpec],
                 variables: Mapping[str, Any], workspace: Mapping[str, Any] | None):
        self.name = name
        self.doc = doc
        self.library = library
        self.variables = deep_merge(doc.get("vars") or {}, variables)
        self.workspace = workspace
        self.problems: list[Problem] = []
        gc = doc.get("global_config") or {}
        self.global_config = GlobalConfig(
            continue_on_non_critical_errors=gc.get("continue_on_non_critical_errors", True),
            parallel_execution_enabled=gc.get("parallel_execution_enabled", True),
            rollback_on_failure=gc.get("rollback_on_failure", True),
            max_workers=gc.get("max_workers"),
        )

    def problem(self, message: str, step: str | None = None, field: str | None = None) -> None:
        self.problems.append(Problem(self.name, message, step=step, field=field))

    def check(self) -> None:
        if self.problems:
            raise TemplateError(self.problems)

    def compile(self) -> Plan:
        raw_steps = self.doc["actions"]
        # Every stage runs even when an earlier one found problems, so the
        # author sees all of them at once; steps that could not be bound are
        # left out of the graph (references to them are not reported twice).
        bound = self._bind(raw_steps)
        by_seq, ids = self._by_seq, self._all_ids
        graph = self._edges(bound, by_seq, ids)
        self._reject_cycles(graph, bound)
        conflicts, capacity = self._conflicts(bound, by_seq, ids)
        specs = self._specs(bound, graph)
        self.check()
        order = tuple(s["id"] for s in bound)
        priority = self._bottom_levels(graph, specs)
        position = {sid: i for i, sid in enumerate(order)}
        dispatch_order = tuple(sorted(order, key=lambda sid: (-priority[sid], specs[sid].sequence_order,
                                                              position[sid])))
        return Plan(
            name=self.name, version=self.doc["version"], description=self.doc["description"],
            steps=frozen_mapping(specs), order=order,
            predecessors=frozen_mapping({n: tuple(sorted(graph.predecessors(n), key=position.__getitem__))
                                         for n in order}),
            successors=frozen_mapping({n: tuple(graph.successors(n)) for n in order}),
            conflicts=frozen_mapping(conflicts), lock_capacity=frozen_mapping(capacity),
            priority=frozen_mapping(priority), dispatch_order=dispatch_order,
            dispatch_rank=frozen_mapping({sid: i for i, sid in enumerate(dispatch_order)}),
            global_config=self.global_config,
            variables=frozen_mapping(self.variables), handlers=frozen_mapping(self.handlers),
            snapshot=frozen_mapping(self.doc),
        )

    # 3. bind steps to actions
    def _bind(self, raw_steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
        self.handlers: dict[str, Any] = {}
        bound = []
        uses: dict[str, int] = {}
        for raw in raw_steps:
            uses[raw.get("action_name", "")] = uses.get(raw.get("action_name", ""), 0) + 1
        seen_ids: dict[str, int] = {}
        seen_seq: set[int] = set()
        self._by_seq: dict[int, str] = {}
        self._all_ids: set[str] = set()
        for raw in sorted(raw_steps, key=lambda s: (Phase[s.get("phase") or "main"], s["sequence_order"])):
            seq = raw["sequence_order"]
            action_name = raw.get("action_name")
            step_id = raw.get("id") or (action_name if uses.get(action_name) == 1 else f"{action_name}_{seq}")
            label = step_id or str(seq)
            if seq in seen_seq:
                self.problem(f"sequence_order {seq} is used by two steps", label, "sequence_order")
            seen_seq.add(seq)
            if step_id in seen_ids:
                self.problem(f"step id {step_id!r} is used by two steps", label, "id")
            seen_ids[step_id] = seq
            self._by_seq[seq] = step_id
            self._all_ids.add(step_id)
            if not action_name:
                self.problem("no action_name", label, "action_name")
                continue
            action = self.library.get(action_name)
            if action is None:
                close = difflib.get_close_matches(action_name, list(self.library), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                self.problem(f"unknown action {action_name!r}{hint}", label, "action_name")
                continue
            if not action.is_active:
                self.problem(f"action {action_name!r} is not active", label, "action_name")
                continue
            if action.name not in self.handlers:
                try:
                    self.handlers[action.name] = build_handlers(action)
                except (ValueError, TemplateSyntaxError, OSError) as exc:
                    self.problem(f"action {action.name!r} has a bad handler: {exc}", label, "action_name")
                    continue
            config = deep_merge(deep_merge(_schema_defaults(action.config_schema), action.default_config),
                                raw.get("action_config") or {})
            for field, message in config_problems(config, action.config_schema, allow_templates=True):
                self.problem(message, label, f"action_config.{field}" if field != "action_config" else field)
            bound.append({**raw, "id": step_id, "action": action, "config": config})
        return bound

    # 4. edges
    def _resolve(self, ref: Any, by_seq: Mapping[int, str], ids: set[str]) -> str | None:
        if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
            return by_seq.get(int(ref))
        return ref if ref in ids else None

    def _edges(self, bound: list[dict[str, Any]], by_seq: Mapping[int, str], ids: set[str]) -> nx.DiGraph:
        graph = nx.DiGraph()
        graph.add_nodes_from(s["id"] for s in bound)
        by_action: dict[str, list[str]] = {}
        for s in bound:
            by_action.setdefault(s["action"].name, []).append(s["id"])
        for s in bound:
            for ref in s.get("requires") or ():
                target = self._resolve(ref, by_seq, ids)
                if target is None:
                    self.problem(f"requires unknown step {ref!r}", s["id"], "requires")
                elif target == s["id"]:
                    self.problem("a step cannot require itself", s["id"], "requires")
                elif target in graph:  # an unbound target was reported already
                    graph.add_edge(target, s["id"])
            for needed in s["action"].requires_actions:
                providers = [p for p in by_action.get(needed, []) if p != s["id"]]
                if not providers:
                    self.problem(f"action {s['action'].name!r} requires action {needed!r}, "
                                 f"but no step of the template uses it", s["id"], "action_name")
                for p in providers:
                    graph.add_edge(p, s["id"])
        if self.global_config.parallel_execution_enabled:
            self._phase_barriers(graph, bound)
        else:  # the seed's behaviour: one at a time in (phase, sequence_order)
            for a, b in zip(bound, bound[1:]):
                graph.add_edge(a["id"], b["id"])
        return graph

    def _phase_barriers(self, graph: nx.DiGraph, bound: list[dict[str, Any]]) -> None:
        phases: dict[Phase, list[str]] = {}
        for s in bound:
            phases.setdefault(Phase[s.get("phase") or "main"], []).append(s["id"])
        ordered = [phases[p] for p in sorted(phases)]
        for earlier, later in zip(ordered, ordered[1:]):
            members = set(earlier)
            sinks = [n for n in earlier if not any(m in members for m in graph.successors(n))]
            later_members = set(later)
            sources = [n for n in later if not any(m in later_members for m in graph.predecessors(n))]
            for a in sinks:
                for b in sources:
                    graph.add_edge(a, b)

    def _reject_cycles(self, graph: nx.DiGraph, bound: list[dict[str, Any]]) -> None:
        if nx.is_directed_acyclic_graph(graph):  # O(V + E); find_cycle is far slower on big DAGs
            return
        try:
            cycle = nx.find_cycle(graph)
        except nx.NetworkXNoCycle:
            return
        actions = {s["id"]: s["action"].name for s in bound}
        labels = [f"{u} ({actions[u]})" for u, _ in cycle]
        error = CycleError(self.name, labels)
        if not self.problems:
            raise error
        self.problems += error.problems

    # 5. expressions
    def _check_refs(self, refs: set[expressions.Reference], step: dict[str, Any], field: str,
                    upstream: set[str], step_refs: set[str]) -> None:
        sid = step["id"]
        for ref in sorted(refs, key=lambda r: (r.root, r.attr or "")):
            if ref.root not in expressions.KNOWN_NAMES:
                self.problem(f"unknown variable {ref.root!r} (known: workspace, config, vars, env, steps)", sid, field)
            elif ref.attr is None:
                continue
            elif ref.root == "steps":
                if ref.attr not in upstream:
                    what = "is not a step" if ref.attr not in self._ids else "is not upstream of this step"
                    self.problem(f"steps.{ref.attr} {what}", sid, field)
                step_refs.add(ref.attr)
            elif ref.root == "vars" and ref.attr not in self.variables:
                self.problem(f"undefined variable vars.{ref.attr}", sid, field)
            elif ref.root == "config" and ref.attr not in step["config"] and \
                    ref.attr not in (step["action"].config_schema.get("properties") or {}):
                self.problem(f"config.{ref.attr} is not a config field of action {step['action'].name!r}", sid, field)
            elif ref.root == "workspace" and self.workspace is not None and ref.attr not in self.workspace:
                self.problem(f"the workspace has no field {ref.attr!r}", sid, field)
            elif ref.root == "env" and self.workspace is not None:
                import os
                if ref.attr not in os.environ:
                    self.problem(f"environment variable {ref.attr} is not set", sid, field)

    def _specs(self, bound: list[dict[str, Any]], graph: nx.DiGraph) -> dict[str, StepSpec]:
        self._ids = {s["id"] for s in bound}
        specs: dict[str, StepSpec] = {}
        for s in bound:
            sid, action = s["id"], s["action"]
            upstream = nx.ancestors(graph, sid) if self._mentions_steps(s) else set()
            step_refs: set[str] = set()
            condition = None
            text = s.get("condition_expression") or action.condition_expression
            field = "condition_expression" if s.get("condition_expression") else "condition_expression (action)"
            if text:
                try:
                    condition = expressions.compile_condition(text)
                    self._check_refs(expressions.references(text, condition=True), s, field, upstream, step_refs)
                except TemplateSyntaxError as exc:
                    self.problem(f"cannot parse condition {text!r}: {exc.message}", sid, field)
            shell_fields = _shell_fields(action.config_schema)
            templated = False
            for path, value in expressions.template_strings(s["config"]):
                templated = True
                try:
                    expressions.parse_template(value, shell=path in shell_fields)
                    self._check_refs(expressions.references(value), s, f"action_config.{path}", upstream, step_refs)
                except TemplateSyntaxError as exc:
                    self.problem(f"cannot parse {value!r}: {exc.message}", sid, f"action_config.{path}")
            for handler in _handler_templates(self.handlers[action.name]):
                self._check_refs(expressions.references(handler), s, "execution_handler", upstream, step_refs)
            locks = tuple(action.locks) + tuple(
                Lock(i) if isinstance(i, str) else Lock(i["name"], i.get("capacity", 1)) for i in s.get("locks") or ())
            est = s.get("estimated_duration_seconds")
            if est is None:
                est = action.estimated_duration_seconds
            specs[sid] = StepSpec(
                id=sid, sequence_order=s["sequence_order"], action=action, phase=Phase[s.get("phase") or "main"],
                config=frozen_mapping(s["config"]), condition=condition,
                skip_on_error=bool(s.get("skip_on_error", False)),
                retry=RetryPolicy(
                    max_attempts=s.get("max_retries") or action.max_retries,
                    delay_seconds=_first(s.get("retry_delay_seconds"), action.retry_delay_seconds),
                    exponential_backoff=_first(s.get("exponential_backoff"), action.exponential_backoff),
                    max_delay_seconds=action.max_retry_delay_seconds, jitter=action.retry_jitter),
                timeout_seconds=float(s.get("timeout_seconds") or action.timeout_seconds),
                estimated_duration_seconds=float(DEFAULT_DURATION if est is None else est),
                locks=locks, check_first=bool(_first(s.get("check_first"), action.check_first)),
                secret_fields=_secret_fields(action.config_schema),
                templated=templated, shell_fields=shell_fields, step_refs=frozenset(step_refs),
            )
        return specs

    @staticmethod
    def _mentions_steps(step: dict[str, Any]) -> bool:
        # ancestors() is O(graph); only pay for it where `steps.` can appear.
        text = repr(step["config"]) + str(step.get("condition_expression") or step["action"].condition_expression)
        action = step["action"]
        text += " ".join(filter(None, (action.execution_handler, action.validation_handler, action.rollback_handler)))
        return "steps" in text

    # 6. conflicts, locks, priorities
    def _conflicts(self, bound: list[dict[str, Any]], by_seq: Mapping[int, str], ids: set[str]):
        conflicts: dict[str, set[str]] = {s["id"]: set() for s in bound}
        by_action: dict[str, list[str]] = {}
        for s in bound:
            by_action.setdefault(s["action"].name, []).append(s["id"])
        for s in bound:
            for other_action in s["action"].conflicts_with_actions:
                for other in by_action.get(other_action, []):
                    if other != s["id"]:
                        conflicts[s["id"]].add(other)
                        conflicts[other].add(s["id"])
            for ref in s.get("conflicts_with") or ():
                other = self._resolve(ref, by_seq, ids)
                if other is None:
                    self.problem(f"conflicts_with unknown step {ref!r}", s["id"], "conflicts_with")
                elif other != s["id"] and other in conflicts:
                    conflicts[s["id"]].add(other)
                    conflicts[other].add(s["id"])
        capacity: dict[str, int] = {}
        for s in bound:
            for item in list(s["action"].locks) + list(s.get("locks") or ()):
                lock = item if isinstance(item, Lock) else (Lock(item) if isinstance(item, str) else Lock(item["name"], item.get("capacity", 1)))
                if capacity.setdefault(lock.name, lock.capacity) != lock.capacity:
                    self.problem(f"lock {lock.name!r} is declared with capacities {capacity[lock.name]} and {lock.capacity}",
                                 s["id"], "locks")
        return {k: frozenset(v) for k, v in conflicts.items()}, capacity

    @staticmethod
    def _bottom_levels(graph: nx.DiGraph, specs: Mapping[str, StepSpec]) -> dict[str, float]:
        level: dict[str, float] = {}
        for node in reversed(list(nx.topological_sort(graph))):
            below = max((level[s] for s in graph.successors(node)), default=0.0)
            level[node] = specs[node].estimated_duration_seconds + below
        return level


def _first(value: Any, default: Any) -> Any:
    return default if value is None else value


def _handler_templates(handlers: Any) -> list[str]:
    return [h.template_source for h in (handlers.execute, handlers.validate, handlers.rollback)
            if h is not None and hasattr(h, "template_source")]


def validate_files(paths: Iterable[str], **options: Any) -> list[tuple[str, Exception | None]]:
    """Compile each file (template or action definition); ``(path, error)`` pairs."""
    from .loader import load_action_file, read_document
    results = []
    for path in paths:
        try:
            doc = read_document(Path(path))
            if "action_type" in doc or ("actions" in doc and doc["actions"] and "action_type" in doc["actions"][0]):
                load_action_file(Path(path))
            else:
                compile_template(path, **options)
            results.append((path, None))
        except (TemplateError, InputError) as exc:
            results.append((path, exc))
    return results
