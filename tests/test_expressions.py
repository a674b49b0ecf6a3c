"""Jinja sandbox interpolation, the SQL-like condition spelling, shell quoting."""

from __future__ import annotations

import subprocess

import pytest
from jinja2 import TemplateSyntaxError, UndefinedError
from jinja2.exceptions import SecurityError

from dagrun.compile.expressions import (Reference, compile_condition, references, render_string, render_value,
                                shell_quote, translate_condition)

NASTY = ["a; touch /tmp/pwned", "$(touch /tmp/pwned)", "`touch /tmp/pwned`", "it's \"quoted\"",
         "line1\nEOF\ntouch /tmp/pwned", "tab\there", "back\\slash", "", "unicode é ✓", "-n", "*"]


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


@pytest.mark.parametrize("value", NASTY)
def test_shell_quote_round_trips_through_bash(value, tmp_path):
    script = f"printf '%s' {shell_quote(value)}"
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0
    assert out.stdout == value
    assert not (tmp_path / "pwned").exists()


def test_shell_quote_inside_heredoc_cannot_end_it(tmp_path):
    value = "x\nEOF\ntouch pwned\ncat <<'EOF'"
    script = render_string("cat > out.txt <<'EOF'\nv={{ v }}\nEOF\n", {"v": value}, shell=True)
    subprocess.run(["bash", "-c", script], check=True, cwd=tmp_path)
    assert not (tmp_path / "pwned").exists()
    assert "touch pwned" in (tmp_path / "out.txt").read_text()


def test_shell_quote_lists_become_words():
    assert shell_quote(["a b", "c"]) == "'a b' c"
