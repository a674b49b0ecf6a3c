"""Compiled plans kept for the next run of the same template.

A provisioning service runs one template for workspace after workspace, and
compiling it again each time costs more than running its short steps. A
:class:`~dagrun.spec.Plan` is immutable (fleets already share one between
runs), so one compile serves every call whose inputs are the same:

- the template: a document given as data, or a template name (found among
  the given documents or the shipped seed templates);
- the documents it may extend, the variables, ``env_passthrough``, and the
  action definitions (given as data, or as files and folders);
- the names (not the values) of the workspace's fields and of the process
  environment: compile checks references against them;
- the files compile may read: the shipped seed templates folder (bases a
  template extends, files a template copies) and the folders of action
  definitions given as paths, by each entry's inode, size, mtime and ctime
  (a write always changes the ctime, even one that keeps the mtime).

Inputs are compared by a digest of their exact serialization with
:mod:`marshal`, which takes plain data only: anything else (a template
file path, an ``ActionSpec``, a value of another type) is simply not
cached. A plan is compiled from a copy of exactly what was keyed (so it
never shares an object with the caller's document), and kept only when the
inputs read again after the compile still give the same key. Only
successful compiles are kept, within :data:`MAX_PLANS` plans,
:data:`MAX_STEPS` steps and :data:`MAX_BYTES` bytes of serialized inputs
(least recently used first out).
"""

from __future__ import annotations

import hashlib
import marshal
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Mapping

from ..spec import Plan

MAX_PLANS = 32
MAX_STEPS = 100_000
MAX_BYTES = 32 * 1024 * 1024  # of serialized inputs, a fair measure of what a plan holds
MAX_ENTRY_BYTES = 8 * 1024 * 1024
MAX_FOLDER_ENTRIES = 2_000  # a folder of action definitions bigger than this is read each time
_FORMAT = 2  # bump when what a plan holds changes for the same inputs

# compile(template, templates, variables, actions, trusted_actions) -> Plan
Compile = Callable[[Any, list, "Mapping[str, Any] | None", "list | None", "list | None"], Plan]

_plans: "OrderedDict[bytes, tuple[Plan, int]]" = OrderedDict()  # digest -> (plan, bytes of its inputs)
_lock = threading.Lock()
_steps = 0
_bytes = 0


class _NotKeyable(Exception):
    pass


def compiled(compile_: Compile, template: Any, *, templates: list, variables: Mapping[str, Any] | None,
             workspace: Mapping[str, Any] | None, env_passthrough: tuple[str, ...], actions: list | None,
             trusted_actions: list | None) -> Plan:
    """The plan of these inputs: kept from an earlier call, or compiled now."""
    def serialized() -> bytes | None:
        try:
            return marshal.dumps(_inputs(template, templates, variables, workspace, env_passthrough, actions,
                                         trusted_actions), 2)  # version 2: no refcount-dependent back-references
        except (_NotKeyable, ValueError, TypeError):  # not plain data, or files that cannot be keyed
            return None

    data = serialized()
    if data is None or len(data) > MAX_ENTRY_BYTES:
        return compile_(template, templates, variables, actions, trusted_actions)
    digest = hashlib.blake2b(data, digest_size=32).digest()
    with _lock:
        entry = _plans.get(digest)
        if entry is not None:
            _plans.move_to_end(digest)
            return entry[0]
    # A copy of exactly what was keyed: the plan shares no object with the caller's arguments.
    _, source, docs, vars_, _, env_names, _, acts, trusted, seeds = marshal.loads(data)
    plan = compile_(source[1] if isinstance(source, tuple) else source, docs, vars_, _unkeyed(acts),
                    _unkeyed(trusted))
    # Kept only if nothing it was compiled from changed meanwhile: what is read from outside the
    # arguments (environment variable names, files) is read again; the arguments were copied.
    # Nor is a plan holding secrets: they stay in memory no longer than their run (its inputs' copy,
    # marshalled above, is dropped with this call).
    if not _holds_secrets(plan) and (env_names, acts, trusted, seeds) == _outside(workspace, actions,
                                                                                 trusted_actions):
        _keep(digest, plan, len(data))
    return plan


