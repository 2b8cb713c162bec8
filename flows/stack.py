"""The Prefect side of `kaizen stack up`: work pool, deployments, zombie detection.

The processes are started by tasks/stack.py; this module talks to the stack's Prefect server.
The deployments are infra/prefect.yaml's, deployed with `prefect deploy` itself, so what the
stack runs is what a team deploys.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

from tasks.errors import KaizenError
from tasks.stack import HEARTBEAT_SECONDS, POOL

REPO = Path(__file__).resolve().parents[1]
PREFECT_YAML = REPO / "infra" / "prefect.yaml"
# Deployments the stack's worker serves. The inbox watcher stays with `kaizen serve`: it watches
# one workspace's inbox, and a worker's workspace is a cache.
STACK_DEPLOYMENTS = ("continual-training", "ingest")
ZOMBIE_AUTOMATION = "kaizen: crash runs whose worker died"
# Three missed heartbeats: a slow but alive run on a loaded machine is not declared dead.
ZOMBIE_AFTER_S = 3 * HEARTBEAT_SECONDS


def prefect(*argv: str, env: dict[str, str], timeout: float = 300) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "prefect", *argv],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    if done.returncode != 0:
        raise KaizenError(
            f"prefect {' '.join(argv)} failed ({done.returncode}):\n{(done.stdout + done.stderr)[-2000:]}"
        )
    return done.stdout


def deploy(api_url: str, worker_workspace: Path, home: Path, zombie_after_s: float = ZOMBIE_AFTER_S) -> list[str]:
    """Work pool `kaizen` (process), the deployments of infra/prefect.yaml, and the automation
    that marks a run Crashed when its heartbeats stop (Prefect's documented zombie detection)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_API_URL=api_url, PREFECT_HOME=str(home), KAIZEN_WORKSPACE=str(worker_workspace))
    prefect("work-pool", "create", POOL, "--type", "process", "--overwrite", env=env)
    names = [arg for name in STACK_DEPLOYMENTS for arg in ("--name", name)]
    prefect("--no-prompt", "deploy", "--prefect-file", str(PREFECT_YAML), *names, env=env)
    create_zombie_automation(api_url, zombie_after_s)
    return [
        f"prefect: pool {POOL}, deployments {', '.join(STACK_DEPLOYMENTS)}, zombie runs Crashed after {zombie_after_s:.0f} s"
    ]


def create_zombie_automation(api_url: str, within_s: float) -> None:
    os.environ["PREFECT_API_URL"] = api_url  # before prefect reads its settings
    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    with_state = ("Completed", "Failed", "Cancelled", "Crashed")
    Automation(
        name=ZOMBIE_AUTOMATION,
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", *(f"prefect.flow-run.{s}" for s in with_state)},
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=within_s),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                message=f"no heartbeat for {within_s:.0f} s: the worker running it died; its work is "
                "recovered or redone by the next run",
            )
        ],
    ).create()
