"""Logging of run events: stdlib ``logging``, with structlog on top.

dagrun logs to the stdlib logger ``dagrun`` (and its children), which has a
``NullHandler``: used as a library, dagrun prints nothing, and the host
application decides, with ``logging``, what to keep and where. structlog
binds every record with the run id, workspace and step (context variables,
so lines from workers are bound too); the records reach ``logging`` as
structlog event dicts, which :func:`configure` (the CLI, the server) renders
as console text or JSON lines.

:func:`log_events` is the run's observer. It checks the logger's level
before building anything: with nothing configured, an event costs a level
check.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

from .events import (AttemptFinished, RetryScheduled, RunFinished, RunStarted, StepFinished, StepRolledBack,
                     StepSkipped)

logger = logging.getLogger("dagrun")
logger.addHandler(logging.NullHandler())

_log = structlog.wrap_logger(
    logger, wrapper_class=structlog.stdlib.BoundLogger,
    processors=[structlog.contextvars.merge_contextvars, structlog.stdlib.ProcessorFormatter.wrap_for_formatter])


def enabled() -> bool:
    """Will run events be logged at all? (Observers are not attached otherwise.)"""
    return logger.isEnabledFor(logging.INFO)


def configure(*, json: bool | None = None, level: int = logging.WARNING, stream: Any = None) -> logging.Handler:
    """Send dagrun's log records to ``stream`` (stderr): console text on a
    terminal, JSON lines otherwise (or as asked). For the CLI and the server;
    a host application configures ``logging`` its own way instead."""
    stream = stream or sys.stderr
    if json is None:
        json = not stream.isatty()
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    pre_chain = [structlog.stdlib.add_log_level, structlog.processors.TimeStamper(fmt="iso", utc=True)]
    handler = logging.StreamHandler(stream)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        foreign_pre_chain=pre_chain + [structlog.stdlib.ExtraAdder()]))
    handler.addFilter(lambda record: _add_chain(record, pre_chain))
    for old in [h for h in logger.handlers if getattr(h, "dagrun_cli", False)]:
        logger.removeHandler(old)
    handler.dagrun_cli = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    return handler


def _add_chain(record: logging.LogRecord, chain: list[Any]) -> bool:
    """Records from structlog carry an event dict: give it a level and a time."""
    if isinstance(record.msg, dict):
        for processor in chain:
            record.msg = processor(None, record.levelname.lower(), record.msg)
    return True


def log_events(event: Any) -> None:
    if not logger.isEnabledFor(logging.INFO):
        return
    if isinstance(event, RunStarted):
        _log.info("run started", run_id=event.run_id, template=event.template, workspace=event.workspace_id,
                  steps=event.total_steps, workers=event.max_workers)
    elif isinstance(event, AttemptFinished) and event.outcome.status.value == "failed":
        o = event.outcome
        _log.info("attempt failed", run_id=event.run_id, step=o.step_id, attempt=o.attempt,
                  max_attempts=event.max_attempts, error=o.error)
    elif isinstance(event, RetryScheduled):
        _log.info("retry scheduled", run_id=event.run_id, step=event.step_id, next_attempt=event.next_attempt,
                  delay=round(event.delay, 3))
    elif isinstance(event, StepFinished):
        _log.info("step finished", run_id=event.run_id, step=event.step_id, status=event.status.value,
                  attempts=event.attempts, error=event.error)
    elif isinstance(event, StepSkipped):
        _log.info("step skipped", run_id=event.run_id, step=event.step_id, reason=event.reason)
    elif isinstance(event, StepRolledBack):
        _log.info("step rolled back", run_id=event.run_id, step=event.step_id, ok=event.ok, error=event.error)
    elif isinstance(event, RunFinished):
        _log.info("run finished", run_id=event.run_id, status=event.result.status.value, error=event.result.error)
