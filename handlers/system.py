"""System actions: Debian packages and Linux users.

Package installs are non-interactive, wait for the dpkg lock (and share the
``dpkg`` lock with other package steps), install only what is missing and
roll back only what they installed. Users are created with ``useradd``; the
workspace's ssh key goes to ``~user/.ssh/authorized_keys``.
"""

from __future__ import annotations

import os
import pwd
import shutil

from dagrun.errors import PermanentError
from dagrun.run.handler_types import StepContext
from dagrun.run.outcome import HandlerResult

from .scripts import NOTHING_TO_UNDO

APT_ENV = {"DEBIAN_FRONTEND": "noninteractive", "NEEDRESTART_MODE": "a"}


def _installed(ctx: StepContext, packages: list[str]) -> set[str]:
    out = ctx.run(["dpkg-query", "-W", "-f=${Package} ${Status}\\n", *packages])
    found = set()
    for line in out.stdout.splitlines():
        name, _, status = line.partition(" ")
        if status.endswith("install ok installed"):
            found.add(name.split(":")[0])
    return found


def _apt(ctx: StepContext, *args: str) -> list[str]:
    if shutil.which("apt-get") is None:
        raise PermanentError("apt-get is not available on this machine")
    lock_wait = str(int(ctx.config.get("lock_timeout_seconds", 300)))
    return [*ctx.sudo, "apt-get", "-y", "-q", "-o", f"DPkg::Lock::Timeout={lock_wait}", *args]


def install_packages(ctx: StepContext) -> HandlerResult:
    packages = list(ctx.config["packages"])
    missing = [p for p in packages if p not in _installed(ctx, packages)]
    simulate = bool(ctx.config.get("simulate"))
    data = {"requested": packages, "installed": [], "already_installed": [p for p in packages if p not in missing],
            "simulated": simulate, "commands": []}
    if not missing:
        return HandlerResult(data=data)
    if ctx.config.get("update_cache"):
        command = _apt(ctx, "update")
        data["commands"].append(command)
        result = ctx.run(command, env=APT_ENV)
        if not result.ok:
            return result
    command = _apt(ctx, *(["-s"] if simulate else []), "install", "--no-install-recommends", *missing)
    data["commands"].append(command)
    result = ctx.run(command, env=APT_ENV)
    result.data = {**data, "installed": [] if simulate else missing}
    return result


def validate_packages(ctx: StepContext) -> HandlerResult:
    if ctx.config.get("simulate"):
        return HandlerResult(data={"validated": "simulated run: nothing to check"})
    packages = list(ctx.config["packages"])
    missing = sorted(set(packages) - _installed(ctx, packages))
    if missing:
        return HandlerResult(ok=False, error=f"not installed: {', '.join(missing)}")
    return HandlerResult()


def remove_packages(ctx: StepContext) -> HandlerResult:
    installed = ctx.result.get("installed") or []
    if not installed:
        return HandlerResult(data=dict(NOTHING_TO_UNDO))
    return ctx.run(_apt(ctx, "remove", *installed), env=APT_ENV)


# -- users --------------------------------------------------------------------

def _user(name: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None


def create_user(ctx: StepContext) -> HandlerResult:
    name = ctx.config["username"]
    created = False
    if _user(name) is None:
        command = [*ctx.sudo, "useradd", "--create-home", "--shell", ctx.config["shell"], "--user-group"]
        if ctx.config.get("home"):
            command += ["--home-dir", ctx.config["home"]]
        result = ctx.run([*command, name])
        if not result.ok:
            if "Permission denied" in result.stderr or "cannot lock" in result.stderr:
                raise PermanentError(f"useradd refused: {result.stderr.strip()}")
            return result
        created = True
    user = _user(name)
    assert user is not None
    key = ctx.config.get("ssh_public_key")
    if key:
        ssh_dir = os.path.join(user.pw_dir, ".ssh")
        os.makedirs(ssh_dir, mode=0o700, exist_ok=True)
        keys_path = os.path.join(ssh_dir, "authorized_keys")
        existing = open(keys_path).read().splitlines() if os.path.exists(keys_path) else []
        if key.strip() not in existing:
            with open(keys_path, "a") as fh:
                fh.write(key.strip() + "\n")
        os.chmod(keys_path, 0o600)
        for path in (ssh_dir, keys_path):
            os.chown(path, user.pw_uid, user.pw_gid)
    return HandlerResult(data={"username": name, "uid": user.pw_uid, "home": user.pw_dir, "created": created})


def validate_user(ctx: StepContext) -> HandlerResult:
    user = _user(ctx.config["username"])
    if user is None:
        return HandlerResult(ok=False, error=f"user {ctx.config['username']} does not exist")
    if not os.path.isdir(user.pw_dir):
        return HandlerResult(ok=False, error=f"home {user.pw_dir} was not created")
    return HandlerResult()


def remove_user(ctx: StepContext) -> HandlerResult:
    if not ctx.result.get("created"):
        return HandlerResult(data=dict(NOTHING_TO_UNDO))
    return ctx.run([*ctx.sudo, "userdel", "--remove", ctx.config["username"]])
