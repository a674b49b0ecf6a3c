"""The plan cache: a compile is reused only when every input is the same.

Each test compiles for real, twice or more, and checks what the second
compile gives: the same plan object (kept) or one that reflects what
changed (compiled again). Nothing is faked.
"""

from __future__ import annotations

import os

import pytest

from dagrun import TemplateError, compile_template
from dagrun.compile import cache, loader
from tests.helpers import action, script_step, step, template


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


def test_a_plan_is_not_kept_when_its_environment_changed_while_it_compiled(monkeypatch):
    """The environment is read while compiling: a variable set meanwhile
    means the plan may not be the one its key describes."""
    import dagrun.compile
    compile_ = dagrun.compile._compile

    def compile_while_the_environment_changes(*args, **kwargs):
        os.environ["CACHE_TEST_MEANWHILE"] = "1"
        return compile_(*args, **kwargs)

    doc = template(script_step(10, "echo hi"))
    monkeypatch.delenv("CACHE_TEST_MEANWHILE", raising=False)
    monkeypatch.setattr(dagrun.compile, "_compile", compile_while_the_environment_changes)
    first = compile_template(doc, workspace={"id": 1})
    monkeypatch.delenv("CACHE_TEST_MEANWHILE")
    assert compile_template(doc, workspace={"id": 1}) is not first  # not kept: compiled again
    monkeypatch.setattr(dagrun.compile, "_compile", compile_)
    kept = compile_template(doc, workspace={"id": 1})
    assert compile_template(doc, workspace={"id": 1}) is kept


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


@pytest.fixture
def seeds(tmp_path, monkeypatch):
    """A seeds folder of the test's own (the shipped one is the repository's)."""
    folder = tmp_path / "seeds"
    (folder / "templates").mkdir(parents=True)
    real = loader.package_dir
    monkeypatch.setattr(loader, "package_dir", lambda name: folder if name == "seeds" else real(name))
    return folder / "templates"


def test_an_edited_seed_template_is_compiled_again(seeds):
    seed = seeds / "cached-seed.yaml"
    seed.write_text("name: cached-seed\nversion: '1'\nactions:\n- {sequence_order: 10, id: a, action_name: noop}\n")
    first = compile_template("cached-seed")
    assert compile_template("cached-seed") is first
    seed.write_text("name: cached-seed\nversion: '2'\nactions:\n"
                    "- {sequence_order: 10, id: a, action_name: noop}\n"
                    "- {sequence_order: 20, id: b, action_name: noop}\n")
    os.utime(seed, ns=(1, 1))  # a different modification time even within the clock's resolution
    again = compile_template("cached-seed")
    assert again.order == ("a", "b") and again.version == "2"


