"""Compiled plans kept for the next run of the same template.

A provisioning service runs one template for workspace after workspace, and
compiling it again each time costs more than running its short steps. A
:class:`~dagrun.spec.Plan` is immutable (fleets already share one between
runs), so one compile serves every call whose inputs are the same:

- the template: a document given as data, or a template name (found among
  the given documents or the shipped seed templates, whose files' sizes and
  modification times are part of the key, so an edited seed compiles again);
- the documents it may extend, the variables, ``env_passthrough``, and the
  action definitions given as data;
- the names (not the values) of the workspace's fields and of the process
  environment: compile checks references against them.

Inputs are compared by a digest of their exact serialization with
:mod:`marshal`, which takes plain data only: anything else (a template file
path, an action definition file, an ``ActionSpec``, a value of another
type) is simply not cached. Only successful compiles are kept, at most
:data:`MAX_PLANS` plans and :data:`MAX_STEPS` steps in all (least recently
used first out).
"""

from __future__ import annotations

import hashlib
import marshal
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from ..spec import Plan

MAX_PLANS = 32
MAX_STEPS = 100_000
_FORMAT = 1  # bump when what a plan holds changes for the same inputs

_plans: "OrderedDict[bytes, Plan]" = OrderedDict()
_lock = threading.Lock()
_steps = 0


def key(template: Any, *, templates: Iterable[Any], variables: Mapping[str, Any] | None,
        workspace: Mapping[str, Any] | None, env_passthrough: Iterable[str], actions: Iterable[Any] | None,
        trusted_actions: Iterable[Any] | None) -> bytes | None:
    """The cache key of a compile, or None when its inputs cannot be keyed."""
    if isinstance(template, Mapping):
        source: Any = template
    elif isinstance(template, str) and not _names_a_file(template):
        source = ("name", template, _seeds_signature())
    else:
        return None
    inputs = (_FORMAT, source, list(templates), variables or {},
              None if workspace is None else sorted((type(k).__name__, str(k)) for k in workspace),
              None if workspace is None else sorted(os.environ), list(env_passthrough),
              list(actions or ()), list(trusted_actions or ()))
    try:
        data = marshal.dumps(inputs, 2)  # version 2: no back-references, whose use depends on refcounts
    except (ValueError, TypeError):  # not plain data: a path, an ActionSpec, an object of the caller's
        return None
    return hashlib.blake2b(data, digest_size=32).digest()


def cached(key_: bytes | None, compile_: Callable[[], Plan]) -> Plan:
    """The plan compiled for ``key_`` (compiled now if it is not kept)."""
    global _steps
    if key_ is None:
        return compile_()
    with _lock:
        plan = _plans.get(key_)
        if plan is not None:
            _plans.move_to_end(key_)
            return plan
    plan = compile_()  # outside the lock: two first calls may both compile, and keep one
    size = len(plan.order)
    if size > MAX_STEPS:
        return plan
    with _lock:
        if key_ not in _plans:
            _plans[key_] = plan
            _steps += size
            while len(_plans) > MAX_PLANS or _steps > MAX_STEPS:
                _, dropped = _plans.popitem(last=False)
                _steps -= len(dropped.order)
    return plan


def clear() -> None:
    """Forget every kept plan."""
    global _steps
    with _lock:
        _plans.clear()
        _steps = 0


def _names_a_file(ref: str) -> bool:
    """Does the loader read ``ref`` as a file path? (As ``TemplateSource.open`` decides.)"""
    path = Path(ref)
    return path.suffix in (".yaml", ".yml", ".json") or path.exists()


def _seeds_signature() -> list[tuple[str, int, int]]:
    from .loader import package_dir
    found = []
    for entry in os.scandir(package_dir("seeds") / "templates"):
        stat = entry.stat(follow_symlinks=True)
        found.append((entry.name, stat.st_mtime_ns, stat.st_size))
    return sorted(found)
