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
import re

from dagrun.errors import PermanentError
from dagrun.run import paths
from dagrun.run.handler_types import StepContext
from dagrun.run.outcome import HandlerResult

from .scripts import NOTHING_TO_UNDO

PIP_ENV = {"PIP_CONFIG_FILE": "/dev/null", "PIP_NO_INPUT": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1",
           "PYTHONNOUSERSITE": "1"}


# What a venv is made of (and what its interpreter runs or reads: bin/python, lib*/.../site-packages).
VENV_ENTRIES = frozenset({"bin", "lib", "lib64", "include", "local", "share", "Lib", "Scripts"})


def _venv_python(ctx: StepContext) -> str:
    return os.path.join(ctx.path(ctx.config["venv_path"]), "bin", "python")


def not_among_a_users_files(ctx: StepContext) -> None:
    """As root in a workspace user's home, the venv actions do nothing: the
    home's owner could swap the venv (its interpreter link, its
    site-packages) or a folder of it for their own between any check and
    its use. Called first, before anything runs or is made."""
    if ctx.root_in_tenant_home:
        raise PermanentError(f"{ctx.config.get('venv_path')} is in a workspace user's home: dagrun, as root, "
                             "runs and makes nothing of it (run the step as the workspace user)")


def trusted_python(ctx: StepContext) -> str:
    """The venv's python, to run. As root, only a link to an interpreter
    only root could have installed, outside the home: a folder that looks
    like a venv may have come from a cloned repository (a value's URL)."""
    python = _venv_python(ctx)
    not_among_a_users_files(ctx)
    if ctx.privileged:
        real = os.path.realpath(python)
        home = os.path.realpath(ctx.home) if ctx.home else None
        if (home and (real == home or real.startswith(home + os.sep))) or not paths.root_owned_program(real):
            raise PermanentError(f"{python} leads to {real}, not an interpreter only root could have installed "
                                 "outside the workspace home: dagrun, as root, does not run it")
    return python


def create_venv(ctx: StepContext) -> HandlerResult:
    not_among_a_users_files(ctx)
    path = ctx.path(ctx.config["venv_path"])
    python = ctx.program(ctx.config["python_version"])
    existed = os.path.exists(os.path.join(path, "pyvenv.cfg"))
    folder_existed = os.path.isdir(path)
    if existed and not ctx.config.get("upgrade_pip"):  # already there: nothing to change
        version = _existing_version(ctx, path)
        if version is not None:
            return HandlerResult(data={"venv_path": path, "python": _venv_python(ctx), "created": False,
                                       "created_entries": None, "version": version}, changed=False)
    # (as root, a folder that a symlink hides is not taken for an empty one)
    before = paths.entries(path, home=ctx.home, strict=ctx.privileged and not existed)
    clash = sorted(before & VENV_ENTRIES)
    if ctx.privileged and not existed and clash:
        # venv keeps what is there, and the new interpreter (ensurepip, the version below) would run
        # a bin/python or read a .pth file among it: code, from a cloned repository or a value's file.
        raise PermanentError(f"{path} is not a venv but holds {', '.join(clash)}: dagrun, as root, does not "
                             "make a venv over a venv's files it did not make (give a new folder)")
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


def _existing_version(ctx: StepContext, path: str) -> str | None:
    """The Python version of the venv at ``path``, if it is one. As root, read
    from its pyvenv.cfg, never by running it: its interpreter reads the
    venv's site-packages (a .pth file there is code), and the folder may
    have come from a cloned repository."""
    if ctx.privileged:
        trusted_python(ctx)
        data = paths.read_file(os.path.join(path, "pyvenv.cfg"), home=ctx.home)
        for line in (data or b"").decode("utf-8", errors="replace").splitlines():
            key, _, value = line.partition("=")
            if key.strip() in ("version", "version_info") and re.fullmatch(r"[0-9]+(\.[0-9]+)*\S*", value.strip()):
                return value.strip()
        return None
    version = ctx.run([_venv_python(ctx), "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"])
    return version.stdout.strip() if version.ok else None


