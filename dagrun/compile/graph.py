"""From a merged template document to an immutable :class:`~dagrun.spec.Plan`.

Stages (every stage runs and collects problems, so the author sees all of
them at once; a step that could not be bound is left out of the graph, and
references to it are not reported twice):

1. bind each step to its action: defaults, deep-merged config validated
   against the action's ``config_schema`` (see :mod:`.configs`);
2. add edges: ``requires``, action ``requires_actions``, phase barriers
   (sinks of a phase -> sources of the next non-empty phase) and, with
   ``parallel_execution_enabled: false``, a chain in sequence order;
3. reject cycles (printing the cycle), parse conditions and ``{{ }}``
   expressions and check every name they use (``steps.<id>`` must be
   upstream, ``env.X`` must be passed through), and check that shell text
   puts values only where bash cannot parse them (:mod:`.shell_text`);
4. derive conflicts, lock capacities and each step's bottom level (the
   remaining critical path) for the scheduler.
"""

from __future__ import annotations

import re
from pathlib import Path
from collections.abc import Mapping  # for isinstance: typing's alias is several times slower
from typing import Any, Iterable

from jinja2 import TemplateSyntaxError

from ..errors import CycleError, InputError, Problem, TemplateError
from ..spec import (ActionSpec, ErrorMatch, GlobalConfig, Lock, Phase, Plan, RetryPolicy, StepSpec, frozen_mapping,
                    is_base_env, reachable, scheduling)
from ..util import deep_merge
from . import configs, expressions, shell_text
from .inherit import INVALID, ORIGIN, ORIGIN_DIR, ORIGINS, Merged
from .shell_text import UnsafeContext
from ..workspace import KNOWN_FIELDS

DEFAULT_DURATION = 1.0
PRIVATE_KEYS = (INVALID, ORIGIN, ORIGIN_DIR, ORIGINS)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    import difflib  # only to word a problem
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class Edges:
    """The dependency graph while it is checked: insertion-ordered adjacency,
    the shape the :class:`~dagrun.spec.Plan` keeps. The plan's networkx view
    is :meth:`Plan.graph`; the compiler does not build one, because importing
    networkx alone costs every compile and every ``dagrun validate`` 0.1 s,
    more than checking the graph does."""

    __slots__ = ("succ", "pred", "postorder")

    def __init__(self, nodes: Iterable[str]):
        self.succ: dict[str, dict[str, None]] = {n: {} for n in nodes}  # dicts as ordered sets
        self.pred: dict[str, dict[str, None]] = {n: {} for n in self.succ}
        self.postorder: list[str] = []  # after find_cycle found none: every node after all its successors

    def __contains__(self, node: object) -> bool:
        return node in self.succ

    def add_edge(self, a: str, b: str) -> None:
        self.succ[a][b] = None
        self.pred[b][a] = None

    def remove_edge(self, a: str, b: str) -> None:
        del self.succ[a][b], self.pred[b][a]

    def find_cycle(self) -> list[str] | None:
        """The nodes of one cycle in edge order, or None: one depth-first
        walk, iterative (a 100,000-step chain is no recursion)."""
        state: dict[str, bool] = {}  # True: on the current path; False: finished
        finished = self.postorder = []
        for root in self.succ:
            if root in state:
                continue
            state[root] = True
            path, stack = [root], [iter(self.succ[root])]
            while stack:
                for node in stack[-1]:
                    on_path = state.get(node)
                    if on_path is None:
                        state[node] = True
                        path.append(node)
                        stack.append(iter(self.succ[node]))
                        break
                    if on_path:
                        return path[path.index(node):]
                else:
                    node = path.pop()
                    state[node] = False
                    finished.append(node)
                    stack.pop()
        return None


