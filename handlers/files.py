"""Handlers for file-writing actions (``write_file``, VS Code settings)."""

from __future__ import annotations

import os

from dagrun.handler_types import StepContext
from dagrun.outcome import HandlerResult

from .scripts import NOTHING_TO_UNDO


def target_exists(ctx: StepContext) -> HandlerResult:
    target = ctx.path(str(ctx.config["target_path"]))
    if os.path.isfile(target):
        return HandlerResult(data={"target_path": target})
    return HandlerResult(ok=False, error=f"{target} was not written")


def remove_created(ctx: StepContext) -> HandlerResult:
    """Undo only what the step did: remove the file if the step created it."""
    if not ctx.result.get("created"):
        return HandlerResult(data=dict(NOTHING_TO_UNDO))
    try:
        os.remove(ctx.result["target_path"])
    except FileNotFoundError:
        pass
    return HandlerResult(data={"removed": ctx.result["target_path"]})
