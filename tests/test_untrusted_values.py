"""Values are data, never code: a hostile corpus in every field and quoting context.

Every value that is not template text written by the template's author
(workspace fields, variables, config values, upstream results) goes through
every shell quoting context of both shell styles (an inline ``shell`` action,
``execute_custom_script``). No marker file may ever appear; each case either
delivers the exact value or is refused before the script runs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from dagrun import TemplateError, run_template
from dagrun.run.outcome import StepStatus
from tests.helpers import script_step, shell_action, step, template

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


def _reference(source: str, i: int) -> str:
    return {"workspace": f"workspace.f{i}", "vars": f"vars.v{i}", "config": f"config.c{i}"}[source]


def _documents(style: str, source: str, values: list[str], scripts: dict[str, str]):
    """One step per (context, value); each writes into a folder of its own. A config
    field's own text is the author's: hostile values reach it from the workspace
    (``c3: "{{ workspace.f3 }}"``), then the script reads ``config.c3``."""
    steps, actions = [], []
    config_schema = {"type": "object", "properties": {f"c{i}": {"type": "string"} for i in range(len(values))}}
    if style == "shell":
        for n, (context, script) in enumerate(scripts.items()):
            for i in range(len(values)):
                body = f"mkdir -p ~/{context}/{i} && cd ~/{context}/{i}\n" + script.replace("V", _reference(source, i))
                actions.append(shell_action(f"a_{context}_{i}", body, config_schema=config_schema))
                steps.append(step(1000 * n + i, f"a_{context}_{i}", id=f"{context}_{i}",
                                  action_config={f"c{i}": "{{ workspace.f%d }}" % i}))
    else:  # execute_custom_script: config values (from the workspace) reach the script via config.env
        for n, (context, script) in enumerate(scripts.items()):
            for i in range(len(values)):
                ref = _reference(source, i).replace("config.c", "config.env.c")
                body = f"mkdir -p ~/{context}/{i} && cd ~/{context}/{i}\n" + script.replace("V", ref)
                cfg = {"env": {f"c{i}": "{{ workspace.f%d }}" % i}} if source == "config" else {}
                steps.append(script_step(1000 * n + i, body, id=f"{context}_{i}", action_config=cfg))
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
