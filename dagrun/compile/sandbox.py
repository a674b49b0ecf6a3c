"""The Jinja2 sandbox every template and condition is evaluated in, bounded.

Jinja's :class:`~jinja2.sandbox.ImmutableSandboxedEnvironment` already keeps
expressions away from Python internals (no ``__class__``, no mutation). A
sandbox that runs on a provisioner must also *finish*: an expression such as
``9**(9**9)`` or ``'x' * 10**10`` holds the GIL for minutes, and no step
timeout can fire while it does. So every operation whose cost is not linear
in its inputs is checked before it runs:

- ``**``, ``*``, ``%`` and ``//`` are intercepted (``intercepted_binops``):
  results that would exceed :data:`MAX_STRING` characters or
  :data:`MAX_INT_BITS` bits are refused. Intercepted operators are never
  constant-folded at compile time, so ``validate`` cannot hang either.
- Loops go through :func:`_loop` (an AST rewrite of every ``{% for %}``):
  at most :data:`MAX_ITERATIONS` per render, and the literal text each
  iteration emits counts towards :data:`MAX_OUTPUT`.
- Calls of string methods that pad or repeat (``ljust``, ``center``...)
  and the filters that do (``center``, ``indent``, ``wordwrap``, ``replace``,
  ``format``) check their size first; ``str.format`` is refused outright
  (``~`` and filters do the same job); ``range`` is capped.
- A render also has a wall-clock deadline, checked at each of the points
  above, as the last line of defence.

A :class:`RenderBudget` is per render (a context variable), so threads never
share one. Expressions that nest too deeply for the parser are reported as
syntax errors, never as a ``RecursionError``.
"""

from __future__ import annotations

import contextlib
import contextvars
import operator
import re
import time
import types
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from jinja2 import StrictUndefined, TemplateSyntaxError, nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_STRING = 1_000_000
MAX_OUTPUT = 4_000_000
MAX_INT_BITS = 65_536
MAX_ITERATIONS = 100_000
MAX_RANGE = 10_000
RENDER_SECONDS = 2.0
MAX_NESTING = 100  # brackets and parentheses in one expression


class BudgetExceeded(SecurityError):
    """An expression or template would take unbounded time or memory."""


@dataclass(slots=True)
class RenderBudget:
    deadline: float = field(default_factory=lambda: time.monotonic() + RENDER_SECONDS)
    iterations: int = 0
    output: int = 0

    def spend(self, *, iterations: int = 0, output: int = 0) -> None:
        self.iterations += iterations
        self.output += output
        if self.iterations > MAX_ITERATIONS:
            raise BudgetExceeded(f"more than {MAX_ITERATIONS} loop iterations in one template")
        if self.output > MAX_OUTPUT:
            raise BudgetExceeded(f"template output larger than {MAX_OUTPUT} characters")
        if time.monotonic() > self.deadline:
            raise BudgetExceeded(f"template took longer than {RENDER_SECONDS:g} s to render")


_budget: contextvars.ContextVar[RenderBudget | None] = contextvars.ContextVar("dagrun_render_budget", default=None)


@contextlib.contextmanager
def budget() -> Iterator[RenderBudget]:
    """One render's budget (nested renders share the outer one)."""
    current = _budget.get()
    if current is not None:
        yield current
        return
    token = _budget.set(RenderBudget())
    try:
        yield _budget.get()  # type: ignore[misc]
    finally:
        _budget.reset(token)


def _spend(**amounts: int) -> None:
    current = _budget.get()
    if current is not None:
        current.spend(**amounts)


def _size(value: Any) -> int:
    return len(value) if isinstance(value, (str, bytes, list, tuple)) else 0


def _check_int(value: Any) -> Any:
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise BudgetExceeded(f"a number larger than {MAX_INT_BITS} bits")
    return value


def _power(left: Any, right: Any) -> Any:
    if isinstance(left, int) and isinstance(right, int) and right > 1 and abs(left) > 1:
        if abs(left).bit_length() * right > MAX_INT_BITS:
            raise BudgetExceeded(f"{left} ** {right} is larger than {MAX_INT_BITS} bits")
    elif isinstance(left, float) or isinstance(right, float):
        try:
            return left ** right
        except OverflowError:
            raise BudgetExceeded("a power that overflows") from None
    return _check_int(left ** right)


