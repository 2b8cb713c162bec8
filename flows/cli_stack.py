"""`kaizen stack up | status | down | worker`: the scaled-out stack on loopback (tasks/stack.py).
Merged into the top-level app by flows/cli.py."""

from __future__ import annotations

import os
import shutil
import socket
import sys
from typing import Annotated

import typer

from flows.cli_options import JsonOpt, WorkspaceOpt, echo_json
from tasks import stack
from tasks.errors import KaizenError
from tasks.workspace import Workspace

stack_app = typer.Typer(
    help="PostgreSQL, S3 (moto), MLflow server, Prefect server and a worker on 127.0.0.1.", no_args_is_help=True
)


def _say(line: str) -> None:
    typer.echo(f"kaizen stack: {line}")


@stack_app.command("up")
def up(
    workspace: WorkspaceOpt = None,
    worker: Annotated[bool, typer.Option("--worker/--no-worker", help="Start one Prefect process worker")] = True,
    zombie_after: Annotated[
        float,
        typer.Option(
            "--zombie-after", min=45, help="Seconds without a heartbeat (sent every 30) before a run is Crashed"
        ),
    ] = 90,
) -> None:
    """Start the stack and write .kaizen/stack/stack.env, the environment that points kaizen at it."""
    from flows.stack import deploy

    ws = Workspace.at(workspace)
    record = stack.up(ws, log=_say)
    try:
        worker_ws = prepare_worker_workspace(ws)
        api = record["services"]["prefect"]["url"]
        for line in deploy(api, worker_ws, stack.stack_dir(ws) / "deploy-home", zombie_after):
            _say(line)
        if worker:
            stack.start_worker(ws, worker_ws, log=_say)
    except BaseException:
        stack.down(ws, log=lambda _: None)
        raise
    env = stack.env_path(ws)
    typer.echo(
        f"kaizen stack: up; point a shell (or a second host) at it with\n"
        f"  set -a; . {env}; set +a\n"
        f"  Prefect UI {api.removesuffix('/api')}   MLflow UI {record['services']['mlflow']['url']}"
    )


def prepare_worker_workspace(ws: Workspace):
    """The worker's workspace: an empty cache, with this workspace's kaizen.yaml (config is
    deployed with the code; state comes from the shared stores)."""
    target = stack.stack_dir(ws) / "worker-workspace"
    target.mkdir(parents=True, exist_ok=True)
    if (ws.root / "kaizen.yaml").exists():
        shutil.copyfile(ws.root / "kaizen.yaml", target / "kaizen.yaml")
    return target


@stack_app.command("status")
def status(workspace: WorkspaceOpt = None, json_: JsonOpt = False) -> None:
    """Each service of this workspace's stack: up or DOWN, and where. Exit 1 if any is down."""
    rows = stack.status(Workspace.at(workspace))
    if json_:
        echo_json([{"service": s, "state": st, "url": u} for s, st, u in rows])
    elif not rows:
        typer.echo("kaizen stack: not running (`kaizen stack up`)")
    else:
        for service, state, url in rows:
            typer.echo(f"{service:<9} {state:<5} {url}")
    if not rows or any(state != "up" for _, state, _ in rows):
        raise typer.Exit(1)


@stack_app.command("down")
def down(workspace: WorkspaceOpt = None) -> None:
    """Stop every service and remove the stack's databases (moto's S3 lives in memory)."""
    stack.down(Workspace.at(workspace), log=_say)


def sync(workspace: WorkspaceOpt = None) -> None:
    """Bring this workspace's data to the shared data head (what every flow run does first)."""
    from flows.cli_options import context, write_access
    from tasks import shared
    from tasks.recovery import refresh_history

    ctx = context(workspace)
    if not shared.enabled(ctx.config):
        raise KaizenError("shared.database_url is not set: this workspace is not shared (see `kaizen stack up`)")
    with write_access(ctx, "sync"):
        from tasks.versioning import init_repo

        init_repo(ctx.ws, ctx.config.data.remote)
        line = shared.sync(ctx)
        if line:
            refresh_history(ctx)
    head = shared.latest_head(ctx.config)
    typer.echo(line or f"data: already at the shared data head #{head.seq if head else 0}")


@stack_app.command("worker")
def worker(
    pool: Annotated[str, typer.Option("--pool", help="Work pool to poll")] = stack.POOL,
    name: Annotated[str | None, typer.Option("--name", help="Worker name (default: kaizen-HOST-PID)")] = None,
) -> None:
    """A Prefect process worker for kaizen's deployments (what `stack up`, compose and the
    Kubernetes manifest run): flow-run heartbeats on, so a run whose worker dies ends Crashed."""
    if not os.environ.get("PREFECT_API_URL"):
        raise KaizenError("PREFECT_API_URL is not set; source .kaizen/stack/stack.env or point it at a Prefect server")
    os.environ.setdefault("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", str(stack.HEARTBEAT_SECONDS))
    name = name or f"kaizen-{socket.gethostname()}-{os.getpid()}"
    argv = [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type", "process", "--name", name]
    sys.stdout.flush()
    os.execv(sys.executable, argv)
