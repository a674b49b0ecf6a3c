"""The sans-I/O scheduler core: literal states, no threads, no clock."""

from __future__ import annotations

from dagrun import compile_template
from dagrun.run.outcome import StepStatus
from dagrun.run.scheduler import Failed, Retry, RunState
from tests.helpers import action, step, template

ACTIONS = [action("a"), action("b", conflicts_with_actions=["c"]), action("c"),
           action("locked", locks=[{"name": "dpkg", "capacity": 2}]),
           action("retry3", max_retries=3, retry_delay_seconds=10, exponential_backoff=True)]


def plan(*steps, **fields):
    return compile_template(template(*steps, **fields), actions=ACTIONS)


def test_dispatch_prefers_longest_remaining_path_then_sequence_order():
    """
        x(1) ─> y(5)          z(2)     w(2)
    x has the longest remaining path (6); z and w tie on 2, so sequence order decides.
    """
    p = plan(step(40, "a", id="w", estimated_duration_seconds=2),
             step(30, "a", id="z", estimated_duration_seconds=2),
             step(10, "a", id="x", estimated_duration_seconds=1),
             step(20, "a", id="y", requires=["x"], estimated_duration_seconds=5))
    state = RunState(p, max_workers=2)
    assert state.start(0.0) == [("x", 1), ("z", 1)]
    state.succeeded("z")
    assert state.start(0.0) == [("w", 1)]
    state.succeeded("x")
    assert state.start(0.0) == [("y", 1)]


def test_worker_bound_is_respected():
    p = plan(*[step(i, "a", id=f"s{i}") for i in range(1, 6)])
    state = RunState(p, max_workers=2)
    assert [s for s, _ in state.start(0)] == ["s1", "s2"]
    assert state.start(0) == []
    state.succeeded("s1")
    assert [s for s, _ in state.start(0)] == ["s3"]


def test_conflicting_steps_never_start_together_but_do_not_block_others():
    p = plan(step(10, "b", id="b1"), step(20, "c", id="c1"), step(30, "a", id="a1"))
    state = RunState(p, max_workers=3)
    assert [s for s, _ in state.start(0)] == ["b1", "a1"]
    state.succeeded("b1")
    assert [s for s, _ in state.start(0)] == ["c1"]


def test_step_level_conflicts_and_lock_capacity():
    p = plan(step(10, "locked", id="l1"), step(20, "locked", id="l2"), step(30, "locked", id="l3"),
             step(40, "a", id="x", conflicts_with=["y"]), step(50, "a", id="y"))
    state = RunState(p, max_workers=10)
    assert [s for s, _ in state.start(0)] == ["l1", "l2", "x"]
    state.succeeded("l1")
    state.succeeded("x")
    assert [s for s, _ in state.start(0)] == ["l3", "y"]


def test_retry_is_parked_without_a_worker_and_uses_backoff():
    p = plan(step(10, "retry3", id="r"), step(20, "a", id="other"))
    state = RunState(p, max_workers=1)
    assert state.start(0.0) == [("r", 1)]
    assert state.failed("r", 0.0) == Retry(due=10.0, delay=10.0)
    assert state.status["r"] is StepStatus.pending
    # the only worker is free for the other step while r waits
    assert state.start(1.0) == [("other", 1)]
    assert state.next_wakeup() == 10.0
    state.succeeded("other")
    assert state.start(9.9) == []
    assert state.start(10.0) == [("r", 2)]
    assert state.failed("r", 10.0) == Retry(due=30.0, delay=20.0)
    assert state.start(30.0) == [("r", 3)]
    assert state.failed("r", 30.0) == Failed(critical=True)
    assert state.finished


def test_non_retryable_failure_fails_at_once():
    p = plan(step(10, "retry3", id="r"))
    state = RunState(p, max_workers=1)
    state.start(0)
    assert state.failed("r", 0, retryable=False) == Failed(critical=True)
    assert state.attempts["r"] == 1


def test_skip_on_error_skips_downstream_only():
    """
        f ─> d1 ─> d2
        i
    """
    p = plan(step(10, "a", id="f", skip_on_error=True), step(20, "a", id="d1", requires=["f"]),
             step(30, "a", id="d2", requires=["d1"]), step(40, "a", id="i"))
    state = RunState(p, max_workers=4)
    assert [s for s, _ in state.start(0)] == ["f", "i"]
    assert state.failed("f", 0) == Failed(critical=False, skipped=("d1", "d2"))
    state.succeeded("i")
    assert state.start(0) == []
    assert state.finished
    assert state.status == {"f": StepStatus.failed, "d1": StepStatus.skipped, "d2": StepStatus.skipped,
                            "i": StepStatus.completed}
    assert state.skip_reason == {"d1": "upstream failed", "d2": "upstream failed"}


def test_skip_on_error_is_critical_when_non_critical_errors_do_not_continue():
    p = plan(step(10, "a", id="f", skip_on_error=True), step(20, "a", id="g"),
             global_config={"continue_on_non_critical_errors": False})
    state = RunState(p, max_workers=1)
    state.start(0)
    assert state.failed("f", 0) == Failed(critical=True)
    assert state.start(0) == []
    assert state.status["g"] is StepStatus.pending