def validate_venv(ctx: StepContext) -> HandlerResult:
    not_among_a_users_files(ctx)
    python = _venv_python(ctx)
    if not os.access(python, os.X_OK):
        return HandlerResult(ok=False, error=f"{python} does not exist")
    if ctx.privileged:  # (not run as root: see _existing_version)
        path = ctx.path(ctx.config["venv_path"])
        return HandlerResult() if _existing_version(ctx, path) else \
            HandlerResult(ok=False, error=f"{path} is not a venv (no version in its pyvenv.cfg)")
    return ctx.run([python, "-c", "import sys; assert sys.prefix != sys.base_prefix"])


def remove_venv(ctx: StepContext) -> HandlerResult:
    if not ctx.result.get("created"):
        return HandlerResult(data=dict(NOTHING_TO_UNDO))
    removed = paths.remove_created(ctx.result["venv_path"], ctx.result.get("created_entries"), home=ctx.home)
    return HandlerResult(data={"removed": removed})


def pip_install(ctx: StepContext) -> HandlerResult:
    not_among_a_users_files(ctx)
    python = _venv_python(ctx)
    if not os.access(python, os.X_OK):
        raise PermanentError(f"no venv at {ctx.path(ctx.config['venv_path'])}")
    python = trusted_python(ctx)
    env = dict(PIP_ENV)
    # Every value is glued to its option (--opt=value) or comes after "--":
    # none can be read as an option of pip.
    command = [python, "-m", "pip", "install", "--disable-pip-version-check", "--no-input"]
    for link in ctx.config.get("find_links") or []:
        command.append(f"--find-links={_roots_own(ctx, ctx.expand(link), 'find_links folder')}")
    if ctx.config.get("no_index"):
        command.append("--no-index")
    if ctx.config.get("index_url"):  # through the environment: a token in it never shows in `ps`
        env["PIP_INDEX_URL"] = ctx.config["index_url"]
    requirements = ctx.config.get("requirements_file")
    packages = list(ctx.config.get("packages") or [])
    copy = None
    if requirements:
        path = ctx.expand(requirements)
        if not os.path.isfile(path):
            raise PermanentError(f"requirements file {path} does not exist")
        if ctx.privileged:  # root's pip reads our checked copy, never a path or an include
            path = copy = _checked_requirements(_roots_own(ctx, path, "requirements file"))
        command.append(f"--requirement={path}")
    if packages:
        if ctx.privileged:  # as a requirements file's lines: no local path or archive reaches root's pip
            for package in packages:
                if not _REQUIREMENT.match(package) or _local_archive(package):
                    raise PermanentError(f"package {package[:80]!r} is not a requirement dagrun lets root's pip "
                                         "install (a name with versions, extras, markers, or an http(s) URL)")
        command += ["--", *packages]
    try:
        result = ctx.run(command, env=env)
    finally:
        if copy is not None:
            os.unlink(copy)
    result.data = {"requirements_file": ctx.expand(requirements) if requirements else None, "packages": packages}
    result.changed = "Successfully installed" in result.stdout  # pip says so only when it installed something
    return result


def _roots_own(ctx: StepContext, path: str, what: str) -> str:
    """As root, what pip installs from a file or folder is root's code: never
    one in the workspace home (its content is the workspace's: a clone of a
    URL a value chose, a file a value wrote), nor one another user could
    have written."""
    if not ctx.privileged:
        return path
    real, home = os.path.realpath(path), os.path.realpath(ctx.home) if ctx.home else None
    if home and (real == home or real.startswith(home + os.sep)):
        raise PermanentError(f"{what} {path} is in the workspace home: as root, dagrun installs nothing a "
                             "workspace's files name (a repository or a file a value chose may be there); give "
                             "the workspace a linux_username, or name the packages in the template")
    if not paths.root_only_folder(real):
        raise PermanentError(f"{what} {path} could have been written by a user other than root: as root, "
                             "dagrun installs only from files and folders only root could have written")
    return real  # what was checked is what pip reads: a symlink on the way (another user's) is not read again


