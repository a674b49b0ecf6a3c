"""Git repositories: clone a branch (optionally shallow, optionally private
with the workspace's ssh key), validate the checkout, and on rollback remove
only a directory the clone created."""

from __future__ import annotations

import os
import shutil

from dagrun.errors import PermanentError
from dagrun.run.handler_types import StepContext
from dagrun.run.outcome import HandlerResult

from .scripts import NOTHING_TO_UNDO

# No prompts, and only transports that cannot run a command (ext:: and fd:: can).
GIT_ENV = {"GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "/bin/false", "GIT_ALLOW_PROTOCOL": "file:git:http:https:ssh"}


def _target(ctx: StepContext) -> str:
    target = ctx.config.get("target_dir")
    if not target:
        name = ctx.config["url"].rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1]
        target = "~/" + (name[:-4] if name.endswith(".git") else name)
    return ctx.path(target)


def _env(ctx: StepContext) -> dict[str, str]:
    env = dict(GIT_ENV)
    if ctx.config.get("private"):
        key = ctx.path(ctx.config.get("ssh_key_path") or "~/.ssh/id_ed25519")
        if not os.path.isfile(key):
            raise PermanentError(f"private repository: ssh key {key} does not exist")
        env["GIT_SSH_COMMAND"] = (f"ssh -i '{key}' -o IdentitiesOnly=yes -o BatchMode=yes "
                                  "-o StrictHostKeyChecking=accept-new")
    return env


def clone(ctx: StepContext) -> HandlerResult:
    url, branch, target = ctx.config["url"], ctx.config["branch"], _target(ctx)
    if os.path.isdir(os.path.join(target, ".git")):
        origin = ctx.run(["git", "-C", target, "remote", "get-url", "origin"])
        if origin.stdout.strip() != url:
            raise PermanentError(f"{target} is a checkout of {origin.stdout.strip() or 'another remote'}, not {url}")
        head = ctx.run(["git", "-C", target, "rev-parse", "HEAD"])
        return HandlerResult(data={"target_dir": target, "created": False, "commit": head.stdout.strip()})
    if os.path.exists(target) and os.listdir(target):
        raise PermanentError(f"{target} exists and is not empty")
    created_parent = not os.path.exists(target)
    command = ["git", "clone", f"--branch={branch}", "--single-branch"]
    if ctx.config.get("shallow"):
        command.append(f"--depth={int(ctx.config.get('depth', 1))}")
    result = ctx.run([*command, "--", url, target], env=_env(ctx))
    if not result.ok:
        if os.path.isdir(target) and created_parent:
            shutil.rmtree(target, ignore_errors=True)  # leave no half clone behind for the retry
        if "Remote branch" in result.stderr and "not found" in result.stderr:
            raise PermanentError(f"branch {branch!r} does not exist in {url}")
        return result
    head = ctx.run(["git", "-C", target, "rev-parse", "HEAD"])
    result.data = {"target_dir": target, "created": True, "commit": head.stdout.strip(), "branch": branch}
    return result


def validate_clone(ctx: StepContext) -> HandlerResult:
    target = _target(ctx)
    branch = ctx.run(["git", "-C", target, "rev-parse", "--abbrev-ref", "HEAD"])
    if not branch.ok:
        return HandlerResult(ok=False, error=f"{target} is not a git checkout")
    if branch.stdout.strip() != ctx.config["branch"]:
        return HandlerResult(ok=False, error=f"{target} is on {branch.stdout.strip()}, not {ctx.config['branch']}")
    return HandlerResult()


def remove_clone(ctx: StepContext) -> HandlerResult:
    if not ctx.result.get("created"):
        return HandlerResult(data=dict(NOTHING_TO_UNDO))
    shutil.rmtree(ctx.result["target_dir"], ignore_errors=True)
    return HandlerResult(data={"removed": ctx.result["target_dir"]})
