"""Views of a plan: levels, critical path, estimated duration, DOT, Mermaid.

The estimated duration is not a formula: it replays the plan through the
real scheduler core (:class:`~dagrun.run.scheduler.RunState`) on a simulated
clock, with each step taking its estimated duration, so it honours workers,
conflicts, locks and the dispatch policy exactly as a run would.
"""

from __future__ import annotations

import heapq
import shutil
import subprocess
from typing import Mapping

from .errors import InputError
from .run.scheduler import RunState
from .spec import Plan

STATUS_COLOURS = {
    "pending": "#e0e0e0", "running": "#90caf9", "completed": "#a5d6a7", "failed": "#ef9a9a",
    "skipped": "#fff59d", "rolled_back": "#ce93d8", "cancelled": "#bcaaa4",
}


def levels(plan: Plan) -> list[list[str]]:
    """Topological generations: every step of a level can run in parallel."""
    depth: dict[str, int] = {}
    for sid in _topological(plan):
        depth[sid] = max((depth[p] + 1 for p in plan.predecessors[sid]), default=0)
    out: list[list[str]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for sid in plan.order:
        out[depth[sid]].append(sid)
    return out


def _topological(plan: Plan) -> list[str]:
    unmet = {sid: len(plan.predecessors[sid]) for sid in plan.order}
    ready = [sid for sid in plan.order if unmet[sid] == 0]
    out = []
    while ready:
        sid = ready.pop()
        out.append(sid)
        for succ in plan.successors[sid]:
            unmet[succ] -= 1
            if unmet[succ] == 0:
                ready.append(succ)
    return out


def critical_path(plan: Plan) -> list[str]:
    """The chain of steps with the longest total estimated duration."""
    if not plan.order:
        return []
    rank = {sid: i for i, sid in enumerate(plan.order)}
    best = lambda ids: max(ids, key=lambda s: (plan.priority[s], -rank[s]))  # noqa: E731
    path = [best([s for s in plan.order if not plan.predecessors[s]])]
    while plan.successors[path[-1]]:
        path.append(best(plan.successors[path[-1]]))
    return path


def estimated_duration(plan: Plan, max_workers: int) -> float:
    """Makespan of a simulated run where every step takes its estimate."""
    state = RunState(plan, max_workers)
    now = 0.0
    running: list[tuple[float, int, str]] = []
    counter = 0
    while True:
        for sid, _ in state.start(now):
            counter += 1
            heapq.heappush(running, (now + plan.steps[sid].estimated_duration_seconds, counter, sid))
        if not running:
            return now
        now, _, sid = heapq.heappop(running)
        state.succeeded(sid)


def conflict_pairs(plan: Plan) -> list[tuple[str, str]]:
    """Each pair of steps that may never run together, once, in plan order."""
    rank = {sid: i for i, sid in enumerate(plan.order)}
    return sorted({tuple(sorted((a, b), key=rank.__getitem__)) for a in plan.order for b in plan.conflicts[a]},
                  key=lambda pair: (rank[pair[0]], rank[pair[1]]))


def _label(plan: Plan, sid: str) -> str:
    step = plan.steps[sid]
    return f"{sid}\\n{step.action.name} [{step.phase.name}]"


def to_dot(plan: Plan, statuses: Mapping[str, str] | None = None) -> str:
    lines = [f'digraph "{plan.name}" {{', "  rankdir=LR;", '  node [shape=box, style="rounded,filled", '
             'fillcolor="#ffffff", fontname="Helvetica"];']
    for sid in plan.order:
        colour = STATUS_COLOURS.get((statuses or {}).get(sid, ""), "#ffffff")
        lines.append(f'  "{sid}" [label="{_label(plan, sid)}", fillcolor="{colour}"];')
    for sid in plan.order:
        for succ in plan.successors[sid]:
            lines.append(f'  "{sid}" -> "{succ}";')
    for a, b in conflict_pairs(plan):
        lines.append(f'  "{a}" -> "{b}" [dir=none, style=dashed, color="#c62828", constraint=false];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def to_mermaid(plan: Plan, statuses: Mapping[str, str] | None = None) -> str:
    ident = {sid: f"s{i}" for i, sid in enumerate(plan.order)}
    lines = ["flowchart LR"]
    for sid in plan.order:
        step = plan.steps[sid]
        lines.append(f'  {ident[sid]}["{sid}<br/>{step.action.name}"]')
    for sid in plan.order:
        for succ in plan.successors[sid]:
            lines.append(f"  {ident[sid]} --> {ident[succ]}")
    for a, b in conflict_pairs(plan):
        lines.append(f"  {ident[a]} -.-x {ident[b]}")
    for status, colour in STATUS_COLOURS.items():
        members = [ident[s] for s in plan.order if (statuses or {}).get(s) == status]
        if members:
            lines.append(f"  classDef {status} fill:{colour}")
            lines.append(f"  class {','.join(members)} {status}")
    return "\n".join(lines) + "\n"


def render_image(dot_source: str, fmt: str) -> bytes:
    """SVG or PNG through graphviz ``dot``, when it is installed."""
    dot = shutil.which("dot")
    if dot is None:
        raise InputError(f"--format {fmt} needs graphviz's 'dot' program (apt-get install graphviz); "
                         "use --format dot or mermaid instead")
    proc = subprocess.run([dot, f"-T{fmt}"], input=dot_source.encode(), capture_output=True, timeout=60)
    if proc.returncode != 0:
        raise InputError(f"dot failed: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout
