"""Fleet runs: one template for many workspaces.

Every workspace gets its own run record (history, ``dagrun resume`` and the
web page work per workspace); the runs share one executor (dagrun's thread
pool, or a Dask cluster), the template's named locks (per host, or across
the fleet: :mod:`.run.shared_locks`) and a fleet id. One workspace's failure
never stops the others. At most ``concurrency`` runs are active at once;
they start longest critical path first (learned durations where the store
has them), and on a Dask cluster every attempt carries its step's remaining
critical path as its priority.

Bad input (the template, any workspace) is one error before anything runs;
a workspace that already has an active run is reported as that workspace's
failure.
"""

from __future__ import annotations

import csv
import json
import logging
import queue
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from . import api
from .errors import DagrunError, InputError, Problem, RunConflictError, SupersededRun, TemplateError
from .run.interrupts import ctrl_c_cancels, signals_wake
from .run.result import RunResult
from .run.shared_locks import SharedLocks

log = logging.getLogger("dagrun.fleet")


@dataclass
class FleetResult:
    """What a fleet run did: a RunResult per workspace that ran, an error per
    workspace that could not start."""

    fleet_id: str
    results: dict[str, RunResult] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # workspaces that never started, and why
    duration_seconds: float = 0.0
    order: list[str] = field(default_factory=list)  # the workspaces in the order they were given

    @property
    def succeeded(self) -> list[str]:
        return [ws for ws, r in self.results.items() if r.success]

    @property
    def failed(self) -> list[str]:
        return [ws for ws, r in self.results.items() if not r.success] + list(self.errors)

    @property
    def success(self) -> bool:
        return not self.failed

    def as_dict(self) -> dict[str, Any]:
        return {"fleet_id": self.fleet_id, "success": self.success, "succeeded": self.succeeded,
                "failed": self.failed, "duration_seconds": round(self.duration_seconds, 3),
                "workspaces": {**{ws: r.as_dict() for ws, r in self.results.items()},
                               **{ws: {"status": "not_started", "error": e} for ws, e in self.errors.items()}}}


def run_fleet(template: Any, workspaces: Iterable[Mapping[str, Any]], *, database_url: str | None = None,
              concurrency: int | None = None, max_workers: int | None = None, executor: Any = None,
              variables: Mapping[str, Any] | None = None, on_event: Callable[[Any], None] | None = None,
              observers_for: Callable[[str], Iterable[Any]] | None = None, fleet_id: str | None = None,
              runner_hook: Callable[[Any], None] | None = None, **options: Any) -> FleetResult:
    """Run ``template`` for every workspace. ``concurrency``: runs at once
    (default: all); ``max_workers``: steps at once in each run; ``executor``
    as for :func:`~dagrun.run_template` (a Dask address runs every
    workspace's steps on that cluster); ``on_event`` hears every run's events
    (each names its run); ``observers_for(workspace_id)`` adds observers per
    run; ``runner_hook(runner)`` hears of each run's runner as it starts (to
    cancel them). Other options as for :func:`~dagrun.run_template`."""
    fleet_id = fleet_id or str(uuid.uuid4())
    items = [dict(ws) for ws in workspaces]
    _check_ids(items)
    locks = SharedLocks()
    prepared: list[api.PreparedRun] = []
    problems: list[Problem] = []
    for ws in items:  # everything is checked before anything runs
        try:
            run = api.prepare(template, ws, database_url=database_url, max_workers=max_workers, variables=variables,
                              executor=executor, fleet_id=fleet_id, **options)
        except TemplateError:
            raise  # the template is every workspace's: one error, as for one run
        except DagrunError as exc:
            problems.append(Problem(f"workspace {ws.get('id')}", str(exc)))
            continue
        run.shared_locks = locks
        prepared.append(run)
    if problems:
        raise InputError("\n".join(str(p) for p in problems))
    return _run_all(fleet_id, prepared, concurrency, on_event, observers_for, runner_hook)


def resume_fleet(fleet_id: str, *, database_url: str | None = None, concurrency: int | None = None,
                 on_event: Callable[[Any], None] | None = None,
                 observers_for: Callable[[str], Iterable[Any]] | None = None,
                 runner_hook: Callable[[Any], None] | None = None,
                 workspaces: Iterable[Mapping[str, Any]] | None = None, **options: Any) -> FleetResult:
    """Resume the runs of a fleet (by its whole id) that did not succeed
    (each continues its own run record); the others are left as they are.
    ``workspaces``: the fleet's workspaces as it was given them, for the
    fields of each that were not stored (a secret field read them)."""
    runs = api.list_runs(database_url=database_url, fleet=fleet_id, limit=100_000)
    if not runs:
        from .store.engine import describe_url
        raise InputError(f"no runs of fleet {fleet_id} in {describe_url(database_url or api.default_database_url())}")
    latest: dict[str, dict[str, Any]] = {}
    for run in runs:  # newest first: a workspace's latest run in the fleet
        latest.setdefault(run["workspace_id"], run)
    given = {str(ws.get("id")): ws for ws in workspaces or ()}
    locks = SharedLocks()
    prepared = []
    for run in latest.values():
        if run["status"] == "succeeded":
            continue
        try:  # a run still 'running' whose process died (a crash of the fleet) is resumed too
            resumed = api.prepare_resume(run["run_id"], database_url=database_url,
                                         workspace=given.get(str(run["workspace_id"])), **options)
        except (RunConflictError, SupersededRun):
            continue  # still running somewhere; or the workspace moved on (its newer run is resumed as itself)
        resumed.shared_locks = locks
        prepared.append(resumed)
    return _run_all(fleet_id, prepared, concurrency, on_event, observers_for, runner_hook)


