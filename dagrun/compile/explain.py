"""``dagrun explain``: the effective template, and where each value came from.

After inheritance and defaults a step's config is the sum of several files:
base templates, the child, the action's ``default_config`` and its config
schema's defaults; variables may come from ``--set``. ``explain`` compiles
the template as a run would and labels every value with its origin.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from ..errors import InputError
from ..spec import MASK
from . import configs
from .graph import Compiler, did_you_mean
from .inherit import ORIGIN, ORIGINS, resolve
from .loader import TemplateSource, build_library


def explain(template: Any, *, step: str | None = None, actions: Iterable[Any] | None = None,
            variables: Mapping[str, Any] | None = None, templates: Iterable[Mapping[str, Any]] = (),
            trusted_actions: Iterable[Any] | None = None) -> dict[str, Any]:
    """The effective template as data: ``{"template", "version", "chain",
    "vars", "global_config", "steps"}``; each value is ``{"value", "origin"}``.
    ``step``: only that step (by id)."""
    library = build_library(actions, trusted_actions)
    merged = resolve(template, TemplateSource(templates), origins=True)
    plan = Compiler(merged, library, variables or {}, None).compile()  # raises on any problem
    if step is not None and step not in plan.steps:
        raise InputError(f"template {plan.name!r} has no step {step!r}{did_you_mean(step, plan.order)} "
                         f"(steps: {', '.join(plan.order)})")
    raw_steps = {}
    for raw in merged.document["actions"]:
        for sid in plan.order:
            if plan.steps[sid].sequence_order == raw.get("sequence_order"):
                raw_steps[sid] = raw
    given = dict(variables or {})

    def section(name: str, values: Mapping[str, Any]) -> dict[str, Any]:
        return {key: {"value": value, "origin": "--set" if name == "vars" and key in given
                      else _origin(merged.origins, f"{name}.{key}", "dagrun's default")}
                for key, value in values.items()}

    steps = []
    for sid in plan.order:
        if step is not None and sid != step:
            continue
        spec, raw = plan.steps[sid], raw_steps.get(sid, {})
        origins = raw.get(ORIGINS, {})
        action = spec.action
        schema_defaults = configs.schema_defaults(action.config_schema)
        config = {}
        for key, value in spec.config.items():
            if any(p == f"action_config.{key}" or p.startswith(f"action_config.{key}.") for p in origins):
                origin = _origin(origins, f"action_config.{key}", raw.get(ORIGIN, plan.name))
            elif key in action.default_config:
                origin = f"action {action.name}'s default_config ({action.source})"
            elif key in schema_defaults:
                origin = f"action {action.name}'s config schema default ({action.source})"
            else:
                origin = "?"
            shown = MASK if key in spec.secret_fields and value not in (None, "") else value
            config[key] = {"value": shown, "origin": origin}
        fields = {
            "action_name": action.name, "phase": spec.phase.name, "requires": list(plan.predecessors[sid]),
            "condition_expression": spec.condition.source if spec.condition else None,
            "max_retries": spec.retry.max_attempts, "timeout_seconds": spec.timeout_seconds,
            "estimated_duration_seconds": spec.estimated_duration_seconds, "run_as": spec.run_as,
            "sandbox": spec.sandbox,
        }
        described = {}
        for key, value in fields.items():
            own = {"action_name": "action_name", "requires": "requires"}.get(key, key)
            if key == "requires":
                parts = ([origins["requires"]] if "requires" in origins else []) + (
                    [f"action {action.name}'s requires_actions ({action.source})"] if action.requires_actions else [])
                if not parts and value:  # (what else orders steps)
                    parts = ["one step at a time in sequence_order (parallel_execution_enabled: false)"
                             if not plan.global_config.parallel_execution_enabled
                             else "the phases: a step waits for every step of an earlier phase"]
                origin = " and ".join(parts) or "none"
            elif own in origins:
                origin = origins[own]
            elif key in ("max_retries", "timeout_seconds", "estimated_duration_seconds", "condition_expression") \
                    and value is not None:
                origin = f"action {action.name} ({action.source})"
            else:
                origin = "dagrun's default"
            described[key] = {"value": value, "origin": origin}
        steps.append({"id": sid, "sequence_order": spec.sequence_order, "display_name": spec.display_name,
                      "defined_in": raw.get(ORIGIN, plan.name), "fields": described, "config": config})
    return {"template": plan.name, "version": plan.version, "chain": merged.chain,
            # what a secret field reads of the variables is shown masked, as the API and page show it
            "vars": section("vars", _masked_variables(plan)) if step is None else {},
            "global_config": section("global_config", {
                "continue_on_non_critical_errors": plan.global_config.continue_on_non_critical_errors,
                "parallel_execution_enabled": plan.global_config.parallel_execution_enabled,
                "rollback_on_failure": plan.global_config.rollback_on_failure,
                "max_workers": plan.global_config.max_workers, "run_as": plan.global_config.run_as,
                "env_passthrough": list(plan.global_config.env_passthrough)}) if step is None else {},
            "steps": steps}


def _origin(origins: Mapping[str, str], path: str, default: str) -> str:
    if path in origins:
        return origins[path]
    deeper = sorted({o for p, o in origins.items() if p.startswith(path + ".")})
    return ", ".join(deeper) if deeper else default


def _masked_variables(plan: Any) -> dict[str, Any]:
    """The plan's variables with what its secret fields read masked (helper-68:
    ``dagrun explain`` showed a stored template's password default)."""
    from ..api import masked_defaults  # (the rule runs and stored templates follow)
    return masked_defaults(plan, dict(plan.variables))