def _multiply(left: Any, right: Any) -> Any:
    for seq, count in ((left, right), (right, left)):
        if isinstance(seq, (str, list, tuple)) and isinstance(count, int):
            if len(seq) * max(count, 0) > MAX_STRING:
                raise BudgetExceeded(f"repeating a {type(seq).__name__} {count} times is larger than "
                                     f"{MAX_STRING} items")
            return left * right
    if isinstance(left, int) and isinstance(right, int):
        if abs(left).bit_length() + abs(right).bit_length() > MAX_INT_BITS:
            raise BudgetExceeded(f"a product larger than {MAX_INT_BITS} bits")
    return left * right


_FORMAT_FIELD = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")


def _check_percent_format(text: str) -> None:
    for width, precision in _FORMAT_FIELD.findall(text):
        for number in (width, precision):
            if number == "*" or (number and int(number) > 10_000):
                raise BudgetExceeded("a %-format width or precision above 10000")


def _modulo(left: Any, right: Any) -> Any:
    if isinstance(left, str):
        _check_percent_format(left)
    result = left % right
    if isinstance(result, str) and len(result) > MAX_STRING:
        raise BudgetExceeded(f"a formatted string larger than {MAX_STRING} characters")
    return result


def _add(left: Any, right: Any) -> Any:
    if isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)):
        if len(left) + len(right) > MAX_STRING:
            raise BudgetExceeded(f"a sum larger than {MAX_STRING} items")
    elif isinstance(left, int) and isinstance(right, int):
        _check_int(left), _check_int(right)
    return left + right


def _concat(*parts: Any) -> str:
    """``a ~ b``: bounded like ``+`` (an AST rewrite routes ``~`` here)."""
    texts = [str(p) for p in parts]
    if sum(map(len, texts)) > MAX_STRING:
        raise BudgetExceeded(f"a concatenation larger than {MAX_STRING} characters")
    _spend()
    return "".join(texts)


_BINOPS: dict[str, Callable[[Any, Any], Any]] = {
    "**": _power, "*": _multiply, "%": _modulo, "//": operator.floordiv, "+": _add,
}

# String methods whose result size is set by an argument, not by the input.
_WIDTH_METHODS = frozenset({"ljust", "rjust", "center", "zfill", "expandtabs"})


def _loop(iterable: Any, body_size: int) -> Iterator[Any]:
    """Every ``{% for %}`` iterates through this (see :func:`bound_loops`)."""
    for item in iterable:
        _spend(iterations=1, output=body_size)
        yield item


def _safe_range(*args: int) -> range:
    rng = range(*args)
    if len(rng) > MAX_RANGE:
        raise BudgetExceeded(f"range() of more than {MAX_RANGE} items")
    return rng


