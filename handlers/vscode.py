"""VS Code: extensions through the `code` / `code-server` command line."""

from __future__ import annotations

import shutil

from dagrun.errors import PermanentError
from dagrun.run.handler_types import StepContext
from dagrun.run.outcome import HandlerResult

CLIS = ("code", "code-server")


def _cli(ctx: StepContext) -> str:
    wanted = ctx.config.get("cli")
    path_env = ctx.env.get("PATH")
    for name in ([wanted] if wanted else CLIS):
        found = shutil.which(name, path=path_env)
        if found:
            return ctx.program(found)  # as root: only a program only root could have installed
    raise PermanentError(f"neither {' nor '.join([wanted] if wanted else CLIS)} is installed: "
                         "install VS Code or code-server, or set config.cli")


def _installed(ctx: StepContext, cli: str) -> set[str]:
    out = ctx.run([cli, "--list-extensions"])
    return {line.strip().lower() for line in out.stdout.splitlines() if line.strip()}


def install_extensions(ctx: StepContext) -> HandlerResult:
    cli = _cli(ctx)
    present = _installed(ctx, cli)
    installed, output = [], []
    for extension in ctx.config["extensions"]:
        if extension.lower() in present:
            continue
        result = ctx.run([cli, "--install-extension", extension, "--force"])
        output.append(result.stdout + result.stderr)
        if not result.ok:
            result.error = f"{extension}: {result.error}"
            result.data = {"installed": installed}
            return result
        installed.append(extension)
    return HandlerResult(data={"cli": cli, "installed": installed}, stdout="".join(output),
                         changed=bool(installed))


def validate_extensions(ctx: StepContext) -> HandlerResult:
    present = _installed(ctx, _cli(ctx))
    missing = [e for e in ctx.config["extensions"] if e.lower() not in present]
    if missing:
        return HandlerResult(ok=False, error=f"not installed: {', '.join(missing)}")
    return HandlerResult()


def uninstall_extensions(ctx: StepContext) -> HandlerResult:
    installed = ctx.result.get("installed") or []
    if not installed:
        return HandlerResult(data={"nothing_to_undo": True})
    cli = _cli(ctx)
    for extension in installed:
        ctx.run([cli, "--uninstall-extension", extension])
    return HandlerResult(data={"uninstalled": installed})
