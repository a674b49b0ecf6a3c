"""The ``dagrun`` command: parses options, calls :mod:`dagrun.api`, prints.

Errors are one clear message on stderr and an exit code, never a
traceback: 2 for bad input (a template, a workspace, an option), 3 when the
database cannot be reached or written, 1 for a run that failed, 130 for a
cancelled one. Options shared by several commands come from parent parsers,
so they read the same everywhere; ``-v`` and ``--log-json`` go anywhere.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..errors import ActionDefinitionError, DagrunError, InputError, StoreError, TemplateError
from ..util import LazyModule

# The engine is loaded by the commands that use it, not by `dagrun --help`.
api = LazyModule("dagrun.api")
render = LazyModule("dagrun.render")

EXIT_FAILED, EXIT_USAGE, EXIT_STORE, EXIT_CANCELLED = 1, 2, 3, 130
DESCRIPTION = """Provision developer workspaces from action-based templates: compile a
template to a dependency graph, run its independent steps in parallel,
record every attempt."""
EPILOG = """examples:
  dagrun run demo                        run the demo (records in SQLite)
  dagrun run demo --check                what would change, changing nothing
  dagrun plan django --set project_name=shop
                                        levels, critical path, estimate
  dagrun explain django venv             the effective step, with origins
  dagrun runs; dagrun show RUN_ID        history and one run's attempts

database: --db URL, else $DAGRUN_DATABASE_URL,
          else SQLite in ~/.local/share/dagrun/dagrun.db"""


# -- option values ------------------------------------------------------------------

def _pairs(items: Sequence[str] | None, what: str) -> dict[str, Any]:
    """``key=value`` pairs; values are read as YAML scalars (1, true, [a, b])."""
    import yaml
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"{what} expects KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            out[key.strip()] = value
    return out


def _secrets(items: Sequence[str] | None) -> dict[str, str]:
    """``--secret NAME=ENV_VAR``: the value comes from the environment, so it
    is never on a command line (visible to other users in ps)."""
    out = {}
    for item in items or ():
        name, sep, var = item.partition("=")
        if not sep or not name.strip() or not var.strip():
            raise InputError(f"--secret expects NAME=ENV_VAR, got {item!r}")
        if var.strip() not in os.environ:
            raise InputError(f"--secret {name}: environment variable {var.strip()} is not set")
        out[name.strip()] = os.environ[var.strip()]
    return out


def _workspace(args: argparse.Namespace) -> dict[str, Any] | None:
    """The workspace given on the command line (None when none was)."""
    if not (args.workspace or args.ws or getattr(args, "home", None)):
        return None
    from ..compile.loader import read_document
    from ..workspace import cli_workspace
    try:
        fields = dict(read_document(Path(args.workspace))) if args.workspace else {}
    except TemplateError as exc:  # (the file is read as documents are; it is no template)
        raise InputError(f"workspace file: {'; '.join(str(p) for p in exc.problems)}") from None
    typed = _pairs(args.ws, "--ws")
    # (read once: whether the home came from the file, which is data, is what _home_roots asks)
    args.home_from_file = bool(fields.get("home_dir")) and not getattr(args, "home", None) and "home_dir" not in typed
    fields.update(typed)
    return cli_workspace(fields, home=getattr(args, "home", None))


def _db(args: argparse.Namespace) -> str:
    return args.db or api.default_database_url()


def _home_roots(workspace: dict[str, Any], args: argparse.Namespace | None = None) -> list[str]:
    """Whoever types the command line is the operator: the home it names
    (--home, --ws home_dir=) or the CLI's default is allowed. A home_dir
    read from a --workspace FILE is data, as a fleet's file is (a form's
    export): it must be inside the allowed folders."""
    home = workspace.get("home_dir")
    if args is not None and getattr(args, "home_from_file", False):
        return []
    if not home:
        return []
    workspace["home_dir"] = home = _operator_home(home)
    return [os.path.dirname(home)]


def _operator_home(home: str) -> str:
    """A home the operator names, by its real path (resolved once: a symlink
    somebody else may point elsewhere later is not followed again). As
    root, the folders above its folder are checked by nobody else: every one
    from / down must be only root's to change."""
    from ..workspace import resolved_path
    real = resolved_path(home)
    if os.geteuid() == 0:
        from ..run.paths import root_only_problem
        existing = os.path.dirname(real)
        while not os.path.lexists(existing):  # (its missing end is made by root)
            existing = os.path.dirname(existing)
        problem = root_only_problem(existing)
        if problem:
            raise InputError(f"the workspace home {home} is in a folder another user could change: {problem}; "
                             "as root, give a home (--home) below folders only root can change")
    return real


# -- running ------------------------------------------------------------------------

