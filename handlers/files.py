"""Handlers for file-writing actions (``write_file``, VS Code settings)."""

from __future__ import annotations

import os

from dagrun.run.handler_types import StepContext
from dagrun.run.outcome import HandlerResult

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


def copy_template(ctx: StepContext) -> HandlerResult:
    """Write the rendered template (``config.template``: the step's config
    interpolation rendered it, and a ``source`` file was inlined into it at
    compile time) to ``target_path``."""
    from pathlib import Path

    target = Path(ctx.path(str(ctx.config["target_path"])))
    existed = target.exists()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.dagrun-tmp")
    tmp.write_text(str(ctx.config.get("template") or ""), encoding="utf-8")
    if ctx.config.get("mode"):
        os.chmod(tmp, int(ctx.config["mode"], 8))
    os.replace(tmp, target)
    return HandlerResult(data={"target_path": str(target), "created": not existed})
