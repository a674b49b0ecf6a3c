"""Values are data, never code: a hostile corpus in every field and quoting context.

Every value that is not template text written by the template's author
(workspace fields, variables, config values, upstream results) goes through
every shell quoting context of both shell styles (an inline ``shell`` action,
``execute_custom_script``). No marker file may ever appear; each case either
delivers the exact value or is refused before the script runs.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dagrun import InputError, TemplateError, compile_template, get_run
from dagrun import run_template as _run_template
from dagrun.run.outcome import StepStatus
from tests.helpers import script_step, shell_action, step, template


def run_template(*args, **kwargs):
    """These tests are about values reaching steps as data (the shell rules, the
    sandboxed Jinja, masking), not about the sandbox: user-defined actions run
    unconfined here (as root in CI; the sandbox has tests/test_containment.py)."""
    kwargs.setdefault("sandbox", False)
    return _run_template(*args, **kwargs)

MARK = "MARK"  # relative to the workspace home; each value names it


def corpus(home: Path) -> list[str]:
    mark = str(home / MARK)
    return [
        f"$(touch {mark})", f"`touch {mark}`", f'"; touch {mark}; "', f"'; touch {mark}; '",
        f"x\ntouch {mark}\n", f"x\nEOF\ntouch {mark}\ncat <<'EOF'", f"${{IFS}}touch${{IFS}}{mark}",
        "back\\slash\\", "John O'Brien", "{{ 7*7 }}", "{% raw %}x", "9" * 4000, "*", "$HOME", "%s%n",
        f"a b; touch {mark} &", "\ttab", "é ✓ ünïcode", "",
    ]


# (context, script writing the value to ./out, how the value reads back)
SAFE_CONTEXTS = {
    "unquoted": "printf '%s' {{ V }} > out",
    "double_quotes": 'printf "%s" "{{ V }}" > out',
    "text_around": 'printf "%s" "<{{ V }}>" > out',
    "assignment": 'x={{ V }}; printf "%s" "$x" > out',
    "unquoted_heredoc": "cat > out <<EOF\n{{ V }}\nEOF",
    "command_substitution": 'printf "%s" "$(printf "%s" {{ V }}; echo .)" > out',
}
REFUSED_CONTEXTS = {
    "single_quotes": "printf '%s' '{{ V }}' > out",
    "quoted_heredoc": "cat > out <<'EOF'\n{{ V }}\nEOF",
    "backticks": "x=`printf %s {{ V }}`",
    "arithmetic": "echo $(( {{ V }} + 1 ))",
    "eval": "eval echo {{ V }}",
}


def expected(context: str, value: str) -> str:
    if context == "text_around":
        return f"<{value}>"
    if context == "unquoted_heredoc":
        return value + "\n"
    if context == "command_substitution":
        return value + "."
    return value


def _documents(style: str, source: str, values: list[str], scripts: dict[str, str]):
    """One step per (context, value); each writes into a folder of its own.

    ``execute_custom_script`` (a library action) reads workspace fields and
    variables directly; a user-defined ``shell`` action reads only its config,
    so there the template passes each value through a config field
    (``c3: "{{ workspace.f3 }}"``), and the script reads ``config.c3``. The
    ``config`` source does that for execute_custom_script too, through
    ``config.env``."""
    steps, actions = [], []
    config_schema = {"type": "object", "properties": {f"c{i}": {"type": "string"} for i in range(len(values))}}
    origin = {"workspace": "workspace.f%d", "vars": "vars.v%d", "config": "workspace.f%d"}[source]
    for n, (context, script) in enumerate(scripts.items()):
        for i in range(len(values)):
            head = f"mkdir -p ~/{context}/{i} && cd ~/{context}/{i}\n"
            if style == "shell":
                body = head + script.replace("V", f"config.c{i}")
                actions.append(shell_action(f"a_{context}_{i}", body, config_schema=config_schema))
                steps.append(step(1000 * n + i, f"a_{context}_{i}", id=f"{context}_{i}",
                                  action_config={f"c{i}": "{{ %s }}" % (origin % i)}))
            elif source == "config":
                body = head + script.replace("V", f"config.env.c{i}")
                steps.append(script_step(1000 * n + i, body, id=f"{context}_{i}",
                                         action_config={"env": {f"c{i}": "{{ %s }}" % (origin % i)}}))
            else:
                body = head + script.replace("V", origin % i)
                steps.append(script_step(1000 * n + i, body, id=f"{context}_{i}"))
    doc = template(*steps, vars={f"v{i}": v for i, v in enumerate(values)},
                   global_config={"max_workers": 8, "continue_on_non_critical_errors": True})
    return doc, actions


@pytest.mark.parametrize("source", ["workspace", "vars", "config"])
@pytest.mark.parametrize("style", ["shell", "execute_custom_script"])
def test_every_value_in_every_safe_context_arrives_exactly(style, source, home):
    values = corpus(home)
    doc, actions = _documents(style, source, values, SAFE_CONTEXTS)
    for s in doc["actions"]:
        s["skip_on_error"] = True
    workspace = {"id": "hostile", "home_dir": str(home), **{f"f{i}": v for i, v in enumerate(values)}}
    result = run_template(doc, workspace, actions=actions, record=False)
    assert not (home / MARK).exists()
    for context in SAFE_CONTEXTS:
        for i, value in enumerate(values):
            outcome = result.steps[f"{context}_{i}"]
            out = home / context / str(i) / "out"
            if outcome.status is StepStatus.completed:
                assert out.read_bytes().decode() == expected(context, value), (context, value)
            else:  # the one refusal at run time: a value that would be read as an option
                assert False, (context, value, outcome.error)
    assert result.success, result.error


@pytest.mark.parametrize("context", sorted(REFUSED_CONTEXTS))
@pytest.mark.parametrize("style", ["shell", "execute_custom_script"])
def test_contexts_where_bash_would_parse_a_value_are_refused_at_compile(style, context, home):
    doc, actions = _documents(style, "vars", ["x"], {context: REFUSED_CONTEXTS[context]})
    with pytest.raises(TemplateError) as exc:
        run_template(doc, {"id": "w", "home_dir": str(home)}, actions=actions, record=False)
    problem = exc.value.problems[0]
    field = "execution_handler" if style == "shell" else "action_config.script"
    assert (problem.step, problem.field) == (f"{context}_0", field)
    assert re.search(r"line [23]: a \{\{ \}\} value cannot be used", str(problem))


@pytest.mark.parametrize("value", ["-rf", "--output=/etc/x", "-"])
def test_a_value_that_would_be_an_option_is_refused_before_the_script_runs(value, home):
    doc = template(script_step(10, "touch ~/ran; rm {{ vars.v }}", id="rm", skip_on_error=True),
                   script_step(20, 'rm -f -- {{ vars.v }}; printf "%s" {{ "x" ~ vars.v }} > ~/out', id="ok"),
                   vars={"v": value})
    result = run_template(doc, {"id": "w", "home_dir": str(home)}, record=False)
    rm = result.steps["rm"]
    assert rm.status is StepStatus.failed and rm.attempts == 1
    assert "starts with '-' and would be read as an option; put '--' before it" in rm.error
    assert not (home / "ran").exists()  # refused before the script ran
    assert (home / "out").read_text() == "x" + value  # after --, or not at the start of a word: delivered


def test_upstream_results_are_data_too(home):
    """A step's output (written by a script from who knows what) reaches the next as data."""
    mark = home / MARK
    doc = template(script_step(10, f"echo 'out=$(touch {mark}); `touch {mark}`' >> \"$DAGRUN_OUTPUT\"", id="a"),
                   script_step(20, 'printf "%s" {{ steps.a.result.out }} > ~/got', id="b", requires=["a"]))
    result = run_template(doc, {"id": "w", "home_dir": str(home)}, record=False)
    assert result.success, result.error
    assert (home / "got").read_text() == f"$(touch {mark}); `touch {mark}`"
    assert not mark.exists()


def test_values_are_never_rendered_again(home):
    """--set project='p{{ env.X }}' stays those characters, in config, paths and conditions."""
    doc = template(step(10, "write_file", id="w", condition_expression="not file_exists(vars.project)",
                        action_config={"target_path": "~/{{ vars.project }}.txt",
                                       "content": "{{ vars.project }}|{{ path(vars.project) }}"}),
                   vars={"project": "p"})
    result = run_template(doc, {"id": "w", "home_dir": str(home)}, variables={"project": "p{{ env.PATH }}"},
                          record=False)
    assert result.success, result.error
    assert (home / "p{{ env.PATH }}.txt").read_text() == f"p{{{{ env.PATH }}}}|{home}/p{{{{ env.PATH }}}}"


def test_config_fields_may_refer_to_each_other(home):
    doc = template(step(10, "write_file", id="w", action_config={
        "target_path": "~/{{ config.content.name }}.json",
        "content": {"name": "x-{{ workspace.name }}", "port": "{{ workspace.port }}"}}))
    result = run_template(doc, {"id": "w", "name": "{{ 7*7 }}", "port": 8069, "home_dir": str(home)}, record=False)
    assert result.success, result.error
    assert json.loads((home / "x-{{ 7*7 }}.json").read_text()) == {"name": "x-{{ 7*7 }}", "port": 8069}


def test_config_reference_cycles_are_compile_errors(home):
    doc = template(step(10, "write_file", action_config={"target_path": "{{ config.content }}",
                                                        "content": "{{ config.target_path }}"}))
    with pytest.raises(TemplateError, match="config fields refer to each other in a cycle"):
        run_template(doc, {"id": "w", "home_dir": str(home)}, record=False)


def test_a_rendered_value_keeps_the_type_its_schema_asks_for(home):
    doc = template(step(10, "create_postgresql_user", id="u", max_retries=1, action_config={
        "username": "{{ workspace.id }}", "connection_url": "postgresql://nobody@127.0.0.1:1/x"}))
    result = run_template(doc, {"id": 7, "home_dir": str(home)}, record=False)
    # the id 7 became the string "7" (the schema's type), so the attempt got as far as connecting
    assert "cannot connect to PostgreSQL" in result.steps["u"].error


def test_a_value_in_a_connection_url_cannot_add_connection_parameters(home, pg_server):
    """(helper-29) postgresql://...@db/{{ workspace.db }} with db = "x?port=1":
    the value is percent-encoded, one database name, not a new port (or a
    host that would be sent the operator's password)."""
    doc = template(step(10, "create_postgresql_user", id="u", max_retries=1, action_config={
        "username": "app_{{ workspace.id }}", "connection_url": "postgresql://postgres@127.0.0.1:5432/{{ workspace.db }}"}))
    result = run_template(doc, {"id": "w1", "home_dir": str(home), "db": "postgres?port=1"}, record=False)
    error = result.steps["u"].error  # (the name shows masked: a value that is part of a secret field is one)
    assert 'port 5432 failed: FATAL:  database "' in error and "does not exist" in error and "port 1" not in error
    from dagrun.compile.expressions import render_url
    url = "postgresql://admin:{{ vars.pw }}@db/{{ workspace.db }}"
    assert render_url(url, {"vars": {"pw": "p@ss:w/rd"}, "workspace": {"db": "a?hostaddr=10.0.0.1&port=5"}},
                      ["postgresql"]) == "postgresql://admin:p%40ss%3Aw%2Frd@db/a%3Fhostaddr%3D10.0.0.1%26port%3D5"
    whole = {"vars": {"url": "postgresql+psycopg2://u@h/d"}}
    assert render_url("{{ vars.url }}", whole, ["postgresql"]) == "postgresql+psycopg2://u@h/d"
    with pytest.raises(ValueError, match="is not a URL of postgresql"):
        render_url("{{ vars.url }}", {"vars": {"url": "http://h/x"}}, ["postgresql"])


def test_a_connection_url_names_a_server_never_a_file_for_libpq_to_read(home, pg_server):
    """(helper-76) A tenant's whole URL (render_url takes a value that is a
    postgresql:// URL) reached libpq in dagrun's own process, as root:
    sslkey=/path/engine.so:key made OpenSSL load that shared library. Only
    keywords that say where the server is and how to reach it pass, as
    libpq itself parses the URL (a password holding "?sslmode=" hides
    nothing), and the error does not quote the URL (it holds a password)."""
    def error_for(url: str) -> str | None:
        doc = template(step(10, "create_postgresql_user", id="u", max_retries=1, action_config={
            "username": "app_{{ workspace.id }}", "connection_url": "{{ vars.db_url }}"}),
            vars={"db_url": "postgresql://127.0.0.1/postgres"})
        result = run_template(doc, {"id": "w1", "home_dir": str(home)}, variables={"db_url": url}, record=False)
        return result.steps["u"].error

    for url, keys in (("postgresql://x@127.0.0.1:5432/db?sslmode=require&sslcert=/etc/ssl/c.pem&sslkey=/tmp/e.so:k",
                       "sslcert, sslkey"),
                      ("postgresql://x:Pw0rd?sslmode=@127.0.0.1/db?sslkey=/tmp/e.so:k", "sslkey"),
                      ("postgres://127.0.0.1/db?ssl%6Bey=/tmp/e.so:k", "sslkey"),
                      ("postgresql://127.0.0.1/db?passfile=/root/.pgpass", "passfile"),
                      ("postgresql://127.0.0.1/db?service=x", "service"),
                      ("postgresql://127.0.0.1/db?sslrootcert=/home/t/ca.pem", "sslrootcert"),
                      ("postgresql+psycopg2://127.0.0.1/db?options=-c%20log_statement%3Dall", "options"),
                      # (helper-77) libpq would send ~/.pgpass's entry for the host to this other address
                      ("postgresql://db.internal/db?hostaddr=10.9.9.9", "hostaddr")):
        error = error_for(url)
        assert error and error.startswith(f"connection_url sets {keys}: "), (url, error)
        assert "Pw0rd" not in error and "/tmp/e.so" not in error
    assert error_for("postgresql://x@127.0.0.1:5432/db?%zz") == "connection_url: not a PostgreSQL URL libpq can read"
    # (helper-77) a socket a user made gets ~/.pgpass's "localhost" password
    for url in ("postgresql://%2Fhome%2Ft%2Fsock/db", "postgresql:///db?host=/tmp/s", "postgresql://h,%2Ftmp%2Fs/db",
                "postgresql:///db?host=@abstract"):
        assert error_for(url).startswith("connection_url: a step's server is a host name or address, not a socket "
                                         "folder"), url
    # where the server is and how to reach it: the real server, reached (SQLAlchemy's +driver too)
    for url in ("postgresql://postgres@127.0.0.1:5432/postgres?sslmode=disable&application_name=x&connect_timeout=5",
                "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres?ssl=true&sslmode=prefer"):
        assert error_for(url) is None, url
    pg_server.cursor().execute('DROP ROLE IF EXISTS "app_w1"')


@pytest.mark.parametrize("whose", ["step", "store", "store, settings activating a provider"])
def test_root_libpq_reads_no_file_another_user_could_plant(home, tmp_path, whose):
    """(helper-77) psycopg2-binary's OpenSSL reads its settings from the
    folder it was built in (/host/tmp/libpq.build: anyone's to write where a
    host's root is mounted at /host; a setting there loads a library into
    dagrun, as root), and its Kerberos looks for root's tickets in
    /tmp/krb5cc_0. A step's connection and the store's (TLS asked for, the
    server saying yes) now read neither: traced with strace, in a child
    process whose environment sets neither OPENSSL_CONF nor KRB5CCNAME;
    and where the operator's settings activate a provider, it is loaded
    from the system's folder, not the wheel's (also in that build folder)."""
    import socket
    import threading
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)

    def says_yes_to_tls() -> None:  # a server that agrees to TLS, then hangs up
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.recv(8)
            conn.sendall(b"S")
            conn.close()
    threading.Thread(target=says_yes_to_tls, daemon=True).start()
    script = tmp_path / "connect.py"
    script.write_text(
        "import sys\nfrom dagrun import run_template\n"
        "doc = {'name': 't', 'version': '1', 'actions': [{'sequence_order': 10, 'id': 'u', 'max_retries': 1,\n"
        "       'action_name': 'create_postgresql_user', 'action_config': {'username': 'app',\n"
        "       'connection_url': sys.argv[1]}}]}\n"
        "print(run_template(doc, {'id': 'w', 'home_dir': sys.argv[2]}, record=False).steps['u'].error)\n"
        if whose == "step" else
        "import sys\nfrom dagrun.store.engine import engine_for\n"
        "try:\n    engine_for(sys.argv[1]).connect()\nexcept Exception as exc:\n    print(exc)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENSSL_") and k != "KRB5CCNAME"}
    if whose.endswith("provider"):
        settings = tmp_path / "openssl.cnf"
        settings.write_text("openssl_conf = init\n[init]\nproviders = providers\n[providers]\ndefault = on\n"
                            "legacy = on\n[on]\nactivate = 1\n")
        env["OPENSSL_CONF"] = str(settings)
    trace = tmp_path / "trace"
    url = f"postgresql://app@127.0.0.1:{server.getsockname()[1]}/db?sslmode=require"
    out = subprocess.run(["strace", "-f", "-qq", "-e", "trace=%file", "-o", str(trace), sys.executable, str(script), url,
                          str(home)], capture_output=True, text=True, env=env, timeout=120)
    server.close()
    assert "SSL" in out.stdout, out  # the TLS handshake was tried: OpenSSL read its settings
    opened = re.findall(r'"(/[^"]*)"', trace.read_text())
    assert any(path.endswith("openssl.cnf") for path in opened), opened
    if whose.endswith("provider"):
        assert any("ossl-modules/legacy" in path for path in opened), opened
    assert not [p for p in opened if p.startswith("/host/") or "krb5cc" in p], opened


