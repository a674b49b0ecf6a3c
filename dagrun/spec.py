"""Frozen specifications: actions, steps, policies and the compiled plan.

Everything here is immutable once built by :mod:`dagrun.compile`; run state
lives apart in :mod:`dagrun.run.scheduler`. Mappings are read-only proxies and
sequences are tuples, so a plan can be shared by threads without locks.
"""

from __future__ import annotations

import enum
import random
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping

MASK = "********"


class FrozenDict(dict):
    """A read-only dict: C-speed lookups (the scheduler's hot path reads the
    plan's mappings) and picklable, unlike ``MappingProxyType``."""

    __slots__ = ()

    def _readonly(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("a compiled plan is read-only")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _readonly  # type: ignore[assignment]
    __ior__ = _readonly  # type: ignore[assignment]

    def __reduce__(self) -> tuple:
        return (FrozenDict, (dict(self),))

    def __copy__(self) -> "FrozenDict":
        return self

    def __deepcopy__(self, memo: dict) -> dict:
        import copy
        return {copy.deepcopy(k, memo): copy.deepcopy(v, memo) for k, v in self.items()}


EMPTY: Mapping[str, Any] = FrozenDict()


def frozen_mapping(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return value if isinstance(value, FrozenDict) else FrozenDict(value or {})


class Phase(enum.IntEnum):
    """Phases order whole groups of steps: every step of a phase finishes
    before any step of a later phase starts."""

    pre_setup = 0
    main = 1
    post_setup = 2
    validation = 3

    @classmethod
    def parse(cls, value: str | None) -> "Phase":
        """A step's ``phase`` field (``None``: ``main``). (A dict lookup:
        three per step while compiling, and an enum's own costs five times
        as much.)"""
        return _PHASES[value or "main"]


_PHASES: dict[str, Phase] = dict(Phase.__members__)

HANDLER_TYPES = ("shell", "python_function", "template_copy", "api_call")


@dataclass(frozen=True, slots=True)
class ErrorMatch:
    """Which failures a retry rule is about: an exit code among
    ``exit_codes``, or output matching one of ``patterns``."""

    exit_codes: frozenset[int] = frozenset()
    patterns: tuple[re.Pattern[str], ...] = ()

    @classmethod
    def parse(cls, doc: Mapping[str, Any] | None) -> "ErrorMatch | None":
        """Raises re.error for a bad pattern (the compiler reports it)."""
        if not doc:
            return None
        return cls(frozenset(doc.get("exit_codes") or ()), tuple(re.compile(p) for p in doc.get("output_matches") or ()))

    def matches(self, exit_code: int | None, output: str) -> bool:
        return exit_code in self.exit_codes or any(p.search(output) for p in self.patterns)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``max_attempts`` is the total number of attempts ("attempt 3/3").
    ``retry_when``: only matching failures are retried; ``never_retry_when``:
    matching failures fail at once."""

    max_attempts: int = 3
    delay_seconds: float = 5.0
    exponential_backoff: bool = True
    max_delay_seconds: float = 300.0
    jitter: bool = False
    retry_when: ErrorMatch | None = None
    never_retry_when: ErrorMatch | None = None

    def allows(self, exit_code: int | None, output: str) -> bool:
        """May a failure with this exit code and output be retried?"""
        if self.never_retry_when is not None and self.never_retry_when.matches(exit_code, output):
            return False
        return self.retry_when is None or self.retry_when.matches(exit_code, output)

    def delay_after(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based) before the next."""
        delay = self.delay_seconds
        if self.exponential_backoff:
            delay *= 2 ** (attempt - 1)
        delay = min(delay, self.max_delay_seconds)
        if self.jitter:
            # "Full jitter": spreads retries of many steps hitting the same
            # resource; the rng is injected so runs stay reproducible in tests.
            delay = (rng or random).uniform(0, delay)
        return delay


@dataclass(frozen=True, slots=True)
class Lock:
    """A named resource; at most ``capacity`` steps holding it run at once.
    In a fleet run, the workspaces of one host share it (``scope: host``,
    the default: ``apt``) or the whole fleet does (``scope: fleet``: a git
    server)."""

    name: str
    capacity: int = 1
    scope: str = "host"

    @classmethod
    def parse(cls, item: "str | Mapping[str, Any] | Lock") -> "Lock":
        """A ``locks:`` entry: a name, or ``{name, capacity, scope}``."""
        if isinstance(item, Lock):
            return item
        if isinstance(item, str):
            return cls(item)
        return cls(item["name"], int(item.get("capacity", 1)), str(item.get("scope", "host")))


@dataclass(frozen=True, slots=True)
class Limits:
    """Resource limits of one step's processes (``limits:`` of an action)."""

    memory_mb: int | None = None  # address space of each process (RLIMIT_AS)
    processes: int | None = None  # processes at once (a pids cgroup, else RLIMIT_NPROC)
    file_size_mb: int | None = None  # largest file a process may write (RLIMIT_FSIZE)
    open_files: int | None = None  # descriptors per process (RLIMIT_NOFILE)

    @classmethod
    def parse(cls, value: Mapping[str, Any] | None) -> "Limits | None":
        return None if not value else cls(**{k: int(v) for k, v in value.items() if v is not None})


@dataclass(frozen=True, slots=True)
class ActionSpec:
    name: str
    display_name: str
    category: str
    action_type: str
    execution_handler: str
    description: str = ""
    validation_handler: str | None = None
    rollback_handler: str | None = None
    config_schema: Mapping[str, Any] = field(default_factory=lambda: EMPTY)
    default_config: Mapping[str, Any] = field(default_factory=lambda: EMPTY)
    max_retries: int = 3
    timeout_seconds: float = 300.0
    retry_delay_seconds: float = 5.0
    exponential_backoff: bool = True
    max_retry_delay_seconds: float = 300.0
    retry_jitter: bool = False
    retry_when: ErrorMatch | None = None
    never_retry_when: ErrorMatch | None = None
    requires_actions: tuple[str, ...] = ()
    conflicts_with_actions: tuple[str, ...] = ()
    locks: tuple[Lock, ...] = ()
    condition_expression: str | None = None
    estimated_duration_seconds: float | None = None
    requires_sudo: bool = False
    requires_network: bool = False
    disk_space_required_mb: int | None = None
    is_active: bool = True
    is_system: bool = True
    check_first: bool = False
    limits: Limits | None = None
    # Where the definition came from: scripts named by handlers are looked
    # up beside it. ``library``: shipped with dagrun (trusted code); set by the
    # loader, never by the document, since it decides who runs unsandboxed.
    source: str = "<dict>"
    base_dir: Path | None = None
    library: bool = False
    # False: the handler never touches the workspace home (no files, no working folder there), so
    # its attempts neither make the home nor, as root, check the folders above it first. Honoured
    # for trusted actions only (``library``); a template's own action always has its home checked.
    # (Last: a job pickled by an older dagrun, on a cluster's worker, keeps its fields' places.)
    works_in_home: bool = True


@dataclass(frozen=True, slots=True)
class StepSpec:
    id: str
    sequence_order: int
    action: ActionSpec
    phase: Phase
    config: Mapping[str, Any]
    condition: Any  # expressions.Condition or None
    skip_on_error: bool
    retry: RetryPolicy
    timeout_seconds: float
    estimated_duration_seconds: float
    locks: tuple[Lock, ...] = ()
    check_first: bool = False
    # Precomputed at compile time so an attempt does no needless work:
    templated: bool = False  # does the config hold any {{ }}?
    shell_fields: frozenset[str] = frozenset()  # config keys holding shell script text
    step_refs: frozenset[str] = frozenset()  # upstream steps whose results it reads
    secret_fields: frozenset[str] = frozenset()  # config keys masked in records, logs and output
    config_order: tuple[str, ...] = ()  # templated top-level config fields, in render order
    origin: str = ""  # the template that defined (or last overrode) the step
    run_as: str = "workspace"  # "workspace": as the workspace's Linux user (when root), or "root"
    sandbox: bool = False  # commands and Python handlers run in bubblewrap

    @property
    def label(self) -> str:
        return f"{self.id} ({self.action.name})"

    @property
    def display_name(self) -> str:
        return self.action.display_name


@dataclass(frozen=True, slots=True)
class GlobalConfig:
    continue_on_non_critical_errors: bool = True
    parallel_execution_enabled: bool = True
    rollback_on_failure: bool = True
    max_workers: int | None = None
    env_passthrough: tuple[str, ...] = ()  # caller environment variables steps and templates may see
    run_as: str = "workspace"  # default of the steps' run_as
    sandbox: bool | None = None  # default of the steps' sandbox (None: user-defined actions only)


# What every step's environment holds of the caller's (besides the names a
# template declares in env_passthrough): never dagrun's own settings.
BASE_ENV_NAMES = frozenset({"PATH", "LANG", "LANGUAGE", "TZ", "TERM"})


def is_base_env(name: str) -> bool:
    return name in BASE_ENV_NAMES or name.startswith("LC_")


@dataclass(frozen=True, slots=True)
class Plan:
    """A compiled template: steps, their dependency graph and scheduling data.

    ``order`` lists step ids in (phase, sequence_order) order. ``priority`` is
    each step's bottom level: its own estimated duration plus the longest
    estimated path below it, the "remaining critical path" used to choose
    among ready steps.
    """

    name: str
    version: str
    description: str
    steps: Mapping[str, StepSpec]
    order: tuple[str, ...]
    predecessors: Mapping[str, tuple[str, ...]]
    successors: Mapping[str, tuple[str, ...]]
    conflicts: Mapping[str, frozenset[str]]
    lock_capacity: Mapping[str, int]
    priority: Mapping[str, float]
    # Steps sorted by dispatch preference (longest remaining path, then
    # sequence_order, then plan order): the scheduler's heap holds ranks.
    dispatch_order: tuple[str, ...]
    dispatch_rank: Mapping[str, int]
    global_config: GlobalConfig
    variables: Mapping[str, Any]
    snapshot: Mapping[str, Any] = field(default_factory=lambda: EMPTY)  # the resolved template document
    workspace_fields: frozenset[str] = frozenset()  # the workspace fields the template reads
    secret_literals: tuple[tuple[str, str], ...] = ()  # (step, field): x-secret values written in the template

    estimate_sources: Mapping[str, str] = field(default_factory=lambda: EMPTY)  # step -> "learned (N runs)"

    def with_estimates(self, seconds: Mapping[str, float], sources: Mapping[str, str] | None = None) -> "Plan":
        """The same plan with these steps' estimated durations (learned from
        history), and the dispatch priorities they imply."""
        steps = {sid: (replace(spec, estimated_duration_seconds=float(seconds[sid])) if sid in seconds else spec)
                 for sid, spec in self.steps.items()}
        priority, dispatch_order = scheduling(self.order, self.successors, steps)
        return replace(self, steps=frozen_mapping(steps), priority=frozen_mapping(priority),
                       dispatch_order=dispatch_order,
                       dispatch_rank=frozen_mapping({sid: i for i, sid in enumerate(dispatch_order)}),
                       estimate_sources=frozen_mapping({**self.estimate_sources, **(sources or {})}))

    def to_dict(self, workers: int | None = None) -> dict[str, Any]:
        """The plan as JSON-able data: levels, critical path, estimates and
        their sources, each step's dependencies (what ``dagrun plan --json``
        prints)."""
        from .render import plan_dict  # a view of the plan: kept out of the data module
        return plan_dict(self, workers or self.global_config.max_workers or 8)

    def descendants(self, step_id: str) -> list[str]:
        """Steps downstream of ``step_id``, in plan order."""
        below = reachable(step_id, self.successors)
        return [s for s in self.order if s in below]

    def ancestors(self, step_id: str) -> set[str]:
        return reachable(step_id, self.predecessors)

    def graph(self):
        """The dependency graph as a networkx DiGraph (built on demand)."""
        import networkx as nx

        g = nx.DiGraph()
        for sid in self.order:
            step = self.steps[sid]
            g.add_node(sid, action=step.action.name, phase=step.phase.name,
                       sequence_order=step.sequence_order, label=step.display_name)
        for sid in self.order:
            for succ in self.successors[sid]:
                g.add_edge(sid, succ)
        return g


def scheduling(order: tuple[str, ...], successors: Mapping[str, Iterable[str]], steps: Mapping[str, StepSpec],
               postorder: Iterable[str] | None = None) -> tuple[dict[str, float], tuple[str, ...]]:
    """Each step's bottom level (its estimated duration plus the longest
    estimated path below it) and the dispatch preference it implies: longest
    remaining path first, then sequence_order, then plan order.
    ``postorder``: every step after all its successors, when the caller has
    one (the compiler's cycle check walks the graph in that order)."""
    level: dict[str, float] = {}
    for node in _postorder(order, successors) if postorder is None else postorder:
        level[node] = steps[node].estimated_duration_seconds + max(map(level.__getitem__, successors[node]),
                                                                    default=0.0)
    # sorted() is stable: steps alike in level and sequence_order keep plan order
    dispatch_order = tuple(sorted(order, key=lambda sid: (-level[sid], steps[sid].sequence_order)))
    return level, dispatch_order


def _postorder(order: Iterable[str], successors: Mapping[str, Iterable[str]]) -> list[str]:
    """Every node after all its successors (iterative: a deep chain never hits the recursion limit)."""
    done: set[str] = set()
    out: list[str] = []
    for root in order:
        stack = [(root, False)]
        while stack:
            node, expanded = stack.pop()
            if expanded:
                out.append(node)
            elif node not in done:
                done.add(node)
                stack.append((node, True))
                stack.extend((s, False) for s in successors[node] if s not in done)
    return out


def reachable(start: str, edges: Mapping[str, Iterable[str]]) -> set[str]:
    """Every node reachable from ``start`` along ``edges`` (``start`` itself only through a cycle)."""
    seen: set[str] = set()
    stack = list(edges[start])
    while stack:
        node = stack.pop()
        if node not in seen:
            seen.add(node)
            stack.extend(edges[node])
    return seen
