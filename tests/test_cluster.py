"""Steps on a Dask cluster: a real LocalCluster of worker processes (and a
`dask worker` started as a subprocess for host resources). The driver
keeps the scheduling, the records and the events; attempts run in the
workers' processes, and cancels and timeouts reach them there."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import distributed  # the test extra (scripts/dev installs it)
import pytest

from dagrun import api, get_run, run_template, start_run
from dagrun.run.cluster import host_resource
from dagrun.run.outcome import StepStatus
from tests.helpers import pid_alive, script_step, template



ANCESTRY = 'p=$$; while [ "$p" -gt 1 ]; do echo $p; p=$(ps -o ppid= -p $p | tr -d " "); done'


@pytest.fixture(scope="module")
def cluster():
    local = distributed.LocalCluster(n_workers=2, threads_per_worker=2, processes=True, dashboard_address=":0")
    client = distributed.Client(local, set_as_default=False)
    try:
        yield local, client
    finally:
        client.close()
        local.close()


def worker_pids(client) -> set[int]:
    return set(client.run(os.getpid).values())


def test_attempts_run_in_worker_processes_and_the_driver_records_them(cluster, tmp_path, db_url):
    local, client = cluster
    doc = template(script_step(10, ANCESTRY, id="a"), script_step(20, ANCESTRY, id="b", requires=["a"]),
                   script_step(30, ANCESTRY, id="c", requires=["a"]))
    result = run_template(doc, {"id": "dask1", "home_dir": str(tmp_path / "h")}, executor=local.scheduler_address,
                          database_url=db_url)
    assert result.success, result.error
    workers = worker_pids(client)
    for sid in "abc":
        chain = [int(p) for p in result.steps[sid].stdout.split()]  # the script, its parent, ... up to init
        nearest = next(p for p in chain if p in workers or p == os.getpid())
        assert nearest in workers, (sid, chain, workers)  # started by a Dask worker process, not by this one
    run = get_run(result.run_id, database_url=db_url)
    assert [(s["step_id"], s["status"]) for s in run["steps"]] == [("a", "completed"), ("b", "completed"),
                                                                     ("c", "completed")]


def test_a_client_its_executor_and_an_address_all_work(cluster, tmp_path):
    local, client = cluster
    for n, executor in enumerate((client, client.get_executor(), f"dask:{local.scheduler_address}")):
        result = run_template(template(script_step(10, "echo hi", id="s")),
                              {"id": f"forms{n}", "home_dir": str(tmp_path / f"h{n}")}, executor=executor,
                              record=False)
        assert result.success and result.steps["s"].stdout.strip() == "hi", result.error


def test_a_timeout_and_a_cancel_reach_the_workers_processes(cluster, tmp_path, db_url):
    local, _ = cluster
    pidfile = tmp_path / "pid"
    doc = template(script_step(10, f"echo $$ > {pidfile}; exec sleep 60", id="slow", timeout_seconds=2,
                               max_retries=1))
    result = run_template(doc, {"id": "dask-timeout", "home_dir": str(tmp_path / "h")},
                          executor=local.scheduler_address, record=False)
    assert result.steps["slow"].status is StepStatus.failed and "timed out" in result.steps["slow"].error
    pid = int(pidfile.read_text())
    deadline = time.monotonic() + 10
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(pid)

    pidfile.unlink()
    doc = template(script_step(10, f"echo $$ > {pidfile}; exec sleep 60", id="slow", timeout_seconds=120))
    handle = start_run(doc, {"id": "dask-cancel", "home_dir": str(tmp_path / "h2")},
                       executor=local.scheduler_address, database_url=db_url)
    deadline = time.monotonic() + 30
    while not pidfile.exists() or not pidfile.read_text().strip():
        assert time.monotonic() < deadline, "the step never started"
        time.sleep(0.05)
    pid = int(pidfile.read_text())
    assert pid_alive(pid)
    handle.cancel()
    result = handle.wait(30)
    assert result is not None and result.status.value == "cancelled"
    deadline = time.monotonic() + 10
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(pid)  # the worker's process tree ended with the cancel


def test_a_workspace_with_a_host_runs_only_on_that_hosts_workers(cluster, tmp_path):
    local, client = cluster
    before = set(client.scheduler_info()["workers"])
    worker = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", local.scheduler_address,
                               "--nworkers", "1", "--nthreads", "2", "--no-dashboard",
                               "--resources", f"{host_resource('web1')}=100"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while len(set(client.scheduler_info()["workers"]) - before) < 1:
            assert time.monotonic() < deadline, "the host's worker never joined"
            time.sleep(0.1)
        (address,) = set(client.scheduler_info()["workers"]) - before
        host_pid = client.run(os.getpid, workers=[address])[address]
        doc = template(*[script_step(10 + n, ANCESTRY, id=f"s{n}") for n in range(6)])
        result = run_template(doc, {"id": "hosted", "host": "web1", "home_dir": str(tmp_path / "h")},
                              executor=client, record=False)
        assert result.success, result.error
        for n in range(6):
            assert host_pid in {int(p) for p in result.steps[f"s{n}"].stdout.split()}
    finally:
        worker.terminate()
        worker.wait(30)


def test_an_unknown_executor_is_one_clear_error(tmp_path):
    from dagrun.errors import InputError
    with pytest.raises(InputError, match="unknown executor 'kubernetes'"):
        run_template(template(script_step(10, "true")), {"id": "x", "home_dir": str(tmp_path / "h")},
                     executor="kubernetes", record=False)


def test_secrets_go_to_a_cluster_only_over_tls(cluster, tmp_path, monkeypatch):
    """(helper-68) Each attempt's job holds the run's variables, secrets
    included, and a tcp:// scheduler has no authentication: another local
    user read them from the task tables (and ran code as root there)."""
    from dagrun.errors import InputError
    local, client = cluster
    doc = template(script_step(10, 'echo "{{ vars.token }}"', id="s"), vars={"token": ""})
    ws = {"id": "dask-secret", "home_dir": str(tmp_path / "h")}
    monkeypatch.delenv("DAGRUN_ALLOW_INSECURE_CLUSTER", raising=False)
    with pytest.raises(InputError, match=r"holds secrets, and the Dask scheduler at tcp://.* is not reached over TLS"):
        run_template(doc, ws, executor=local.scheduler_address, secrets={"token": "Tok3nForDask"}, record=False)
    assert run_template(doc, ws, executor=local.scheduler_address, variables={"token": "plain"},
                        record=False).success  # (no secret: nothing to keep from it)
    monkeypatch.setenv("DAGRUN_ALLOW_INSECURE_CLUSTER", "1")  # the operator's word: only trusted users reach it
    allowed = run_template(doc, ws, executor=local.scheduler_address, secrets={"token": "Tok3nForDask"}, record=False)
    assert allowed.success and allowed.steps["s"].stdout == "********\n"
    monkeypatch.delenv("DAGRUN_ALLOW_INSECURE_CLUSTER")
    inside = distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, protocol="inproc://",
                                      dashboard_address=":0")  # (no port: only this process reaches it)
    try:
        with distributed.Client(inside, set_as_default=False) as own:
            assert run_template(doc, ws, executor=own, secrets={"token": "Tok3nForDask"}, record=False).success
    finally:
        inside.close()


def test_the_plan_and_jobs_cross_to_workers_as_plain_data(tmp_path):
    import pickle
    from dagrun.run.attempt import AttemptJob
    plan, workspace = api.compile_for("demo", {"id": "p", "home_dir": str(tmp_path / "h")})
    assert pickle.loads(pickle.dumps(plan)).order == plan.order
    job = AttemptJob(step=plan.steps[plan.order[0]], workspace=workspace, variables={}, env={}, home=str(tmp_path))
    assert pickle.loads(pickle.dumps(job)).step.id == plan.order[0]


def test_a_fleet_runs_on_the_cluster_with_its_locks(cluster, tmp_path, db_url):
    from dagrun import run_fleet
    local, client = cluster
    log = tmp_path / "log"
    doc = template(script_step(10, f"echo start $(date +%s.%N) >> {log}; sleep 0.1; echo end $(date +%s.%N) >> {log}",
                               id="locked", locks=["apt"]),
                   script_step(20, ANCESTRY, id="where", requires=["locked"]))
    fleet = run_fleet(doc, [{"id": f"f{n}", "home_dir": str(tmp_path / f"h{n}")} for n in range(4)],
                      executor=local.scheduler_address, database_url=db_url)
    assert fleet.success, fleet.as_dict()
    workers = worker_pids(client)
    for result in fleet.results.values():
        chain = [int(p) for p in result.steps["where"].stdout.split()]
        assert next(p for p in chain if p in workers or p == os.getpid()) in workers
    depth = best = 0
    for _, edge in sorted((float(t), e) for e, t in (line.split() for line in log.read_text().splitlines())):
        depth += 1 if edge == "start" else -1
        best = max(best, depth)
    assert best == 1  # the lock held across the fleet, on the cluster too


def test_the_cli_runs_on_a_cluster(cluster, tmp_path):
    local, _ = cluster
    (tmp_path / "t.json").write_text(__import__("json").dumps(template(script_step(10, "echo on-dask", id="s"))))
    out = subprocess.run([sys.executable, "-m", "dagrun", "run", "t.json", "--ws", "id=cli", "--executor",
                          local.scheduler_address, "--db", f"sqlite:///{tmp_path}/c.db"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr + out.stdout


def test_on_a_cluster_host_locks_are_per_host_and_an_unserved_host_fails_at_once(tmp_path):
    """Each host's workers take one `apt` at a time; two hosts, two at once.
    A host no worker declares fails its steps at once, saying so."""
    from dagrun import run_fleet
    resources = {host_resource("host0"): 100, host_resource("host1"): 100}
    local = distributed.LocalCluster(n_workers=2, threads_per_worker=4, processes=True, dashboard_address=":0",
                                     resources=resources)
    client = distributed.Client(local, set_as_default=False)
    try:
        log = tmp_path / "log"
        doc = template(script_step(10, f"echo {{{{ workspace.host }}}} start $(date +%s.%N) >> {log}; sleep 0.2; "
                                        f"echo {{{{ workspace.host }}}} end $(date +%s.%N) >> {log}",
                                    id="apt", locks=["apt"]))
        fleet = run_fleet(doc, [{"id": f"w{n}", "host": f"host{n % 2}", "home_dir": str(tmp_path / f"h{n}")}
                                for n in range(6)], executor=client, record=False)
        assert fleet.success, fleet.as_dict()
        events = sorted((float(t), host, edge) for host, edge, t in (l.split() for l in log.read_text().splitlines()))
        most, per_host = 0, {}
        for _, host, edge in events:
            per_host[host] = per_host.get(host, 0) + (1 if edge == "start" else -1)
            assert per_host[host] <= 1  # one per host
            most = max(most, sum(per_host.values()))
        assert most == 2  # two hosts, side by side
        lost = run_template(template(script_step(10, "true", id="s")),
                            {"id": "lost", "host": "nowhere", "home_dir": str(tmp_path / "lost")},
                            executor=client, record=False)
        assert lost.steps["s"].status is StepStatus.failed and lost.steps["s"].attempts == 1
        assert "no Dask worker declares the resource dagrun-host-nowhere" in lost.steps["s"].error
    finally:
        client.close()
        local.close()
