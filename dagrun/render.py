"""Views of a plan: levels, critical path, estimated duration, DOT, Mermaid.

The estimated duration is not a formula: it replays the plan through the
real scheduler core (:class:`~dagrun.run.scheduler.RunState`) on a simulated
clock, with each step taking its estimated duration, so it honours workers,
conflicts, locks and the dispatch policy exactly as a run would.
"""

from __future__ import annotations

import heapq
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


def _dot(text: str) -> str:
    """Text inside a DOT string: a quote or a backslash in a name ends nothing."""
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _label(plan: Plan, sid: str) -> str:
    step = plan.steps[sid]
    return f"{_dot(sid)}\\n{_dot(step.action.name)} [{step.phase.name}]"


def to_dot(plan: Plan, statuses: Mapping[str, str] | None = None) -> str:
    lines = [f'digraph "{_dot(plan.name)}" {{', "  rankdir=LR;", '  node [shape=box, style="rounded,filled", '
             'fillcolor="#ffffff", fontname="Helvetica"];']
    for sid in plan.order:
        colour = STATUS_COLOURS.get((statuses or {}).get(sid, ""), "#ffffff")
        lines.append(f'  "{_dot(sid)}" [label="{_label(plan, sid)}", fillcolor="{colour}"];')
    for sid in plan.order:
        for succ in plan.successors[sid]:
            lines.append(f'  "{_dot(sid)}" -> "{_dot(succ)}";')
    for a, b in conflict_pairs(plan):
        lines.append(f'  "{_dot(a)}" -> "{_dot(b)}" [dir=none, style=dashed, color="#c62828", constraint=false];')
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
    from .run.paths import own_program
    dot = own_program("dot")  # (as root, only where only root could have put it)
    if dot is None:
        raise InputError(f"--format {fmt} needs graphviz's 'dot' program (apt-get install graphviz); "
                         "use --format dot or mermaid instead")
    proc = subprocess.run([dot, f"-T{fmt}"], input=dot_source.encode(), capture_output=True, timeout=60)
    if proc.returncode != 0:
        raise InputError(f"dot failed: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout


# -- text views (the CLI's) ----------------------------------------------------------

def plan_dict(plan: Plan, workers: int) -> dict:
    """Everything ``dagrun plan --json`` says: levels, critical path, each
    step's estimate and where it comes from (learned or declared)."""
    from dataclasses import asdict
    path = critical_path(plan)
    return {
        "template": plan.name, "version": plan.version, "steps": len(plan.order), "levels": levels(plan),
        "critical_path": path, "critical_path_seconds": plan.priority[path[0]] if path else 0.0,
        "estimated_seconds": estimated_duration(plan, workers), "workers": workers,
        "conflicts": conflict_pairs(plan), "locks": dict(plan.lock_capacity),
        "order": [{
            "id": s, "position": i, "sequence_order": plan.steps[s].sequence_order,
            "action": plan.steps[s].action.name, "phase": plan.steps[s].phase.name,
            "requires": list(plan.predecessors[s]),
            "estimated_seconds": plan.steps[s].estimated_duration_seconds,
            "estimate_source": plan.estimate_sources.get(s, "declared"),
            "requires_network": plan.steps[s].action.requires_network,
            "requires_sudo": plan.steps[s].action.requires_sudo, "run_as": plan.steps[s].run_as,
            "sandbox": plan.steps[s].sandbox,
            "limits": None if plan.steps[s].action.limits is None
            else {k: v for k, v in asdict(plan.steps[s].action.limits).items() if v is not None},
        } for i, s in enumerate(plan.order, 1)],
    }


def plan_lines(plan: Plan, workers: int) -> list[str]:
    """``dagrun plan``: one line per step, level by level, numbered as a run's progress numbers them."""
    lv = levels(plan)
    position = {sid: i for i, sid in enumerate(plan.order, 1)}
    out = [f"{plan.name} {plan.version}: {len(plan.order)} steps in {len(lv)} levels"
           + ("" if plan.global_config.parallel_execution_enabled else " (parallel execution off)")]
    learned = 0
    for i, level in enumerate(lv, 1):
        out.append(f"level {i}:")
        for sid in level:
            step = plan.steps[sid]
            source = plan.estimate_sources.get(sid)
            learned += source is not None
            flags = [f for f, on in (("network", step.action.requires_network), ("sudo", step.action.requires_sudo),
                                     ("as root", step.run_as == "root" and not step.action.requires_sudo),
                                     ("sandbox" + ("" if step.action.requires_network else ", no network"),
                                      step.sandbox), ("limits", step.action.limits is not None)) if on]
            after = f" after {', '.join(plan.predecessors[sid])}" if plan.predecessors[sid] else ""
            cond = f" if {step.condition.source}" if step.condition else ""
            extra = f" [{', '.join(flags)}]" if flags else ""
            estimate = f"~{_seconds(step.estimated_duration_seconds)}" + ("" if source is None else " learned")
            out.append(f"  {position[sid]:>3}  {sid}  {step.display_name} ({estimate}){extra}{after}{cond}")
    pairs = conflict_pairs(plan)
    if pairs:
        out.append("never together: " + "; ".join(f"{a} / {b}" for a, b in pairs))
    if plan.lock_capacity:
        out.append("locks: " + ", ".join(f"{k} (capacity {v})" for k, v in plan.lock_capacity.items()))
    path = critical_path(plan)
    if path:
        out.append(f"critical path: {' -> '.join(path)} (~{_seconds(plan.priority[path[0]])})")
    sequential = sum(plan.steps[s].estimated_duration_seconds for s in plan.order)
    out.append(f"estimated duration with {workers} workers: ~{_seconds(estimated_duration(plan, workers))} "
               f"(one at a time: ~{_seconds(sequential)}); "
               + (f"{learned} of {len(plan.order)} estimates learned from recorded runs" if learned
                  else "estimates as declared (no recorded runs of these steps)"))
    return out


def _seconds(value: float) -> str:
    if value >= 60:
        return f"{value / 60:.1f} min"
    return f"{value:.2g} s" if value < 10 else f"{value:.0f} s"


def explain_lines(explained: dict) -> list[str]:
    """``dagrun explain``: the effective template, each value with its origin after a #."""
    import json
    out = [f"# {explained['template']} {explained['version']}, from {' <- '.join(reversed(explained['chain']))}"]

    def value(v: object) -> str:
        return json.dumps(v, default=str) if not isinstance(v, str) or "\n" in v else v

    for section in ("vars", "global_config"):
        if explained.get(section):
            out.append(f"{section}:")
            for key, item in explained[section].items():
                out.append(f"  {key}: {value(item['value'])}    # {item['origin']}")
    for step in explained["steps"]:
        out.append(f"step {step['id']} (#{step['sequence_order']}, {step['display_name']}; "
                   f"defined in {step['defined_in']}):")
        for key, item in step["fields"].items():
            if item["value"] not in (None, [], ""):
                out.append(f"  {key}: {value(item['value'])}    # {item['origin']}")
        if step["config"]:
            out.append("  action_config:")
            for key, item in step["config"].items():
                out.append(f"    {key}: {value(item['value'])}    # {item['origin']}")
    return out


# -- SVG (the web page's graph) ---------------------------------------------------------

def to_svg(plan: Plan, statuses: Mapping[str, str] | None = None) -> str:
    """The dependency graph as a self-contained SVG, levels left to right.
    Each step is a ``<g class="step" data-step-id=... data-status=...>``, so
    a page restyles it live by changing ``data-status``; no JavaScript
    library and no graphviz needed."""
    from html import escape
    node_w, node_h, gap_x, gap_y, pad = 190, 46, 70, 14, 16
    lv = levels(plan)
    pos: dict[str, tuple[float, float]] = {}
    height = 0.0
    for col, level in enumerate(lv):
        for row, sid in enumerate(level):
            pos[sid] = (pad + col * (node_w + gap_x), pad + row * (node_h + gap_y))
        height = max(height, pad * 2 + len(level) * (node_h + gap_y) - gap_y)
    width = pad * 2 + len(lv) * (node_w + gap_x) - gap_x if lv else pad * 2
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="dag" width="{width:.0f}" height="{height:.0f}" '
           f'viewBox="0 0 {width:.0f} {height:.0f}" role="img" aria-label="dependency graph of {escape(plan.name)}">',
           '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
           'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" class="arrow"/></marker></defs>']
    for sid in plan.order:
        x1, y1 = pos[sid]
        for succ in plan.successors[sid]:
            x2, y2 = pos[succ]
            sx, sy, ex, ey = x1 + node_w, y1 + node_h / 2, x2, y2 + node_h / 2
            mid = (sx + ex) / 2
            out.append(f'<path class="edge" data-from="{escape(sid)}" data-to="{escape(succ)}" '
                       f'd="M {sx:.0f} {sy:.0f} C {mid:.0f} {sy:.0f}, {mid:.0f} {ey:.0f}, {ex:.0f} {ey:.0f}" '
                       'marker-end="url(#arrow)"/>')
    for sid in plan.order:
        x, y = pos[sid]
        step = plan.steps[sid]
        status = (statuses or {}).get(sid, "pending")
        label = sid if len(sid) <= 24 else sid[:23] + "…"
        sub = step.display_name if len(step.display_name) <= 28 else step.display_name[:27] + "…"
        out.append(f'<g class="step" data-step-id="{escape(sid)}" data-status="{escape(status)}" '
                   f'transform="translate({x:.0f},{y:.0f})"><title>{escape(sid)}: {escape(step.display_name)}'
                   f'</title><rect width="{node_w}" height="{node_h}" rx="6"/>'
                   f'<text x="10" y="19" class="id">{escape(label)}</text>'
                   f'<text x="10" y="36" class="sub">{escape(sub)}</text></g>')
    out.append("</svg>")
    return "\n".join(out)
