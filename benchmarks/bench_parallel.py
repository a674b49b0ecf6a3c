"""Parallel speedup: makespan of sleeping steps vs the optimal schedule.

- wide: 200 independent steps of 20 ms; optimal = ceil(n / W) x d;
- layered: a random layered DAG of 20 ms steps, each layer narrower than
  the workers, so the optimum is its critical path (layers x d);
- fan-out: 5,000 steps of 1 ms between a source and a sink; short steps
  expose the scheduler's throughput.

Each with 16 and 64 workers, against the optimal schedule and the lower
bound max(critical path, total work / workers), with the graphlib +
ThreadPoolExecutor baseline, dask's threaded scheduler and a bare-threads
floor (Kahn's algorithm on pre-started threads, no bookkeeping: what CPython
threads on this machine can do at best) measured in the same run; for the
short steps also the sleeps alone (pre-started threads sleeping their share
back to back, no scheduler at all: what no threaded scheduler can beat). Steps use
the library's ``sleep`` action (time.sleep, no process). Targets: <= 5% over
optimal on wide and layered with 64 workers; <= 1.2x the lower bound on the
fan-out of short steps with 64 workers (issue #13; it was 1.5x).
"""

from __future__ import annotations

import argparse
import math
import time

from common import best_of, quiet_logs, run_plan, table

import baselines
import shapes


def sleeper(seconds: float):
    def fn(*_args):
        time.sleep(seconds)
    return fn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    quiet_logs()
    from dagrun import compile_template

    cases = [
        ("wide 200 x 20ms", shapes.wide(200), 0.020),
        ("layered 10x40 x 20ms", shapes.layered(400, 10), 0.020),
        ("fan-out 5000 x 1ms", shapes.fan_out_in(5000), 0.001),
    ]
    rows = []
    verdicts = []
    floors = {w: baselines.BareThreads(w) for w in (16, 64)}
    for name, deps, d in cases:
        plan = compile_template(shapes.to_template(deps, action="sleep", config={"seconds": d}))
        n = len(deps)
        cp = shapes.critical_path_length(deps) * d
        for w in (16, 64):
            if name.startswith("wide"):
                optimal = math.ceil(n / w) * d
            elif name.startswith("layered"):
                widest = max(sum(1 for k in deps if k.startswith(f"l{i}_")) for i in range(10))
                optimal = cp if widest <= w else None
            else:
                optimal = None
            lower = max(cp, n * d / w)
            ours = best_of(args.repeat, lambda: run_plan(plan, w))
            graphlib = best_of(args.repeat, lambda: baselines.graphlib_pool(deps, sleeper(d), w))
            dask = best_of(args.repeat, lambda: baselines.dask_threaded(deps, sleeper(d), w))
            bare = best_of(args.repeat, lambda: floors[w].run(deps, sleeper(d), w))
            rows.append([name, w, ours * 1e3, "-" if optimal is None else optimal * 1e3, lower * 1e3,
                         "-" if optimal is None else ours / optimal, ours / lower, graphlib * 1e3, dask * 1e3,
                         bare * 1e3, ours / bare])
            if w == 64:
                if optimal is not None:
                    verdicts.append(f"{name}, 64 workers: {100 * (ours / optimal - 1):+.1f}% vs optimal "
                                    f"(target <= +5%): {'OK' if ours <= 1.05 * optimal else 'MISSED'}; "
                                    f"bare floor {100 * (bare / optimal - 1):+.1f}%")
                else:
                    alone = min(baselines.sleeps_alone(n, d, w) for _ in range(args.repeat))
                    verdicts.append(f"{name}, 64 workers: {ours / lower:.2f}x the lower bound "
                                    f"(target <= 1.2x): {'OK' if ours <= 1.2 * lower else 'MISSED'}; "
                                    f"bare floor {bare / lower:.2f}x, the sleeps alone {alone / lower:.2f}x")
    table(f"makespan in ms (best of {args.repeat})",
          ["case", "workers", "dagrun", "optimal", "lower bound", "vs optimal", "vs bound", "graphlib", "dask",
           "bare floor", "vs floor"], rows)
    print()
    for v in verdicts:
        print("  " + v)


if __name__ == "__main__":
    main()