def _holds_secrets(plan: Plan) -> bool:
    """Secrets written in the template, or variables a secret field reads
    (given, or defaults written in the template; a service's form sends a
    password as a variable), or reads through another config field."""
    from .configs import secret_field_texts
    from .expressions import references
    return bool(plan.secret_literals) or any(ref.root in ("vars", "config") for _, text in secret_field_texts(plan)
                                             for ref in references(text))


def _keep(digest: bytes, plan: Plan, size: int) -> None:
    global _steps, _bytes
    steps = len(plan.order)
    if steps > MAX_STEPS:
        return
    with _lock:
        if digest in _plans:  # two first calls compiled together: one is kept
            return
        _plans[digest] = (plan, size)
        _steps += steps
        _bytes += size
        while len(_plans) > MAX_PLANS or _steps > MAX_STEPS or _bytes > MAX_BYTES:
            _, (dropped, dropped_size) = _plans.popitem(last=False)
            _steps -= len(dropped.order)
            _bytes -= dropped_size


def clear() -> None:
    """Forget every kept plan."""
    global _steps, _bytes
    with _lock:
        _plans.clear()
        _steps = _bytes = 0


def _inputs(template: Any, templates: list, variables: Mapping[str, Any] | None,
            workspace: Mapping[str, Any] | None, env_passthrough: tuple[str, ...], actions: list | None,
            trusted_actions: list | None) -> tuple:
    if isinstance(template, Mapping):
        source: Any = template
    elif isinstance(template, str) and not _names_a_file(template):
        source = ("name", template)
    else:
        raise _NotKeyable
    env_names, acts, trusted, seeds = _outside(workspace, actions, trusted_actions)
    return (_FORMAT, source, templates, variables or {},
            None if workspace is None else sorted((type(k).__name__, str(k)) for k in workspace),
            env_names, list(env_passthrough), acts, trusted, seeds)


def _outside(workspace: Mapping[str, Any] | None, actions: list | None, trusted_actions: list | None) -> tuple:
    """The inputs read from outside the arguments: the environment's
    variable names (with a workspace), and the files of action folders and
    of the shipped seed templates (as marshal would give them back)."""
    from .loader import package_dir
    return (None if workspace is None else sorted(os.environ), _actions(actions), _actions(trusted_actions),
            _folder_signature(package_dir("seeds") / "templates"))


def _actions(items: list | None) -> list | None:
    """Action definitions as keyed: data as it is, a path by what it holds."""
    if items is None:
        return None
    keyed: list[Any] = []
    for item in items:
        if isinstance(item, Mapping):
            keyed.append(item)
        elif isinstance(item, (str, os.PathLike)):
            given = os.path.abspath(item)
            # A definition file's handler files are read from beside it, as given (beside a symlink,
            # not its target): that whole folder is keyed. It is compiled from the path as given.
            folder = given if os.path.isdir(given) else os.path.dirname(given)
            keyed.append(("path", os.fspath(item), given, os.path.realpath(given),
                          _folder_signature(Path(os.path.realpath(folder)))))
        else:
            raise _NotKeyable  # an ActionSpec, an object of the caller's
    return keyed


def _unkeyed(items: list | None) -> list | None:
    """The action definitions to compile from their keyed form (a path, as given, is read again)."""
    if items is None:
        return None
    return [item[1] if isinstance(item, tuple) else item for item in items]


def _folder_signature(folder: Path) -> list[tuple[Any, ...]]:
    """Every entry below ``folder``: name, inode, size, mtime and ctime (None
    for an entry that cannot be read, such as a dangling symlink)."""
    found: list[tuple[Any, ...]] = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files) + dirs:
            path = os.path.join(root, name)
            try:
                info = os.stat(path)
                found.append((path, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns))
            except OSError:
                found.append((path, None))
            if len(found) > MAX_FOLDER_ENTRIES:
                raise _NotKeyable
    return found


def _names_a_file(ref: str) -> bool:
    """Does the loader read ``ref`` as a file path? (As ``TemplateSource.open`` decides.)"""
    path = Path(ref)
    return path.suffix in (".yaml", ".yml", ".json") or path.exists()
