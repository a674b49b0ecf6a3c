"""A load check of the HTTP service: one ``dagrun serve`` (waitress), 20 runs
started at once through the API, 50 clients following them over
Server-Sent Events, and readers polling the API meanwhile.

Reports API latency (p50 / p95 / max) of starting a run, of reading a run
and of the seed's action-executions endpoint under that load, and checks
that nothing is lost: every run finishes, every step of every run is
recorded, and every SSE client sees its run's final event. Not a test: it
prints figures (a latency target is not asserted anywhere).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import table

TOKEN = uuid.uuid4().hex
HEADERS = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}


def call(base: str, method: str, path: str, body: object = None) -> tuple[int, dict, float]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method, headers=HEADERS)
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            payload, status = json.loads(response.read()), response.status
    except urllib.error.HTTPError as exc:
        payload, status = json.loads(exc.read() or b"{}"), exc.code
    return status, payload, time.perf_counter() - start


def template(steps: int, seconds: float) -> dict:
    """A demo-like shape: a prepare step, a fan of work, a finish step."""
    actions = [{"sequence_order": 10, "id": "prepare", "action_name": "execute_custom_script",
                "action_config": {"script": f"sleep {seconds}"}}]
    for n in range(steps):
        actions.append({"sequence_order": 20 + n, "id": f"work{n}", "action_name": "execute_custom_script",
                        "requires": ["prepare"], "action_config": {"script": f"sleep {seconds}; echo {n}"}})
    actions.append({"sequence_order": 999, "id": "finish", "action_name": "execute_custom_script",
                    "requires": [f"work{n}" for n in range(steps)], "action_config": {"script": "true"}})
    return {"name": "load", "version": "1.0.0", "actions": actions}


def follow(base: str, run_id: str, seen: dict[str, list[str]]) -> None:
    """An SSE client: reads the run's events until its final one."""
    kinds: list[str] = []
    seen[run_id + f"#{threading.get_ident()}"] = kinds
    request = urllib.request.Request(f"{base}/api/runs/{run_id}/events", headers=HEADERS)
    with urllib.request.urlopen(request, timeout=300) as stream:
        for raw in stream:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                kinds.append(line[len("event: "):])
                if kinds[-1] == "run":
                    return


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--steps", type=int, default=8, help="work steps per run (plus prepare and finish)")
    parser.add_argument("--seconds", type=float, default=0.2, help="each step's sleep")
    parser.add_argument("--db", default="", help="database URL (default: a fresh SQLite file)")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="dagrun-bench-service-"))
    folder.chmod(0o755)
    db = args.db or f"sqlite:///{folder}/service.db"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "DAGRUN_WORKSPACE_ROOTS": str(folder), "DAGRUN_TOKEN": TOKEN}
    log = open(folder / "serve.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "dagrun", "serve", "--port", str(port), "--db", db,
                               "--allow-inline-templates", "--threads", "128"],  # a stream per 2 threads
                              env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if call(base, "GET", "/api/health")[0] == 200:
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"dagrun serve did not start: {(folder / 'serve.log').read_text()}")
                time.sleep(0.1)

        doc = template(args.steps, args.seconds)
        started = time.perf_counter()
        with ThreadPoolExecutor(args.runs) as pool:
            answers = list(pool.map(lambda n: call(base, "POST", f"/api/workspaces/load{n}/runs", {
                "template": doc, "workspace": {"home_dir": str(folder / f"home{n}")}}), range(args.runs)))
        refused = [a for a in answers if a[0] != 202]
        if refused:
            raise SystemExit(f"{len(refused)} runs refused: {refused[0][1]}")
        run_ids = [a[1]["run_id"] for a in answers]
        start_latency = [a[2] for a in answers]

        seen: dict[str, list[str]] = {}
        followers = [threading.Thread(target=follow, args=(base, run_ids[n % len(run_ids)], seen), daemon=True)
                     for n in range(args.clients)]
        for t in followers:
            t.start()

        read_latency: list[float] = []
        executions_latency: list[float] = []
        finished: dict[str, dict] = {}
        while len(finished) < len(run_ids):
            for n, run_id in enumerate(run_ids):
                if run_id in finished:
                    continue
                status, run, took = call(base, "GET", f"/api/runs/{run_id}")
                read_latency.append(took)
                executions_latency.append(call(base, "GET", f"/api/workspaces/load{n}/action-executions")[2])
                if run["status"] != "running":
                    finished[run_id] = run
            if time.perf_counter() - started > 600:
                raise SystemExit("runs did not finish in 10 minutes")
        makespan = time.perf_counter() - started
        for t in followers:
            t.join(timeout=60)

        lost_streams = sum(1 for kinds in seen.values() if not kinds or kinds[-1] != "run")
        failed = [r for r in finished.values() if r["status"] != "succeeded"]
        steps_per_run = args.steps + 2
        unrecorded = sum(1 for r in finished.values() for s in r["steps"] if s["status"] != "completed")
        unrecorded += sum(steps_per_run - len(r["steps"]) for r in finished.values())

        print(f"{args.runs} runs of {steps_per_run} steps ({args.seconds}s each), {args.clients} SSE clients, "
              f"one dagrun serve on {db.split(':')[0]}; all runs done in {makespan:.2f} s")
        table("API latency under load (ms)", ["request", "count", "p50", "p95", "max"], [
            [name, len(values), pct(values, 0.5), pct(values, 0.95), max(values) * 1000]
            for name, values in (("POST /api/workspaces/<id>/runs", start_latency),
                                 ("GET /api/runs/<id>", read_latency),
                                 ("GET .../action-executions", executions_latency))])
        print(f"\nnothing lost: {len(failed)} failed runs, {unrecorded} steps not recorded completed, "
              f"{lost_streams} of {len(seen)} SSE clients without the final event "
              f"(mean {statistics.mean(len(k) for k in seen.values()):.0f} events each)")
        if failed or unrecorded or lost_streams or len(seen) != args.clients:
            raise SystemExit(1)
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


if __name__ == "__main__":
    main()
