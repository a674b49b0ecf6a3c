"""Running templates with real subprocesses: parallelism, conflicts, retries,
timeouts, failures, rollback, cancel, conditions and injection."""

from __future__ import annotations

import queue
import shutil
import threading
import time

import pytest

import dagrun.run.runner
from dagrun import run_template
from dagrun.run.events import AttemptFinished, RetryScheduled, StepFinished, StepRolledBack, StepStarted
from dagrun.run.executors import SynchronousExecutor
from dagrun.run.outcome import RunStatus, StepStatus
from tests.helpers import action, pid_alive, script_step, shell_action, step, template

RENDEZVOUS = """
touch {{ config.dir }}/{{ config.me }}
for i in $(seq 200); do [ -f {{ config.dir }}/{{ config.other }} ] && exit 0; sleep 0.05; done
echo "{{ config.other }} never ran at the same time" >&2; exit 1
"""


def run(doc, workspace, *, actions=None, events=None, **options):
    options.setdefault("record", False)
    options.setdefault("sandbox", False)  # engine semantics; the sandbox has tests of its own
    return run_template(doc, workspace, actions=actions, on_event=events.append if events is not None else None,
                        **options)


def test_independent_steps_run_concurrently(workspace, tmp_path):
    """a and b each wait for the other's marker: only a parallel run finishes."""
    acts = [shell_action("meet", RENDEZVOUS, config_schema={"properties": {"me": {}, "other": {}, "dir": {}}})]
    doc = template(step(10, "meet", id="a", action_config={"me": "a", "other": "b", "dir": str(tmp_path)}),
                   step(20, "meet", id="b", action_config={"me": "b", "other": "a", "dir": str(tmp_path)}))
    result = run(doc, workspace, actions=acts, max_workers=2)
    assert result.success, result.error
    assert result.completed_actions == 2


OVERLAP_GUARD = """
mkdir {{ config.dir }}/inside || { echo "overlap detected" >&2; exit 1; }
echo "start {{ config.n }}" >> {{ config.dir }}/log
sleep 0.1
echo "end {{ config.n }}" >> {{ config.dir }}/log
rmdir {{ config.dir }}/inside
"""


@pytest.mark.parametrize("how", ["conflicts_with_actions", "lock", "step_conflicts"])
def test_conflicting_steps_never_overlap(workspace, tmp_path, how):
    fields = {"conflicts_with_actions": {"conflicts_with_actions": ["guarded"]}, "lock": {"locks": ["dpkg"]},
              "step_conflicts": {}}[how]
    acts = [shell_action("guarded", OVERLAP_GUARD, config_schema={"properties": {"n": {}, "dir": {}}}, **fields)]
    steps = [step(i, "guarded", id=f"g{i}", action_config={"n": i, "dir": str(tmp_path)},
                  **({"conflicts_with": [j for j in range(1, 5) if j != i]} if how == "step_conflicts" else {}))
             for i in range(1, 5)]
    result = run(template(*steps), workspace, actions=acts, max_workers=4)
    assert result.success, result.error
    lines = (tmp_path / "log").read_text().split()
    pairs = list(zip(lines[0::4], lines[1::4], lines[2::4], lines[3::4]))
    assert all(p[0] == "start" and p[2] == "end" and p[1] == p[3] for p in pairs)  # start n, end n, never interleaved
    assert len(pairs) == 4


def test_a_retry_wait_leaves_the_worker_free(workspace, tmp_path):
    """One worker. r fails its first attempt and waits 1 s; o runs meanwhile.
    r's second attempt succeeds only if o already ran."""
    script = ('if [ "$DAGRUN_ATTEMPT" = 1 ]; then exit 1; fi\n'
              '[ -f {{ vars.dir }}/o-ran ] || { echo "o did not run during the wait" >&2; exit 1; }')
    doc = template(script_step(10, script, id="r", max_retries=2, retry_delay_seconds=1,
                               estimated_duration_seconds=10),
                   script_step(20, "touch {{ vars.dir }}/o-ran", id="o"), vars={"dir": str(tmp_path)})
    events = []
    result = run(doc, workspace, max_workers=1, events=events)
    assert result.success, result.error
    seen = [(type(e).__name__, getattr(e, "step_id", None) or getattr(getattr(e, "outcome", None), "step_id", None))
            for e in events if isinstance(e, (StepStarted, RetryScheduled, StepFinished))]
    assert seen == [("StepStarted", "r"), ("RetryScheduled", "r"), ("StepStarted", "o"), ("StepFinished", "o"),
                    ("StepStarted", "r"), ("StepFinished", "r")]
    assert result.steps["r"].attempts == 2


