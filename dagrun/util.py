"""Small helpers shared by several modules."""

from __future__ import annotations

import copy
from collections.abc import Mapping  # for isinstance: typing's alias is several times slower
from typing import Any


class LazyModule:
    """A module imported on first attribute access: a command that only
    prints its help never pays for the engine."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        import importlib
        module = importlib.import_module(self._name)
        self.__dict__.update(vars(module))  # later lookups skip __getattr__
        return getattr(module, attr)


def fresh_copy(value: Any) -> Any:
    """JSON-like data with new containers all the way down (a mapping becomes
    a dict): what a handler gets of a plan shared between runs, so that
    changing it in place never reaches another run."""
    if isinstance(value, dict):  # the plan's FrozenDict included: a C check, once per attempt
        return {k: v if isinstance(v, _SCALARS) else fresh_copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):  # a tuple (from a Python caller) may hold a dict
        items = [v if isinstance(v, _SCALARS) else fresh_copy(v) for v in value]
        return items if isinstance(value, list) else tuple(items)
    if isinstance(value, Mapping):
        return fresh_copy(dict(value))
    return value


_SCALARS = (str, int, float, type(None))  # bool is an int


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``override`` into a copy of ``base``: mappings merge key by key,
    anything else (lists included) is replaced."""
    memo: dict[int, Any] = {}
    out = {key: _deep_copy(value, memo) for key, value in base.items()}
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = _deep_copy(value, {})
    return out


def _deep_copy(value: Any, memo: dict[int, Any]) -> Any:
    """``copy.deepcopy``, with documents' own types (plain dicts, lists and
    scalars, by exact type) copied directly: a compile merges every step's
    config, and deepcopy's generic path costs several times more. Like
    deepcopy, a container met twice is copied once (``memo``): a YAML
    document's aliases (a file in a workspace, merged by template_copy) stay
    shared instead of growing exponentially."""
    kind = type(value)
    if kind is str or kind is int or kind is float or kind is bool or value is None:
        return value
    if kind is dict or kind is list:
        copied = memo.get(id(value))
        if copied is not None:
            return copied
        out: Any
        if kind is dict:
            out = memo[id(value)] = {}
            for key, item in value.items():
                out[key] = _deep_copy(item, memo)
        else:  # a plain loop: a generator would cost a third frame per level of a deep document
            out = memo[id(value)] = []
            for item in value:
                out.append(_deep_copy(item, memo))
        return out
    return copy.deepcopy(value, memo)


def bounded(text: str, limit: int = 64_000) -> str:
    """Keep the head and tail of long output, saying how much was cut."""
    if len(text) <= limit:
        return text
    half = limit // 2
    cut = len(text) - 2 * half
    return f"{text[:half]}\n... [{cut} characters truncated] ...\n{text[-half:]}"


def package_version() -> str:
    """dagrun's installed version (the package's own when not installed)."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("dagrun")
    except PackageNotFoundError:
        from . import __version__
        return __version__
