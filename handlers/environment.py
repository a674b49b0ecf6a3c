"""Python environments: create a venv, install requirements into it.

The venv's folder is inside the workspace home. Rollback removes exactly
what the step created: the whole folder if it made it, or only the entries
it added to a folder that existed (a pre-existing folder and its files stay).
pip never reads configuration the workspace controls (``PIP_CONFIG_FILE``
is ``/dev/null``), and every value reaches it glued to its option or after
``--``.
"""

from __future__ import annotations

import os

from dagrun.errors import PermanentError
from dagrun.run import paths
from dagrun.run.handler_types import StepContext
from dagrun.run.outcome import HandlerResult

from .scripts import NOTHING_TO_UNDO

PIP_ENV = {"PIP_CONFIG_FILE": "/dev/null", "PIP_NO_INPUT": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1",
           "PYTHONNOUSERSITE": "1"}


def _venv_python(ctx: StepContext) -> str:
    return os.path.join(ctx.path(ctx.config["venv_path"]), "bin", "python")


def create_venv(ctx: StepContext) -> HandlerResult:
    path = ctx.path(ctx.config["venv_path"])
    python = ctx.program(ctx.config["python_version"])
    existed = os.path.exists(os.path.join(path, "pyvenv.cfg"))
    folder_existed = os.path.isdir(path)
    if existed and not ctx.config.get("upgrade_pip"):  # already there: nothing to change
        version = ctx.run([_venv_python(ctx), "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"])
        if version.ok:
            return HandlerResult(data={"venv_path": path, "python": _venv_python(ctx), "created": False,
                                       "created_entries": None, "version": version.stdout.strip()}, changed=False)
    before = paths.entries(path, home=ctx.home)
    command = [python, "-m", "venv"]
    if ctx.config.get("system_site_packages"):
        command.append("--system-site-packages")
    if not ctx.config.get("with_pip", True):
        command.append("--without-pip")
    result = ctx.run([*command, "--", path], env=PIP_ENV)
    if result.exit_code == 127:
        raise PermanentError(f"{python} is not installed")
    if result.ok and ctx.config.get("upgrade_pip") and ctx.config.get("with_pip", True):
        result = ctx.run([_venv_python(ctx), "-m", "pip", "install", "-q", "--upgrade", "pip"], env=PIP_ENV)
    version = ctx.run([_venv_python(ctx), "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"])
    # What rollback may remove: the folder if this step made it, else only what it added.
    created = None if not folder_existed else sorted(paths.entries(path, home=ctx.home) - before)
    result.data = {"venv_path": path, "python": _venv_python(ctx), "created": not existed,
                   "created_entries": created, "version": version.stdout.strip()}
    result.changed = not existed or "Successfully installed" in result.stdout
    return result


def validate_venv(ctx: StepContext) -> HandlerResult:
    python = _venv_python(ctx)
    if not os.access(python, os.X_OK):
        return HandlerResult(ok=False, error=f"{python} does not exist")
    return ctx.run([python, "-c", "import sys; assert sys.prefix != sys.base_prefix"])


def remove_venv(ctx: StepContext) -> HandlerResult:
    if not ctx.result.get("created"):
        return HandlerResult(data=dict(NOTHING_TO_UNDO))
    removed = paths.remove_created(ctx.result["venv_path"], ctx.result.get("created_entries"), home=ctx.home)
    return HandlerResult(data={"removed": removed})