_MAX_REQUIREMENTS = 1024 * 1024
_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
_VERSION = r"\s*(?:===|==|!=|<=|>=|~=|<|>)\s*[A-Za-z0-9.*+!_-]+\s*"
_MARKER = r"(?:\s*;\s*[A-Za-z0-9_.'\" <>=!~(),-]*)?"
_HASHES = r"(?:\s+--hash=[a-z0-9]+:[A-Fa-f0-9]+)*"
_URL = r"https?://[A-Za-z0-9._~:/?#\[\]@!$&'()*+,;=%-]+"
_REQUIREMENT = re.compile(
    rf"\A{_NAME}(?:\[\s*{_NAME}(?:\s*,\s*{_NAME})*\s*\])?"
    rf"(?:(?:{_VERSION}(?:,{_VERSION})*)|\s*@\s*(?:git\+)?{_URL})?{_MARKER}{_HASHES}\Z")
_OPTION = re.compile(
    rf"\A(?:(?:--index-url|--extra-index-url|-i)(?:=|\s+){_URL}"
    rf"|--trusted-host(?:=|\s+)[A-Za-z0-9.-]+(?::[0-9]+)?"
    rf"|--(?:only|no)-binary(?:=|\s+)[A-Za-z0-9_.,:-]+"
    rf"|--pre|--prefer-binary|--require-hashes|--no-index)\Z")
_COMMENT = re.compile(r"(^|\s+)#.*$")
# A "name" pip takes for a local archive (evil-1.0.tar.gz, x.whl), resolved against its working directory.
_ARCHIVE = re.compile(r"\.(?:whl|zip|tar|tgz|tbz2?|txz|tlz|tar\.(?:gz|bz2|xz|lz|lzma|zst))\s*\Z", re.I)


def _checked_requirements(path: str) -> str:
    """For pip run as root: the requirements file at ``path`` (read without
    following a symlink) rewritten by dagrun, with only what it checked:
    package names with versions, extras, markers and hashes, http(s)
    direct URLs, and a few options whose value is an http(s) URL or a name.
    pip never sees the original text, so nothing in it (an include in any
    spelling, a continuation, a declared encoding, a local path or index)
    can make root's pip open a file of this machine."""
    import tempfile
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise PermanentError(f"cannot read the requirements file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        data = fh.read(_MAX_REQUIREMENTS + 1)
    if len(data) > _MAX_REQUIREMENTS:
        raise PermanentError(f"the requirements file {path} is larger than 1 MB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise PermanentError(f"the requirements file {path} is not UTF-8") from None
    kept: list[str] = []
    pending, first = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        if not pending:
            first = number
        if raw.endswith("\\") and not _COMMENT.search(raw):  # pip's rule: a comment line is never continued
            pending += raw[:-1]
            continue
        line, pending = _COMMENT.sub("", pending + raw).strip(), ""
        if not line:
            continue
        if not (_REQUIREMENT.match(line) and not _local_archive(line) or _OPTION.match(line)):
            raise PermanentError(f"line {first} of the requirements file {path} is not a package, an http(s) URL or "
                                 "an option dagrun lets root's pip read (-r, -c, -e, --find-links, local paths and "
                                 "files are refused when dagrun runs as root; use find_links, or a workspace user)")
        kept.append(line)
    if pending:
        raise PermanentError(f"the requirements file {path} ends in a line continued with a backslash")
    fd, copy = tempfile.mkstemp(prefix="dagrun-requirements-", suffix=".txt")
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write("".join(line + "\n" for line in kept))
    return copy


def _local_archive(requirement: str) -> bool:
    """Does the requirement's name read, to pip, as a local archive file?"""
    return bool(_ARCHIVE.search(re.split(r"[\s\[;@<>=!~]", requirement, maxsplit=1)[0]))


def validate_pip(ctx: StepContext) -> HandlerResult:
    not_among_a_users_files(ctx)
    if not os.path.exists(_venv_python(ctx)):  # (--check before the step that makes the venv)
        return HandlerResult(ok=False, error=f"no venv at {ctx.path(ctx.config['venv_path'])}")
    return ctx.run([trusted_python(ctx), "-m", "pip", "check"], env=PIP_ENV)
