"""The web page in a real browser (Debian's chromium, driven by Playwright)
against the real server (``dagrun serve``): a run's page follows the run
live without a reload, shows a failure and why, resumes it with a click;
the template editor shows every problem of an invalid save. Screenshots go
to test-artifacts/ for a person to look at.

chromium comes from the system (``.ci/run`` installs it); Playwright cannot
download its own browser here. Without chromium the test fails, it does not
skip: the page is part of what we ship."""

from __future__ import annotations

import shutil
from pathlib import Path

import playwright.sync_api as playwright  # the test extra (scripts/dev installs it)
import pytest

from tests.helpers import Server, script_step, template


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CSRF = {"X-Dagrun-Request": "1"}


@pytest.fixture
def browser_page():
    assert Path(CHROMIUM).exists(), "chromium is not installed (apt-get install -y chromium; .ci/run does it)"
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])  # root: no user namespace sandbox
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            problems: list[str] = []
            page.on("pageerror", lambda exc: problems.append(str(exc)))
            yield page, problems
        finally:
            browser.close()


@pytest.fixture
def server(tmp_path):
    running = Server(f"sqlite:///{tmp_path}/browser.db", tmp_path)
    try:
        yield running
    finally:
        running.stop()


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_a_run_page_follows_the_run_live_and_resumes_it(tmp_path, server, browser_page):
    page, errors = browser_page
    go, gate = tmp_path / "go", tmp_path / "gate"
    doc = template(script_step(10, f"while [ ! -e {go} ]; do sleep 0.05; done; echo prepared", id="prepare"),
                   script_step(20, f"echo checking the gate; test -e {gate} || {{ echo 'no gate yet' >&2; exit 4; }}",
                               id="gate", requires=["prepare"], max_retries=1),
                   script_step(30, "echo finished", id="finish", requires=["gate"]), name="browser")
    status, body = server.post("/api/workspaces/web1/runs", {"template": doc, "workspace": {
        "home_dir": str(tmp_path / "home")}}, headers=CSRF)
    assert status == 202, body
    run_id = body["run_id"]

    page.goto(f"{server.url}/login?token={server.token}")  # once: the browser keeps a session cookie
    page.goto(f"{server.url}/runs/{run_id}")
    run = page.locator("#run")
    assert run.get_attribute("data-status") == "running"
    prepare = page.locator('tr[data-step-id="prepare"]')
    playwright.expect(prepare).to_have_attribute("data-status", "running")
    playwright.expect(page.locator('tr[data-step-id="gate"] .why')).to_contain_text("prepare")  # why it waits
    shot(page, "run-waiting")

    go.touch()  # from here on the page must change by itself: no reload
    playwright.expect(run).to_have_attribute("data-status", "failed", timeout=30_000)
    playwright.expect(page.locator('tr[data-step-id="gate"]')).to_have_attribute("data-status", "failed")
    playwright.expect(page.locator('tr[data-step-id="gate"] .why')).to_contain_text("exit code 4")
    playwright.expect(page.locator('tr[data-step-id="finish"]')).to_have_attribute("data-status", "not_started")
    page.locator('tr[data-step-id="gate"]').click()
    playwright.expect(page.locator("#log")).to_contain_text("no gate yet")  # the step's output, in the log viewer
    playwright.expect(page.get_by_role("button", name="Resume")).to_be_enabled()
    shot(page, "run-failed")

    gate.touch()
    page.get_by_role("button", name="Resume").click()
    playwright.expect(run).to_have_attribute("data-status", "succeeded", timeout=30_000)
    playwright.expect(page.locator('tr[data-step-id="finish"]')).to_have_attribute("data-status", "completed")
    playwright.expect(page.locator('tr[data-step-id="prepare"] .attempts')).to_have_text("1")  # not run again
    shot(page, "run-resumed")
    assert errors == []


def test_a_resume_asks_for_what_was_not_stored(tmp_path, server, browser_page, pg_server):
    """(helper-45) A template with a password written in it: the page's
    Resume only showed the API's error (about secrets=... and the CLI), with
    no way to give the password. Now it asks for each value by name, and a
    wrong one is refused. Also: the runs page's workspace-id pattern is a
    valid regular expression for the browser (it logged an error and did not
    check)."""
    import uuid

    page, errors = browser_page
    console: list[str] = []
    page.on("console", lambda m: console.append(m.text) if m.type in ("error", "warning") else None)
    role, gate = f"dagrun_web_{uuid.uuid4().hex[:8]}", tmp_path / "gate"
    doc = template({"sequence_order": 10, "id": "role", "action_name": "create_postgresql_user",
                    "action_config": {"username": role, "password": "Written-Pw-1"}},
                   script_step(20, f"test -e {gate}", id="gate", requires=["role"]), name="withpw")
    try:
        status, body = server.post("/api/workspaces/web2/runs", {"template": doc, "workspace": {
            "home_dir": str(tmp_path / "home")}}, headers=CSRF)
        assert status == 202, body
        page.goto(f"{server.url}/login?token={server.token}")
        page.goto(f"{server.url}/runs")
        page.goto(f"{server.url}/runs/{body['run_id']}")
        run = page.locator("#run")
        playwright.expect(run).to_have_attribute("data-status", "failed", timeout=30_000)
        gate.touch()
        page.get_by_role("button", name="Resume").click()
        field = page.locator('#resume-secrets input[name="role.password"]')
        playwright.expect(field).to_be_visible()
        assert page.locator("#resume-secrets input").count() == 1 and field.get_attribute("type") == "password"
        field.fill("not-it")
        page.get_by_role("button", name="Resume with these").click()
        playwright.expect(page.locator("#action-message")).to_contain_text("is not the one the run started with")
        shot(page, "run-resume-asks")
        field.fill("Written-Pw-1")
        page.get_by_role("button", name="Resume with these").click()
        playwright.expect(run).to_have_attribute("data-status", "succeeded", timeout=30_000)
        playwright.expect(page.locator("#resume-secrets")).to_be_hidden()
        assert page.locator("#resume-secrets input").count() == 0  # nothing of it stays in the page
    finally:
        with pg_server.cursor() as cur:
            cur.execute(f'DROP ROLE IF EXISTS "{role}"')
    assert errors == [] and not [m for m in console if "pattern" in m.lower() or "favicon" in m.lower()], console