def test_a_home_dir_too_long_for_the_file_system_is_one_clear_error(tmp_path):
    """(helper-30) It was an OSError traceback (a 500 over HTTP)."""
    from dagrun.web import create_app
    long_home = str(tmp_path / ("a" * 300))
    with pytest.raises(InputError, match="is too long"):
        run_template(template(script_step(10, "true")), {"id": "w", "home_dir": long_home}, record=False)
    app = create_app(database_url=f"sqlite:///{tmp_path}/s.db", allow_inline_templates=True)
    answer = app.test_client().post("/api/workspaces/w/runs", json={"template": "demo", "workspace": {
        "home_dir": long_home}}, headers={"X-Dagrun-Request": "1"})
    assert answer.status_code == 422 and "is too long" in answer.json["error"]


def test_a_workspace_value_its_step_refuses_stops_the_run_before_anything_runs(home):
    """(helper-30) It failed at run time, after earlier steps had run."""
    doc = template(script_step(1, "touch ~/first", id="first"),
                   step(2, "create_postgresql_user", id="user", requires=["first"],
                        action_config={"username": "{{ workspace.db_name }}"}))
    with pytest.raises(TemplateError) as exc:
        run_template(doc, {"id": "w", "home_dir": str(home), "db_name": "-bad"}, record=False)
    assert "step user: field 'action_config.username': with this workspace and these variables: '-bad': must not " \
           "start with '-'" in str(exc.value)
    assert not (home / "first").exists()
    doc["actions"][1]["skip_on_error"] = True  # a step allowed to fail still tells at run time
    result = run_template(doc, {"id": "w", "home_dir": str(home), "db_name": "-bad"}, record=False)
    assert (home / "first").exists() and "invalid config after interpolation" in result.steps["user"].error


def test_the_check_before_the_run_shows_no_secret_and_leaves_steps_after_a_non_critical_one(home):
    """(helper-31, helper-32) Its message quoted a secret variable; and a
    step after a skip_on_error step may be skipped, so it is not checked."""
    acts = [{"name": "tok", "action_type": "shell", "execution_handler": "true", "config_schema": {
        "type": "object", "properties": {"token": {"type": "string", "pattern": "^[A-Za-z0-9]+$"}}}}]
    doc = template(step(10, "tok", id="t", action_config={"token": "Bearer-{{ vars.api_token }}"}),
                   vars={"api_token": ""})
    with pytest.raises(TemplateError) as exc:
        run_template(doc, {"id": "w", "home_dir": str(home)}, record=False, trusted_actions=acts,
                     secrets={"api_token": "s3cr3t-VALUE_xyz"})
    assert "step t: field 'action_config.token'" in str(exc.value) and "s3cr3t-VALUE_xyz" not in str(exc.value)
    doc = template(script_step(5, "exit 1", id="flaky", skip_on_error=True),
                   step(10, "create_postgresql_user", id="user", requires=["flaky"],
                        action_config={"username": "{{ workspace.db_name }}"}))
    result = run_template(doc, {"id": "w", "home_dir": str(home), "db_name": "-bad"}, record=False)
    assert result.steps["user"].status is StepStatus.skipped


def test_a_value_cannot_add_a_key_to_a_steps_result(home):
    """(helper-29) Unicode line separators in a value written to
    $DAGRUN_OUTPUT stay in that value."""
    name = "Alice\u2028is_admin=true\x1echanged=false\x85x=1\ry=2"
    result = run_template(template(script_step(10, 'echo "display_name={{ workspace.name }}" >> "$DAGRUN_OUTPUT"\n'
                                                   'printf "crlf=ok\\r\\n" >> "$DAGRUN_OUTPUT"', id="s")),
                          {"id": "w", "home_dir": str(home), "name": name}, record=False)
    assert result.steps["s"].result == {"display_name": name, "crlf": "ok"}


# -- every library action ------------------------------------------------------------

MINIMAL = {  # a valid config for each library action, harmless on this machine
    "install_system_packages": {"packages": ["bash"], "simulate": True},
    "create_linux_user": {"username": "dagrun_corpus"},
    "create_postgresql_user": {"username": "dagrun_corpus"},
    "create_postgresql_database": {"database_name": "dagrun_corpus", "owner": "dagrun_corpus"},
    "create_python_venv": {"venv_path": "~/venv", "with_pip": False},
    # (its file: beside the home, where root may install from; as root, not one in the home)
    "install_pip_requirements": {"venv_path": "~/venv", "requirements_file": "~/../empty.txt", "no_index": True},
    "clone_git_repository": {"url": "/nonexistent/repo.git"},
    "create_vscode_settings": {"settings": {"a": 1}},
    "create_launch_json": {"configurations": [{"name": "n", "type": "t", "request": "launch"}]},
    "create_workspace_file": {"folders": [{"path": "."}]},
    "install_vscode_extensions": {"extensions": ["a.b"], "cli": "/nonexistent/code"},
    "write_file": {"target_path": "~/f", "content": "x"},
    "template_copy": {"template": "x", "target_path": "~/t"},
    "execute_custom_script": {"script": "true"},
    "create_django_project": {"project_name": "p", "venv_path": "~/venv"},
    "noop": {},
    "sleep": {"seconds": 0},
}
# Fields whose values reach a command, a query or a path (the others are
# shapes: booleans, numbers, mappings written as JSON).
STRING_FIELDS = {
    name: [k for k, v in (schema.get("properties") or {}).items()
           if "string" in ([v.get("type")] if isinstance(v.get("type"), str) else v.get("type") or [])
           or v.get("type") == "array" and (v.get("items") or {}).get("type") == "string"]
    for name, schema in ((n, dict(a.config_schema)) for n, a in __import__(
        "dagrun.compile.loader", fromlist=["x"]).standard_library().items())
}


@pytest.mark.parametrize("action", sorted(MINIMAL))
def test_every_library_action_refuses_or_contains_hostile_values(action, home, pg_server):
    import psycopg2.sql
    """Each string field of each library action gets each corpus value through
    a workspace field: the step is refused (at compile, or after interpolation)
    or runs with the value as data. No marker ever appears."""
    from dagrun import compile_template
    from dagrun.compile.loader import standard_library
    from dagrun.workspace import normalize_workspace
    values = corpus(home)
    (home.parent / "empty.txt").write_text("")
    workspace = normalize_workspace({"id": "corpus", "home_dir": str(home),
                                     **{f"f{i}": v for i, v in enumerate(values)}})
    library = standard_library()
    providers, needed = [], list(library[action].requires_actions)
    while needed:  # steps of the actions this one requires (requires_actions)
        name = needed.pop()
        config = {**MINIMAL[name], "with_pip": True} if name == "create_python_venv" else MINIMAL[name]
        providers.append(step(1000 + len(providers), name, id=f"provider_{name}", action_config=config,
                              max_retries=1))
        needed += library[name].requires_actions
    steps, refused = [], 0
    from dagrun.compile.configs import code_fields
    for field in STRING_FIELDS[action]:
        if os.geteuid() == 0 and field in code_fields(library[action].config_schema):
            refused += len(values)  # as root no value may fill it at all (test_containment: ...never_a_values_choice)
            continue
        for i in range(len(values)):
            config = dict(MINIMAL[action])
            is_list = isinstance(config.get(field), list) or field in ("packages", "extensions", "find_links")
            config[field] = ["{{ workspace.f%d }}" % i] if is_list else "{{ workspace.f%d }}" % i
            candidate = step(len(steps) + 1, action, id=f"{field}_{i}", action_config=config, skip_on_error=True,
                             max_retries=1)
            try:
                compile_template(template(candidate, *providers), workspace=workspace)
            except TemplateError:
                refused += 1
                continue
            steps.append(candidate)
    assert steps or not STRING_FIELDS[action]
    doc = template(*steps, *providers, global_config={"rollback_on_failure": False})
    result = run_template(doc, workspace, record=False)
    assert not (home / MARK).exists()
    outcomes = [result.steps[s["id"]] for s in steps]
    assert all(o.status in (StepStatus.completed, StepStatus.failed, StepStatus.skipped) for o in outcomes), [
        (o.step_id, o.status.value, o.error) for o in outcomes
        if o.status not in (StepStatus.completed, StepStatus.failed, StepStatus.skipped)]
    for o in outcomes:  # a value refused by the action's own rules is refused at once, with the rule
        if o.status is StepStatus.failed and "invalid config after interpolation" in (o.error or ""):
            assert o.attempts == 1
    if action.startswith("create_postgresql"):  # roles and databases it made with odd names: gone
        with pg_server.cursor() as cur:
            cur.execute("SELECT datname FROM pg_database WHERE datname = ANY(%s)", (values + ["dagrun_corpus"],))
            for (database,) in cur.fetchall():
                cur.execute(psycopg2.sql.SQL("DROP DATABASE {} WITH (FORCE)").format(psycopg2.sql.Identifier(database)))
            cur.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", (values + ["dagrun_corpus"],))
            for (role,) in cur.fetchall():
                cur.execute(psycopg2.sql.SQL("DROP ROLE {}").format(psycopg2.sql.Identifier(role)))


# -- each finding of the untrusted-values issue, as a user hits it ----------------------