class Compiler:
    def __init__(self, merged: Merged, library: Mapping[str, ActionSpec], variables: Mapping[str, Any],
                 workspace: Mapping[str, Any] | None, env_passthrough: Iterable[str] = ()):
        self.name = merged.name
        self.doc = merged.document
        self.base_dir = merged.base_dir
        self.library = library
        self.variables = deep_merge(self.doc.get("vars") or {}, variables)
        self.workspace = workspace
        self.problems: list[Problem] = list(merged.problems)
        gc = self.doc.get("global_config") or {}
        passthrough = tuple(dict.fromkeys([*(gc.get("env_passthrough") or ()), *env_passthrough]))
        for name in passthrough:
            if name.startswith("DAGRUN_"):
                self.problem(f"{name} is one of dagrun's own settings: it never reaches a step",
                             field="global_config.env_passthrough")
        self.global_config = GlobalConfig(
            continue_on_non_critical_errors=gc.get("continue_on_non_critical_errors", True),
            parallel_execution_enabled=gc.get("parallel_execution_enabled", True),
            rollback_on_failure=gc.get("rollback_on_failure", True),
            max_workers=gc.get("max_workers"),
            env_passthrough=tuple(n for n in passthrough if not n.startswith("DAGRUN_")),
            run_as=gc.get("run_as") or "workspace",
            sandbox=gc.get("sandbox"),
        )
        self.workspace_fields: set[str] = set()
        self.secret_literals: list[tuple[str, str]] = []

    def problem(self, message: str, step: str | None = None, field: str | None = None) -> None:
        self.problems.append(Problem(self.name, message, step=step, field=field))

    def compile(self) -> Plan:
        bound = self._bind(self.doc["actions"])
        graph = self._edges(bound)
        self._reject_cycles(graph, bound)
        conflicts, capacity = self._conflicts(bound)
        specs = self._specs(bound, graph)
        if self.problems:
            raise TemplateError(self.problems)
        order = tuple(s["id"] for s in bound)
        position = {sid: i for i, sid in enumerate(order)}
        successors = {n: tuple(s) for n, s in graph.succ.items()}
        priority, dispatch_order = scheduling(order, successors, specs, graph.postorder)
        return Plan(
            name=self.name, version=self.doc["version"], description=self.doc["description"],
            steps=frozen_mapping(specs), order=order,
            predecessors=frozen_mapping({n: tuple(sorted(p, key=position.__getitem__)) if len(p) > 1 else tuple(p)
                                         for n, p in graph.pred.items()}),
            successors=frozen_mapping(successors),
            conflicts=frozen_mapping(conflicts), lock_capacity=frozen_mapping(capacity),
            priority=frozen_mapping(priority), dispatch_order=dispatch_order,
            dispatch_rank=frozen_mapping({sid: i for i, sid in enumerate(dispatch_order)}),
            global_config=self.global_config, variables=frozen_mapping(self.variables),
            snapshot=frozen_mapping(_public(self.doc)),
            workspace_fields=frozenset(self.workspace_fields), secret_literals=tuple(self.secret_literals),
        )

    # 1. bind steps to actions
    def _bind(self, raw_steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
        from ..run.handler_types import handler_problems
        bound = []
        uses: dict[str, int] = {}
        for raw in raw_steps:
            uses[raw.get("action_name", "")] = uses.get(raw.get("action_name", ""), 0) + 1
        seen_ids: set[str] = set()
        seen_seq: set[Any] = set()
        self._by_seq: dict[Any, str] = {}
        self._ids: set[str] = set()
        checked_actions: set[str] = set()
        action_defaults: dict[str, dict[str, Any]] = {}
        ordered = sorted(raw_steps, key=lambda s: (_phase_rank(s.get("phase")), _seq_rank(s.get("sequence_order"))))
        for raw in ordered:
            seq = raw.get("sequence_order")
            action_name = raw.get("action_name")
            step_id = raw.get("id") or (action_name if uses.get(action_name) == 1 else f"{action_name}_{seq}")
            label = str(step_id or seq)
            if seq in seen_seq:
                self.problem(f"sequence_order {seq} is used by two steps", label, "sequence_order")
            seen_seq.add(seq)
            if step_id in seen_ids:
                self.problem(f"step id {step_id!r} is used by two steps", label, "id")
            if step_id == "workspace":  # a resume is given workspace.NAME (a field) and step.field (a secret)
                self.problem("step id 'workspace' is reserved (a resume names the workspace's fields "
                             "workspace.NAME): give the step another id", label, "id")
            seen_ids.add(step_id)
            self._by_seq[seq] = step_id
            self._ids.add(step_id)
            if raw.get(INVALID):
                continue  # its schema problems are reported; its id still exists for references
            if not action_name:
                self.problem("no action_name", label, "action_name")
                continue
            action = self.library.get(action_name)
            if action is None:
                self.problem(f"unknown action {action_name!r}{did_you_mean(action_name, self.library)}", label,
                             "action_name")
                continue
            if not action.is_active:
                self.problem(f"action {action_name!r} is not active", label, "action_name")
                continue
            if action.name not in checked_actions:
                checked_actions.add(action.name)
                for field, message in handler_problems(action):
                    self.problem(f"action {action.name!r} has a bad {field}: {message}", label, field)
                if action.requires_sudo and not action.library:
                    self.problem(f"action {action_name!r} is user-defined: it cannot be requires_sudo (only the "
                                 "standard library and trusted actions (--trusted-actions) run as root)", label,
                                 "action_name")
            if raw.get("run_as") == "root" and not action.library:
                self.problem(f"action {action_name!r} is user-defined: its steps cannot run as root (only the "
                             "standard library and trusted actions do)", label, "run_as")
            defaults = action_defaults.get(action.name)
            if defaults is None:  # once per action: a template uses the same few for thousands of steps
                defaults = action_defaults[action.name] = deep_merge(configs.schema_defaults(action.config_schema),
                                                                     action.default_config)
            config = deep_merge(defaults, raw.get("action_config") or {})
            config = self._inline_template_files(config, action, raw, label)
            for field, message in configs.config_problems(config, action.config_schema, allow_templates=True):
                self.problem(message, label, f"action_config.{field}" if field != "action_config" else field)
            written = raw.get("action_config") or {}
            for key in configs.secret_fields(action.config_schema):
                # (a secret the action's own defaults give is in the action, given again with it)
                if key in written and expressions.written_secret(config.get(key)):
                    self.secret_literals.append((step_id, key))
                # url: "{{ config.dsn }}" with dsn written out in the template: the secret is dsn's text
                self.secret_literals += [(step_id, k) for k in written_through(config, key, written)
                                         if (step_id, k) not in self.secret_literals]
            bound.append({**raw, "id": step_id, "action": action, "config": config})
        return bound

    def _inline_template_files(self, config: dict[str, Any], action: ActionSpec, raw: dict[str, Any],
                               label: str) -> dict[str, Any]:
        """Fields marked ``x-dagrun-format: template-file`` name a file beside
        the template (author text): it is read now, into the field the
        schema's ``x-dagrun-inline-to`` names, so the plan and the run's
        snapshot are self-contained and nothing in the workspace is ever
        rendered as a template."""
        props = action.config_schema.get("properties") or {}
        for key, schema in props.items():
            if not (isinstance(schema, Mapping) and schema.get("x-dagrun-format") == "template-file"):
                continue
            name = config.get(key)
            if not isinstance(name, str) or not name:
                continue
            if expressions.has_template(name):
                self.problem("a template file is named by the template's author: no {{ }} here", label,
                             f"action_config.{key}")
                continue
            folder = Path(raw[ORIGIN_DIR]) if raw.get(ORIGIN_DIR) else None
            if folder is None:
                self.problem(f"{name!r}: a template given as data has no folder to read files from; "
                             f"use action_config.{schema.get('x-dagrun-inline-to', 'template')} with the text",
                             label, f"action_config.{key}")
                continue
            path = (folder / name).resolve()
            if folder.resolve() not in path.parents:
                self.problem(f"{name!r} is outside the template's folder {folder}", label, f"action_config.{key}")
                continue
            from .loader import read_text
            try:
                text = read_text(path)
            except TemplateError as exc:
                self.problems += exc.problems
                continue
            except InputError as exc:
                self.problem(str(exc), label, f"action_config.{key}")
                continue
            target = schema.get("x-dagrun-inline-to", "template")
            config = {**{k: v for k, v in config.items() if k != key}, target: text}
            # the document step (our own copy) carries the text too, for the run's snapshot
            raw_config = {k: v for k, v in (raw.get("action_config") or {}).items() if k != key}
            raw["action_config"] = {**raw_config, target: text}  # type: ignore[index]
        return config

    # 2. edges
    def _resolve(self, ref: Any) -> str | None:
        if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
            return self._by_seq.get(int(ref))
        return ref if ref in self._ids else None

    def _edges(self, bound: list[dict[str, Any]]) -> Edges:
        graph = Edges(s["id"] for s in bound)
        by_action: dict[str, list[str]] = {}
        for s in bound:
            by_action.setdefault(s["action"].name, []).append(s["id"])
        for s in bound:
            for ref in s.get("requires") or ():
                target = self._resolve(ref)
                if target is None:
                    self.problem(f"requires unknown step {ref!r}{did_you_mean(str(ref), self._ids)}", s["id"],
                                 "requires")
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

    def _phase_barriers(self, graph: Edges, bound: list[dict[str, Any]]) -> None:
        phases: dict[Phase, list[str]] = {}
        for s in bound:
            phases.setdefault(Phase.parse(s.get("phase")), []).append(s["id"])
        ordered = [phases[p] for p in sorted(phases)]
        for earlier, later in zip(ordered, ordered[1:]):
            members = set(earlier)
            sinks = [n for n in earlier if not any(m in members for m in graph.succ[n])]
            later_members = set(later)
            sources = [n for n in later if not any(m in later_members for m in graph.pred[n])]
            for a in sinks:
                for b in sources:
                    graph.add_edge(a, b)

    def _reject_cycles(self, graph: Edges, bound: list[dict[str, Any]]) -> None:
        cycle = graph.find_cycle()
        if cycle is None:
            return
        actions = {s["id"]: s["action"].name for s in bound}
        error = CycleError(self.name, [f"{u} ({actions[u]})" for u in cycle])
        if not self.problems:
            raise error
        self.problems += error.problems
        for u, v in zip(cycle, cycle[1:] + cycle[:1]):  # so later stages can still run
            graph.remove_edge(u, v)
        if graph.find_cycle() is not None:
            raise TemplateError(self.problems)

    # 3. expressions
    def _check_refs(self, refs: Iterable[expressions.Reference], step: dict[str, Any], field: str,
                    upstream: set[str], step_refs: set[str]) -> None:
        sid = step["id"]
        for ref in sorted(refs, key=lambda r: (r.root, r.attr or "")):
            if ref.root not in expressions.KNOWN_NAMES:
                self.problem(f"unknown variable {ref.root!r}{did_you_mean(ref.root, expressions.KNOWN_NAMES)} "
                             "(known: workspace, config, vars, env, steps)", sid, field)
            elif ref.root == "workspace":
                if ref.attr is None:
                    self.workspace_fields.add("*")  # the whole workspace: every field is read
                    continue
                self.workspace_fields.add(ref.attr)
                if self.workspace is not None and ref.attr not in self.workspace:
                    self.problem(f"the workspace has no field {ref.attr!r}{did_you_mean(ref.attr, self.workspace)}",
                                 sid, field)
            elif ref.attr is None:
                continue
            elif ref.root == "steps":
                if ref.attr in self._ids and ref.attr not in self._bound:
                    continue  # a step that could not be bound is reported once, where it is
                if ref.attr not in upstream:
                    what = "is not a step" if ref.attr not in self._ids else "is not upstream of this step"
                    self.problem(f"steps.{ref.attr} {what}{did_you_mean(ref.attr, upstream)}", sid, field)
                step_refs.add(ref.attr)
            elif ref.root == "vars" and ref.attr not in self.variables:
                hint = did_you_mean(ref.attr, self.variables) or f" (declare it under the template's vars:, " \
                                                                      f"e.g. vars: {{{ref.attr}: ...}})"
                self.problem(f"undefined variable vars.{ref.attr}{hint}", sid, field)
            elif ref.root == "config" and ref.attr not in step["config"] and \
                    ref.attr not in (step["action"].config_schema.get("properties") or {}):
                choices = set(step["config"]) | set(step["action"].config_schema.get("properties") or {})
                self.problem(f"config.{ref.attr} is not a config field of action {step['action'].name!r}"
                             f"{did_you_mean(ref.attr, choices)}", sid, field)
            elif ref.root == "env":
                self._check_env(ref.attr, sid, field)

    def _check_env(self, name: str, sid: str, field: str) -> None:
        import os
        if name.startswith("DAGRUN_"):
            self.problem(f"env.{name} is one of dagrun's own settings: templates cannot read it", sid, field)
        elif not is_base_env(name) and name not in self.global_config.env_passthrough:
            self.problem(f"env.{name} is not passed through: declare it in global_config.env_passthrough "
                         "(or pass --env NAME / env_passthrough=)", sid, field)
        elif self.workspace is not None and name not in os.environ:
            self.problem(f"environment variable {name} is not set", sid, field)

    def _user_action_reads(self, action: ActionSpec, where: str, refs: Iterable[Any], sid: str) -> None:
        """A user-defined action's own text reads only its config, steps, env
        and the workspace's well-known fields: vars and other workspace fields
        may hold secrets (the template passes what it needs in action_config)."""
        if action.library:
            return
        if any(r.root in ("vars", "steps") or r.root == "workspace" and r.attr not in KNOWN_FIELDS for r in refs):
            self.problem(f"action {action.name!r} is user-defined: its {where} reads only its config, env and the "
                         "workspace's well-known fields (vars, other workspace fields and other steps' results may "
                         "hold secrets); the template passes what it needs through action_config", sid, where)

    def _error_match(self, step: Mapping[str, Any], key: str, default: ErrorMatch | None) -> ErrorMatch | None:
        """The step's own retry rule, or the action's."""
        if key not in step:
            return default
        try:
            return ErrorMatch.parse(step[key])
        except re.error as exc:
            self.problem(f"bad regular expression: {exc}", step["id"], f"{key}.output_matches")
            return None

    def _specs(self, bound: list[dict[str, Any]], graph: Edges) -> dict[str, StepSpec]:
        from ..run.handler_types import handler_templates
        self._bound = {s["id"] for s in bound}
        specs: dict[str, StepSpec] = {}
        # What depends on the action alone, worked out once per action: a
        # template uses the same few actions for thousands of steps.
        per_action: dict[str, tuple[frozenset[str], frozenset[str], list[tuple[str, str]], RetryPolicy,
                                    tuple[Lock, ...]]] = {}
        no_refs: frozenset[str] = frozenset()
        for s in bound:
            sid, action = s["id"], s["action"]
            fixed = per_action.get(action.name)
            if fixed is None:
                fixed = per_action[action.name] = (
                    configs.shell_fields(action.config_schema), configs.secret_fields(action.config_schema),
                    handler_templates(action),
                    RetryPolicy(action.max_retries, action.retry_delay_seconds, action.exponential_backoff,
                                action.max_retry_delay_seconds, action.retry_jitter, action.retry_when,
                                action.never_retry_when),
                    tuple(action.locks))  # a tuple of its own: an ActionSpec built in Python may hold a list
            shell, secret, handler_sources, action_retry, action_locks = fixed
            upstream = reachable(sid, graph.pred) if self._mentions_steps(s) else set()
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
            for key in shell:  # a script with no {{ }} may still hand a value on to code ($DAGRUN_WORKSPACE_ID)
                value = s["config"].get(key)
                if isinstance(value, str) and not expressions.has_template(value):
                    try:
                        shell_text.check_source(value)
                    except UnsafeContext as exc:
                        self.problem(str(exc), sid, f"action_config.{key}")
            templated = False
            for path, value in expressions.template_strings(s["config"]):
                templated = True
                try:
                    expressions.parse_template(value, shell=path in shell)
                    self._check_refs(expressions.references(value), s, f"action_config.{path}", upstream, step_refs)
                except TemplateSyntaxError as exc:
                    self.problem(f"cannot parse {value!r}: {exc.message}", sid, f"action_config.{path}")
                except UnsafeContext as exc:
                    self.problem(str(exc), sid, f"action_config.{path}")
            try:
                order = configs.render_order(s["config"]) if templated else ()
            except ValueError as exc:
                self.problem(str(exc), sid, "action_config")
                order = ()
            for name, source in handler_sources:
                refs = expressions.references(source)
                self._user_action_reads(action, name, refs, sid)
                self._check_refs(refs, s, name, upstream, step_refs)
            if not action.library:  # its defaults and condition are the action's text too, not the template's
                for path, value in expressions.template_strings(dict(action.default_config)):
                    try:
                        self._user_action_reads(action, f"default_config.{path}", expressions.references(value), sid)
                    except TemplateSyntaxError as exc:
                        self.problem(f"cannot parse {value!r}: {exc.message}", sid, f"default_config.{path}")
                if action.condition_expression and not s.get("condition_expression"):
                    try:
                        refs = expressions.references(action.condition_expression, condition=True)
                        self._user_action_reads(action, "condition_expression", refs, sid)
                    except TemplateSyntaxError:
                        pass  # reported above, with the step's condition
            locks = action_locks + tuple(Lock.parse(i) for i in s["locks"]) if s.get("locks") else action_locks
            retry = action_retry if _RETRY_FIELDS.isdisjoint(s) else RetryPolicy(
                max_attempts=s.get("max_retries") or action.max_retries,
                delay_seconds=_first(s.get("retry_delay_seconds"), action.retry_delay_seconds),
                exponential_backoff=_first(s.get("exponential_backoff"), action.exponential_backoff),
                max_delay_seconds=action.max_retry_delay_seconds, jitter=action.retry_jitter,
                retry_when=self._error_match(s, "retry_when", action.retry_when),
                never_retry_when=self._error_match(s, "never_retry_when", action.never_retry_when))
            est = s.get("estimated_duration_seconds")
            if est is None:
                est = action.estimated_duration_seconds
            # Positional, in field order (id, sequence_order, action, phase, config, condition, skip_on_error,
            # retry, timeout_seconds, estimated_duration_seconds, locks, check_first, templated, shell_fields,
            # step_refs, secret_fields, config_order, origin, run_as, sandbox): once per step, and keywords
            # cost 40% more.
            specs[sid] = StepSpec(
                sid, s["sequence_order"], action, Phase.parse(s.get("phase")), frozen_mapping(s["config"]),
                condition, bool(s.get("skip_on_error", False)), retry,
                float(s.get("timeout_seconds") or action.timeout_seconds),
                float(DEFAULT_DURATION if est is None else est),
                locks, bool(_first(s.get("check_first"), action.check_first)), templated, shell,
                frozenset(step_refs) if step_refs else no_refs, secret, order, str(s.get(ORIGIN) or self.name),
                "root" if action.requires_sudo else (
                    (s.get("run_as") or self.global_config.run_as) if action.library else "workspace"),
                _first(s.get("sandbox"), _first(self.global_config.sandbox, not action.library)),
            )
        return specs

    @staticmethod
    def _mentions_steps(step: dict[str, Any]) -> bool:
        # ancestors() is O(graph); only pay for it where `steps.` can appear.
        action = step["action"]
        if "steps" in repr(step["config"]) or "steps" in str(step.get("condition_expression") or ""):
            return True
        return _action_mentions_steps(action)

    # 4. conflicts, locks, priorities
    def _conflicts(self, bound: list[dict[str, Any]]) -> tuple[dict[str, frozenset[str]], dict[str, int]]:
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
                other = self._resolve(ref)
                if other is None:
                    self.problem(f"conflicts_with unknown step {ref!r}{did_you_mean(str(ref), self._ids)}", s["id"],
                                 "conflicts_with")
                elif other != s["id"] and other in conflicts:
                    conflicts[s["id"]].add(other)
                    conflicts[other].add(s["id"])
        capacity: dict[str, int] = {}
        for s in bound:
            for lock in (*s["action"].locks, *(Lock.parse(i) for i in s["locks"])) if s.get("locks") else \
                    s["action"].locks:
                if capacity.setdefault(lock.name, lock.capacity) != lock.capacity:
                    self.problem(f"lock {lock.name!r} is declared with capacities {capacity[lock.name]} and "
                                 f"{lock.capacity}", s["id"], "locks")
        none: frozenset[str] = frozenset()  # most steps conflict with nothing: one shared empty set
        return {k: frozenset(v) if v else none for k, v in conflicts.items()}, capacity


# A step's own retry fields: a step with none of them shares its action's RetryPolicy.
_RETRY_FIELDS = frozenset({"max_retries", "retry_delay_seconds", "exponential_backoff", "retry_when",
                           "never_retry_when"})


def _first(value: Any, default: Any) -> Any:
    return default if value is None else value


def _phase_rank(value: Any) -> int:
    try:
        return Phase.parse(value)
    except KeyError:
        return Phase.main


def _seq_rank(value: Any) -> tuple[int, str]:
    return (value, "") if isinstance(value, int) else (0, str(value))


def _public(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The resolved template as a document again (what a resume recompiles):
    template files inlined, the compiler's private keys removed."""
    steps = [{k: v for k, v in raw.items() if k not in PRIVATE_KEYS} for raw in doc["actions"]]
    return {**doc, "actions": steps}


_MENTIONS: dict[int, tuple[Any, bool]] = {}


def _action_mentions_steps(action: Any) -> bool:
    """Does the action's own text (condition, handlers, handler files) name
    ``steps``? Once per action, not once per step."""
    seen = _MENTIONS.get(id(action))
    if seen is not None and seen[0] is action:
        return seen[1]
    from ..run.handler_types import handler_templates
    text = str(action.condition_expression or "")
    text += " ".join(source for _, source in handler_templates(action))  # the handlers' text, files included
    text += " ".join(filter(None, (action.execution_handler, action.validation_handler, action.rollback_handler)))
    found = "steps" in text
    if len(_MENTIONS) > 4096:  # a service compiling ever-new action definitions: stay bounded
        _MENTIONS.clear()
    _MENTIONS[id(action)] = (action, found)
    return found


def written_through(config: Mapping[str, Any], key: str, written: Mapping[str, Any],
                     seen: frozenset[str] = frozenset()) -> list[str]:
    """The fields of a step, written in the template, that hold a secret
    the secret field ``key`` reads from them (``url: "{{ config.dsn }}"``,
    ``dsn: pg://admin:PASSWORD@db``). Each ``{{ }}`` that reads one field
    and nothing else stands for that field's text: a field is counted when,
    with it in place, the secret field's text reads as a written secret (a
    password counts; a host, a port, a database name in a URL do not). A
    field that is the whole of what it reads is read as a secret field
    itself (through any number of fields). What cannot be told counts:
    ``config`` read whole (``config | tojson``, ``{% set c = config %}``), a
    field read beside something else, a field holding a mapping or a list."""
    value = config.get(key)
    texts = [value] if isinstance(value, str) else [t for _, t in expressions.template_strings(value)]
    found: set[str] = set()
    for text in texts:
        found |= _written_through_text(text, config, key, written, seen)
    return sorted(found)


def _written_through_text(text: str, config: Mapping[str, Any], key: str, written: Mapping[str, Any],
                          seen: frozenset[str]) -> set[str]:
    from jinja2 import TemplateSyntaxError
    if not expressions.has_template(text):
        return set()
    others = {k for k in written if k != key and k not in seen and written.get(k) not in (None, "")}
    try:
        refs = expressions.references(text)
    except TemplateSyntaxError:  # reported where the field is parsed: counted meanwhile
        return others
    if any(r.root == "config" and r.attr is None for r in refs):
        return others
    blocks = _config_blocks(text)
    if blocks is None:
        return others
    read = {name for _, name in blocks if name not in (None, key) and name not in seen}
    unsure = {r.attr for r in refs if r.root == "config"} - read - {key} - seen
    found = {k for k in unsure if k in others}  # read beside something else, or in a statement
    if len(blocks) == 1 and blocks[0][1] in read and text.strip() == blocks[0][0].strip():
        name = blocks[0][1]  # the field is that one: what it holds is the secret field's value
        if name in written and expressions.written_secret(config.get(name)):
            found.add(name)
        return found | set(written_through(config, name, written, seen | {key}))
    for name in sorted(read):
        held = config.get(name)
        if name in written and isinstance(held, (Mapping, list)):
            found.add(name)  # a mapping or a list read in part: cannot tell which part
        elif name in written and held not in (None, ""):
            if expressions.written_secret(_substituted(text, blocks, {name: str(held)}), in_place=True):
                found.add(name)
        found |= set(written_through(config, name, written, seen | {key}))
    return found


def _config_blocks(text: str) -> list[tuple[str, str | None]] | None:
    """Each ``{{ }}`` of ``text`` with the one config field it reads (None:
    it reads something else too, or no field). None when ``config`` is read
    whole, or the text does not parse."""
    from jinja2 import TemplateSyntaxError
    found: list[tuple[str, str | None]] = []
    for match in expressions.EXPRESSION_BLOCK.finditer(text):
        try:
            refs = expressions.references(match.group(0))
        except TemplateSyntaxError:
            return None
        if any(r.root == "config" and r.attr is None for r in refs):
            return None
        config_reads = {r.attr for r in refs if r.root == "config"}
        only = next(iter(config_reads)) if len(config_reads) == 1 and len(refs) == 1 else None
        found.append((match.group(0), only))
    return found


def _substituted(text: str, blocks: list[tuple[str, str | None]], values: Mapping[str, str]) -> str:
    """``text`` with each block reading one of ``values``' fields replaced by its text."""
    for block, name in blocks:
        if name in values:
            text = text.replace(block, values[name])
    return text
