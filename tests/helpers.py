"""Python handlers and builders the tests use (real callables, imported by
the engine through ``python_function`` action definitions)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from dagrun.errors import PermanentError
from dagrun.run.handler_types import StepContext
from dagrun.run.outcome import HandlerResult


def noop(ctx: StepContext) -> None:
    return None


def echo_config(ctx: StepContext) -> dict[str, Any]:
    return {"config": ctx.config, "steps": {k: dict(v) for k, v in ctx.steps.items()}}


def flaky(ctx: StepContext) -> HandlerResult:
    """Fails until attempt ``config.succeed_on``."""
    if ctx.attempt < ctx.config.get("succeed_on", 2):
        return HandlerResult(ok=False, error=f"attempt {ctx.attempt} fails on purpose")
    return HandlerResult(data={"attempt": ctx.attempt})


def permanent(ctx: StepContext) -> None:
    raise PermanentError("permission refused")


def boom(ctx: StepContext) -> None:
    raise RuntimeError("boom")


def sleep_forever(ctx: StepContext) -> None:
    time.sleep(ctx.config.get("seconds", 3600))


def record_rollback(ctx: StepContext) -> dict[str, Any]:
    log = Path(ctx.config["log"])
    with log.open("a") as fh:
        fh.write(f"rollback {ctx.step_id}\n")
    return {}


def failing_rollback(ctx: StepContext) -> HandlerResult:
    return HandlerResult(ok=False, error="cannot undo")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except OSError:
        return False


def action(name: str, handler: str = "tests.helpers:noop", **fields: Any) -> dict[str, Any]:
    """A python_function action definition."""
    doc = {"name": name, "action_type": "python_function", "execution_handler": handler,
           "max_retries": 1, "retry_delay_seconds": 0, "timeout_seconds": 30}
    doc.update(fields)
    return doc


def shell_action(name: str, script: str, **fields: Any) -> dict[str, Any]:
    doc = {"name": name, "action_type": "shell", "execution_handler": script,
           "max_retries": 1, "retry_delay_seconds": 0, "timeout_seconds": 30}
    doc.update(fields)
    return doc


def step(seq: int, action_name: str, **fields: Any) -> dict[str, Any]:
    doc = {"sequence_order": seq, "action_name": action_name}
    doc.update(fields)
    return doc


def script_step(seq: int, script: str, **fields: Any) -> dict[str, Any]:
    config = fields.pop("action_config", {})
    return step(seq, "execute_custom_script", action_config={"script": script, **config}, **fields)


def template(*steps: dict[str, Any], **fields: Any) -> dict[str, Any]:
    doc = {"name": fields.pop("name", "t"), "version": "1.0.0", "actions": list(steps)}
    doc.update(fields)
    return doc


def describe_process(ctx: StepContext) -> dict[str, Any]:
    """Where a (sandboxed) Python handler runs: its pid and what it may touch."""
    def can(fn) -> bool:
        try:
            fn()
            return True
        except OSError:
            return False
    return {"pid": os.getpid(), "uid": os.getuid(),
            "etc_writable": can(lambda: open("/etc/dagrun-probe", "w").close()),
            "shadow_readable": can(lambda: open("/etc/shadow").read(1))}


def ignore_cancel_then_run(ctx: StepContext) -> None:
    """A handler that ignores its cancel token: starts a long command and,
    meanwhile, does not return (abandoned at its deadline)."""
    import threading as th

    def command() -> None:
        ctx.run(["bash", "-c", f"echo $$ > {ctx.config['pidfile']}; exec sleep 60"])

    th.Thread(target=command, daemon=True).start()
    time.sleep(120)
