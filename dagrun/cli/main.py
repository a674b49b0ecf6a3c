"""The ``dagrun`` command: parses, checks, calls the library, prints.

Errors are one clear message on stderr and a non-zero exit code (2 for bad
input, 1 for a failed run, 130 for a cancelled one), never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any, Sequence

import yaml

from .. import render
from ..errors import DagrunError, InputError, StoreError, TemplateError
from ..compile.loader import read_document

EXIT_FAILED, EXIT_USAGE, EXIT_STORE, EXIT_CANCELLED = 1, 2, 3, 130


def _pairs(items: Sequence[str] | None, what: str) -> dict[str, Any]:
    """``key=value`` pairs; values are read as YAML scalars (1, true, [a, b])."""
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"{what} expects key=value, got {item!r}")
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


def _workspace(args: argparse.Namespace) -> dict[str, Any]:
    workspace: dict[str, Any] = {}
    if args.workspace:
        workspace.update(read_document(Path(args.workspace)))
    workspace.update(_pairs(args.ws, "--ws"))
    workspace.setdefault("id", "local")
    if args.home:
        workspace["home_dir"] = args.home
    if not workspace.get("home_dir") and not (workspace.get("linux_username") and os.geteuid() == 0):
        # Never provision the invoking user's real home by surprise.
        from ..workspace import slug
        workspace["home_dir"] = str(Path("dagrun-workspaces") / slug(workspace["id"]))
    if workspace.get("home_dir"):
        workspace["home_dir"] = str(Path(os.path.expanduser(str(workspace["home_dir"]))).absolute())
    return workspace


def _console(stderr: bool = False):
    from rich.console import Console
    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def _run_with_progress(args: argparse.Namespace, start: Any, url: str, home: str | None) -> int:
    """Run ``start(observers=..., runner_hook=...)`` with progress, signals
    that cancel cleanly, and the summary; returns the exit code."""
    from .progress import Progress, summary_table, wall
    from ..store.engine import describe_url

    console = _console(stderr=args.json)
    holder: dict[str, Any] = {}

    def on_signal(signum: int, _frame: Any) -> None:
        reason = "interrupted" if signum == signal.SIGINT else "terminated"
        runner = holder.get("runner")
        if runner is None:  # not running yet (compiling, claiming): cancel it as soon as it exists
            holder["cancel"] = reason
        else:
            runner.cancel(reason)

    def hook(runner: Any) -> None:
        holder["runner"] = runner
        if "cancel" in holder:
            runner.cancel(holder["cancel"])

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        result = start(observers=[Progress(console)], runner_hook=hook)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if args.json:
        print(json.dumps(result.as_dict(), indent=2, default=str))
    else:
        from rich.text import Text
        console.print(summary_table(result))
        if home:
            console.print(Text(f"workspace: {home}"))
        console.print(Text(f"records: {describe_url(url)} (run {result.run_id})"))
        colour = "green" if result.success else "red"
        console.print(Text.assemble((result.status.value, colour), f" in {wall(result.duration_seconds)}: "
                                    f"{result.completed_actions} completed, {result.failed_actions} failed, "
                                    f"{result.skipped_actions} skipped, {result.rolled_back_actions} rolled back"))
        if result.error:
            console.print(Text(result.error, style="red"))
    if result.status.value == "cancelled":
        return EXIT_CANCELLED
    return 0 if result.success else EXIT_FAILED


def cmd_run(args: argparse.Namespace) -> int:
    from ..api import run_template
    from ..store.engine import default_database_url

    workspace = _workspace(args)
    variables = _pairs(args.set, "--set")
    url = args.db or default_database_url()
    return _run_with_progress(args, lambda **kw: run_template(
        args.template, workspace, database_url=url, max_workers=args.workers, variables=variables,
        actions=args.actions, allow_sudo=args.allow_sudo, secrets=_secrets(args.secret),
        env_passthrough=args.env_passthrough or (), sandbox=not args.no_sandbox,
        trusted_actions=args.trusted_actions, **kw),
        url, workspace.get("home_dir"))


def cmd_resume(args: argparse.Namespace) -> int:
    from ..api import resume
    from ..store.engine import default_database_url

    url = args.db or default_database_url()
    return _run_with_progress(args, lambda **kw: resume(
        args.run_id, database_url=url, from_step=args.from_step, max_workers=args.workers,
        actions=args.actions, allow_sudo=args.allow_sudo, secrets=_secrets(args.secret),
        sandbox=not args.no_sandbox, trusted_actions=args.trusted_actions, **kw), url, None)


def cmd_validate(args: argparse.Namespace) -> int:
    from ..compile import validate_files
    failed = 0
    for path, error in validate_files(args.files, actions=args.actions):
        if error is None:
            print(f"{path}: ok")
        else:
            failed += 1
            print(f"{path}: {error}", file=sys.stderr)
    return EXIT_USAGE if failed else 0


def cmd_plan(args: argparse.Namespace) -> int:
    from ..api import plan as compile_plan
    plan = compile_plan(args.template, actions=args.actions, variables=_pairs(args.set, "--set"))
    workers = args.workers or plan.global_config.max_workers or 8
    lv = render.levels(plan)
    path = render.critical_path(plan)
    estimate = render.estimated_duration(plan, workers)
    if args.json:
        print(json.dumps({
            "template": plan.name, "version": plan.version, "steps": len(plan.order),
            "levels": lv, "critical_path": path,
            "critical_path_seconds": plan.priority[path[0]] if path else 0.0,
            "estimated_seconds": estimate, "workers": workers,
            "conflicts": render.conflict_pairs(plan),
            "locks": dict(plan.lock_capacity),
            "order": [{"id": s, "sequence_order": plan.steps[s].sequence_order, "action": plan.steps[s].action.name,
                       "phase": plan.steps[s].phase.name, "requires": list(plan.predecessors[s]),
                       "requires_network": plan.steps[s].action.requires_network,
                       "requires_sudo": plan.steps[s].action.requires_sudo,
                       "run_as": plan.steps[s].run_as, "sandbox": plan.steps[s].sandbox,
                       "limits": None if plan.steps[s].action.limits is None
                       else {k: v for k, v in vars_of(plan.steps[s].action.limits).items() if v is not None}}
                      for s in plan.order],
        }, indent=2))
        return 0
    print(f"{plan.name} {plan.version}: {len(plan.order)} steps in {len(lv)} levels "
          f"(parallel execution {'on' if plan.global_config.parallel_execution_enabled else 'off'})")
    for i, level in enumerate(lv, 1):
        print(f"level {i}:")
        for sid in level:
            step = plan.steps[sid]
            flags = [f for f, on in (("network", step.action.requires_network), ("sudo", step.action.requires_sudo),
                                     ("as root", step.run_as == "root" and not step.action.requires_sudo),
                                     ("sandbox" + ("" if step.action.requires_network else ", no network"),
                                      step.sandbox), ("limits", step.action.limits is not None)) if on]
            after = f" after {', '.join(plan.predecessors[sid])}" if plan.predecessors[sid] else ""
            cond = f" if {step.condition.source}" if step.condition else ""
            extra = f" [{', '.join(flags)}]" if flags else ""
            print(f"  {step.sequence_order:>5}  {sid}  {step.display_name} ({step.phase.name}, "
                  f"~{step.estimated_duration_seconds:g}s){extra}{after}{cond}")
    pairs = render.conflict_pairs(plan)
    if pairs:
        print("never together: " + "; ".join(f"{a} / {b}" for a, b in pairs))
    if plan.lock_capacity:
        print("locks: " + ", ".join(f"{k} (capacity {v})" for k, v in plan.lock_capacity.items()))
    if path:
        print(f"critical path: {' -> '.join(path)} (~{plan.priority[path[0]]:g} s)")
    print(f"estimated duration with {workers} workers: ~{estimate:g} s "
          f"(sequential: ~{sum(plan.steps[s].estimated_duration_seconds for s in plan.order):g} s)")
    return 0


def vars_of(limits: Any) -> dict[str, Any]:
    from dataclasses import asdict
    return asdict(limits)


def cmd_graph(args: argparse.Namespace) -> int:
    from ..api import plan as compile_plan
    statuses = None
    if args.run:
        from ..store.history import step_statuses
        from ..store.engine import default_database_url
        snapshot, statuses = step_statuses(args.db or default_database_url(), args.run)
        template = snapshot if args.template == "-" else args.template
    else:
        if args.template == "-":
            raise InputError("give a template, or --run RUN_ID with '-' to draw the run's own template")
        template = args.template
    plan = compile_plan(template, actions=args.actions, variables=_pairs(args.set, "--set"))
    if args.format == "mermaid":
        data: bytes = render.to_mermaid(plan, statuses).encode()
    else:
        dot = render.to_dot(plan, statuses)
        data = dot.encode() if args.format == "dot" else render.render_image(dot, args.format)
    if args.output:
        Path(args.output).write_bytes(data)
        print(f"wrote {args.output}", file=sys.stderr)
    elif args.format == "png":
        raise InputError("--format png writes binary data: give --output FILE")
    else:
        sys.stdout.write(data.decode())
    return 0


def cmd_migrate_legacy(args: argparse.Namespace) -> int:
    from ..compile import compile_template
    from ..compile.legacy import convert, is_legacy
    source = Path(args.file)
    doc = read_document(source)
    if not is_legacy(doc):
        raise InputError(f"{source} is not a legacy monolithic config (it has no legacy keys, or has actions)")
    template = convert(doc, name=args.name)
    compile_template(template, actions=args.actions)  # the result must validate
    output = Path(args.output) if args.output else source.with_name(source.stem + ".template.yaml")
    if output.exists() and not args.force:
        raise InputError(f"{output} exists (use --force to overwrite)")
    output.write_text(yaml.safe_dump(template, sort_keys=False, allow_unicode=True), encoding="utf-8")
    print(f"wrote {output}: {len(template['actions'])} steps")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from ..store.history import list_runs
    from ..store.engine import default_database_url
    runs = list_runs(args.db or default_database_url(), workspace=args.workspace, status=args.status,
                     limit=args.limit)
    if args.json:
        print(json.dumps(runs, indent=2))
        return 0
    for r in runs:
        print(f"{r['run_id']}  {r['started_at'] or '-':<32} {r['status']:<10} {r['workspace_id']:<12} "
              f"{r['template']} {r['version']}  {r['completed']}/{r['total']} done, {r['failed']} failed")
    if not runs:
        print("no runs", file=sys.stderr)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from ..store.history import show_run
    from ..store.engine import default_database_url
    run = show_run(args.db or default_database_url(), args.run_id, output=args.output)
    if args.json:
        print(json.dumps(run, indent=2, default=str))
        return 0
    print(f"run {run['run_id']}: {run['template']} {run['version']} for workspace {run['workspace_id']}, "
          f"{run['status']}" + (f" ({run['error']})" if run["error"] else ""))
    for a in run["attempts"]:
        duration = "" if a["duration_seconds"] is None else f" {a['duration_seconds']:.2f}s"
        print(f"  {a['step_id']:<24} attempt {a['attempt']}/{a['max_attempts']} {a['status']:<11}{duration}"
              + (f"  {a['error']}" if a["error"] else ""))
        if args.output and a.get("output"):
            for line in a["output"].rstrip().splitlines():
                print(f"      | {line}")
    return 0


def cmd_db(args: argparse.Namespace) -> int:
    from ..store import migrate
    from ..store.engine import default_database_url, describe_url, writable
    if args.db_command == "sql":
        sys.stdout.write(migrate.ddl(args.dialect))
        return 0
    if args.db_command == "recover":
        from ..locations import journal_dir
        from ..store.journal import recover
        report = recover(Path(args.journal) if args.journal else None,
                         url=args.db or os.environ.get("DAGRUN_DATABASE_URL"))
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
    url = args.db or default_database_url()
    engine = writable(url)  # migrates to the newest revision
    print(f"{describe_url(url)}: at revision {migrate.current(engine)}")
    return 0


def cmd_seed(args: argparse.Namespace) -> int:
    from ..store.seeding import seed
    from ..store.engine import default_database_url, describe_url
    url = args.db or default_database_url()
    counts = seed(url, actions=args.actions, templates=[Path(f) for f in args.templates] or None)
    print(f"{describe_url(url)}: {counts['actions']} actions, {counts['templates']} templates "
          f"({counts['steps']} steps) stored")
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    from ..store.history import show_run, watch
    from ..store.engine import default_database_url
    url = args.db or default_database_url()
    run_id = show_run(url, args.run_id)["run_id"]  # resolves a prefix, or a clear error
    final = "running"
    for event in watch(url, run_id, timeout=args.timeout):
        if args.json:
            print(json.dumps(event, default=str), flush=True)
        elif event["event"] == "attempt":
            error = f"  {event['error']}" if event["error"] else ""
            print(f"{event['step_id']:<24} attempt {event['attempt']}/{event['max_attempts']} "
                  f"{event['status']}{error}", flush=True)
        elif event["event"] == "run":
            print(f"run {run_id} {event['status']}" + (f": {event['error']}" if event["error"] else ""), flush=True)
        final = event.get("status", final) if event["event"] == "run" else final
    return 0 if final == "succeeded" else EXIT_FAILED


def cmd_actions(args: argparse.Namespace) -> int:
    from ..api import list_actions
    library = list_actions(args.actions)
    if args.json:
        print(json.dumps([{"name": a.name, "display_name": a.display_name, "category": a.category,
                           "action_type": a.action_type, "source": a.source} for a in library.values()], indent=2))
        return 0
    for action in sorted(library.values(), key=lambda a: (a.category, a.name)):
        print(f"{action.category:<15} {action.name:<30} {action.display_name}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dagrun", description=__doc__.splitlines()[0])
    parser.add_argument("--log-json", action="store_true", help="log as JSON lines")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-v info, -vv debug)")
    sub = parser.add_subparsers(dest="command", required=True)

    def template_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("template", help="template file, or the name of a seed template (e.g. demo)")
        p.add_argument("--actions", action="append", metavar="PATH",
                       help="extra action definitions (file or folder); may repeat")
        p.add_argument("--set", action="append", metavar="KEY=VALUE", help="template variable (vars.KEY)")

    run = sub.add_parser("run", help="run a template for a workspace")
    template_args(run)
    run.add_argument("--workspace", metavar="FILE", help="workspace as a JSON/YAML file")
    run.add_argument("--ws", action="append", metavar="KEY=VALUE", help="workspace field (id, linux_username...)")
    run.add_argument("--home", metavar="DIR", help="workspace home directory (default ./dagrun-workspaces/ID)")
    run.add_argument("--workers", type=int, metavar="N", help="maximum steps running at once")
    run.add_argument("--db", metavar="URL", help="SQLAlchemy database URL (default: SQLite file, or $DAGRUN_DATABASE_URL)")
    run.add_argument("--allow-sudo", action="store_true", help="let root-only actions use sudo -n when not root")
    run.add_argument("--secret", action="append", metavar="NAME=ENV_VAR",
                     help="secret variable vars.NAME read from ENV_VAR; masked everywhere, not stored")
    run.add_argument("--trusted-actions", action="append", metavar="PATH",
                     help="the operator's own action definitions: trusted like the standard library "
                          "(may need root, run unsandboxed)")
    run.add_argument("--no-sandbox", action="store_true",
                     help="run user-defined actions without bubblewrap (when it is not installed)")
    run.add_argument("--env", action="append", metavar="NAME", dest="env_passthrough",
                     help="pass this environment variable to steps (env.NAME); steps see only PATH, LANG, "
                          "LC_*, TZ, TERM and the names the template declares otherwise")
    run.add_argument("--json", action="store_true", help="print the result as JSON")
    run.set_defaults(func=cmd_run)

    res = sub.add_parser("resume", help="continue a failed, cancelled or interrupted run")
    res.add_argument("run_id", help="a run id (or an unambiguous prefix)")
    res.add_argument("--from", dest="from_step", metavar="STEP", help="also re-run STEP and its downstream")
    res.add_argument("--workers", type=int, metavar="N")
    res.add_argument("--db", metavar="URL")
    res.add_argument("--actions", action="append", metavar="PATH")
    res.add_argument("--allow-sudo", action="store_true")
    res.add_argument("--secret", action="append", metavar="NAME=ENV_VAR")
    res.add_argument("--no-sandbox", action="store_true")
    res.add_argument("--trusted-actions", action="append", metavar="PATH")
    res.add_argument("--json", action="store_true")
    res.set_defaults(func=cmd_resume)

    validate = sub.add_parser("validate", help="check templates and action definitions")
    validate.add_argument("files", nargs="+")
    validate.add_argument("--actions", action="append", metavar="PATH")
    validate.set_defaults(func=cmd_validate)

    plan = sub.add_parser("plan", help="show levels, conflicts, critical path and estimate; runs nothing")
    template_args(plan)
    plan.add_argument("--workers", type=int, metavar="N")
    plan.add_argument("--json", action="store_true")
    plan.set_defaults(func=cmd_plan)

    graph = sub.add_parser("graph", help="render the dependency graph")
    template_args(graph)
    graph.add_argument("--format", choices=("dot", "mermaid", "svg", "png"), default="dot")
    graph.add_argument("-o", "--output", metavar="FILE")
    graph.add_argument("--run", metavar="RUN_ID", help="colour steps by this run's statuses (template '-': the run's own)")
    graph.add_argument("--db", metavar="URL")
    graph.set_defaults(func=cmd_graph)

    migrate = sub.add_parser("migrate-legacy", help="convert a monolithic legacy config to a template")
    migrate.add_argument("file")
    migrate.add_argument("-o", "--output", metavar="FILE", help="default: FILE.template.yaml beside it")
    migrate.add_argument("--name", help="template name (default: the config's name)")
    migrate.add_argument("--force", action="store_true", help="overwrite the output")
    migrate.add_argument("--actions", action="append", metavar="PATH")
    migrate.set_defaults(func=cmd_migrate_legacy)

    runs = sub.add_parser("runs", help="run history from the store")
    runs.add_argument("--workspace", metavar="ID")
    runs.add_argument("--status", choices=("pending", "running", "succeeded", "failed", "cancelled"))
    runs.add_argument("--limit", type=int, default=50)
    runs.add_argument("--db", metavar="URL")
    runs.add_argument("--json", action="store_true")
    runs.set_defaults(func=cmd_runs)

    show = sub.add_parser("show", help="one run: steps, attempts, durations, errors")
    show.add_argument("run_id", help="a run id (or an unambiguous prefix)")
    show.add_argument("--output", action="store_true", help="include each attempt's output")
    show.add_argument("--db", metavar="URL")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_show)

    db = sub.add_parser("db", help="the store's schema")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    upgrade = db_sub.add_parser("upgrade", help="migrate the database to the newest schema")
    upgrade.add_argument("--db", metavar="URL")
    rec = db_sub.add_parser("recover", help="replay records journalled while the database was unreachable")
    rec.add_argument("journal", nargs="?", help="one journal file (default: all in the journal folder)")
    rec.add_argument("--db", metavar="URL", help="the database to replay into (the journal keeps no password)")
    sql = db_sub.add_parser("sql", help="print the DDL of every migration (offline)")
    sql.add_argument("--dialect", default="postgresql", choices=("postgresql", "sqlite"))
    db.set_defaults(func=cmd_db)

    seed_cmd = sub.add_parser("seed", help="store the action library and templates (default: the seeds)")
    seed_cmd.add_argument("templates", nargs="*", metavar="TEMPLATE_FILE")
    seed_cmd.add_argument("--actions", action="append", metavar="PATH")
    seed_cmd.add_argument("--db", metavar="URL")
    seed_cmd.set_defaults(func=cmd_seed)

    watch_cmd = sub.add_parser("watch", help="follow a run live (from another terminal)")
    watch_cmd.add_argument("run_id")
    watch_cmd.add_argument("--db", metavar="URL")
    watch_cmd.add_argument("--timeout", type=float, metavar="SECONDS", help="give up after this long")
    watch_cmd.add_argument("--json", action="store_true", help="one JSON object per line")
    watch_cmd.set_defaults(func=cmd_watch)

    actions = sub.add_parser("actions", help="list the action library")
    actions.add_argument("--actions", action="append", metavar="PATH")
    actions.add_argument("--json", action="store_true")
    actions.set_defaults(func=cmd_actions)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from ..run.logs import configure
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)]
    configure(json=True if args.log_json else None, level=level)
    if getattr(args, "workers", None) is not None and args.workers < 1:
        parser.error("--workers must be at least 1")
    try:
        return args.func(args)
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