def _run_with_progress(args: argparse.Namespace, start: Callable[..., Any], home: str | None) -> int:
    """Run ``start(observers=..., runner_hook=...)`` with progress and signals
    that cancel cleanly; print the summary; return the exit code."""
    from .progress import Progress, print_summary
    console = _console(stderr=args.json)
    from ..run.interrupts import PendingCancel
    pending = PendingCancel()  # not running yet (compiling, claiming): cancelled as soon as it exists

    def on_signal(signum: int, _frame: Any) -> None:
        pending.interrupt("interrupted" if signum == signal.SIGINT else "terminated")

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        result = start(observers=[Progress(console)], runner_hook=pending.hook)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if args.json:
        print(json.dumps(result.as_dict(), indent=2, default=str))
    else:
        print_summary(console, result, home=home)
    if result.status.value == "cancelled":
        return EXIT_CANCELLED
    return 0 if result.success else EXIT_FAILED


def _console(stderr: bool = False):
    from rich.console import Console
    return Console(stderr=stderr, highlight=False, soft_wrap=False)


def _run_options(args: argparse.Namespace) -> dict[str, Any]:
    return dict(max_workers=args.workers, actions=args.actions, trusted_actions=args.trusted_actions,
                allow_sudo=args.allow_sudo, secrets=_secrets(args.secret), sandbox=not args.no_sandbox,
                allow_network=args.allow_network or (), adopt_users=args.adopt_user or (),
                executor=args.executor)


def cmd_run(args: argparse.Namespace) -> int:
    from ..workspace import cli_workspace
    workspace = _workspace(args) or cli_workspace({})
    url = _db(args)
    options = _run_options(args)
    return _run_with_progress(args, lambda **kw: api.run_template(
        args.template, workspace, database_url=url, variables=_pairs(args.set, "--set"),
        env_passthrough=args.env_passthrough or (), check=args.check, home_roots=_home_roots(workspace, args),
        **options, **kw), workspace.get("home_dir"))


def _recorded_home_roots(url: str, run_ids: list[str]) -> list[str]:
    """Whoever types ``dagrun resume`` is the operator: the homes the runs
    worked in are allowed again."""
    homes = [api.get_run(run_id, database_url=url).get("home_dir") for run_id in run_ids]
    return sorted({os.path.dirname(_operator_home(h)) for h in homes if h})


def cmd_resume(args: argparse.Namespace) -> int:
    url = _db(args)
    options = _run_options(args)
    args.run_id = api.find_run(args.run_id, database_url=url)  # a person may type a prefix; the API takes whole ids
    roots = _recorded_home_roots(url, [args.run_id])
    return _run_with_progress(args, lambda **kw: api.resume(
        args.run_id, database_url=url, from_step=args.from_step, home_roots=roots,
        journal_checked=args.journal_checked, **options, **kw), None)


def cmd_cancel(args: argparse.Namespace) -> int:
    run_id = api.cancel_run(api.find_run(args.run_id, database_url=_db(args)), database_url=_db(args), reason=f"cancelled by {args.by}" if args.by
                            else "cancelled from the command line")
    if api.closed_as_interrupted(run_id, database_url=_db(args)):  # (nobody was left to ask)
        print(f"run {run_id}: its process had stopped\nwithout ending it: closed it as interrupted\n"
              f"(dagrun resume {run_id[:8]} goes on from where it stopped)")
        return 0
    print(f"asked run {run_id} to stop\n(it stops within a second or two; dagrun watch {run_id[:8]} follows it)")
    return 0