def dagrun_cli(*args, cwd, env=None):
    import os
    import subprocess
    import sys
    env = {**os.environ, "XDG_DATA_HOME": str(cwd / "xdg"), "COLUMNS": "200", **(env or {})}
    return subprocess.run([sys.executable, "-m", "dagrun", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, env=env, timeout=300)


def test_cli_workspace_fields_cannot_run_code_in_the_demo(tmp_path):
    mark = tmp_path / "PWNED"
    for n, field in enumerate((f"id=$(touch {mark})", f"name=John O'Brien\"; touch {mark}; \"",
                               f"port=`touch {mark}`", f"id=x'; touch {mark}; '")):
        out = dagrun_cli("run", "demo", "--ws", field, "--home", tmp_path / f"home{n}", cwd=tmp_path)
        assert out.returncode == 0, out.stdout + out.stderr
        assert not mark.exists(), field
    summary = (tmp_path / "home3" / "hello" / "WORKSPACE.md").read_text()
    assert summary.startswith("# hello\n")


def test_steps_and_templates_see_only_an_allowlisted_environment(home, monkeypatch):
    monkeypatch.setenv("SECRET_KEY", "provisioner-secret")
    monkeypatch.setenv("DAGRUN_DATABASE_URL", "postgresql://app:hunter2@db/app")
    monkeypatch.setenv("TOKEN", "t0k3n")
    ws = {"id": "w", "home_dir": str(home)}
    with pytest.raises(TemplateError, match="env.SECRET_KEY is not passed through: declare it in "
                                            "global_config.env_passthrough"):
        run_template(template(script_step(10, "echo {{ env.SECRET_KEY }}")), ws, record=False)
    with pytest.raises(TemplateError, match="DAGRUN_DATABASE_URL is one of dagrun's own settings"):
        run_template(template(script_step(10, "true"), global_config={"env_passthrough": ["DAGRUN_DATABASE_URL"]}),
                     ws, record=False)
    doc = template(script_step(10, 'env > ~/env.txt; printf "%s" {{ env.TOKEN }} > ~/token', id="env"),
                   global_config={"env_passthrough": ["TOKEN"]})
    result = run_template(doc, ws, record=False)
    assert result.success, result.error
    seen = dict(line.split("=", 1) for line in (home / "env.txt").read_text().splitlines() if "=" in line)
    assert "SECRET_KEY" not in seen and "DAGRUN_DATABASE_URL" not in seen and seen["TOKEN"] == "t0k3n"
    assert seen["PATH"] and seen["HOME"] == str(home)
    assert (home / "token").read_text() == "t0k3n"
    # the caller may pass a name through for one run
    result = run_template(template(script_step(10, "echo $SECRET_KEY", id="e")), ws, record=False,
                          env_passthrough=["SECRET_KEY"])
    assert result.steps["e"].stdout == "provisioner-secret\n"


def test_unbounded_expressions_never_hang_validate_or_a_run(tmp_path, home):
    doc = template(script_step(10, "echo {{ 9**(9**9) }}", id="power"),
                   script_step(20, "true", id="cond", condition_expression="9**(9**9) > 1", requires=["power"]),
                   step(30, "write_file", id="repeat", action_config={"target_path": "~/x",
                                                                      "content": "{{ 'x' * 10**10 }}"}))
    (tmp_path / "t.yaml").write_text(__import__("yaml").safe_dump(doc))
    out = dagrun_cli("validate", "t.yaml", cwd=tmp_path)
    assert out.returncode == 0, out.stderr  # well-formed; bounded when evaluated
    for s in doc["actions"]:
        s["skip_on_error"] = True
        s.pop("requires", None)
    result = run_template(doc, {"id": "w", "home_dir": str(home)}, record=False)
    assert "larger than 65536 bits" in result.steps["power"].error
    assert "larger than 65536 bits" in result.steps["cond"].error
    assert "larger than 1000000 items" in result.steps["repeat"].error
    assert all(s.attempts == 1 for s in result.steps.values())


def test_a_condition_that_raises_fails_the_step_at_once(home):
    doc = template(script_step(10, "touch ~/ran", id="guarded", max_retries=3, retry_delay_seconds=0,
                               condition_expression="workspace.port + 'x' > 1"))
    result = run_template(doc, {"id": "w", "home_dir": str(home), "port": 1}, record=False)
    s = result.steps["guarded"]
    assert (s.status, s.attempts) == (StepStatus.failed, 1)
    assert s.error.startswith("condition \"workspace.port + 'x' > 1\" failed: TypeError")
    assert not (home / "ran").exists()


@pytest.mark.parametrize("config,field", [
    ({"venv_path": "~/v", "packages": ["--log=/tmp/x"]}, "packages[0]"),
    ({"venv_path": "~/v", "packages": ["-r/etc/shadow"]}, "packages[0]"),
    ({"venv_path": "~/v", "requirements_file": "--log=x"}, "requirements_file"),
])
def test_names_never_become_options_of_a_tool(config, field, home):
    doc = template(step(5, "create_python_venv", action_config={"venv_path": "~/v"}),
                   step(10, "install_pip_requirements", action_config=config))
    with pytest.raises(TemplateError) as exc:
        run_template(doc, {"id": "w", "home_dir": str(home)}, record=False)
    assert f"field 'action_config.{field}'" in str(exc.value)
    # the same value through a workspace field is refused once rendered, before anything runs
    value = config.get("packages", [config.get("requirements_file")])[0]
    key = "packages" if "packages" in config else "requirements_file"
    doc["actions"][1]["action_config"] = {"venv_path": "~/v", key: ["{{ workspace.v }}"] if key == "packages"
                                          else "{{ workspace.v }}"}
    with pytest.raises(TemplateError) as exc:
        run_template(doc, {"id": "w", "home_dir": str(home), "v": value}, record=False)
    assert f"step install_pip_requirements: field 'action_config.{field}': with this workspace" in str(exc.value)
    assert not (home / "v").exists()  # the venv step did not run either


def test_git_values_cannot_be_options_or_command_transports(home):
    for config in ({"url": "--upload-pack=touch x"}, {"url": "ext::sh -c touch% x"},
                   {"url": "/srv/repo.git", "branch": "--upload-pack=x"}, {"url": "/srv/r.git", "branch": "a..b"}):
        with pytest.raises(TemplateError, match="clone_git_repository: field 'action_config"):
            run_template(template(step(10, "clone_git_repository", id="clone_git_repository", action_config=config)),
                         {"id": "w", "home_dir": str(home)}, record=False)


def test_object_workspaces_are_read_through_declared_fields(home, db_url):
    class Workspace:  # a provisioner's model
        id = 42
        db_name = "alice"
        home_dir = str(home)
        password_hash = "pbkdf2$secret"
        api_token = "tok-123"

        @property
        def expensive(self):
            raise RuntimeError("must never be read")

        @property
        def colour(self):
            return "blue"

    doc = template(script_step(10, "echo {{ workspace.colour }}", id="s"))
    result = run_template(doc, Workspace(), database_url=db_url)
    assert result.success and result.steps["s"].stdout == "blue\n"
    from dagrun.store.engine import engine_for
    from dagrun.store.models import ProvisioningRun
    from sqlalchemy.orm import Session
    with Session(engine_for(db_url)) as session:
        stored = session.get(ProvisioningRun, result.run_id).workspace
    assert stored == {"id": 42, "home_dir": str(home), "linux_username": None, "host": None, "colour": "blue"}

    class Broken(Workspace):
        @property
        def colour(self):
            raise RuntimeError("database gone")

    from dagrun import InputError
    with pytest.raises(InputError, match="workspace field 'colour' could not be read: RuntimeError: database gone"):
        run_template(doc, Broken(), record=False)


def test_undeclared_variables_are_errors(home):
    from dagrun import InputError
    doc = template(script_step(10, "echo {{ vars.project }}"), vars={"project": "p"})
    with pytest.raises(InputError, match="variable 'projetc' is not declared by template 't' \\(did you mean "
                                         "'project'\\?\\)"):
        run_template(doc, {"id": "w", "home_dir": str(home)}, variables={"projetc": "x"}, record=False)


# -- secrets ------------------------------------------------------------------------

SECRET_ACTION = {
    "name": "with_secret", "action_type": "shell", "max_retries": 1, "retry_delay_seconds": 0,
    "execution_handler": 'echo "token={{ config.token }}" >> "$DAGRUN_OUTPUT"; echo "used {{ config.token }}"',
    "rollback_handler": 'echo "undoing with {{ config.token }}"; echo "{{ config.token }}" | base64',
    "config_schema": {"type": "object", "properties": {"token": {"type": "string", "x-secret": True}}},
}


def test_secrets_are_masked_everywhere_but_reach_downstream_steps_intact(home, db_url):
    import base64
    secret = "s3cr3t-Tok/en+value"
    doc = template(step(10, "with_secret", id="make", action_config={"token": secret}),
                   script_step(20, 'printf "%s" {{ steps.make.result.token }} > ~/got', id="use", requires=["make"]),
                   script_step(30, "exit 1", id="boom", requires=["use"]))
    events = []
    result = run_template(doc, {"id": "w", "home_dir": str(home)}, actions=[SECRET_ACTION], database_url=db_url,
                          on_event=events.append)
    assert (home / "got").read_text() == secret  # the downstream step got the real value
    assert result.steps["make"].status is StepStatus.rolled_back
    forms = [secret, base64.b64encode(secret.encode()).decode().rstrip("="), json.dumps(secret)[1:-1],
             __import__("urllib.parse").parse.quote(secret, safe="")]
    shown = json.dumps(result.as_dict()) + repr(events) + "".join(s.stdout for s in result.steps.values())
    from dagrun.store.engine import engine_for
    from dagrun.store.models import ProvisioningRun, WorkspaceActionExecution
    from sqlalchemy.orm import Session
    with Session(engine_for(db_url)) as session:
        run = session.get(ProvisioningRun, result.run_id)
        rows = session.query(WorkspaceActionExecution).filter_by(run_id=result.run_id).all()
        stored = json.dumps([run.template_snapshot, run.variables, run.workspace, run.error] + [
            [r.execution_output, r.error_message, r.action_config, r.result_data] for r in rows], default=str)
        assert run.secret_names == ["make.token"]
    for form in forms:
        assert form not in shown and form not in stored, form
    assert "********" in stored  # masked, not dropped
    rollback_events = [e for e in events if type(e).__name__ == "StepRolledBack"]
    assert rollback_events and "********" in rollback_events[0].outcome.stdout
    # a resume needs the literal secret again, named step.field
    from dagrun import InputError, resume
    with pytest.raises(InputError, match="secrets that are not stored: make.token"):
        resume(result.run_id, database_url=db_url, actions=[SECRET_ACTION])
    again = resume(result.run_id, database_url=db_url, secrets={"make.token": secret}, from_step="make",
                   actions=[SECRET_ACTION], sandbox=False)
    assert (home / "got").read_text() == secret and again.steps["make"].status is not StepStatus.not_started


def test_a_secret_written_in_the_template_is_given_again_only_as_it_was(home, db_url, tmp_path):
    """It goes back into the template as the author's text (compiled, read by
    its field as a URL or as code): whoever resumes gives the same value or
    nothing. The run keeps a salted scrypt digest of it, never the value."""
    from sqlalchemy.orm import Session

    from dagrun import InputError, resume
    from dagrun.store.engine import engine_for
    from dagrun.store.models import ProvisioningRun
    gate = tmp_path / "gate"
    doc = template(step(10, "with_secret", id="make", action_config={"token": "orig-literal"}),
                   script_step(20, f"test -f {gate}", id="gate", requires=["make"]),
                   global_config={"rollback_on_failure": False})
    failed = run_template(doc, {"id": "w", "home_dir": str(home)}, actions=[SECRET_ACTION], database_url=db_url)
    assert not failed.success
    with Session(engine_for(db_url)) as session:
        digests = session.get(ProvisioningRun, failed.run_id).secret_digests
    assert list(digests) == ["make.token"] and digests["make.token"].startswith("scrypt$16384$8$1$")
    assert "orig-literal" not in json.dumps(digests)
    for other in ("{{ 7*7 }}-{{ workspace.home_dir }}", "orig-literal ", "another"):
        with pytest.raises(InputError, match="the value given again for make.token is not the one the run "
                                             "started with"):
            resume(failed.run_id, database_url=db_url, secrets={"make.token": other}, actions=[SECRET_ACTION])
    gate.touch()
    again = resume(failed.run_id, database_url=db_url, secrets={"make.token": "orig-literal"}, from_step="make",
                   actions=[SECRET_ACTION], sandbox=False)
    assert again.success and again.steps["make"].result["token"] == "********"
    # A run recorded before digests were kept cannot be checked: refused, not trusted.
    with Session(engine_for(db_url)) as session:
        session.get(ProvisioningRun, again.run_id).secret_digests = None
        session.get(ProvisioningRun, again.run_id).status = "failed"
        session.commit()
    with pytest.raises(InputError, match="recorded without a digest"):
        resume(again.run_id, database_url=db_url, secrets={"make.token": "orig-literal"}, actions=[SECRET_ACTION])


def test_a_secret_written_in_a_stored_template_is_taken_from_it_at_resume(home, db_url, tmp_path):
    """Whoever resumes a run of a stored template need not know what its
    author wrote there (a tenant could not): the value comes from the stored
    template when it is still the one the run started with, and a value
    given for it is not used or checked (no oracle for guesses)."""
    from dagrun import SecretsNeeded, resume
    from dagrun.api import save_template
    gate = tmp_path / "gate"
    doc = template(step(10, "with_secret", id="make", action_config={"token": "orig-literal"}),
                   script_step(20, 'printf "%s" {{ steps.make.result.token }} > ~/got', id="use", requires=["make"]),
                   script_step(30, f"test -f {gate}", id="gate", requires=["use"]),
                   name="kept-secret", global_config={"rollback_on_failure": False})
    save_template(doc, database_url=db_url, actions=[SECRET_ACTION])
    failed = run_template("kept-secret", {"id": "w", "home_dir": str(home)}, actions=[SECRET_ACTION],
                          database_url=db_url)
    assert not failed.success and failed.steps["gate"].status is StepStatus.failed
    (home / "got").unlink()
    gate.touch()
    again = resume(failed.run_id, database_url=db_url, from_step="make", actions=[SECRET_ACTION], sandbox=False,
                   secrets={"make.token": "a guess"})
    assert again.success and (home / "got").read_text() == "orig-literal"
    # A caller's own document named like the stored one is not the stored one: it would learn whether the
    # literal it wrote is the author's (the resume asking for it, or not).
    guess = run_template({**doc, "actions": [step(10, "with_secret", id="make", action_config={
        "token": "orig-literal"}), *doc["actions"][1:]]}, {"id": "w2", "home_dir": str(tmp_path / "w2")},
        actions=[SECRET_ACTION], database_url=db_url)
    with pytest.raises(SecretsNeeded):
        resume(guess.run_id, database_url=db_url, from_step="make", actions=[SECRET_ACTION], sandbox=False)
    # Only the run's own name and version count: with that one gone (another version stored, with
    # another value), it is asked for.
    save_template({**doc, "version": "2.0.0", "actions": [
        step(10, "with_secret", id="make", action_config={"token": "rotated"}), *doc["actions"][1:]]},
        database_url=db_url, actions=[SECRET_ACTION])
    from sqlalchemy import delete
    from dagrun.store.engine import engine_for
    from dagrun.store.models import WorkspaceTemplate
    with engine_for(db_url).begin() as conn:
        conn.execute(delete(WorkspaceTemplate).where(WorkspaceTemplate.version == "1.0.0"))
    with pytest.raises(SecretsNeeded) as needed:
        resume(again.run_id, database_url=db_url, from_step="make", actions=[SECRET_ACTION], sandbox=False)
    assert needed.value.names == ["make.token"]


def test_a_secret_written_in_the_template_is_not_kept_in_memory_after_its_run(home, db_url):
    """The stored config of a step (for its records) is worked out once and
    kept for the steps of later runs, but never for a step with secret
    fields: what it holds stays no longer than its run."""
    import gc

    literal = "kept-" + "x" * 20
    doc = template(step(10, "with_secret", id="make", action_config={"token": literal}),
                   step(20, "with_secret", id="other", action_config={"token": "{{ vars.t }}"}), vars={"t": "plain"})
    for n in range(4):  # with secrets given (nothing is kept then), and without (a plan may be kept)
        assert run_template(doc, {"id": f"w{n}", "home_dir": str(home / str(n))}, actions=[SECRET_ACTION],
                            database_url=db_url, secrets={"unused": "s3cr3t-value"} if n % 2 else None).success
    gc.collect()
    # A variable a secret field reads is a secret too (an HTTP start can only send it as a variable).
    tenant = "TenantPw-" + "r" * 20
    read = template(step(10, "with_secret", id="use", action_config={"token": "{{ vars.pw }}"}), vars={"pw": ""})
    assert run_template(read, {"id": "wv", "home_dir": str(home / "v")}, actions=[SECRET_ACTION],
                        database_url=db_url, variables={"pw": tenant}).success
    gc.collect()
    assert [o for o in gc.get_objects() if isinstance(o, dict)
            and any(isinstance(v, str) and v == tenant for v in o.values())] == []
    # (helper-42) nor a default written in the template, nor a plan compiled by plan() (the web's template
    # pages), nor the first compile of an object workspace, nor a variable read by a dynamic key
    default = "DefaultPw-" + "d" * 20
    with_default = template(step(10, "with_secret", id="use", action_config={"token": "{{ vars.pw }}"}),
                            vars={"pw": default})
    assert run_template(with_default, {"id": "wd", "home_dir": str(home / "d")}, actions=[SECRET_ACTION],
                        database_url=db_url).success
    planned = "Planned-" + "p" * 20
    from dagrun import api
    api.plan(template(step(10, "with_secret", id="u", action_config={"token": "{{ vars.db.pw }}"}), vars={"db": {}}),
             actions=[SECRET_ACTION], variables={"db": {"pw": planned}})
    dynamic = "Dynamic-" + "y" * 20
    assert run_template(template(step(10, "with_secret", id="u", action_config={"token": "{{ vars['p' ~ 'w'] }}"}),
                                 vars={"pw": ""}), {"id": "wy", "home_dir": str(home / "y")}, actions=[SECRET_ACTION],
                        database_url=db_url, variables={"pw": dynamic}).success
    gc.collect()
    for value in (default, planned, dynamic):
        assert [o for o in gc.get_objects() if isinstance(o, dict)
                and any(isinstance(v, str) and v == value for v in o.values())
                and o is not with_default["vars"]] == [], value
    written = doc["actions"][0]["action_config"]  # the template itself, held here
    alive = [o for o in gc.get_objects() if isinstance(o, dict) and o is not written
             and any(isinstance(v, str) and v == literal for v in o.values())]
    assert alive == []


def test_a_secret_in_a_result_is_masked_whatever_python_type_holds_it(home, db_url):
    """An unsandboxed Python handler may return a set, bytes, a tuple key or
    an object: each leaves the run masked (helper-41: they went out as they
    were, and the recorder stored their text)."""
    acts = [{"name": "odd", "action_type": "python_function", "execution_handler": "tests.helpers:odd_secret_result",
             "config_schema": {"type": "object", "properties": {"token": {"type": "string", "x-secret": True}}}}]
    token = "TokSecret-pppp"
    result = run_template(template(step(10, "odd", id="s", action_config={"token": token})),
                          {"id": "w", "home_dir": str(home)}, trusted_actions=acts, database_url=db_url, sandbox=False)
    assert result.success, result.error
    shown = result.steps["s"].result
    assert token not in repr(shown) and shown["plain"] == "********" and shown["count"] == 3
    assert shown["as_set"] == ["********"] and shown["as_bytes"] == "********" and shown["obj"] == "holder of ********"
    from sqlalchemy.orm import Session

    from dagrun.store.engine import engine_for
    from dagrun.store.models import WorkspaceActionExecution
    with Session(engine_for(db_url)) as session:
        stored = json.dumps([r.result_data for r in session.query(WorkspaceActionExecution).all()])
    assert token not in stored and "********" in stored


def test_a_secret_written_around_an_expression_is_a_secret_written_in_the_template(home, db_url, tmp_path):
    """(helper-41) postgresql://admin:AuthorPw@{{ workspace.id }}/db and
    hunter2-{{ x }} hold the author's secret: masked in the stored template,
    kept as a digest, given again at resume; postgresql://app:{{ vars.pw }}@db
    reads its secret from a variable and stays as written."""
    from sqlalchemy.orm import Session

    from dagrun import resume
    from dagrun.compile.expressions import written_secret
    from dagrun.store.engine import engine_for
    from dagrun.store.models import ProvisioningRun
    for text, held in (("postgresql://admin:AuthorPw@{{ workspace.id }}/db", True), ("hunter2-{{ workspace.id }}", True),
                       ("{% raw %}hunter2{% endraw %}", True), ("postgresql://app:{{ vars.pw }}@db/x", False),
                       ("{{ vars.pw }}", False), ("postgresql://{{ vars.u }}:{{ vars.p }}@h/{{ workspace.db }}", False),
                       # (helper-42) a token as the URL's user, a query or fragment, text after the URL, an
                       # unencoded / in the password, strings, numbers, comments and statements in the template
                       ("https://ghp_TOKEN@{{ workspace.host }}/org/r.git", True),
                       ("postgresql://{{ workspace.host }}/db?password=PW", True), ("pg://{{ h }}/x#PW", True),
                       ("postgresql://app:{{ vars.pw }}@db/x PW", True), ("postgresql://app:ab/cd@{{ h }}/db", True),
                       ("{{ 'PW' ~ workspace.host }}", True), ("{{ vars.x | default('PW') }}", True),
                       ("{# PW #}{{ workspace.host }}", True), ("{% set x = 'PW' %}{{ x }}", True),
                       ("{{ vars.x if vars.x else 'PW' }}", True), ("{{- vars.pw -}}", False),
                       # (helper-43) keys, empty defaults and ordinary URL parts stay as written; a token as the
                       # user, in the path, in a port or a query's credential count
                       ("postgres://{{ vars.u }}:{{ vars.p }}@{{ workspace.host }}:5432/db?sslmode=require", False),
                       ("{{ vars.creds['password'] }}", False), ("{{ vars.hosts[0] }}", False),
                       ("{{ vars.p | default('') }}", False), ("postgresql://postgres@127.0.0.1/{{ workspace.db }}", False),
                       ("https://ghp_AuthorTok9f8e7d:{{ vars.x }}@github.com/o/r.git", True),
                       ("https://discord.com/api/webhooks/{{ vars.id }}/AuthorWebhookTok123", True),
                       ("https://{{ workspace.host }}:AuthorSecret77/x", True), ("https://{{ h }}/x?token=abc", True)):
        assert written_secret(text) is held, text
    gate = tmp_path / "gate"
    written = "postgresql://admin:AuthorPw-qqqq@{{ workspace.id }}/db"
    doc = template(step(10, "with_secret", id="a", action_config={"token": written}),
                   script_step(20, f"test -f {gate}", id="gated", requires=["a"]),
                   global_config={"rollback_on_failure": False})
    failed = run_template(doc, {"id": "w1", "home_dir": str(home)}, actions=[SECRET_ACTION], database_url=db_url)
    assert not failed.success
    with Session(engine_for(db_url)) as session:
        run = session.get(ProvisioningRun, failed.run_id)
        assert "AuthorPw" not in json.dumps(run.template_snapshot) and list(run.secret_digests) == ["a.token"]
    gate.touch()
    again = resume(failed.run_id, database_url=db_url, actions=[SECRET_ACTION], sandbox=False,
                   secrets={"a.token": written}, from_step="a")
    assert again.success


def test_a_variable_a_secret_field_reads_is_not_stored_however_short_or_however_read(home, db_url):
    """(helper-42) By name, whatever its length (a part under 6 characters
    is not masked in text, so it was stored); and every variable when a
    secret field reads them in a way that names none."""
    from sqlalchemy.orm import Session

    from dagrun.store.engine import engine_for
    from dagrun.store.models import ProvisioningRun
    for token, given in (("{{ vars.pw | upper }}", {"pw": "VALqq", "other": "x"}),
                         ("{{ vars['p' ~ 'w'] ~ '-x' }}", {"pw": "VALUE-longer", "other": "x"})):
        doc = template(step(10, "with_secret", id="u", action_config={"token": token}), vars={"pw": "", "other": ""})
        result = run_template(doc, {"id": "w", "home_dir": str(home)}, actions=[SECRET_ACTION], database_url=db_url,
                              variables=given)
        assert result.success, result.error
        with Session(engine_for(db_url)) as session:
            run = session.get(ProvisioningRun, result.run_id)
            assert given["pw"] not in json.dumps(run.variables) and "pw" in run.secret_names, token


def test_a_secret_in_a_result_is_masked_as_a_number_escaped_or_shown_by_repr(home, db_url):
    acts = [{"name": "num", "action_type": "python_function", "execution_handler": "tests.helpers:numeric_secret_result",
             "config_schema": {"type": "object", "properties": {"token": {"type": "string", "x-secret": True}}}}]
    result = run_template(template(step(10, "num", id="s", action_config={"token": "pin-73914682"})),
                          {"id": "w", "home_dir": str(home)}, trusted_actions=acts, database_url=db_url,
                          sandbox=False, secrets={"pin": "73914682"})
    assert result.success, result.error
    shown = result.steps["s"].result
    assert "73914682" not in repr(shown) and shown["number"] == "********", shown
    from sqlalchemy.orm import Session

    from dagrun.store.engine import engine_for
    from dagrun.store.models import WorkspaceActionExecution
    with Session(engine_for(db_url)) as session:
        stored = json.dumps([r.result_data for r in session.query(WorkspaceActionExecution).all()])
    assert "73914682" not in stored and "pin-" not in stored


def test_no_step_is_named_workspace():
    """A resume is given workspace.NAME (a field) and step.field (a secret
    written in the template): a step "workspace" would make its secrets
    look like workspace fields, given again unchecked (helper-40)."""
    from dagrun import TemplateError, compile_template
    with pytest.raises(TemplateError, match="step id 'workspace' is reserved"):
        compile_template(template(step(10, "with_secret", id="workspace", action_config={"token": "t"})),
                         actions=[SECRET_ACTION], keep=False)


def test_a_literal_secret_given_again_goes_to_the_step_it_names_only():
    """Step names as the compiler makes them (id, action, action_order): a step
    whose id is "2" is not the step whose sequence_order is 2."""
    from dagrun.api import with_secret_literals
    snapshot = {"name": "t", "actions": [
        {"sequence_order": 1, "id": "2", "action_name": "with_secret", "action_config": {"token": "********"}},
        {"sequence_order": 2, "id": "other", "action_name": "with_secret", "action_config": {"token": "********"}},
        {"sequence_order": 3, "action_name": "only_once", "action_config": {"token": "********"}},
        {"sequence_order": 4, "action_name": "twice", "action_config": {"token": "********"}},
        {"sequence_order": 5, "action_name": "twice", "action_config": {"token": "********"}}]}
    given = with_secret_literals(snapshot, {"2.token": "a", "only_once.token": "b", "twice_5.token": "c"})
    assert [s["action_config"]["token"] for s in given["actions"]] == ["a", "********", "b", "********", "c"]
    # Step "a" and step "a.b" (actions named so): "a.b.token" is the masked token of a.b, not a's "b.token".
    dotted = {"name": "t", "actions": [
        {"sequence_order": 1, "action_name": "a", "action_config": {"user": "x"}},
        {"sequence_order": 2, "action_name": "a.b", "action_config": {"token": "********"}}]}
    given = with_secret_literals(dotted, {"a.b.token": "v"})
    assert [s["action_config"] for s in given["actions"]] == [{"user": "x"}, {"token": "v"}]
    from dagrun import InputError
    with pytest.raises(InputError, match="a.user names no masked field of the template"):
        with_secret_literals(dotted, {"a.user": "v"})
    assert snapshot["actions"][0]["action_config"]["token"] == "********"  # the stored snapshot is left as it was


def test_the_sqlite_store_and_the_journal_are_private(tmp_path, home):
    import os
    import stat
    url = f"sqlite:///{tmp_path / 'store' / 'dagrun.db'}"
    run_template(template(script_step(10, "true")), {"id": "w", "home_dir": str(home)}, database_url=url)
    for path in (tmp_path / "store" / "dagrun.db", tmp_path / "store"):
        assert stat.S_IMODE(os.stat(path).st_mode) & 0o077 == 0, path


def test_an_existing_sqlite_store_that_others_can_read_is_said_to_be(tmp_path, home, caplog):
    """Left as it is (a group may be meant to read it), but said: its records
    hold configs, output and the digests of values given again at resume."""
    import logging
    shared = tmp_path / "shared.db"
    shared.touch(mode=0o644)
    shared.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="dagrun.store"):
        run_template(template(script_step(10, "true")), {"id": "w", "home_dir": str(home)},
                     database_url=f"sqlite:///{shared}")
    said = [r.getMessage() for r in caplog.records if "can be read by other users" in r.getMessage()]
    assert said == [f"database {shared} can be read by other users (mode 644): its records hold configs, output "
                    f"and digests of secrets given again at resume (chmod 600 {shared})"]
    assert shared.stat().st_mode & 0o777 == 0o644