def _run_all(fleet_id: str, prepared: list[api.PreparedRun], concurrency: int | None,
             on_event: Callable[[Any], None] | None, observers_for: Callable[[str], Iterable[Any]] | None,
             runner_hook: Callable[[Any], None] | None = None) -> FleetResult:
    result = FleetResult(fleet_id, order=[str(p.workspace["id"]) for p in prepared])
    started = time.perf_counter()
    # longest critical path first: with fewer slots than workspaces, the slowest start first
    prepared.sort(key=lambda p: -max(p.plan.priority.values(), default=0.0))
    lock = threading.Lock()
    runners: list[Any] = []
    stopping: list[str] = []

    def hook(runner: Any) -> None:
        runners.append(runner)
        if stopping:  # a run starting after a Ctrl-C stops at once
            runner.interrupt(stopping[0])
        if runner_hook is not None:
            runner_hook(runner)

    def stop() -> None:  # Ctrl-C, in the main thread, with Python's default handler
        stopping.append("interrupted")
        for runner in list(runners):
            runner.interrupt("interrupted")

    def one(run: api.PreparedRun) -> None:
        ws_id = str(run.workspace["id"])
        try:
            api.claim(run)
            outcome = api.execute(run, observers=list(observers_for(ws_id)) if observers_for else [],
                                  on_event=on_event, runner_hook=hook)
        except DagrunError as exc:  # another run of this workspace is active; the store refused
            with lock:
                result.errors[ws_id] = str(exc)
            return
        except Exception as exc:  # noqa: BLE001 - a bug in one workspace's run never stops the others
            log.exception("fleet %s: the run of workspace %s failed unexpectedly", fleet_id, ws_id)
            with lock:
                result.errors[ws_id] = f"{type(exc).__name__}: {exc}"
            return
        with lock:
            result.results[ws_id] = outcome

    slots = max(1, min(concurrency or len(prepared) or 1, len(prepared) or 1))
    ended: queue.SimpleQueue = queue.SimpleQueue()  # a run's future as it ends; None: a signal to handle
    with ctrl_c_cancels(stop), signals_wake(lambda: ended.put(None)), \
            ThreadPoolExecutor(slots, thread_name_prefix="dagrun-fleet") as pool:
        futures = [pool.submit(one, run) for run in prepared]
        for future in futures:
            future.add_done_callback(ended.put)
        left = len(futures)
        while left:
            if ended.get() is not None:
                left -= 1
        for future in futures:
            future.result()  # a bug in one() itself
    result.duration_seconds = time.perf_counter() - started
    return result


def _check_ids(items: list[dict[str, Any]]) -> None:
    seen: set[str] = set()
    for n, ws in enumerate(items, 1):
        if "id" not in ws or ws["id"] in (None, ""):
            raise InputError(f"workspace {n} of the fleet has no id")
        key = str(ws["id"])
        if key in seen:
            raise InputError(f"workspace id {key!r} appears twice in the fleet (each workspace runs once)")
        seen.add(key)


def read_workspaces(path: str) -> list[dict[str, Any]]:
    """Workspaces from a file: ``.jsonl`` (an object per line), ``.json`` or
    ``.yaml`` (a list of objects), ``.csv`` (a header row of field names)."""
    file = Path(path)
    try:
        text = file.read_text()
    except OSError as exc:
        raise InputError(f"cannot read the workspaces file {path}: {exc.strerror}") from None
    suffix = file.suffix.lower()
    if suffix not in (".jsonl", ".json", ".yaml", ".yml", ".csv"):
        raise InputError(f"the workspaces file {path} must be .jsonl, .json, .yaml or .csv")
    from .compile.loader import parse_text  # the bounded YAML/JSON reader templates use (no alias bombs)
    try:
        if suffix == ".jsonl":
            items = [json.loads(line) for line in text.splitlines() if line.strip()]
        elif suffix == ".csv":
            items = [{k: v for k, v in row.items() if v not in (None, "")} for row in csv.DictReader(text.splitlines())]
        else:
            items = parse_text(text, path, json_document=suffix == ".json")
        from .compile.loader import check_shape
        check_shape(items, path)  # sign-ups, a form's export: bounded as a template is, before anything reads it
    except RecursionError:  # a .jsonl line: the json module parses nesting by recursion
        raise InputError(f"the workspaces file {path} is nested too deeply") from None
    except (ValueError, TypeError) as exc:
        raise InputError(f"the workspaces file {path} is not valid {suffix[1:]}: {exc}") from None
    except TemplateError as exc:
        reason = "; ".join(p.message for p in exc.problems)
        raise InputError(f"the workspaces file {path} is not valid {suffix[1:]}: {reason}") from None
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise InputError(f"the workspaces file {path} must hold a list of workspace objects")
    if not items:
        raise InputError(f"the workspaces file {path} holds no workspaces")
    return items
