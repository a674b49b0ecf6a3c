"""Python handlers and builders the tests use (real callables, imported by
the engine through ``python_function`` action definitions)."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any

from dagrun.errors import PermanentError
from dagrun.run.handler_types import StepContext
from dagrun.run.outcome import HandlerResult


def noop(ctx: StepContext) -> None:
    return None


def echo_config(ctx: StepContext) -> dict[str, Any]:
    return {"config": ctx.config, "steps": {k: dict(v) for k, v in ctx.steps.items()}}


def append_workspace_id(ctx: StepContext) -> dict[str, Any]:
    """Changes its config in place (as careless handler code may)."""
    ctx.config["items"].append(ctx.workspace["id"])
    return {"items": list(ctx.config["items"])}


def append_to_nested(ctx: StepContext) -> dict[str, Any]:
    """Changes a dict inside a tuple of its config in place."""
    ctx.config["items"][0]["seen"].append(ctx.workspace["id"])
    return {"seen": list(ctx.config["items"][0]["seen"])}


def flaky(ctx: StepContext) -> HandlerResult:
    """Fails until attempt ``config.succeed_on``."""
    if ctx.attempt < ctx.config.get("succeed_on", 2):
        return HandlerResult(ok=False, error=f"attempt {ctx.attempt} fails on purpose")
    return HandlerResult(data={"attempt": ctx.attempt})


def permanent(ctx: StepContext) -> None:
    raise PermanentError("permission refused")


def boom(ctx: StepContext) -> None:
    raise RuntimeError("boom")


def working_folder(ctx: StepContext) -> Any:
    """A user-defined handler's program: says where it started."""
    return ctx.run(["pwd"])


def home_given(ctx: StepContext) -> dict[str, Any]:
    """What a handler is handed of the workspace home."""
    return {"home": ctx.home, "isolation_home": ctx.isolation.home}


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


class Server:
    """``dagrun serve`` in a subprocess on a free port (the real WSGI server)."""

    def __init__(self, db_url: str, cwd: Path, *, token: str | None = None, extra: tuple[str, ...] = ()):
        import socket
        import subprocess
        import sys
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = token or uuid.uuid4().hex  # the service always has one
        env = {**os.environ, "XDG_DATA_HOME": str(cwd / "xdg"), "DAGRUN_TOKEN": self.token}
        args = [sys.executable, "-m", "dagrun", "serve", "--port", str(self.port), "--db", db_url,
                "--allow-inline-templates", *extra]
        self.log = open(cwd / "serve.log", "w")
        self.process = subprocess.Popen(args, cwd=cwd, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if self.get("/api/health")[0] == 200:
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"dagrun serve did not start: {(cwd / 'serve.log').read_text()}")

    def request(self, method: str, path: str, body: Any = None, headers: dict | None = None) -> tuple[int, Any]:
        import json
        import urllib.error
        import urllib.request
        data = None if body is None else json.dumps(body).encode()
        all_headers = {"Content-Type": "application/json", **(headers or {})}
        if self.token:
            all_headers.setdefault("Authorization", f"Bearer {self.token}")
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=all_headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                raw = response.read()
                status = response.status
        except urllib.error.HTTPError as exc:
            raw, status = exc.read(), exc.code
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode(errors="replace")

    def get(self, path: str, **kw: Any) -> tuple[int, Any]:
        return self.request("GET", path, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        return self.request("POST", path, body if body is not None else {}, **kw)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except Exception:  # noqa: BLE001
            self.process.kill()
        self.log.close()


def odd_result(ctx: StepContext) -> HandlerResult:
    """What a careless (or hostile) Python handler may report: values no
    database column takes as they are."""
    if ctx.config.get("wait"):
        time.sleep(float(ctx.config["wait"]))  # outlasts the recorder's batch: its row is updated, not inserted
    return HandlerResult(exit_code=True, changed="no", stdout="lone \udc80 surrogate, NUL \0 end",
                         data={(1, 2): "tuple key", "nan": float("nan"), "inf": float("-inf"), "big": 10 ** 5000,
                               "lone": "\ud800", "set": {3}, "ok": "fine"})


def odd_secret_result(ctx: StepContext) -> dict:
    """A result holding its x-secret token in types JSON has not: a set, bytes, a tuple key, an object."""
    token = ctx.config["token"]

    class Holder:
        def __str__(self) -> str:
            return f"holder of {token}"

    return {"as_set": {token}, "as_bytes": token.encode(), ("k", token): 1, "obj": Holder(), "plain": token,
            "count": 3}


def numeric_secret_result(ctx: StepContext) -> dict:
    """A result holding its x-secret token as a number, escaped in a repr, or shown only by __repr__."""
    token = ctx.config["token"]

    class Shown:
        def __str__(self) -> str:
            return "nothing to see"

        def __repr__(self) -> str:
            return f"Shown({token!r})"

    return {"number": int(token.split("-")[1]), "escaped": (token + "\x7f").encode("utf-8"), "shown": Shown(),
            "view": memoryview(token.encode())}
