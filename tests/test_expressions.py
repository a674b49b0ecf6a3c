"""Jinja sandbox interpolation, the SQL-like condition spelling, bounded evaluation."""

from __future__ import annotations

import subprocess

import pytest
from jinja2 import TemplateSyntaxError, UndefinedError
from jinja2.exceptions import SecurityError

from dagrun.compile.configs import render_value
from dagrun.compile.expressions import (Reference, compile_condition, references, render_shell, render_string,
                                        translate_condition)


@pytest.mark.parametrize("text,expected", [
    ("workspace.ssh_public_key IS NOT NULL OR config.private = FALSE",
     "workspace.ssh_public_key is not none or config.private == false"),
    ("workspace.a IS NULL AND NOT config.b <> 'x = y AND z'", "workspace.a is none and not config.b != 'x = y AND z'"),
    ("config.n >= 2 and config.n != 3", "config.n >= 2 and config.n != 3"),
    ("{{ workspace.port == 8069 }}", "workspace.port == 8069"),
])
def test_translate_condition(text, expected):
    assert translate_condition(text) == expected


@pytest.mark.parametrize("text,context,expected", [
    ("workspace.ssh_public_key IS NOT NULL OR config.private = FALSE", {"workspace": {"ssh_public_key": None}, "config": {"private": False}}, True),
    ("workspace.ssh_public_key IS NOT NULL OR config.private = FALSE", {"workspace": {"ssh_public_key": None}, "config": {"private": True}}, False),
    ("workspace.ssh_public_key IS NOT NULL", {"workspace": {"ssh_public_key": "ssh-ed25519 AAA"}}, True),
    ("workspace.port = 8069 AND workspace.name <> 'x'", {"workspace": {"port": 8069, "name": "y"}}, True),
    ("workspace.port in [1, 2]", {"workspace": {"port": 2}}, True),
])
def test_conditions_evaluate(text, context, expected):
    assert compile_condition(text).evaluate(context) is expected


def test_condition_is_not_substring_matched():
    # The seed's evaluator returned True for anything containing this text.
    cond = compile_condition("workspace.ssh_public_key IS NOT NULL AND workspace.port = 1")
    assert cond.evaluate({"workspace": {"ssh_public_key": "k", "port": 2}}) is False


def test_condition_syntax_error():
    with pytest.raises(TemplateSyntaxError):
        compile_condition("workspace.a IS IS NULL (")


def test_undefined_names_are_errors_never_empty_strings():
    with pytest.raises(UndefinedError):
        render_string("{{ workspace.nope }}", {"workspace": {}})


def test_sandbox_blocks_attribute_escape():
    with pytest.raises(SecurityError):
        render_string("{{ ''.__class__.__mro__ }}", {})


def test_sole_expression_keeps_native_type():
    assert render_string("{{ vars.packages }}", {"vars": {"packages": ["a", "b"]}}) == ["a", "b"]
    assert render_string("x{{ vars.n }}", {"vars": {"n": 1}}) == "x1"
    assert render_value({"a": ["{{ vars.n + 1 }}"]}, {"vars": {"n": 1}}) == {"a": [2]}


def test_references_list_names_and_first_attributes():
    refs = references("{{ workspace.a }} {{ steps.clone.result.path }} {% for x in vars.items %}{{ x }}{% endfor %}")
    assert Reference("workspace", "a") in refs
    assert Reference("steps", "clone") in refs
    assert Reference("vars", "items") in refs
    assert not any(r.root == "x" for r in refs)
    cond = references("file_exists('~/{{ workspace.linux_username }}/x')", condition=True)
    assert Reference("workspace", "linux_username") in cond


def test_shell_values_become_environment_variables_never_script_text(tmp_path):
    script = render_shell("printf '%s|' {{ v }} \"{{ v }}\" > out\n", {"v": "$(touch pwned); `x` 'q'"})
    assert "touch" not in script.text
    assert script.text == "printf '%s|' \"${DAGRUN_VALUE_1}\" \"${DAGRUN_VALUE_2}\" > out\n"
    subprocess.run(["bash", "-c", script.text], check=True, cwd=tmp_path, env=dict(script.values))
    assert (tmp_path / "out").read_text() == "$(touch pwned); `x` 'q'|$(touch pwned); `x` 'q'|"
    assert not (tmp_path / "pwned").exists()


def test_shell_lists_become_one_word_per_item():
    script = render_shell("ls -- {{ vars.p }}", {"vars": {"p": ["a b", "c"]}})
    assert script.text == 'ls -- "${DAGRUN_VALUE_1}" "${DAGRUN_VALUE_2}"'
    assert dict(script.values) == {"DAGRUN_VALUE_1": "a b", "DAGRUN_VALUE_2": "c"}


def test_path_functions_never_render_what_they_receive(tmp_path):
    context = {"vars": {"p": "x{{ 7*7 }}"}, "file_exists": None}
    from dagrun.compile.expressions import make_functions
    context.update(make_functions(str(tmp_path)))
    assert render_string("{{ path(vars.p) }}", context) == f"{tmp_path}/x{{{{ 7*7 }}}}"
    (tmp_path / "alice").touch()
    cond = compile_condition("file_exists('~/{{ vars.u }}')")  # a literal is template text: expanded
    assert cond.evaluate({**context, "vars": {"u": "alice"}}) is True
    assert cond.evaluate({**context, "vars": {"u": "{{ 'alice' }}"}}) is False


@pytest.mark.parametrize("source", [
    "{{ 9**(9**9) }}", "{{ 'x' * 10**10 }}", "{{ '%0999999999d' % 1 }}", "{{ 'x'.ljust(10**9) }}",
    "{{ '{:>999999999}'.format(1) }}", "{{ 'x'|center(10**9) }}", "{{ range(10**9)|list }}",
    "{% for a in range(9999) %}{% for b in range(9999) %}x{% endfor %}{% endfor %}",
    "{{ ('a' * 1000)|replace('a', 'b' * 100000) }}",
])
def test_unbounded_evaluation_is_refused(source):
    with pytest.raises(SecurityError):  # without the bounds, this would not return for hours
        render_string(source, {})


def test_conditions_are_bounded_too():
    with pytest.raises(SecurityError):
        compile_condition("9**(9**9) > 1").evaluate({})


def test_deep_nesting_is_a_syntax_error_not_a_recursion_error():
    with pytest.raises(TemplateSyntaxError, match="nested"):
        compile_condition("(" * 2000 + "1" + ")" * 2000)
