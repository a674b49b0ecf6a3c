"""Crashes cost nothing already done: SIGKILL the runner at random instants,
resume, and check what the records promised.

A template with a chain, a diamond and parallel branches runs in a child
process (forked from a server that imported dagrun once, so each start is
cheap) that is killed with SIGKILL at a random instant (a seeded RNG: the
same instants every time), then resumed in a new child, killed again, and
so on (up to eight kills a run, then a resume finishes it). Each step's script logs its start and end
(with its attempt number) to a file. Over 30+ kills per database:

- no step ran again after one of its dependents had started (write-ahead);
- every completed attempt has its row, and a step completes once;
- no two executions of a step overlap (a dead run's processes are ended
  before its resume starts the step again);
- every run ends ``succeeded``.
"""

from __future__ import annotations

import multiprocessing
import random
import uuid
from pathlib import Path

from tests.helpers import script_step, template

KILLS_PER_DATABASE = 32
KILLS_PER_RUN = 8  # then a resume is let finish (p1 alone outlasts some kill instants)
STEPS = {  # id: (requires, seconds)
    "c1": ([], 0.05), "c2": (["c1"], 0.04), "c3": (["c2"], 0.06), "c4": (["c3"], 0.03),  # a chain
    "d1": ([], 0.03), "d2": (["d1"], 0.07), "d3": (["d1"], 0.04), "d4": (["d2", "d3"], 0.03),  # a diamond
    "p1": ([], 0.4), "p2": ([], 0.02), "p3": ([], 0.05),  # parallel branches
    "z": (["c4", "d4", "p1", "p2", "p3"], 0.02),
}


def crash_template(log: Path) -> dict:
    steps = []
    for n, (sid, (requires, seconds)) in enumerate(STEPS.items(), start=1):
        script = (f'echo "$DAGRUN_STEP_ID start $DAGRUN_ATTEMPT" >> {log}\n'
                  f"sleep {seconds}\n"
                  f'echo "$DAGRUN_STEP_ID end $DAGRUN_ATTEMPT" >> {log}\n')
        steps.append(script_step(n * 10, script, id=sid, requires=requires))
    return template(*steps, name="crash", global_config={"max_workers": 4})


def _run(doc: dict, workspace: dict, url: str, run_id: str) -> None:  # in the child
    from dagrun.api import run_template
    run_template(doc, workspace, database_url=url, run_id=run_id)


def _resume(url: str, run_id: str) -> None:  # in the child
    from dagrun.api import resume
    resume(run_id, database_url=url)


def _run_status(url: str, run_id: str) -> str | None:
    from dagrun.store.engine import engine_for
    from dagrun.store.models import ProvisioningRun
    from sqlalchemy.orm import Session
    with Session(engine_for(url)) as session:
        run = session.get(ProvisioningRun, run_id)
        return None if run is None else run.status


def _rows(url: str, run_id: str) -> list[tuple[str, int, str]]:
    from dagrun.store.engine import engine_for
    from dagrun.store.models import WorkspaceActionExecution as Row
    from sqlalchemy import select
    from sqlalchemy.orm import Session
    with Session(engine_for(url)) as session:
        return [(r.step_id, r.attempt_number, r.status) for r in session.scalars(
            select(Row).where(Row.run_id == run_id).order_by(Row.id))]


def _check_log(lines: list[tuple[str, str, int]]) -> None:
    starts: dict[str, list[int]] = {}
    open_attempt: dict[str, int | None] = {}
    for index, (sid, what, attempt) in enumerate(lines):
        if what == "start":
            starts.setdefault(sid, []).append(index)
            open_attempt[sid] = attempt
        else:
            assert open_attempt.get(sid) == attempt, \
                f"{sid} attempt {attempt} ended while attempt {open_attempt.get(sid)} ran: a leftover survived"
            open_attempt[sid] = None
    for sid, (requires, _) in STEPS.items():
        assert sid in starts, f"{sid} never ran"
        for upstream in requires:
            assert max(starts[upstream]) < min(starts[sid]), \
                f"{upstream} ran again after its dependent {sid} had started"


def _crash_until_done(url: str, home: Path, rng: random.Random, server: multiprocessing.context.BaseContext,
                      run_number: int) -> int:
    """One run, killed and resumed until it finishes; returns the number of kills."""
    log = home / "log"
    doc = crash_template(log)
    run_id = str(uuid.uuid4())
    workspace = {"id": f"crash-{run_number}", "home_dir": str(home)}
    kills = 0
    while True:
        status = _run_status(url, run_id)
        if status == "succeeded":
            break
        if status is None:  # killed before the run was even claimed: start it again
            child = server.Process(target=_run, args=(doc, workspace, url, run_id))
        else:
            child = server.Process(target=_resume, args=(url, run_id))
        child.start()
        child.join(timeout=rng.uniform(0.0, 0.6) if kills < KILLS_PER_RUN else 60)
        if child.is_alive():
            child.kill()
            kills += 1
        child.join()  # reaped: the dead owner is seen as dead at once
    lines = [(w[0], w[1], int(w[2])) for w in (line.split() for line in log.read_text().splitlines())]
    _check_log(lines)
    rows = _rows(url, run_id)
    ended = {(sid, int(attempt)) for sid, what, attempt in lines if what == "end"}
    for sid in STEPS:
        completed = [(s, a) for s, a, status in rows if s == sid and status == "completed"]
        assert len(completed) == 1, f"{sid} completed {len(completed)} times: {rows}"
        assert completed[0] in ended, f"{sid}'s completed attempt {completed[0][1]} never ended in the log"
    return kills


def _crash_many(url: str, tmp_path: Path) -> None:
    from dagrun.store.engine import writable
    writable(url)  # the schema, so that "no run yet" can be told apart
    server = multiprocessing.get_context("forkserver")
    server.set_forkserver_preload(["dagrun.api", "dagrun.store.recorder", "handlers"])
    rng = random.Random(20261128)
    kills = runs = 0
    while kills < KILLS_PER_DATABASE:
        home = tmp_path / f"home{runs}"
        home.mkdir()
        kills += _crash_until_done(url, home, rng, server, runs)
        runs += 1
    assert runs >= KILLS_PER_DATABASE // KILLS_PER_RUN


def test_crashes_on_sqlite_redo_nothing_done(db_url, tmp_path):
    _crash_many(db_url, tmp_path)


def test_crashes_on_postgres_redo_nothing_done(pg_url, tmp_path):
    _crash_many(pg_url, tmp_path)