def cmd_fleet(args: argparse.Namespace) -> int:
    from ..fleet import read_workspaces, resume_fleet, run_fleet
    from ..workspace import cli_workspace
    from .progress import FleetProgress, print_fleet_summary
    if bool(args.template) == bool(args.resume):
        raise InputError("dagrun fleet needs a TEMPLATE and --workspaces FILE, or --resume FLEET_ID")
    url = _db(args)
    options = _run_options(args)
    console = _console(stderr=args.json)
    runners: list[Any] = []
    reason: list[str] = []

    def hook(runner: Any) -> None:
        runners.append(runner)
        if reason:
            runner.cancel(reason[0])

    def on_signal(signum: int, _frame: Any) -> None:
        reason.append("interrupted" if signum == signal.SIGINT else "terminated")
        for runner in list(runners):
            runner.interrupt(reason[0])  # not cancel(): it takes locks this thread may hold

    if args.resume:
        args.resume = api.find_fleet(args.resume, database_url=url)
        roots = _recorded_home_roots(url, [r["run_id"] for r in api.list_runs(database_url=url, fleet=args.resume,
                                                                              limit=100_000)])
        given = read_workspaces(args.workspaces) if args.workspaces else None  # for what was not stored
        start = lambda progress: resume_fleet(  # noqa: E731
            args.resume, database_url=url, concurrency=args.concurrency, observers_for=progress, runner_hook=hook,
            home_roots=roots, workspaces=given, journal_checked=args.journal_checked, **options)
        total = None
    else:
        if not args.workspaces:
            raise InputError("dagrun fleet TEMPLATE needs --workspaces FILE (.jsonl, .json, .yaml or .csv)")
        # The file is data (sign-ups, a form's export), not the operator typing: a home_dir in it must be
        # inside the allowed folders ($DAGRUN_WORKSPACE_ROOTS); only the CLI's own default homes
        # (./dagrun-workspaces/<id>) are allowed on its behalf.
        workspaces, allowed = [], set()
        for number, ws in enumerate(read_workspaces(args.workspaces), 1):
            if ws.get("id") in (None, ""):  # (the CLI's one workspace is "local" by default; a fleet's are named)
                raise InputError(f"{args.workspaces}: workspace {number} has no id")
            if ws.get("home_dir"):
                workspaces.append(dict(ws))
            else:
                workspaces.append(cli_workspace(ws))
                allowed.update(_home_roots(workspaces[-1]))
        roots = sorted(allowed)
        total = len(workspaces)
        start = lambda progress: run_fleet(  # noqa: E731
            args.template, workspaces, database_url=url, concurrency=args.concurrency,
            variables=_pairs(args.set, "--set"), observers_for=progress, runner_hook=hook, home_roots=roots,
            **options)
    display = FleetProgress(console, total or 0)
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        fleet = start(lambda ws_id: [display.observer(ws_id)])
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if args.json:
        print(json.dumps(fleet.as_dict(), indent=2, default=str))
    elif args.resume and not fleet.order:
        print(f"nothing to resume in fleet {fleet.fleet_id}:\nevery workspace succeeded or is running elsewhere")
    else:
        print_fleet_summary(console, fleet)
    return 0 if fleet.success else EXIT_FAILED


# -- compile-only commands -----------------------------------------------------------

def cmd_validate(args: argparse.Namespace) -> int:
    failed = 0
    workspace = _workspace(args)
    for item, error in api.validate(args.templates, actions=args.actions, trusted_actions=args.trusted_actions,
                                    workspace=workspace, variables=_pairs(args.set, "--set"), database_url=_db(args),
                                    home_roots=_home_roots(workspace, args) if workspace else ()):
        if error is None:
            print(f"{item}: ok")
            note = "" if workspace else _fields_to_give(item, args)
            if note:
                print(note, file=sys.stderr)
        else:
            failed += 1
            text = str(error)
            print(text if text.startswith(f"{item}: ") else f"{item}: {text}", file=sys.stderr)
    return EXIT_USAGE if failed else 0


def _fields_to_give(item: str, args: argparse.Namespace) -> str:
    """What validate without --ws could not check: the workspace fields the
    template reads (a run without them fails on their values)."""
    try:
        plan = api.plan(item, actions=args.actions, trusted_actions=args.trusted_actions,
                        variables=_pairs(args.set, "--set"), database_url=_db(args), estimates=False)
    except (InputError, TemplateError):  # an action file, or not a template: nothing to say
        return ""
    fields = sorted(f for f in plan.workspace_fields if f not in ("id", "home_dir"))
    if not fields:
        return ""
    listed = textwrap.fill(", ".join(fields), 76, initial_indent="    ", subsequent_indent="    ")
    return (f"  not checked without a workspace, the values of its fields:\n{listed}\n"
            f"  (--ws {fields[0]}=VALUE checks them as a run would)")


def cmd_plan(args: argparse.Namespace) -> int:
    plan = api.plan(args.template, actions=args.actions, trusted_actions=args.trusted_actions,
                    variables=_pairs(args.set, "--set"), database_url=_db(args))
    workers = args.workers or plan.global_config.max_workers or 8
    if args.json:
        print(json.dumps(render.plan_dict(plan, workers), indent=2))
        return 0
    for line in render.plan_lines(plan, workers):
        print(line)
    return 0


_GRAPH_SUFFIXES = {".svg": "svg", ".png": "png", ".mmd": "mermaid", ".mermaid": "mermaid", ".dot": "dot", ".gv": "dot"}