# -- observers ------------------------------------------------------------------------

def test_an_observer_that_raises_is_detached_and_the_run_goes_on(home, caplog):
    calls = []

    def bad(event):
        calls.append(event)
        raise ValueError("observer bug")

    seen = []
    doc = template(script_step(10, "true", id="a"), script_step(20, "true", id="b", requires=["a"]))
    result = run_template(doc, {"id": "w", "home_dir": str(home)}, record=False, on_event=bad,
                          observers=[seen.append])
    assert result.success
    assert len(calls) == 1  # detached after its first failure
    assert [type(e).__name__ for e in seen][-1] == "RunFinished"  # the others go on
    assert sum("observer" in r.getMessage() and "detached" in r.getMessage() for r in caplog.records) == 1


def test_step_output_is_printed_as_text_never_markup(tmp_path):
    doc = template(script_step(10, 'echo "see [/var/log/app] [bold]x[/bold]"; echo "[red]oops[/" >&2; exit 1',
                               id="noisy"))
    (tmp_path / "t.yaml").write_text(__import__("yaml").safe_dump(doc))
    out = dagrun_cli("run", "t.yaml", cwd=tmp_path)
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    assert "[red]oops[/" in out.stdout  # the error, as text


# -- hostile documents -------------------------------------------------------------------

BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
    f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(9))


@pytest.mark.parametrize("name,content,message", [
    ("bomb.yaml", "name: bomb\nvars:\n  " + BOMB.replace("\n", "\n  "), "more than 2000000 values"),
    ("deep.yaml", "name: deep\nactions:\n- sequence_order: 1\n  action_name: noop\n  condition_expression: '"
     + "(" * 2000 + "1" + ")" * 2000 + "'\n", "nested more than 100 levels deep"),
    ("latin1.yaml", b"name: caf\xe9\n", "not UTF-8 text (byte 9, line 1)"),
    ("big.yaml", "name: big\ndescription: " + "x" * 1_100_000 + "\n", "larger than 1000000 bytes"),
    ("merge.yaml", "name: merge\nvars:\n  b: &b {" + ",".join(f"k{j}: 0" for j in range(2000)) + "}\n  c:\n"
     + "  - {<<: *b}\n" * 2000, "more than 2000000 values (YAML aliases and merge keys included)"),
    ("set.yaml", "name: s\nvars:\n  v: !!set\n    ? .nan\n", "nan is not a number dagrun can use"),
    ("aliases.yaml", "name: a\nvars:\n  s: &s " + "x" * 500_000 + "\n  l: [" + "*s, " * 1000 + "]\n",
     "more than 16000000 characters of text (YAML aliases included)"),
    ("base60.yaml", "name: b\nvars:\n  x: 1" + ":0" * 180 + ":0.5\n", "a base-60 number of more than 16 parts"),
    ("merges.yaml", "name: m\nvars:\n  e: &e {}\n  m: {" + "<<: *e, " * 200 + "}\n",
     "more than 100 merge keys (<<) in one mapping"),
    ("surrogate.json", '{"name": "t\\ud800", "actions": []}', "text that is not valid Unicode (a lone surrogate)"),
])
def test_hostile_documents_get_one_line_and_exit_2(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    out = dagrun_cli("validate", name, cwd=tmp_path)
    assert out.returncode == 2
    assert message in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def _nested(depth: int, leaf: object = "x") -> object:
    value: object = leaf
    for _ in range(depth - 1):
        value = (value,)
    return value


@pytest.mark.parametrize("value,message", [
    (_nested(63), None),  # inside the variables mapping: 64 levels
    (_nested(64), "nested more than 64 levels deep"),
    ({_nested(64): "a tuple key is walked as a value"}, "nested more than 64 levels deep"),
    ([["x"] * 1000] * 2001, "more than 2000000 values"),  # one list, referenced 2,001 times
    ({"a": [1, 2.5, True, None, "y" * 1_000_001]}, "a string longer than 1000000 characters"),
    ({"a": [float("nan")]}, "nan is not a number dagrun can use"),
    ({"a": {"b": 2 ** 300}}, "a number too large to be meant"),
    ({2 ** 300: "keys are values too"}, "a number too large to be meant"),
    ({float("nan"): 1}, "nan is not a number dagrun can use"),
    ({"k" * 1_000_001: 1}, "a key longer than 1000000 characters"),
    (frozenset({_nested(64)}), "nested more than 64 levels deep"),  # sets are walked (deepcopy would recurse)
    ([b"x" * 1_000_001], "a string longer than 1000000 characters"),
])
def test_values_given_in_python_are_bounded_like_documents(value, message):
    """Variables (and templates) given as Python data are checked as a
    parsed document is: depth, values counted with repeats, string size,
    numbers."""
    doc = template(step(1, "noop", id="a"))
    if message is None:
        compile_template(doc, variables={"v": value})
        return
    with pytest.raises(TemplateError, match=re.escape(message)):
        compile_template(doc, variables={"v": value})


def test_a_workspaces_file_is_bounded_as_a_template_is(tmp_path):
    """Sign-ups, a form's export: an alias bomb of 500 bytes is refused
    before anything reads it."""
    from dagrun.errors import InputError
    from dagrun.fleet import read_workspaces
    text = "- id: w1\n  a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"  a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]\n" for i in range(1, 9)) + "- id: *a8\n"
    (tmp_path / "ws.yaml").write_text(text)
    with pytest.raises(InputError, match="more than 2000000 values"):
        read_workspaces(str(tmp_path / "ws.yaml"))


