"""Compile: inheritance, config schemas, edges, cycles, expressions, errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from dagrun import CycleError, TemplateError, compile_template
from dagrun.compile.loader import read_document
from dagrun.spec import Phase
from tests.helpers import action, script_step, step, template

FIXTURES = Path(__file__).parent / "fixtures"
ACTIONS = [
    action("a"),
    action("typed", config_schema={"type": "object", "required": ["name"], "additionalProperties": False,
                                   "properties": {"name": {"type": "string"}, "port": {"type": "integer"},
                                                  "opts": {"type": "object"}},
                                   }, default_config={"opts": {"x": 1, "y": 2}}),
    action("needs_a", requires_actions=["a"]),
]

# Stand-ins for the seed's actions (the real library comes with its own
# issue); they let the seed's own template documents compile here.
SEED_ACTIONS = [action(n) for n in ("install_system_packages", "create_postgresql_user", "create_python_venv",
                                    "install_pip_requirements", "clone_git_repository",
                                    "install_vscode_extensions", "create_django_project")]
SEED_ACTIONS.append(action("create_postgresql_database", requires_actions=["create_postgresql_user"]))


def compile_(*steps, actions=ACTIONS, **fields):
    return compile_template(template(*steps, **fields), actions=actions)


def problems(exc):
    return [str(p) for p in exc.value.problems]


def test_default_ids_and_order():
    plan = compile_(step(20, "a"), step(10, "typed", action_config={"name": "n"}), step(30, "a"))
    assert plan.order == ("typed", "a_20", "a_30")


def test_config_is_deep_merged_over_defaults():
    plan = compile_(step(10, "typed", action_config={"name": "n", "opts": {"y": 3}}))
    assert dict(plan.steps["typed"].config) == {"name": "n", "opts": {"x": 1, "y": 3}}


def test_schema_errors_name_template_step_and_field_and_are_all_reported():
    with pytest.raises(TemplateError) as exc:
        compile_(step(10, "typed", id="one", action_config={"port": "x"}),
                 step(20, "nope", id="two"), step(30, "a", id="three", requires=["ghost"]))
    found = problems(exc)
    assert any("t: step one: field 'action_config'" in p and "'name' is a required property" in p for p in found)
    assert any("step one: field 'action_config.port'" in p and "is not of type 'integer'" in p for p in found)
    assert any("step two: field 'action_name': unknown action 'nope'" in p for p in found)
    assert any("step three: field 'requires': requires unknown step 'ghost'" in p for p in found)
    assert len(found) == 4  # every stage reports, in one error


def test_templated_strings_are_validated_later():
    plan = compile_(step(10, "typed", action_config={"name": "n", "port": "{{ workspace.port }}"}))
    assert plan.steps["typed"].templated


def test_template_document_schema_errors():
    with pytest.raises(TemplateError) as exc:
        compile_template({"name": "bad", "actions": [{"sequence_order": "ten", "action_name": "a", "colour": 1}]},
                         actions=ACTIONS)
    found = problems(exc)
    assert any("field 'sequence_order'" in p for p in found)
    assert any("field 'colour': unknown field" in p for p in found)


def test_one_pass_reports_every_kind_of_problem_with_suggestions():
    """An unknown field does not hide the step's other mistakes: all are reported at once,
    each with what was probably meant."""
    with pytest.raises(TemplateError) as exc:
        compile_template(template(
            script_step(10, "echo {{ vars.projetc }}", id="a"),
            script_step(20, "echo {{ workspace.nmae }}", id="b", requirs=["a"], action_config={"timeout": 1}),
            step(30, "write_file", id="c", requires=["zz"], condition_expression="workspace.name ==",
                 action_config={"target_path": "~/x", "content": "x"}),
            step(40, "execute_custom_scrpt", id="d"), vars={"project": "x"}),
            workspace={"id": "w", "name": "n", "home_dir": "/tmp/w"})
    found = problems(exc)
    expected = ["step b: field 'requirs': unknown field (did you mean 'requires'?)",
                "step b: field 'action_config.timeout': unknown field",
                "step a: field 'action_config.script': undefined variable vars.projetc (did you mean 'project'?)",
                "step b: field 'action_config.script': the workspace has no field 'nmae' (did you mean 'name'?)",
                "step c: field 'requires': requires unknown step 'zz'",
                "step c: field 'condition_expression': cannot parse condition",
                "step d: field 'action_name': unknown action 'execute_custom_scrpt' "
                "(did you mean 'execute_custom_script'?)"]
    for text in expected:
        assert any(text in p for p in found), (text, found)


def test_requires_by_id_and_sequence_order_and_requires_actions():
    plan = compile_(step(10, "a", id="x"), step(20, "a", id="y", requires=[10]),
                    step(30, "needs_a", id="z", requires=["y"]))
    assert plan.predecessors["y"] == ("x",)
    assert set(plan.predecessors["z"]) == {"x", "y"}


def test_requires_actions_missing_provider_is_an_error():
    with pytest.raises(TemplateError) as exc:
        compile_(step(10, "needs_a"))
    assert "action 'needs_a' requires action 'a', but no step of the template uses it" in str(exc.value)


def test_cycle_error_prints_the_cycle():
    with pytest.raises(CycleError) as exc:
        compile_(step(10, "a", id="x", requires=["z"]), step(20, "a", id="y", requires=["x"]),
                 step(30, "a", id="z", requires=["y"]))
    assert "dependency cycle: x (a) -> y (a) -> z (a) -> x (a)" in str(exc.value)


def test_cycle_check_agrees_with_networkx_on_random_graphs():
    """The compiler checks its graph with its own walk (networkx is the plan's
    view, not imported to compile): on random graphs, acyclic or not, it
    finds a cycle exactly when networkx does, and every cycle it names is one."""
    import random

    import networkx as nx

    from dagrun.compile.graph import Edges
    rng = random.Random(7)
    for trial in range(300):
        nodes = [f"n{i}" for i in range(rng.randint(1, 30))]
        edges = Edges(nodes)
        reference = nx.DiGraph()
        reference.add_nodes_from(nodes)
        for _ in range(rng.randint(0, 45)):
            a, b = rng.choice(nodes), rng.choice(nodes)
            if trial % 2 == 0 and nodes.index(a) >= nodes.index(b):
                continue  # half the graphs are DAGs
            edges.add_edge(a, b)
            reference.add_edge(a, b)
        cycle = edges.find_cycle()
        assert (cycle is None) == nx.is_directed_acyclic_graph(reference), (trial, cycle)
        if cycle is not None:
            assert len(set(cycle)) == len(cycle)
            assert all(reference.has_edge(u, v) for u, v in zip(cycle, cycle[1:] + cycle[:1])), cycle


def test_a_long_chain_is_checked_without_recursion():
    plan = compile_(*[step(i, "a", id=f"s{i}", requires=[f"s{i - 1}"] if i else []) for i in range(5000)])
    assert plan.predecessors["s4999"] == ("s4998",)
    with pytest.raises(CycleError) as exc:
        compile_(*[step(i, "a", id=f"s{i}", requires=[f"s{(i - 1) % 5000}"]) for i in range(5000)])
    assert len(exc.value.cycle) == 5000


def test_priorities_from_the_cycle_checks_walk_equal_a_fresh_walk():
    """The compiler hands its cycle check's post-order to the priority pass;
    the priorities and dispatch order must be those of a walk of its own."""
    import random

    from dagrun.spec import scheduling
    rng = random.Random(3)
    steps = []
    for i in range(300):
        parents = rng.sample(range(i), min(i, rng.randint(0, 3)))
        steps.append(step(1000 - i if i % 7 == 0 else i, "a", id=f"s{i}", requires=[f"s{p}" for p in parents],
                          estimated_duration_seconds=rng.choice([0.5, 1.0, 2.0, 3.5])))
    plan = compile_(*steps)
    assert scheduling(plan.order, plan.successors, plan.steps) == (dict(plan.priority), plan.dispatch_order)
    for sid, spec in plan.steps.items():  # each step's bottom level, by its definition
        below = max((plan.priority[s] for s in plan.successors[sid]), default=0.0)
        assert plan.priority[sid] == spec.estimated_duration_seconds + below


def test_the_plan_gives_its_graph_as_networkx():
    plan = compile_(step(10, "a", id="x"), step(20, "a", id="y", requires=["x"]),
                    step(30, "needs_a", id="z", requires=["y"]))
    graph = plan.graph()
    assert list(graph.nodes) == list(plan.order)
    assert sorted(graph.edges) == sorted((p, s) for s in plan.order for p in plan.predecessors[s])
    assert graph.nodes["z"]["action"] == "needs_a"


def test_phase_cannot_require_a_later_phase():
    with pytest.raises(CycleError):
        compile_(step(10, "a", id="early", phase="pre_setup", requires=["late"]), step(20, "a", id="late"))


def test_phase_barrier_edges_connect_sinks_to_sources():
    plan = compile_(step(10, "a", id="p1", phase="pre_setup"), step(20, "a", id="p2", phase="pre_setup",
                                                                     requires=["p1"]),
                    step(30, "a", id="m1"), step(40, "a", id="m2"), step(50, "a", id="v", phase="validation"))
    assert plan.predecessors["m1"] == ("p2",) and plan.predecessors["m2"] == ("p2",)
    assert plan.predecessors["v"] == ("m1", "m2")
    assert plan.steps["v"].phase is Phase.validation


def test_unknown_variable_and_non_upstream_step_reference():
    with pytest.raises(TemplateError) as exc:
        compile_(script_step(10, "echo {{ steps.y.result.v }} {{ nope }}", id="x"),
                 script_step(20, "echo {{ vars.missing }}", id="y"),
                 script_step(30, "echo hi", id="w", condition_expression="steps.ghost.status = 'completed'"))
    found = problems(exc)
    assert any("step x: field 'action_config.script': steps.y is not upstream of this step" in p for p in found)
    assert any("unknown variable 'nope'" in p for p in found)
    assert any("step y: field 'action_config.script': undefined variable vars.missing" in p for p in found)
    assert any("step w: field 'condition_expression': steps.ghost is not a step" in p for p in found)


def test_condition_syntax_error_is_a_compile_error():
    with pytest.raises(TemplateError) as exc:
        compile_(step(10, "a", condition_expression="workspace.x IS IS"))
    assert "field 'condition_expression': cannot parse condition" in str(exc.value)


def test_workspace_fields_are_checked_when_a_workspace_is_given():
    with pytest.raises(TemplateError) as exc:
        compile_template(template(script_step(10, "echo {{ workspace.colour }}")), workspace={"id": 1})
    assert "the workspace has no field 'colour'" in str(exc.value)


def test_conflicts_and_locks():
    acts = ACTIONS + [action("apt", conflicts_with_actions=["apt"], locks=["dpkg"]),
                      action("pip", locks=[{"name": "net", "capacity": 2}])]
    plan = compile_(step(10, "apt", id="apt1"), step(20, "apt", id="apt2"), step(30, "pip", id="p"),
                    step(40, "a", id="x", conflicts_with=[30]), actions=acts)
    assert plan.conflicts["apt1"] == {"apt2"}
    assert plan.conflicts["p"] == {"x"}
    assert dict(plan.lock_capacity) == {"dpkg": 1, "net": 2}
    assert plan.predecessors["apt2"] == ()  # conflicts never order steps


def test_inheritance_to_any_depth_with_override_and_remove(tmp_path):
    (tmp_path / "base.yaml").write_text(json.dumps(template(
        step(10, "typed", id="t", action_config={"name": "base", "opts": {"x": 9}}),
        step(20, "a", id="gone"), step(30, "a", id="kept"), name="base", vars={"v": 1})))
    (tmp_path / "middle.yaml").write_text(json.dumps(template(
        step(10, "typed", action_config={"opts": {"y": 7}}), step(40, "a", id="mid"),
        name="middle", extends="base", vars={"w": 2})))
    (tmp_path / "child.json").write_text(json.dumps(template(
        step(20, "a", remove=True), step(50, "a", id="child", requires=["mid"]),
        name="child", extends={"name": "middle", "version": "1.0.0"})))
    plan = compile_template(tmp_path / "child.json", actions=ACTIONS)
    assert plan.order == ("t", "kept", "mid", "child")
    assert dict(plan.steps["t"].config) == {"name": "base", "opts": {"x": 9, "y": 7}}
    assert dict(plan.variables) == {"v": 1, "w": 2}


def test_inheritance_cycle_and_missing_base(tmp_path):
    (tmp_path / "a.yaml").write_text(json.dumps(template(step(10, "a"), name="a", extends="b")))
    (tmp_path / "b.yaml").write_text(json.dumps(template(step(10, "a"), name="b", extends="a")))
    with pytest.raises(TemplateError) as exc:
        compile_template(tmp_path / "a.yaml", actions=ACTIONS)
    assert "inheritance cycle: a -> b -> a" in str(exc.value)
    with pytest.raises(TemplateError) as exc:
        compile_template(template(step(10, "a"), extends="nowhere"), actions=ACTIONS)
    assert "base template 'nowhere' not found" in str(exc.value)


def test_seed_json_examples_load_and_compile():
    odoo = read_document(FIXTURES / "seed_odoo.json")  # comments and all
    # The seed's odoo.conf step puts {{ workspace.db_name }} in a quoted here-document, where
    # nothing expands (the seed's string replace made it code): refused, with the fix.
    with pytest.raises(TemplateError) as exc:
        compile_template(odoo, actions=SEED_ACTIONS)
    assert problems(exc) == ["Odoo 18.4 Development: step execute_custom_script: field 'action_config.script': "
                             "line 7: a {{ }} value cannot be used inside a quoted here-document "
                             "(<<'EOF' expands nothing: use <<EOF)"]
    conf = next(s for s in odoo["actions"] if s["action_name"] == "execute_custom_script")
    conf["action_config"]["script"] = conf["action_config"]["script"].replace("<< 'CONF'", "<< CONF")
    plan = compile_template(odoo, actions=SEED_ACTIONS)
    assert len(plan.order) == 10
    # the seed's Odoo template is sequential: one chain in (phase, sequence) order
    assert plan.global_config.parallel_execution_enabled is False
    assert plan.predecessors["create_postgresql_database"] == ("create_postgresql_user",)
    assert plan.steps["clone_git_repository_70"].condition.source == "workspace.ssh_public_key IS NOT NULL"
    assert "execute_custom_script" in plan.order

    base = read_document(FIXTURES / "seed_python_base.json")
    django = read_document(FIXTURES / "seed_django.json")
    plan = compile_template(django, actions=SEED_ACTIONS, templates=[base])
    assert [plan.steps[s].sequence_order for s in plan.order] == [10, 20, 30, 40]
    assert plan.name == "Django Development"


def test_bad_action_definition_is_reported():
    with pytest.raises(TemplateError) as exc:
        compile_(step(10, "a"), actions=[{"name": "Bad Name", "action_type": "telepathy"}])
    text = str(exc.value)
    assert "action Bad Name" in text and "execution_handler" in text and "telepathy" in text


def test_missing_python_handler_is_a_compile_error():
    # A trusted action's module is imported at compile time, so a missing function is found then.
    with pytest.raises(TemplateError) as exc:
        compile_template(template(step(10, "x")), trusted_actions=[action("x", handler="tests.helpers:does_not_exist")])
    assert "has a bad execution_handler: module 'tests.helpers' has no attribute 'does_not_exist'" in str(exc.value)
    # An untrusted one is never imported before its step runs: only a module that does not exist is found.
    with pytest.raises(TemplateError) as exc:
        compile_(step(10, "x"), actions=[action("x", handler="no_such_module_here:run")])
    assert "cannot import module 'no_such_module_here': no such module" in str(exc.value)
    compile_(step(10, "x"), actions=[action("x", handler="tests.helpers:does_not_exist")])


def test_plan_is_immutable():
    plan = compile_(step(10, "a"))
    with pytest.raises(Exception):
        plan.steps["a"] = None  # type: ignore[index]
    with pytest.raises(Exception):
        plan.steps["a"].id = "b"  # type: ignore[misc]


def test_render_order_keeps_field_order_and_puts_readers_after_what_they_read():
    from dagrun.compile.configs import render_order
    assert render_order({"b": "{{ vars.x }}", "plain": 1, "a": ["{{ vars.y }}"]}) == ("b", "a")
    order = render_order({"c": "{{ config.a }}-{{ config.b }}", "a": "{{ vars.x }}", "b": "{{ config.a }}",
                          "d": "{{ config.plain }}", "plain": 1})
    assert set(order) >= {"a", "b", "c", "d"} and order.index("a") < order.index("b") < order.index("c")
    with pytest.raises(ValueError, match="refers to itself"):
        render_order({"a": "{{ config.a }}"})


def test_steps_get_a_tuple_of_locks_even_from_an_action_built_with_a_list():
    from dagrun.spec import ActionSpec, Lock
    spec = ActionSpec(name="a", display_name="a", category="c", action_type="python_function",
                      execution_handler="tests.helpers:noop", locks=[Lock("apt")])
    plan = compile_template(template(step(10, "a", id="x"), step(20, "a", id="y", locks=["db"])), actions=[spec],
                            keep=False)
    assert plan.steps["x"].locks == (Lock("apt"),) and isinstance(plan.steps["x"].locks, tuple)
    assert plan.steps["y"].locks == (Lock("apt"), Lock("db"))


def test_dagrun_schema_extensions_are_refused_where_they_would_not_be_read():
    """x-secret, writeOnly and x-dagrun-* are read on top-level config
    properties only: a nested secret would be stored in clear and a nested
    shell field rendered as plain text, so the action is refused, with where."""
    from dagrun.compile.loader import extension_problems, standard_library
    from dagrun.spec import ActionSpec
    nested = {"type": "object", "properties": {
        "db": {"type": "object", "properties": {"password": {"type": "string", "x-secret": True}}},
        "hook": {"type": "array", "items": {"type": "string", "x-dagrun-format": "shell"}},
        "token": {"$ref": "#/$defs/secret"},
        "x-secret": {"type": "string"},  # a property of that name is no extension
        "script": {"type": "string", "x-dagrun-format": "shel"},
        "note": {"type": "string", "writeOnly": False}},
        "$defs": {"secret": {"type": "string", "writeOnly": True}},
        "x-dagrun-secret": True}
    with pytest.raises(TemplateError) as caught:
        compile_template(template(step(10, "a", id="x")), actions=[action("a", config_schema=nested)], keep=False)
    text = str(caught.value)
    assert "x-secret is read on a top-level property of config_schema only (found at " \
           "properties.db.properties.password); mark the field 'db' itself" in text
    assert "x-dagrun-format is read on a top-level property of config_schema only (found at properties.hook.items)" \
        in text
    assert "writeOnly is read on a top-level property of config_schema only (found at $defs.secret)" in text
    assert "x-dagrun-format at properties.script is 'shel'; expected one of shell, template-file, url" in text
    assert "unknown extension x-dagrun-secret (at the top)" in text
    assert "properties.x-secret" not in text and "properties.note" not in text
    # An ActionSpec given as an object is held to the same rule.
    spec = ActionSpec(name="b", display_name="b", category="c", action_type="python_function",
                      execution_handler="tests.helpers:noop", config_schema=nested)
    with pytest.raises(TemplateError, match="mark the field 'db' itself"):
        compile_template(template(step(10, "b", id="x")), actions=[spec], keep=False)
    # Every mapping is looked into, whatever holds it (helper-39 found these let through), and a top-level
    # property that takes its mark through a $ref is refused (dagrun reads the property's own keys).
    pw = {"type": "string", "x-secret": True}
    for where, schema in {
            "dependencies.user.properties.password": {"dependencies": {"user": {"properties": {"password": pw}}}},
            "extends.properties.password": {"extends": {"properties": {"password": pw}}},
            "type[0].properties.password": {"$schema": "http://json-schema.org/draft-03/schema#",
                                            "type": [{"properties": {"password": pw}}]},
            "properties.blob.contentSchema": {"properties": {"blob": {"contentSchema": pw}}},
            "components.pw": {"properties": {"password": {"$ref": "#/components/pw"}}, "components": {"pw": pw}},
            "properties.password takes x-secret through $ref #/properties/token": {
                "properties": {"password": {"$ref": "#/properties/token"}, "token": pw}},
            # (helper-40) through allOf/then, percent-encoded, an $id's URI, an anchor, an $id below the top
            "properties.a.allOf[0] takes x-secret through $ref": {
                "properties": {"a": {"allOf": [{"$ref": "#/properties/b"}]}, "b": pw}},
            "properties.a.then takes x-secret": {"properties": {"a": {"if": True, "then": {"$ref": "#/properties/b"}},
                                                                "b": pw}},
            "properties.a takes x-secret through $ref #/%70roperties/b": {
                "properties": {"a": {"$ref": "#/%70roperties/b"}, "b": pw}},
            "$ref 'urn:cfg#/properties/b' at properties.a is not a path in this schema": {
                "$id": "urn:cfg", "properties": {"a": {"$ref": "urn:cfg#/properties/b"}, "b": pw}},
            "$ref '#tok' at properties.a is not a path in this schema": {
                "properties": {"a": {"$ref": "#tok"}, "b": {**pw, "$anchor": "tok"}}},
            "properties.password takes x-secret through $ref #/properties%2Ftok": {  # (helper-41)
                "properties/tok": {"description": "decoy"},
                "properties": {"tok": {**pw, "minLength": 1}, "password": {"$ref": "#/properties%2Ftok"}}},
            "$id at properties.a: only the top of config_schema may name itself": {
                "properties": {"a": {"$id": "urn:a", "type": "string"}}}}.items():
        with pytest.raises(TemplateError, match=re.escape(where)):
            compile_template(template(step(10, "c", id="x")), actions=[action("c", config_schema=schema)], keep=False)
    data = {"properties": {"conf": {"type": "object", "default": {"x-secret": True}}, "x-secret": {"type": "string"},
                           "path": {"$ref": "#/$defs/path"}}, "$defs": {"path": {"type": "string"}}}
    assert extension_problems(data) == []  # data, property names and plain $refs are no marks
    # Marked where it is read, the same fields are fine; so is every shipped action.
    flat = {"type": "object", "properties": {"password": {"type": "string", "x-secret": True},
                                             "hook": {"type": "string", "x-dagrun-format": "shell"}}}
    plan = compile_template(template(step(10, "a", id="x", action_config={"password": "pw", "hook": "true"})),
                            actions=[action("a", config_schema=flat)], keep=False)
    assert plan.steps["x"].secret_fields == frozenset({"password"})
    assert {name: extension_problems(a.config_schema) for name, a in standard_library().items()
            if extension_problems(a.config_schema)} == {}


def test_an_action_schema_names_its_draft_only_at_the_top():
    """Below the top, jsonschema would check that part with its draft's
    stock validator, whose pattern lets "alice\\n" through "^[a-z]+$"."""
    nested = {"type": "object", "properties": {"user": {"$schema": "https://json-schema.org/draft/2020-12/schema",
                                                         "type": "string", "pattern": "^[a-z]+$"}}}
    with pytest.raises(TemplateError, match=r"\$schema is allowed only at the top of config_schema "
                                            r"\(found at properties.user\)"):
        compile_template(template(step(10, "a", id="x")), actions=[action("a", config_schema=nested)], keep=False)
    top = {**nested, "$schema": "https://json-schema.org/draft/2020-12/schema",
           "properties": {"user": {"type": "string", "pattern": "^[a-z]+$"}}}
    with pytest.raises(TemplateError, match="does not match"):
        compile_template(template(step(10, "a", id="x", action_config={"user": "alice\n"})),
                         actions=[action("a", config_schema=top)], keep=False)


def test_every_step_field_lands_in_its_own_place():
    """The compiler builds each StepSpec positionally (once per step, on
    the compile's hot path): every field ends up where it belongs."""
    custom = action("custom", locks=["dpkg"], check_first=True, config_schema={"type": "object", "properties": {
        "token": {"type": "string", "x-secret": True},
        "script": {"type": "string", "x-dagrun-format": "shell"},
        "note": {"type": "string"}}})
    plan = compile_template(template(
        step(10, "custom", id="up"),
        step(20, "custom", id="s", phase="post_setup", requires=["up"], skip_on_error=True, timeout_seconds=7,
             estimated_duration_seconds=3.5, locks=["db"], check_first=False, run_as="root", sandbox=False,
             condition_expression="workspace.id != ''",
             action_config={"token": "t", "script": "echo hi", "note": "{{ steps.up.result.x }}"})),
        trusted_actions=[custom])  # trusted: its steps may run as root
    s = plan.steps["s"]
    assert (s.id, s.sequence_order, s.action.name, s.phase) == ("s", 20, "custom", Phase.post_setup)
    assert dict(s.config) == {"token": "t", "script": "echo hi", "note": "{{ steps.up.result.x }}"}
    assert s.condition is not None and s.condition.source == "workspace.id != ''"
    assert s.skip_on_error is True and s.retry.max_attempts == 1
    assert (s.timeout_seconds, s.estimated_duration_seconds) == (7.0, 3.5)
    assert [lock.name for lock in s.locks] == ["dpkg", "db"] and s.check_first is False
    assert s.templated is True and s.config_order == ("note",)
    assert s.shell_fields == {"script"} and s.secret_fields == {"token"} and s.step_refs == {"up"}
    assert s.origin == plan.name and s.sandbox is False
    assert s.run_as == "root"
    up = plan.steps["up"]
    assert up.check_first is True and up.templated is False and up.step_refs == frozenset()
