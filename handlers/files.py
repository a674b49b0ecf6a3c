"""Handlers for file-writing actions (``write_file``, VS Code settings,
``template_copy``). Files are written inside the workspace home, atomically
and never through a symlink (``StepContext.write``), owned by the workspace
user; rollback removes a file only if the step created it."""

from __future__ import annotations

import os
import stat

from dagrun.run import paths
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
    paths.remove_file(ctx.result["target_path"], home=None if ctx.action.requires_sudo else ctx.home)
    return HandlerResult(data={"removed": ctx.result["target_path"]})


def copy_template(ctx: StepContext) -> HandlerResult:
    """Write the rendered template (``config.template``: the step's config
    interpolation rendered it, and a ``source`` file was inlined into it at
    compile time) to ``target_path``."""
    target = ctx.path(str(ctx.config["target_path"]))
    mode = int(ctx.config["mode"], 8) if ctx.config.get("mode") else None
    text = str(ctx.config.get("template") or "")
    if ctx.read(target) == text and (mode is None or stat.S_IMODE(os.lstat(target).st_mode) == mode):
        return HandlerResult(data={"target_path": target, "created": False}, changed=False)  # already so
    created = ctx.write(target, text, mode=mode)
    return HandlerResult(data={"target_path": target, "created": created}, changed=True)
