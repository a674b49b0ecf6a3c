"""The cost of recording: the same runs without a store, with the SQLite
store and with the PostgreSQL store, in the same process.

Makespan of the 200 x 20 ms wide DAG with 64 workers (target: recording
adds less than 25%), and scheduler overhead per no-op step (2,000 steps in
a fan-out, 8 workers). run_template is used end to end (compile excluded),
so the store numbers include claiming the workspace and the final flush.
"""

from __future__ import annotations

import argparse
import tempfile
import uuid

from common import quiet_logs, table

import shapes

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--pg", default=PG_ADMIN, help="admin URL of a PostgreSQL server (empty: skip)")
    args = parser.parse_args()
    quiet_logs()
    import time

    from dagrun import compile_template
    from dagrun.api import _execute
    from dagrun.workspace import normalize_workspace

    stores = {"none": None, "sqlite": f"sqlite:///{tempfile.mkdtemp()}/bench.db"}
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
            plan = compile_template(doc)
            times = {}
            for store, url in stores.items():
                best = float("inf")
                for _ in range(args.repeat):
                    ws = normalize_workspace({"id": f"bench-{uuid.uuid4().hex[:8]}"})
                    start = time.perf_counter()
                    result = _execute(plan, ws, run_id=str(uuid.uuid4()), variables=None, url=url,
                                      max_workers=workers, executor=None, observers=(), on_event=None,
                                      runner_hook=None, allow_sudo=False)
                    best = min(best, time.perf_counter() - start)
                    assert result.success and not result.error, result.error
                times[store] = best
            for store, seconds in times.items():
                rows.append([name, store, seconds * 1e3, seconds / len(plan.order) * 1e6,
                             f"{100 * (seconds / times['none'] - 1):+.1f}%"])
    finally:
        if pg_name:
            from dagrun.store.engine import engine_for
            engine_for(stores["postgres"]).dispose()
            admin.cursor().execute(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')
    table(f"cost of recording (best of {args.repeat})", ["case", "store", "ms", "us per step", "vs no store"], rows)
    wide = {r[1]: r for r in rows if r[0].startswith("wide")}
    for store in ("sqlite", "postgres"):
        if store in wide:
            added = wide[store][2] / wide["none"][2] - 1
            print(f"  recording to {store} adds {100 * added:+.1f}% to the wide DAG's makespan "
                  f"(target < +25%): {'OK' if added < 0.25 else 'MISSED'}")


if __name__ == "__main__":
    main()
