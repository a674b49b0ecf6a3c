"""Project scaffolding: a Django project made by the venv's django-admin."""

from __future__ import annotations

import os

from dagrun.errors import PermanentError
from dagrun.run import paths
from dagrun.run.handler_types import StepContext
from dagrun.run.outcome import HandlerResult

from .environment import not_among_a_users_files, trusted_python
from .scripts import NOTHING_TO_UNDO


def _directory(ctx: StepContext) -> str:
    return ctx.path(ctx.config.get("directory") or f"~/{ctx.config['project_name']}")


def create_django_project(ctx: StepContext) -> HandlerResult:
    not_among_a_users_files(ctx)
    name, directory = ctx.config["project_name"], _directory(ctx)
    if os.path.isfile(os.path.join(directory, "manage.py")):
        return HandlerResult(data={"directory": directory, "created": False}, changed=False)
    admin = os.path.join(ctx.path(ctx.config["venv_path"]), "bin", "django-admin")
    if not os.access(admin, os.X_OK):
        raise PermanentError(f"{admin} does not exist: install Django into the venv first")
    folder_existed = os.path.isdir(directory)
    before = paths.entries(directory, home=ctx.home)
    # django-admin makes the folder as the workspace user (mkdir in this process would be root's)
    result = ctx.run(["mkdir", "-p", "--", directory])
    if result.ok:
        # As root, Django through the venv's checked interpreter: its bin/django-admin is a file of the
        # home (a cloned repository's, perhaps), any program at all.
        command = [trusted_python(ctx), "-m", "django"] if ctx.privileged else [admin]
        result = ctx.run([*command, "startproject", "--", name, directory])
    created_entries = sorted(paths.entries(directory, home=ctx.home) - before) if folder_existed else None
    if not result.ok:
        paths.remove_created(directory, created_entries, home=ctx.home)
    result.data = {"directory": directory, "created": True, "created_entries": created_entries,
                   "project_name": name}
    result.changed = result.ok
    return result


def validate_django_project(ctx: StepContext) -> HandlerResult:
    directory = _directory(ctx)
    if ctx.privileged:
        # As root, nothing of the project runs: `manage.py check` imports from its folder, which may hold
        # a cloned repository's files (a django/ of its own), and a project dagrun did not make is the
        # workspace's code.
        if os.path.isfile(os.path.join(directory, "manage.py")):
            return HandlerResult(data={"checked": "manage.py is there (not run: as root, dagrun runs no "
                                                  "project's code)"})
        return HandlerResult(ok=False, error=f"{directory}/manage.py does not exist")
    python = os.path.join(ctx.path(ctx.config["venv_path"]), "bin", "python")
    return ctx.run([python, "manage.py", "check"], cwd=directory)


def remove_django_project(ctx: StepContext) -> HandlerResult:
    if not ctx.result.get("created"):
        return HandlerResult(data=dict(NOTHING_TO_UNDO))
    removed = paths.remove_created(ctx.result["directory"], ctx.result.get("created_entries"), home=ctx.home)
    return HandlerResult(data={"removed": removed})
