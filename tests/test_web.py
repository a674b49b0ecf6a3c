"""The HTTP service: every endpoint and status code of the blueprint (Flask's
test client, on SQLite and on the real PostgreSQL), the background run API
it is built on (start_run, get_run's waiting_for), runs started by another
process, the token and cross-site guard, and live events from the real
server (dagrun serve, waitress)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from dagrun import api, get_run, start_run
from dagrun.errors import InputError, RunConflictError, TemplateError
from dagrun.web import create_app
from tests.helpers import Server, script_step, step, template

CSRF = {"X-Dagrun-Request": "1"}


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/web.db"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def client(store):
    app = create_app(database_url=store, allow_inline_templates=True)
    app.testing = True
    return app.test_client()


def gated(gate: Path, name: str = "gated") -> dict:
    """prepare -> gate (fails until the gate file exists) -> finish; and an independent side step."""
    return template(script_step(10, "sleep 0.3; echo preparing", id="prepare"),
                    script_step(20, f"echo checking; test -e {gate}", id="gate", requires=["prepare"], max_retries=1),
                    script_step(30, "echo done", id="finish", requires=["gate"]),
                    script_step(40, "echo side", id="side"), name=name)


def wait_done(run_id: str, store: str, timeout: float = 60) -> dict:
    handle = api.running_here(run_id)
    if handle is not None:
        handle.wait(timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = get_run(run_id, database_url=store)
        if run["status"] != "running":
            return run
        time.sleep(0.1)
    raise AssertionError(f"run {run_id} still running")


# -- the Python API the service is built on ---------------------------------------------

def test_start_run_refuses_before_returning_and_then_runs_in_the_background(tmp_path, store):
    home = tmp_path / "home"
    with pytest.raises(TemplateError):
        start_run(template(step(10, "nope")), {"id": "w", "home_dir": str(home)}, database_url=store)
    gate = tmp_path / "gate"
    slow = template(script_step(10, f"while [ ! -e {gate} ]; do sleep 0.05; done", id="wait"))
    handle = start_run(slow, {"id": "w", "home_dir": str(home)}, database_url=store)
    assert handle.status() == "running" and handle.wait(0.1) is None
    with pytest.raises(RunConflictError) as conflict:
        start_run(slow, {"id": "w", "home_dir": str(home)}, database_url=store)
    assert conflict.value.run_id == handle.run_id
    gate.touch()
    result = handle.wait(30)
    assert result is not None and result.success and handle.status() == "succeeded"


def test_waiting_for_says_why_each_step_waits(tmp_path, store):
    gate = tmp_path / "gate"
    doc = template(script_step(10, f"while [ ! -e {gate} ]; do sleep 0.05; done", id="a", locks=["db"]),
                   script_step(20, "true", id="b", requires=["a"]),
                   script_step(30, "true", id="c", locks=["db"]),
                   script_step(40, f"test -e {gate}.never", id="flaky", max_retries=3, retry_delay_seconds=30))
    handle = start_run(doc, {"id": "w", "home_dir": str(tmp_path / "h")}, database_url=store, max_workers=4)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            steps = {s["step_id"]: s for s in get_run(handle.run_id, database_url=store)["steps"]}
            if steps["flaky"]["status"] == "waiting_retry":
                break
            time.sleep(0.05)
        reasons = {sid: [w["reason"] for w in steps[sid]["waiting_for"]] for sid in steps}  # on every step
        assert reasons["a"] == []  # running
        assert reasons["b"] == ["upstream"] and "a (running)" in steps["b"]["waiting_for"][0]["text"]
        assert reasons["c"] == ["lock"] and steps["c"]["waiting_for"][0]["held_by"] == ["a"]
        assert reasons["flaky"] == ["retry"] and "retries at" in steps["flaky"]["waiting_for"][0]["text"]
    finally:
        handle.cancel()
        gate.touch()
        handle.wait(30)


def test_a_step_nothing_holds_back_says_it_is_starting():
    """(helper-45) A pending step showed waiting_for: [] with no reason."""
    from dagrun import compile_template
    from dagrun.run.waiting import waiting_for
    plan = compile_template(template(script_step(10, "true", id="a"), script_step(20, "true", id="b", requires=["a"])))
    assert waiting_for(plan, "b", {"a": "completed", "b": "pending"}, max_workers=4) == [
        {"reason": "ready", "text": "ready: starting"}]


# -- the HTTP API ------------------------------------------------------------------------

def test_health_templates_and_actions(client):
    assert client.get("/api/health").json["status"] == "ok"
    listed = {t["name"]: t for t in client.get("/api/templates").json["templates"]}
    assert {"demo", "django"} <= set(listed)
    # django extends python-base: its steps are the four a run of it runs, as /actions says
    assert listed["django"]["steps"] == client.get("/api/templates/django/actions").json["total_actions"] == 4
    seq = client.get("/api/templates/demo/actions").json
    assert seq["name"] == "demo" and seq["total_actions"] == len(seq["actions"]) == 8
    first = seq["actions"][0]
    assert set(first) == {"sequence_order", "step_id", "phase", "requires", "action", "config"}
    assert set(first["action"]) == {"id", "name", "display_name", "category"}
    assert client.get("/api/templates/nope/actions").status_code == 404
    assert client.get("/api/templates/..%2Fetc%2Fpasswd/actions").status_code in (404, 422)
    library = client.get("/api/actions").json["actions"]
    write = next(a for a in library if a["name"] == "write_file")
    assert write["config_schema"]["properties"]["target_path"] and "default_config" in write


def test_a_run_through_the_api(client, store, tmp_path):
    gate = tmp_path / "gate"
    body = {"template": gated(gate), "workspace": {"home_dir": str(tmp_path / "h")}}
    started = client.post("/api/workspaces/ws1/runs", json=body, headers=CSRF)
    assert started.status_code == 202
    run_id = started.json["run_id"]
    busy = client.post("/api/workspaces/ws1/runs", json=body, headers=CSRF)
    assert busy.status_code == 409 and busy.json["run_id"] == run_id
    wait_done(run_id, store)
    executions = client.get("/api/workspaces/ws1/action-executions").json
    assert (executions["run_id"], executions["status"], executions["total_actions"]) == (run_id, "failed", 4)
    assert (executions["completed"], executions["failed"], executions["pending"]) == (2, 1, 1)
    gate_row = next(e for e in executions["executions"] if e["step_id"] == "gate")
    assert gate_row["status"] == "failed" and "script: exit code 1: checking" in gate_row["error"]
    assert set(gate_row) == {"step_id", "action_name", "display_name", "status", "attempts", "duration_seconds",
                             "error"}
    gate.touch()
    resumed = client.post("/api/workspaces/ws1/actions/resume", json={"retry_failed_action": True}, headers=CSRF)
    assert resumed.status_code == 202 and resumed.json["run_id"] == run_id  # the same run record
    assert wait_done(run_id, store)["status"] == "succeeded"
    run = client.get(f"/api/runs/{run_id}").json
    assert [s["status"] for s in run["steps"]] == ["completed"] * 4
    assert {r["run_id"] for r in client.get("/api/runs?workspace=ws1").json["runs"]} == {run_id}
    assert client.get("/api/runs?status=failed").json["runs"] == []
    svg = client.get(f"/api/runs/{run_id}/graph.svg")
    assert svg.mimetype == "image/svg+xml" and b'data-step-id="finish" data-status="completed"' in svg.data
    assert b"finish" in client.get(f"/api/runs/{run_id}/graph.svg?format=mermaid").data
    assert client.get("/api/runs/nope").status_code == 404


def test_api_errors_are_json_with_a_proper_status(client, tmp_path):
    bad = {"template": template(step(10, "write_fil"), script_step(20, "echo {{ vars.x }}")),
           "workspace": {"home_dir": str(tmp_path / "h")}}
    answer = client.post("/api/workspaces/w/runs", json=bad, headers=CSRF)
    assert answer.status_code == 422 and len(answer.json["problems"]) == 2
    assert {p["field"] for p in answer.json["problems"]} == {"action_name", "action_config.script"}
    assert api.list_runs(database_url=client.application.blueprints["dagrun"].dagrun_service.database_url,
                         workspace="w") == []  # nothing ran, nothing recorded
    assert client.post("/api/workspaces/w/runs", data="not json", headers=CSRF).status_code == 422
    assert client.post("/api/workspaces/w/runs", json={"template": "/etc/passwd"}, headers=CSRF).status_code == 422
    other = client.post("/api/workspaces/w/runs", json={"template": "demo", "workspace": {"id": "x"}}, headers=CSRF)
    assert other.status_code == 422 and "is not 'w'" in other.json["error"]
    assert client.get("/api/workspaces/never/action-executions").status_code == 404
    assert client.post("/api/runs/nope/cancel", headers=CSRF).status_code == 404


def test_saving_a_template_checks_it_and_stores_a_new_version(client):
    doc = template(script_step(10, "echo one", id="one"), name="mine")
    assert client.put("/api/templates/mine", json=doc, headers=CSRF).json == {"name": "mine", "version": "1.0.0"}
    changed = template(script_step(10, "echo two", id="one"), name="mine")
    assert client.put("/api/templates/mine", json=changed, headers=CSRF).json["version"] == "1.0.1"
    broken = template(script_step(10, "echo {{ vars.nope }}", id="one", requirs=["x"]), name="mine")
    answer = client.put("/api/templates/mine", json=broken, headers=CSRF)
    assert answer.status_code == 422 and len(answer.json["problems"]) == 2
    assert client.get("/api/templates/mine/actions").json["version"] == "1.0.1"
    assert client.put("/api/templates/mine", json={**doc, "name": "other"}, headers=CSRF).status_code == 422


def test_cancel_from_the_api(client, store, tmp_path):
    doc = template(script_step(10, "sleep 60", id="long"), script_step(20, "true", id="after", requires=["long"]))
    run_id = client.post("/api/workspaces/wc/runs", json={"template": doc, "workspace": {
        "home_dir": str(tmp_path / "h")}}, headers=CSRF).json["run_id"]
    time.sleep(0.5)
    assert client.post(f"/api/runs/{run_id}/cancel", headers=CSRF).status_code == 202
    run = wait_done(run_id, store, timeout=20)
    assert run["status"] == "cancelled"
    assert client.post(f"/api/runs/{run_id}/cancel", headers=CSRF).status_code == 422  # not running any more


def run_elsewhere(client, store: str, tmp_path: Path, ws: str) -> tuple[subprocess.Popen, str]:
    """A 60 s run of another process (dagrun run), once the service shows it."""
    doc = tmp_path / "long.yaml"
    doc.write_text(yaml.safe_dump(template(script_step(10, "sleep 60", id="long"))))
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "xdg")}
    other = subprocess.Popen([sys.executable, "-m", "dagrun", "run", str(doc), "--db", store, "--ws", f"id={ws}",
                              "--home", str(tmp_path / f"h-{ws}")], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60  # (a loaded 2-core machine: the other process may start slowly)
    runs = []
    while time.monotonic() < deadline and not runs and other.poll() is None:
        runs = client.get(f"/api/runs?workspace={ws}&status=running").json["runs"] if api._has_store(store) else []
        time.sleep(0.1)
    if not runs:
        other.kill()
        _, err = other.communicate(timeout=30)
        raise AssertionError(f"the other process's run never showed (exit {other.returncode}): "
                             f"{err.decode(errors='replace')[-2000:]}")
    return other, runs[0]["run_id"]


def test_a_run_of_another_process_shows_and_can_be_cancelled(client, store, tmp_path):
    other, run_id = run_elsewhere(client, store, tmp_path, "elsewhere")
    try:
        steps = client.get(f"/api/runs/{run_id}").json["steps"]
        assert steps[0]["step_id"] == "long"
        assert client.post(f"/api/runs/{run_id}/cancel", headers=CSRF).status_code == 202
        out, err = other.communicate(timeout=30)  # its recorder saw the request and cancelled the run
        assert other.returncode == 130, err
        assert get_run(run_id, database_url=store)["status"] == "cancelled"
    finally:
        if other.poll() is None:
            other.kill()


def test_dagrun_cancel_stops_a_run_of_another_process(client, store, tmp_path):
    other, run_id = run_elsewhere(client, store, tmp_path, "cli-cancel")
    try:
        out = subprocess.run([sys.executable, "-m", "dagrun", "cancel", run_id[:8], "--db", store, "--by", "ops"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and f"asked run {run_id} to stop" in out.stdout, out.stderr
        assert all(len(line) <= 80 for line in out.stdout.splitlines()), out.stdout
        _, err = other.communicate(timeout=30)
        assert other.returncode == 130, err
        run = get_run(run_id, database_url=store)
        assert run["status"] == "cancelled" and "cancelled by ops" in (run["error"] or ""), run["error"]
        again = subprocess.run([sys.executable, "-m", "dagrun", "cancel", run_id, "--db", store],
                               capture_output=True, text=True, timeout=60)
        assert again.returncode == 2 and "is not running (it cancelled)" in again.stderr
    finally:
        if other.poll() is None:
            other.kill()


def test_dagrun_cancel_of_a_run_whose_process_died_says_it_closed_it(client, store, tmp_path):
    """It said 'asked run ... to stop (it stops within a second or two)'
    of a run nobody was left to stop."""
    other, run_id = run_elsewhere(client, store, tmp_path, "cli-dead")
    other.kill()
    other.wait(30)
    out = subprocess.run([sys.executable, "-m", "dagrun", "cancel", run_id, "--db", store],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout == (f"run {run_id}: its process had stopped\nwithout ending it: closed it as interrupted\n"
                          f"(dagrun resume {run_id[:8]} goes on from where it stopped)\n")
    assert all(len(line) <= 80 for line in out.stdout.splitlines()), out.stdout
    assert get_run(run_id, database_url=store)["status"] == "failed"


def test_pages_render(client, tmp_path, store):
    run_id = client.post("/api/workspaces/wp/runs", json={"template": "demo", "workspace": {
        "home_dir": str(tmp_path / "h")}}, headers=CSRF).json["run_id"]
    wait_done(run_id, store)
    page = client.get(f"/runs/{run_id}").data.decode()
    assert 'data-step-id="layout" data-status="completed"' in page and ">Cancel</button>" in page
    assert ">Resume</button>" in page and "<svg" in page
    assert "python-base" in client.get("/templates/django").data.decode()
    assert "create_linux_user" in client.get("/actions").data.decode()
    assert run_id[:8] in client.get("/").data.decode()
    assert client.get("/runs/nope").status_code == 404


# -- who may call it ------------------------------------------------------------------------

def test_the_token_and_the_cross_site_guard(store, tmp_path):
    with pytest.raises(InputError, match="the token must be at least 16 characters"):  # (helper-56) as serve
        create_app(database_url=store, token="s3cret")
    app = create_app(database_url=store, token="s3cret-0123456789")
    c = app.test_client()
    assert c.get("/api/runs").status_code == 401
    assert c.get("/api/runs", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert c.get("/api/runs", headers={"Authorization": "Bearer s3cret-0123456789"}).status_code == 200
    assert c.get("/").status_code == 401
    assert c.get("/login?token=wrong").status_code == 401
    login = c.get("/login?token=s3cret-0123456789")
    assert login.status_code == 302 and "HttpOnly" in login.headers["Set-Cookie"]
    assert "SameSite=Strict" in login.headers["Set-Cookie"]
    assert c.get("/").status_code == 200  # the browser's cookie
    body = {"template": "demo", "workspace": {"home_dir": str(tmp_path / "h")}}
    assert c.post("/api/workspaces/x/runs", json=body).status_code == 403  # cookie, no header: a cross-site form
    cross = c.post("/api/workspaces/x/runs", json=body, headers={**CSRF, "Origin": "https://evil.example"})
    assert cross.status_code == 403
    ok = c.post("/api/workspaces/x/runs", json=body, headers={**CSRF, "Origin": "http://localhost"})
    assert ok.status_code == 202, ok.json
    api.running_here(ok.json["run_id"]).wait(60)


def test_authorize_decides_who_may_do_what(store, tmp_path):
    seen = []

    def authorize(action, **resource):
        seen.append((action, resource.get("workspace_id")))
        return action == "read" or resource.get("workspace_id") == "mine"

    c = create_app(database_url=store, authorize=authorize, allow_inline_templates=True).test_client()
    body = {"template": "demo", "workspace": {"home_dir": str(tmp_path / "h")}}
    assert c.post("/api/workspaces/theirs/runs", json=body, headers=CSRF).status_code == 403
    started = c.post("/api/workspaces/mine/runs", json=body, headers=CSRF)
    assert started.status_code == 202
    api.running_here(started.json["run_id"]).wait(60)
    assert ("run", "theirs") in seen and ("run", "mine") in seen


def test_serve_refuses_a_public_address_without_a_token(tmp_path):
    out = subprocess.run([sys.executable, "-m", "dagrun", "serve", "--host", "0.0.0.0", "--db",
                          f"sqlite:///{tmp_path}/s.db"], capture_output=True, text=True, timeout=30,
                         env={**os.environ, "DAGRUN_TOKEN": ""})
    assert out.returncode == 2 and "needs a token" in out.stderr


def test_serve_stops_at_start_on_a_database_it_cannot_open(tmp_path):
    """Told before listening, as one line (not by the first request, as a 503)."""
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    out = subprocess.run([sys.executable, "-m", "dagrun", "serve", "--port", "0", "--db",
                          f"postgresql://postgres@127.0.0.1:{closed}/nowhere"], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "DAGRUN_TOKEN": "t" * 16})
    assert out.returncode == 3, out.stderr
    assert "cannot" in out.stderr and "Traceback" not in out.stderr and "serving" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_serve_stops_at_start_on_a_port_another_program_holds(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run([sys.executable, "-m", "dagrun", "serve", "--port", str(port),
                              "--db", f"sqlite:///{tmp_path}/s.db"], capture_output=True, text=True, timeout=60,
                             env={**os.environ, "DAGRUN_TOKEN": "t" * 16})
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip() == f"dagrun: cannot listen on 127.0.0.1:{port}: Address already in use"
    for args, said in ((["--port", "70000"], "--port must be 0-65535, not 70000"),
                       (["--port=-1"], "--port must be 0-65535, not -1"),
                       (["--host", "no.such.host.invalid", "--port", "0"], "cannot listen on no.such.host.invalid:0")):
        out = subprocess.run([sys.executable, "-m", "dagrun", "serve", *args, "--db", f"sqlite:///{tmp_path}/s.db"],
                             capture_output=True, text=True, timeout=60, env={**os.environ, "DAGRUN_TOKEN": "t" * 16})
        assert out.returncode == 2 and said in out.stderr and "Traceback" not in out.stderr, (args, out.stderr)


def test_serve_stops_at_start_on_a_bad_action_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: broken\naction_type: shell\nexecution_handler: 'echo {{ config.x'\n")
    out = subprocess.run([sys.executable, "-m", "dagrun", "serve", "--port", "0", "--db",
                          f"sqlite:///{tmp_path}/s.db", "--actions", str(bad)], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "DAGRUN_TOKEN": "t" * 16})
    assert out.returncode == 2, out.stderr
    assert "invalid action definition: action broken: field 'execution_handler'" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and "serving" not in out.stderr


# -- live events from the real server ------------------------------------------------------------

def test_live_events_over_sse_from_the_real_server(tmp_path, store):
    server = Server(store, tmp_path)
    try:
        gate, go = tmp_path / "gate", tmp_path / "go"
        doc = gated(gate)
        doc["actions"][0]["action_config"]["script"] = f"while [ ! -e {go} ]; do sleep 0.05; done"
        status, body = server.post("/api/workspaces/live/runs", {"template": doc, "workspace": {
            "home_dir": str(tmp_path / "h")}}, headers=CSRF)
        assert status == 202, body
        run_id = body["run_id"]
        events: list[tuple[str, dict]] = []

        def listen() -> None:
            request = urllib.request.Request(f"{server.url}/api/runs/{run_id}/events",
                                             headers={"Authorization": f"Bearer {server.token}"})
            with urllib.request.urlopen(request, timeout=60) as stream:
                kind = None
                for raw in stream:
                    line = raw.decode().rstrip("\n")
                    if line.startswith("event: "):
                        kind = line[len("event: "):]
                    elif line.startswith("data: "):
                        events.append((kind, json.loads(line[len("data: "):])))
                        if events[-1][1].get("status") == "running":
                            go.touch()  # seen running, live: now let it finish
                        if kind == "run":
                            return

        reader = threading.Thread(target=listen, daemon=True)
        reader.start()
        reader.join(timeout=60)
        assert not reader.is_alive(), "the stream never ended"
        attempts = [(e["step_id"], e["status"]) for kind, e in events if kind == "attempt"]
        assert ("prepare", "running") in attempts and ("prepare", "completed") in attempts  # live, as it happened
        assert attempts.index(("prepare", "running")) < attempts.index(("prepare", "completed"))
        assert events[-1] == ("run", {"event": "run", "run_id": run_id, "status": "failed", "error": events[-1][1][
            "error"]})
    finally:
        server.stop()


def test_runs_started_together_on_a_fresh_database_all_start(client, store, tmp_path):
    """The first requests of a new service arrive together: the store is
    created once (Alembic's context is process-global), every run starts,
    and every attempt is recorded (the first runs add the same action rows
    at the same time)."""
    from concurrent.futures import ThreadPoolExecutor

    def start(n: int):
        return client.post(f"/api/workspaces/together{n}/runs", json={
            "template": template(script_step(10, "true", id="s"), step(20, "write_file", id="w", requires=["s"],
                                                                       action_config={"target_path": "~/f",
                                                                                      "content": "x"})),
            "workspace": {"home_dir": str(tmp_path / f"h{n}")}}, headers=CSRF)

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(start, range(12)))
    assert [a.status_code for a in answers] == [202] * 12
    for answer in answers:
        run_id = answer.get_json()["run_id"]
        wait_done(run_id, store)
        run = client.get(f"/api/runs/{run_id}").get_json()
        assert run["status"] == "succeeded" and not run.get("journal")
        assert [(s["step_id"], s["status"], s["attempts"]) for s in run["steps"]] == [("s", "completed", 1),
                                                                                     ("w", "completed", 1)]


# -- what a hostile caller tried (an attack on the service) -----------------------------------

def test_dagrun_serve_always_has_a_token(tmp_path):
    """Loopback is no trust boundary: every local user (and every workspace's
    processes) can reach it. Without a token given, one is made and shown
    once to whoever started the service."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "DAGRUN_TOKEN"}
    process = subprocess.Popen([sys.executable, "-m", "dagrun", "serve", "--port", str(port), "--db",
                                f"sqlite:///{tmp_path}/t.db"], stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = process.stderr.readline()
        assert f"http://127.0.0.1:{port}/login?token=" in line, line
        token = line.split("login?token=", 1)[1].split()[0]
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:  # the address is printed as the server starts listening
            try:
                urllib.request.urlopen(f"{base}/api/health", timeout=10).close()
                break
            except urllib.error.URLError:
                assert time.monotonic() < deadline, "dagrun serve did not start"
                time.sleep(0.1)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{base}/api/runs", timeout=10)
        assert refused.value.code == 401
        request = urllib.request.Request(f"{base}/api/runs", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 200
    finally:
        process.terminate()
        process.wait(30)


def test_a_dns_rebinding_page_is_not_served(store):
    c = create_app(database_url=store, allowed_hosts={"127.0.0.1", "localhost"}).test_client()
    assert c.get("/api/runs", headers={"Host": "127.0.0.1:8080"}).status_code == 200
    evil = c.post("/api/workspaces/w/runs", json={"template": "demo"}, headers={
        **CSRF, "Host": "rebind.attacker.example:8080", "Origin": "http://rebind.attacker.example:8080",
        "Sec-Fetch-Site": "same-origin"})
    assert evil.status_code == 421
    assert c.get("/api/runs", headers={"Host": "rebind.attacker.example"}).status_code == 421


def test_pages_are_never_framed_and_the_cookie_is_not_the_token(store):
    c = create_app(database_url=store, token="s3cret-0123456789").test_client()
    login = c.get("/login?token=s3cret-0123456789")
    assert "s3cret" not in login.headers["Set-Cookie"]  # a session value derived from it
    page = c.get("/")
    assert page.status_code == 200
    assert page.headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    session = login.headers["Set-Cookie"].split("=", 1)[1].split(";")[0]
    fresh = c.application.test_client()  # no cookie: the derived value is not a bearer token
    assert fresh.get("/api/runs", headers={"Authorization": f"Bearer {session}"}).status_code == 401
    for answer in (fresh.get("/no-such-page"), fresh.post("/api/health")):  # (helper-54 L7) outside any route
        assert answer.status_code in (404, 405) and answer.headers["X-Content-Type-Options"] == "nosniff"
        assert "frame-ancestors 'none'" in answer.headers["Content-Security-Policy"]


def test_a_run_request_names_a_template_unless_the_operator_allows_documents(store, tmp_path):
    seen = []

    def authorize(action, **resource):
        seen.append((action, resource))
        return True

    c = create_app(database_url=store, authorize=authorize).test_client()
    inline = c.post("/api/workspaces/w/runs", json={"template": template(script_step(10, "id")), "workspace": {
        "home_dir": str(tmp_path / "h")}}, headers=CSRF)
    assert inline.status_code == 403 and "stored templates only" in inline.json["error"]
    assert ("run", {"workspace_id": "w", "template": "<inline>"}) in seen
    named = c.post("/api/workspaces/w/runs", json={"template": "demo", "workspace": {
        "home_dir": str(tmp_path / "h")}}, headers=CSRF)
    assert named.status_code == 202
    assert ("run", {"workspace_id": "w", "template": "demo"}) in seen
    wait_done(named.json["run_id"], store)
    saved = c.put("/api/templates/python-base", json={"name": "python-base", "version": "9.9.9", "actions": [
        script_step(10, "id")]}, headers=CSRF)
    assert saved.status_code == 409 and "shipped with dagrun" in saved.json["error"]


def test_a_workspace_url_never_resumes_another_workspaces_run(client, store, tmp_path):
    theirs = client.post("/api/workspaces/bob/runs", json={"template": template(script_step(10, "exit 1", id="s")),
                                                           "workspace": {"home_dir": str(tmp_path / "b")}},
                         headers=CSRF)
    run_id = theirs.json["run_id"]
    assert wait_done(run_id, store)["status"] == "failed"
    client.post("/api/workspaces/alice/runs", json={"template": template(script_step(10, "true")),
                                                    "workspace": {"home_dir": str(tmp_path / "a")}}, headers=CSRF)
    sneaky = client.post("/api/workspaces/alice/actions/resume", json={"run_id": run_id}, headers=CSRF)
    nowhere = client.post("/api/workspaces/alice/actions/resume", json={"run_id": "0" * 36}, headers=CSRF)
    assert sneaky.status_code == nowhere.status_code == 404  # (helper-56) said alike: no oracle of other runs
    assert sneaky.json["error"].replace(run_id, "X") == nowhere.json["error"].replace("0" * 36, "X")
    assert get_run(run_id, database_url=store)["status"] == "failed"  # not resumed


def test_stored_secrets_are_masked_when_read_and_kept_when_saved(client):
    doc = template(step(10, "create_postgresql_user", id="role", action_config={
        "username": "app", "password": "TopSecretPw123"}), name="withsecret")
    assert client.put("/api/templates/withsecret", json=doc, headers=CSRF).status_code == 200
    for answer in (client.get("/api/templates/withsecret"), client.get("/templates/withsecret")):
        assert answer.status_code == 200 and b"TopSecretPw123" not in answer.data
    shown = client.get("/api/templates/withsecret").json["document"]
    assert shown["actions"][0]["action_config"]["password"] == "********"
    shown["version"] = "1.0.1"
    assert client.put("/api/templates/withsecret", json=shown, headers=CSRF).status_code == 200  # saved unchanged
    from dagrun.store.seeding import stored_templates
    url = client.application.blueprints["dagrun"].dagrun_service.database_url
    kept = [t for t in stored_templates(url) if t["name"] == "withsecret"][0]
    assert kept["actions"][0]["action_config"]["password"] == "TopSecretPw123"


def test_a_variable_a_secret_field_reads_is_masked_with_its_default(client):
    """(helper-30) vars: {pw: ...} feeding a secret field shows masked, and
    saving the masked document back keeps the stored default."""
    doc = template(step(10, "create_postgresql_user", id="role", action_config={
        "username": "app", "password": "{{ vars.pw }}"}), name="varsecret", vars={"pw": "DefaultPw-4242", "n": 3})
    assert client.put("/api/templates/varsecret", json=doc, headers=CSRF).status_code == 200
    for answer in (client.get("/api/templates/varsecret"), client.get("/templates/varsecret")):
        assert answer.status_code == 200 and b"DefaultPw-4242" not in answer.data
    shown = client.get("/api/templates/varsecret").json["document"]
    assert shown["vars"] == {"pw": "********", "n": 3}
    assert client.put("/api/templates/varsecret", json=shown, headers=CSRF).status_code == 200
    from dagrun.store.seeding import stored_templates
    url = client.application.blueprints["dagrun"].dagrun_service.database_url
    assert [t for t in stored_templates(url) if t["name"] == "varsecret"][0]["vars"]["pw"] == "DefaultPw-4242"


def test_a_run_that_took_a_password_resumes_over_http(store, tmp_path):
    """(helper-30) The variable that filled a secret field is not stored: the
    resume request gives it again (it could not before)."""
    login = {"name": "login", "action_type": "shell", "execution_handler": 'echo "{{ config.url }}" > ~/url',
             "config_schema": {"type": "object", "properties": {"url": {"type": "string", "x-secret": True}}}}
    c = create_app(database_url=store, trusted_actions=[login], allow_inline_templates=True).test_client()
    gate, home = tmp_path / "gate", tmp_path / "h"
    doc = template(step(10, "login", action_config={"url": "pg://app:{{ vars.pw }}@db/x"}),
                   script_step(20, f"test -f {gate}", id="gated", requires=["login"]), vars={"pw": ""})
    started = c.post("/api/workspaces/pw/runs", json={"template": doc, "workspace": {"home_dir": str(home)},
                                                       "variables": {"pw": "Http-Passw0rd"}}, headers=CSRF)
    run_id = started.json["run_id"]
    assert api.running_here(run_id).wait(60).status.value == "failed"
    gate.touch()
    refused = c.post(f"/api/runs/{run_id}/resume", json={}, headers=CSRF)
    assert refused.status_code == 422 and "secrets that are not stored: pw" in refused.json["error"]
    assert refused.json["needs"] == ["pw"] and '{"secrets": {"NAME": ...}} in the request body' in refused.json["error"]
    assert "--secret" not in refused.json["error"]  # said as this API takes them, not as the CLI does
    assert c.post(f"/api/runs/{run_id}/resume", json={"variables": "pw"}, headers=CSRF).status_code == 422
    again = c.post(f"/api/runs/{run_id}/resume", json={"variables": {"pw": "Http-Passw0rd"}}, headers=CSRF)
    assert again.status_code == 202
    assert api.running_here(run_id).wait(60).success
    assert (home / "url").read_text() == "pg://app:Http-Passw0rd@db/x\n"


def test_a_secret_written_in_a_stored_template_is_never_asked_of_a_request(store, tmp_path):
    """The template's author's secret (step.field) is not stored with the
    run; a tenant resuming over HTTP could not know it, and a value taken
    from a request would be checked against it (a guessing oracle). The
    service takes it from the stored template."""
    login = {"name": "login", "action_type": "shell", "execution_handler": 'echo "{{ config.url }}" > ~/url',
             "config_schema": {"type": "object", "properties": {"url": {"type": "string", "x-secret": True}}}}
    c = create_app(database_url=store, trusted_actions=[login]).test_client()
    gate, home = tmp_path / "gate", tmp_path / "h"
    doc = template(step(10, "login", id="login", action_config={"url": "pg://app:Author-Pw-77@db/x"}),
                   script_step(20, f"test -f {gate}", id="gated", requires=["login"]), name="authored")
    assert c.put("/api/templates/authored", json=doc, headers=CSRF).status_code == 200
    started = c.post("/api/workspaces/t1/runs", json={"template": "authored", "workspace": {"home_dir": str(home)}},
                     headers=CSRF)
    run_id = started.json["run_id"]
    assert api.running_here(run_id).wait(60).status.value == "failed"
    gate.touch()
    guess = c.post(f"/api/runs/{run_id}/resume", json={"secrets": {"login.url": "pg://app:guess@db/x"}},
                   headers=CSRF)
    assert guess.status_code == 422 and "login.url: written in the template, so not given by a request" \
        in guess.json["error"]
    (home / "url").unlink()
    again = c.post(f"/api/runs/{run_id}/resume", json={"resume_from_action_id": "login"}, headers=CSRF)
    assert again.status_code == 202, again.json
    assert api.running_here(run_id).wait(60).success
    assert (home / "url").read_text() == "pg://app:Author-Pw-77@db/x\n"


def test_a_secret_default_of_a_stored_template_is_taken_from_it_at_resume(store, tmp_path):
    """(helper-56 M1) The default of a variable a secret field reads is not
    stored with the run: a resume asked whoever resumed for the author's
    password and told each guess apart. It comes from the stored template;
    a value given for it is not used nor checked."""
    login = {"name": "login", "action_type": "shell", "execution_handler": 'echo "{{ config.url }}" > ~/url',
             "config_schema": {"type": "object", "properties": {"url": {"type": "string", "x-secret": True}}}}
    c = create_app(database_url=store, trusted_actions=[login]).test_client()
    gate, home = tmp_path / "gate", tmp_path / "h"
    doc = template(step(10, "login", id="login", action_config={"url": "pg://app:{{ vars.pw }}@db/x"}),
                   script_step(20, f"test -f {gate}", id="gated", requires=["login"]), name="withdefault",
                   vars={"pw": "Author-Default-Pw"})
    assert c.put("/api/templates/withdefault", json=doc, headers=CSRF).status_code == 200
    started = c.post("/api/workspaces/t2/runs", json={"template": "withdefault", "workspace": {
        "home_dir": str(home)}}, headers=CSRF)
    run_id = started.json["run_id"]
    assert api.running_here(run_id).wait(60).status.value == "failed"
    gate.touch()
    (home / "url").unlink()
    for body in ({"variables": {"pw": "a-guess"}}, {"resume_from_action_id": "login"}):
        again = c.post(f"/api/runs/{run_id}/resume", json={**body, "resume_from_action_id": "login"}, headers=CSRF)
        assert again.status_code == 202, again.json
        assert api.running_here(run_id).wait(60).success
        assert (home / "url").read_text() == "pg://app:Author-Default-Pw@db/x\n"


def test_a_stored_template_extending_a_stored_one_runs_and_shows(store, tmp_path):
    """(helper-30) Both are stored: the child found its base nowhere (422);
    and a template using the operator's trusted action could not be saved."""
    notify = {"name": "notify", "action_type": "shell", "execution_handler": "echo notified > ~/notified"}
    c = create_app(database_url=store, trusted_actions=[notify]).test_client()
    base = template(script_step(10, "echo base > ~/base", id="b"), name="basedb")
    child = {"name": "childdb", "version": "1.0.0", "extends": "basedb",
             "actions": [step(20, "notify", id="n", requires=["b"])]}
    assert c.put("/api/templates/basedb", json=base, headers=CSRF).status_code == 200
    saved = c.put("/api/templates/childdb", json=child, headers=CSRF)
    assert saved.status_code == 200, saved.json
    assert c.get("/api/templates/childdb").status_code == 200 and c.get("/templates/childdb").status_code == 200
    home = tmp_path / "h"
    started = c.post("/api/workspaces/kid/runs", json={"template": "childdb", "workspace": {"home_dir": str(home)}},
                     headers=CSRF)
    assert started.status_code == 202, started.json
    assert api.running_here(started.json["run_id"]).wait(60).success
    assert (home / "base").exists() and (home / "notified").exists()


@pytest.mark.parametrize("password, defaults, hidden", [
    ("{{ vars.db.password }}", {"db": {"host": "h1", "password": "SECRET-NESTED"}}, {"db": {"host": "h1",
                                                                                          "password": "********"}}),
    ("{{ vars.pw[0] }}", {"pw": ["SECRET-LIST", "x"]}, {"pw": "********"}),
    ("{{ vars['p' ~ 'w'] }}", {"pw": "SECRET-COMPUTED", "n": "plain"}, {"pw": "********", "n": "********"}),
])
def test_a_default_a_secret_field_reads_in_part_is_masked_where_the_template_shows(client, password, defaults,
                                                                                   hidden):
    """(helper-54 H1) The editor and the API masked a default only when a
    secret field read it by its plain name: a key of a mapping, a list's
    item or a computed key showed in clear (the run's own rule masked them)."""
    name = f"leak{sorted(defaults)[0]}{len(password)}"
    doc = template(step(10, "create_postgresql_user", id="role", action_config={
        "username": "app", "password": password}), name=name, vars=defaults)
    assert client.put(f"/api/templates/{name}", json=doc, headers=CSRF).status_code == 200
    child = {"name": name + "-child", "version": "1.0.0", "extends": name, "actions": [step(20, "noop", id="n")]}
    assert client.put(f"/api/templates/{name}-child", json=child, headers=CSRF).status_code == 200
    secret = [v for v in json.dumps(defaults).split('"') if v.startswith("SECRET-")][0].encode()
    for path in (f"/api/templates/{name}", f"/templates/{name}", f"/api/templates/{name}-child",
                 f"/templates/{name}-child"):
        answer = client.get(path)
        assert answer.status_code == 200 and secret not in answer.data, path
    shown = client.get(f"/api/templates/{name}").json["document"]
    assert shown["vars"] == hidden
    # Saved back as shown, the stored defaults are kept (the mask never replaces them).
    assert client.put(f"/api/templates/{name}", json={**shown, "version": "1.0.1"}, headers=CSRF).status_code == 200
    from dagrun.store.seeding import stored_templates
    url = client.application.blueprints["dagrun"].dagrun_service.database_url
    assert [t for t in stored_templates(url) if t["name"] == name and t["version"] == "1.0.1"][0]["vars"] == defaults
    # A mask where no secret field reads any more is refused, not stored.
    unread = {**shown, "version": "1.0.2", "actions": [step(10, "noop", id="role")]}
    refused = client.put(f"/api/templates/{name}", json=unread, headers=CSRF)
    assert refused.status_code == 422 and "a masked default stays only while a secret field reads it" \
        in refused.json["error"]


def test_short_secret_defaults_are_masked_in_the_explanation_by_place(client):
    """(helper-56 L3) The explanation was masked by text, and the redactor
    leaves values too short to mask alone: a password made of two-letter
    parts showed whole."""
    doc = template(step(10, "create_postgresql_user", id="role", action_config={
        "username": "app", "password": "{{ vars.a ~ vars.b ~ vars.d.k1 }}"}), name="shorty",
        vars={"a": "Zq", "b": "x!", "n": 1, "d": {"k1": "ab", "p": "q"}})
    assert client.put("/api/templates/shorty", json=doc, headers=CSRF).status_code == 200
    shown = client.get("/api/templates/shorty").json
    assert shown["explained"]["vars"] == {"a": {"value": "********", "origin": "shorty"},
                                          "b": {"value": "********", "origin": "shorty"},
                                          "n": {"value": 1, "origin": "shorty"},
                                          "d": {"value": {"k1": "********", "p": "q"}, "origin": "shorty"}}


def test_a_resume_body_gives_only_what_was_not_stored(store, tmp_path):
    """(helper-32) Any key of {variables}/{secrets} was taken as an override:
    b.script replaced a step's code (run as root), workspace.id and
    workspace.home_dir moved the run into another workspace's home."""
    c = create_app(database_url=store, allow_inline_templates=True).test_client()
    gate, home, mark = tmp_path / "gate", tmp_path / "h", tmp_path / "MARK"
    doc = template(script_step(10, "echo a", id="a"), script_step(20, f"test -f {gate}", id="b", requires=["a"]),
                   vars={"branch": "main"})
    started = c.post("/api/workspaces/own/runs", json={"template": doc, "workspace": {"home_dir": str(home)}},
                     headers=CSRF)
    run_id = started.json["run_id"]
    assert api.running_here(run_id).wait(60).status.value == "failed"
    gate.touch()
    for body in ({"variables": {"b.script": f"touch {mark}"}}, {"secrets": {"workspace.id": "other"}},
                 {"secrets": {"workspace.home_dir": str(tmp_path / "elsewhere")}}, {"variables": {"branch": "x"}}):
        refused = c.post(f"/api/runs/{run_id}/resume", json=body, headers=CSRF)
        assert refused.status_code == 422 and "is given again only what was not stored (none)" in refused.json["error"]
    assert not mark.exists()
    assert c.post(f"/api/runs/{run_id}/resume", json={}, headers=CSRF).status_code == 202
    assert api.running_here(run_id).wait(60).success and not mark.exists()


def test_a_tenant_cannot_make_its_workspace_identity_resumable(store, tmp_path):
    """(helper-33) Variables equal to its own id and home, part of a secret
    field, made workspace.id/home_dir 'secrets' a resume could give again."""
    login = {"name": "login", "action_type": "shell", "execution_handler": "true",
             "config_schema": {"type": "object", "properties": {"url": {"type": "string", "x-secret": True}}}}
    c = create_app(database_url=store, trusted_actions=[login], allow_inline_templates=True).test_client()
    gate, home = tmp_path / "gate", tmp_path / "h1"
    doc = template(step(10, "login", action_config={"url": "pg://{{ vars.user }}:{{ vars.pw }}@db"}),
                   script_step(20, f"test -f {gate}", id="b", requires=["login"]), vars={"user": "", "pw": ""})
    started = c.post("/api/workspaces/tenant1/runs", json={"template": doc, "workspace": {"home_dir": str(home)},
                                                            "variables": {"user": "tenant1", "pw": str(home)}},
                     headers=CSRF)
    run_id = started.json["run_id"]
    assert api.running_here(run_id).wait(60).status.value == "failed"
    from dagrun.store.engine import engine_for
    from dagrun.store.models import ProvisioningRun
    with engine_for(store).connect() as conn:
        stored = conn.execute(ProvisioningRun.__table__.select().where(ProvisioningRun.id == run_id)).first()
    assert stored.workspace["id"] == "tenant1" and stored.workspace["home_dir"] == str(home)
    gate.touch()
    moved = c.post(f"/api/runs/{run_id}/resume", json={"variables": {
        "user": "tenant1", "pw": str(home), "workspace.id": "victim", "workspace.home_dir": str(tmp_path / "v")}},
        headers=CSRF)
    assert moved.status_code == 422 and "not workspace.home_dir, workspace.id" in moved.json["error"]


def test_a_secret_default_stays_masked_through_a_child_and_an_edit(client):
    """(helper-37) A child template's explanation showed its base's secret
    default; an edit could keep the mask on a default no secret field reads."""
    base = template(step(10, "create_postgresql_user", id="role", action_config={
        "username": "app", "password": "{{ vars.pw }}"}), name="par2", vars={"pw": "TOPSECRET123"})
    assert client.put("/api/templates/par2", json=base, headers=CSRF).status_code == 200
    child = {"name": "chi2", "version": "1.0.0", "extends": "par2", "actions": [step(20, "noop", id="n")]}
    assert client.put("/api/templates/chi2", json=child, headers=CSRF).status_code == 200
    for path in ("/api/templates/chi2", "/templates/chi2", "/api/templates/par2"):
        answer = client.get(path)
        assert answer.status_code == 200 and b"TOPSECRET123" not in answer.data, path
    moved = client.get("/api/templates/par2").json["document"]
    moved["actions"][0]["action_config"]["password"] = "other"  # no secret field reads vars.pw any more
    refused = client.put("/api/templates/par2", json=moved, headers=CSRF)
    assert refused.status_code == 422 and "a masked default stays only while a secret field reads it" in refused.json["error"]


def test_the_action_list_masks_secret_defaults(store, tmp_path):
    token = {"name": "notify", "action_type": "shell", "execution_handler": "true",
             "config_schema": {"type": "object", "properties": {"token": {"type": "string", "x-secret": True},
                                                                 "channel": {"type": "string"}}},
             "default_config": {"token": "Webhook-Tok3n", "channel": "ops"}}
    app = create_app(database_url=store, trusted_actions=[token])
    shown = [a for a in app.test_client().get("/api/actions", headers=CSRF).json["actions"] if a["name"] == "notify"]
    assert shown[0]["default_config"] == {"token": "********", "channel": "ops"}


def test_a_secret_written_in_an_actions_schema_is_masked_wherever_it_shows(store, tmp_path):
    """(helper-54 M1) A default (or const, enum, examples) an x-secret
    property's schema holds showed in clear in /api/actions, /actions and
    every template page's schemas."""
    token = {"name": "notify", "action_type": "shell", "execution_handler": "true",
             "config_schema": {"type": "object", "properties": {
                 "token": {"type": "string", "x-secret": True, "default": "Schema-Tok3n-1",
                           "examples": ["Schema-Tok3n-2"]},
                 "level": {"type": "string", "enum": ["info", "warn"], "default": "info"}}}}
    c = create_app(database_url=store, trusted_actions=[token]).test_client()
    assert c.put("/api/templates/notes", json=template(step(10, "notify", id="n"), name="notes"),
                 headers=CSRF).status_code == 200
    for path in ("/api/actions", "/actions", "/templates/notes", "/api/templates/notes"):
        answer = c.get(path)
        assert answer.status_code == 200 and b"Schema-Tok3n" not in answer.data, path
    shown = [a for a in c.get("/api/actions").json["actions"] if a["name"] == "notify"][0]["config_schema"]
    assert shown["properties"]["token"]["default"] == "********"
    assert shown["properties"]["level"] == {"type": "string", "enum": ["info", "warn"], "default": "info"}


def test_an_operators_action_secrets_show_in_no_schema_nor_error(store):
    """(helper-56 M2) writeOnly marks a secret as x-secret does; and a
    template's errors quoted an x-secret enum's tokens, or (oneOf, not)
    the whole config with the action's secret default."""
    ops = {"name": "ops", "action_type": "shell", "execution_handler": "true",
           "config_schema": {"type": "object", "properties": {
               "key": {"type": "string", "writeOnly": True, "default": "Ops-WriteOnly-1", "examples": ["Ops-Ex-2"]},
               "tier": {"type": "string", "x-secret": True, "enum": ["Ops-Enum-3"]},
               "mode": {"type": "string"}},
               "not": {"required": ["mode"]}},
           "default_config": {"key": "Ops-Default-4"}}
    c = create_app(database_url=store, trusted_actions=[ops]).test_client()
    for path in ("/api/actions", "/actions"):
        assert b"Ops-" not in c.get(path).data, path
    for config in ({"tier": "guess"}, {"mode": "x"}):
        answer = c.put("/api/templates/opsuse", json=template(step(10, "ops", id="o", action_config=config),
                                                               name="opsuse"), headers=CSRF)
        assert answer.status_code == 422 and "Ops-" not in answer.get_data(as_text=True), answer.json
        assert "not shown: it is about a secret" in answer.json["error"]


def test_event_streams_are_capped(store, tmp_path):
    app = create_app(database_url=store, max_streams=1, allow_inline_templates=True)
    c = app.test_client()
    started = c.post("/api/workspaces/s/runs", json={"template": template(script_step(10, "sleep 1", id="s")),
                                                     "workspace": {"home_dir": str(tmp_path / "h")}}, headers=CSRF)
    run_id = started.json["run_id"]
    first = c.get(f"/api/runs/{run_id}/events", buffered=False)
    assert first.status_code == 200
    second = c.get(f"/api/runs/{run_id}/events", buffered=False)
    assert second.status_code == 429
    first.close()  # the slot comes back when the server closes the stream
    third = c.get(f"/api/runs/{run_id}/events", buffered=False)
    assert third.status_code == 200
    third.close()
    wait_done(run_id, store)


def test_bad_query_values_and_a_mounted_blueprint_answer_in_json(store):
    from flask import Flask

    from dagrun.web import create_blueprint
    app = Flask("host")
    app.register_blueprint(create_blueprint(database_url=store), url_prefix="/p")
    c = app.test_client()
    for limit in ("abc", "-1", "%C2%B2"):
        answer = c.get(f"/p/api/runs?limit={limit}")
        assert answer.status_code == 422 and "limit must be" in answer.json["error"]
    missing = c.get("/p/api/runs/nope")
    assert missing.status_code == 404 and missing.is_json


def test_listings_show_only_the_runs_the_caller_may_read(store, tmp_path):
    c = create_app(database_url=store, allow_inline_templates=True).test_client()
    for ws in ("mine", "theirs"):
        answer = c.post(f"/api/workspaces/{ws}/runs", json={"template": template(script_step(10, "true")),
                                                            "workspace": {"home_dir": str(tmp_path / ws)}},
                        headers=CSRF)
        wait_done(answer.json["run_id"], store)
    limited = create_app(database_url=store, authorize=lambda action, **r: r.get("workspace_id") in (None, "mine")
                         ).test_client()
    assert {r["workspace_id"] for r in limited.get("/api/runs").json["runs"]} == {"mine"}
    assert "theirs" not in limited.get("/").data.decode()


def test_a_password_in_the_url_query_is_never_shown(tmp_path):
    from dagrun.store.engine import describe_url
    shown = describe_url("postgresql://app@127.0.0.1:5432/db?password=SuperPw2&sslmode=require")
    assert "SuperPw2" not in shown and "sslmode=require" in shown
    for unreadable in ("host=h password=pw4 dbname=x", "postgresql://u:pw4@h:notaport/db"):
        assert "pw4" not in describe_url(unreadable)


def test_a_masked_secret_never_moves_where_it_shows(client):
    """An editor who sees only masks cannot get a stored secret out by
    moving the mask to another action, step or field."""
    doc = template(step(10, "create_postgresql_user", id="role", action_config={
        "username": "bob", "password": "S3CRET-PW"}), script_step(20, "true", id="other"), name="moves")
    assert client.put("/api/templates/moves", json=doc, headers=CSRF).status_code == 200
    shown = client.get("/api/templates/moves").json["document"]
    role, other = shown["actions"]
    for changed in ({**shown, "actions": [{**role, "action_name": "noop"}, other]},  # another action
                    {**shown, "actions": [role, {**other, "action_config": {"script": role["action_config"][
                        "password"]}}]},  # another step's field
                    {**shown, "actions": [{**role, "id": "renamed"}, other]}):  # another step
        answer = client.put("/api/templates/moves", json=changed, headers=CSRF)
        assert answer.status_code == 422 and "a masked secret stays only" in answer.json["error"], answer.json
    stored = client.get("/api/templates/moves")
    assert b"S3CRET-PW" not in stored.data


def test_a_template_with_a_literal_connection_url_is_shown_masked(client):
    url = "postgresql://app:Pw-In-Url@127.0.0.1:5432/app"
    doc = template(step(10, "create_postgresql_user", id="role", action_config={
        "username": "app", "password": "DbAdminPw9", "connection_url": url}), name="withurl")
    assert client.put("/api/templates/withurl", json=doc, headers=CSRF).status_code == 200
    for answer in (client.get("/api/templates/withurl"), client.get("/templates/withurl")):
        assert answer.status_code == 200, answer.data[:300]
        assert b"Pw-In-Url" not in answer.data and b"DbAdminPw9" not in answer.data


def test_the_token_can_come_from_a_file(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("from-a-file-0123456789\n")
    server = Server(f"sqlite:///{tmp_path}/f.db", tmp_path, token="from-the-environment",
                    extra=("--token-file", str(token_file)))  # the file wins over $DAGRUN_TOKEN
    try:
        assert server.get("/api/runs", headers={"Authorization": "Bearer from-a-file-0123456789"})[0] == 200
        assert server.get("/api/runs", headers={"Authorization": "Bearer from-the-environment"})[0] == 401
    finally:
        server.stop()
    token_file.write_text("x\n")  # (helper-54 L6) a token a network can guess is refused
    short = subprocess.run([sys.executable, "-m", "dagrun", "serve", "--port", "0", "--db", f"sqlite:///{tmp_path}/f.db",
                            "--token-file", str(token_file)], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert short.returncode == 2 and "the token must be at least 16 characters (this one has 1)" in short.stderr


def test_silent_connections_do_not_stop_the_service_from_answering(tmp_path):
    """(helper-54 M4) waitress accepts 100 connections and kept a silent one
    for an hour: 110 sockets that send nothing, from any local user, kept
    /api/health from answering."""
    import socket
    server = Server(f"sqlite:///{tmp_path}/idle.db", tmp_path)
    idle = []
    try:
        for _ in range(110):
            idle.append(socket.create_connection(("127.0.0.1", server.port)))
        answer = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        with answer:
            answer.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            assert answer.recv(64).startswith(b"HTTP/1.1 200")  # (a timeout here: it did not answer)
    finally:
        for sock in idle:
            sock.close()
        server.stop()


def test_a_template_one_may_not_read_is_neither_listed_nor_reached_through_extends(store, tmp_path):
    """(helper-54 L1, L2) The list named every template (and its
    description) to whoever could read any; a template extending one its
    saver may not read ran (and showed) that one's steps and defaults."""
    who = {"user": "alice"}

    def authorize(action, **resource):
        return not str(resource.get("template") or "").startswith("alice") or who["user"] == "alice"

    c = create_app(database_url=store, authorize=authorize, allow_inline_templates=True).test_client()
    secret = {**template(script_step(10, "echo {{ vars.pw }} > ~/pw", id="s"), name="alice-secret",
                         description="Alice's internal", vars={"pw": "Alice-Secret-Pw"}), "template_id": 7007}
    assert c.put("/api/templates/alice-secret", json=secret, headers=CSRF).status_code == 200
    who["user"] = "bob"
    assert "alice-secret" not in [t["name"] for t in c.get("/api/templates").json["templates"]]
    assert b"Alice's internal" not in c.get("/").data
    child = {"name": "bob-z", "version": "1.0.0", "extends": "alice-secret", "actions": [script_step(20, "true", id="z")]}
    saved = c.put("/api/templates/bob-z", json=child, headers=CSRF)
    assert saved.status_code == 422 and "base template 'alice-secret' not found" in saved.json["error"], saved.json
    # (helper-56) nor by {name, version}, nor by its template_id; and "did you mean" names none of alice's
    for other in ({**child, "extends": {"name": "alice-secret"}}, {**child, "extends": None, "base_template_id": 7007},
                  {**child, "extends": "bob-alice-secret"}):
        refused = c.put("/api/templates/bob-z", json={k: v for k, v in other.items() if v is not None}, headers=CSRF)
        assert refused.status_code == 422 and "not found" in refused.json["error"], refused.json
        assert "did you mean" not in refused.json["error"], refused.json  # (alice-secret is near bob-alice-secret)
    taken = c.put("/api/templates/bob-id", json={**template(script_step(10, "true")), "name": "bob-id",
                                                 "template_id": 7007}, headers=CSRF)
    assert taken.status_code == 422 and "template_id 7007 is another template's" in taken.json["error"]
    for base in ("alice-secret", {"name": "alice-secret"}):
        started = c.post("/api/workspaces/bob-w/runs", json={"template": {**child, "extends": base}, "workspace": {
            "home_dir": str(tmp_path / "b")}}, headers=CSRF)
        assert started.status_code == 422 and not (tmp_path / "b" / "pw").exists(), started.json
    who["user"] = "alice"  # saved by someone who may read the base; bob still may not read through it
    assert c.put("/api/templates/bob-z", json=child, headers=CSRF).status_code == 200
    who["user"] = "bob"
    for path in ("/api/templates/bob-z", "/templates/bob-z", "/api/templates/bob-z/actions"):
        answer = c.get(path)
        assert answer.status_code == 422 and b"Alice-Secret-Pw" not in answer.data, path
    assert c.post("/api/workspaces/bob-w/runs", json={"template": "bob-z", "workspace": {
        "home_dir": str(tmp_path / "b")}}, headers=CSRF).status_code == 422
    assert not (tmp_path / "b" / "pw").exists()


def test_a_tenants_runs_are_not_hidden_behind_newer_runs_of_others(store, tmp_path):
    """(helper-54 L8) /api/runs took `limit` runs, then kept the caller's."""
    from dagrun import run_template
    for ws in ("mine", "theirs", "theirs"):
        assert run_template(template(script_step(10, "true")), {"id": ws, "home_dir": str(tmp_path / ws)},
                            database_url=store).success
    c = create_app(database_url=store, authorize=lambda action, **r: r.get("workspace_id") in (None, "mine")
                   ).test_client()
    assert [r["workspace_id"] for r in c.get("/api/runs?limit=1").json["runs"]] == ["mine"]
    refused = c.put("/api/templates/" + "%3Cimg%20src%3Dx%3E", json=template(script_step(10, "true")), headers=CSRF)
    assert refused.status_code == 422 and "is not a template name" in refused.json["error"]


def test_odd_template_bodies_and_nuls_are_one_clear_error(client):
    """(helper-56 L2) {"actions": 5} or a step id that is an object was a
    500 before the compiler saw it; a NUL a 500 (PostgreSQL) or a 503; a
    version that is an object was stored as its repr."""
    for body, said in (({"actions": 5}, "5 is not of type 'array'"),
                       ({"vars": 5, "actions": True}, "problems found"),
                       ({"actions": [{"id": {"a": 1}, "sequence_order": 1, "action_name": "noop"}]},
                        "is not of type 'string'"),
                       ({"version": {"a": 1}, "actions": [{"sequence_order": 1, "action_name": "noop"}]},
                        "is not a version"),
                       ({"actions": [{"sequence_order": 1, "action_name": "noop", "action_config": {"x": "a\0b"}}]},
                        "holds a NUL character")):
        answer = client.put("/api/templates/odd", json=body, headers=CSRF)
        assert answer.status_code == 422 and said in answer.json["error"], (body, answer.status_code, answer.data)
    answer = client.post("/api/workspaces/w/runs", json={"template": "demo", "variables": {"x\0": "y"}}, headers=CSRF)
    assert answer.status_code == 422 and "holds a NUL character" in answer.json["error"]


def test_ids_and_filters_in_the_url_are_printable_and_bounded(client):
    """(helper-54 L3) A NUL in a filter was a 500 on PostgreSQL; an id
    longer than the column a 503 naming the database."""
    for method, path in (("get", "/api/runs?workspace=a%00b"), ("get", "/api/runs?status=a%00b"),
                         ("get", "/api/workspaces/a%00b/action-executions"),
                         ("post", "/api/workspaces/" + "w" * 101 + "/runs"), ("get", "/api/runs/" + "r" * 101)):
        answer = getattr(client, method)(path, json={"template": "demo"}, headers=CSRF) if method == "post" \
            else client.get(path)
        assert answer.status_code == 422 and "must be printable text of at most 100 characters" \
            in answer.get_json()["error"], (path, answer.status_code, answer.data[:200])


def test_a_store_failure_is_not_described_to_the_caller(tmp_path, caplog):
    """(helper-54 L3) Its message names the database's host, port and user:
    for the operator's log, not the tenant."""
    import logging
    c = create_app(database_url="postgresql://postgres@127.0.0.1:1/nowhere").test_client()
    with caplog.at_level(logging.ERROR, logger="dagrun.web"):
        answer = c.get("/api/runs")
    assert answer.status_code == 503 and "127.0.0.1" not in answer.get_data(as_text=True)
    assert any("127.0.0.1" in r.getMessage() for r in caplog.records)


def test_a_request_body_over_4_mb_is_refused_before_it_is_read(client):
    big = {"template": "demo", "variables": {"x": "y" * (4 * 1024 * 1024)}}
    answer = client.post("/api/workspaces/w/runs", json=big, headers=CSRF)
    assert answer.status_code == 413 and "error" in answer.get_json()
    assert client.get("/api/runs").get_json()["runs"] == []  # nothing started


def test_the_real_server_refuses_a_body_over_4_mb_too(tmp_path):
    """waitress would otherwise buffer up to 1 GB of a request before the
    application sees it."""
    server = Server(f"sqlite:///{tmp_path}/big.db", tmp_path)
    try:
        try:
            status, _ = server.post("/api/workspaces/w/runs", {"template": "demo", "variables": {
                "x": "y" * (4 * 1024 * 1024)}}, headers=CSRF)
        except urllib.error.URLError as exc:  # waitress answers 413 and closes while the body is still sent
            # (reset or broken pipe: which one depends on where the client's send was when it closed)
            assert isinstance(exc.reason, (ConnectionResetError, BrokenPipeError)), exc
        else:
            assert status == 413
        status, body = server.get("/api/runs")
        assert status == 200 and body["runs"] == [], body  # nothing started, and it still answers
    finally:
        server.stop()


def test_a_request_body_nested_too_deeply_is_one_clear_error(client):
    deep = '{"template": "demo", "variables": {"x": ' + "[" * 100_000 + "]" * 100_000 + "}}"
    answer = client.post("/api/workspaces/w/runs", data=deep, headers={**CSRF, "Content-Type": "application/json"})
    assert answer.status_code == 422 and answer.get_json() == {"error": "the request body is nested too deeply"}


def test_the_service_takes_whole_run_ids_and_typed_bodies(client, store, tmp_path):
    """From an attack review (helper-22): an id prefix found (and named) any
    tenant's run, '%' matched them all; a list for variables, a control
    character in a workspace id or a list for run_id was a 500 (or named
    the database)."""
    started = client.post("/api/workspaces/w/runs", headers=CSRF, json={
        "template": template(script_step(10, "true", id="a")), "workspace": {"home_dir": str(tmp_path / "h")}})
    assert started.status_code == 202, started.json
    run_id = started.json["run_id"]
    wait_done(run_id, store)
    assert client.get(f"/api/runs/{run_id}").status_code == 200
    for partial in (run_id[:8], "%25", "_"):
        answer = client.get(f"/api/runs/{partial}")
        assert answer.status_code == 404 and "matches" not in answer.get_data(as_text=True)
    bad = client.post("/api/workspaces/w/runs", headers=CSRF, json={"template": "demo", "variables": ["x"]})
    assert bad.status_code == 422 and "variables must be an object" in bad.json["error"]
    assert client.post("/api/workspaces/%01x/runs", headers=CSRF, json={"template": "demo"}).status_code == 422
    resumed = client.post("/api/workspaces/w/actions/resume", headers=CSRF, json={"run_id": ["x"]})
    assert resumed.status_code == 422 and "sqlite" not in resumed.get_data(as_text=True)


def test_a_killed_process_its_parent_has_not_reaped_is_dead(client, store, tmp_path):
    """(helper-63) A killed owner its parent had not waited for (a zombie)
    answered signals and kept its /proc entry: its run was taken for alive,
    and the workspace stayed claimed until the reap."""
    other, run_id = run_elsewhere(client, store, tmp_path, "zombie")
    try:
        other.kill()  # and not reaped
        deadline = time.monotonic() + 30
        while Path(f"/proc/{other.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        answer = client.post(f"/api/runs/{run_id}/cancel", headers=CSRF)
        assert answer.status_code == 200 and answer.json["closed"] == "interrupted"
        run = get_run(run_id, database_url=store)
        assert run["status"] == "failed" and run["error"].startswith("interrupted")
    finally:
        other.kill()
        other.wait(30)


def test_cancelling_a_run_whose_process_died_closes_it(client, store, tmp_path):
    """Nobody is left to hear the request: the run is closed as interrupted
    at once, and can be resumed. Before that it shows as interrupted (the
    store says running until a resume or a cancel: it showed 'running', and
    its events streamed until their timeout)."""
    other, run_id = run_elsewhere(client, store, tmp_path, "gone")
    try:
        other.kill()
        other.wait(30)
        shown = client.get(f"/api/runs/{run_id}").json
        assert shown["status"] == "interrupted" and "dagrun resume" in shown["error"]
        assert [s["status"] for s in shown["steps"]] == ["interrupted"]
        assert client.get("/api/runs?workspace=gone&status=running").json["runs"] == []
        assert [r["run_id"] for r in client.get("/api/runs?workspace=gone&status=interrupted").json["runs"]] == [run_id]
        events = client.get(f"/api/runs/{run_id}/events").get_data(as_text=True)  # (ends: nobody runs it)
        assert "event: run" in events and '"status": "interrupted"' in events
        answer = client.post(f"/api/runs/{run_id}/cancel", headers=CSRF)
        assert answer.status_code == 200 and answer.json == {"run_id": run_id, "status": "failed",
                                                             "closed": "interrupted"}
        run = get_run(run_id, database_url=store)
        assert run["status"] == "failed" and run["error"].startswith("interrupted")
    finally:
        if other.poll() is None:
            other.kill()