def test_the_editor_shows_every_problem_of_an_invalid_save(tmp_path, server, browser_page):
    page, errors = browser_page
    doc = template(script_step(10, "echo one", id="one"), script_step(20, "echo two", id="two", requires=["one"]),
                   name="edited")
    status, body = server.request("PUT", "/api/templates/edited", doc, headers=CSRF)
    assert status == 200, body

    page.goto(f"{server.url}/login?token={server.token}")
    page.goto(f"{server.url}/templates/edited")
    steps = page.locator("#editor-steps li")
    playwright.expect(steps).to_have_count(2)
    second = steps.nth(1)
    second.locator('input[name="requires"]').fill("one, nowhere")  # a step that does not exist
    second.locator('input[name="id"]').fill("one")  # and an id used twice
    page.get_by_role("button", name="Save").click()
    problems = page.locator("#problems li")
    playwright.expect(page.locator("#save-message")).to_have_text("not saved")
    playwright.expect(problems.filter(has_text="nowhere")).to_have_count(1)
    playwright.expect(problems.filter(has_text="one")).not_to_have_count(0)
    assert problems.count() >= 2, problems.all_inner_texts()  # every problem at once, not the first
    shot(page, "editor-problems")

    second.locator('input[name="requires"]').fill("one")
    second.locator('input[name="id"]').fill("two")
    page.get_by_role("button", name="Save").click()
    playwright.expect(page.locator("#save-message")).to_contain_text("saved as version")
    status, body = server.get("/api/templates/edited/actions")
    assert status == 200 and [a["step_id"] for a in body["actions"]] == ["one", "two"]
    assert errors == []


def test_a_run_whose_process_died_shows_interrupted_and_can_be_resumed(tmp_path, server, browser_page):
    """It showed 'running', with Cancel enabled and Resume not, until the
    workspace's next run (or a cancel) closed it."""
    import os
    import subprocess
    import sys
    import time

    import yaml
    page, errors = browser_page
    doc = tmp_path / "long.yaml"
    doc.write_text(yaml.safe_dump(template(script_step(10, "sleep 60", id="long"))))
    other = subprocess.Popen([sys.executable, "-m", "dagrun", "run", str(doc), "--db", f"sqlite:///{tmp_path}/browser.db",
                              "--ws", "id=died", "--home", str(tmp_path / "h-died")],
                             env={**os.environ, "XDG_DATA_HOME": str(tmp_path / "xdg")},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, runs = time.monotonic() + 60, []
        while not runs and time.monotonic() < deadline:
            status, body = server.get("/api/runs?workspace=died")
            runs = body["runs"] if status == 200 else []
            time.sleep(0.1)
        assert runs, "the other process's run never showed"
    finally:
        other.kill()
        other.wait(30)
    page.goto(f"{server.url}/login?token={server.token}")
    page.goto(f"{server.url}/runs/{runs[0]['run_id']}")
    playwright.expect(page.locator("#run")).to_have_attribute("data-status", "interrupted")
    playwright.expect(page.locator("#run-error")).to_contain_text("dagrun resume")
    playwright.expect(page.locator('tr[data-step-id="long"]')).to_have_attribute("data-status", "interrupted")
    playwright.expect(page.get_by_role("button", name="Cancel")).to_be_enabled()  # (the message offers it)
    playwright.expect(page.get_by_role("button", name="Resume")).to_be_enabled()
    shot(page, "run-interrupted")
    page.get_by_role("button", name="Cancel").click()  # closes it: nobody is left to ask
    playwright.expect(page.locator("#action-message")).to_contain_text("its process had stopped: closed")
    playwright.expect(page.locator("#run")).to_have_attribute("data-status", "failed")
    playwright.expect(page.get_by_role("button", name="Cancel")).to_be_disabled()
    playwright.expect(page.get_by_role("button", name="Resume")).to_be_enabled()
    assert not errors
