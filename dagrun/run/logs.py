"""Structured logging of run events with structlog.

``log_events`` is an observer: each event becomes one log record bound with
the run id and step. The CLI chooses console or JSON rendering.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

from .events import (AttemptFinished, RetryScheduled, RunFinished, RunStarted, StepFinished, StepRolledBack,
                     StepSkipped)

log = structlog.get_logger("dagrun")


def configure(*, json: bool | None = None, level: int = logging.WARNING, stream: Any = None) -> None:
    """Console output on a terminal, JSON lines otherwise (or as asked)."""
    stream = stream or sys.stderr
    if json is None:
        json = not stream.isatty()
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, structlog.processors.add_log_level,
                    structlog.processors.TimeStamper(fmt="iso", utc=True), renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=True,
    )


def log_events(event: Any) -> None:
    if isinstance(event, RunStarted):
        log.info("run started", run_id=event.run_id, template=event.template, workspace=event.workspace_id,
                 steps=event.total_steps, workers=event.max_workers)
    elif isinstance(event, AttemptFinished) and event.outcome.status.value == "failed":
        o = event.outcome
        log.warning("attempt failed", run_id=event.run_id, step=o.step_id, attempt=o.attempt,
                    max_attempts=event.max_attempts, error=o.error)
    elif isinstance(event, RetryScheduled):
        log.info("retry scheduled", run_id=event.run_id, step=event.step_id, next_attempt=event.next_attempt,
                 delay=round(event.delay, 3))
    elif isinstance(event, StepFinished):
        log.info("step finished", run_id=event.run_id, step=event.step_id, status=event.status.value,
                 attempts=event.attempts, error=event.error)
    elif isinstance(event, StepSkipped):
        log.info("step skipped", run_id=event.run_id, step=event.step_id, reason=event.reason)
    elif isinstance(event, StepRolledBack):
        log.info("step rolled back", run_id=event.run_id, step=event.step_id, ok=event.ok, error=event.error)
    elif isinstance(event, RunFinished):
        log.info("run finished", run_id=event.run_id, status=event.result.status.value, error=event.result.error)
