"""Fleet throughput: one demo-like template of sleeps for many workspaces.

Workspaces per minute run one `run_template` after another (sequential),
as a fleet on dagrun's thread pool, and as a fleet on a Dask LocalCluster of
2 worker processes; the per-step scheduler overhead of a fleet of no-op
runs against a single run with as many steps; and fleets recorded on SQLite
and on PostgreSQL. Every figure is measured in this run; nothing asserts it.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid

from common import quiet_logs, table

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def demo_like(seconds: float) -> dict:
    """prepare -> 4 in parallel (one holds the host's apt lock) -> 2 -> finish: 8 steps."""
    def step(seq: int, sid: str, requires: list[str], **extra: object) -> dict:
        return {"sequence_order": seq, "id": sid, "action_name": "execute_custom_script", "requires": requires,
                "action_config": {"script": f"sleep {seconds}"}, **extra}
    return {"name": "fleet-bench", "version": "1.0.0", "actions": [
        step(10, "prepare", []),
        step(20, "packages", ["prepare"], locks=["apt"]), step(21, "venv", ["prepare"]),
        step(22, "database", ["prepare"]), step(23, "clone", ["prepare"]),
        step(30, "requirements", ["venv", "clone"]), step(31, "settings", ["clone"]),
        step(40, "finish", ["requirements", "settings", "database", "packages"])]}


def noop(steps: int) -> dict:
    return {"name": "fleet-noop", "version": "1.0.0", "global_config": {"rollback_on_failure": False},
            "actions": [{"sequence_order": n + 1, "id": f"s{n}", "action_name": "noop"} for n in range(steps)]}


def workspaces(root: str, count: int, prefix: str) -> list[dict]:
    return [{"id": f"{prefix}{n}", "home_dir": os.path.join(root, f"{prefix}{n}")} for n in range(count)]


def per_minute(count: int, seconds: float) -> float:
    return count / seconds * 60


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspaces", type=int, default=200)
    parser.add_argument("--sequential", type=int, default=40, help="workspaces run one after another (the rate "
                                                                   "is per minute, so fewer suffice)")
    parser.add_argument("--seconds", type=float, default=0.05, help="each step's sleep")
    parser.add_argument("--concurrency", type=int, default=50, help="fleet runs at once")
    parser.add_argument("--pg", default=PG_ADMIN, help="admin URL of a PostgreSQL server (empty: skip)")
    args = parser.parse_args()
    quiet_logs()
    root = tempfile.mkdtemp(prefix="dagrun-bench-fleet-")
    os.chmod(root, 0o755)
    os.environ["DAGRUN_WORKSPACE_ROOTS"] = root
    from dagrun import run_fleet, run_template

    doc = demo_like(args.seconds)
    n = args.workspaces
    rows = []
    bound = 4 * args.seconds  # the template's critical path: 4 levels of sleeps

    start = time.perf_counter()
    for ws in workspaces(root, args.sequential, "seq"):
        assert run_template(doc, ws, record=False).success
    sequential = time.perf_counter() - start
    rows.append(["sequential run_template", args.sequential, sequential, per_minute(args.sequential, sequential)])

    start = time.perf_counter()
    fleet = run_fleet(doc, workspaces(root, n, "pool"), concurrency=args.concurrency, record=False)
    pool = time.perf_counter() - start
    assert fleet.success, fleet.failed
    rows.append([f"fleet, thread pool ({args.concurrency} at once)", n, pool, per_minute(n, pool)])

    try:
        import distributed
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=32, processes=True,
                                           dashboard_address=":0")
        client = distributed.Client(cluster, set_as_default=False)
        try:
            start = time.perf_counter()
            fleet = run_fleet(doc, workspaces(root, n, "dask"), concurrency=args.concurrency, record=False,
                              executor=client)
            on_dask = time.perf_counter() - start
            assert fleet.success, fleet.failed
            rows.append(["fleet, Dask LocalCluster (2 processes)", n, on_dask, per_minute(n, on_dask)])
        finally:
            client.close()
            cluster.close()
    except ImportError:
        print("(distributed is not installed: no Dask figures)")

    stores = [("SQLite", f"sqlite:///{root}/fleet.db")]
    if args.pg:
        import psycopg2
        from sqlalchemy.engine import make_url
        name = f"dagrun_bench_fleet_{uuid.uuid4().hex[:8]}"
        admin = psycopg2.connect(args.pg)
        admin.autocommit = True
        admin.cursor().execute(f'CREATE DATABASE "{name}"')
        stores.append(("PostgreSQL", make_url(args.pg).set(database=name).render_as_string(hide_password=False)))
    try:
        for label, url in stores:
            start = time.perf_counter()
            fleet = run_fleet(doc, workspaces(root, n, label.lower()), concurrency=args.concurrency,
                              database_url=url)
            took = time.perf_counter() - start
            assert fleet.success, fleet.failed
            rows.append([f"fleet, thread pool, recorded on {label}", n, took, per_minute(n, took)])
    finally:
        if args.pg:
            admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            admin.close()

    print(f"{n} workspaces of an 8-step template of {args.seconds}s sleeps (critical path {bound:.2f}s), "
          f"2 cores")
    table("Workspaces per minute", ["how", "workspaces", "seconds", "per minute"], rows)

    # Scheduler overhead per step: no-op steps, a fleet against one run with as many steps.
    steps, fleet_size = 50, 40
    single = min(_timed(lambda: run_template(noop(steps * fleet_size), {"id": "single", "home_dir": f"{root}/single"},
                                             record=False, max_workers=8)) for _ in range(3))
    many = min(_timed(lambda: run_fleet(noop(steps), workspaces(root, fleet_size, f"noop{uuid.uuid4().hex[:4]}"),
                                        record=False, max_workers=8, concurrency=8)) for _ in range(3))
    total = steps * fleet_size
    table("Scheduler overhead per no-op step (best of 3; a fleet also compiles each workspace)",
          ["case", "steps", "us per step"], [
        ["one run, 8 workers", total, single / total * 1e6],
        [f"fleet of {fleet_size} x {steps}, 8 at once", total, many / total * 1e6],
        ["ratio fleet / single", "", many / single]])


def _timed(fn) -> float:  # noqa: ANN001
    start = time.perf_counter()
    result = fn()
    assert getattr(result, "success", True)
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