def cmd_graph(args: argparse.Namespace) -> int:
    statuses = None
    template: Any = args.template
    if args.run:
        from ..store.history import step_statuses
        snapshot, statuses = step_statuses(_db(args), args.run)
        template = snapshot if args.template == "-" else args.template
    elif args.template == "-":
        raise InputError("give a template, or --run RUN_ID with '-' to draw the run's own template")
    plan = api.plan(template, actions=args.actions, trusted_actions=args.trusted_actions,
                    variables=_pairs(args.set, "--set"), database_url=_db(args) if args.template != "-" else None)
    from ..run.paths import own_program
    suffix = Path(args.output).suffix.lower() if args.output else ""
    fmt = args.format or _GRAPH_SUFFIXES.get(suffix, "dot")
    if fmt == "mermaid":
        data: bytes = render.to_mermaid(plan, statuses).encode()
    elif fmt == "svg" and not own_program("dot"):
        data = render.to_svg(plan, statuses).encode()  # dagrun's own drawing (the web page's)
    else:
        dot = render.to_dot(plan, statuses)
        data = dot.encode() if fmt == "dot" else render.render_image(dot, fmt)
    if args.output:
        _write_output(args.output, data, replace=True)
        print(f"wrote {args.output} ({fmt})", file=sys.stderr)
    elif fmt == "png":
        raise InputError("--format png writes binary data: give --output FILE")
    else:
        sys.stdout.write(data.decode())
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    explained = api.explain(args.template, step=args.step, actions=args.actions,
                            trusted_actions=args.trusted_actions, variables=_pairs(args.set, "--set"),
                            database_url=_db(args))
    if args.json:
        print(json.dumps(explained, indent=2, default=str))
        return 0
    for line in render.explain_lines(explained):
        print(line)
    return 0


def cmd_templates(args: argparse.Namespace) -> int:
    found = api.list_templates(_db(args))
    if args.json:
        print(json.dumps(found, indent=2))
        return 0
    width = max((len(t["name"]) for t in found), default=4)
    for t in found:
        base = f" (extends {t['extends']})" if t["extends"] else ""
        print(f"{t['name']:<{width}}  {t['version']:<8} {t['source']:<6} {t['steps']:>3} steps  "
              f"{_first_line(t['description'])}{base}")
    return 0


def cmd_actions(args: argparse.Namespace) -> int:
    library = api.list_actions(args.actions, args.trusted_actions)
    if args.name:
        return _show_action(library, args.name, args.json)
    if args.json:
        print(json.dumps([{"name": a.name, "display_name": a.display_name, "category": a.category,
                           "action_type": a.action_type, "source": a.source, "library": a.library}
                          for a in library.values()], indent=2))
        return 0
    for action in sorted(library.values(), key=lambda a: (a.category, a.name)):
        print(f"{action.category:<14} {action.name:<28} {action.display_name}")
    print("\nwhat an action's config takes: dagrun actions NAME", file=sys.stderr)
    return 0


def _show_action(library: Mapping[str, Any], name: str, as_json: bool) -> int:
    """One action: what it does, and the fields its action_config takes."""
    import difflib
    action = library.get(name)
    if action is None:
        near = difflib.get_close_matches(name, list(library), n=1)
        raise InputError(f"no action {name!r}" + (f": did you mean {near[0]!r}?" if near else
                                                   " (dagrun actions lists them)"))
    from ..compile.configs import secret_fields
    from ..spec import MASK
    schema = action.config_schema or {}
    secret = secret_fields(schema)
    defaults = {**{k: v.get("default") for k, v in (schema.get("properties") or {}).items()
                   if isinstance(v, Mapping) and "default" in v}, **dict(action.default_config)}
    shown = {k: MASK if k in secret and v not in (None, "") else v for k, v in defaults.items()}
    if as_json:
        print(json.dumps({"name": action.name, "display_name": action.display_name, "category": action.category,
                          "description": action.description, "action_type": action.action_type,
                          "config_schema": schema, "default_config": shown,
                          "requires_actions": list(action.requires_actions), "max_retries": action.max_retries,
                          "timeout_seconds": action.timeout_seconds}, indent=2, default=str))
        return 0
    print(f"{action.name}: {action.display_name} ({action.category})")
    if action.description:
        print(textwrap.fill(action.description, 78))
    required = set(schema.get("required") or ())
    fields = schema.get("properties") or {}
    print("\naction_config:" if fields else "\naction_config: takes no fields")
    width = min(max((len(k) for k in fields), default=0), 24)
    for key, field in fields.items():
        field = field if isinstance(field, Mapping) else {}
        kind = field.get("type", "any")
        about = [" or ".join(kind) if isinstance(kind, list) else str(kind)]
        if key in required:
            about.append("required")
        if key in secret:
            about.append("secret")
        if "enum" in field:
            about.append("one of " + ", ".join(map(str, field["enum"])))
        if key in shown:
            about.append(f"default {json.dumps(shown[key], default=str)}")
        line = f"  {key:<{width}}  {'; '.join(about)}"
        print(line)
        if field.get("description"):
            print(textwrap.fill(str(field["description"]), 78, initial_indent=" " * (width + 4),
                                subsequent_indent=" " * (width + 4)))
    extras = []
    if action.requires_actions:
        extras.append(f"needs an earlier step of: {', '.join(action.requires_actions)}")
    extras.append(f"retries {action.max_retries}, timeout {action.timeout_seconds:g} s")
    print("\n" + "\n".join(extras))
    return 0