def pip_install(ctx: StepContext) -> HandlerResult:
    python = _venv_python(ctx)
    if not os.access(python, os.X_OK):
        raise PermanentError(f"no venv at {ctx.path(ctx.config['venv_path'])}")
    # Every value is glued to its option (--opt=value) or comes after "--":
    # none can be read as an option of pip.
    command = [python, "-m", "pip", "install", "--disable-pip-version-check", "--no-input"]
    for link in ctx.config.get("find_links") or []:
        command.append(f"--find-links={ctx.expand(link)}")
    if ctx.config.get("no_index"):
        command.append("--no-index")
    if ctx.config.get("index_url"):
        command.append(f"--index-url={ctx.config['index_url']}")
    requirements = ctx.config.get("requirements_file")
    packages = list(ctx.config.get("packages") or [])
    copy = None
    if requirements:
        path = ctx.expand(requirements)
        if not os.path.isfile(path):
            raise PermanentError(f"requirements file {path} does not exist")
        if ctx.privileged:  # root's pip reads our checked copy, never a path or an include
            path = copy = _checked_requirements(path)
        command.append(f"--requirement={path}")
    if packages:
        command += ["--", *packages]
    try:
        result = ctx.run(command, env=PIP_ENV)
    finally:
        if copy is not None:
            os.unlink(copy)
    result.data = {"requirements_file": ctx.expand(requirements) if requirements else None, "packages": packages}
    result.changed = "Successfully installed" in result.stdout  # pip says so only when it installed something
    return result


# What a requirements file read by root's pip may say besides requirement specifiers: options
# that read no local file, written out in full (pip also takes abbreviations and glued short
# options; those are refused rather than parsed).
_SAFE_OPTIONS = frozenset({"--index-url", "--extra-index-url", "--trusted-host", "--hash", "--pre",
                           "--prefer-binary", "--only-binary", "--no-binary", "--require-hashes", "--no-index"})
_REMOTE = ("https://", "http://", "git+https://")
_MAX_REQUIREMENTS = 1024 * 1024


def _checked_requirements(path: str) -> str:
    """A private copy of the requirements file at ``path`` for pip run as
    root: read without following a symlink, and refused when any line could
    make pip read a file or folder of this machine (``-r /etc/shadow``, in
    any spelling pip accepts; a local path or ``file:`` URL; an environment
    variable), which root must not read on a value's behalf (pip's error
    would show what it read)."""
    import tempfile
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise PermanentError(f"cannot read the requirements file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        data = fh.read(_MAX_REQUIREMENTS + 1)
    if len(data) > _MAX_REQUIREMENTS:
        raise PermanentError(f"the requirements file {path} is larger than 1 MB")
    text = data.decode("utf-8", errors="replace")
    # pip joins a line ending in a backslash with the next before reading it: so do we
    logical: list[tuple[int, str]] = []
    pending, first = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        if not pending:
            first = number
        if raw.endswith("\\"):
            pending += raw[:-1]
            continue
        logical.append((first, pending + raw))
        pending = ""
    if pending:
        logical.append((first, pending))
    for number, raw in logical:
        line = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if line and _reads_local(line):
            raise PermanentError(f"line {number} of the requirements file {path} could make pip read a file of "
                                 "this machine: as root, dagrun installs only named packages and http(s) URLs, "
                                 "with options that read no file (use find_links, or a workspace user)")
    fd, copy = tempfile.mkstemp(prefix="dagrun-requirements-", suffix=".txt")
    with os.fdopen(fd, "w") as out:
        out.write(text)
    return copy


def _reads_local(line: str) -> bool:
    """Could this (logical, comment-free) requirements line make pip open a
    local path? Conservative: what is not plainly safe is refused."""
    if "${" in line or "file:" in line.lower():
        return True
    if line.startswith("-"):
        name = line.split("=", 1)[0].split(None, 1)[0]
        return name not in _SAFE_OPTIONS
    if line.startswith((".", "/", "~")) or os.sep in line.split("@", 1)[0].split(";", 1)[0]:
        return True
    if "@" in line:  # a direct reference: name @ URL
        url = line.split("@", 1)[1].strip()
        return not url.startswith(_REMOTE)
    return False


def validate_pip(ctx: StepContext) -> HandlerResult:
    return ctx.run([_venv_python(ctx), "-m", "pip", "check"], env=PIP_ENV)
