"""Records: every run and attempt lands in the database, on SQLite and on
the machine's real PostgreSQL, streamed while the run goes on."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from dagrun import run_template as _run_template
from dagrun.store.engine import normalize_url
from dagrun.store.models import ProvisioningRun, TemplateAction, WorkspaceActionExecution
from tests.helpers import action, script_step, step, template


def run_template(*args, **kwargs):
    """User-defined actions here stand in for steps that fail, flake or say something: what is
    tested is not the sandbox (tests/test_containment.py), so they run unconfined."""
    kwargs.setdefault("sandbox", False)
    return _run_template(*args, **kwargs)


def rows(url, run_id):
    """Read back through a connection of its own (dagrun's tables are in the dagrun schema on PostgreSQL)."""
    options = {"execution_options": {"schema_translate_map": {None: "dagrun"}}} if url.startswith("postgres") else {}
    engine = create_engine(normalize_url(url), **options)
    try:
        with Session(engine) as s:
            run = s.get(ProvisioningRun, run_id)
            attempts = s.scalars(select(WorkspaceActionExecution).where(WorkspaceActionExecution.run_id == run_id)
                                 .order_by(WorkspaceActionExecution.step_id,
                                           WorkspaceActionExecution.attempt_number)).all()
            actions = {a.id: a.name for a in s.scalars(select(TemplateAction)).all()}
            return run, attempts, actions
    finally:
        engine.dispose()


def _retry_template():
    acts = [action("flaky", "tests.helpers:flaky", max_retries=2, retry_delay_seconds=0.05,
                   config_schema={"properties": {"succeed_on": {}}}, default_config={"succeed_on": 2}),
            action("fail", "tests.helpers:boom")]
    doc = template(step(10, "flaky", id="flaky"),
                   script_step(20, "echo {{ workspace.name }}", id="echo"),
                   step(30, "fail", id="optional", skip_on_error=True),
                   step(40, "flaky", id="after_optional", requires=["optional"]))
    return doc, acts


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_every_attempt_is_recorded(store, request, workspace):
    url = request.getfixturevalue("db_url" if store == "sqlite" else "pg_url")
    doc, acts = _retry_template()
    result = run_template(doc, workspace, database_url=url, actions=acts)
    assert result.database_url == url and result.error is None
    run, attempts, actions = rows(url, result.run_id)
    assert (run.status, run.total_steps, run.completed_steps, run.failed_steps, run.skipped_steps) == (
        "succeeded", 4, 2, 1, 1)
    assert run.template_snapshot["name"] == "t" and run.completed_at is not None
    got = [(a.step_id, a.attempt_number, a.status, a.workspace_id, actions[a.action_id]) for a in attempts]
    assert got == [("after_optional", 0, "skipped", "ws1", "flaky"),
                   ("echo", 1, "completed", "ws1", "execute_custom_script"),
                   ("flaky", 1, "failed", "ws1", "flaky"),
                   ("flaky", 2, "completed", "ws1", "flaky"),
                   ("optional", 1, "failed", "ws1", "fail")]
    first = attempts[2]
    assert first.next_retry_at is not None and first.error_message == "attempt 1 fails on purpose"
    assert first.max_retries == 2
    echo = attempts[1]
    assert echo.execution_output == "alice\n" and echo.exit_code == 0
    assert echo.action_config["script"] == "echo alice"  # the interpolated config that ran
    assert attempts[0].error_message == "upstream failed"


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_attempt_rows_stream_while_the_run_goes_on(store, request, workspace, tmp_path):
    """The step waits for a file; meanwhile another connection sees it running."""
    url = request.getfixturevalue("db_url" if store == "sqlite" else "pg_url")
    gate = tmp_path / "gate"
    doc = template(script_step(10, "echo quick", id="quick"),
                   script_step(20, f"for i in $(seq 400); do [ -f {gate} ] && exit 0; sleep 0.05; done; exit 1",
                               id="waiting", requires=["quick"]))
    seen = {}

    def watch():
        options = {"execution_options": {"schema_translate_map": {None: "dagrun"}}} if url.startswith("postgres") \
            else {}
        engine = create_engine(normalize_url(url), **options)
        try:
            for _ in range(400):
                try:
                    with Session(engine) as s:
                        found = {(a.step_id, a.status) for a in s.scalars(select(WorkspaceActionExecution)).all()}
                except SQLAlchemyError:  # the run has not created the tables yet
                    found = set()
                if ("waiting", "running") in found:
                    seen["rows"] = found
                    break
                time.sleep(0.05)
        finally:
            engine.dispose()
            gate.touch()

    watcher = threading.Thread(target=watch)
    watcher.start()
    result = run_template(doc, workspace, database_url=url)
    watcher.join()
    assert result.success
    assert seen["rows"] == {("quick", "completed"), ("waiting", "running")}


TRICKY = "it's \"quoted\" \\ back\\slash %s %(x)s $1 ?; DROP TABLE x; -- \U0001F680 \u00e9\ttab \u2028 {\"k\": [1]}\nnext"


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_attempt_rows_keep_every_value_as_it_was(store, request, workspace):
    """Quotes, backslashes, placeholders, SQL, JSON and non-ASCII text, in an
    attempt row written whole (it starts and ends within one commit) and in
    one updated later (a step that outlasts the recorder's batch window);
    times to the microsecond."""
    url = request.getfixturevalue("db_url" if store == "sqlite" else "pg_url")
    acts = [action("echo", "tests.helpers:echo_config", config_schema={"properties": {"text": {"type": "string"}}})]
    doc = template(step(10, "echo", id="quick", action_config={"text": TRICKY}),
                   script_step(20, "sleep 0.3; printf '%s' {{ vars.t }}", id="slow", requires=["quick"]),
                   vars={"t": TRICKY})
    events = []
    result = run_template(doc, workspace, database_url=url, actions=acts, on_event=events.append)
    assert result.success, result.error
    run, attempts, _ = rows(url, result.run_id)
    quick, slow = sorted(attempts, key=lambda a: a.step_id)
    assert quick.result_data["config"] == {"text": TRICKY} and quick.action_config == {"text": TRICKY}
    assert slow.execution_output == TRICKY and slow.exit_code == 0 and slow.status == "completed"
    assert quick.error_message is None and quick.next_retry_at is None
    outcomes = {e.outcome.step_id: e.outcome for e in events if type(e).__name__ == "AttemptFinished"}
    starts = {e.step_id: e.time for e in events if type(e).__name__ == "StepStarted"}
    for row in (quick, slow):
        assert row.changed is outcomes[row.step_id].changed
        outcome = outcomes[row.step_id]
        assert abs(row.started_at.timestamp() - starts[row.step_id]) < 2e-6
        assert abs(row.completed_at.timestamp() - (outcome.started_at + outcome.duration)) < 2e-6
    assert slow.duration_seconds >= 0.3 and slow.updated_at >= slow.created_at


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_what_a_handler_reports_is_stored_even_when_no_column_takes_it_as_it_is(store, request, workspace):
    """A bool exit code, a "changed" that is no bool, NaN, a tuple key, an
    integer too long to print, lone surrogates and NULs: the records are
    stored (cleaned), never journalled (a run whose records are journalled
    cannot be resumed until they are replayed, and these never would be),
    and the writer goes on. Written whole and updated later alike."""
    url = request.getfixturevalue("db_url" if store == "sqlite" else "pg_url")
    acts = [action("odd", "tests.helpers:odd_result", config_schema={"properties": {"wait": {"type": "number"}}})]
    doc = template(step(10, "odd", id="whole"), step(20, "odd", id="updated", action_config={"wait": 0.3}))
    result = run_template(doc, workspace, database_url=url, actions=acts)
    assert result.success and result.error is None, result.error
    _, attempts, _ = rows(url, result.run_id)
    assert [a.step_id for a in attempts] == ["updated", "whole"]
    for row in attempts:
        assert row.status == "completed" and row.exit_code is None and row.changed is None
        assert row.execution_output == "lone \ufffd surrogate, NUL \ufffd end"
        assert row.result_data == {"(1, 2)": "tuple key", "nan": None, "inf": None,
                                   "big": "(an integer too long to store)", "lone": "\ufffd", "set": [3],
                                   "ok": "fine"}


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_attempt_times_are_stored_to_the_microsecond_as_datetime_reads_them(store, request):
    """Both stores say the same time for the same epoch float (PostgreSQL's
    to_timestamp rounds some of them the other way), in statements of a
    bounded size (2,500 rows: three on PostgreSQL)."""
    import random
    from datetime import datetime, timezone

    from dagrun.store.engine import writable
    from dagrun.store.operations import apply_operations
    from dagrun.store.runs import claim
    url = request.getfixturevalue("db_url" if store == "sqlite" else "pg_url")
    engine = writable(url)
    claim(engine, run_id="times", workspace_id="w", fields={"template_name": "t", "template_version": "1"})
    rng = random.Random(7)
    epochs = [rng.uniform(1.7e9, 1.9e9) for _ in range(2500)]
    apply_operations(engine, [{"op": "insert", "row": {
        "run_id": "times", "workspace_id": "w", "step_id": f"s{i}", "action_name": "noop", "attempt_number": 1,
        "max_retries": 1, "status": "completed", "started_at": t, "completed_at": t + 0.5}}
        for i, t in enumerate(epochs)], {})
    _, attempts, _ = rows(url, "times")
    stored = {a.step_id: (a.started_at, a.completed_at) for a in attempts}
    assert len(stored) == 2500
    utc = timezone.utc
    for i, t in enumerate(epochs):
        started, completed = stored[f"s{i}"]
        assert started.replace(tzinfo=utc) == datetime.fromtimestamp(t, utc)
        assert completed.replace(tzinfo=utc) == datetime.fromtimestamp(t + 0.5, utc)


def test_postgresql_statements_are_bounded_by_size_too(pg_url, monkeypatch):
    """Rows go in statements of at most a thousand rows or a few MB of text:
    here 100 characters a statement, so each row of 60 goes alone."""
    from dagrun.store import operations
    from dagrun.store.engine import writable
    from dagrun.store.runs import claim
    monkeypatch.setattr(operations, "_PG_CHUNK_BYTES", 100)
    assert len(list(operations._pg_chunks([{"execution_output": "x" * 60}] * 3))) == 3
    engine = writable(pg_url)
    claim(engine, run_id="sized", workspace_id="w", fields={"template_name": "t", "template_version": "1"})
    operations.apply_operations(engine, [{"op": "insert", "row": {
        "run_id": "sized", "workspace_id": "w", "step_id": f"s{i}", "action_name": "noop", "attempt_number": 1,
        "max_retries": 1, "status": "completed", "execution_output": f"{i:02d}" * 30}} for i in range(5)], {})
    _, attempts, _ = rows(pg_url, "sized")
    assert sorted(a.execution_output for a in attempts) == [f"{i:02d}" * 30 for i in range(5)]


def test_bad_database_url_is_one_clear_error(workspace):
    from dagrun.errors import InputError
    with pytest.raises(InputError) as exc:
        run_template(template(script_step(10, "true")), workspace, database_url="nosuchdb://x")
    assert "bad database URL" in str(exc.value)


def test_a_mistyped_sqlite_path_is_one_clear_error_not_a_new_tree_of_folders(workspace, tmp_path):
    from dagrun.errors import StoreError
    with pytest.raises(StoreError, match=f"cannot open database {tmp_path}/typo/dir/x.db: there is no folder "
                                         f"{tmp_path}/typo"):
        run_template(template(script_step(10, "true")), workspace, database_url=f"sqlite:///{tmp_path}/typo/dir/x.db")
    assert not (tmp_path / "typo").exists()
    # one new folder for the file is made (0700), as for dagrun's own data folder
    assert run_template(template(script_step(10, "true")), workspace,
                        database_url=f"sqlite:///{tmp_path}/new/x.db").success
    assert (tmp_path / "new" / "x.db").is_file()


def test_secret_config_values_are_masked_in_records_and_results(workspace, db_url):
    acts = [{"name": "login", "action_type": "shell", "max_retries": 1,
             "execution_handler": 'echo "connecting with {{ config.password }}"; echo "bad {{ config.password }}" >&2; exit 1',
             "config_schema": {"type": "object", "properties": {"user": {"type": "string"},
                                                                 "password": {"type": "string", "x-secret": True}}}}]
    doc = template(step(10, "login", action_config={"user": "bob", "password": "hunter2-{{ workspace.id }}"}))
    result = run_template(doc, workspace, database_url=db_url, actions=acts)
    s = result.steps["login"]
    assert "hunter2" not in s.stdout + s.stderr + s.error
    assert s.stdout == "connecting with ********\n"
    _, attempts, _ = rows(db_url, result.run_id)
    row = attempts[0]
    assert row.action_config == {"user": "bob", "password": "********"}
    assert "hunter2" not in (row.execution_output or "") + (row.error_message or "")


def _stored(db_url, run_id):
    import json as jsonlib
    run, attempts, _ = rows(db_url, run_id)
    return run, jsonlib.dumps([run.variables, run.workspace, run.error, run.template_snapshot] + [
        [a.execution_output, a.error_message, a.action_config, a.result_data] for a in attempts], default=str)


LOGIN = {"name": "login", "action_type": "shell", "max_retries": 1,
         "execution_handler": 'echo "{{ config.url }}" > ~/url; echo logged in',
         "config_schema": {"type": "object", "properties": {"url": {"type": "string", "x-secret": True}}}}


def test_a_secret_made_by_an_earlier_step_is_masked_in_that_steps_records_too(workspace, home, db_url):
    """gen's own output and result hold what becomes login's secret: masked
    from gen's record on, while login still gets the real value (helper-30)."""
    doc = template(script_step(10, 'pw=Gen3rated-Pw-$((700 + 71)); echo "made $pw"; echo "pw=$pw" >> "$DAGRUN_OUTPUT"',
                               id="gen"),
                   step(20, "login", requires=["gen"], action_config={"url": "pg://app:{{ steps.gen.result.pw }}@db/x"}))
    result = run_template(doc, workspace, database_url=db_url, actions=[LOGIN])
    assert result.success, result.error
    assert (home / "url").read_text() == "pg://app:Gen3rated-Pw-771@db/x\n"
    assert result.steps["gen"].stdout == "made ********\n" and result.steps["gen"].result == {"pw": "********"}
    assert "Gen3rated-Pw-771" not in _stored(db_url, result.run_id)[1]


def test_a_variable_that_is_part_of_a_secret_is_one(workspace, home, db_url):
    """(helper-30) postgresql://u:{{ vars.pw }}@h: the variable alone, in an
    error or a script's output, is masked, and it is not stored."""
    doc = template(step(10, "login", action_config={"url": "pg://app:{{ vars.pw }}@db/x"}),
                   script_step(20, 'echo "using {{ vars.pw }}"; exit 3', id="show", requires=["login"]), vars={"pw": ""})
    result = run_template(doc, workspace, database_url=db_url, actions=[LOGIN], variables={"pw": "Adm1n-Passw0rd"})
    assert (home / "url").read_text() == "pg://app:Adm1n-Passw0rd@db/x\n"
    assert result.steps["show"].stdout == "using ********\n"
    run, stored = _stored(db_url, result.run_id)
    assert "Adm1n-Passw0rd" not in stored and "pw" in run.secret_names and "pw" not in (run.variables or {})


def test_a_secret_default_written_in_the_template_is_not_stored_with_the_run(workspace, home, db_url):
    """(helper-30) vars: {pw: ...} read by a secret field was in every run's
    snapshot; masked now, and a resume is given it again."""
    from dagrun import resume
    from dagrun.errors import InputError
    gate = home / "gate"
    doc = template(step(10, "login", action_config={"url": "pg://app:{{ vars.pw }}@db/x"}),
                   script_step(20, f"test -f {gate}", id="gated", requires=["login"]), vars={"pw": "Def4ult-Pw"})
    result = run_template(doc, workspace, database_url=db_url, actions=[LOGIN])
    run, stored = _stored(db_url, result.run_id)
    assert "Def4ult-Pw" not in stored and run.template_snapshot["vars"] == {"pw": "********"} and "pw" in run.secret_names
    gate.touch()
    with pytest.raises(InputError, match="secrets that are not stored: pw"):
        resume(result.run_id, database_url=db_url, actions=[LOGIN], sandbox=False)
    assert resume(result.run_id, database_url=db_url, actions=[LOGIN], sandbox=False, secrets={"pw": "Def4ult-Pw"}).success
    assert (home / "url").read_text() == "pg://app:Def4ult-Pw@db/x\n"


def test_a_secrets_parts_from_the_workspace_and_nested_variables_and_whole_result_reads(workspace, home, db_url):
    """(helper-32) postgresql://u:{{ workspace.db_password }}@h, {{ vars.creds.pw }},
    and steps.gen.result.get('pw') were masked only as the whole field."""
    doc = template(script_step(5, 'echo "pw=Gen-$((40 + 2))-Secret" >> "$DAGRUN_OUTPUT"', id="gen"),
                   step(10, "login", requires=["gen"], action_config={
                       "url": "pg://{{ workspace.db_password }}:{{ vars.creds.pw }}@db/{{ steps.gen.result.get('pw') }}"}),
                   script_step(20, 'echo "{{ workspace.db_password }} {{ vars.creds.pw }} '
                                   '{{ steps.gen.result.pw }} {{ workspace.name }}"', id="show", requires=["login"]),
                   vars={"creds": {}})
    result = run_template(doc, {**workspace, "db_password": "Ws-Passw0rd"}, database_url=db_url, actions=[LOGIN],
                          variables={"creds": {"pw": "Nested-Pw9"}})
    assert result.success, result.error
    assert (home / "url").read_text() == "pg://Ws-Passw0rd:Nested-Pw9@db/Gen-42-Secret\n"
    assert result.steps["show"].stdout == "******** ******** ******** alice\n"
    stored = _stored(db_url, result.run_id)[1]
    assert not {"Ws-Passw0rd", "Nested-Pw9", "Gen-42-Secret"} & {w for w in ("Ws-Passw0rd", "Nested-Pw9",
                                                                            "Gen-42-Secret") if w in stored}


def test_a_secret_field_reading_a_result_two_ways_masks_all_of_it(workspace, home, db_url):
    """(helper-33) steps.a.result.user with steps.a.result.get('pass')."""
    doc = template(script_step(5, 'echo "user=appuser1" >> "$DAGRUN_OUTPUT"; echo "pass=Hunter$((20 + 2))Secret" >> "$DAGRUN_OUTPUT"',
                               id="a"),
                   step(10, "login", requires=["a"], action_config={
                       "url": "pg://{{ steps.a.result.user }}:{{ steps.a.result.get('pass') }}@db"}))
    result = run_template(doc, workspace, database_url=db_url, actions=[LOGIN])
    assert result.success and (home / "url").read_text() == "pg://appuser1:Hunter22Secret@db\n"
    assert "Hunter22Secret" not in _stored(db_url, result.run_id)[1]


def test_a_secret_written_in_steps_without_ids_is_given_back_to_each(workspace, home, db_url):
    """(helper-33) store_token_10.token and store_token_20.token: the resume
    matched neither, and ran with ********."""
    from dagrun import resume
    gate = home / "gate"
    doc = template(step(10, "login", action_config={"url": "pg://a:First-Secret@db"}),
                   step(20, "login", action_config={"url": "pg://b:Second-Secret@db"}),
                   script_step(30, f"test -f {gate} && cat ~/url", id="check", requires=["login_10", "login_20"]))
    failed = run_template(doc, workspace, database_url=db_url, actions=[LOGIN])
    gate.touch()
    again = resume(failed.run_id, database_url=db_url, actions=[LOGIN], sandbox=False, from_step="login_20",
                   secrets={"login_10.url": "pg://a:First-Secret@db", "login_20.url": "pg://b:Second-Secret@db"})
    assert again.success and (home / "url").read_text() == "pg://b:Second-Secret@db\n"


def test_only_what_a_secret_field_reads_may_be_given_again(workspace, home, db_url):
    """(helper-34) A field whose value equals a secret was stored masked and
    became resumable (workspace.name -> ../other/home at resume); a variable
    named s.script replaced step s's script; a variable named host could not
    be given again."""
    from dagrun import resume
    from dagrun.errors import InputError
    doc = template(step(10, "login", action_config={"url": "pg://app:{{ vars.db_password }}@{{ vars.host }}/x"}),
                   script_step(20, "mkdir -p ~/{{ workspace.name }}", id="s", requires=["login"]),
                   vars={"db_password": "", "host": ""})
    with pytest.raises(InputError, match="workspace.name holds a secret's value .* but is no secret itself"):
        run_template(doc, {**workspace, "name": "projAlpha"}, database_url=db_url, actions=[LOGIN],
                     variables={"db_password": "projAlpha", "host": "db1.internal"})
    with pytest.raises(InputError, match="variable names are identifiers .* not 's.script'"):
        run_template(template(script_step(10, "true", id="s"), vars={"s.script": ""}), workspace, database_url=db_url)
    gate = home / "gate"
    doc["actions"][1]["action_config"]["script"] = f"test -f {gate}"
    failed = run_template(doc, workspace, database_url=db_url, actions=[LOGIN],
                          variables={"db_password": "S3cret-Passw0rd", "host": "db1.internal"})
    gate.touch()
    again = resume(failed.run_id, database_url=db_url, actions=[LOGIN], sandbox=False,
                   secrets={"db_password": "S3cret-Passw0rd", "host": "db1.internal"})
    assert again.success and (home / "url").read_text() == "pg://app:S3cret-Passw0rd@db1.internal/x\n"


def test_what_a_secret_field_reads_is_given_again_only_as_it_was(workspace, home, db_url):
    """A variable, a variable's default or a workspace field that a secret
    field reads is not stored, so a resume is given it again: it must be the
    value the run started with (a salted digest is kept), through later
    resumes too. A resume never changes the run's inputs: here the host is
    read by the deploy script as well. A secret given as one may differ (a
    password rotated since)."""
    from dagrun import resume
    from dagrun.errors import InputError
    gate = home / "gate"
    doc = template(step(10, "login", action_config={
                       "url": "pg://{{ workspace.db_user }}:{{ vars.pw }}@{{ vars.host }}/{{ vars.db }}"}),
                   script_step(20, f'test -f {gate} && echo "deploy to {{{{ vars.host }}}}" > ~/deployed', id="deploy",
                               requires=["login"]),
                   vars={"pw": "", "host": "", "db": "Default-Db-Name"})
    failed = run_template(doc, {**workspace, "db_user": "appUser77"}, database_url=db_url, actions=[LOGIN],
                          variables={"pw": "S3cret-Passw0rd", "host": "db1.internal"}, secrets={"token": "Tok-1"})
    assert not failed.success
    given = {"pw": "S3cret-Passw0rd", "host": "db1.internal", "db": "Default-Db-Name",
             "workspace.db_user": "appUser77", "token": "Tok-1"}
    for name, other in [("host", "evil.example"), ("pw", "S3cret-Passw0rd "), ("db", "other"),
                        ("workspace.db_user", "root")]:
        with pytest.raises(InputError, match=f"the value given again for {name} is not the one the run started "
                                             "with .a secret field reads it"):
            resume(failed.run_id, database_url=db_url, actions=[LOGIN], sandbox=False,
                   secrets={**given, name: other})
    assert not (home / "deployed").exists()
    gate.touch()
    again = resume(failed.run_id, database_url=db_url, actions=[LOGIN], sandbox=False,
                   secrets={**given, "token": "Rotated-Tok-2"})
    assert again.success and (home / "deployed").read_text() == "deploy to db1.internal\n"
    assert (home / "url").read_text() == "pg://appUser77:S3cret-Passw0rd@db1.internal/Default-Db-Name\n"
    with Session(create_engine(normalize_url(db_url))) as session:
        stored = str(session.get(ProvisioningRun, again.run_id).secret_digests)
    assert "db1.internal" not in stored and "S3cret" not in stored
    # The resumed run keeps the digests: a resume of it is checked as well.
    with Session(create_engine(normalize_url(db_url))) as session:
        session.get(ProvisioningRun, again.run_id).status = "failed"
        session.commit()
    with pytest.raises(InputError, match="the value given again for host is not"):
        resume(again.run_id, database_url=db_url, actions=[LOGIN], sandbox=False, from_step="deploy",
               secrets={**given, "host": "evil.example"})


def test_what_a_resume_is_given_again_is_what_runs(workspace, home, db_url):
    """(helper-44) A workspace field given again ran as ******** (the stored,
    masked one was used); a secret given as one over a default got the
    default's digest (the real secret refused, the default taken); a name
    given both as a variable and as a secret; a number given again as text
    (the CLI's --secret); a mapping variable over its default (merged key by
    key by the compiler, replaced whole by the runner)."""
    from dagrun import resume
    from dagrun.errors import InputError
    gate = home / "gate"
    gated = script_step(20, f"test -f {gate}", id="gate", requires=["login"])
    # a workspace field, short or long, given again is the one that runs
    doc = template(step(10, "login", action_config={"url": "pg://{{ workspace.db_user }}:{{ workspace.db_pw }}@db"}),
                   gated)
    failed = run_template(doc, {**workspace, "db_user": "appUser77", "db_pw": "pw1"}, database_url=db_url,
                          actions=[LOGIN])
    run, stored = _stored(db_url, failed.run_id)
    assert run.workspace["db_pw"] == run.workspace["db_user"] == "********" and '"pw1"' not in stored
    gate.touch()
    again = resume(failed.run_id, database_url=db_url, actions=[LOGIN], sandbox=False, from_step="login",
                   secrets={"workspace.db_user": "appUser77", "workspace.db_pw": "pw1"})
    assert again.success and (home / "url").read_text() == "pg://appUser77:pw1@db\n"
    gate.unlink()
    # a secret given as one may differ at resume, whatever the template's default
    doc = template(step(10, "login", action_config={"url": "pg://app:{{ vars.pw }}@db"}), gated,
                   vars={"pw": "Default-Pw-123"})
    failed = run_template(doc, workspace, database_url=db_url, actions=[LOGIN], secrets={"pw": "Real-Secret-99"})
    assert (home / "url").read_text() == "pg://app:Real-Secret-99@db\n"
    gate.touch()
    again = resume(failed.run_id, database_url=db_url, actions=[LOGIN], sandbox=False, from_step="login",
                   secrets={"pw": "Rotated-Secret-100"})
    assert again.success and (home / "url").read_text() == "pg://app:Rotated-Secret-100@db\n"
    gate.unlink()
    with pytest.raises(InputError, match="pw given both as a variable and as a secret"):
        run_template(doc, workspace, database_url=db_url, actions=[LOGIN], variables={"pw": "a"},
                     secrets={"pw": "b"})
    # a number (or a mapping merged over its default) given again as it was
    doc = template(step(10, "login", action_config={
                       "url": "pg://{{ vars.db.user }}:{{ vars.db.password }}@db:{{ vars.port }}"}), gated,
                   vars={"port": 5432, "db": {"user": "app", "password": ""}})
    failed = run_template(doc, workspace, database_url=db_url, actions=[LOGIN],
                          variables={"port": 6543, "db": {"password": "Db-Passw0rd"}})
    assert (home / "url").read_text() == "pg://app:Db-Passw0rd@db:6543\n"
    gate.touch()
    with pytest.raises(InputError, match="the value given again for port is not"):
        resume(failed.run_id, database_url=db_url, actions=[LOGIN], sandbox=False, from_step="login",
               secrets={"port": "6544", "db": {"user": "app", "password": "Db-Passw0rd"}})
    again = resume(failed.run_id, database_url=db_url, actions=[LOGIN], sandbox=False, from_step="login",
                   secrets={"port": "6543", "db": {"user": "app", "password": "Db-Passw0rd"}})
    assert again.success and (home / "url").read_text() == "pg://app:Db-Passw0rd@db:6543\n"


def test_a_resume_takes_back_what_it_is_given_as_the_run_used_it(workspace, home, db_url):
    """(helper-47) A secret mapping given over its default lost the
    default's other keys at resume (the whole default was masked); a run
    kept no digest of what it was given again (an older dagrun's) took any
    value; a stored field holding part of a value given again made the
    resume's claim refuse it for good; a mapping given again as text (the
    page, --secret) or in part over its default was refused; text given
    again is read as YAML within bounds; a secret's name with a dot.
    (helper-48) A secret mapping merged over its default let a resume change
    the default's parts (host: attacker.example) or could not be resumed: a
    secret mapping is given whole over a mapping default, at the start and
    at resume (as text too)."""
    from dagrun import resume
    from dagrun.errors import InputError
    gate = home / "gate"
    gated = script_step(20, f'test -f {gate} && echo "deploy to {{{{ vars.db.host }}}}" > ~/deployed', id="deploy",
                        requires=["login"])
    doc = template(step(10, "login", action_config={"url": "pg://app:{{ vars.db.password }}@db"}),
                   gated, vars={"db": {"host": "db1.internal", "password": ""}})
    with pytest.raises(InputError, match=r"the secret db is a mapping merged over its default in the template: give "
                                         r"it whole \(it leaves out db.host\)"):
        run_template(doc, workspace, database_url=db_url, actions=[LOGIN], secrets={"db": {"password": "P4ssw0rd-X"}})
    whole = {"host": "db1.internal", "password": "P4ssw0rd-X"}
    failed = run_template(doc, {**workspace, "name": "bobsled team"}, database_url=db_url, actions=[LOGIN],
                          secrets={"db": whole})
    run, stored = _stored(db_url, failed.run_id)
    assert run.template_snapshot["vars"]["db"] == {"host": "db1.internal", "password": ""}  # nothing to hide
    gate.touch()
    with pytest.raises(InputError, match="it leaves out db.host"):
        resume(failed.run_id, database_url=db_url, actions=[LOGIN], sandbox=False, secrets={"db": '{"password": "P"}'})
    again = resume(failed.run_id, database_url=db_url, actions=[LOGIN], sandbox=False, from_step="login",
                   secrets={"db": '{"host": "db1.internal", "password": "P4ssw0rd-X"}'})  # as text: the page's way
    assert again.success and (home / "deployed").read_text() == "deploy to db1.internal\n"
    assert (home / "url").read_text() == "pg://app:P4ssw0rd-X@db\n"
    gate.unlink()
    # a default's secret part is masked alone; given again in part, as text, it is merged over the rest
    doc = template(step(10, "login", action_config={"url": "pg://{{ vars.db.user }}:{{ vars.db.password }}@db"}),
                   gated, vars={"db": {"host": "db2.internal", "user": "bob", "password": "Default-Pw-77"}})
    failed = run_template(doc, {**workspace, "name": "bobsled team"}, database_url=db_url, actions=[LOGIN])
    run, stored = _stored(db_url, failed.run_id)
    assert run.template_snapshot["vars"]["db"] == {"host": "db2.internal", "user": "********",
                                                   "password": "********"} and "Default-Pw-77" not in stored
    gate.touch()
    with pytest.raises(InputError, match="the value given again for db is not"):
        resume(failed.run_id, database_url=db_url, actions=[LOGIN], sandbox=False,
               secrets={"db": '{"user": "bob", "password": "other"}'})
    with pytest.raises(InputError, match="the value given again for db is not"):
        resume(failed.run_id, database_url=db_url, actions=[LOGIN], sandbox=False,
               secrets={"db": "[" * 3000 + "]" * 3000})  # bounded: one clear error, no RecursionError
    again = resume(failed.run_id, database_url=db_url, actions=[LOGIN], sandbox=False,
                   secrets={"db": '{"user": "bob", "password": "Default-Pw-77"}'})
    assert again.success and (home / "deployed").read_text() == "deploy to db2.internal\n"
    assert (home / "url").read_text() == "pg://bob:Default-Pw-77@db\n"
    # a run that kept no digest of what it is given again cannot be checked: refused
    gate.unlink()
    failed = run_template(template(step(10, "login", action_config={"url": "pg://app:{{ vars.pw }}@db"}), gated,
                                   vars={"pw": "", "db": {"host": "h"}}),
                          workspace, database_url=db_url, actions=[LOGIN], variables={"pw": "Tenant-Pw-1"})
    with Session(create_engine(normalize_url(db_url))) as session:
        session.get(ProvisioningRun, failed.run_id).secret_digests = None  # as an older dagrun recorded it
        session.commit()
    with pytest.raises(InputError, match="pw is not stored with the run, and the run was recorded without a digest"):
        resume(failed.run_id, database_url=db_url, actions=[LOGIN], sandbox=False, secrets={"pw": "Tenant-Pw-1"})
    with pytest.raises(InputError, match="secret names are identifiers .* not 'db.pw'"):
        run_template(doc, workspace, database_url=db_url, actions=[LOGIN], secrets={"db.pw": "x"})


def test_what_a_secret_field_reads_without_naming_it_is_masked_too(workspace, home, db_url):
    """(helper-47) x{{ config | tojson }} read its sibling dsn, stored in
    clear in the attempt's config; vars | dictsort read a default that stayed
    in clear in the stored template."""
    login = dict(LOGIN, config_schema={"type": "object", "properties": {
        "url": {"type": "string", "x-secret": True}, "dsn": {"type": "string"}}})
    doc = template(step(10, "login", action_config={"url": "x{{ config | tojson }}", "dsn": "pg://app:{{ vars.pw }}@db"}),
                   vars={"pw": ""})
    result = run_template(doc, workspace, database_url=db_url, actions=[login], variables={"pw": "Sibling-Pw-42"})
    run, stored = _stored(db_url, result.run_id)
    assert result.success and "Sibling-Pw-42" not in stored
    doc = template(step(10, "login", action_config={"url": "pg://app:{{ (vars | dictsort)[0][1] }}@db"}),
                   vars={"pw": "Default-Pw-43"})
    result = run_template(doc, workspace, database_url=db_url, actions=[LOGIN])
    run, stored = _stored(db_url, result.run_id)
    assert result.success and "Default-Pw-43" not in stored and run.template_snapshot["vars"]["pw"] == "********"


def test_a_secret_written_in_a_field_a_secret_field_reads_is_one_written_in_the_template(workspace, home, db_url):
    """(helper-47) url: "{{ config.dsn }}" with dsn written out as
    pg://admin:PASSWORD@db: the password was stored in clear in the run's
    template. A host read the same way is no secret (nothing to give again)."""
    from dagrun import resume
    login = dict(LOGIN, config_schema={"type": "object", "properties": {
        "url": {"type": "string", "x-secret": True}, "dsn": {"type": "string"}, "host": {"type": "string"}}})
    gate = home / "gate"
    doc = template(step(10, "login", action_config={"url": "{{ config.dsn }}", "dsn": "pg://admin:Literal-Admin-Pw9@db"}),
                   script_step(20, f"test -f {gate}", id="gate", requires=["login"]))
    failed = run_template(doc, workspace, database_url=db_url, actions=[login])
    run, stored = _stored(db_url, failed.run_id)
    assert "Literal-Admin-Pw9" not in stored and run.secret_names == ["login.dsn"]
    gate.touch()
    again = resume(failed.run_id, database_url=db_url, actions=[login], sandbox=False, from_step="login",
                   secrets={"login.dsn": "pg://admin:Literal-Admin-Pw9@db"})
    assert again.success and (home / "url").read_text() == "pg://admin:Literal-Admin-Pw9@db\n"
    plain = template(step(10, "login", action_config={"url": "pg://app:{{ vars.pw }}@{{ config.host }}", "host": "db1"}),
                     vars={"pw": ""})
    result = run_template(plain, workspace, database_url=db_url, actions=[login], secrets={"pw": "Pw-of-the-day"})
    assert result.success and _stored(db_url, result.run_id)[0].secret_names == ["pw"]


def test_secrets_read_through_methods_filters_and_keys_are_masked_too(workspace, home, db_url):
    """(helper-48) vars.db.get('password') masked db.get (nothing) and left
    the default's password in clear, and a tenant's value read so was shown
    by a plain step; a written-out field read through a filter or a key, or
    beside text that is itself a written secret, stayed in clear in the
    run's template, and in the attempt's config."""
    login = dict(LOGIN, config_schema={"type": "object", "properties": {
        "url": {"type": "string", "x-secret": True}, "dsn": {"type": "string"}}})
    doc = template(step(10, "login", action_config={"url": "pg://app:{{ vars.db.get('password') }}@db"}),
                   script_step(20, 'echo "pw is {{ vars.db.password }}"', id="show", requires=["login"]),
                   vars={"db": {"password": "Default-Pw-123"}})
    result = run_template(doc, workspace, database_url=db_url, actions=[LOGIN])
    run, stored = _stored(db_url, result.run_id)
    assert result.success and "Default-Pw-123" not in stored and run.template_snapshot["vars"]["db"] == "********"
    result = run_template(doc, workspace, database_url=db_url, actions=[LOGIN],
                          variables={"db": {"password": "Tenant-Pw-777"}})
    assert result.success and result.steps["show"].stdout == "pw is ********\n"
    assert "Tenant-Pw-777" not in _stored(db_url, result.run_id)[1]
    for url in ("{{ config.dsn | trim }}", "{{ config['dsn'] }}", "{{ config.dsn }}?sslmode=require",
                "x{{ config | tojson }}"):
        doc = template(step(10, "login", action_config={"url": url, "dsn": "pg://admin:Hunter2-Lit-Pw@db"}))
        result = run_template(doc, workspace, database_url=db_url, actions=[login])
        run, stored = _stored(db_url, result.run_id)
        assert result.success and "Hunter2-Lit-Pw" not in stored and "login.dsn" in run.secret_names, url


def test_which_written_fields_a_secret_field_reads_are_secrets(workspace, home, db_url):
    """(helper-49) Every written field a secret URL read counted as a secret
    (a port, a database name: masked in every output, asked for at resume,
    a tenant's port refused as "holding a secret"); a password written in a
    templated field, or two fields away, or read by a secret field the
    action's defaults give, stayed in clear; a list index and a key named
    like a dict method slipped by the masking; a secret mapping given as
    text ran as text at the start; opts: {} could not be filled."""
    login = dict(LOGIN, config_schema={"type": "object", "properties": {
        "url": {"type": "string", "x-secret": True}, "dsn": {"type": "string"}, "port": {"type": "integer"},
        "other": {"type": "string"}}})
    doc = template(step(10, "login", action_config={"url": "pg://app:{{ vars.pw }}@db:{{ config.port }}/{{ config.dsn }}",
                                                    "port": 5432, "dsn": "appdb"}),
                   script_step(20, 'echo "port 5432 of appdb open"', id="show", requires=["login"]),
                   vars={"pw": "", "pg_port": 0})
    result = run_template(doc, workspace, database_url=db_url, actions=[login],
                          variables={"pw": "Tenant-Pw-1", "pg_port": 5432})
    run, stored = _stored(db_url, result.run_id)
    assert result.success and run.secret_names == ["pw"] and result.steps["show"].stdout == "port 5432 of appdb open\n"
    for config in ({"url": "{{ config.dsn }}", "dsn": "pg://admin:S3cretPW@{{ workspace.name }}/x"},
                   {"url": "{{ config.other }}", "other": "{{ config.dsn }}", "dsn": "pg://admin:S3cretPW@db/x"}):
        result = run_template(template(step(10, "login", action_config=config)), workspace, database_url=db_url,
                              actions=[login])
        run, stored = _stored(db_url, result.run_id)
        assert result.success and "S3cretPW" not in stored and "login.dsn" in run.secret_names, config
    by_default = dict(login, default_config={"url": "{{ config.dsn }}"})
    result = run_template(template(step(10, "login", action_config={"dsn": "pg://admin:S3cretPW@db/x"})), workspace,
                          database_url=db_url, actions=[by_default])
    assert result.success and "S3cretPW" not in _stored(db_url, result.run_id)[1]
    for url, value in (("pg://app:{{ vars.tokens[0] }}@db", {"tokens": ["Tenant-Tok-999"]}),
                       ("pg://app:{{ vars.db.values() | list | last }}@db",
                        {"db": {"values": "v", "password": "Tenant-Tok-999"}})):
        name = next(iter(value))
        doc = template(step(10, "login", action_config={"url": url}),
                       script_step(20, f'echo "PLAIN {{{{ vars.{name} }}}}"', id="show", requires=["login"]),
                       vars={name: None})
        result = run_template(doc, workspace, database_url=db_url, actions=[LOGIN], variables=value)
        assert result.success and "Tenant-Tok-999" not in result.steps["show"].stdout, url
        assert "Tenant-Tok-999" not in _stored(db_url, result.run_id)[1], url
    doc = template(step(10, "login", action_config={"url": "pg://{{ vars.db.user }}:{{ vars.db.password }}@db"}),
                   vars={"db": {"user": "", "password": "", "opts": {}}})
    result = run_template(doc, workspace, database_url=db_url, actions=[LOGIN],
                          secrets={"db": "{user: app, password: Text-Pw-5, opts: {ssl: true}}"})
    assert result.success and (home / "url").read_text() == "pg://app:Text-Pw-5@db\n"


def test_secrets_read_through_string_methods_statements_and_nested_fields(workspace, home, db_url):
    """(helper-50) vars.pw.strip() and {% set v = vars %} let a plain step
    show a tenant's password; a written password in a nested or indexed
    field, behind {% set c = config %}, or read by a secret field holding a
    mapping, stayed in clear; a Bearer header and a URL whose one expression
    is a host counted as secrets written in the template."""
    login = dict(LOGIN, config_schema={"type": "object", "properties": {
        "url": {"type": ["string", "object"], "x-secret": True}, "creds": {"type": ["object", "array"]},
        "pw": {"type": "string"}, "host": {"type": "string"}}})
    for url in ("pg://app:{{ vars.pw.strip() }}@db/x", "{% set v = vars %}pg://app:{{ v.pw }}@db/x"):
        doc = template(step(10, "login", action_config={"url": url}),
                       script_step(20, 'echo "PLAIN {{ vars.pw }}"', id="show", requires=["login"]), vars={"pw": None})
        result = run_template(doc, workspace, database_url=db_url, actions=[LOGIN], variables={"pw": "Tenant-Pw-999"})
        assert result.success and result.steps["show"].stdout == "PLAIN ********\n", url
        assert "Tenant-Pw-999" not in _stored(db_url, result.run_id)[1], url
    for config in ({"url": "pg://app:{{ config.creds.password }}@db/app", "creds": {"password": "Hunter2pwA"}},
                   {"url": "pg://app:{{ config.creds[0] }}@db/app", "creds": ["Hunter2pwA"]},
                   {"url": "{% set c = config %}pg://app:{{ c.pw }}@db/app", "pw": "Hunter2pwA"},
                   {"url": {"user": "app", "password": "{{ config.pw }}"}, "pw": "Hunter2pwA"}):
        result = run_template(template(step(10, "login", action_config=config)), workspace, database_url=db_url,
                              actions=[login])
        run, stored = _stored(db_url, result.run_id)
        assert "Hunter2pwA" not in stored, config
    for url, extra in (("Bearer {{ vars.pw }}", {}), ("redis://{{ config.host }}:6379/0", {"host": "cache1"})):
        doc = template(step(10, "login", action_config={"url": url, **extra}), vars={"pw": ""})
        result = run_template(doc, workspace, database_url=db_url, actions=[login], secrets={"pw": "Tok-12345678"})
        assert result.success and _stored(db_url, result.run_id)[0].secret_names == ["pw"], url


def test_a_user_name_or_host_in_a_secret_url_is_not_masked_on_its_own(workspace, home, db_url):
    """(helper-50) postgresql://{{ workspace.linux_username }}:{{ vars.db_password }}@localhost/odoo:
    the user name was masked everywhere, and a start refused when another
    field held it ("workspace.email holds a secret's value"); a host read
    from a variable was masked in every result. Only what sits where the
    secret is (the password, a token as a URL's user) is masked alone."""
    doc = template(step(10, "login", id="login", action_config={
                       "url": "postgresql://{{ workspace.name }}:{{ vars.db_password }}@{{ vars.host }}:5432/odoo"}),
                   script_step(20, 'echo "user {{ workspace.name }} mail {{ workspace.email }} on {{ vars.host }} '
                                   'pw {{ vars.db_password }}"', id="show", requires=["login"]),
                   script_step(30, 'echo "pw=$(printf %s {{ vars.token }})" >> "$DAGRUN_OUTPUT"', id="tok"),
                   step(40, "login", id="clone", requires=["tok"],
                        action_config={"url": "https://{{ vars.token }}@git.example/r.git"}),
                   vars={"db_password": "", "host": "localhost", "project": "", "token": ""})
    result = run_template(doc, {**workspace, "name": "alice42", "email": "alice42@corp.example"}, database_url=db_url,
                          actions=[LOGIN], variables={"db_password": "S3cret-Pw-1", "project": "alice42_odoo",
                                                      "token": "abc123"})
    assert result.success, result.error
    assert result.steps["show"].stdout == "user alice42 mail alice42@corp.example on localhost pw ********\n"
    assert result.steps["tok"].result == {"pw": "********"}  # a token as a URL's user: masked alone
    assert "S3cret-Pw-1" not in _stored(db_url, result.run_id)[1]
    # (helper-51) where a value sits is told from the template's text, never from the value's own characters
    for url, secret in (("postgresql://app:{{ vars.pw }}@db/x", "8842/Kq+ZtWv9"),
                        ("postgresql://app:{{ vars.pw }}@db/x", "2024?Summer!"),
                        ("redis://:{{ vars.pw }}@cache:6379/0", "1999/Rover"),
                        ("https://api.example.com/v1?pw={{ vars.pw }}", "Hunter2secret"),
                        ("https://hooks.example.com/services/{{ vars.pw }}", "correcthorsebatterystaple"),
                        ("https://{{ vars.pw }}.ngrok.io/hook", "Zq81mXv0Lp3s"),
                        ("https://{{ vars.pw }}:@github.com/o/r", "Zq81mXv0Lp3s"),
                        # (helper-52) a block adding a URL's parts, a written or empty password, whitespace
                        ("https://{{ vars.pw ~ '@github.com' }}", "Zq81mXv0Lp3s"),
                        ("postgresql://app@h/{{ 'odoo?password=' ~ vars.pw }}", "Zq81mXv0Lp3s"),
                        ("https://{{ vars.pw }}:{{ '' }}@github.com", "Zq81mXv0Lp3s"),
                        ("https://{{ vars.pw }}:x-oauth-basic@github.com", "Zq81mXv0Lp3s"),
                        ("https://api.example.com\ntoken:{{ vars.pw }}", "Zq81mXv0Lp3s"),
                        ("redis://h:{{ vars.pw }}", "Zq81mXv0Lp3s")):
        doc = template(step(10, "login", id="login", action_config={"url": url}),
                       script_step(20, 'echo "PLAIN {{ vars.pw }}"', id="show", requires=["login"]), vars={"pw": ""})
        result = run_template(doc, workspace, database_url=db_url, actions=[LOGIN], variables={"pw": secret})
        assert result.steps["show"].stdout == "PLAIN ********\n", (url, secret)
        assert secret not in _stored(db_url, result.run_id)[1], (url, secret)


def test_a_password_the_actions_own_defaults_write_is_masked_not_asked_for(workspace, home, db_url):
    """(helper-50 L5) An action's default_config admin_pw, read into the
    template's secret url: shown in clear in the attempt's config and
    errors. It is the action's (given again with it), so a resume does not
    ask for it."""
    login = dict(LOGIN, execution_handler='echo "{{ config.url }} {{ config.admin_pw }}" >&2; exit 3',
                 default_config={"admin_pw": "ActPw-123456"}, config_schema={"type": "object", "properties": {
                     "url": {"type": "string", "x-secret": True}, "admin_pw": {"type": "string"}}})
    doc = template(step(10, "login", action_config={"url": "pg://admin:{{ config.admin_pw }}@db/x"}))
    result = run_template(doc, workspace, database_url=db_url, actions=[login])
    run, stored = _stored(db_url, result.run_id)
    assert not result.success and "ActPw-123456" not in stored and not run.secret_names


def test_text_given_again_is_read_only_as_json_would_have_given_it():
    """(helper-48) YAML read {a: 2024-01-01} as a date, which the digest's
    canonical form (default=str) took for the text; sets and bytes too."""
    from dagrun.api import _NO_MATCH, _as_it_was
    from dagrun.store.digests import digest
    stored = digest({"a": "2024-01-01"})
    assert _as_it_was("{a: 2024-01-01}", stored) is _NO_MATCH
    assert _as_it_was('{"a": "2024-01-01"}', stored) == {"a": "2024-01-01"}
    assert _as_it_was("!!set {x}", digest(["x"])) is _NO_MATCH
    assert _as_it_was("5432", digest(5432)) == 5432


def test_a_variable_a_secret_field_reads_through_another_field_is_not_stored(workspace, home, db_url):
    """(helper-44) url: "pg://app:{{ config.other }}@db" with other: "{{ vars.pw }}"."""
    login = dict(LOGIN, config_schema={"type": "object", "properties": {
        "url": {"type": "string", "x-secret": True}, "other": {"type": "string"}}})
    doc = template(step(10, "login", action_config={"url": "pg://app:{{ config.other }}@db", "other": "{{ vars.pw }}"}),
                   vars={"pw": ""})
    result = run_template(doc, workspace, database_url=db_url, actions=[login], variables={"pw": "S3cret-Passw0rd"})
    run, stored = _stored(db_url, result.run_id)
    assert result.success and (home / "url").read_text() == "pg://app:S3cret-Passw0rd@db\n"
    assert "S3cret-Passw0rd" not in stored and "pw" in run.secret_names


def test_a_secret_field_holding_a_mapping_reads_secrets_too(workspace, home, db_url):
    """(helper-35) auth: {type: object, x-secret: true} with {password: "{{ vars.pw }}"}."""
    conn = {"name": "conn", "action_type": "shell", "execution_handler": "echo {{ config.auth.password }} > ~/pw",
            "config_schema": {"type": "object", "properties": {"auth": {"type": "object", "x-secret": True}}}}
    doc = template(step(10, "conn", action_config={"auth": {"user": "app", "password": "{{ vars.pw }}"}}),
                   script_step(20, 'echo "{{ vars.pw }}"', id="show", requires=["conn"]), vars={"pw": ""})
    result = run_template(doc, workspace, database_url=db_url, actions=[conn], variables={"pw": "Long-Passw0rd-1"})
    assert result.success and (home / "pw").read_text() == "Long-Passw0rd-1\n"
    assert result.steps["show"].stdout == "********\n"
    run, stored = _stored(db_url, result.run_id)
    assert "Long-Passw0rd-1" not in stored and "pw" in run.secret_names


def test_a_number_filling_a_secret_field_is_not_stored(workspace, db_url):
    """(helper-37) variables {pw: 987654321} was stored in clear."""
    doc = template(step(10, "login", action_config={"url": "pg://app:{{ vars.pw }}@db"}), vars={"pw": ""})
    result = run_template(doc, workspace, database_url=db_url, actions=[LOGIN], variables={"pw": 987654321})
    run, stored = _stored(db_url, result.run_id)
    assert result.success and "987654321" not in stored and "pw" in run.secret_names


def test_secrets_given_as_a_mapping_and_bash_quoted_forms_are_masked(workspace, db_url):
    doc = template(script_step(10, 'echo "{{ vars.db.password }}"; printf "%q\\n" "{{ vars.odd }}"', id="s"))
    result = run_template(doc, workspace, database_url=db_url,
                          secrets={"db": {"user": "app", "password": "Sup3rPassw0rd"}, "odd": "it's\nsecret99"})
    assert result.success, result.error
    assert result.steps["s"].stdout == "********\n$'********'\n"
    assert "Sup3rPassw0rd" not in _stored(db_url, result.run_id)[1] and "secret99" not in _stored(db_url, result.run_id)[1]


def test_a_secret_the_output_cut_went_through_is_masked_on_both_sides(workspace, db_url):
    """(helper-30) Long output keeps its head and tail; a secret across the
    cut reached the events as a part (its first characters)."""
    from dagrun.run.events import AttemptFinished
    from dagrun.run.shell import MAX_OUTPUT_BYTES
    half = MAX_OUTPUT_BYTES // 2
    script = (f"head -c {half - 7} /dev/zero | tr '\\0' a; printf '%s' \"{{{{ vars.token }}}}\"; "
              f"head -c {2 * half} /dev/zero | tr '\\0' b; echo")
    seen = []
    result = run_template(template(script_step(10, script, id="s"), vars={"token": ""}), workspace,
                          database_url=db_url, secrets={"token": "Cut-Thr0ugh-Secret"},
                          on_event=lambda e: seen.append(e.outcome.stdout) if isinstance(e, AttemptFinished) else None)
    assert result.success, result.error
    shown = seen[0] + result.steps["s"].stdout
    assert "Cut-Thr" not in shown and "ough-Secret" not in shown and "Secret" not in shown
    assert "bytes dropped" in seen[0] and "a********\n... [" in seen[0]


def test_a_value_holding_a_cut_tells_nothing_of_how_a_secret_begins(workspace, db_url, tmp_path):
    """(helper-66) Masked only where they matched a secret's beginning, the
    characters before a cut's text told a tenant, guess by guess, how a
    stored template's secret began: its run was refused as holding part of
    a secret (over HTTP: the whole secret in about 1,000 requests), and a
    script echoing the value showed it. Now the run is not refused, and
    the edges are masked whatever they hold."""
    from dagrun import InputError
    cut = "\n... [1 bytes dropped] ...\n"
    secret = "Adm1n-Pr0d-Passw0rd"
    doc = template(script_step(10, 'echo "{{ vars.project }}"', id="s"), vars={"project": "x"})
    outputs = []
    for guess in ("Adm", "zzz"):  # a secret's beginning, and not
        result = run_template(doc, {**workspace, "id": f"w-{guess}", "home_dir": str(tmp_path / guess)},
                              database_url=db_url, secrets={"token": secret},
                              variables={"project": f"{guess}{cut}tail"})
        assert result.success, result.error
        outputs.append(result.steps["s"].stdout.replace(guess, "GUESS"))
    assert outputs[0] == outputs[1] and "GUESS" not in outputs[0]  # the same, whatever was guessed
    with pytest.raises(InputError, match="holds a secret's value"):  # (a whole secret in a plain variable)
        run_template(doc, {**workspace, "id": "w-whole", "home_dir": str(tmp_path / "whole")}, database_url=db_url,
                     secrets={"token": secret},
                     variables={"project": secret})


def test_secret_variables_are_masked_everywhere_and_not_stored(workspace, db_url, tmp_path):
    import json as jsonlib
    import os
    import subprocess
    import sys
    doc = template(script_step(10, 'echo "token={{ vars.token }}"; echo "x=y{{ vars.token }}" >> "$DAGRUN_OUTPUT"',
                               id="use"),
                   script_step(20, 'echo "bad {{ vars.token }}" >&2; exit 1', id="leak", requires=["use"]))
    result = run_template(doc, workspace, database_url=db_url, secrets={"token": "s3cr3t-value"})
    text = jsonlib.dumps(result.as_dict()) + result.steps["use"].stdout + result.steps["leak"].stderr
    assert "s3cr3t-value" not in text
    assert result.steps["use"].stdout == "token=********\n" and result.steps["use"].result == {"x": "y********"}
    run, attempts, _ = rows(db_url, result.run_id)
    stored = jsonlib.dumps([run.variables, run.workspace, run.error] + [
        [a.execution_output, a.error_message, a.action_config, a.result_data] for a in attempts], default=str)
    assert "s3cr3t-value" not in stored and run.variables == {}
    # the CLI takes secrets from the environment, never from its command line
    (tmp_path / "t.yaml").write_text(__import__("yaml").safe_dump(template(script_step(10, "echo {{ vars.pw }}", id="e"))))
    env = {**os.environ, "MY_PW": "hunter22", "XDG_DATA_HOME": str(tmp_path / "xdg")}
    out = subprocess.run([sys.executable, "-m", "dagrun", "run", "t.yaml", "--secret", "pw=MY_PW", "--db", db_url,
                          "--ws", "id=sec", "--json"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "hunter22" not in out.stdout + out.stderr