def test_timeout_kills_the_whole_process_group(workspace, tmp_path):
    pidfile = tmp_path / "child.pid"
    doc = template(script_step(10, f"sleep 300 &\necho $! > {pidfile}\nsleep 300", id="slow", timeout_seconds=1))
    result = run(doc, workspace)
    assert result.steps["slow"].status is StepStatus.failed
    assert result.steps["slow"].error == "script: timed out after 1 s"
    assert not pid_alive(int(pidfile.read_text()))


def test_timeout_is_retried(workspace, tmp_path):
    script = 'if [ "$DAGRUN_ATTEMPT" = 1 ]; then sleep 30; fi'
    result = run(template(script_step(10, script, id="s", timeout_seconds=0.5, max_retries=2,
                                      retry_delay_seconds=0)), workspace)
    assert result.success and result.steps["s"].attempts == 2


def test_unkillable_python_handler_is_abandoned_at_its_deadline(workspace, monkeypatch):
    monkeypatch.setattr(dagrun.run.runner, "DEADLINE_GRACE_SECONDS", 0.2)
    acts = [action("hang", "tests.helpers:sleep_forever", timeout_seconds=0.3,
                   config_schema={"properties": {"seconds": {}}})]
    result = run(template(step(10, "hang", action_config={"seconds": 3})), workspace, actions=acts)
    assert result.steps["hang"].status is StepStatus.failed
    assert "timed out after 0.3 s (handler did not stop; abandoned)" in result.steps["hang"].error


def test_a_step_that_changed_nothing_is_not_rolled_back(workspace, tmp_path):
    """It found everything already so (changed=false): its rollback would
    remove what was there before the run (a venv, a checkout)."""
    kept, made = tmp_path / "kept", tmp_path / "made"
    kept.mkdir()
    doc = template(script_step(10, f'test -d {kept} && echo changed=false >> "$DAGRUN_OUTPUT"', id="found",
                               action_config={"rollback_script": f"rmdir {kept}"}),
                   script_step(20, f"mkdir {made}", id="made", action_config={"rollback_script": f"rmdir {made}"}),
                   script_step(30, "exit 1", id="bad", requires=["found", "made"]))
    result = run(doc, workspace)
    assert result.status is RunStatus.failed
    assert result.steps["found"].status is StepStatus.completed and result.steps["found"].changed is False
    assert result.steps["made"].status is StepStatus.rolled_back
    assert kept.is_dir() and not made.exists()


def test_rollback_in_reverse_completion_order_and_failing_rollback_does_not_stop_it(workspace, tmp_path):
    """
        a ─> b ─┐
        a ─> c ─┴─> bad (fails: critical)
    """
    log = tmp_path / "rollback.log"
    acts = [action("undoable", rollback_handler="tests.helpers:record_rollback",
                   config_schema={"properties": {"log": {}}}, default_config={"log": str(log)}),
            action("stubborn", rollback_handler="tests.helpers:failing_rollback"),
            action("fail", "tests.helpers:boom")]
    doc = template(step(10, "undoable", id="a"), step(20, "undoable", id="b", requires=["a"]),
                   step(25, "stubborn", id="s", requires=["a"]),
                   step(30, "undoable", id="c", requires=["a"]), step(40, "fail", id="bad", requires=["b", "c", "s"]))
    events = []
    result = run(doc, workspace, actions=acts, events=events)
    completed = [e.step_id for e in events if isinstance(e, StepFinished) and e.status is StepStatus.completed]
    rolled = [e.step_id for e in events if isinstance(e, StepRolledBack)]
    assert rolled == [s for s in reversed(completed)]
    assert log.read_text().split("\n")[:-1] == [f"rollback {s}" for s in reversed(completed) if s != "s"]
    assert result.status is RunStatus.failed
    assert {s: result.steps[s].status for s in "abcs"} == {
        "a": StepStatus.rolled_back, "b": StepStatus.rolled_back, "c": StepStatus.rolled_back,
        "s": StepStatus.completed}
    assert result.steps["s"].rollback_error == "cannot undo"
    assert result.error == "Critical action failed: fail (step bad): RuntimeError: boom"
    assert result.failed_action == "fail"


