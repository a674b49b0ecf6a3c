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


@dataclass(frozen=True, slots=True)
class Learned:
    seconds: float
    runs: int  # how many recorded attempts the estimate is the median of


def learned_estimates(engine: Engine, plan: Plan) -> dict[str, Learned]:
    """Learned durations of the plan's steps that have a history."""
    keys = {sid: config_key(plan.steps[sid]) for sid in plan.order}
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
