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
    from pathlib import Path

    from jinja2 import TemplateSyntaxError

    from dagrun.compile import expressions
    from dagrun.errors import PermanentError

    source = Path(ctx.path(str(ctx.config["source"])))
    if not source.is_file():
        raise PermanentError(f"template {source} does not exist")
    target = Path(ctx.path(str(ctx.config["target_path"])))
    try:
        rendered = expressions.render_text(source.read_text(encoding="utf-8"), ctx.template_context())
    except TemplateSyntaxError as exc:
        raise PermanentError(f"template {source} line {exc.lineno}: {exc.message}") from None
    existed = target.exists()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.dagrun-tmp")
    tmp.write_text(rendered, encoding="utf-8")
    if ctx.config.get("mode"):
        os.chmod(tmp, int(ctx.config["mode"], 8))
    os.replace(tmp, target)
    return HandlerResult(data={"target_path": str(target), "created": not existed})