def test_no_rollback_when_disabled(workspace, tmp_path):
    acts = [action("undoable", rollback_handler="tests.helpers:record_rollback",
                   config_schema={"properties": {"log": {}}}, default_config={"log": str(tmp_path / "l")}),
            action("fail", "tests.helpers:boom")]
    result = run(template(step(10, "undoable", id="a"), step(20, "fail", requires=["a"]),
                          global_config={"rollback_on_failure": False}), workspace, actions=acts)
    assert result.steps["a"].status is StepStatus.completed
    assert not (tmp_path / "l").exists()


def test_critical_failure_stops_dispatch(workspace):
    acts = [action("fail", "tests.helpers:boom"), action("a")]
    result = run(template(step(10, "fail", id="bad", estimated_duration_seconds=9), step(20, "a", id="x"),
                          step(30, "a", id="y")), workspace, actions=acts, max_workers=1)
    assert result.status is RunStatus.failed
    assert [result.steps[s].status for s in ("bad", "x", "y")] == [StepStatus.failed, StepStatus.not_started,
                                                                    StepStatus.not_started]


def test_skip_on_error_skips_downstream_and_independent_branches_go_on(workspace):
    acts = [action("fail", "tests.helpers:boom"), action("a")]
    result = run(template(step(10, "fail", id="optional", skip_on_error=True),
                          step(20, "a", id="needs_it", requires=["optional"]),
                          step(30, "a", id="independent")), workspace, actions=acts)
    assert result.steps["optional"].status is StepStatus.failed
    assert result.steps["needs_it"].status is StepStatus.skipped
    assert result.steps["needs_it"].skip_reason == "upstream failed"
    assert result.steps["independent"].status is StepStatus.completed
    assert result.success and result.failed_actions == 1 and result.skipped_actions == 1


def test_validation_failure_fails_the_attempt_and_is_retried(workspace, tmp_path):
    marker = tmp_path / "m"
    doc = template(script_step(10, f"echo run >> {marker}", id="v", max_retries=3, retry_delay_seconds=0,
                               action_config={"validate_script": f'[ "$(wc -l < {marker})" -ge 2 ]'}))
    events = []
    result = run(doc, workspace, events=events)
    assert result.success
    failures = [e.outcome.error for e in events if isinstance(e, AttemptFinished) and e.outcome.error]
    assert failures == ["validation failed: validate_script: exit code 1"]
    assert result.steps["v"].attempts == 2


def test_permanent_errors_are_not_retried(workspace):
    acts = [action("perm", "tests.helpers:permanent", max_retries=5)]
    result = run(template(step(10, "perm")), workspace, actions=acts)
    assert result.steps["perm"].attempts == 1
    assert result.steps["perm"].error == "permission refused"


def test_flaky_step_succeeds_on_a_later_attempt(workspace, db_url):
    acts = [action("flaky", "tests.helpers:flaky", max_retries=3, retry_delay_seconds=0.05,
                   config_schema={"properties": {"succeed_on": {}}}, default_config={"succeed_on": 3})]
    result = run(template(step(10, "flaky")), workspace, actions=acts)
    assert result.success and result.steps["flaky"].attempts == 3
    assert result.steps["flaky"].result == {"attempt": 3}


def test_condition_false_skips_and_satisfies_dependents_and_file_exists_expands_home(workspace, home):
    (home / "present.txt").write_text("x")
    doc = template(script_step(10, "echo never", id="no_key", condition_expression="workspace.ssh_public_key IS NOT NULL"),
                   script_step(20, "echo after", id="after", requires=["no_key"]),
                   script_step(30, "echo yes", id="has_file", condition_expression="file_exists('~/present.txt')"),
                   script_step(40, "echo no", id="no_file",
                               condition_expression="file_exists('~/{{ workspace.name }}.txt')"))
    result = run(doc, workspace)
    assert result.success
    statuses = {s: r.status.value for s, r in result.steps.items()}
    assert statuses == {"no_key": "skipped", "after": "completed", "has_file": "completed", "no_file": "skipped"}
    assert result.steps["no_key"].skip_reason == "condition is false: workspace.ssh_public_key IS NOT NULL"