def test_a_document_extending_an_edited_seed_is_compiled_again(seeds):
    """The service passes documents; a base they extend is read from the seeds folder."""
    base = seeds / "cached-base.yaml"
    base.write_text("name: cached-base\nversion: '1'\nactions:\n- {sequence_order: 10, id: a, action_name: noop}\n")
    child = {"name": "child", "version": "1", "extends": "cached-base",
             "actions": [{"sequence_order": 20, "id": "c", "action_name": "noop"}]}
    first = compile_template(child)
    assert first.order == ("a", "c") and compile_template(dict(child)) is first
    stat = base.stat()
    # The same size and modification time (as tar or rsync -t leave it): the change time still moves.
    base.write_text("name: cached-base\nversion: '1'\nactions:\n- {sequence_order: 10, id: b, action_name: noop}\n")
    os.utime(base, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert compile_template(child).order == ("b", "c")


def test_a_dangling_symlink_among_the_seeds_does_not_break_compiles(seeds):
    (seeds / "gone.yaml").symlink_to(seeds / "nowhere.yaml")
    doc = template(script_step(10, "echo hi"))
    assert compile_template(doc) is compile_template(doc)


def test_an_edited_action_definition_folder_is_read_again(tmp_path):
    folder = tmp_path / "actions"
    folder.mkdir()
    definition = folder / "greet.yaml"
    definition.write_text("name: greet\naction_type: shell\nexecution_handler: greet.sh\n")
    (folder / "greet.sh").write_text("echo one\n")
    doc = template(step(10, "greet"))
    first = compile_template(doc, actions=[str(folder)])
    assert compile_template(doc, actions=[str(folder)]) is first
    definition.write_text("name: greet\naction_type: shell\nexecution_handler: greet.sh\ntimeout_seconds: 7\n")
    again = compile_template(doc, actions=[str(folder)])
    assert again is not first and again.steps[again.order[0]].timeout_seconds == 7


def test_the_plan_shares_nothing_with_the_callers_document():
    doc = template(script_step(10, "echo hi"))
    plan = compile_template(doc)
    doc["actions"][0]["action_config"]["script"] = "echo changed"  # after the call
    assert plan.snapshot["actions"][0]["action_config"]["script"] == "echo hi"
    assert compile_template(template(script_step(10, "echo hi"))) is plan


def test_a_plan_compiled_with_secrets_is_not_kept(tmp_path):
    from dagrun import run_template
    doc = template(script_step(10, 'test -n "{{ vars.token }}"'))
    result = run_template(doc, {"id": "s", "home_dir": str(tmp_path / "s")}, record=False,
                          secrets={"token": "s3cret-value"}, home_roots=[str(tmp_path)])
    assert result.success, result.error
    assert not any("s3cret-value" in repr(dict(plan.variables)) for plan, _ in cache._plans.values())


def test_big_inputs_are_not_kept(monkeypatch):
    monkeypatch.setattr(cache, "MAX_ENTRY_BYTES", 10_000)
    doc = template(script_step(10, "echo {{ vars.blob | length }}"))
    blob = {"blob": "x" * 20_000}
    assert compile_template(doc, variables=blob) is not compile_template(doc, variables=blob)
    assert compile_template(doc, variables={"blob": "x"}) is compile_template(doc, variables={"blob": "x"})


def test_the_collector_is_paused_while_any_compile_runs_and_enabled_after_the_last():
    import gc
    from dagrun import compile as compile_package
    assert gc.isenabled()
    first, second = compile_package._gc_paused(), compile_package._gc_paused()
    first.__enter__()
    second.__enter__()  # another thread's compile begins while the first runs
    first.__exit__(None, None, None)
    assert not gc.isenabled()  # the second is still compiling
    second.__exit__(None, None, None)
    assert gc.isenabled()


def test_data_that_is_not_plain_is_compiled_each_time():
    class Text(str):  # marshal takes exact types only: no key, no cache
        pass

    doc = template(script_step(10, "echo hi"), description=Text("an object of the caller's"))
    assert compile_template(doc) is not compile_template(doc)
    plain = template(script_step(10, "echo hi"), description="x")
    assert compile_template(plain) is compile_template(dict(plain))


def test_the_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(cache, "MAX_PLANS", 2)
    plans = [compile_template(template(script_step(10, f"echo {i}"))) for i in range(3)]
    assert compile_template(template(script_step(10, "echo 2"))) is plans[2]
    assert compile_template(template(script_step(10, "echo 0"))) is not plans[0]  # the oldest was dropped


def test_a_handler_changing_its_config_never_reaches_another_run(tmp_path):
    """A kept plan is shared by every workspace's run: a handler gets a copy."""
    acts = [action("collect", handler="tests.helpers:append_workspace_id")]
    doc = template(step(10, "collect", action_config={"items": ["base"]}))
    assert _results_of_two_runs(tmp_path, doc, acts, "items") == [["base", "a"], ["base", "b"]]


def test_runs_of_a_kept_plan_do_not_share_results(tmp_path):
    from dagrun import run_template
    doc = template(script_step(10, "echo {{ workspace.name }} > out.txt"))
    homes = [tmp_path / "one", tmp_path / "two"]
    for name, home in zip(("one", "two"), homes):
        result = run_template(doc, {"id": name, "name": name, "home_dir": str(home)}, record=False,
                              home_roots=[str(tmp_path)])
        assert result.success, result.error
    assert [(h / "out.txt").read_text().strip() for h in homes] == ["one", "two"]


def test_tuples_in_a_kept_plan_are_copied_for_each_attempt_too(tmp_path):
    acts = [action("collect", handler="tests.helpers:append_to_nested")]
    doc = template(step(10, "collect", action_config={"items": ({"seen": []},)}))  # a Python caller's tuple
    assert _results_of_two_runs(tmp_path, doc, acts, "seen") == [["a"], ["b"]]


def _results_of_two_runs(tmp_path, doc, acts, key):
    """``key`` of the one step's result, in runs for workspaces "a" then "b" (the plan kept between them)."""
    from dagrun import run_template
    seen = []
    for name in ("a", "b"):
        result = run_template(doc, {"id": name, "home_dir": str(tmp_path / name)}, record=False, actions=acts,
                              home_roots=[str(tmp_path)], sandbox=False)
        assert result.success, result.error
        seen.append(next(iter(result.steps.values())).result[key])
    return seen


def test_a_symlinked_action_definition_reads_its_handlers_beside_the_link(tmp_path):
    """As without the cache: handler files are looked up beside the path given."""
    real, linked = tmp_path / "real", tmp_path / "linked"
    real.mkdir()
    linked.mkdir()
    (real / "greet.yaml").write_text("name: greet\naction_type: shell\nexecution_handler: greet.sh\n")
    (real / "greet.sh").write_text("echo real\n")
    (linked / "greet.sh").write_text("echo beside the link\n")
    (linked / "greet.yaml").symlink_to(real / "greet.yaml")
    doc = template(step(10, "greet"))
    kept = compile_template(doc, actions=[str(linked / "greet.yaml")])
    fresh = compile_template(doc, actions=[str(linked / "greet.yaml")], keep=False)
    assert str(kept.steps[kept.order[0]].action.base_dir) == str(fresh.steps[fresh.order[0]].action.base_dir) \
        == str(linked)


def test_deeply_nested_variables_are_one_clear_error():
    nested: dict = {}
    inner = nested
    for _ in range(2000):
        inner["x"] = {}
        inner = inner["x"]
    with pytest.raises(TemplateError, match="variables: nested more than"):
        compile_template(template(script_step(10, "echo hi")), variables={"deep": nested})
