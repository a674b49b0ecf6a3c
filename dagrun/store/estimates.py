"""Durations learned from history.

Every attempt row carries a key of its step's configuration as compiled
(action name and config, secrets masked). A step's learned estimate is the
median duration of the last completed attempts with the same key (real
runs only: a ``--check`` validates and does not do the work), so ``dagrun
plan`` and the critical-path dispatch order use what the step took here
rather than the action's declared guess.
"""

from __future__ import annotations

import hashlib
import json
import statistics
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, or_, select
from sqlalchemy.orm import Session

from ..spec import MASK, Plan, StepSpec
from .models import ProvisioningRun, WorkspaceActionExecution

SAMPLES = 20  # the most recent completed attempts a learned estimate is the median of


def masked_config(step: StepSpec) -> dict[str, Any]:
    """The step's config as compiled, with its secret fields masked."""
    return {k: (MASK if k in step.secret_fields and v not in (None, "") else v) for k, v in step.config.items()}


def config_key(step: StepSpec, masked_json: str | None = None) -> str:
    text = masked_json if masked_json is not None else json.dumps(masked_config(step), default=str, sort_keys=True)
    return hashlib.sha256(f"{step.action.name}\0{text}".encode()).hexdigest()[:32]


_stored: dict[int, tuple[Any, str, str, str]] = {}


def stored_config(step: StepSpec) -> tuple[str, str]:
    """The step's masked config as JSON, and its :func:`config_key`: what
    every attempt row of the step is written with. Worked out once per
    compiled config (a kept plan runs for workspace after workspace, and a
    plan with learned estimates is a copy sharing its steps' configs), not
    once per run. Not for a step with secret fields: its config may hold a
    secret written in the template, which stays no longer than its run."""
    seen = None if step.secret_fields else _stored.get(id(step.config))
    if seen is None or seen[0] is not step.config or seen[1] != step.action.name:
        text = json.dumps(masked_config(step), default=str, sort_keys=True)
        seen = (step.config, step.action.name, text, config_key(step, text))
        if not step.secret_fields:
            if len(_stored) > 100_000:  # a service compiling ever-new templates: stay bounded
                _stored.clear()
            _stored[id(step.config)] = seen  # (holding the config keeps its id its own)
    return seen[2], seen[3]


@dataclass(frozen=True, slots=True)
class Learned:
    seconds: float
    runs: int  # how many recorded attempts the estimate is the median of


def learned_estimates(engine: Engine, plan: Plan) -> dict[str, Learned]:
    """Learned durations of the plan's steps that have a history."""
    keys = {sid: stored_config(plan.steps[sid])[1] for sid in plan.order}
    rows = WorkspaceActionExecution
    wanted = set(keys.values())
    samples: dict[str, list[float]] = {}
    with Session(engine) as session:
        query = (select(rows.config_key, rows.duration_seconds)
                 .join(ProvisioningRun, ProvisioningRun.id == rows.run_id)
                 .where(rows.config_key.in_(wanted), rows.status == "completed", rows.duration_seconds.is_not(None),
                        or_(ProvisioningRun.mode.is_(None), ProvisioningRun.mode != "check"))
                 .order_by(rows.id.desc()).limit(SAMPLES * len(wanted)))
        for key, seconds in session.execute(query):
            if len(samples.setdefault(key, [])) < SAMPLES:
                samples[key].append(seconds)
    return {sid: Learned(statistics.median(samples[key]), len(samples[key]))
            for sid, key in keys.items() if samples.get(key)}