def test_upstream_results_flow_downstream(workspace):
    doc = template(script_step(10, 'echo "path=/srv/x y" >> "$DAGRUN_OUTPUT"', id="make"),
                   script_step(20, "echo got {{ steps.make.result.path }}", id="use", requires=["make"]))
    result = run(doc, workspace)
    assert result.steps["use"].stdout == "got /srv/x y\n"


def test_cancel_stops_dispatch_and_kills_running_groups(workspace, tmp_path):
    pidfile = tmp_path / "child.pid"
    doc = template(script_step(10, f"sleep 300 &\necho $! > {pidfile}\nwait", id="long"),
                   script_step(20, "echo later", id="later", requires=["long"]))
    holder = {}

    def cancel_when_started():
        for _ in range(400):
            if pidfile.exists() and pidfile.read_text().strip():
                holder["runner"].cancel()
                return
            time.sleep(0.025)

    threading.Thread(target=cancel_when_started, daemon=True).start()
    result = run(doc, workspace, runner_hook=lambda r: holder.update(runner=r))
    assert result.status is RunStatus.cancelled
    assert result.steps["long"].status is StepStatus.cancelled
    assert result.steps["later"].status is StepStatus.not_started
    assert not pid_alive(int(pidfile.read_text()))


def test_runs_are_deterministic_with_the_synchronous_executor(workspace):
    acts = [action("a")]
    steps = [step(i, "a", id=f"s{i}", estimated_duration_seconds=(i * 3) % 7,
                  requires=[f"s{i - 2}"] if i > 2 else []) for i in range(1, 20)]
    orders = []
    for _ in range(3):
        events = []
        run(template(*steps), workspace, actions=acts, executor=SynchronousExecutor(), events=events)
        orders.append([e.step_id for e in events if isinstance(e, StepStarted)])
    assert orders[0] == orders[1] == orders[2]
    assert len(orders[0]) == 19


def test_interpolated_config_is_validated_at_run_time(workspace):
    # (one that reads only the workspace is checked before the run: tests/test_untrusted_values.py)
    acts = [action("typed", config_schema={"type": "object", "properties": {"port": {"type": "integer"}}})]
    result = run(template(script_step(5, 'echo "name=alice" >> "$DAGRUN_OUTPUT"', id="src"),
                          step(10, "typed", requires=["src"], action_config={"port": "{{ steps.src.result.name }}"})),
                 workspace, actions=acts)
    assert result.steps["typed"].status is StepStatus.failed
    assert "invalid config after interpolation: port: 'alice' is not of type 'integer'" in result.steps["typed"].error
    assert result.steps["typed"].attempts == 1


def test_any_executor_with_submit_works(workspace):
    """An executor dagrun does not know (like a Dask client's) goes through
    futures and done-callbacks."""
    from concurrent.futures import Executor, ThreadPoolExecutor

    class Foreign(Executor):
        def __init__(self):
            self.pool = ThreadPoolExecutor(2)
            self.submitted = 0

        def submit(self, fn, /, *args, **kwargs):
            self.submitted += 1
            return self.pool.submit(fn, *args, **kwargs)

    foreign = Foreign()
    acts = [action("fail", "tests.helpers:boom")]
    result = run(template(script_step(10, "echo one", id="one"), script_step(20, "echo two", id="two"),
                          step(30, "fail", id="bad", skip_on_error=True)),
                 workspace, actions=acts, executor=foreign)
    foreign.pool.shutdown()
    assert foreign.submitted == 3
    assert result.steps["two"].stdout == "two\n" and result.steps["bad"].error == "RuntimeError: boom"


def test_check_first_skips_work_that_is_already_done(workspace, home):
    (home / "done").touch()
    doc = template(script_step(10, "echo ran > ~/ran1", id="satisfied", check_first=True,
                               action_config={"validate_script": "test -f ~/done"}),
                   script_step(20, "touch ~/done2", id="needed", check_first=True,
                               action_config={"validate_script": "test -f ~/done2"}))
    result = run(doc, workspace)
    assert result.success, result.error
    assert not (home / "ran1").exists()
    assert result.steps["satisfied"].result == {"already_satisfied": True}
    assert (home / "done2").exists() and "already_satisfied" not in result.steps["needed"].result


