"""DAG shapes shared by the benchmarks, as dagrun templates and as plain
dependency mappings (for the baselines). Random shapes use a fixed seed."""

from __future__ import annotations

import random
from typing import Any


def chain(n: int) -> dict[str, list[str]]:
    return {f"s{i}": ([f"s{i - 1}"] if i else []) for i in range(n)}


def wide(n: int) -> dict[str, list[str]]:
    return {f"s{i}": [] for i in range(n)}


def fan_out_in(n: int) -> dict[str, list[str]]:
    deps = {"source": []}
    deps.update({f"s{i}": ["source"] for i in range(n - 2)})
    deps["sink"] = [f"s{i}" for i in range(n - 2)]
    return deps


def layered(n: int, layers: int, *, seed: int = 42, max_parents: int = 3) -> dict[str, list[str]]:
    """``layers`` levels of n/layers steps; each step depends on 1..max_parents
    random steps of the level above (so every level is a wave)."""
    rng = random.Random(seed)
    per = n // layers
    deps: dict[str, list[str]] = {}
    previous: list[str] = []
    for layer in range(layers):
        current = [f"l{layer}_{i}" for i in range(per)]
        for name in current:
            deps[name] = sorted(rng.sample(previous, rng.randint(1, min(max_parents, len(previous))))) if previous else []
        previous = current
    return deps


def to_template(deps: dict[str, list[str]], action: str = "noop", config: dict[str, Any] | None = None,
                name: str = "bench") -> dict[str, Any]:
    steps = []
    for i, (sid, parents) in enumerate(deps.items()):
        step: dict[str, Any] = {"sequence_order": i + 1, "id": sid, "action_name": action}
        if parents:
            step["requires"] = parents
        if config:
            step["action_config"] = config
        steps.append(step)
    return {"name": name, "version": "1", "actions": steps,
            "global_config": {"rollback_on_failure": False}}


def critical_path_length(deps: dict[str, list[str]]) -> int:
    depth: dict[str, int] = {}
    for sid, parents in deps.items():  # insertion order is topological for our shapes
        depth[sid] = 1 + max((depth[p] for p in parents), default=0)
    return max(depth.values())