def _write_output(path: str, data: bytes, *, replace: bool, dir_fd: int | None = None) -> None:
    """A file the command writes: never through a symlink at its name (beside
    a user's file, the user may have put one there); one clear error."""
    from ..errors import PermanentError
    from ..run.paths import write_output
    try:
        write_output(path, data, replace=replace, dir_fd=dir_fd)
    except FileExistsError:
        raise InputError(f"{path} exists (use --force to overwrite)") from None
    except PermanentError as exc:
        raise InputError(str(exc)) from None
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror or exc}") from None


def cmd_migrate_legacy(args: argparse.Namespace) -> int:
    source = Path(args.file)
    # The folder is opened once: the source is read, and its default output written, in that folder
    # (a user who owns it cannot swap it for a link elsewhere between the two).
    try:
        folder = os.open(source.parent, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise InputError(f"cannot read {source}: {exc.strerror or exc}") from None
    try:
        return _migrate_legacy(args, source, folder)
    finally:
        os.close(folder)


def _migrate_legacy(args: argparse.Namespace, source: Path, folder: int) -> int:
    import yaml

    from ..compile import compile_template
    from ..compile.legacy import convert, is_legacy
    from ..compile.loader import read_document
    doc = read_document(source, dir_fd=folder)
    if not is_legacy(doc):
        raise InputError(f"{source} is not a legacy monolithic config (it has no legacy keys, or has actions)")
    template = convert(doc, name=args.name)
    compile_template(template, actions=args.actions)  # the result must validate
    output = Path(args.output) if args.output else source.with_name(source.stem + ".template.yaml")
    _write_output(str(output), yaml.safe_dump(template, sort_keys=False, allow_unicode=True).encode(),
                  replace=args.force, dir_fd=None if args.output else folder)
    print(f"wrote {output}: {len(template['actions'])} steps")
    return 0


# -- the store ---------------------------------------------------------------------------

def cmd_runs(args: argparse.Namespace) -> int:
    runs = api.list_runs(database_url=_db(args), workspace=args.ws_id, status=args.status, limit=args.limit)
    if args.json:
        print(json.dumps(runs, indent=2))
        return 0
    if not runs:
        print("no runs", file=sys.stderr)
    for r in runs:
        started = (r["started_at"] or "-")[:19].replace("T", " ")
        print(f"{r['run_id'][:8]}  {started:<19}  {r['status']:<11} {_cut(r['workspace_id'], 14):<14} "
              f"{_cut(r['template'], 16)} {r['version']}  {r['completed']}/{r['total']} done"
              + (f", {r['failed']} failed" if r["failed"] else ""))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    run = api.get_run(api.find_run(args.run_id, database_url=_db(args)), database_url=_db(args), output=args.output)
    if args.json:
        print(json.dumps(run, indent=2, default=str))
        return 0
    print(f"run {run['run_id']}: {run['template']} {run['version']} for workspace {run['workspace_id']}: "
          f"{run['status']}" + (" (a check)" if run.get("mode") == "check" else ""))
    if run["error"]:
        print(f"  {run['error']}")
    unattempted = [s for s in run.get("steps") or () if not s["attempts"]
                   and not any(a["step_id"] == s["step_id"] for a in run["attempts"])]
    width = max((len(a["step_id"]) for a in [*run["attempts"], *unattempted]), default=4)
    for a in run["attempts"]:
        duration = "" if a["duration_seconds"] is None else f"{a['duration_seconds']:.2f}s"
        number = "-" if a["attempt"] == 0 else f"{a['attempt']}"
        print(f"  {a['step_id']:<{width}}  attempt {number:<2} {a['status']:<11} {duration:>8}"
              + (f"  {a['error']}" if a["error"] else ""))
        if args.output and a.get("output"):
            for line in a["output"].rstrip().splitlines():
                print(f"      | {line}")
    for s in unattempted:  # steps never tried (not started after a failure, waiting): shown too
        why = "; ".join(w["text"] for w in s.get("waiting_for") or ()) or s.get("error") or ""
        print(f"  {s['step_id']:<{width}}  {'':<10} {s['status'].replace('_', ' '):<11}" + (f"  {why}" if why else ""))
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    final = "running"
    run_id = api.find_run(args.run_id, database_url=_db(args))
    for event in api.watch_run(run_id, database_url=_db(args), timeout=args.timeout):
        if args.json:  # one write per line: a reader of the pipe never sees half a line (even unbuffered)
            sys.stdout.write(json.dumps(event, default=str) + "\n")
            sys.stdout.flush()
        elif event["event"] == "attempt":
            error = f"  {event['error']}" if event["error"] else ""
            print(f"{event['step_id']}  attempt {event['attempt']}: {event['status']}{error}", flush=True)
        elif event["event"] == "run":
            print(f"run {event['run_id']} {event['status']}" + (f": {event['error']}" if event["error"] else ""),
                  flush=True)
        elif event["event"] == "timeout":
            print(f"still running after {args.timeout:g} s", file=sys.stderr)
        if event["event"] == "run":
            final = event["status"]
    return 0 if final == "succeeded" else EXIT_FAILED


def cmd_db(args: argparse.Namespace) -> int:
    from ..store.engine import describe_url
    if args.db_command == "sql":
        sys.stdout.write(api.database_sql(args.dialect))
        return 0
    if args.db_command == "recover":
        from ..locations import journal_dir
        report = api.recover_journal(args.journal, database_url=args.db)
        if not report:
            print(f"nothing to recover in {journal_dir()}")
        failed = 0
        for path, applied, error in report:
            if error:
                failed += 1
                print(f"{path}: {applied} batch(es) replayed, stopped: {error}", file=sys.stderr)
            else:
                print(f"{path}: {applied} batch(es) replayed")
        return EXIT_FAILED if failed else 0
    url = _db(args)
    print(f"{describe_url(url)}: at revision {api.upgrade_database(url)}")
    return 0


def cmd_seed(args: argparse.Namespace) -> int:
    from ..store.engine import describe_url
    url = _db(args)
    counts = api.seed(database_url=url, actions=args.actions, templates=args.templates or None)
    print(f"{describe_url(url)}: {counts['actions']} actions, {counts['templates']} templates "
          f"({counts['steps']} steps) stored")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from ..web.serve import serve, token_from_environment, token_from_file
    except ImportError:  # dagrun.web imports Flask
        raise InputError("dagrun serve needs the web extra: pip install 'dagrun[web]'") from None
    token = token_from_file(args.token_file) if args.token_file else args.token or token_from_environment()
    serve(host=args.host, port=args.port, token=token, threads=args.threads, database_url=_db(args),
          actions=args.actions, trusted_actions=args.trusted_actions, allow_network=args.allow_network or (),
          sandbox=not args.no_sandbox, allowed_hosts=args.allowed_host or (),
          allow_inline_templates=args.allow_inline_templates)
    return 0


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


# -- the parser ------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    # Options that go anywhere: on the main parser and on every subcommand. SUPPRESS keeps a
    # subcommand's default from overwriting what was given before the subcommand.
    everywhere = argparse.ArgumentParser(add_help=False)
    everywhere.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                            help="log more (-v: info, -vv: debug) to stderr")
    everywhere.add_argument("--log-json", action="store_true", default=argparse.SUPPRESS,
                            help="log as JSON lines (the default when stderr is not a terminal)")
    db = argparse.ArgumentParser(add_help=False)
    db.add_argument("--db", metavar="URL",
                    help="database URL (default: $DAGRUN_DATABASE_URL, else a SQLite file in dagrun's data folder)")
    actions = argparse.ArgumentParser(add_help=False)
    actions.add_argument("--actions", action="append", metavar="PATH",
                         help="more action definitions (a file or folder; may repeat): user-defined, sandboxed")
    actions.add_argument("--trusted-actions", action="append", metavar="PATH",
                         help="the operator's own action definitions, trusted like the standard library")
    variables = argparse.ArgumentParser(add_help=False)
    variables.add_argument("--set", action="append", metavar="KEY=VALUE",
                           help="a template variable (vars.KEY); the template must declare it; may repeat")
    workspace = argparse.ArgumentParser(add_help=False)
    workspace.add_argument("--workspace", metavar="FILE", help="the workspace as a JSON or YAML file")
    workspace.add_argument("--ws", action="append", metavar="KEY=VALUE",
                           help="a workspace field (id, name, linux_username, db_name, ...); may repeat")
    running = argparse.ArgumentParser(add_help=False)
    running.add_argument("--workers", type=int, metavar="N", help="the most steps running at once (default 8)")
    running.add_argument("--allow-sudo", action="store_true",
                         help="when not root, run root-only actions through sudo -n")
    running.add_argument("--secret", action="append", metavar="NAME=ENV_VAR",
                         help="a secret variable vars.NAME, read from the environment variable ENV_VAR; masked "
                              "everywhere and never stored; may repeat")
    running.add_argument("--no-sandbox", action="store_true",
                         help="run user-defined actions without bubblewrap (and, as root, as root)")
    running.add_argument("--allow-network", action="append", metavar="ACTION",
                         help="let this user-defined action use the network it asks for; may repeat")
    running.add_argument("--adopt-user", action="append", metavar="NAME",
                         help="let the workspace run as this existing Linux account, which create_linux_user did "
                              "not make for it ('*': any non-system account); may repeat")
    running.add_argument("--executor", metavar="URL",
                         help="run the attempts on a Dask cluster (tcp://host:8786; pip install 'dagrun[dask]'); "
                              "the default is a thread pool in this process")
    running.add_argument("--json", action="store_true", help="print the result as JSON (progress goes to stderr)")

    parser = argparse.ArgumentParser(prog="dagrun", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, parents=[everywhere])
    parser.add_argument("--version", action=_VersionAction)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, func: Callable[[argparse.Namespace], int], help: str,
                *parents: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".",
                           parents=[everywhere, *parents])
        p.set_defaults(func=func)
        return p

    template_help = "a template file, or the name of a seed or stored template (dagrun templates)"
    run = command("run", cmd_run, "run a template for a workspace", actions, variables, workspace, running, db)
    run.add_argument("template", help=template_help)
    run.add_argument("--home", metavar="DIR", help="the workspace home (default: ./dagrun-workspaces/ID)")
    run.add_argument("--check", action="store_true",
                     help="change nothing: each step's validation says whether it would change anything")
    run.add_argument("--env", action="append", metavar="NAME", dest="env_passthrough",
                     help="pass this environment variable to steps (env.NAME); steps see only PATH, LANG, LC_*, "
                          "TZ, TERM and the names the template declares otherwise; may repeat")

    fleet = command("fleet", cmd_fleet, "run a template for many workspaces (or resume a fleet's failed ones)",
                    actions, variables, running, db)
    fleet.add_argument("template", nargs="?", help=template_help)
    fleet.add_argument("--workspaces", metavar="FILE", help="the workspaces: .jsonl, .json or .yaml (a list of "
                                                            "objects), or .csv (a header row of field names); "
                                                            "with --resume, the same file gives again the fields "
                                                            "that were not stored (a secret field read them)")
    fleet.add_argument("--concurrency", type=int, metavar="N", help="workspaces running at once (default: all)")
    fleet.add_argument("--resume", metavar="FLEET_ID", help="resume the runs of this fleet that did not succeed")
    fleet.add_argument("--journal-checked", action="store_true",
                       help="with --resume: runs that last ran on another host had their journal replayed there")

    cancel = command("cancel", cmd_cancel, "stop a running run, wherever it runs (it can be resumed)", db)
    cancel.add_argument("run_id", help="a run id, or an unambiguous prefix of one")
    cancel.add_argument("--by", metavar="WHO", help="who asks, kept in the run's error")

    resume = command("resume", cmd_resume, "continue a failed, cancelled or interrupted run", actions, running, db)
    resume.add_argument("run_id", help="a run id, or an unambiguous prefix of one")
    resume.add_argument("--from", dest="from_step", metavar="STEP", help="also run STEP and its downstream again")
    resume.add_argument("--journal-checked", action="store_true",
                        help="the run last ran on another host, whose journal was replayed or is empty")

    validate = command("validate", cmd_validate, "check templates and action definitions; runs nothing",
                       actions, variables, workspace, db)
    validate.add_argument("templates", nargs="+", metavar="TEMPLATE",
                          help="template or action files, or template names")
    validate.add_argument("--home", metavar="DIR", help="the workspace home, checked as run checks it")

    plan = command("plan", cmd_plan, "show levels, conflicts, critical path and estimate; runs nothing",
                   actions, variables, db)
    plan.add_argument("template", help=template_help)
    plan.add_argument("--workers", type=int, metavar="N", help="the workers to estimate for (default 8)")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")

    graph = command("graph", cmd_graph, "draw the dependency graph (dot, mermaid, svg, png)", actions, variables, db)
    graph.add_argument("template", help=template_help + "; '-' with --run: the run's own")
    graph.add_argument("--format", choices=("dot", "mermaid", "svg", "png"),
                       help="output format (default: from --output's suffix, else dot; png needs graphviz's dot, "
                            "svg uses it when installed)")
    graph.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    graph.add_argument("--run", metavar="RUN_ID", help="colour the steps by this run's statuses")

    explain = command("explain", cmd_explain, "the effective template, with where each value came from",
                      actions, variables, db)
    explain.add_argument("template", help=template_help)
    explain.add_argument("step", nargs="?", help="only this step")
    explain.add_argument("--json", action="store_true", help="print it as JSON")

    templates = command("templates", cmd_templates, "list the seed templates and those stored in the database", db)
    templates.add_argument("--json", action="store_true", help="print them as JSON")

    listed = command("actions", cmd_actions, "list the action library, or what one action's config takes",
                     actions)
    listed.add_argument("name", nargs="?", metavar="NAME", help="one action: its fields (action_config)")
    listed.add_argument("--json", action="store_true", help="print it as JSON")

    runs = command("runs", cmd_runs, "the run history", db)
    runs.add_argument("--workspace", dest="ws_id", metavar="ID", help="only this workspace's runs")
    runs.add_argument("--status", choices=("running", "interrupted", "succeeded", "failed", "cancelled"),
                      help="only runs so (interrupted: its process stopped without ending it)")
    runs.add_argument("--limit", type=int, default=50, metavar="N", help="at most N runs (default 50)")
    runs.add_argument("--json", action="store_true", help="print them as JSON")

    show = command("show", cmd_show, "one run: its steps, attempts, durations and errors", db)
    show.add_argument("run_id", help="a run id, or an unambiguous prefix of one")
    show.add_argument("--output", action="store_true", help="include each attempt's output")
    show.add_argument("--json", action="store_true", help="print it as JSON")

    watch = command("watch", cmd_watch, "follow a run live, from another terminal", db)
    watch.add_argument("run_id", help="a run id, or an unambiguous prefix of one")
    watch.add_argument("--timeout", type=float, metavar="SECONDS", help="give up after this long")
    watch.add_argument("--json", action="store_true", help="one JSON object per line")

    database = command("db", cmd_db, "the database: schema, SQL, journal")
    db_sub = database.add_subparsers(dest="db_command", required=True, metavar="DB_COMMAND")
    db_sub.add_parser("upgrade", help="create or migrate dagrun's tables", parents=[everywhere, db])
    recover = db_sub.add_parser("recover", help="replay records journalled while the database was unreachable",
                                parents=[everywhere])
    recover.add_argument("journal", nargs="?", help="one journal file (default: every one)")
    recover.add_argument("--db", metavar="URL", help="the database to replay into (the journal keeps no password)")
    sql = db_sub.add_parser("sql", help="print the DDL of every migration, offline", parents=[everywhere])
    sql.add_argument("--dialect", default="postgresql", choices=("postgresql", "sqlite"), help="SQL dialect")

    seed = command("seed", cmd_seed, "store the action library and templates in the database (default: the seeds)",
                   actions, db)
    seed.add_argument("templates", nargs="*", metavar="TEMPLATE_FILE", help="templates to store")

    serve = command("serve", cmd_serve, "the HTTP API and the web page (runs, graphs, the template editor)",
                    actions, db)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1); anything "
                                                           "but loopback needs a token given on purpose")
    serve.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    serve.add_argument("--token-file", metavar="FILE",
                       help="the token, from a file (Authorization: Bearer TOKEN; a browser opens "
                            "/login?token=TOKEN once); default $DAGRUN_TOKEN, else a new one printed at start")
    serve.add_argument("--token", help=argparse.SUPPRESS)  # visible to every user in ps: --token-file instead
    serve.add_argument("--allowed-host", action="append", metavar="NAME",
                       help="a host name the service answers to besides loopback and --host; may repeat")
    serve.add_argument("--allow-inline-templates", action="store_true",
                       help="let a run request carry its own template document (a template runs code, as root "
                            "for run_as: root steps: only for callers you would give root)")
    serve.add_argument("--threads", type=int, default=64, help="worker threads; each live event stream holds one "
                                                               "(default 64)")
    serve.add_argument("--allow-network", action="append", metavar="ACTION",
                       help="let this user-defined action use the network it asks for; may repeat")
    serve.add_argument("--no-sandbox", action="store_true",
                       help="run user-defined actions without bubblewrap (and, as root, as root)")

    legacy = command("migrate-legacy", cmd_migrate_legacy, "convert a monolithic legacy config to a template",
                     actions)
    legacy.add_argument("file", help="the legacy JSON or YAML config")
    legacy.add_argument("-o", "--output", metavar="FILE", help="default: FILE.template.yaml beside it")
    legacy.add_argument("--name", help="the template's name (default: the config's)")
    legacy.add_argument("--force", action="store_true", help="overwrite the output")
    for quiet in (validate, plan, graph, explain, templates, listed, legacy):
        quiet.set_defaults(logs=False)  # they only compile or list
    return parser


class _VersionAction(argparse.Action):
    """``--version``: the installed version is looked up only when asked
    (importlib.metadata costs every other command 15 ms)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help="print the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *_args: Any) -> None:
        from ..util import package_version
        print(f"dagrun {package_version()}")
        parser.exit()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    verbose = getattr(args, "verbose", 0)
    if getattr(args, "logs", True) or verbose:  # commands that only compile log nothing: no logging set-up to load
        from ..run.logs import configure
        configure(json=True if getattr(args, "log_json", False) else None,
                  level=(logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)])
    for option in ("workers", "limit", "concurrency", "threads"):
        if getattr(args, option, None) is not None and getattr(args, option) < 1:
            parser.error(f"--{option} must be at least 1")
    try:
        return args.func(args)
    except ActionDefinitionError as exc:
        print(f"dagrun: invalid action definition: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except TemplateError as exc:
        print(f"dagrun: invalid template: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except StoreError as exc:
        print(f"dagrun: {exc}", file=sys.stderr)
        return EXIT_STORE
    except DagrunError as exc:
        print(f"dagrun: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
