"""infra/prefect.yaml is what a team deploys to a Prefect server with workers: deploy it to a
real `prefect server` on loopback, start a process worker for the `kaizen` pool, run the cycle
deployment and check it completes and promotes. Its declarations must also match what
`kaizen serve` builds (names, trigger event, concurrency)."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest
import yaml

from tests.conftest import REPO, make_workspace
from tests.flows.test_unattended import kaizen_env, wait_until

pytestmark = pytest.mark.timeout(600)
PREFECT = [sys.executable, "-m", "prefect"]


def test_prefect_yaml_declares_what_kaizen_serve_builds():
    from flows import automation

    declared = {d["name"]: d for d in yaml.safe_load((REPO / "infra" / "prefect.yaml").read_text())["deployments"]}
    assert set(declared) == {automation.CYCLE_DEPLOYMENT, automation.INGEST_DEPLOYMENT, automation.WATCH_DEPLOYMENT}
    for name in (automation.CYCLE_DEPLOYMENT, automation.INGEST_DEPLOYMENT):
        assert declared[name]["concurrency_limit"] == {"limit": 1, "collision_strategy": "ENQUEUE"}
    assert declared[automation.INGEST_DEPLOYMENT]["triggers"][0]["expect"] == [automation.LANDED]
    assert declared[automation.CYCLE_DEPLOYMENT]["entrypoint"] == "flows.pipeline:continual_training"


def test_prefect_yaml_deployed_to_a_server_and_run_by_a_process_worker(demo_files, tmp_path):
    from tasks import prefect_server
    from tasks.workspace import Workspace

    ws = make_workspace(tmp_path / "ws")
    server, url = prefect_server.start(Workspace.at(tmp_path / "server"))
    env = kaizen_env(PREFECT_API_URL=url, KAIZEN_WORKSPACE=str(ws), PREFECT_HOME=str(tmp_path / "client"))
    worker_log = tmp_path / "worker.log"
    worker = None
    try:

        def run(*argv: str, command=PREFECT) -> str:
            done = subprocess.run([*command, *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, f"{argv} -> {done.returncode}\n{done.stdout}\n{done.stderr}"
            return done.stdout

        run("work-pool", "create", "kaizen", "--type", "process")
        run("--no-prompt", "deploy", "--prefect-file", "infra/prefect.yaml", "--all")
        kaizen = [sys.executable, "-m", "flows.cli"]
        run("ingest", str(demo_files["demo-1-restaurants"]), "--workspace", str(ws), command=kaizen)
        with open(worker_log, "wb") as out:
            worker = subprocess.Popen(
                [*PREFECT, "worker", "start", "--pool", "kaizen"],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deployment_id = httpx.get(f"{url}/deployments/name/continual_training/continual-training", timeout=10).json()[
            "id"
        ]
        flow_run = httpx.post(f"{url}/deployments/{deployment_id}/create_flow_run", json={}, timeout=10).json()

        def finished() -> str | None:
            state = httpx.get(f"{url}/flow_runs/{flow_run['id']}", timeout=10).json()["state"]["type"]
            return state if state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") else None

        assert wait_until(finished, "the worker to run the cycle", 400, worker_log) == "COMPLETED", (
            worker_log.read_text()[-6000:]
        )
        status = run("status", "--workspace", str(ws), command=kaizen)
        assert status.startswith("champion    v1"), status
    finally:
        if worker is not None:
            stop(worker)
        server.terminate()
        server.wait(timeout=30)


def stop(process: subprocess.Popen, grace: float = 30) -> None:
    """SIGTERM, then SIGKILL if it is still shutting down after `grace` (a worker on a loaded
    machine once took longer than 30 s to leave)."""
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=30)
