"""The four handler types against real files, processes and an HTTP server."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from dagrun import TemplateError, run_template
from dagrun.run.outcome import StepStatus
from tests.helpers import action, shell_action, step, template


def run(doc, workspace, actions=None, **kw):
    # Handler types, not the sandbox (tests/test_containment.py): user-defined actions run unconfined here.
    kw.setdefault("sandbox", False)
    return run_template(doc, workspace, actions=actions, record=False, **kw)


def test_shell_handler_from_a_file_beside_the_definition(tmp_path, workspace, home):
    (tmp_path / "hello.sh").write_text('echo "hello {{ config.who }}" > "$HOME/hello.txt"\necho "$CONFIG_WHO"\n')
    (tmp_path / "hello.yaml").write_text(yaml.safe_dump({
        "name": "hello", "action_type": "shell", "execution_handler": "hello.sh",
        "validation_handler": 'test -s "$HOME/hello.txt"', "rollback_handler": 'rm "$HOME/hello.txt"',
        "config_schema": {"type": "object", "properties": {"who": {"type": "string"}}}}))
    result = run(template(step(10, "hello", action_config={"who": "world; rm -rf /"})), workspace,
                 actions=[tmp_path / "hello.yaml"])
    assert result.success, result.error
    assert (home / "hello.txt").read_text() == "hello world; rm -rf /\n"  # the value, as data
    assert result.steps["hello"].stdout == "world; rm -rf /\n"


def test_shell_exit_code_and_stderr_are_captured(workspace):
    acts = [shell_action("bad", "echo out; echo oops >&2; exit 3")]
    result = run(template(step(10, "bad")), workspace, actions=acts)
    s = result.steps["bad"]
    assert (s.status, s.exit_code, s.stdout, s.stderr, s.error) == (StepStatus.failed, 3, "out\n", "oops\n",
                                                                     "bad's script: exit code 3: oops")


def test_pipefail_and_errexit_are_on(workspace):
    acts = [shell_action("pipe", "false | true\necho unreachable")]
    result = run(template(step(10, "pipe")), workspace, actions=acts)
    assert result.steps["pipe"].status is StepStatus.failed
    assert result.steps["pipe"].stdout == ""


def test_template_copy_renders_and_merges_json(workspace, home):
    target = home / ".vscode" / "settings.json"
    target.parent.mkdir()
    target.write_text(json.dumps({"editor.tabSize": 2, "python.analysis": {"a": 1}}))
    doc = template(step(10, "create_vscode_settings", action_config={
        "settings": {"python.analysis": {"b": 2}, "user": "{{ workspace.name }}"}}))
    result = run(doc, workspace)
    assert result.success, result.error
    assert json.loads(target.read_text()) == {"editor.tabSize": 2, "python.analysis": {"a": 1, "b": 2},
                                              "user": "alice"}
    assert result.steps["create_vscode_settings"].result["created"] is False


def test_template_copy_rollback_removes_only_a_file_it_created(workspace, home):
    (home / "keep.yaml").write_text("a: 1\n")
    acts = [action("fail", "tests.helpers:boom")]
    doc = template(step(10, "write_file", id="new", action_config={"target_path": "~/sub/new.yaml", "content": {"k": [1, 2]}}),
                   step(20, "write_file", id="old", action_config={"target_path": "~/keep.yaml", "content": {"b": 2},
                                                                    "merge": True}),
                   step(30, "fail", requires=["new", "old"]))
    result = run(doc, workspace, actions=acts)
    assert result.status.value == "failed"
    assert not (home / "sub" / "new.yaml").exists()
    assert yaml.safe_load((home / "keep.yaml").read_text()) == {"a": 1, "b": 2}
    assert result.steps["new"].status is StepStatus.rolled_back
    assert result.steps["old"].status is StepStatus.completed  # nothing of its own to undo


def test_template_copy_merges_into_a_yaml_file_full_of_aliases(workspace, home):
    """The workspace's file is data from its user: aliases nested ten deep
    (10**10 values once expanded) stay shared through the merge, as the
    parser made them, instead of being copied out one by one."""
    from dagrun.util import deep_merge
    shared = [1, 2]
    copied = deep_merge({"a": shared, "b": {"c": shared}}, {"d": [shared, shared]})
    assert copied["a"] is copied["b"]["c"] and copied["a"] is not shared  # as copy.deepcopy keeps them
    assert copied["d"][0] is copied["d"][1] and copied["d"][0] is not shared

    levels = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 10):
        prev, name = chr(96 + i), chr(97 + i)
        levels.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 10) + "]")
    (home / "laughs.yaml").write_text("\n".join(levels) + "\n")
    doc = template(step(10, "write_file", action_config={"target_path": "~/laughs.yaml", "content": {"new": 1},
                                                         "merge": True}))
    result = run(doc, workspace)
    assert result.success, result.error
    merged = yaml.safe_load((home / "laughs.yaml").read_text())
    assert merged["new"] == 1 and merged["j"][0] is merged["i"] and merged["j"][9][9] is merged["h"]


def test_template_copy_merges_into_a_deeply_nested_json_file(workspace, home):
    """A workspace's JSON file nested 450 lists deep merges as it did with
    copy.deepcopy (the copy costs no more stack per level than it did)."""
    depth = 450
    (home / "deep.json").write_text(json.dumps({"nested": json.loads("[" * depth + "]" * depth)}))
    doc = template(step(10, "write_file", action_config={"target_path": "~/deep.json", "content": {"new": 1},
                                                         "merge": True}))
    result = run(doc, workspace)
    assert result.success, result.error
    merged = json.loads((home / "deep.json").read_text())
    assert merged["new"] == 1 and json.dumps(merged["nested"]) == "[" * depth + "]" * depth


class _Handler(BaseHTTPRequestHandler):
    seen: list = []

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        _Handler.seen.append((self.path, self.headers.get("X-Token"), json.loads(body) if body else None))
        code = 201 if self.path.startswith("/ok") else 500
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps({"path": self.path}).encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def http_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Handler.seen = []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_api_call_success_and_failure(http_server, workspace):
    acts = [{"name": "notify", "action_type": "api_call", "execution_handler": "POST {{ config.url }}",
             "max_retries": 1, "requires_network": True, "config_schema": {"type": "object", "properties": {
                 "url": {"type": "string", "x-dagrun-format": "url"}, "json": {}, "headers": {}}}}]
    doc = template(step(10, "notify", id="good", action_config={"url": http_server + "/ok/{{ workspace.id }}",
                                                                "json": {"user": "{{ workspace.name }}"},
                                                                "headers": {"X-Token": "t"}}),
                   step(20, "notify", id="bad", skip_on_error=True, action_config={"url": http_server + "/fail"}))
    result = run(doc, workspace, actions=acts, allow_network=["notify"])
    assert result.steps["good"].status is StepStatus.completed
    assert result.steps["good"].result == {"status": 201, "body": {"path": "/ok/ws1"}}
    assert ("/ok/ws1", "t", {"user": "alice"}) in _Handler.seen
    assert result.steps["bad"].status is StepStatus.failed
    assert result.steps["bad"].error == f"POST {http_server}/fail returned HTTP 500"


def test_api_call_values_are_percent_encoded(http_server, home):
    """A value inserted into a URL stays one path segment: no ../, no ?, no #."""
    acts = [{"name": "notify", "action_type": "api_call", "execution_handler": "POST {{ config.base }}/ok/{{ workspace.id }}",
             "max_retries": 1, "requires_network": True, "config_schema": {"type": "object", "properties": {"base": {"type": "string"}}}},
            {"name": "field", "action_type": "api_call", "execution_handler": "POST {{ config.url }}", "max_retries": 1,
             "requires_network": True,
             "config_schema": {"type": "object", "properties": {"url": {"type": "string", "x-dagrun-format": "url"}}}}]
    ws = {"id": "../admin?x=1#", "home_dir": str(home)}
    doc = template(step(10, "notify", action_config={"base": http_server}),
                   step(20, "field", action_config={"url": http_server + "/ok/{{ workspace.id }}"}))
    result = run(doc, ws, actions=acts, allow_network=["notify", "field"])
    assert result.success, result.error
    assert result.steps["notify"].result["body"] == {"path": "/ok/..%2Fadmin%3Fx%3D1%23"}
    assert result.steps["field"].result["body"] == {"path": "/ok/..%2Fadmin%3Fx%3D1%23"}


def test_api_call_unreachable_is_a_failed_attempt(workspace):
    acts = [{"name": "ping", "action_type": "api_call", "execution_handler": "GET http://127.0.0.1:9/x",
             "max_retries": 1}]
    result = run(template(step(10, "ping")), workspace, actions=acts)
    assert result.steps["ping"].status is StepStatus.failed
    assert result.steps["ping"].error.startswith("GET http://127.0.0.1:9/x failed:")


def test_python_handler_exception_becomes_a_failed_attempt(workspace):
    result = run(template(step(10, "x")), workspace, actions=[action("x", "tests.helpers:boom")])
    assert result.steps["x"].error == "RuntimeError: boom"


def test_handler_prefix_python_overrides_action_type(workspace):
    acts = [shell_action("mixed", "echo hi", validation_handler="python:tests.helpers:noop")]
    assert run(template(step(10, "mixed")), workspace, actions=acts).success


def test_bad_jinja_in_an_inline_shell_handler_is_a_compile_error(workspace):
    with pytest.raises(TemplateError) as exc:
        run(template(step(10, "x")), workspace, actions=[shell_action("x", "echo {{ unclosed")])
    assert "bad execution_handler" in str(exc.value)