def test_critical_failure_halts_dispatch_and_cancels_parked_retries():
    p = plan(step(10, "a", id="bad"), step(20, "retry3", id="r"), step(30, "a", id="later"))
    state = RunState(p, max_workers=2)
    assert [s for s, _ in state.start(0)] == ["bad", "r"]
    assert isinstance(state.failed("r", 0), Retry)
    assert state.failed("bad", 0) == Failed(critical=True, cancelled=("r",))
    assert state.start(100) == []
    assert state.finished
    assert state.status == {"bad": StepStatus.failed, "r": StepStatus.cancelled, "later": StepStatus.pending}


def test_condition_skip_satisfies_dependents():
    p = plan(step(10, "a", id="cond"), step(20, "a", id="after", requires=["cond"]))
    state = RunState(p, max_workers=1)
    state.start(0)
    state.skipped("cond", "condition is false")
    assert state.start(0) == [("after", 1)]


def test_phases_order_groups():
    p = plan(step(10, "a", id="post", phase="post_setup"), step(20, "a", id="pre", phase="pre_setup"),
             step(30, "a", id="m1"), step(40, "a", id="m2"))
    state = RunState(p, max_workers=4)
    assert state.start(0) == [("pre", 1)]
    state.succeeded("pre")
    assert [s for s, _ in state.start(0)] == ["m1", "m2"]
    state.succeeded("m1")
    assert state.start(0) == []
    state.succeeded("m2")
    assert state.start(0) == [("post", 1)]


def test_sequential_mode_runs_one_at_a_time_in_sequence_order():
    p = plan(step(30, "a", id="c"), step(10, "a", id="a"), step(20, "a", id="b"),
             global_config={"parallel_execution_enabled": False})
    state = RunState(p, max_workers=8)
    order = []
    while not state.finished:
        started = state.start(0)
        assert len(started) == 1
        order.append(started[0][0])
        state.succeeded(started[0][0])
    assert order == ["a", "b", "c"]


def test_resumed_state_skips_done_steps_and_continues_attempt_numbers():
    p = plan(step(10, "a", id="x"), step(20, "retry3", id="y", requires=["x"]))
    state = RunState.resumed(p, 2, done={"x": StepStatus.completed}, attempts={"y": 3})
    assert state.start(0) == [("y", 4)]


def test_dispatch_is_deterministic():
    steps = [step(i, "a", id=f"s{i}", estimated_duration_seconds=(i * 7) % 5,
                  requires=[f"s{i - 3}"] if i > 3 else []) for i in range(1, 30)]
    runs = []
    for _ in range(3):
        state = RunState(plan(*steps), max_workers=3)
        order = []
        while not state.finished:
            started = state.start(0)
            order += started
            for sid, _ in started[:1]:
                state.succeeded(sid)
            for sid, _ in started[1:]:
                state.succeeded(sid)
        runs.append(order)
    assert runs[0] == runs[1] == runs[2]
    assert len(runs[0]) == 29


def test_retry_delay_policy_backoff_cap_and_jitter():
    import random

    from dagrun.spec import RetryPolicy
    policy = RetryPolicy(max_attempts=6, delay_seconds=5, exponential_backoff=True, max_delay_seconds=30)
    assert [policy.delay_after(n) for n in range(1, 6)] == [5, 10, 20, 30, 30]
    assert RetryPolicy(delay_seconds=5, exponential_backoff=False).delay_after(4) == 5
    jittered = RetryPolicy(delay_seconds=8, jitter=True)
    delays = [jittered.delay_after(2, random.Random(1)) for _ in range(3)]
    assert delays[0] == delays[1] == delays[2] and 0 <= delays[0] <= 16  # seeded: reproducible


def test_a_held_completion_holds_its_dependents_until_its_record_is_durable():
    """
        a ─┐
           ├─> c        b is still running when a finishes: committing a's
        b ─┘            record is not urgent yet; once b finishes too, c waits only for records.
    """
    p = plan(step(10, "a", id="a"), step(20, "a", id="b"), step(30, "a", id="c", requires=["a", "b"]))
    state = RunState(p, max_workers=4)
    assert state.start(0) == [("a", 1), ("b", 1)]
    state.succeeded("a", hold=True)
    assert state.awaiting_records == {"a"} and not state.waiting_for_records
    state.succeeded("b", hold=True)
    assert state.waiting_for_records and state.start(0) == []
    state.durable(["a"])
    assert state.waiting_for_records and state.start(0) == []  # b's record is still missing
    state.durable(["b"])
    assert not state.waiting_for_records and state.start(0) == [("c", 1)]


def test_records_are_urgent_when_nothing_else_can_happen():
    """a's dependent c also needs b, which failed for good: nothing will start,
    but the run cannot finish before a's record is committed either."""
    p = plan(step(10, "a", id="a"), step(20, "a", id="b", skip_on_error=True),
             step(30, "a", id="c", requires=["a", "b"]), global_config={"continue_on_non_critical_errors": True})
    state = RunState(p, max_workers=4)
    state.start(0)
    state.succeeded("a", hold=True)
    assert state.failed("b", 0, retryable=False) == Failed(critical=False, skipped=("c",))
    assert state.waiting_for_records and not state.finished
    state.durable(["a"])
    assert not state.waiting_for_records