def test_a_workspaces_file_nested_too_deeply_is_one_clear_error(tmp_path):
    from dagrun.errors import InputError
    from dagrun.fleet import read_workspaces
    (tmp_path / "ws.jsonl").write_text('{"id": "w", "x": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    with pytest.raises(InputError, match="nested too deeply"):
        read_workspaces(str(tmp_path / "ws.jsonl"))


def test_a_workspace_value_repeated_a_billion_times_is_refused_before_it_is_copied():
    from dagrun.errors import InputError
    from dagrun.workspace import normalize_workspace
    value: object = "v"
    for _ in range(9):
        value = [value] * 10  # 10**9 values, ten lists
    with pytest.raises(InputError, match="more than 2000000 values"):
        normalize_workspace({"id": "w", "field": value})


def test_an_unreadable_neighbour_of_a_template_is_skipped_and_named_if_the_base_is_missing(tmp_path, home):
    (tmp_path / "base.yaml").write_text("name: base\nactions:\n- {sequence_order: 1, action_name: noop}\n")
    (tmp_path / "a-notes.yaml").write_bytes(b"\xff\xfe garbage")
    (tmp_path / "child.yaml").write_text("name: child\nextends: base\n")
    out = dagrun_cli("validate", "child.yaml", cwd=tmp_path)
    assert out.returncode == 0 and out.stderr == "", out.stderr  # found its base: nothing to say of the rest
    (tmp_path / "base.yaml").unlink()
    out = dagrun_cli("validate", "child.yaml", cwd=tmp_path)
    assert out.returncode == 2 and "a-notes.yaml" in out.stderr and "not UTF-8" in out.stderr, out.stderr


def test_a_database_that_cannot_be_opened_is_one_line(tmp_path):
    out = dagrun_cli("run", "demo", "--db", "sqlite:////proc/nope/x.db", cwd=tmp_path)
    assert out.returncode == 3
    assert out.stderr.strip() == "dagrun: cannot open database /proc/nope/x.db: No such file or directory"


# -- regressions from an attack on the first version (each ran code, or leaked) ----------

ATTACKS = [  # each must be refused when the template is compiled
    "for ((i=0; i<1<<0; i++)); do :; done\neval {{ workspace.v }}",  # a false here-document
    'echo ${x:-"}"}\neval {{ workspace.v }}',  # quotes inside ${ }
    "echo $(if true; then case a in a) eval {{ workspace.v }};; esac; fi)",  # case after a keyword
    "a[1<<2]=x\neval {{ workspace.v }}", "a[{{ workspace.v }}]=1", "arr=([{{ workspace.v }}]=1)",
    "for ((i=0; i<{{ workspace.v }}; i++)); do :; done",
    "[[ 1 == 1 && {{ workspace.v }} -eq 1 ]]", "[[ ( {{ workspace.v }} -gt 1 ) ]]",
    "declare -i x; x[0]={{ workspace.v }}", "declare -i i; for i in {{ workspace.v }}; do :; done",
    "test -v a{{ workspace.v }}", "printf -vx{{ workspace.v }} %s 1", "printf -v 2>/dev/null {{ workspace.v }} %s 1",
    "\\eval {{ workspace.v }}", '"eval" {{ workspace.v }}', "time -p eval {{ workspace.v }}",
    "command -p eval {{ workspace.v }}", "coproc eval {{ workspace.v }}", "source /dev/stdin <<< {{ workspace.v }}",
    ". <(printf %s {{ workspace.v }})", 'eval "$(printf %s {{ workspace.v }})"', 'sh -c "echo {{ workspace.v }}"',
    "bash -c {{ workspace.v }}", "{{ workspace.v }} x", "python3 -c \"print('{{ workspace.v }}')\"",
    "python3 <<EOF\n{{ workspace.v }}\nEOF", "sed -i \"s/a/{{ workspace.v }}/\" f", "env -- sort {{ workspace.v }}",
    "ssh host echo {{ workspace.v }}", "xargs echo {{ workspace.v }}", "find . -exec echo {{ workspace.v }} ;",
    "{% filter format(workspace.v) %}echo %s{% endfilter %}", "echo `echo {{ workspace.v }}`",
    'echo "$(( {{ workspace.v }} ))"', "x={{ workspace.v }}\neval \"$x\" 'unterminated",
    # from a second attack (helper-21): declare re-reads a value given to an array as a (...) list
    "declare -a groups={{ workspace.v }}\necho ${groups[*]}", 'f() { local -a a="{{ workspace.v }}"; }',
    "typeset -A m={{ workspace.v }}", "readonly -a r={{ workspace.v }}", "export -a e={{ workspace.v }}",
    "g=(1)\ndeclare g={{ workspace.v }}", "f() { declare g={{ workspace.v }}; }\ng[0]=1\nf",
    "read -a g < /dev/null\ntypeset g={{ workspace.v }}",
    # a value after NAME=value words is the command; bash's own numbers evaluate what they are given
    "GREETING={{ workspace.v }} {{ workspace.v }}", "A=1 B={{ workspace.v }} {{ workspace.v }} x",
    "RANDOM={{ workspace.v }}", "OPTIND={{ workspace.v }}", "compgen -W {{ workspace.v }}",
    # a value reaches arithmetic through a variable that holds it
    "v={{ workspace.v }}; (( v > 1 ))", 'v={{ workspace.v }}; [[ $v -eq 1 ]]', "x=$(echo {{ workspace.v }}); echo $(( x + 1 ))",
    "for i in {{ workspace.v }}; do (( i > 1 )); done", "v={{ workspace.v }}; echo ${!v}",
    "f() { (( n > 1 )); }\nn={{ workspace.v }}\nf",
    # from a second re-attack (helper-25): (( glued to its keyword; a variable or "$@" holding a value in
    # code a command runs, or as the command; a value piped into an interpreter
    "for((i=1; i<={{ workspace.v }}; i++)); do :; done", "if((1 < {{ workspace.v }})); then :; fi",
    "n={{ workspace.v }}\nif((n > 3)); then :; fi", "n={{ workspace.v }}\nwhile((n > 3)); do break; done",
    'tmp={{ workspace.v }}\ntrap "rm -rf $tmp" EXIT', 'u={{ workspace.v }}\nsu root -c "echo $u"',
    'v={{ workspace.v }}\nbash -c "echo $v"', 'v={{ workspace.v }}\neval "echo $v"',
    'as_dev() { su root -c "$*"; }\nas_dev git --version {{ workspace.v }}', 'f() { sh -c "echo $1"; }\nf {{ workspace.v }}',
    "v={{ workspace.v }}\n$v", 'echo "print({{ workspace.v }})" | python3',
    "cat <<EOF | python3\nprint('{{ workspace.v }}')\nEOF", 'v={{ workspace.v }}; echo "$v" | bash',
    # a third re-attack (helper-26): copies, groups and stages before a pipe, redirections before the command
    "v={{ workspace.v }}; w=$v; (( w > 1 )); true", "printf -v w %s {{ workspace.v }}; (( w > 1 )); true",
    'repo={{ workspace.v }}\ncmd="echo cloning $repo"\nbash -c "$cmd"', 'run_as() { local cmd=$1; sh -c "$cmd"; }\nrun_as "echo {{ workspace.v }}"',
    "set -- -c {{ workspace.v }}\nwhile getopts 'c:' o; do sh -c \"$OPTARG\"; done",
    'echo {{ workspace.v }} | while read -r line; do c="$line"; sh -c "$c"; done', "echo {{ workspace.v }} |\n  bash",
    "{ echo {{ workspace.v }}; } | sh", "echo {{ workspace.v }} | cat | sh", "<<< {{ workspace.v }} bash",
    "<<EOF python3\nprint('{{ workspace.v }}')\nEOF", 'shopt -s expand_aliases\nalias run="sh -c"\nrun {{ workspace.v }}',
    # a fourth (helper-27): an option's argument taken for the program; names bash or a loop fill; a command's
    # output as the command; process substitutions and coproc; more programs that run commands or SQL with \!
    'bash -o pipefail -c "echo {{ workspace.v }} | tr a-z A-Z"', "python3 -W ignore -c \"print('{{ workspace.v }}')\"",
    "awk -v n=1 {{ workspace.v }} /dev/null", 'repos={{ workspace.v }}\nfor r in $repos; do sh -c "echo $r"; done',
    'set -- {{ workspace.v }}\nfor c; do sh -c "echo $c"; done', 'getv() { echo {{ workspace.v }}; }\nx=$(getv)\nsh -c "echo $x"',
    'echo {{ workspace.v }} >/dev/null\nsh -c "echo $_"', 'read -r <<< {{ workspace.v }}\nsh -c "echo $REPLY"',
    'REPO={{ workspace.v }}\nfor n in REPO; do sh -c "echo ${!n}"; done', "$(echo {{ workspace.v }})",
    "< <(echo {{ workspace.v }}) bash", "echo {{ workspace.v }} | tee >(sh) >/dev/null",
    'coproc sh\necho {{ workspace.v }} >&"${COPROC[1]}"', 'sg root -c "echo {{ workspace.v }}"',
    "psql <<EOF\nselect '{{ workspace.v }}';\nEOF",
    # options read per interpreter: -e is errexit to bash (code to perl), -E / -r take nothing in bash / python
    'bash -e -c "echo {{ workspace.v }}"', 'python3 -E -c "print({{ workspace.v }})"', 'bash -r -c "echo {{ workspace.v }}"',
    'ruby -r json -e "p {{ workspace.v }}"', "ruby -r {{ workspace.v }} x.rb", "perl -I {{ workspace.v }} x.pl",
    "php -d {{ workspace.v }} x.php",
    # a last re-attack (helper-28): -s / - after an option; -c among other flags; -s of sed and awk
    "bash -x -s arg <<EOF\n{{ workspace.v }}\nEOF", "python3 -I - arg <<EOF\n{{ workspace.v }}\nEOF",
    "perl -W - arg <<EOF\n{{ workspace.v }}\nEOF", "bash -ec {{ workspace.v }}", "bash -c -x {{ workspace.v }}",
    'x={{ workspace.v }}; bash -c -x "$x"', "echo x | sed -n -s {{ workspace.v }}", "awk -s {{ workspace.v }} /dev/null",
    # (helper-53 F7) psql's database name is a connection string to libpq: dbname=x user=postgres
    "psql -d {{ workspace.v }} -f setup.sql", "psql --dbname {{ workspace.v }} -f s.sql", "psql -f s.sql {{ workspace.v }}",
    "psql -f s.sql -- {{ workspace.v }}", "psql -U app -d{{ workspace.v }} -f s.sql",
    # (helper-55 F3) every libpq client reads a database name holding = as a connection string
    "pg_dump -U app -d {{ workspace.v }}", "pg_dump --dbname={{ workspace.v }}", "pg_dump {{ workspace.v }}",
    "pg_dump --clean {{ workspace.v }}", "pg_dump -F c {{ workspace.v }}", "pg_restore -d {{ workspace.v }} f.dump",
    "createdb --maintenance-db={{ workspace.v }} x", "vacuumdb -d {{ workspace.v }}", "pgbench {{ workspace.v }}",
    'x={{ workspace.v }}; pg_dump -d "$x"',
    # a script with no {{ }} still hands values on through the variables dagrun gives it
    'bash -c "echo $DAGRUN_WORKSPACE_ID"', 'eval "$DAGRUN_WORKSPACE_ID"', 'pg_dump -d "$DAGRUN_WORKSPACE_ID"',
    "PGSERVICE={{ workspace.v }} psql -f s.sql", "PGOPTIONS={{ workspace.v }} pg_dump -f out.sql",
    # (helper-57) bundles, prefixes, other clients, options held in variables or arrays
    "pg_restore -wd {{ workspace.v }} f", "pg_isready -qd {{ workspace.v }}", "pg_dump -wd{{ workspace.v }}",
    "pg_dump --dbn={{ workspace.v }}", "pg_restore --dbn {{ workspace.v }}", "createdb --maint {{ workspace.v }} x",
    "vacuumdb --maint={{ workspace.v }}", "pg_dumpall -l {{ workspace.v }}", "vacuumlo {{ workspace.v }}",
    "oid2name -d {{ workspace.v }}", 'opt=--dbname; pg_restore "$opt" {{ workspace.v }}',
    'a=(--dbname {{ workspace.v }}); pg_restore "${a[@]}"', 'createdb --maint "$DAGRUN_WORKSPACE_ID" x',
    # ... and a script with no {{ }} piping what dagrun's variables hold into a shell
    'printenv DAGRUN_WORKSPACE_ID | sh', '{ echo "$DAGRUN_WORKSPACE_ID"; } | sh', '$(printenv DAGRUN_WORKSPACE_ID)',
    'jq -r .x <<< "$DAGRUN_CONFIG" | bash',
    # subcommands that run code, and more programs that run a command (helper-57 F4)
    "python3 manage.py shell -c \"print('{{ workspace.v }}')\"", "./manage.py shell -c \"x='{{ workspace.v }}'\"",
    "python3 manage.py dbshell <<SQL\nselect '{{ workspace.v }}';\nSQL", "echo {{ workspace.v }} | python3 manage.py shell",
    "uv run python -c \"print('{{ workspace.v }}')\"", 'prlimit --nofile=10 sh -c "echo {{ workspace.v }}"',
    'sshpass -p x ssh h "echo {{ workspace.v }}"',
    # (helper-58) quoted script paths and interpreter options, -m, aliases; raw SQL options; programs
    # that run commands; code from a command's output; scripts naming the value variables by prefix
    'python3 "$APP/manage.py" shell -c "print(\'{{ workspace.v }}\')"', "python3 -W ignore manage.py shell -c \"x='{{ workspace.v }}'\"",
    "python3 -m django shell -c \"x='{{ workspace.v }}'\"", "rails r \"puts '{{ workspace.v }}'\"", "npm init {{ workspace.v }}",
    "vacuumdb -t {{ workspace.v }} -d db", "pgbench -f {{ workspace.v }} db",
    "sed 's/^/echo Welcome, /e' <<< \"{{ workspace.v }}\"", "awk -v name=\"{{ workspace.v }}\" 'BEGIN{system(\"mkdir \" name)}'",
    'eval "$(printenv DAGRUN_WORKSPACE_ID)"', "source <(printenv CONFIG_NAME)", "bash <(printenv DAGRUN_CONFIG)",
    'for n in ${!CONFIG_*}; do eval "export APP_${n#CONFIG_}=\"${!n}\""; done',
    'set -o posix\nalias greet="$DAGRUN_WORKSPACE_ID"\ngreet',
    "pg_restore -c {{ workspace.v }}",  # (an archive's content is SQL, run as the role it connects as)
    # (helper-59) PGDATABASE given a value other than as a whole NAME={{ }} word; libpq's file variables
    'X="{{ workspace.v }}"; export PGDATABASE="$X"; vacuumdb', 'printf -v PGDATABASE %s "{{ workspace.v }}"; vacuumdb',
    'read -r PGUSER <<< "{{ workspace.v }}"; vacuumdb', 'f(){ export PGDATABASE="$1"; }; f "{{ workspace.v }}"; vacuumdb',
    'export PGDATABASE="$(echo "{{ workspace.v }}")"; vacuumdb', 'PGSSLKEY="{{ workspace.v }}" psql -f s.sql',
    # ... code from output through a here-string or here-document; awk/sed/perl programs that run commands
    'export V="{{ workspace.v }}"; bash <<< "$(printenv V)"', 'export V="{{ workspace.v }}"\nbash <<EOF\n$(printenv V)\nEOF',
    "sed --expression='s/.*/&/e' <<< \"{{ workspace.v }}\"", "sed '0~1e' <<< \"{{ workspace.v }}\"",
    'P="s/.*/&/e"; sed "$P" <<< "{{ workspace.v }}"', "gawk '{ f=\"system\"; @f($0) }' <<< \"{{ workspace.v }}\"",
    "perl -ne 'system $_' <<< \"{{ workspace.v }}\"", "sed -f script.sed <<< \"{{ workspace.v }}\"",
    # ... and code subcommands spelled other ways
    'npm exe --yes -- sh -c "{{ workspace.v }}"', "python3 -mdjango shell -c \"x='{{ workspace.v }}'\"",
    "python3 manage.py $'shell' -c \"x='{{ workspace.v }}'\"", "C=shell; python3 manage.py $C -c \"x='{{ workspace.v }}'\"",
    "bundle e ruby -e \"p '{{ workspace.v }}'\"",
    # (helper-60) sed's e among s's flags; perl -n eval; gawk -i/-E; a program from /dev/fd; escaped subcommands;
    # libpq clients left to take their database from $PGDATABASE; GSSAPI/TLS libraries' variables
    "sed 's/.*/&/ge' <<< \"{{ workspace.v }}\"", "sed 's/.*/&/Me' <<< \"{{ workspace.v }}\"",
    "sed '1ecmd' <<< \"{{ workspace.v }}\"", "perl -ne 'eval' <<< \"{{ workspace.v }}\"",
    "gawk -i ./p.awk 1 <<< \"{{ workspace.v }}\"", "bash /dev/fd/3 3< <(printenv DAGRUN_WORKSPACE_ID)",
    "python3 manage.py $'\\x73hell' <<< {{ workspace.v }}", 'printf -vPGDATABASE %s {{ workspace.v }}; vacuumdb',
    'X="{{ workspace.v }}"; declare -x "PGDATABASE=$X"; vacuumdb', "echo {{ workspace.v }}; pgbench -c 2",
    "KRB5_CONFIG={{ workspace.v }} psql -f s.sql", "GSS_MECH_CONFIG={{ workspace.v }} psql -f s.sql",
    # (helper-61) options, names and assignments written in quotes or escaped are the same to bash
    'git config --global "core.sshCommand" "ssh -i {{ workspace.v }}"', "bash '-c' \"echo {{ workspace.v }}\"",
    'bash \\-c "echo {{ workspace.v }}"', "python3 '-c' \"print('{{ workspace.v }}')\"",
    "bash $'\\x2dc' \"echo {{ workspace.v }}\"", 'rsync -a "--rsh=ssh -p {{ workspace.v }}" src h:dst',
    'tar -xf a.tar "--to-command=cat > {{ workspace.v }}"', "echo {{ workspace.v }} | sed \"-e\" '1e'",
    "awk '-v' n={{ workspace.v }} 'BEGIN{system(n)}'", 'curl "--config" {{ workspace.v }} http://x/',
    'key={{ workspace.v }}\nexport "GIT_SSH_COMMAND=ssh -i $key"\ngit ls-remote ssh://h/x.git',
    'key={{ workspace.v }}; declare -x "GIT_SSH_COMMAND=ssh -i $key"', 'printf -v "GIT_SSH_COMMAND" %s "{{ workspace.v }}"',
    'read -r "GIT_SSH_COMMAND" <<< "{{ workspace.v }}"', 'f() { local "GIT_SSH_COMMAND=ssh -i $1"; }; f {{ workspace.v }}',
    'declare -n ref=GIT_SSH_COMMAND; read -r ref <<< "ssh -i {{ workspace.v }}"',
    'declare "-i" n; n={{ workspace.v }}', 'declare -n r; v={{ workspace.v }}; for r in "$v"; do :; done',
    # ... a prompt's decoding makes \044 a $; versioned interpreters; more runners and git's code options
    'v={{ workspace.v }}; echo "${v@P}"', 'tclsh8.6 <<EOF\nputs "Hello {{ workspace.v }}"\nEOF',
    'perl5.36-x86_64-linux-gnu -e "print qq({{ workspace.v }})"', 'newgrp root <<EOF\necho {{ workspace.v }}\nEOF',
    'linux64 bash -c "echo {{ workspace.v }}"', 'perf stat -- sh -c "echo {{ workspace.v }}"',
    'systemd-cat -t x sh -c "echo {{ workspace.v }}"', "m4 -DNAME={{ workspace.v }} f.m4", "go run {{ workspace.v }}",
    'git filter-branch --index-filter "git rm --cached {{ workspace.v }}" HEAD',
    'git difftool --extcmd="diff -u {{ workspace.v }}" HEAD', "echo {{ workspace.v }} | sed '/./Ie'",
    "pg_dump -E {{ workspace.v }} -f d.sql -d app", "pg_dumpall --encoding={{ workspace.v }} -f d.sql",
    "hash -p {{ workspace.v }} git; git status", 'opt=-c; bash $opt "echo {{ workspace.v }}"',
    # a package a value names is code (its build, install scripts, plugins): root ran a tenant's sdist, a .deb
    # from the home; apt's and dpkg's settings and hooks run commands
    "pip install {{ workspace.v }}", "python3 -m pip install -- {{ workspace.v }}", "pip3.11 download {{ workspace.v }}",
    "pip install --index-url {{ workspace.v }} requests", ".venv/bin/pip install -r {{ workspace.v }}",
    "uv pip install {{ workspace.v }}", "npm i {{ workspace.v }}", "yarn add {{ workspace.v }}",
    "apt-get install -y -- {{ workspace.v }}", "apt install {{ workspace.v }}", "dpkg -i {{ workspace.v }}",
    "gem install {{ workspace.v }}", "cargo install {{ workspace.v }}", "go install {{ workspace.v }}@latest",
    "composer require {{ workspace.v }}", "conda install -y {{ workspace.v }}",
    "apt-get -o {{ workspace.v }} update", "apt-get -qoAPT::Update::Pre-Invoke::={{ workspace.v }} update",
    "dpkg --post-invoke={{ workspace.v }} -l",
    # (helper-65) [ and test split an unquoted word into operators (-o -v a[$(cmd)] runs cmd); a value given
    # to a variable the -- rule trusts ($USER, $PWD); a function named only in a here-document or a comment;
    # a function reading options with getopts; a glob's file names; -"$N"; $"$F" and $''"$F"; ${HOME<op>}
    'X={{ workspace.v }}\nif [ -z $X ]; then echo none; else echo "name: $X"; fi', "f() { [ -n $1 ]; }; f {{ workspace.v }}",
    'USER={{ workspace.v }}; chown -R $USER:$USER "$HOME/p"', 'read -r USER <<< "{{ workspace.v }}"; sort "$USER" f',
    "cat >> ~/.bashrc <<'EOF'\ngit() { command git \"$@\"; }\nEOF\nREPO={{ workspace.v }}\ngit clone $REPO p",
    "# this function git is for the developer's shell\nB={{ workspace.v }}\ngit pull \"$B\"",
    'mk() { local m=755 OPTIND o; while getopts "m:" o; do m=$OPTARG; done; shift $((OPTIND-1)); '
    'mkdir -m"$m" -- "$1"; }\nN={{ workspace.v }}; mk "$N"',
    'git clone -q -- "{{ workspace.v }}" p; cd p && tar -czf ../b.tgz *', 'N={{ workspace.v }}; git log -"$N"',
    'F={{ workspace.v }}; sort $"$F" f', "F={{ workspace.v }}; sort $''\"$F\" f", 'X={{ workspace.v }}; sort "${HOME:0:0}$X" f',
    'X={{ workspace.v }}; sort "${HOME##*/}" f', 'n=PA; n+=TH; printf -v "$n" %s "{{ workspace.v }}"; git status',
    'v={{ workspace.v }}; printf -v"$v" %s x', 'v={{ workspace.v }}; declare "$n=$v"',
    # ... sed's and gawk's program options abbreviated or bundled; tar -T's input; yq's program; ansible's -e
    "sed --expr='s/^/echo /e' <<< \"{{ workspace.v }}\"", "gawk --sourc='{ system($0) }' <<< \"{{ workspace.v }}\"",
    "sed -ne's/^/echo /ep' <<< \"{{ workspace.v }}\"", "sed -ne 's/^/echo /ep' <<< \"{{ workspace.v }}\"",
    'tar -czf b.tgz -C p -T - <<EOF\n{{ workspace.v }}\nEOF', 'yq -y -i ".name = \\"{{ workspace.v }}\\"" app.yaml',
    'ansible-playbook -e "k={{ workspace.v }}" p.yml',
    # (helper-67) a value before the subcommand; -m in a bundle; apt's settings file; more installers; -- before
    # awk's program; a function named as a program, or defined out of the top; names a step may have empty;
    # a value continuing an option bundle; extglob; [ with a quoted operand before another
    "npm --prefix {{ workspace.v }} install", "pip --python {{ workspace.v }} list",
    "dpkg --admindir {{ workspace.v }} --configure -a", "python3 manage.py --settings {{ workspace.v }} shell",
    "go -C {{ workspace.v }} run .", "python3 -Impip install {{ workspace.v }}", "APT_CONFIG={{ workspace.v }} apt-get update",
    "apt-get upgrade {{ workspace.v }}", "dpkg -Ei {{ workspace.v }}", "gem inst {{ workspace.v }}", "cargo check {{ workspace.v }}",
    "easy_install-3.11 {{ workspace.v }}", "pip-3.11 install {{ workspace.v }}", "npm config set registry {{ workspace.v }}",
    "python3 -m pipx run {{ workspace.v }}",
    "echo {{ workspace.v }} | awk -- '{ system(\"echo \" $0) }'", "echo {{ workspace.v }} | sed -- 's/^/echo /e'",
    "echo {{ workspace.v }} | gawk -W exec p.awk",
    'sort() { LC_ALL=C /usr/bin/sort "$@"; }; X={{ workspace.v }}; sort "$X" /etc/hostname',
    'X={{ workspace.v }}; ( f() { :; } ); f "$X"; ./f "$X"', 'X={{ workspace.v }}; sort "$USER-$X" /etc/hostname',
    'X={{ workspace.v }}; sort "$TMPDIR$X" /etc/hostname', 'X={{ workspace.v }}; tar -c"$X"f o.tgz .',
    'echo {{ workspace.v }}; shopt -s extglob; tar cf o.tar !(*.tar)',
    'tar -c -f o.tar -T - --verbatim-files-from <<< "{{ workspace.v }}"',
    # inline code of another language handing an exported value to a shell (its $X, or the environment)
    "export X={{ workspace.v }}; sed -n '1e $X' /etc/hostname", "export X={{ workspace.v }}; awk 'BEGIN{system(\"$X\")}'",
    "export X={{ workspace.v }}; awk 'BEGIN{system(ENVIRON[\"X\"])}'", "export X={{ workspace.v }}; perl -e 'system($ENV{X})'",
    "X={{ workspace.v }}; export X; awk 'BEGIN{print ENVIRON[\"X\"] | \"sh\"}'",
    "export X={{ workspace.v }}; python3 -c 'import os; os.system(os.environ[\"X\"])'",
    "export X={{ workspace.v }}; python3 -c 'import os; os.system(\"$X\")'",
    # helper-69: &> is a redirection (not & then a new command), ((cmd); cmd) two subshells
    'bash &>>~/provision.log -c "cd ~/{{ workspace.v | path_segment }} && ls"',
    "python3 &>>setup.log -c \"print('{{ workspace.v }}')\"", "bash &>/dev/null -s <<EOF\necho {{ workspace.v }}\nEOF",
    'set -- "{{ workspace.v }}"\n((echo "setting up"); eval "$1") # done :))',
    # ... curl's settings (and others') from a value on its input; pg_ctl runs its -D, -o and -l with sh
    'curl -sS --config - <<EOF\nurl = "https://h/ws/{{ workspace.v }}"\nEOF', 'curl -K /dev/stdin <<< "url = {{ workspace.v }}"',
    'echo "url = {{ workspace.v }}" | curl -K-', 'scp -F /dev/stdin a b:c <<< "{{ workspace.v }}"',
    'pg_ctl -D ~/pgdata -o "-p {{ workspace.v }}" -l ~/pg.log start', "pg_ctl -D ~/{{ workspace.v }}/pgdata start",
    # helper-70: the environment into a shell, however spelled, in any quoting or a here-document
    "export REPO=\"{{ workspace.v }}\"\npython3 <<'EOF'\nimport os\nos.system('git ls-remote ' + os.environ['REPO'])\nEOF",
    'export X="{{ workspace.v }}"; python3 -c "import os; os.system(os.getenv(\'X\'))"',
    "export X={{ workspace.v }}; perl -e 'system $::ENV{X}'", "export X={{ workspace.v }}; perl -e 'system ${\"ENV\"}{X}'",
    "export X={{ workspace.v }}; node -e 'require(\"child_process\").execSync(process[\"env\"].X)'",
    "export X={{ workspace.v }}; python3 -c 'import os, subprocess; subprocess.run([\"sh\", \"-c\", os.environ[\"X\"]])'",
    "export X={{ workspace.v }}; perl -e 'open(F, $ENV{X}); print <F>'",
    # ... perl's <> and two-argument open run a file name ending in |
    "perl -e 'while (<>) { print }' {{ workspace.v }}", "perl -e 'open(my $f, $ARGV[0]); print <$f>' \"{{ workspace.v }}\"",
    # ... an interpreter's option taking the next word: the -c or -e after it is code
    "python3 --check-hash-based-pycs default -c \"print('{{ workspace.v }}')\"",
    'node --input-type commonjs -e "console.log(\'{{ workspace.v }}\')"', 'node -C x -e "console.log(\'{{ workspace.v }}\')"',
    # ... {fd}> is a redirection; curl's settings from its input, however spelled; socat's addresses
    'bash {fd}>/dev/null -c "echo {{ workspace.v }}"', 'curl -sK - <<< "url = {{ workspace.v }}"',
    'curl --conf - <<< "url = {{ workspace.v }}"', 'curl -K /dev//stdin <<< "url = {{ workspace.v }}"',
    'curl -K /proc/thread-self/fd/0 <<< "url = {{ workspace.v }}"', 'socat -u "{{ workspace.v }}" STDOUT',
    # helper-71: a one-line function body; node -pe; perl -a/-F (-n), readline and eof(); python3 -m timeit;
    # erl -eval; zip's $ZIPOPT, git's $GIT_TRACE
    'function f { eval "{{ workspace.v }}"; }; f', 'function setup { bash -c "{{ workspace.v }}"; }; setup',
    "node -pe \"'{{ workspace.v }}'.toUpperCase()\"", "perl -lae 'print $F[0]' {{ workspace.v }}",
    "perl -F: -e 'print $F[0]' {{ workspace.v }}", "perl -e 'print readline ARGV' \"{{ workspace.v }}\"",
    "perl -e 'print \"x\" unless eof(); print <STDIN>' \"{{ workspace.v }}\"",
    'python3 -m timeit -n 1 -- "{{ workspace.v }}"',
    'erl -noshell -eval "io:format(\\"~s~n\\", [\\"{{ workspace.v }}\\"]), halt()."',
    'ZIPOPT={{ workspace.v }} zip -q o.zip /etc/hostname', 'GIT_TRACE={{ workspace.v }} git status --short',
    # helper-74: function bodies after a line continuation or not in { }; IPython, asyncio's prompt; perl's
    # program from its input; a bus address; build tools; git's include.path and curl -K from the input or
    # a substitution; {a[0]}>; git's ext:: transport; sort's compress program; gpg's options file
    'function f \\\n{ eval "{{ workspace.v }}"; }\nf', 'function f while eval "{{ workspace.v }}"; do break; done\nf',
    'python3 -m IPython -c "{{ workspace.v }}"', 'python3 -m asyncio <<< "{{ workspace.v }}"',
    "perl - \"{{ workspace.v }}\" <<'EOF2'\nprint while <>;\nEOF2",
    'DBUS_SESSION_BUS_ADDRESS="{{ workspace.v }}" dbus-send --session / x.y', 'cmake -E env sh -c "{{ workspace.v }}"',
    'git -c include.path=/dev/stdin status <<< "{{ workspace.v }}"', 'bash {x[0]}>/dev/null -c "{{ workspace.v }}"',
    'GIT_ALLOW_PROTOCOL="{{ workspace.v }}" git clone -- https://h/r d', 'sort --compress-program="{{ workspace.v }}" f',
    'curl -K <(echo "{{ workspace.v }}") https://h/', 'gpg --options /dev/stdin --list-keys <<< "{{ workspace.v }}"',
    # helper-75: other names of make and vim, C compilers (-D is C code), curl's @FILE and <FILE, sdiff's program
    'cd ~/p && gmake install PREFIX={{ workspace.v }}', 'cc -DGREETING="\\"{{ workspace.v }}\\"" hello.c -o hello',
    'vim.basic -es -c "!echo {{ workspace.v }}" -c "qa!"', 'curl -sS -F "name={{ workspace.v }}" http://h/form',
    'curl -sS -X POST -d {{ workspace.v }} http://h/data', 'curl -sS -H "{{ workspace.v }}" http://h/',
    'curl --data-urlencode "{{ workspace.v }}" http://h/', 'curl -F"f={{ workspace.v }}" http://h/',
    'sdiff --diff-program={{ workspace.v }} a b',
    'socat - TCP:"{{ workspace.v }}":5432', 'X={{ workspace.v }}; sort $\'\\x2d\\x2d\'"$X" /etc/hostname',
]


@pytest.mark.parametrize("script", ATTACKS)
def test_attacks_on_the_shell_rules_are_refused(script, home):
    with pytest.raises(TemplateError, match="action_config.script"):
        run_template(template(script_step(10, script)), {"id": "w", "home_dir": str(home), "v": "x"}, record=False)


@pytest.mark.parametrize("script,fields", [
    ("sort -{{ workspace.v }} /etc/hostname", {"v": "-output=MARK"}),  # (helper-65: tail -{{ n }}'s place)
    ('sort -"{{ workspace.v }}" /etc/hostname', {"v": "-output=MARK"}),
    ('sort "-{{ workspace.v }}" /etc/hostname', {"v": "-output=MARK"}),
    ('sort "\\\n{{ workspace.v }}" /etc/hostname', {"v": "--output=MARK"}),  # (a line continuation is no text)
    ("sort -r{{ workspace.v }} /etc/hostname", {"v": "o/dev/null --output=MARK"}),  # (helper-67: -r, then -o...)
    ("sort -r{{ workspace.v }} /etc/hostname", {"v": "oMARK"}),
    ("sort {{ workspace.e }}{{ workspace.v }} /etc/hostname", {"e": "", "v": "--output=MARK"}),
    ("sort $''{{ workspace.v }} /etc/hostname", {"v": "--output=MARK"}),
    ("sort /etc/hostname {{ workspace.l }}", {"l": ["", "--output=MARK"]}),
    ("sort $'\\x2d\\x2d'\"{{ workspace.v }}\" /etc/hostname", {"v": "output=MARK"}),  # (helper-70: $'...' dashes)
])
def test_options_cannot_sneak_in_behind_empty_values(script, fields, home):
    result = run_template(template(script_step(10, script, id="s")), {"id": "w", "home_dir": str(home), **fields},
                          record=False)
    error = result.steps["s"].error
    assert "a value starts with '-' and would be read as an option" in error or "which makes options of it" in error
    assert "MARK" not in error and not (home / "MARK").exists()


def test_a_number_may_follow_a_dash(home):
    """tail -{{ n }}, gzip -{{ level }}: the count idiom stays."""
    result = run_template(template(script_step(10, "seq 5 | tail -{{ workspace.n }}", id="s")),
                          {"id": "w", "home_dir": str(home), "n": "2"}, record=False)
    assert result.success and result.steps["s"].stdout.split() == ["4", "5"]


@pytest.mark.parametrize("script,value", [
    ('X={{ workspace.v }}; sort "$X" /etc/hostname', "--output=MARK"),
    ("X={{ workspace.v }}; sort $X", "/etc/hostname --output=MARK"),  # (split into two words)
    ('X={{ workspace.v }}; sort /etc/hostname x$X', "y --output=MARK"),
    ('while read -r b; do sort "$b" /etc/hostname; done <<EOF\n{{ workspace.v }}\nEOF', "/etc/hostname\n--output=MARK"),
    ('f() { sort "$1" /etc/hostname; }; X="{{ workspace.v }}"; f "$X"', "--output=MARK"),
    ('IFS=, read -ra parts <<< "{{ workspace.v }}"; sort "${parts[@]}"', "/etc/hostname,--output=MARK"),
    ('X="{{ workspace.v }}"; sort "${X#*:}" /etc/hostname', "a:--output=MARK"),
    ('read -r <<< "{{ workspace.v }}"; sort "$REPLY" /etc/hostname', "--output=MARK"),
    ('n=X; X="{{ workspace.v }}"; sort "${!n}" /etc/hostname', "--output=MARK"),
    ('sort $(echo "/etc/hostname {{ workspace.v }}")', "--output=MARK"),
    ('X="{{ workspace.v }}"; set -- "$X"; sort "$@" /etc/hostname', "--output=MARK"),
    ('bash {-c,} "echo {{ workspace.v }}"', "x; touch MARK"),
])
def test_a_copy_of_a_value_beginning_an_argument_is_no_option(script, value, home):
    """(helper-61, helper-64) A value's leading '-' was refused only where a
    {{ }} began a word: REPO={{ x }}; git clone "$REPO" took --upload-pack=CMD
    as an option, and so did a part of a value (${X#*:}, IFS=, read -a),
    $REPLY, $1, $(...) or a brace expansion. Following values through
    variables cannot be complete, so in a script holding values an argument
    that an expansion begins (or that an unquoted one splits) must follow --."""
    with pytest.raises(TemplateError, match="before any -- \\(in a script holding values\\)"):
        run_template(template(script_step(10, script, id="s")), {"id": "w", "home_dir": str(home), "v": value},
                     record=False)
    env = run_template(template(script_step(10, 'sort "$X" /etc/hostname', id="s",
                                            action_config={"env": {"X": "{{ workspace.v }}"}})),
                       {"id": "w", "home_dir": str(home), "v": "--output=MARK"}, record=False)
    assert "before any -- (in a script holding values)" in (env.steps["s"].error or ""), env.steps["s"].error
    assert not (home / "MARK").exists()


@pytest.mark.parametrize("script", ['X={{ workspace.v }}; sort -- "$X" /etc/hostname || true',
                                    'X={{ workspace.v }}; echo "$X"', 'X={{ workspace.v }}; echo "a: $X"',
                                    'X={{ workspace.v }}; printf "%s\\n" "$X"', 'cd "$HOME"; echo "v: {{ workspace.v }}"',
                                    'X={{ workspace.v }}; mkdir -p -- "$HOME/$X" && rmdir -- "$HOME/$X"'])
def test_a_copy_after_dashdash_or_inside_an_argument_takes_any_value(script, home):
    result = run_template(template(script_step(10, script, id="s")),
                          {"id": "w", "home_dir": str(home), "v": "--output=MARK"}, record=False)
    assert result.success, result.steps["s"].error
    assert not (home / "MARK").exists()


@pytest.mark.parametrize("script", ["GREETING={{ workspace.l }}", "export GREETING={{ workspace.l }}",
                                    "GREETING=hi{{ workspace.l }} true"])
def test_a_list_is_never_split_into_words_after_an_assignment(script, home):
    """``NAME={{ list }}`` would become ``NAME="$V1" "$V2" ...``: bash runs
    the second item as a command (export reads it as a name)."""
    mark = str(home / "MARK")
    result = run_template(template(script_step(10, script, id="s")),
                          {"id": "w", "home_dir": str(home), "l": ["x", "touch", mark]}, record=False)
    assert "a list of several items cannot be assigned to a variable" in result.steps["s"].error
    assert not (home / "MARK").exists()
    joined = run_template(template(script_step(10, 'GREETING="{{ workspace.l }}"; echo "$GREETING"', id="s")),
                          {"id": "w", "home_dir": str(home), "l": ["a", "b"]}, record=False)
    assert joined.steps["s"].stdout == "a b\n"


@pytest.mark.parametrize("content", [
    "{% set a = 'x'*1000000 %}{% set a = a~a %}{{ a }}", "{{ (['x'*1000000]*3000)|join }}",
    "{{ '%(a)3000000000s' % {'a':'x'} }}", "{{ [[1]]|tojson(indent=1500000000) }}",
    "{{ ([1]|batch(400000000, 0)|first)|length }}", "{{ ('a'*600000) + ('b'*600000) }}",
])
def test_template_output_is_bounded_too(content, home):
    doc = template(step(10, "write_file", id="w", action_config={"target_path": "~/x", "content": content}))
    result = run_template(doc, {"id": "w", "home_dir": str(home)}, record=False)
    assert result.steps["w"].status is StepStatus.failed and result.steps["w"].attempts == 1
    assert not (home / "x").exists()


def test_bounded_filters_still_work(home):
    doc = template(step(10, "write_file", id="w", action_config={
        "target_path": "~/x", "content": "{{ 'a b'|replace('a','b') }}|{{ 'hello world foo'|wordwrap(5) }}|"
                                         "{{ [1, 2]|join(',') }}|{{ 'x' ~ 1 }}|{{ 'hello world'|truncate(8, leeway=0) }}"}))
    result = run_template(doc, {"id": "w", "home_dir": str(home)}, record=False)
    assert result.success, result.error
    assert (home / "x").read_text() == "b b|hello\nworld\nfoo|1,2|x1|hello..."


@pytest.mark.parametrize("document,message", [
    ("name: t\nactions:\n- {sequence_order: 1, action_name: noop, retry_delay_seconds: .nan}\n", "nan is not a number"),
    ("name: t\nactions:\n- {sequence_order: 1, action_name: noop, timeout_seconds: .inf}\n", "inf is not a number"),
    ("name: t\nvars: {n: " + "9" * 5000 + "}\n", "a value cannot be read"),
    ("name: t\nactions:\n- {sequence_order: 1, id: [1, 2], action_name: noop}\n", "is not of type 'string'"),
])
def test_documents_with_unusable_numbers_or_shapes_are_one_line(document, message, tmp_path):
    (tmp_path / "t.yaml").write_text(document)
    out = dagrun_cli("validate", "t.yaml", cwd=tmp_path)
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr


def test_a_secret_workspace_field_is_masked_from_its_first_appearance_and_not_stored(home, db_url):
    """An x-secret field filled from the workspace: masked even in a step that
    runs before the one that uses it, and the run record keeps its name only."""
    secret = "Sup3rS3cretPw"
    doc = template(script_step(10, "echo connecting with {{ workspace.db_password }}", id="early"),
                   step(20, "with_secret", id="db", requires=["early"],
                        action_config={"token": "{{ workspace.db_password }}"}))
    events = []
    result = run_template(doc, {"id": "w", "home_dir": str(home), "db_password": secret}, actions=[SECRET_ACTION],
                          database_url=db_url, on_event=events.append)
    assert result.steps["early"].stdout == "connecting with ********\n"
    assert secret not in repr(events) + json.dumps(result.as_dict())
    from dagrun.store.engine import engine_for
    from dagrun.store.models import ProvisioningRun
    from sqlalchemy.orm import Session
    with Session(engine_for(db_url)) as session:
        run = session.get(ProvisioningRun, result.run_id)
        assert secret not in json.dumps(run.workspace) and "workspace.db_password" in run.secret_names


def test_a_plain_variable_that_fills_a_secret_field_is_not_stored(home, db_url, tmp_path):
    """Over the API a password arrives as a variable: the run record keeps
    its name only, and a resume asks for it again."""
    secret = "VarPassw0rdQRS"
    doc = template(step(10, "with_secret", id="db", action_config={"token": "{{ vars.pw }}"}),
                   script_step(20, "exit 1", id="bad", requires=["db"]), vars={"pw": ""})
    result = run_template(doc, {"id": "w", "home_dir": str(home)}, actions=[SECRET_ACTION], database_url=db_url,
                          variables={"pw": secret})
    assert not result.success
    database = Path(db_url.removeprefix("sqlite:///"))
    stored = b"".join(p.read_bytes() for p in database.parent.glob(database.name + "*"))
    assert secret.encode() not in stored
    from dagrun import resume
    with pytest.raises(InputError, match="started with secrets that are not stored: pw"):
        resume(result.run_id, database_url=db_url, actions=[SECRET_ACTION])


def test_a_secret_with_a_quote_is_masked_in_its_shell_quoted_form(home, db_url):
    """A script or command line is shown shell-quoted (a ' becomes '"'"'):
    the secret is masked in that form too."""
    secret = "Sup3r'Secr\"et\\x"
    doc = template(script_step(10, 'set -x; true "me:{{ vars.tok }}"; printf "%q\\n" "{{ vars.tok }}"; '
                                   "echo token is {{ vars.tok }}; exit 1", id="s"), vars={"tok": ""})
    result = run_template(doc, {"id": "w", "home_dir": str(home)}, database_url=db_url, secrets={"tok": secret})
    shown = get_run(result.run_id, database_url=db_url, output=True)
    text = json.dumps(shown) + json.dumps(result.as_dict())
    assert "Secr" not in text and "********" in text


@pytest.mark.parametrize("script", ["ls $EMPTY{{ workspace.name }}", "ls {,{{ workspace.name }}}",
                                    "ls ${E:-}{{ workspace.name }}", "ls $(true){{ workspace.name }}",
                                    "ls `true`{{ workspace.name }}", 'ls "$EMPTY"{{ workspace.name }}',
                                    'ls "$EMPTY""${E}"{{ workspace.name }}'])  # (helper-61: "$EMPTY" quoted)
def test_a_leading_dash_after_what_may_expand_to_nothing_is_still_an_option(script, home):
    """Found by an attack: an expansion that may be empty before the value left it at the start of its
    word, where '-rf' is read as options. (Since helper-64 such a word is refused before anything runs.)"""
    with pytest.raises(TemplateError, match="before any -- \\(in a script holding values\\)"):
        run_template(template(script_step(10, script, id="s")), {"id": "w", "name": "-rf", "home_dir": str(home)},
                     record=False)


@pytest.mark.parametrize("script", ["sed 's/a/b/' -e {{ workspace.name }} /dev/null",
                                    "awk '{print}' -f {{ workspace.name }} /dev/null"])
def test_a_value_is_never_a_later_program_of_sed_or_awk(script):
    """GNU sed and awk read options after their program too: -e VALUE there is code."""
    with pytest.raises(TemplateError, match="in the code (sed|awk) runs|in a command of (sed|awk) whose program runs "
                                            "commands"):  # (-f: a program dagrun cannot read, refused either way)
        compile_template(template(script_step(10, script)))


@pytest.mark.parametrize("project", ["../escape", "..", "a/../../escape", ""])
def test_a_variable_is_one_folder_name_where_the_demo_makes_it_a_path(project, tmp_path):
    """The service takes variables from its client: the demo's project
    folder is one name (``| path_segment``), never a way out of the home
    for its scripts (which run as root in a workspace without a user)."""
    home = tmp_path / "ws" / "home"
    home.parent.mkdir()
    result = run_template("demo", {"id": "w", "home_dir": str(home)}, variables={"project": project}, record=False)
    assert not result.success
    assert "is not a single folder or file name" in result.steps["layout"].error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ws"] and not (tmp_path / "ws" / "escape").exists()


def test_a_value_is_never_a_dot_path_segment_of_a_url():
    """A server (or a proxy) walks up for .. however it is spelled (%2E%2E too)."""
    from dagrun.compile.expressions import render_url
    for value in (".", ".."):
        with pytest.raises(ValueError, match="would name the folder above"):
            render_url("http://x/api/ws/{{ v }}/go", {"v": value})
    assert render_url("http://x/api/ws/{{ v }}/go", {"v": "..."}) == "http://x/api/ws/.../go"


def test_a_config_variable_is_never_read_by_arithmetic():
    """A user-defined shell action reads its config as $CONFIG_<KEY>: bash
    evaluates a[$(cmd)] in what [[ -eq ]] and (( )) read."""
    from tests.helpers import shell_action
    schema = {"type": "object", "properties": {"port": {}}}
    for script in ("[[ $CONFIG_PORT -eq 1 ]] && echo one", "(( CONFIG_PORT > 1024 ))"):
        with pytest.raises(TemplateError, match="through \\$CONFIG_PORT in arithmetic"):
            compile_template(template(step(10, "a")), actions=[shell_action("a", script, config_schema=schema)])
    compile_template(template(step(10, "a")), actions=[shell_action("a", '[ "$CONFIG_PORT" -gt 1024 ] && echo high',
                                                                    config_schema=schema)])


# From a re-attack of the arithmetic rule (helper-24): each of these ran a[$(cmd)] from the value through a
# variable that holds it; bash has too many such ways to follow each, so a script that evaluates text
# anywhere gets no value holding $ or `.
EVALUATING = [
    'v={{ workspace.v }}; [[ "$v" -eq 1 ]]; true', 'declare -i n; v={{ workspace.v }}; n="$v"',
    "f() { (( $1 > 1 )); }; f {{ workspace.v }}; true", "set -- {{ workspace.v }}; [[ $1 -eq 1 ]]; true",
    "declare -i n; read n <<< {{ workspace.v }}",
    "v={{ workspace.v }}; [[ -v $v ]]; true", 'v={{ workspace.v }}; test -v "$v"; true',
    "f() { RANDOM=$1; }; f {{ workspace.v }}", 'A=-v; B={{ workspace.v }}; [ "$A" "$B" ]; true',
    'v={{ workspace.v }}; wait -n -p v"$v"; true', "skip={{ workspace.v }}\npkgs=(a b)\nunset 'pkgs[skip]'",
    "bash -c 'if (( $1 > 5 )); then echo big; fi' _ {{ workspace.v }}",
]


@pytest.mark.parametrize("script", EVALUATING)
def test_a_script_that_evaluates_text_gets_no_value_that_could_run_there(script, home):
    mark = home / "MARK"
    result = run_template(template(script_step(10, script, id="s")),
                          {"id": "w", "home_dir": str(home), "v": f"a[$(touch {mark})]"}, record=False)
    assert "a value holds $ or `, and this script evaluates text" in result.steps["s"].error
    assert not mark.exists()


def test_values_without_dollar_or_backtick_still_reach_an_evaluating_script(home):
    result = run_template(template(script_step(10, 'v={{ workspace.n }}; if [[ "$v" -gt 3 ]]; then echo big; fi', id="s")),
                          {"id": "w", "home_dir": str(home), "n": "5"}, record=False)
    assert result.success and result.steps["s"].stdout == "big\n"


@pytest.mark.parametrize("script", ["PS4={{ workspace.v }}; set -x; true", "BASH_ENV={{ workspace.v }} bash -c true",
                                    "export PROMPT_COMMAND={{ workspace.v }}",
                                    'PATH="{{ workspace.v }}:$PATH"; make',
                                    # ... nor to one the programs a script starts run, or load code from
                                    'GIT_SSH_COMMAND="ssh -i {{ workspace.v }}" git clone git@h:r.git src',
                                    'export GIT_SSH_COMMAND="ssh -i {{ workspace.v }}"',
                                    'NODE_OPTIONS="--max-old-space-size={{ workspace.v }}" node -e 1',
                                    'export PERL5OPT="-I{{ workspace.v }}"; perl -e 1',
                                    'GIT_CONFIG_VALUE_0={{ workspace.v }} git fetch'])
def test_no_value_is_assigned_to_a_variable_bash_runs(script, home):
    with pytest.raises(TemplateError, match="which bash or the programs it starts run as code"):
        run_template(template(script_step(10, script)), {"id": "w", "home_dir": str(home), "v": "x"}, record=False)


def test_config_variables_and_evaluating_scripts_do_not_mix():
    from tests.helpers import shell_action
    schema = {"type": "object", "properties": {"port": {}}}
    for script in ('[[ "$CONFIG_PORT" -gt 1024 ]] && echo high; true', "p=$CONFIG_PORT; (( p > 1024 )); true",
                   'check() { (( $1 > 1024 )); }; check "$CONFIG_PORT"; true'):
        with pytest.raises(TemplateError, match="CONFIG_|through \\$p"):
            compile_template(template(step(10, "a")), actions=[shell_action("a", script, config_schema=schema)])


def test_a_value_naming_a_variable_finds_no_code_there(home):
    """Arithmetic evaluates the content of the variable a value names: a
    script that evaluates text refuses to start while a variable holding a
    value holds $ or ` (found by helper-25)."""
    from tests.helpers import shell_action
    mark = home / "MARK"
    payload = f"a[$(touch {mark})]"
    compare = 'v={{ workspace.v }}\nif [[ "$v" -gt 3 ]]; then echo big; fi'
    runs = [
        run_template(template(script_step(10, compare, id="s")),
                     {"id": payload, "home_dir": str(home), "v": "DAGRUN_WORKSPACE_ID"}, record=False),
        run_template(template(script_step(10, compare, id="s", action_config={"env": {"REPO": "{{ workspace.repo }}"}})),
                     {"id": "w", "home_dir": str(home), "v": "REPO", "repo": payload}, record=False),
        run_template(template(step(10, "a", id="s", action_config={"port": "{{ workspace.port }}",
                                                                   "greeting": "{{ workspace.greeting }}"})),
                     {"id": "w", "home_dir": str(home), "port": "CONFIG_GREETING", "greeting": payload}, record=False,
                     actions=[shell_action("a", 'p={{ config.port }}\nif [[ "$p" -gt 1024 ]]; then echo high; fi',
                                           config_schema={"type": "object", "properties": {"port": {}, "greeting": {}}})]),
    ]
    for result in runs:
        assert "holds $ or `, and the script evaluates text" in result.steps["s"].error
    assert not mark.exists()


@pytest.mark.parametrize("script", ['echo "${EDITOR:-vi}" {{ workspace.v }}', 'for p in "${pkgs[@]}"; do :; done; echo {{ workspace.v }}',
                                    'v={{ workspace.v }}; echo "${v@Q}"',
                                    'echo {{ workspace.v }} > f; while IFS= read -r line; do echo "$line"; done < f',
                                    "set -x; echo {{ workspace.v }}", "sh -c 'echo \"$1\"' _ {{ workspace.v }}",
                                    "V={{ workspace.v }} sh -c 'echo \"$V\"'",
                                    "python3 - {{ workspace.v }} <<EOF\nimport sys; print(sys.argv[1])\nEOF",
                                    "bash -o pipefail -c 'echo \"$1\"' _ {{ workspace.v }}"])
def test_common_scripts_that_evaluate_nothing_take_any_value(script, home):
    """(False refusals found by helper-25: a password holding $ was refused by these.)"""
    result = run_template(template(script_step(10, script, id="s")), {"id": "w", "home_dir": str(home), "v": "pa$$w0rd`x"},
                          record=False)
    assert result.success, result.steps["s"].error
    assert "pa$$w0rd`x" in result.steps["s"].stdout


def test_a_steps_env_entries_hold_values_too(home):
    """The lexer cannot see, when the template is compiled, which names the
    step's env defines: checked when the step starts (found by helper-26)."""
    mark = home / "MARK"
    result = run_template(template(script_step(10, 'sh -c "echo cloning $REPO"', id="s",
                                               action_config={"env": {"REPO": "{{ workspace.v }}"}})),
                          {"id": "w", "home_dir": str(home), "v": f"x; touch {mark}"}, record=False)
    assert "through $REPO" in result.steps["s"].error and not mark.exists()
    fine = run_template(template(script_step(10, 'echo "cloning $REPO"', id="s",
                                             action_config={"env": {"REPO": "{{ workspace.v }}"}})),
                        {"id": "w", "home_dir": str(home), "v": "x; y"}, record=False)
    assert fine.steps["s"].stdout == "cloning x; y\n"


@pytest.mark.parametrize("script", ['set -- "$PORT"\nif [[ $1 -gt 1024 ]]; then echo high; fi',
                                    'check() { if (( $1 > 1024 )); then echo hi; fi; }; check "$PORT"'])
def test_an_env_entry_never_reaches_a_script_that_evaluates_text(script, home):
    """A script without {{ }} of its own gets values through its env: the
    backstop of evaluating scripts holds for them too (helper-29)."""
    mark = home / "MARK"
    result = run_template(template(script_step(10, script, id="s", action_config={"env": {"PORT": "{{ workspace.v }}"}})),
                          {"id": "w", "home_dir": str(home), "v": f"a[$(touch {mark})]"}, record=False)
    assert "$PORT holds $ or `, and the script evaluates text" in result.steps["s"].error and not mark.exists()
    fine = run_template(template(script_step(10, script, id="s", action_config={"env": {"PORT": "{{ workspace.v }}"}})),
                        {"id": "w", "home_dir": str(home), "v": "2048"}, record=False)
    assert fine.success and fine.steps["s"].stdout.startswith("hi")


@pytest.mark.parametrize("script", ["bash -c 'eval \"$1\"' _ {{ workspace.v }}", "sh -c '$1' _ {{ workspace.v }}",
                                    "x={{ workspace.v }}\neval '$x'", "c={{ workspace.v }}\ntrap '$c' EXIT",
                                    "V={{ workspace.v }} sh -c 'eval \"$V\"'",
                                    "x={{ workspace.v }}\ndeclare -n r\nfor r in x; do $r; done",
                                    "busybox sh -c {{ workspace.v }}",
                                    'python3 /dev/stdin <<EOF\nprint("{{ workspace.v }}")\nEOF',
                                    "bash /dev/stdin <<< {{ workspace.v }}", "awk -f /dev/stdin /dev/null <<< {{ workspace.v }}",
                                    'x="$(case b in a) echo esac;; b) eval {{ workspace.v }};; esac)"',
                                    "cat <<$(echo EOF)\n$(echo EOF)\neval {{ workspace.v }} || true\n$\n",
                                    'rsync -a -e "ssh -p {{ workspace.v }}" ./ host:/x',
                                    'git -c core.sshCommand="ssh -p {{ workspace.v }}" fetch',
                                    "git submodule foreach 'git log -1' \"{{ workspace.v }}\"",
                                    "tar --checkpoint-action=exec={{ workspace.v }} -cf x.tar .",
                                    'zip -T -TT "{{ workspace.v }}" a.zip f', "S={{ workspace.v }}; rsync -e \"$S\" a b",
                                    "npx {{ workspace.v }}",
                                    # a second round (helper-31): copies into code-running names; code sh -c,
                                    # eval, trap or a here-document program runs, with its copies, $0, $@;
                                    # other spellings of options that run commands; git settings
                                    'x={{ workspace.v }}; PS4="$x"; set -x; true',
                                    'x={{ workspace.v }}; export GIT_SSH_COMMAND=$x',
                                    "printf -v GIT_SSH_COMMAND %s {{ workspace.v }}; export GIT_SSH_COMMAND",
                                    "read -r GIT_SSH_COMMAND <<< {{ workspace.v }}",
                                    "sh -c 'x=$1; $x' _ {{ workspace.v }}",
                                    "sh -c 'for a; do $a; done' _ {{ workspace.v }}", "bash -c '$0' {{ workspace.v }}",
                                    "bash -c $'eval \"$1\"' _ {{ workspace.v }}",
                                    "bash -c 'eval \"${BASH_ARGV[0]}\"' _ {{ workspace.v }}",
                                    "bash -c 'e=eval; $e \"$1\"' _ {{ workspace.v }}",
                                    "bash -c 'echo `$1`' _ {{ workspace.v }}", "x={{ workspace.v }}\neval 'y=$x'; $y",
                                    "x={{ workspace.v }}\ntrap 'cmd=$x; $cmd' EXIT",
                                    "bash -c 'PS4=$1; set -x; :' _ {{ workspace.v }}",
                                    "c='eval \"$1\"'; bash -c \"$c\" _ {{ workspace.v }}",
                                    "bash -s -- {{ workspace.v }} <<'EOF'\n$1\nEOF",
                                    "bash -s -- {{ workspace.v }} <<EOF\n\\$1\nEOF",
                                    'rsync -avze "ssh -p {{ workspace.v }}" ./ host:/x',
                                    'tar -xvI "{{ workspace.v }}" -f x.tar', "tar --to-comm={{ workspace.v }} -xf x.tar",
                                    'scp -qo "{{ workspace.v }}" f h:/x',
                                    "V={{ workspace.v }} git --config-env=core.sshCommand=V ls-remote x",
                                    'git config core.fsmonitor "{{ workspace.v }}"; git status',
                                    'git rebase -x "{{ workspace.v }}" main', "git bisect run {{ workspace.v }}",
                                    "git clone --template={{ workspace.v }} r d",
                                    "x={{ workspace.v }}; git -c core.sshCommand='$x' fetch",
                                    'RSYNC_CONNECT_PROG="{{ workspace.v }}" rsync rsync://m/x/ ./',
                                    # a third round (helper-33): a copy fed to a program as its input; git's own
                                    # settings by other spellings; a glued short option
                                    'x={{ workspace.v }}; bash <<< "$x"', 'x={{ workspace.v }}; python3 - <<< "$x"',
                                    'x={{ workspace.v }}\npython3 - <<EOF\nprint("$x")\nEOF',
                                    'git clone -c core.sshCommand="{{ workspace.v }}" ssh://localhost/x d',
                                    'git clone -u"{{ workspace.v }}" /repo d',
                                    'git config {{ workspace.v }} "{{ workspace.v }}"; git status',
                                    'git -c trailer.x.cmd="{{ workspace.v }}" commit', "scp -S{{ workspace.v }} f h:/x",
                                    # a fourth round (helper-34): input given to a group, a subshell or another
                                    # descriptor; git's glued and bundled spellings; a setting named by a copy
                                    'x="{{ workspace.v }}"; { bash; } <<< "$x"', 'x={{ workspace.v }}; (bash) <<< "$x"',
                                    '{ bash; } <<EOF\n{{ workspace.v }}\nEOF', "sh 0<<EOF\n{{ workspace.v }}\nEOF",
                                    "x={{ workspace.v }}\nexec 3<<EOF\n$x\nEOF\nbash <&3",
                                    'git clone -ccore.fsmonitor="{{ workspace.v }}" https://h/r d',
                                    'git clone -qu"{{ workspace.v }}" /r d', 'k="{{ workspace.v }}"; git config "$k" "x"',
                                    'ANSIBLE_CONFIG="{{ workspace.v }}" ansible-playbook p.yml',
                                    # a fifth round (helper-35): input given to compound commands and functions
                                    # that run it; a setting named by a variable
                                    'if true; then bash; fi <<< "{{ workspace.v }}"',
                                    "for i in 1; do bash; done <<EOF\n{{ workspace.v }}\nEOF",
                                    'f() { bash; }; f <<< "{{ workspace.v }}"',
                                    'x="{{ workspace.v }}"; { bash; } < <(echo "$x")',
                                    'k="{{ workspace.v }}"; git -c "$k"=1 status',
                                    'k=core.fsmonitor; git config "$k" "{{ workspace.v }}"',
                                    'LUA_INIT="{{ workspace.v }}" lua x.lua', 'CC="gcc {{ workspace.v }}" make',
                                    # a sixth round (helper-36): a function called in a compound, pipes into
                                    # functions and compounds, function names of any characters, sh -c code
                                    # that runs its input
                                    'f() { bash; }\nfor i in 1; do f; done <<< "{{ workspace.v }}"',
                                    'f() { bash; }\necho "{{ workspace.v }}" | f',
                                    'echo "{{ workspace.v }}" | while true; do bash; break; done',
                                    'a.b() { bash; }; a.b <<< "{{ workspace.v }}"',
                                    "bash -c 'bash' <<< \"{{ workspace.v }}\"", "sh -c 'cat | sh' <<< \"{{ workspace.v }}\""])
def test_code_a_command_runs_later_holds_no_value(script):
    """Single-quoted code given to eval, trap or sh -c is expanded when it
    runs; options whose argument a program runs; stdin given by a file name;
    a case or a here-document delimiter the lexer misread (helper-29)."""
    with pytest.raises(TemplateError, match=r"a \{\{ \}\} value cannot be used"):
        compile_template(template(script_step(10, script)))


@pytest.mark.parametrize("script", ["bash -ec '(( $1 > 5 ))' _ {{ workspace.v }}",
                                    "bash -c -e 'if (( $1 > 5 )); then echo big; fi' _ {{ workspace.v }}",
                                    "bash -s -- {{ workspace.v }} <<'EOF'\nif (( $1 > 5 )); then echo big; fi\nEOF"])
def test_sh_c_code_that_evaluates_makes_the_script_evaluate(script, home):
    mark = home / "MARK"
    result = run_template(template(script_step(10, script, id="s")),
                          {"id": "w", "home_dir": str(home), "v": f"a[$(touch {mark})]"}, record=False)
    assert "a value holds $ or `, and this script evaluates text" in result.steps["s"].error and not mark.exists()


def test_an_env_entry_a_program_runs_as_code_takes_no_value():
    doc = template(script_step(10, "git clone {{ workspace.v }} src", action_config={
        "env": {"GIT_SSH_COMMAND": "ssh -i {{ workspace.key }}", "LANG": "{{ workspace.lang }}"}}))
    with pytest.raises(TemplateError) as exc:
        compile_template(doc)
    assert "field 'action_config.env.GIT_SSH_COMMAND': GIT_SSH_COMMAND is run (or loaded from) as code" in str(exc.value)
    assert "LANG" not in str(exc.value)
    compile_template(template(script_step(10, "git clone {{ workspace.v }} src", action_config={
        "env": {"GIT_SSH_COMMAND": "ssh -i /root/.ssh/deploy_key"}})))  # the author's own


@pytest.mark.parametrize("script", ["sh -c 'echo \"$1\"' _ {{ workspace.v }}", "x={{ workspace.v }}; eval 'echo \"$x\"'",
                                    "sh -c 'cp \"$1\" \"$2\"' _ {{ workspace.v }} {{ workspace.v }}.bak",
                                    "rsync -a {{ workspace.v }}/ host:/x", "git -c user.name=me commit -m {{ workspace.v }}",
                                    'GIT_SSH_COMMAND="ssh -i ~/.ssh/k" git clone {{ workspace.v }} y',
                                    "x=$(case $1 in a) echo A;; *) echo B;; esac); echo {{ workspace.v }}",
                                    "bash -s -- {{ workspace.v }} <<'EOF'\necho \"$1\"\nEOF",
                                    'x={{ workspace.v }}; GIT_AUTHOR_NAME="$x" git commit -m hi',
                                    'git -c user.name="{{ workspace.v }}" -c user.email=x@y commit -m hi',
                                    'git push -u "{{ workspace.v }}" main', 'git commit -c "{{ workspace.v }}"',
                                    'git config user.name "{{ workspace.v }}"', "rsync -avz {{ workspace.v }}/ h:/x",
                                    'sh -c "cd $HOME && make"; echo {{ workspace.v }}',
                                    'NODE_ENV={{ workspace.v }} PYTHON_VERSION={{ workspace.v }} make',
                                    'SSH_PUBLIC_KEY="{{ workspace.v }}" DOCKER_IMAGE={{ workspace.v }} APP_CONFIG={{ workspace.v }} make',
                                    'git -c http.extraHeader="Authorization: Bearer {{ workspace.v }}" clone https://h/r src',
                                    'x={{ workspace.v }}; cat <<< "$x"', 'x={{ workspace.v }}\ncat <<EOF\n$x\nEOF',
                                    "cat 0<<EOF\n{{ workspace.v }}\nEOF", "{ echo a; echo {{ workspace.v }}; } > out",
                                    'x={{ workspace.v }}; git config user.name -- "$x"', "git clone -q {{ workspace.v }} d",
                                    'while read -r l; do echo "$l"; done <<< "{{ workspace.v }}"',
                                    '{ read -r a; read -r b; } <<< "{{ workspace.v }}"',
                                    'if true; then cat; fi > out; echo {{ workspace.v }}',
                                    'echo "{{ workspace.v }}" | while read -r l; do echo "$l"; done',
                                    "bash -c 'cat > f' <<< \"{{ workspace.v }}\""])
def test_values_given_to_later_code_as_data_are_accepted(script):
    compile_template(template(script_step(10, script)))


@pytest.mark.parametrize("script", ["bash -e script.sh {{ workspace.v }}", "bash -o pipefail script.sh {{ workspace.v }}",
                                    "awk -v n={{ workspace.v }} '{print n}' /dev/null",
                                    "PGDATABASE={{ workspace.v }} psql -U {{ workspace.v }} -v name={{ workspace.v }} "
                                    "-f setup.sql", "pg_dump -t {{ workspace.v }} -U app",
                                    "createdb -O {{ workspace.v }} {{ workspace.v }}", "dropdb {{ workspace.v }}",
                                    "PGDATABASE={{ workspace.v }} pg_dump -f out.sql",
                                    "createuser -d {{ workspace.v }}", "createdb -O{{ workspace.v }} x",
                                    "pg_dump --exclude-table-data {{ workspace.v }} -f o.sql",
                                    "pg_dump --section {{ workspace.v }} -f o", "pg_restore -U {{ workspace.v }} a.dump",
                                    "python3 manage.py createsuperuser --username {{ workspace.v }} --noinput",
                                    "pip show {{ workspace.v }}", "reindexdb -t {{ workspace.v }} -d db",
                                    "sed -e 's/x/y/g' <<< \"{{ workspace.v }}\"",
                                    'echo "$(date)" > f; echo "$DAGRUN_WORKSPACE_ID"',
                                    'python3 script.py -- "$(date)" "$CONFIG_X"',
                                    'PGDATABASE="{{ workspace.v }}" psql -f s.sql',  # (a name: checked at run time)
                                    'PGHOST={{ workspace.v }} PGPORT={{ workspace.v }} psql -f s.sql',
                                    "sed -e 's/e/E/' <<< \"{{ workspace.v }}\"", "python3 manage.py loaddata {{ workspace.v }}",
                                    "sed -i 's/old/new/' f.conf {{ workspace.v }}", "sed -E 's/a+/b/' <<< \"{{ workspace.v }}\"",
                                    'echo {{ workspace.v }}; vacuumdb -d mydb', 'echo {{ workspace.v }}; vacuumdb --all',
                                    'echo {{ workspace.v }}; pgbench -c 2 mydb',
                                    "awk -v n={{ workspace.v }} '{print n \"@example.com\"}' /dev/null",
                                    "mysql -u {{ workspace.v }} -e 'select 1'", "python3 -u script.py {{ workspace.v }}",
                                    "sh -s -- {{ workspace.v }} < script.sh",
                                    # awk's $1 and sed's $ are theirs, not bash's; read -p takes a prompt
                                    "echo \"{{ workspace.v }}\" | awk '{print $1}'",
                                    "awk -F: '{print $NF}' <<< \"{{ workspace.v }}\"",
                                    "awk -v n=\"{{ workspace.v }}\" '{print $1, n}' /dev/null",
                                    "echo \"{{ workspace.v }}\" | sed 's/$/;/'",
                                    'read -r -p "$PROMPT" name <<< "{{ workspace.v }}"; echo "$name"',
                                    'echo {{ workspace.v }} &>/dev/null', 'cat <<< "{{ workspace.v }}" &>> log',
                                    '(( (1 + 2) * 3 > 0 )) && echo {{ workspace.v }}',
                                    'curl -sS -o out https://example.com/x -d @- <<< "{{ workspace.v }}"',
                                    'function greet { echo "hi $1"; }; greet "{{ workspace.v }}"',
                                    "perl -le 'print $ARGV[0]' -- \"{{ workspace.v }}\"",
                                    'GIT_AUTHOR_NAME="{{ workspace.v }}" git commit -m hi',
                                    "sed -i 's|/usr/bin/env python|/usr/bin/python3|' f; echo {{ workspace.v }}",
                                    "export X={{ workspace.v }}; awk 'BEGIN { print ENVIRON[\"X\"] }'",
                                    'function f () { echo "$1"; }\nf "{{ workspace.v }}"',
                                    'diff <(sort a) <(sort b); echo "{{ workspace.v }}"',
                                    'curl -sS -d "name={{ workspace.v }}" -H "X-Name: {{ workspace.v }}" http://h/',
                                    'curl --data-raw "{{ workspace.v }}" --form-string "n={{ workspace.v }}" http://h/'])
def test_values_as_arguments_of_scripts_and_data_options_are_accepted(script):
    compile_template(template(script_step(10, script)))


def test_a_value_for_pghost_is_host_names_only(home):
    """(helper-60 F8) A list of hosts may hold a socket folder after its first
    host, and an empty one is the default socket."""
    for value in ("nohost.invalid,/var/run/postgresql", "", "@abstract", "db1,,db2"):
        result = run_template(template(step(10, "execute_custom_script", id="s", max_retries=1, action_config={
            "script": 'PGHOST="{{ workspace.v }}"; echo "$PGHOST"'})), {"id": "w", "home_dir": str(home), "v": value},
            record=False)
        assert "names a socket folder of this machine" in (result.steps["s"].error or ""), (value, result.steps["s"])


@pytest.mark.parametrize("value", ["dbname=postgres user=postgres", "host=10.0.0.1", "postgresql://x@h/db",
                                   "POSTGRES://h/db"])
def test_a_value_for_pgdatabase_or_pguser_is_a_plain_name(value, home):
    """(helper-58 H1) vacuumdb, reindexdb, clusterdb, pgbench and pg_amcheck
    expand $PGDATABASE (or $PGUSER) as a connection string: a tenant's
    options='-c session_preload_libraries=...' loaded a library into the
    server. A value there (the script's assignment, or the step's env) is
    a plain name, checked when the step runs (and those programs must be
    given their database in the template: helper-60 found more ways to set
    the variables than dagrun follows)."""
    for config in ({"script": 'PGDATABASE="{{ workspace.v }}" psql -tAc "select 1"'},
                   {"script": 'export PGUSER={{ workspace.v }}; psql -tAc "select 1"'},
                   {"script": 'psql -tAc "select 1"', "env": {"PGDATABASE": "{{ workspace.v }}"}}):
        result = run_template(template(step(10, "execute_custom_script", id="s", max_retries=1, action_config=config)),
                              {"id": "w", "home_dir": str(home), "v": value}, record=False)
        error = result.steps["s"].error or ""
        assert result.steps["s"].status is StepStatus.failed and "holds '=' or is a URL" in error, (config, error)
    plain = run_template(template(step(10, "execute_custom_script", id="s", action_config={
        "script": 'PGDATABASE="{{ workspace.v }}"; echo "$PGDATABASE"'})),
        {"id": "w", "home_dir": str(home), "v": "tenant_db"}, record=False)
    assert plain.steps["s"].stdout.strip() == "tenant_db"
