"""The four handler types, as plain callables kept in a mapping.

An action names up to three handlers (execute, validate, rollback). Each is
turned into a :class:`Handler`, a callable taking a :class:`StepContext`, by
the builder of the action's ``action_type`` in :data:`BUILDERS`:

- ``shell``: a script file beside the definition, or inline script text.
  It is a Jinja template whose values reach bash as environment variables,
  never as script text (:mod:`dagrun.compile.shell_text`), run by bash in its
  own process group. The config is also exported as ``CONFIG_<KEY>``
  variables and as JSON in ``DAGRUN_CONFIG``.
- ``python_function``: ``module:function``, called with the context.
- ``template_copy``: a template file beside the definition, or inline text,
  rendered to ``config.target_path``; JSON/YAML targets can be deep-merged
  into what is there (``config.merge``).
- ``api_call``: ``"METHOD URL"`` (a template whose values are
  percent-encoded); the body is ``config.json`` or ``config.body``; a 2xx
  status is success.

A handler written ``python:module:function`` is a Python callable whatever
the action type (e.g. a Python rollback for a shell action).

Handlers are resolved by action, in the process that runs the attempt
(:func:`handlers_for`): a plan holds only data, so it can be pickled to
another process.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import pwd
import re
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Protocol

import yaml

from ..compile import configs, expressions
from ..compile import shell_text
from ..compile.shell_text import ShellScript, UnsafeContext
from ..errors import PermanentError
from . import paths
from .isolation import Isolation
from .outcome import HandlerResult
from .shell import CancelToken, run_command, run_script
from ..spec import ActionSpec
from ..util import deep_merge


# The environment of root's commands whose HOME is a workspace's home: Python's user site
# (~/.local/.../site-packages: a .pth file, usercustomize) and psql's ~/.psqlrc (\! runs a shell)
# are not read. (git's ~/.gitconfig is left to scripts, which may write it with `git config
# --global`; the git handler runs git without it.)
ROOT_IN_WORKSPACE_HOME = {"PYTHONNOUSERSITE": "1", "PSQLRC": "/dev/null"}


@dataclass
class StepContext:
    """Everything a handler may use for one attempt."""

    step_id: str
    action: ActionSpec
    config: dict[str, Any]  # interpolated
    workspace: Mapping[str, Any]
    variables: Mapping[str, Any]
    steps: Mapping[str, Any]  # results of referenced upstream steps
    env: Mapping[str, str]
    home: str | None
    attempt: int
    timeout: float | None
    cancel: CancelToken
    result: dict[str, Any] = field(default_factory=dict)  # execute's result, for validate / rollback
    sudo: tuple[str, ...] = ()  # prefix privileged commands with this (empty when root)
    isolation: Isolation = field(default_factory=Isolation)  # as whom / inside what commands run
    run_id: str | None = None
    report: Any = None  # report(pid, started): the run records each command's process group
    deadline: float | None = None  # time.monotonic() by which the attempt must be over
    adopt_users: tuple[str, ...] = ()  # accounts the operator lets any workspace use (create_linux_user adopts them)
    home_root: str | None = None  # the allowed folder of the workspace home (homes a step makes stay in such)

    def remaining(self) -> float | None:
        """Seconds left of the attempt's timeout: what a command may still take."""
        if self.deadline is None:
            return self.timeout
        return max(0.1, self.deadline - time.monotonic())

    def template_context(self) -> dict[str, Any]:
        return expressions.build_context(workspace=self.workspace, config=self.config, variables=self.variables,
                                         env=self.env, steps=self.steps, home=self.home)

    def path(self, text: str) -> str:
        """A path named by the config: ``~`` and relative paths are in the
        workspace home, and it must stay there (after symlinks) unless the
        action is ``requires_sudo``."""
        return paths.inside_home(text, self.home, anywhere=self.action.requires_sudo)

    @property
    def privileged(self) -> bool:
        """Do this step's commands run as root (not as a workspace user)?"""
        return os.geteuid() == 0 and self.isolation.user is None

    def expand(self, text: str) -> str:
        """A path the step only reads (a wheel folder, a requirements file):
        ``~`` and relative paths in the home. As root, a path outside the
        home must be one every user could read: a value never makes root
        read a file on its behalf (/etc/shadow, another tenant's folder)."""
        path = paths.expand(text, self.home)
        if self.privileged and not self._in_home(path) and not paths.readable_by_everyone(path):
            if paths.visibly_missing(path):
                raise PermanentError(f"{path} does not exist")
            raise PermanentError(f"{path} is outside the workspace home and not readable by everyone: "
                                 "dagrun, as root, does not read it on a value's behalf")
        return path

    def private_file(self, text: str) -> str:
        """A secret file the step reads (an ssh key): in the home, as root."""
        path = paths.expand(text, self.home)
        if self.privileged and not self._in_home(path):
            raise PermanentError(f"{path} is outside the workspace home: as root, dagrun reads private files "
                                 "only there")
        return path

    def program(self, name: str) -> str:
        """A program named by the config (a python): a bare name, or, as
        root, an absolute path only root could have put there."""
        if "/" in name and self.privileged:
            checked = paths.root_program(name)  # (what runs is what was checked: no link somebody may change)
            if checked is None:
                raise PermanentError(f"{name} is not a program only root could have installed (it, or a folder "
                                     "above it, belongs to or is writable by another user): dagrun, as root, "
                                     "does not run it")
            return checked
        return name

    def _in_home(self, path: str) -> bool:
        if not self.home:
            return False
        real_home, real = os.path.realpath(self.home), os.path.realpath(path)
        return real == real_home or real.startswith(real_home + os.sep)

    @property
    def owner(self) -> tuple[int, int] | None:
        """Who files a handler writes should belong to (the workspace user)."""
        user = self.isolation.user
        return (user.uid, user.gid) if user is not None and os.geteuid() == 0 else None

    def write(self, path: str, data: str | bytes, *, mode: int | None = None) -> bool:
        """Write a file inside the home, atomically and never through a
        symlink, owned by the workspace user; True if it did not exist."""
        payload = data.encode("utf-8") if isinstance(data, str) else data
        return paths.write_file(path, payload, home=self.home, mode=mode, owner=self.owner,
                                anywhere=self.action.requires_sudo)

    def read(self, path: str) -> str | None:
        """A file inside the home (None when missing), never through a symlink."""
        data = paths.read_file(path, home=None if self.action.requires_sudo else self.home)
        return None if data is None else data.decode("utf-8", errors="replace")

    @property
    def root_in_tenant_home(self) -> bool:
        """Does this step run as root in a workspace whose home its Linux
        user owns? Then nothing in the home is root's to trust: it is not
        the step's ``HOME`` (programs read their configuration from there:
        Python's user site, git, npm) nor, by default, its working directory."""
        return self.privileged and bool(self.home) and bool(self.workspace.get("linux_username"))

    def _trusts_nothing_of_the_home(self, program: bool) -> bool:
        """Root among a workspace user's files, or a program a shipped handler
        runs as root (``program``): it neither starts in the home nor takes
        it as ``HOME``."""
        return self.root_in_tenant_home or (program and self.privileged and _shipped(self.action))

    def process_home(self, program: bool = False) -> str | None:
        """``HOME`` of the step's commands: the workspace home, or root's own
        for a root step among a workspace user's files and for a program a
        shipped handler runs as root (apt's maintainer scripts, pip, git:
        none of them is the workspace's, and each reads its configuration,
        Python's user site included, from ``$HOME``)."""
        if self._trusts_nothing_of_the_home(program):
            return pwd.getpwuid(os.geteuid()).pw_dir or "/"
        return self.home

    def process_env(self, program: bool = False) -> dict[str, str]:
        env = self.isolation.environment(dict(self.env))
        home = self.process_home(program)
        if home:
            env["HOME"] = home
        if self.privileged and home and home == self.home:
            # Root with the workspace's files as HOME (a workspace without a Linux user): what values
            # put there (a clone, a file a value named) is not read as root's own code by the
            # programs that read it most (README: root trusts such a home for the rest).
            env.update(ROOT_IN_WORKSPACE_HOME)
        if self.home:
            env["DAGRUN_WORKSPACE_HOME"] = self.home
        env["DAGRUN_STEP_ID"] = self.step_id
        env["DAGRUN_WORKSPACE_ID"] = str(self.workspace.get("id"))
        env["DAGRUN_ATTEMPT"] = str(self.attempt)
        env["DAGRUN_CONFIG"] = json.dumps(self.config, default=str)
        env["DAGRUN_RESULT"] = json.dumps(self.result, default=str)
        for key, value in self.config.items():
            if isinstance(value, (str, int, float, bool)) and key.isidentifier():
                env[f"CONFIG_{key.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
        return env

    def run_shell(self, script: str | ShellScript, *, cwd: str | None = None,
                  env: Mapping[str, str] | None = None, name: str = "script") -> HandlerResult:
        """Run script text that is already final: a rendered :class:`ShellScript`
        (its values arrive as environment variables) or plain text. ``name``
        says which script in error messages."""
        values = script.values if isinstance(script, ShellScript) else {}
        text = script.text if isinstance(script, ShellScript) else script
        if env and "PATH" in env:
            env = self._checked_path(env)
        environment = {**self.process_env(), **(env or {})}
        evaluates = isinstance(script, ShellScript) and script.evaluates
        if env:  # variables holding values the lexer could not see when the template was compiled
            try:
                evaluates = shell_text.check_names(text, env) or evaluates
                for key in shell_text.LIBPQ_NAME_VARIABLES & set(env):
                    shell_text.check_libpq_name(key, env[key], f"{name}'s env: ")
            except (shell_text.UnsafeContext, shell_text.ShellValueError) as exc:
                raise PermanentError(f"{name}: {exc}") from None
        if evaluates:
            # Arithmetic evaluates the content of a variable a value names (v=DAGRUN_WORKSPACE_ID;
            # [[ "$v" -gt 1 ]]): none of the step's variables that hold values may hold what would run.
            # (A script field that is text, not a rendered ShellScript, is the author's: no value.)
            scripts = {f"CONFIG_{k.upper()}" for k in configs.shell_fields(self.action.config_schema)}
            for key, value in environment.items():
                if (key.startswith("CONFIG_") and key not in scripts or key in _VALUE_VARIABLES
                        or key in (env or {})) and ("$" in value or "`" in value):
                    raise PermanentError(f"{name}: ${key} holds $ or `, and the script evaluates text (arithmetic, "
                                         "[[ -eq ]], -v, read, namerefs, prompts), where bash could run it")
        with self.working_dir(cwd) as where:
            result = run_script(text, env={**environment, **values}, cwd=where,
                                timeout=self.remaining(), cancel=self.cancel, run_id=self.run_id,
                                isolation=self.isolation, on_start=self.report)
        return self._result(result, name)

    def run(self, argv: list[str], *, cwd: str | None = None, env: Mapping[str, str] | None = None,
            input: bytes | None = None) -> HandlerResult:
        """Run one program (no shell: arguments are never parsed as code)."""
        if env and "PATH" in env:
            env = self._checked_path(env)
        with self.working_dir(cwd, program=True) as where:
            result = run_command([str(a) for a in argv], env={**self.process_env(program=True), **(env or {})},
                                 cwd=where, timeout=self.remaining(), cancel=self.cancel, input=input,
                                 run_id=self.run_id, isolation=self.isolation, on_start=self.report)
        return self._result(result, shlex.join(str(a) for a in argv))

    def _checked_path(self, environment: Mapping[str, str]) -> Mapping[str, str]:
        """As root, commands are found only in folders only root could fill:
        a PATH given to the step (its env, perhaps from a value) never makes
        root run a program somebody else put there. Each folder is checked
        and given by its real path (a symlink somebody else may change later
        leads nowhere); an empty or relative one would be the working folder."""
        if not self.privileged:
            return environment
        real = []
        for folder in environment["PATH"].split(":"):
            resolved = os.path.realpath(folder) if os.path.isabs(folder) else None
            if resolved is None or not paths.root_only_folder(resolved):
                raise PermanentError(f"the step's PATH names {folder or 'the working folder'}, which is not a "
                                     "folder only root could fill (it, or a folder above it, belongs to or is "
                                     "writable by another user, or it is relative): dagrun, as root, does not "
                                     "look for commands there")
            real.append(resolved)
        return {**environment, "PATH": ":".join(real)}

    @contextlib.contextmanager
    def working_dir(self, cwd: str | None, program: bool = False) -> Iterator[str | None]:
        """Where the step's command starts, for as long as it starts: a
        folder the config names (checked, then opened and handed over by
        descriptor, so a folder swapped for a symlink meanwhile leads
        nowhere); else the home, except for a root step among a workspace
        user's files, and for a program a shipped handler runs as root
        (``program``: ``python -m venv`` there imports a ``logging.py`` a
        value named or a cloned repository holds), which start in ``/``. (An
        operator's or a user's handler's programs start in the home, as they
        always did: its author may count on it.)"""
        if cwd:
            with paths.working_folder(self.path(cwd), self.home, anywhere=self.action.requires_sudo) as where:
                yield where
        elif self._trusts_nothing_of_the_home(program):
            yield "/"
        else:
            yield self.home if self.home and os.path.isdir(self.home) else None

    def _result(self, result: Any, command: str) -> HandlerResult:
        error = None
        if result.timed_out:
            error = f"{command}: timed out after {self.timeout:g} s"
        elif result.cancelled:
            error = "cancelled"
        elif result.exit_code != 0:
            error = f"{command}: exit code {result.exit_code}" + output_tail(result.stdout, result.stderr)
        data = dict(result.outputs or {})
        # A script says whether it changed anything with changed=true|false in $DAGRUN_OUTPUT.
        changed = {"true": True, "false": False}.get(str(data.pop("changed", "")).strip().lower())
        return HandlerResult(ok=error is None, data=data, exit_code=result.exit_code,
                             stdout=result.stdout, stderr=result.stderr, error=error,
                             timed_out=result.timed_out, cancelled=result.cancelled, changed=changed)


# Variables of a step's environment that hold values (besides CONFIG_<KEY> and the step's own env).
_VALUE_VARIABLES = frozenset({"DAGRUN_WORKSPACE_ID", "DAGRUN_WORKSPACE_HOME", "HOME"})

TAIL_LINES = 5


def output_tail(stdout: str, stderr: str) -> str:
    """The last lines a failed command printed (stderr if it wrote any), for
    its error message: what a user needs to see without opening the logs."""
    lines = [line for line in (stderr.strip() or stdout.strip()).splitlines() if line.strip()][-TAIL_LINES:]
    if not lines:
        return ""
    return ": " + lines[0] if len(lines) == 1 else ", last output:\n" + "\n".join("  " + line for line in lines)


class Handler(Protocol):
    def __call__(self, ctx: StepContext) -> HandlerResult: ...


MAX_RESPONSE_BYTES = 16 * 1024 * 1024
_FILE_NAME = re.compile(r"^[\w./-]+\.(sh|bash|j2|jinja|tmpl|tpl|txt|json|ya?ml|conf|ini|toml|py)$")


def _text_or_file(action: ActionSpec, text: str) -> tuple[str, str | None]:
    """A handler value names a file beside the definition, or is the text
    itself. A value that looks like a file name must be one: a missing
    ``greet.sh`` is an error, not a one-line script that exits 127."""
    name = text.strip()
    if "\n" not in text and len(text) < 256 and name and not any(c.isspace() for c in name):
        if action.base_dir is not None:
            from ..compile.loader import read_beneath
            try:
                content = read_beneath(action.base_dir, name)
            except ValueError as exc:
                where = "is outside the folder of" if "outside" in str(exc) else "is refused: " + str(exc) + ", in"
                raise ValueError(f"handler file {name!r} {where} {action.source}") from None
            if content is not None:
                return content, str(action.base_dir / name)
        if _FILE_NAME.match(name):
            where = f"beside {action.source}" if action.base_dir is not None else "(the action was given as data)"
            raise ValueError(f"handler file {name!r} does not exist {where}")
    return text, None


def coerce_result(value: Any) -> HandlerResult:
    if isinstance(value, HandlerResult):
        return value
    if value is None or value is True:
        return HandlerResult()
    if value is False:
        return HandlerResult(ok=False, error="handler returned False")
    if isinstance(value, Mapping):
        return HandlerResult(data=dict(value))
    return HandlerResult(data={"value": value})


# -- builders -----------------------------------------------------------------

def import_callable(reference: str) -> Callable[..., Any]:
    module_name, sep, attr = reference.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{reference!r} is not of the form 'module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import module {module_name!r}: {exc}") from None
    target: Any = module
    for part in attr.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise ValueError(f"module {module_name!r} has no attribute {attr!r}")
    if not callable(target):
        raise ValueError(f"{reference!r} is not callable")
    return target


_REFERENCE = re.compile(r"\A[A-Za-z_][\w.]*:[A-Za-z_][\w.]*\Z")


def build_python(action: ActionSpec, text: str) -> Handler:
    """A callable handler. A user-defined action's module is somebody else's
    code: it is never imported in dagrun's process before its step runs
    (in its worker, sandboxed); here only its name is checked."""
    if action.library:
        function = import_callable(text)
    else:
        if not _REFERENCE.match(text):
            raise ValueError(f"{text!r} is not of the form 'module:function'")
        import importlib.util
        top = text.split(":")[0].split(".")[0]
        if importlib.util.find_spec(top) is None:  # finds the top-level module without running it
            raise ValueError(f"cannot import module {top!r}: no such module")
        function = None

    def handler(ctx: StepContext) -> HandlerResult:
        return coerce_result((function or import_callable(text))(ctx))

    handler.__name__ = text
    if function is not None and hasattr(function, "undoes"):  # (a library rollback that may undo nothing)
        handler.undoes = function.undoes  # type: ignore[attr-defined]
    handler.python = True  # type: ignore[attr-defined]
    handler.in_worker = True  # type: ignore[attr-defined]
    return handler


def build_shell(action: ActionSpec, text: str) -> Handler:
    script, origin = _text_or_file(action, text)
    expressions.parse_template(script, shell=True)

    name = os.path.basename(origin) if origin else f"{action.name}'s script"

    def handler(ctx: StepContext) -> HandlerResult:
        return ctx.run_shell(expressions.render_shell(script, ctx.template_context()), name=name)

    handler.__name__ = origin or "inline script"
    handler.template_source = script  # type: ignore[attr-defined]
    return handler


def build_template_copy(action: ActionSpec, text: str) -> Handler:
    source, origin = _text_or_file(action, text)
    expressions.parse_template(source)

    def handler(ctx: StepContext) -> HandlerResult:
        target_text = ctx.config.get("target_path")
        if not target_text:
            raise PermanentError("template_copy needs config.target_path")
        target = Path(ctx.path(str(target_text)))
        rendered = expressions.render_text(source, ctx.template_context())
        current = ctx.read(str(target))
        if current is not None and ctx.config.get("merge") and target.suffix in (".json", ".yaml", ".yml"):
            rendered = _merge_document(target, current, rendered)
        if current == rendered:  # already so: not rewritten, reported unchanged
            return HandlerResult(data={"target_path": str(target), "created": False}, changed=False)
        created = ctx.write(str(target), rendered)  # atomic: readers never see a half-written file
        return HandlerResult(data={"target_path": str(target), "created": created}, changed=True)

    handler.__name__ = origin or "inline template"
    handler.template_source = source  # type: ignore[attr-defined]
    handler.in_worker = True  # type: ignore[attr-defined]
    return handler


def _merge_document(target: Path, text: str, rendered: str) -> str:
    is_json = target.suffix == ".json"
    load = json.loads if is_json else yaml.safe_load
    try:
        current = load(text or "{}") or {}
    except (ValueError, yaml.YAMLError):  # the parser's message would quote the file: not repeated
        raise PermanentError(f"cannot merge into {target}: it is not valid {'JSON' if is_json else 'YAML'}")
    new = load(rendered) or {}
    if not isinstance(current, dict) or not isinstance(new, dict):
        raise PermanentError(f"cannot merge into {target}: both documents must be mappings")
    merged = deep_merge(current, new)
    return json.dumps(merged, indent=2) + "\n" if is_json else yaml.safe_dump(merged, sort_keys=False)


def build_api_call(action: ActionSpec, text: str) -> Handler:
    expressions.parse_template(text)
    handler_source = text

    method_text, _, url_text = text.strip().partition(" ")
    if not url_text:
        method_text, url_text = "GET", method_text

    def handler(ctx: StepContext) -> HandlerResult:
        import urllib.error  # with http.client and ssl, 14 ms that compiling and other handlers never need
        import urllib.request
        context = ctx.template_context()
        method = method_text.strip()
        try:
            url = expressions.render_url(url_text, context)
        except ValueError as exc:
            raise PermanentError(str(exc)) from None
        body = None
        headers = {str(k): str(v) for k, v in (ctx.config.get("headers") or {}).items()}
        if ctx.config.get("json") is not None:
            body = json.dumps(ctx.config["json"]).encode()
            headers.setdefault("Content-Type", "application/json")
        elif ctx.config.get("body") is not None:
            body = str(ctx.config["body"]).encode()
        request = urllib.request.Request(url, data=body, method=method.upper(), headers=headers)
        if not url.startswith(("http://", "https://")):
            raise PermanentError(f"{url!r}: api_call speaks http and https only")
        try:
            with urllib.request.urlopen(request, timeout=ctx.timeout) as response:
                status, payload = response.status or 0, response.read(MAX_RESPONSE_BYTES + 1)
            if len(payload) > MAX_RESPONSE_BYTES:
                return HandlerResult(ok=False, error=f"{method.upper()} {url}: the response is larger than "
                                                     f"{MAX_RESPONSE_BYTES} bytes")
        except urllib.error.HTTPError as exc:
            status, payload = exc.code, exc.read()
        except (urllib.error.URLError, OSError) as exc:
            return HandlerResult(ok=False, error=f"{method.upper()} {url} failed: {getattr(exc, 'reason', exc)}")
        text_body = payload.decode("utf-8", errors="replace")
        try:
            parsed: Any = json.loads(text_body)
        except ValueError:
            parsed = None
        data = {"status": status, "body": parsed if parsed is not None else text_body}
        ok = 200 <= status < 300
        return HandlerResult(ok=ok, data=data, stdout=text_body,
                             error=None if ok else f"{method.upper()} {url} returned HTTP {status}")

    handler.__name__ = text
    handler.template_source = handler_source  # type: ignore[attr-defined]
    handler.in_worker = True  # type: ignore[attr-defined]
    return handler


BUILDERS: dict[str, Callable[[ActionSpec, str], Handler]] = {
    "shell": build_shell,
    "python_function": build_python,
    "template_copy": build_template_copy,
    "api_call": build_api_call,
}


@dataclass(frozen=True, slots=True)
class ActionHandlers:
    execute: Handler
    validate: Handler | None
    rollback: Handler | None


def build_handler(action: ActionSpec, text: str) -> Handler:
    if text.startswith("python:"):
        return build_python(action, text[len("python:"):])
    return BUILDERS[action.action_type](action, text)


def build_handlers(action: ActionSpec) -> ActionHandlers:
    """Resolve an action's handlers; raises ValueError / TemplateSyntaxError /
    UnsafeContext with the reason when one cannot be built."""
    return ActionHandlers(
        execute=build_handler(action, action.execution_handler),
        validate=build_handler(action, action.validation_handler) if action.validation_handler else None,
        rollback=build_handler(action, action.rollback_handler) if action.rollback_handler else None,
    )


def _key(action: ActionSpec) -> tuple:
    return (action.name, action.action_type, action.execution_handler, action.validation_handler,
            action.rollback_handler, action.source, str(action.base_dir))


_HANDLERS: dict[tuple, ActionHandlers] = {}


_BY_ACTION: dict[int, tuple[ActionSpec, ActionHandlers]] = {}  # the same spec object: no key to build


def handlers_for(action: ActionSpec) -> ActionHandlers:
    """The action's handlers, built once per process (cached by definition)."""
    seen = _BY_ACTION.get(id(action))
    if seen is not None and seen[0] is action:
        return seen[1]
    key = _key(action)
    handlers = _HANDLERS.get(key)
    if handlers is None:
        handlers = _HANDLERS[key] = build_handlers(action)
    if len(_BY_ACTION) > 4096:  # a service compiling ever-new action definitions: stay bounded
        _BY_ACTION.clear()
    _BY_ACTION[id(action)] = (action, handlers)  # holds the spec, so its id stays its own
    return handlers


def handler_problems(action: ActionSpec) -> list[tuple[str, str]]:
    """``(field, reason)`` for each handler of the action that cannot be built."""
    found = []
    for field in ("execution_handler", "validation_handler", "rollback_handler"):
        text = getattr(action, field)
        if not text:
            continue
        try:
            build_handler(action, text)
        except Exception as exc:  # ValueError, TemplateSyntaxError, UnsafeContext, a bad file...
            message = getattr(exc, "message", None) if not isinstance(exc, UnsafeContext) else None
            found.append((field, str(message or exc)))
    if not found:
        handlers_for(action)  # cache what was just checked
    return found


def handler_templates(action: ActionSpec) -> list[tuple[str, str]]:
    """``(field, template source)`` of the action's templated handlers."""
    try:
        handlers = handlers_for(action)
    except Exception:  # reported by handler_problems
        return []
    named = (("execution_handler", handlers.execute), ("validation_handler", handlers.validate),
             ("rollback_handler", handlers.rollback))
    return [(name, h.template_source) for name, h in named if h is not None and hasattr(h, "template_source")]


def _shipped(action: Any) -> bool:
    """Is ``action`` one of dagrun's own (not an operator's trusted one)?"""
    from ..compile.loader import standard_library
    return standard_library().get(action.name) is action
