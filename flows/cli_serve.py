"""`kaizen` commands for running unattended: serve, submit, approve, reject.
Merged into the top-level app by flows/cli.py; prefect is imported only once a command runs,
after the Prefect API it must talk to is known."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Annotated

import typer

from flows.cli_options import ReasonOpt, WorkspaceOpt, context
from tasks import approval
from tasks.errors import KaizenError

serve_app = typer.Typer()


@serve_app.command()
def serve(workspace: WorkspaceOpt = None) -> None:
    """Run this workspace's deployments until Ctrl-C: the scheduled cycle, the inbox watcher and
    the event-triggered ingest (on PREFECT_API_URL, or on a Prefect server started here)."""
    from tasks import prefect_server

    stop_on_signals()
    ctx = context(workspace)
    prefect_server.claim(ctx.ws)
    server, api_url = None, os.environ.get("PREFECT_API_URL")
    if not api_url:
        typer.echo("kaizen serve: starting a Prefect server for this workspace (state in .kaizen/prefect)")
        server, api_url = prefect_server.start(ctx.ws)
        os.environ["PREFECT_API_URL"] = api_url  # before prefect is first imported below
    prefect_server.record(ctx.ws, api_url, server)
    try:
        from flows.automation import mark_orphans_crashed, serve_deployments

        for line in mark_orphans_crashed(ctx, embedded=server is not None):
            typer.echo(f"kaizen serve: {line}", err=True)
        schedule = ctx.config.schedule
        typer.echo(
            f"kaizen serve: workspace {ctx.ws.root}\n"
            f"  Prefect UI      {api_url.removesuffix('/api')}  (deployments, schedules, paused runs)\n"
            f"  cycle schedule  {schedule.cron or 'none (schedule.cron is empty)'}\n"
            f"  inbox           {schedule.inbox} (checked every {schedule.poll_seconds} s)\n"
            f"  a cycle starts  when {schedule.min_new_rows} untrained row(s) wait after an ingest"
        )
        serve_deployments(ctx, lambda line: typer.echo(f"kaizen serve: {line}"))
    finally:
        prefect_server.stop(ctx.ws, server)
        typer.echo("kaizen serve: stopped")


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def stop_on_signals() -> None:
    """Ctrl-C and SIGTERM (a service manager, `kill`) both stop serve cleanly. A process started
    in the background by a shell inherits SIGINT ignored, which would make it deaf to Ctrl-C."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)


@serve_app.command()
def submit(file: Path, workspace: WorkspaceOpt = None) -> None:
    """Put FILE in the inbox and announce it (`kaizen.batch.landed`) to `kaizen serve`."""
    ctx = context(workspace)
    announce = bool(os.environ.get("PREFECT_API_URL"))
    from flows.automation import submit as submit_file

    typer.echo(f"submitted: {submit_file(ctx, file, announce)}")


Wait = Annotated[float, typer.Option("--wait", help="Seconds to wait for the paused run to act on the decision")]


@serve_app.command()
def approve(version: str, reason: ReasonOpt, workspace: WorkspaceOpt = None, wait: Wait = 120) -> None:
    """Promote VERSION, a challenger waiting for approval (refused if the champion moved)."""
    decide(workspace, version, "approve", reason, wait)


@serve_app.command()
def reject(version: str, reason: ReasonOpt, workspace: WorkspaceOpt = None, wait: Wait = 120) -> None:
    """Reject VERSION, a challenger waiting for approval; the champion stays."""
    decide(workspace, version, "reject", reason, wait)


def decide(workspace: Path | None, version: str, decision: str, reason: str, wait: float) -> None:
    from prefect.flow_runs import resume_flow_run

    from tasks.registry import current_user, read_ledger

    ctx = context(workspace)
    flow_run_id = approval.check_decision(ctx, version, decision)
    try:
        resume_flow_run(flow_run_id, run_input={"decision": decision, "reason": reason, "who": current_user()})
    except Exception as exc:  # noqa: BLE001 - Prefect raises several kinds; the user needs one line
        raise KaizenError(
            f"cannot resume the run waiting on v{version} (flow run {flow_run_id}): {exc}; "
            f"is `kaizen serve` (or the `kaizen run` that paused) still running?"
        ) from None
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if approval.outcome(ctx, version) != "waiting":
            break
        time.sleep(1)
    else:
        typer.echo(f"sent {decision} for v{version}; the paused run has not acted on it yet")
        return
    entry = next(e for e in reversed(read_ledger(ctx.client, ctx.model_name)) if e.to_version == version)
    typer.echo(f"v{version}: {entry.action} by {entry.who}: {entry.why}")
    if decision == "approve" and entry.action != "approve":
        raise typer.Exit(1)
