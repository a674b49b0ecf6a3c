"""System actions: Debian packages and Linux users.

Package installs are non-interactive, wait for the dpkg lock (and share the
``dpkg`` lock with other package steps), install only what is missing and
roll back exactly what they installed, the dependencies apt pulled in
included. Users are created with ``useradd``, never over a system account,
an existing user or an existing home (unless ``adopt_existing``); the
workspace's ssh key goes to ``~user/.ssh/authorized_keys``, written without
following symlinks.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil

from dagrun.errors import PermanentError
from dagrun.run import paths
from dagrun.run.handler_types import StepContext
from dagrun.run.outcome import HandlerResult
from dagrun.workspace import is_tenant_uid

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
        return HandlerResult(data=data, changed=False)
    if ctx.config.get("update_cache"):
        command = _apt(ctx, "update")
        data["commands"].append(command)
        result = ctx.run(command, env=APT_ENV)
        if not result.ok:
            return result
    _check_known(ctx, missing)
    # --no-remove: apt removes packages to make room for others (conflicts) and for a name ending in '-'.
    command = _apt(ctx, *(["-s"] if simulate else []), "install", "--no-install-recommends", "--no-remove", *missing)
    data["commands"].append(command)
    before = set() if simulate else _all_installed(ctx)
    result = ctx.run(command, env=APT_ENV)
    # What rollback removes: every package this step installed, the dependencies apt pulled in included.
    installed = [] if simulate else sorted(_all_installed(ctx) - before)
    result.data = {**data, "installed": installed}
    result.changed = bool(installed)
    return result


def _check_known(ctx: StepContext, packages: list[str]) -> None:
    """Every name must be a package apt knows, exactly: apt reads a name it
    does not know as a pattern (``lib.+`` installs every ``lib`` package) or
    with an action (``less-`` removes less). A version (``=1.2``), release
    (``/bookworm``) or architecture (``:amd64``) may follow the name."""
    out = ctx.run(["apt-cache", "--all-names", "pkgnames"])  # (virtual packages too: libz-dev, awk)
    if not out.ok:
        raise PermanentError(f"apt-cache pkgnames failed: {(out.stderr or out.stdout).strip()[:200]}")
    known = set(out.stdout.split())
    unknown = [p for p in packages if re.split(r"[=/:]", p, maxsplit=1)[0] not in known]
    if unknown:
        raise PermanentError(f"no package named {', '.join(unknown)} (a name is never a pattern: each must be "
                             "a package apt knows; update_cache: true reads the lists first)")


def _all_installed(ctx: StepContext) -> set[str]:
    out = ctx.run(["dpkg-query", "-W", "-f=${Package} ${Status}\\n"])
    return {line.split(" ", 1)[0] for line in out.stdout.splitlines() if line.endswith("install ok installed")}


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


def _authorize(user: pwd.struct_passwd, key: str) -> bool:
    """Add ``key`` to the user's authorized_keys, walking from the home with
    O_NOFOLLOW: a planted ``~/.ssh`` symlink is refused, never followed."""
    owner = (user.pw_uid, user.pw_gid)
    keys_path = os.path.join(user.pw_dir, ".ssh", "authorized_keys")
    current = paths.read_file(keys_path, home=user.pw_dir)
    lines = [] if current is None else current.decode("utf-8", errors="replace").splitlines()
    if key.strip() in lines:
        return False
    paths.write_file(keys_path, ("\n".join([*lines, key.strip()]) + "\n").encode(), home=user.pw_dir, mode=0o600,
                     owner=owner, folder_mode=0o700)
    return True


def create_user(ctx: StepContext) -> HandlerResult:
    name = ctx.config["username"]
    adopt = bool(ctx.config.get("adopt_existing"))
    existing = _user(name)
    if existing is not None and (not is_tenant_uid(existing.pw_uid) or name == "root"):
        raise PermanentError(f"{name} is a system account (uid {existing.pw_uid}): not a workspace user")
    if existing is not None and not adopt:
        raise PermanentError(f"user {name} already exists and this step did not create it "
                             "(adopt_existing: true to use it)")
    if existing is not None:  # adopting: only this workspace's account, or one the operator allows
        from dagrun.run.accounts import account_problem
        problem = account_problem(name, str(ctx.workspace.get("id")), ctx.adopt_users)
        if problem:
            raise PermanentError(problem)
    home = ctx.config.get("home") or f"/home/{name}"
    if os.geteuid() == 0:  # a home is made only where workspace homes may live (not in /etc/...)
        from dagrun.errors import InputError
        from dagrun.workspace import check_home_root, home_roots
        roots = home_roots([ctx.home_root] if ctx.home_root else [])
        try:  # and used as checked, after symlinks: a link swapped in between leads nowhere new
            home = check_home_root(home, roots, existing.pw_uid if existing is not None else None)
        except InputError as exc:
            raise PermanentError(str(exc)) from None
        own = bool(ctx.home) and os.path.realpath(ctx.home) == home
        if existing is None and not own and os.path.dirname(home) not in roots:
            # Deeper, it may be inside another workspace's home (a root-owned one passes the check above):
            # useradd made a folder there, with the new account's files and keys (helper-62).
            raise PermanentError(f"{home}: a new user's home is the workspace's own home or a folder right in one "
                                 f"of the folders workspaces may live in ({', '.join(roots)}), never deeper")
    created = False
    if existing is None:
        if os.path.lexists(home):  # (adopt_existing adopts an account, never a folder: perhaps another's home)
            raise PermanentError(f"{home} already exists: a new user does not take over a home (it may be "
                                 "another workspace's); give one that does not exist yet")
        from dagrun.run.accounts import marker
        command = [*ctx.sudo, "useradd", "--create-home", f"--shell={ctx.config['shell']}", "--user-group",
                   f"--comment={marker(str(ctx.workspace.get('id')))}",
                   f"--home-dir={home}", "--", name]
        result = ctx.run(command)
        if not result.ok:
            if "Permission denied" in result.stderr or "cannot lock" in result.stderr:
                raise PermanentError(f"useradd refused: {result.stderr.strip()}")
            return result
        created = True
    user = _user(name)
    assert user is not None
    if not is_tenant_uid(user.pw_uid):  # useradd made a system account (a misconfigured UID_MIN)
        raise PermanentError(f"{name} got uid {user.pw_uid}, a system account's")
    if created:  # useradd makes it as login.defs says (0755 on Debian): no tenant reads another's
        folder = paths.open_folder(user.pw_dir)
        try:
            if os.fstat(folder).st_uid == user.pw_uid:
                os.fchmod(folder, 0o750)
        finally:
            os.close(folder)
    key = ctx.config.get("ssh_public_key")
    key_added = bool(key) and _authorize(user, key)
    return HandlerResult(data={"username": name, "uid": user.pw_uid, "home": user.pw_dir, "created": created},
                         changed=created or key_added)


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
    return ctx.run([*ctx.sudo, "userdel", "--remove", "--", ctx.config["username"]])
