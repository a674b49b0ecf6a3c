"""Python environments: create a venv, install requirements into it."""

from __future__ import annotations

import os
import shutil

from dagrun.errors import PermanentError
from dagrun.run.handler_types import StepContext
from dagrun.run.outcome import HandlerResult

from .scripts import NOTHING_TO_UNDO


def _venv_python(ctx: StepContext) -> str:
    return os.path.join(ctx.path(ctx.config["venv_path"]), "bin", "python")


def create_venv(ctx: StepContext) -> HandlerResult:
    path = ctx.path(ctx.config["venv_path"])
    python = ctx.config["python_version"]
    if shutil.which(python) is None and not os.path.isfile(python):
        raise PermanentError(f"{python} is not installed")
    existed = os.path.exists(os.path.join(path, "pyvenv.cfg"))
    command = [python, "-m", "venv"]
    if ctx.config.get("system_site_packages"):
        command.append("--system-site-packages")
    if not ctx.config.get("with_pip", True):
        command.append("--without-pip")
    result = ctx.run([*command, path])
    if result.ok and ctx.config.get("upgrade_pip") and ctx.config.get("with_pip", True):
        result = ctx.run([_venv_python(ctx), "-m", "pip", "install", "-q", "--upgrade", "pip"])
    version = ctx.run([_venv_python(ctx), "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"])
    result.data = {"venv_path": path, "python": _venv_python(ctx), "created": not existed,
                   "version": version.stdout.strip()}
    return result


def validate_venv(ctx: StepContext) -> HandlerResult:
    python = _venv_python(ctx)
    if not os.access(python, os.X_OK):
        return HandlerResult(ok=False, error=f"{python} does not exist")
    return ctx.run([python, "-c", "import sys; assert sys.prefix != sys.base_prefix"])


def remove_venv(ctx: StepContext) -> HandlerResult:
    if not ctx.result.get("created"):
        return HandlerResult(data=dict(NOTHING_TO_UNDO))
    shutil.rmtree(ctx.result["venv_path"], ignore_errors=True)
    return HandlerResult(data={"removed": ctx.result["venv_path"]})


def pip_install(ctx: StepContext) -> HandlerResult:
    python = _venv_python(ctx)
    if not os.access(python, os.X_OK):
        raise PermanentError(f"no venv at {ctx.path(ctx.config['venv_path'])}")
    # Every value is glued to its option (--opt=value) or comes after "--":
    # none can be read as an option of pip.
    command = [python, "-m", "pip", "install", "--disable-pip-version-check", "--no-input"]
    for link in ctx.config.get("find_links") or []:
        command.append(f"--find-links={ctx.path(link)}")
    if ctx.config.get("no_index"):
        command.append("--no-index")
    if ctx.config.get("index_url"):
        command.append(f"--index-url={ctx.config['index_url']}")
    requirements = ctx.config.get("requirements_file")
    packages = list(ctx.config.get("packages") or [])
    if requirements:
        path = ctx.path(requirements)
        if not os.path.isfile(path):
            raise PermanentError(f"requirements file {path} does not exist")
        command.append(f"--requirement={path}")
    if packages:
        command += ["--", *packages]
    result = ctx.run(command)
    result.data = {"requirements_file": ctx.path(requirements) if requirements else None, "packages": packages}
    return result


def validate_pip(ctx: StepContext) -> HandlerResult:
    return ctx.run([_venv_python(ctx), "-m", "pip", "check"])
