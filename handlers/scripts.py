"""Handlers of ``execute_custom_script``: run the step's own scripts.

The scripts were interpolated with shell quoting (their config fields are
marked ``x-dagrun-format: shell``), so workspace and config values appear in
them only as single quoted words.
"""

from __future__ import annotations

from typing import Any

from dagrun.run.handler_types import StepContext
from dagrun.run.outcome import HandlerResult

NOTHING_TO_UNDO = {"nothing_to_undo": True}


def _env(ctx: StepContext) -> dict[str, str]:
    env: dict[str, Any] = ctx.config.get("env") or {}
    return {str(k): (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in env.items()}


def run_script(ctx: StepContext) -> HandlerResult:
    return ctx.run_shell(ctx.config["script"], cwd=ctx.config.get("working_dir"), env=_env(ctx), name="script")


def validate_script(ctx: StepContext) -> HandlerResult:
    script = ctx.config.get("validate_script")
    if not script:
        return HandlerResult(data={"nothing_to_validate": True})
    return ctx.run_shell(script, cwd=ctx.config.get("working_dir"), env=_env(ctx), name="validate_script")


def rollback_script(ctx: StepContext) -> HandlerResult:
    script = ctx.config.get("rollback_script")
    if not script:
        return HandlerResult(data=dict(NOTHING_TO_UNDO))
    return ctx.run_shell(script, cwd=ctx.config.get("working_dir"), env=_env(ctx), name="rollback_script")


# What a step's config says of its rollback: without a rollback_script it undoes nothing, so a resume
# after a death while rolling back trusts the step's completion (it would run the script again).
rollback_script.undoes = lambda config: bool(config.get("rollback_script"))  # type: ignore[attr-defined]
