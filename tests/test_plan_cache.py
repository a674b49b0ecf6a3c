"""The plan cache: a compile is reused only when every input is the same.

Each test compiles for real, twice or more, and checks what the second
compile gives: the same plan object (kept) or one that reflects what
changed (compiled again). Nothing is faked.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dagrun import TemplateError, compile_template
from dagrun.compile import cache, loader
from tests.helpers import script_step, template


@pytest.fixture(autouse=True)
def empty_cache():
    cache.clear()
    yield
    cache.clear()


def test_the_same_document_gives_the_same_plan():
    doc = template(script_step(10, "echo hi"))
    first = compile_template(doc)
    again = compile_template(template(script_step(10, "echo hi")))  # an equal document, another object
    assert again is first


def test_a_changed_document_is_compiled_again():
    doc = template(script_step(10, "echo hi"))
    first = compile_template(doc)
    doc["actions"][0]["action_config"]["script"] = "echo changed"  # the caller edits its own dict
    again = compile_template(doc)
    assert again is not first
    assert again.steps[again.order[0]].config["script"] == "echo changed"
    assert first.steps[first.order[0]].config["script"] == "echo hi"


def test_variables_are_part_of_the_key():
    doc = template(script_step(10, "echo {{ vars.greeting }}"), vars={"greeting": "x"})
    one = compile_template(doc, variables={"greeting": "hello"})
    two = compile_template(doc, variables={"greeting": "bye"})
    assert one is not two
    assert one.variables["greeting"] == "hello" and two.variables["greeting"] == "bye"
    assert compile_template(doc, variables={"greeting": "hello"}) is one


def test_a_workspace_without_a_field_is_still_refused_after_one_with_it():
    doc = template(script_step(10, "echo {{ workspace.colour }}"))
    compile_template(doc, workspace={"id": 1, "colour": "red"})
    with pytest.raises(TemplateError, match="the workspace has no field 'colour'"):
        compile_template(doc, workspace={"id": 2})
    # Same field names, other values: the plan is shared (values are read when steps run).
    assert compile_template(doc, workspace={"id": 3, "colour": "blue"}) is \
        compile_template(doc, workspace={"id": 1, "colour": "red"})


def test_an_environment_variable_unset_since_is_still_reported(monkeypatch):
    doc = template(script_step(10, "echo {{ env.CACHE_TEST_TOKEN }}"),
                   global_config={"env_passthrough": ["CACHE_TEST_TOKEN"]})
    monkeypatch.setenv("CACHE_TEST_TOKEN", "t")
    compile_template(doc, workspace={"id": 1})
    monkeypatch.delenv("CACHE_TEST_TOKEN")
    with pytest.raises(TemplateError, match="environment variable CACHE_TEST_TOKEN is not set"):
        compile_template(doc, workspace={"id": 1})


def test_a_failed_compile_is_not_kept():
    doc = template(script_step(10, "echo {{ vars.missing }}"))
    for _ in range(2):
        with pytest.raises(TemplateError, match="undefined variable vars.missing"):
            compile_template(doc)
    assert compile_template(doc, variables={"missing": 1}).variables["missing"] == 1


def test_a_template_file_is_read_again_each_time(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("name: t\nversion: '1'\nactions:\n- {sequence_order: 10, id: a, action_name: noop}\n")
    first = compile_template(str(path))
    path.write_text("name: t\nversion: '1'\nactions:\n- {sequence_order: 10, id: b, action_name: noop}\n")
    again = compile_template(str(path))
    assert first.order == ("a",) and again.order == ("b",)


def test_an_edited_seed_template_is_compiled_again(tmp_path, monkeypatch):
    seeds = tmp_path / "seeds"
    (seeds / "templates").mkdir(parents=True)
    real = loader.package_dir
    monkeypatch.setattr(loader, "package_dir", lambda name: seeds if name == "seeds" else real(name))
    seed = seeds / "templates" / "cached-seed.yaml"
    seed.write_text("name: cached-seed\nversion: '1'\nactions:\n- {sequence_order: 10, id: a, action_name: noop}\n")
    first = compile_template("cached-seed")
    assert compile_template("cached-seed") is first
    seed.write_text("name: cached-seed\nversion: '2'\nactions:\n"
                    "- {sequence_order: 10, id: a, action_name: noop}\n"
                    "- {sequence_order: 20, id: b, action_name: noop}\n")
    os.utime(seed, ns=(1, 1))  # a different modification time even within the clock's resolution
    again = compile_template("cached-seed")
    assert again.order == ("a", "b") and again.version == "2"


def test_data_that_is_not_plain_is_compiled_each_time():
    doc = template(script_step(10, "echo hi"))
    doc["description"] = Path("not plain data")  # marshal refuses it: no key, no cache
    assert cache.key(doc, templates=[], variables=None, workspace=None, env_passthrough=(), actions=None,
                     trusted_actions=None) is None
    assert compile_template(dict(doc, description="x")) is compile_template(dict(doc, description="x"))


def test_the_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(cache, "MAX_PLANS", 2)
    plans = [compile_template(template(script_step(10, f"echo {i}"))) for i in range(3)]
    assert compile_template(template(script_step(10, "echo 2"))) is plans[2]
    assert compile_template(template(script_step(10, "echo 0"))) is not plans[0]  # the oldest was dropped


def test_runs_of_a_kept_plan_do_not_share_results(tmp_path):
    from dagrun import run_template
    doc = template(script_step(10, "echo {{ workspace.name }} > out.txt"))
    homes = [tmp_path / "one", tmp_path / "two"]
    for name, home in zip(("one", "two"), homes):
        result = run_template(doc, {"id": name, "name": name, "home_dir": str(home)}, record=False,
                              home_roots=[str(tmp_path)])
        assert result.success, result.error
    assert [(h / "out.txt").read_text().strip() for h in homes] == ["one", "two"]