def _bounded_filter(name: str, inner: Callable[..., Any]) -> Callable[..., Any]:
    """``inner`` with its size-setting arguments checked first. Jinja's
    ``pass_eval_context`` / ``pass_environment`` marker is kept."""
    passes_context = getattr(inner, "jinja_pass_arg", None) is not None

    def bounded_filter(*call: Any, **kwargs: Any) -> Any:
        value, args = (call[1], call[2:]) if passes_context else (call[0], call[1:])
        numbers = [a for a in (*args, *kwargs.values()) if isinstance(a, int) and not isinstance(a, bool)]
        if any(abs(n) > 10_000 for n in numbers):
            raise BudgetExceeded(f"|{name} with a size above 10000")
        if name == "replace" and len(args) >= 2:
            old, new = str(args[0]), str(args[1])
            worst = (len(str(value)) // max(len(old), 1) + 1) * len(new) + len(str(value))
            if worst > MAX_STRING:
                raise BudgetExceeded(f"|replace could produce more than {MAX_STRING} characters")
        if name == "format":
            _check_percent_format(str(value))
        if name == "join" and not isinstance(value, (str, bytes)):
            items = list(value)
            separator = str(args[0]) if args else str(kwargs.get("d", ""))
            if sum(len(str(i)) for i in items) + len(separator) * len(items) > MAX_STRING:
                raise BudgetExceeded(f"|join would produce more than {MAX_STRING} characters")
            call = (*call[:1], items, *call[2:]) if passes_context else (items, *call[1:])
        _spend()
        result = inner(*call, **kwargs)
        if _size(result) > MAX_STRING:
            raise BudgetExceeded(f"|{name} produced more than {MAX_STRING} items")
        return result

    bounded_filter.jinja_pass_arg = getattr(inner, "jinja_pass_arg", None)  # type: ignore[attr-defined]
    bounded_filter.__name__ = name
    return bounded_filter


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox with the bounds described in the module docstring."""

    intercepted_binops = frozenset(_BINOPS)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(undefined=StrictUndefined, keep_trailing_newline=True, autoescape=False, **kwargs)
        from jinja2.utils import Cycler, Joiner, Namespace
        # Jinja's defaults without lipsum (its size is an argument); range is capped.
        self.globals = {"range": _safe_range, "dict": dict, "cycler": Cycler, "joiner": Joiner,
                        "namespace": Namespace, "_dagrun_loop": _loop}
        for name in ("center", "indent", "wordwrap", "replace", "format", "truncate", "join", "batch", "slice",
                     "tojson", "list", "unique", "map", "select", "reject", "sort", "dictsort", "groupby"):
            self.filters[name] = _bounded_filter(name, self.filters[name])
        self.globals["_dagrun_concat"] = _concat

    def wrap_str_format(self, value: Any) -> Any:
        """``str.format`` pads to any width its format string asks for: refused."""
        if isinstance(value, (types.MethodType, types.BuiltinMethodType)) and \
                value.__name__ in ("format", "format_map") and isinstance(value.__self__, str):
            def refused(*args: Any, **kwargs: Any) -> str:
                raise SecurityError("str.format is not available in templates: use ~ and filters")
            return refused
        return None

    def call_binop(self, context: Any, op: str, left: Any, right: Any) -> Any:
        _spend()
        return _BINOPS[op](left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        _spend()
        name = getattr(__obj, "__name__", "")
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str):
            if name in _WIDTH_METHODS and any(isinstance(a, int) and a > 10_000 for a in args):
                raise BudgetExceeded(f"str.{name}() with a width above 10000")
            if name == "replace" and len(args) >= 2:
                if (len(owner) // max(len(str(args[0])), 1) + 1) * len(str(args[1])) > MAX_STRING:
                    raise BudgetExceeded(f"str.replace() could produce more than {MAX_STRING} characters")
        result = super().call(__context, __obj, *args, **kwargs)
        if _size(result) > MAX_STRING:
            raise BudgetExceeded(f"a call produced more than {MAX_STRING} characters")
        return result

    def parse(self, source: str, name: str | None = None, filename: str | None = None) -> nodes.Template:
        try:
            return super().parse(source, name, filename)
        except RecursionError:
            raise TemplateSyntaxError("expression nested too deeply", 1) from None

    def compile_expression(self, source: str, undefined_to_none: bool = True) -> Any:
        check_nesting(source)
        try:
            return super().compile_expression(source, undefined_to_none)
        except RecursionError:
            raise TemplateSyntaxError("expression nested too deeply", 1) from None

    def from_string(self, source: Any, globals: Any = None, template_class: Any = None) -> Any:
        if isinstance(source, str):
            check_nesting(source)
            source = self.parse(source)
        return super().from_string(self.transform(source), globals, template_class)

    def transform(self, template: nodes.Template) -> nodes.Template:
        """Rewrites applied to every parsed template before it is compiled."""
        return bound_loops(template)


def bound_loops(template: nodes.Template) -> nodes.Template:
    """Route every ``{% for %}`` through ``_dagrun_loop`` so iterations count,
    and every ``~`` through ``_dagrun_concat`` so its size is checked."""
    for concat in list(template.find_all(nodes.Concat)):
        call = nodes.Call(nodes.Name("_dagrun_concat", "load"), list(concat.nodes), [], None, None,
                          lineno=concat.lineno)
        _replace(template, concat, call)
    for loop in template.find_all(nodes.For):
        body_size = sum(len(d.data) for n in loop.body for d in n.find_all(nodes.TemplateData))
        body_size += sum(len(n.data) for n in loop.body if isinstance(n, nodes.TemplateData))
        loop.iter = nodes.Call(nodes.Name("_dagrun_loop", "load"), [loop.iter, nodes.Const(body_size)], [],
                               None, None, lineno=loop.lineno)
    return template


def _replace(tree: nodes.Node, old: nodes.Node, new: nodes.Node) -> None:
    """Put ``new`` where ``old`` is in ``tree`` (Jinja nodes have no parent links)."""
    for node in tree.find_all(nodes.Node):
        for field in node.fields:
            value = getattr(node, field, None)
            if value is old:
                setattr(node, field, new)
                return
            if isinstance(value, list) and any(v is old for v in value):
                setattr(node, field, [new if v is old else v for v in value])
                return
    for field in tree.fields:  # old may be a direct child of the root
        value = getattr(tree, field, None)
        if isinstance(value, list) and any(v is old for v in value):
            setattr(tree, field, [new if v is old else v for v in value])


def check_nesting(source: str) -> None:
    """Refuse expressions nested deeper than the parser can take."""
    depth = deepest = 0
    for char in source:
        if char in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in ")]}":
            depth -= 1
    if deepest > MAX_NESTING:
        raise TemplateSyntaxError(f"expression nested more than {MAX_NESTING} levels deep", 1)
