"""Scheduler overhead side by side: microseconds per no-op step.

10,000 no-op steps in a chain, a fan-out/fan-in and a layered random DAG,
run by a graphlib + ThreadPoolExecutor loop, by dask's threaded scheduler,
by dagrun's Runner on a compiled plan (alone, and with the log observer
attached), and through the public path, ``run_template(record=False)``:
"cold" compiles the template first (the plan cache is cleared before each
call), "again" runs a template whose plan was kept from an earlier call (a
service running one template for workspace after workspace). All in this
run with the same workers. Targets: the Runner at or below the graphlib
loop and 3x faster than dask on every shape; run_template within 1.1x of
the Runner given the same workspace ("+home": with a home; a no-op works
in none, so nothing is checked; "+check": the same no-op declared to work
in the home, so as root each attempt first checks the folders above it,
what the actions that write files pay). "floor": bare threads
and one completion queue with no bookkeeping at all, what a threaded
Python scheduler with one dispatching thread pays on this machine (on a
chain: two thread wake-ups per step). The Runner can go below it: its
workers hand over their own completed steps, so a chain needs no wake-up.
"""

from __future__ import annotations

import argparse
import os

from common import best_of, quiet_logs, run_plan, table

import baselines
import shapes


def noop(*_args):
    return None


# The library's no-op as an action that works in the home (the default): the "+check" column.
IN_HOME = {"name": "noop_in_home", "action_type": "python_function", "execution_handler": "dagrun.handlers.builtin:noop",
           "max_retries": 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    quiet_logs()
    import tempfile

    from dagrun import compile_template, run_template
    from dagrun.compile import cache
    from dagrun.run.logs import log_events
    home = tempfile.mkdtemp(prefix="dagrun-bench-")
    roots = [os.path.dirname(home)]  # the operator's choice, as the CLI makes it

    n, w = args.n, args.workers
    shapes_ = {"chain": shapes.chain(n), "fan-out/fan-in": shapes.fan_out_in(n),
               "layered random": shapes.layered(n, 50)}
    rows = []
    bare = baselines.BareThreads(w)
    for name, deps in shapes_.items():
        document = shapes.to_template(deps)
        plan = compile_template(document)
        ours = best_of(args.repeat, lambda: run_plan(plan, w))
        ours_events = best_of(args.repeat, lambda: run_plan(plan, w, [log_events]))
        # The same workspace as run_template's: as root, each attempt checks its home's folders first.
        ours_home = best_of(args.repeat, lambda: run_plan(plan, w, home=home, home_root=roots[0]))
        checked = compile_template(shapes.to_template(deps, action="noop_in_home"), trusted_actions=[IN_HOME])
        ours_checked = best_of(args.repeat, lambda: run_plan(checked, w, home=home, home_root=roots[0]))
        public = lambda: run_template(document, {"id": "bench", "home_dir": home},  # noqa: E731
                                      max_workers=w, record=False, home_roots=roots)
        cold = best_of(args.repeat, lambda: (cache.clear(), public()))
        again = best_of(args.repeat, public)
        graphlib = best_of(args.repeat, lambda: baselines.graphlib_pool(deps, noop, w))
        dask = best_of(args.repeat, lambda: baselines.dask_threaded(deps, noop, w))
        floor = best_of(args.repeat, lambda: bare.run(deps, noop, w))
        per = lambda t: t / len(deps) * 1e6  # noqa: E731
        rows.append([name, len(deps), per(floor), per(graphlib), per(dask), per(ours), per(ours_events),
                     per(ours_home), per(ours_checked), per(cold), per(again), ours / graphlib, dask / ours,
                     cold / ours_home, again / ours_home])
    table(f"us per no-op step ({w} workers, best of {args.repeat})",
          ["shape", "steps", "floor", "graphlib", "dask", "Runner", "+log", "+home", "+check", "run_template cold",
           "again", "Runner/graphlib", "dask/Runner", "cold/(+home)", "again/(+home)"], rows)
    worst_g = max(r[11] for r in rows)
    worst_d = min(r[12] for r in rows)
    worst_c = max(r[13] for r in rows)
    worst_p = max(r[14] for r in rows)
    verdict = lambda ok: "OK" if ok else "MISSED"  # noqa: E731
    print(f"\n  worst Runner/graphlib       = {worst_g:.2f} (target <= 1.0): {verdict(worst_g <= 1.0)}")
    print(f"  worst dask/Runner           = {worst_d:.2f} (target >= 3.0): {verdict(worst_d >= 3.0)}")
    print(f"  worst run_template/Runner   = {worst_p:.2f} with the plan kept, {worst_c:.2f} compiling "
          f"(target <= 1.1): {verdict(worst_p <= 1.1)} kept, {verdict(worst_c <= 1.1)} compiling")


if __name__ == "__main__":
    main()
