"""Handlers of the ``util`` actions (``noop``, ``sleep``)."""

from __future__ import annotations

from dagrun.run.handler_types import StepContext
from dagrun.run.outcome import HandlerResult


def noop(ctx: StepContext) -> HandlerResult:
    return HandlerResult(changed=False)


def sleep(ctx: StepContext) -> HandlerResult:
    """Sleeps on the run's cancel token: Ctrl-C or a cancel ends it at once."""
    if ctx.cancel.wait(float(ctx.config["seconds"])):
        return HandlerResult(ok=False, error="cancelled", cancelled=True)
    return HandlerResult(changed=False)