def test_steps_that_start_together_share_a_home_made_on_the_spot(tmp_path):
    """Found by the web tests: two first steps both made the missing home; one failed with FileExistsError."""
    home = tmp_path / "new-home"
    doc = template(*[script_step(10 + i, "true", id=f"s{i}") for i in range(8)])
    for _ in range(3):
        result = run(doc, {"id": "h", "home_dir": str(home)})
        assert result.success, result.error
        shutil.rmtree(home)


def test_cancel_tokens_wake_every_waiter_and_reach_children():
    """The cancel token a sleeping handler waits on: a wait times out with
    False; a cancel wakes every waiter at once (on the token, and on its
    children whether they waited before or after), and cancelling twice is
    harmless. No wall-clock assertion: a waiter still asleep at the join
    would leave its thread alive."""
    from dagrun.run.shell import CancelToken
    run = CancelToken()
    assert run.wait(0.01) is False
    attempt, late = run.child(), run.child()
    woken: list[bool] = []
    waiters = [threading.Thread(target=lambda t=t, s=s: woken.append(t.wait(s)), daemon=True)
               for t, s in ((run, 3600), (run, None), (attempt, 3600), (attempt, None))]  # None: until the cancel
    for waiter in waiters:
        waiter.start()
    while not (run._gate and attempt._gate and attempt._attached):
        time.sleep(0.001)  # every waiter's gate made: the cancel below reaches a sleeping wait
    time.sleep(0.05)
    run.cancel()
    run.cancel()
    for waiter in waiters:
        waiter.join(timeout=10)
    assert not any(w.is_alive() for w in waiters)
    assert woken == [True] * 4
    assert late.cancelled and late.wait(30) is True  # a child that never waited, cancelled through its parent
    assert CancelToken(CancelToken()).wait(0) is False


def test_the_worker_pool_reuses_free_threads_and_grows_only_when_all_are_busy():
    from dagrun.run.executors import WorkerPool
    pool = WorkerPool()
    done: "queue.SimpleQueue" = queue.SimpleQueue()
    for i in range(20):  # one after another: one thread does them all
        pool.run(lambda i=i: i * 2, (), lambda result, error: done.put((result, error)))
        assert done.get(timeout=10) == (i * 2, None)
    assert pool.threads == 1
    release = threading.Event()
    for _ in range(4):  # four at once, each holding its thread until released
        pool.run(release.wait, (10,), lambda result, error: done.put((result, error)))
    pool.run(lambda: 1 / 0, (), lambda result, error: done.put((result, type(error))))
    assert done.get(timeout=10) == (None, ZeroDivisionError)  # a failing task is delivered as its error
    release.set()
    assert sorted(done.get(timeout=10) for _ in range(4)) == [(True, None)] * 4
    assert pool.threads == 5  # four blocked, and the fifth task found no free thread
    for _ in range(5):
        pool.run(lambda: None, (), lambda result, error: done.put(error))
    assert [done.get(timeout=10) for _ in range(5)] == [None] * 5
    assert pool.threads == 5  # the five free threads took them: none started


def test_the_field_order_the_hot_path_builds_positionally():
    """The runner and attempt build these once per step or attempt with
    positional arguments (keywords cost four times as much): a field added
    or moved must be added there too."""
    import dataclasses
    from dagrun.run.attempt import AttemptJob
    from dagrun.run.handler_types import StepContext
    from dagrun.run.outcome import Outcome
    from dagrun.run.result import StepResult
    names = {c.__name__: [f.name for f in dataclasses.fields(c)]
             for c in (StepResult, AttemptJob, Outcome, StepContext)}
    assert names == {
        "StepResult": ["step_id", "sequence_order", "action_name", "display_name", "status", "attempts",
                       "duration_seconds", "error", "skip_reason", "result", "exit_code", "stdout", "stderr",
                       "rollback_error", "changed"],
        "AttemptJob": ["step", "workspace", "variables", "env", "home", "sudo", "user", "workspace_user", "sandbox",
                       "run_id", "check", "home_root", "adopt_users", "priority", "plain_isolation"],
        "Outcome": ["step_id", "attempt", "status", "started_at", "duration", "error", "retryable", "exit_code",
                    "stdout", "stderr", "data", "config", "timed_out", "skip_reason", "changed"],
        "StepContext": ["step_id", "action", "config", "workspace", "variables", "steps", "env", "home", "attempt",
                        "timeout", "cancel", "result", "sudo", "isolation", "run_id", "report", "deadline",
                        "adopt_users", "home_root"],
    }
