"""Fleet runs: one template, many workspaces, shared locks, one record per
workspace, failures that stay with their workspace, and the CLI."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dagrun import InputError, api, run_fleet
from tests.helpers import script_step, template


def intervals(log: Path) -> dict[str, list[tuple[float, float, str]]]:
    """step name -> [(start, end, workspace)] from lines "<step> <ws> start|end <time>"."""
    opened: dict[tuple[str, str], float] = {}
    spans: dict[str, list[tuple[float, float, str]]] = {}
    for line in log.read_text().splitlines():
        name, ws, edge, at = line.split()
        if edge == "start":
            opened[(name, ws)] = float(at)
        else:
            spans.setdefault(name, []).append((opened.pop((name, ws)), float(at), ws))
    return spans


def most_at_once(spans: list[tuple[float, float, str]]) -> int:
    edges = sorted([(s, 1) for s, _, _ in spans] + [(e, -1) for _, e, _ in spans], key=lambda x: (x[0], x[1]))
    now = best = 0
    for _, step in edges:
        now += step
        best = max(best, now)
    return best


def logged(log: Path, name: str, body: str) -> str:
    return (f"echo {name} {{{{ workspace.id }}}} start $(date +%s.%N) >> {log}; {body}; "
            f"echo {name} {{{{ workspace.id }}}} end $(date +%s.%N) >> {log}")


def test_a_capacity_one_lock_is_held_by_one_workspace_at_a_time(tmp_path, db_url):
    log = tmp_path / "log"
    doc = template(script_step(10, logged(log, "prep", "sleep 0.2"), id="prep"),
                   script_step(20, logged(log, "apt", "sleep 0.1"), id="apt", requires=["prep"], locks=["apt"]),
                   script_step(30, "true", id="after", requires=["apt"]))
    fleet = run_fleet(doc, [{"id": f"w{n}", "home_dir": str(tmp_path / f"h{n}")} for n in range(8)],
                      database_url=db_url)
    assert sorted(fleet.succeeded) == [f"w{n}" for n in range(8)] and fleet.success
    spans = intervals(log)
    assert most_at_once(spans["apt"]) == 1  # never two workspaces in the locked step
    assert most_at_once(spans["prep"]) > 1  # the rest ran side by side
    runs = api.list_runs(database_url=db_url, fleet=fleet.fleet_id)
    assert sorted(r["workspace_id"] for r in runs) == sorted(fleet.succeeded)  # a record per workspace
    assert all(r["status"] == "succeeded" for r in runs)


def test_on_one_machine_a_host_field_never_escapes_a_lock(tmp_path):
    """Without a cluster every workspace runs on this machine: its host
    field (a value) does not give it a lock of its own. A fleet-scoped lock
    is shared by all."""
    log = tmp_path / "log"
    doc = template(script_step(10, logged(log, "apt", "sleep 0.15"), id="apt", locks=["apt"]),
                   script_step(20, logged(log, "git", "sleep 0.15"), id="git",
                               locks=[{"name": "git-server", "capacity": 2, "scope": "fleet"}]))
    hosts = ["web1", "WEB1", "web1 ", None, "other", "web2"]
    workspaces = [{"id": f"w{n}", "host": host, "home_dir": str(tmp_path / f"h{n}")} for n, host in enumerate(hosts)]
    assert run_fleet(doc, workspaces, record=False).success
    spans = intervals(log)
    assert most_at_once(spans["apt"]) == 1
    assert most_at_once(spans["git"]) == 2


def test_a_host_is_a_host_name(tmp_path):
    for host in ("web1; rm -rf /", ["web1"], "-web", "a" * 300, "web/1"):
        with pytest.raises(InputError, match="is not a host name"):
            run_fleet(template(script_step(10, "true")), [{"id": "x", "host": host, "home_dir": str(tmp_path)}],
                      record=False)


def test_one_workspaces_failure_never_stops_the_others_and_a_resume_finishes_it(tmp_path, db_url):
    gate = tmp_path / "gate"
    doc = template(script_step(10, "true", id="a"),
                   script_step(20, f"test {{{{ workspace.id }}}} != bad || test -e {gate}", id="b", requires=["a"],
                               max_retries=1))
    workspaces = [{"id": ws, "home_dir": str(tmp_path / ws)} for ws in ("one", "bad", "two")]
    fleet = run_fleet(doc, workspaces, database_url=db_url, concurrency=2)
    assert sorted(fleet.succeeded) == ["one", "two"] and fleet.failed == ["bad"]
    assert fleet.as_dict()["workspaces"]["bad"]["status"] == "failed"
    gate.touch()
    from dagrun import resume_fleet
    resumed = resume_fleet(fleet.fleet_id, database_url=db_url)
    assert list(resumed.results) == ["bad"] and resumed.success  # only the failed one ran again
    assert resumed.results["bad"].run_id == fleet.results["bad"].run_id  # the same run record, continued
    assert resumed.results["bad"].steps["a"].attempts == 1  # its completed step was not run again


def test_a_fleets_resume_gives_each_workspace_again_what_was_not_stored(tmp_path):
    """(helper-44) A per-workspace field a secret field reads is not stored:
    resume_fleet took one set of values for every run (all but one refused).
    The CLI's --workspaces FILE with --resume gives each run its own again."""
    (tmp_path / "acts").mkdir()
    (tmp_path / "acts" / "login.yaml").write_text(json.dumps({
        "name": "login", "action_type": "shell", "execution_handler": 'echo "{{ config.url }}" > ~/url',
        "config_schema": {"type": "object", "properties": {"url": {"type": "string", "x-secret": True}}}}))
    gate = tmp_path / "gate"
    (tmp_path / "t.yaml").write_text(json.dumps(template(
        {"sequence_order": 10, "id": "login", "action_name": "login",
         "action_config": {"url": "pg://app:{{ workspace.db_pw }}@db"}},
        script_step(20, f"test -e {gate}", id="gate", requires=["login"]), name="fleetpw")))
    (tmp_path / "ws.jsonl").write_text("".join(json.dumps({"id": ws, "db_pw": f"Pw-of-{ws}-123"}) + "\n"
                                               for ws in ("one", "two")))
    db = f"sqlite:///{tmp_path}/f.db"

    def dagrun(*args):
        return subprocess.run([sys.executable, "-m", "dagrun", *args, "--db", db, "--actions", "acts", "--no-sandbox"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)
    first = dagrun("fleet", "t.yaml", "--workspaces", "ws.jsonl")
    assert first.returncode == 1 and "0 succeeded, 2 failed" in first.stdout, first.stdout + first.stderr
    fleet_id = first.stdout.split("dagrun fleet --resume ", 1)[1].split()[0]
    gate.touch()
    bare = dagrun("fleet", "--resume", fleet_id)
    assert bare.returncode == 2 and "workspace.db_pw" in bare.stderr and "--workspaces FILE" in bare.stderr, \
        bare.stdout + bare.stderr
    (tmp_path / "wrong.jsonl").write_text(json.dumps({"id": "one", "db_pw": "Pw-of-one-123"}) + "\n"
                                          + json.dumps({"id": "two", "db_pw": "Pw-of-one-123"}) + "\n")
    wrong = dagrun("fleet", "--resume", fleet_id, "--workspaces", "wrong.jsonl")
    assert wrong.returncode == 2 and "the value given again for workspace.db_pw is not" in wrong.stderr, wrong.stderr
    again = dagrun("fleet", "--resume", fleet_id, "--workspaces", "ws.jsonl")
    assert again.returncode == 0 and "2 succeeded, 0 failed" in again.stdout, again.stdout + again.stderr
    homes = {ws: (tmp_path / "dagrun-workspaces" / ws / "url").read_text() for ws in ("one", "two")}
    assert homes == {"one": "pg://app:Pw-of-one-123@db\n", "two": "pg://app:Pw-of-two-123@db\n"}


def test_a_fleets_resume_leaves_a_workspace_that_moved_on(tmp_path, db_url):
    """(helper-46) One workspace ran another template since: resume_fleet
    refused the whole fleet. That one is left (its newer run is its own)."""
    from dagrun import resume_fleet, run_template
    gate = tmp_path / "gate"
    doc = template(script_step(10, f"test -e {gate}", id="a", max_retries=1))
    workspaces = [{"id": ws, "home_dir": str(tmp_path / ws)} for ws in ("one", "two", "three")]
    fleet = run_fleet(doc, workspaces, database_url=db_url)
    assert sorted(fleet.failed) == ["one", "three", "two"]
    assert run_template(template(script_step(10, "true", id="other")), workspaces[1], database_url=db_url).success
    gate.touch()
    resumed = resume_fleet(fleet.fleet_id, database_url=db_url)
    assert sorted(resumed.results) == ["one", "three"] and resumed.success


def test_bad_workspaces_are_one_error_before_anything_runs(tmp_path, db_url):
    doc = template(script_step(10, "true", id="a"))
    with pytest.raises(InputError, match="appears twice"):
        run_fleet(doc, [{"id": "x", "home_dir": str(tmp_path / "x")}, {"id": "x"}], database_url=db_url)
    with pytest.raises(InputError) as bad:
        run_fleet(doc, [{"id": "fine", "home_dir": str(tmp_path / "f")}, {"id": "rel", "home_dir": "relative/x"},
                        {"id": "other", "linux_username": "a b"}], database_url=db_url)
    text = str(bad.value)
    assert "workspace rel" in text and "absolute path" in text and "workspace other" in text
    assert api.list_runs(database_url=db_url) == []  # nothing ran


def test_the_cli_runs_a_jsonl_fleet_and_resumes_its_failures(tmp_path):
    gate = tmp_path / "gate"
    (tmp_path / "t.yaml").write_text(json.dumps(template(
        script_step(10, "true", id="a"),
        script_step(20, f"test {{{{ workspace.id }}}} != bad || test -e {gate}", id="b", requires=["a"],
                    max_retries=1), name="fleetcli")))
    (tmp_path / "ws.jsonl").write_text("".join(json.dumps({"id": ws}) + "\n" for ws in ("one", "bad", "two")))
    db = f"sqlite:///{tmp_path}/f.db"
    out = subprocess.run([sys.executable, "-m", "dagrun", "fleet", "t.yaml", "--workspaces", "ws.jsonl", "--db", db,
                          "--concurrency", "2"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env={**__import__("os").environ, "COLUMNS": "80"})
    assert out.returncode == 1, out.stderr
    assert all(len(line) <= 80 for line in out.stdout.splitlines() if "--resume" not in line), out.stdout
    assert "2 succeeded, 1 failed" in out.stdout
    fleet_id = out.stdout.split("dagrun fleet --resume ", 1)[1].split()[0]
    gate.touch()
    again = subprocess.run([sys.executable, "-m", "dagrun", "fleet", "--resume", fleet_id[:8], "--db", db],
                           cwd=tmp_path, capture_output=True, text=True, timeout=120)  # a prefix, as resume takes
    assert again.returncode == 0, again.stderr
    assert re.search(r"^bad succeeded in [0-9.]+ m?s \(2/2 steps\) \[1 done\]$", again.stdout, re.M), again.stdout
    assert "1 succeeded, 0 failed" in again.stdout
    done = subprocess.run([sys.executable, "-m", "dagrun", "fleet", "--resume", fleet_id, "--db", db, "--json"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    report = json.loads(done.stdout)
    assert done.returncode == 0 and report["succeeded"] == [] and report["failed"] == []
    done = subprocess.run([sys.executable, "-m", "dagrun", "fleet", "--resume", fleet_id, "--db", db],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.stdout.splitlines() == [f"nothing to resume in fleet {fleet_id}:",
                                        "every workspace succeeded or is running elsewhere"]
    assert all(len(line) <= 80 for line in done.stdout.splitlines())


def test_the_cli_refuses_a_fleet_workspace_without_an_id(tmp_path):
    """The CLI's one workspace is "local" by default; a fleet's row without an id became "local" too."""
    (tmp_path / "t.json").write_text(json.dumps(template(script_step(10, "true", id="a"), name="noid")))
    (tmp_path / "ws.jsonl").write_text('{"id": "a"}\n{"name": "no id"}\n')
    out = subprocess.run([sys.executable, "-m", "dagrun", "fleet", "t.json", "--workspaces", "ws.jsonl", "--db",
                          f"sqlite:///{tmp_path}/f.db"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.strip() == "dagrun: ws.jsonl: workspace 2 has no id", out.stderr
    assert not (tmp_path / "dagrun-workspaces").exists()


@pytest.mark.parametrize("suffix", ["json", "yaml", "csv"])
def test_workspaces_files_in_every_format(tmp_path, suffix):
    from dagrun.fleet import read_workspaces
    rows = [{"id": "a", "name": "Ann"}, {"id": "b", "name": "Bob"}]
    path = tmp_path / f"ws.{suffix}"
    if suffix == "csv":
        path.write_text("id,name\na,Ann\nb,Bob\n")
    elif suffix == "yaml":
        import yaml
        path.write_text(yaml.safe_dump(rows))
    else:
        path.write_text(json.dumps(rows))
    assert read_workspaces(str(path)) == rows
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InputError, match="is not valid json"):
        read_workspaces(str(tmp_path / "bad.json"))


@pytest.mark.skipif(__import__("os").geteuid() != 0 and not __import__("os").environ.get("CI"),
                    reason="the allowed-folders rule applies when dagrun runs as root (CI does)")
def test_a_workspaces_file_never_chooses_where_homes_may_be(tmp_path):
    """The file is data: a home_dir in it must be inside the allowed folders,
    whatever it says; the CLI allows only its own default homes."""
    (tmp_path / "t.json").write_text(json.dumps(template(script_step(10, "echo x > ~/pwned.txt", id="s"),
                                                         name="fleethomes")))
    target = tmp_path / "elsewhere" / "etc-like"
    (tmp_path / "ws.jsonl").write_text(json.dumps({"id": "mallory", "home_dir": str(target)}) + "\n"
                                       + json.dumps({"id": "fine"}) + "\n")
    env = {k: v for k, v in __import__("os").environ.items() if k != "DAGRUN_WORKSPACE_ROOTS"}
    out = subprocess.run([sys.executable, "-m", "dagrun", "fleet", "t.json", "--workspaces", "ws.jsonl", "--db",
                          f"sqlite:///{tmp_path}/f.db"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env=env)
    assert out.returncode == 2 and "is outside the folders workspaces may live in" in out.stderr, out.stderr
    assert not target.exists()


def test_an_unexpected_error_in_one_run_stays_with_its_workspace(tmp_path, monkeypatch):
    """A bug in one workspace's run (faked here: a bug cannot be made to
    happen on demand) is that workspace's error; the others finish."""
    real = api.execute

    def buggy(prepared, **kw):
        if prepared.workspace["id"] == "boom":
            raise RuntimeError("a bug")
        return real(prepared, **kw)

    monkeypatch.setattr(api, "execute", buggy)
    fleet = run_fleet(template(script_step(10, "true", id="s")),
                      [{"id": ws, "home_dir": str(tmp_path / ws)} for ws in ("one", "boom", "two")], record=False)
    assert sorted(fleet.succeeded) == ["one", "two"]
    assert fleet.errors == {"boom": "RuntimeError: a bug"} and not fleet.success


def test_a_fleet_killed_mid_run_is_resumed(tmp_path, db_url):
    """(helper-32) Its runs stayed 'running' and resume_fleet skipped them."""
    import os
    import signal
    import time
    from dagrun import resume_fleet
    gate, started = tmp_path / "gate", tmp_path / "started"
    doc = template(script_step(10, f"touch \"{started}-$DAGRUN_WORKSPACE_ID\"; while [ ! -f {gate} ]; do sleep 0.05; done",
                               id="wait"))
    (tmp_path / "t.json").write_text(json.dumps(doc))
    workspaces = [{"id": f"k{n}", "home_dir": str(tmp_path / f"h{n}")} for n in range(2)]
    code = ("import json, sys; from dagrun import run_fleet; run_fleet(json.load(open(sys.argv[1])), "
            "json.loads(sys.argv[2]), database_url=sys.argv[3], fleet_id='killed')")
    child = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "t.json"), json.dumps(workspaces), db_url],
                             start_new_session=True)
    deadline = time.monotonic() + 60
    while not all(Path(f"{started}-k{n}").exists() for n in range(2)):
        assert child.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    gate.touch()
    resumed = resume_fleet("killed", database_url=db_url)
    assert resumed.success and sorted(resumed.succeeded) == ["k0", "k1"]

