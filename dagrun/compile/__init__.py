"""Template documents -> :class:`~dagrun.spec.Plan`.

``compile_template`` is the whole pipeline: read the document
(:mod:`.loader`), merge it over its bases (:mod:`.inherit`), bind steps to
actions and build the graph (:mod:`.graph`, with :mod:`.configs` and
:mod:`.expressions`). Every problem of every stage is reported at once, each
naming the template, step and field; nothing runs unless all pass.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from ..errors import InputError, TemplateError
from ..spec import ActionSpec, Plan
from . import cache
from .graph import Compiler
from .inherit import resolve
from .loader import TemplateSource, build_library, check_shape


def compile_template(template: Any, *, actions: Iterable[Any] | None = None,
                     variables: Mapping[str, Any] | None = None, workspace: Mapping[str, Any] | None = None,
                     templates: Iterable[Mapping[str, Any]] = (),
                     library: Mapping[str, ActionSpec] | None = None,
                     env_passthrough: Iterable[str] = (), trusted_actions: Iterable[Any] | None = None,
                     keep: bool = True) -> Plan:
    """Compile ``template`` (a path, a seed template name, or a dict).

    ``actions`` extends or overrides the standard action library; ``templates``
    are extra documents a template may extend by name. When ``workspace`` (a
    normalized mapping) is given, references to its fields and to ``env`` are
    checked too. ``env_passthrough`` adds to the template's own
    ``global_config.env_passthrough``. ``trusted_actions`` are the
    operator's own actions: trusted like the standard library (they may be
    ``requires_sudo`` and run unsandboxed).

    A successful compile of the same inputs is reused (:mod:`.cache`): a
    plan is immutable. ``keep=False`` neither reuses nor keeps one (the
    variables hold secrets: they stay in memory no longer than their run).
    """
    templates, env_passthrough = list(templates), tuple(env_passthrough)
    # The caller's data is bounded as documents are (depth, size): one clear error, never a RecursionError.
    if variables:
        check_shape(variables, "variables")
    for document in templates:
        check_shape(document, str(document.get("name", "<dict>")) if isinstance(document, Mapping) else "templates")
    actions = None if actions is None else list(actions)  # read twice: for the key, and to build the library
    trusted_actions = None if trusted_actions is None else list(trusted_actions)

    def compile_(template: Any, templates: list, variables: Mapping[str, Any] | None, actions: list | None,
                 trusted: list | None) -> Plan:
        return _compile(template, library if library is not None else build_library(actions, trusted), variables,
                        workspace, templates, env_passthrough)

    if library is not None or not keep:  # the caller's own library object, or secrets: not kept
        return compile_(template, templates, variables, actions, trusted_actions)
    return cache.compiled(compile_, template, templates=templates, variables=variables, workspace=workspace,
                          env_passthrough=env_passthrough, actions=actions, trusted_actions=trusted_actions)


def _compile(template: Any, library: Mapping[str, ActionSpec], variables: Mapping[str, Any] | None,
             workspace: Mapping[str, Any] | None, templates: Iterable[Mapping[str, Any]],
             env_passthrough: Iterable[str]) -> Plan:
    with _gc_paused():
        merged = resolve(template, TemplateSource(templates))
        return Compiler(merged, library, variables or {}, workspace, env_passthrough).compile()


_gc_lock = threading.Lock()
_gc_pauses = 0
_gc_was_enabled = False


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Compiling allocates many objects and frees none: the cyclic collector
    would walk them again and again (a third of the time at 100,000 steps)
    for no garbage. Paused while any compile runs, and enabled again by the
    last one to finish, if it was enabled before the first began."""
    global _gc_pauses, _gc_was_enabled
    with _gc_lock:
        if _gc_pauses == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pauses += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pauses -= 1
            if _gc_pauses == 0 and _gc_was_enabled:
                gc.enable()


def validate_files(paths: Iterable[str], **options: Any) -> list[tuple[str, Exception | None]]:
    """Compile each file (template or action definition); ``(path, error)`` pairs."""
    from .loader import load_action_file, read_document
    results = []
    for path in paths:
        try:
            doc = read_document(Path(path))
            if "action_type" in doc or ("actions" in doc and doc["actions"] and "action_type" in doc["actions"][0]):
                load_action_file(Path(path))
            else:
                compile_template(path, **options)
            results.append((path, None))
        except (TemplateError, InputError) as exc:
            results.append((path, exc))
    return results


__all__ = ["compile_template", "validate_files"]
