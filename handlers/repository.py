"""Git repositories: clone a branch (optionally shallow, optionally private
with the workspace's ssh key), validate the checkout, and on rollback remove
exactly what the clone created.

git never reads configuration the workspace controls when it runs as root
(``GIT_CONFIG_GLOBAL``/``GIT_CONFIG_NOSYSTEM`` pinned), never runs hooks, and
speaks only transports that cannot run a command. The ssh command is a
constant: the key's path reaches it as an environment variable, never as
text of a command line.
"""

from __future__ import annotations

import base64
import os
import urllib.parse

from dagrun.errors import PermanentError
from dagrun.run import paths
from dagrun.run.handler_types import StepContext
from dagrun.run.outcome import HandlerResult

from .scripts import NOTHING_TO_UNDO

# No prompts, and only transports that cannot run a command (ext:: and fd:: can).
GIT_ENV = {"GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "/bin/false", "GIT_ALLOW_PROTOCOL": "file:git:http:https:ssh",
           "GIT_SSH_VARIANT": "ssh"}
# A constant command: sh expands "$DAGRUN_SSH_KEY" from the environment, as data.
# -F /dev/null: the account's ssh config (a Host entry with another IdentityFile, a ProxyCommand) is
# never used for a host a value names.
SSH_COMMAND = ('ssh -F /dev/null -i "$DAGRUN_SSH_KEY" -o IdentitiesOnly=yes -o BatchMode=yes '
               '-o StrictHostKeyChecking=accept-new')
# Root cloning a repository that is not private: no key at all (a value's git@host:operator/repo.git
# would otherwise borrow root's ~/.ssh keys, the operator's identity).
ANONYMOUS_SSH_COMMAND = ("ssh -F /dev/null -o PubkeyAuthentication=no -o BatchMode=yes "
                         "-o StrictHostKeyChecking=accept-new")
NO_HOOKS = ["-c", "core.hooksPath=/dev/null"]


def _target(ctx: StepContext) -> str:
    target = ctx.config.get("target_dir")
    if not target:
        name = ctx.config["url"].rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1]
        target = "~/" + (name[:-4] if name.endswith(".git") else name)
    return ctx.path(target)


def _env(ctx: StepContext) -> dict[str, str]:
    env = dict(GIT_ENV)
    if os.geteuid() == 0 and ctx.isolation.user is None:  # root: the workspace's ~/.gitconfig is not ours
        env.update({"GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1"})
    if ctx.config.get("private"):
        key = ctx.private_file(ctx.config.get("ssh_key_path") or "~/.ssh/id_ed25519")
        if not os.path.isfile(key):
            raise PermanentError(f"private repository: ssh key {key} does not exist")
        env.update({"GIT_SSH_COMMAND": SSH_COMMAND, "DAGRUN_SSH_KEY": key})
    elif ctx.privileged:
        env["GIT_SSH_COMMAND"] = ANONYMOUS_SSH_COMMAND
    return env


def _local_path(url: str) -> str | None:
    """The folder of this machine a URL names, as git reads it (None for a
    remote): a file:// URL (git takes ``localhost`` as this machine and
    decodes %-escapes), or a path (a URL with neither ``://`` nor a
    ``host:`` before its first ``/``)."""
    if url.lower().startswith("file:"):
        if "?" in url or "#" in url:  # git reads them as the path's characters; urlsplit would cut them off
            raise PermanentError(f"the file URL {url!r} holds ? or #: a repository of this machine is "
                                 "file:///path, nothing after its path")
        parts = urllib.parse.urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise PermanentError(f"the file URL {url!r} names a host: a repository of this machine is file:///path")
        return urllib.parse.unquote(parts.path)
    if "://" in url or ":" in url.split("/", 1)[0]:
        return None
    return url


def _local_source(ctx: StepContext, url: str) -> None:
    """As root, a repository on this machine must be one every user could
    read: a URL (a value) never makes root copy a private folder."""
    path = _local_path(url)
    if ctx.privileged and path is not None:
        ctx.expand(path)  # refuses what not everyone could read


def _without_credentials(url: str) -> tuple[str, dict[str, str]]:
    """An http(s) URL's ``user:password@`` moved off the command line (where
    every user of the machine sees it, in ``ps``) and out of the checkout's
    .git/config, into git's environment as an Authorization header."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or "@" not in parts.netloc:
        return url, {}
    userinfo, _, host = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    token = base64.b64encode(f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password)}".encode()).decode()
    return urllib.parse.urlunsplit(parts._replace(netloc=host)), {
        "GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "http.extraHeader",
        "GIT_CONFIG_VALUE_0": f"Authorization: Basic {token}"}


def _git(ctx: StepContext, *args: str, env: dict[str, str] | None = None) -> HandlerResult:
    return ctx.run(["git", *NO_HOOKS, *args], env={**_env(ctx), **(env or {})})


def clone(ctx: StepContext) -> HandlerResult:
    url, branch, target = ctx.config["url"], ctx.config["branch"], _target(ctx)
    remote, auth = _without_credentials(url)
    if os.path.isdir(os.path.join(target, ".git")):
        origin = _git(ctx, "-C", target, "remote", "get-url", "origin")
        if origin.stdout.strip() not in (url, remote):
            raise PermanentError(f"{target} is a checkout of {origin.stdout.strip() or 'another remote'}, not {url}")
        head = _git(ctx, "-C", target, "rev-parse", "HEAD")
        return HandlerResult(data={"target_dir": target, "created": False, "commit": head.stdout.strip()},
                             changed=False)
    _local_source(ctx, url)
    folder_existed = os.path.isdir(target)
    if folder_existed and paths.entries(target, home=ctx.home):
        raise PermanentError(f"{target} exists and is not empty")
    command = ["clone", f"--branch={branch}", "--single-branch"]
    if ctx.config.get("shallow"):
        command.append(f"--depth={int(ctx.config.get('depth', 1))}")
    result = _git(ctx, *command, "--", remote, target, env=auth)
    # What rollback may remove: the folder if the clone made it, else what it put in it.
    created_entries = sorted(paths.entries(target, home=ctx.home)) if folder_existed else None
    if not result.ok:
        if os.path.isdir(target):  # leave no half clone behind for the retry
            paths.remove_created(target, created_entries, home=ctx.home)
        if "Remote branch" in result.stderr and "not found" in result.stderr:
            raise PermanentError(f"branch {branch!r} does not exist in {url}")
        return result
    head = _git(ctx, "-C", target, "rev-parse", "HEAD")
    result.data = {"target_dir": target, "created": True, "created_entries": created_entries,
                   "commit": head.stdout.strip(), "branch": branch}
    result.changed = True
    return result


def validate_clone(ctx: StepContext) -> HandlerResult:
    target = _target(ctx)
    branch = _git(ctx, "-C", target, "rev-parse", "--abbrev-ref", "HEAD")
    if not branch.ok:
        return HandlerResult(ok=False, error=f"{target} is not a git checkout")
    if branch.stdout.strip() != ctx.config["branch"]:
        return HandlerResult(ok=False, error=f"{target} is on {branch.stdout.strip()}, not {ctx.config['branch']}")
    return HandlerResult()


def remove_clone(ctx: StepContext) -> HandlerResult:
    if not ctx.result.get("created"):
        return HandlerResult(data=dict(NOTHING_TO_UNDO))
    removed = paths.remove_created(ctx.result["target_dir"], ctx.result.get("created_entries"), home=ctx.home)
    return HandlerResult(data={"removed": removed})
