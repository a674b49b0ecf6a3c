"""The cost of recording: the same runs without a store, with the SQLite
store and with the PostgreSQL store, in the same process.

Makespan of the 200 x 20 ms wide DAG with 64 workers (target: recording
adds at most 15%), and the cost per no-op step (2,000 steps in a fan-out,
8 workers; targets: at most 60 us per step on PostgreSQL, 40 on SQLite),
with write-ahead completions on. The public path is used end to end
(prepare once, then claim and execute each repetition), so the store
numbers include claiming the workspace and the final flush.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import uuid

from common import quiet_logs, table

import shapes

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--pg", default=PG_ADMIN, help="admin URL of a PostgreSQL server (empty: skip)")
    args = parser.parse_args()
    quiet_logs()
    import time

    from dataclasses import replace

    from dagrun.api import claim, execute, prepare

    stores = {"none": None, "sqlite": f"sqlite:///{tempfile.mkdtemp()}/bench.db"}
    homes = tempfile.mkdtemp(prefix="dagrun-bench-homes-")  # a home belongs to one workspace: one each
    pg_name = None
    if args.pg:
        import psycopg2
        from sqlalchemy.engine import make_url
        pg_name = f"dagrun_bench_{uuid.uuid4().hex[:8]}"
        admin = psycopg2.connect(args.pg)
        admin.autocommit = True
        admin.cursor().execute(f'CREATE DATABASE "{pg_name}"')
        stores["postgres"] = make_url(args.pg).set(database=pg_name).render_as_string(hide_password=False)

    cases = [("wide 200 x 20ms, 64 workers", shapes.to_template(shapes.wide(200), "sleep", {"seconds": 0.02}), 64),
             ("fan-out 2000 no-op, 8 workers", shapes.to_template(shapes.fan_out_in(2000), "noop"), 8)]
    rows = []
    try:
        for name, doc, workers in cases:
            times = {}
            for store, url in stores.items():
                prepared = prepare(doc, {"id": "bench", "home_dir": f"{homes}/bench"}, database_url=url,
                                   record=url is not None, max_workers=workers, home_roots=[homes])
                best = float("inf")
                for _ in range(args.repeat):
                    wid = f"bench-{uuid.uuid4().hex[:8]}"
                    run = replace(prepared, run_id=str(uuid.uuid4()),
                                  workspace={**prepared.workspace, "id": wid, "home_dir": f"{homes}/{wid}"})
                    start = time.perf_counter()
                    claim(run)
                    result = execute(run)
                    best = min(best, time.perf_counter() - start)
                    assert result.success and not result.error, result.error
                times[store] = best
            steps = len(prepared.plan.order)
            for store, seconds in times.items():
                rows.append([name, store, seconds * 1e3, seconds / steps * 1e6,
                             f"{100 * (seconds / times['none'] - 1):+.1f}%"])
    finally:
        shutil.rmtree(homes, ignore_errors=True)
        if pg_name:
            from dagrun.store.engine import engine_for
            engine_for(stores["postgres"]).dispose()
            admin.cursor().execute(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')
    table(f"cost of recording (best of {args.repeat})", ["case", "store", "ms", "us per step", "vs no store"], rows)
    wide = {r[1]: r for r in rows if r[0].startswith("wide")}
    fan = {r[1]: r for r in rows if r[0].startswith("fan-out")}
    for store, target in (("sqlite", 40), ("postgres", 60)):
        if store in wide:
            added = wide[store][2] / wide["none"][2] - 1
            print(f"  {store}: wide DAG makespan {100 * added:+.1f}% vs no store (target <= +15%): "
                  f"{'OK' if added <= 0.15 else 'MISSED'}")
        if store in fan:
            cost = fan[store][3]
            print(f"  {store}: {cost:.1f} us per no-op step (target <= {target}): "
                  f"{'OK' if cost <= target else 'MISSED'}")

if __name__ == "__main__":
    main()
