"""Handlers of the ``util`` actions (``noop``, ``sleep``)."""

from __future__ import annotations

import time

from dagrun.run.handler_types import StepContext


def noop(ctx: StepContext) -> None:
    return None


def sleep(ctx: StepContext) -> None:
    time.sleep(float(ctx.config["seconds"]))
