"""Pure scheduler overhead: microseconds per no-op step.

10,000 no-op steps in a chain, a fan-out/fan-in and a layered random DAG,
run by dagrun (the Runner alone, and with the structlog observer that
run_template always attaches), by a graphlib + ThreadPoolExecutor baseline
and by dask's threaded scheduler, all in this run with the same workers.
Compile time is excluded (see bench_compile.py). Targets: dagrun <= 1.5x
the graphlib baseline and faster than dask, on every shape.
"""

from __future__ import annotations

import argparse

from common import best_of, quiet_logs, run_plan, table

import baselines
import shapes


def noop(*_args):
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    quiet_logs()
    from dagrun import compile_template
    from dagrun.run.logs import log_events

    n, w = args.n, args.workers
    shapes_ = {"chain": shapes.chain(n), "fan-out/fan-in": shapes.fan_out_in(n),
               "layered random": shapes.layered(n, 50)}
    rows = []
    for name, deps in shapes_.items():
        plan = compile_template(shapes.to_template(deps))
        ours = best_of(args.repeat, lambda: run_plan(plan, w))
        ours_events = best_of(args.repeat, lambda: run_plan(plan, w, [log_events]))
        graphlib = best_of(args.repeat, lambda: baselines.graphlib_pool(deps, noop, w))
        dask = best_of(args.repeat, lambda: baselines.dask_threaded(deps, noop, w))
        per = lambda t: t / len(deps) * 1e6  # noqa: E731
        rows.append([name, len(deps), per(ours), per(ours_events), per(graphlib), per(dask),
                     ours / graphlib, ours / dask])
    table(f"scheduler overhead, us per no-op step ({w} workers, best of {args.repeat})",
          ["shape", "steps", "dagrun", "dagrun+log", "graphlib", "dask", "dagrun/graphlib", "dagrun/dask"], rows)
    worst_g = max(r[6] for r in rows)
    worst_d = max(r[7] for r in rows)
    print(f"\n  worst dagrun/graphlib = {worst_g:.2f} (target <= 1.5): {'OK' if worst_g <= 1.5 else 'MISSED'}")
    print(f"  worst dagrun/dask     = {worst_d:.2f} (target < 1.0): {'OK' if worst_d < 1.0 else 'MISSED'}")


if __name__ == "__main__":
    main()
