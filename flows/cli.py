"""`kaizen`: the one command line. Each command parses options, calls one function in
flows/ or tasks/, and formats what it returns; heavy imports wait until a command runs.

This module holds the data and cycle commands and the entry point; the registry and report
commands are in flows/cli_registry.py, the shared options in flows/cli_options.py."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from flows.cli_options import JsonOpt, SetOpt, WorkspaceOpt, context, echo_json, overrides, write_access
from flows.cli_registry import registry_app
from flows.cli_serve import serve_app
from flows.cli_stack import stack_app, sync
from tasks import quarantine
from tasks.config import describe_config, format_config_rows
from tasks.errors import KaizenError
from tasks.ingest import AlreadyIngested, batch_ids, check_input

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Continual re-fine-tuning: validate, version, train, gate and promote.",
)
quarantine_app = typer.Typer(help="Batches kept out of training, with their reports.", no_args_is_help=True)
config_app = typer.Typer(help="The effective configuration.", no_args_is_help=True)
app.add_typer(quarantine_app, name="quarantine")
app.add_typer(config_app, name="config")

app.add_typer(registry_app)  # status, promote, rollback, history, lineage, report, predict
app.add_typer(serve_app)  # serve, submit, approve, reject
app.add_typer(stack_app, name="stack")  # up, status, down, worker
app.command()(sync)


@app.command()
def init(workspace: WorkspaceOpt = None) -> None:
    """Create a workspace: DVC repo with a local remote, data/ and kaizen.yaml."""
    from tasks.versioning import init_workspace

    ctx = context(workspace)
    with write_access(ctx, "init", recover=False):
        init_workspace(ctx.ws, ctx.config)
    typer.echo(f"workspace ready at {ctx.ws.root}")


@app.command()
def ingest(
    file: Path,
    batch_id: Annotated[
        str | None, typer.Option("--batch-id", help="Id of the new batch (default: time + content hash)")
    ] = None,
    workspace: WorkspaceOpt = None,
    set_: SetOpt = None,
) -> None:
    """Validate FILE and store it as a new immutable, DVC-versioned batch."""
    ctx = context(workspace, set_)
    with write_access(ctx, "ingest"):
        if _already_ingested(ctx, file, batch_id):
            return
        from flows.pipeline import ingest as ingest_flow

        info = ingest_flow(str(file), batch_id, str(ctx.ws.root), overrides(set_))
    typer.echo(f"ingested batch {info['batch_id']}: {info['rows']} rows, splits {info['split_counts']}")


def _already_ingested(ctx, file: Path, batch_id: str | None = None) -> bool:
    """Refuse a bad file before any flow starts; a file whose content is already a batch is a
    no-op (said so), so re-sending a file or re-running after a crash converges."""
    try:
        check_input(ctx.ws, ctx.config, file, batch_id)
    except AlreadyIngested as done:
        typer.echo(f"kaizen: {done}", err=True)
        return True
    return False


@app.command()
def validate(file: Path, workspace: WorkspaceOpt = None, set_: SetOpt = None) -> None:
    """Run the validation suite (with drift and leakage against this workspace) without ingesting."""
    from models.base import load_tokenizer
    from tasks.validate import validate_file

    ctx = context(workspace, set_)
    report = validate_file(ctx.ws, ctx.config, file, load_tokenizer(ctx.config.model.base))
    for line in report.warning_lines():
        typer.echo(f"{file}: warning: {line}", err=True)
    if report.success:
        typer.echo(f"{file}: all {len(report.outcomes)} checks pass ({report.rows} rows)")
        return
    for line in report.failure_lines():
        typer.echo(f"{file}: {line}", err=True)
    raise typer.Exit(1)


@app.command()
def run(
    files: Annotated[list[Path] | None, typer.Argument(help="Files to ingest first (optional)")] = None,
    workspace: WorkspaceOpt = None,
    set_: SetOpt = None,
    no_promote: Annotated[bool, typer.Option("--no-promote", help="Register but never move champion")] = False,
) -> None:
    """One continual-training cycle on every batch not yet trained on."""
    ctx = context(workspace, set_)
    with write_access(ctx, "run"):
        new_files = [f for f in files or [] if not _already_ingested(ctx, f)]
    from flows.pipeline import continual_training

    # The flow takes the workspace's turn itself and gives it back while a challenger waits
    # for approval, so other commands are not held up by a person's decision.
    summary = continual_training(
        files=[str(f) for f in new_files],
        workspace=str(ctx.ws.root),
        overrides=overrides(set_),
        auto_promote=False if no_promote else None,
    )
    typer.echo(
        f"cycle: {summary['status']}"
        + (f", v{summary['version']}" if summary.get("version") else "")
        + f"; champion v{summary.get('champion_after') or '-'}"
    )
    for reason in summary.get("reasons") or []:
        typer.echo(f"  - {reason}")


@quarantine_app.command("list")
def quarantine_list(workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """Every quarantined batch: why it is there, how many rows."""
    entries = quarantine.list_quarantine(context(workspace).ws)
    if as_json:
        return echo_json([e.__dict__ for e in entries])
    if not entries:
        typer.echo("quarantine is empty")
    for e in entries:
        typer.echo(f"{e.batch_id:<32} {e.rows:>7} rows  {e.kind:<10} {e.reason}")


@quarantine_app.command("resubmit")
def quarantine_resubmit(
    batch_id: str,
    file: Annotated[
        Path | None, typer.Option("--file", help="The fixed file (default: the quarantined rows as they are)")
    ] = None,
    workspace: WorkspaceOpt = None,
    set_: SetOpt = None,
) -> None:
    """Ingest a quarantined batch again (after fixing it) under a new batch id."""
    ctx = context(workspace, set_)
    with write_access(ctx, "quarantine resubmit"):
        source, new_id = quarantine.resubmission(ctx.ws, batch_id, file, set(batch_ids(ctx.ws)))
        from flows.pipeline import ingest as ingest_flow

        info = ingest_flow(str(source), new_id, str(ctx.ws.root), overrides(set_))
        quarantine.resolve(ctx.ws, batch_id, new_id)
    typer.echo(f"resubmitted {batch_id} as batch {info['batch_id']}: {info['rows']} rows")


@app.command()
def demo(
    source: Annotated[Path | None, typer.Option("--source", help="Replay this labelled CSV as batches instead")] = None,
    batches: Annotated[int, typer.Option(help="Batches to cut from --source")] = 4,
    rows: Annotated[int | None, typer.Option(help="Rows per batch (default: 600; 200 for causal-lm)", min=1)] = None,
    task: Annotated[
        str | None,
        typer.Option(
            "--task", help="Model family: classification, token-classification or causal-lm (default: the config's)"
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Reset a workspace that holds non-demo batches")] = False,
    workspace: WorkspaceOpt = None,
    set_: SetOpt = None,
) -> None:
    """Feed a sequence of batches through the whole cycle and print what happened."""
    from flows.demo import run_demo

    chosen = overrides(set_)
    if task is not None:
        chosen = {**chosen, "task": task}
    ctx = context(workspace, [*(set_ or []), *([f"task={task}"] if task else [])])
    with write_access(ctx, "demo"):
        run_demo(ctx.ws.root, source, batches, rows, force, chosen, ctx.config.task)


@app.command()
def backtest(
    source: Annotated[Path, typer.Option("--source", help="Historical labelled file (CSV/Parquet/JSONL)")],
    batches: Annotated[int, typer.Option("--batches", min=1, help="How many batches to cut it into")],
    order_by: Annotated[
        str | None, typer.Option("--order-by", help="Column that orders history (default: file order)")
    ] = None,
    rows: Annotated[int | None, typer.Option("--rows", help="Rows per batch (default: all rows / batches)")] = None,
    into: Annotated[
        Path | None, typer.Option("--into", help="Workspace to create (default: .kaizen/backtests/<time>)")
    ] = None,
    policy: Annotated[
        list[str] | None, typer.Option("--policy", help="Also decide every cycle under this gate policy (repeatable)")
    ] = None,
    reference: Annotated[
        Path | None, typer.Option("--reference", help="Fixed labelled file: each policy's champion's accuracy on it")
    ] = None,
    as_json: JsonOpt = False,
    workspace: WorkspaceOpt = None,
    set_: SetOpt = None,
) -> None:
    """Replay history through the real cycle: what would kaizen have promoted, and why?"""
    from flows.backtest import run_backtest
    from tasks.gate import POLICIES

    unknown = [p for p in policy or [] if p not in POLICIES]
    if unknown:
        raise typer.BadParameter(f"unknown policy {', '.join(unknown)}; choose from {', '.join(POLICIES)}")
    ctx = context(workspace, set_)
    run_backtest(ctx.ws, source, batches, rows, order_by, into, overrides(set_), as_json, policy, reference)


@config_app.command("show")
def config_show(workspace: WorkspaceOpt = None, set_: SetOpt = None, as_json: JsonOpt = False) -> None:
    """Every config field: its effective value, where the value came from, and what it does."""
    rows = describe_config(context(workspace).ws.root, overrides(set_))
    if as_json:
        return echo_json([row.__dict__ for row in rows])
    typer.echo(format_config_rows(rows))


def _workspace_arg(args: list[str]) -> Path | None:
    for i, arg in enumerate(args):
        if arg in ("--workspace", "-w") and i + 1 < len(args):
            return Path(args[i + 1])
        if arg.startswith("--workspace="):
            return Path(arg.split("=", 1)[1])
    return None


class _NoTracebackFor(logging.Filter):
    def __init__(self, expected: tuple[type[BaseException], ...]):
        super().__init__()
        self.expected = expected

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], self.expected):
            record.exc_info, record.exc_text = None, None
        return True


def quiet_expected_failures(expected: tuple[type[BaseException], ...]) -> None:
    """Prefect logs every failed task or flow run with its traceback. An expected failure (a
    full disk, a bad file) already names the file, row or rule in its one-line message, which
    Prefect's log line keeps and `kaizen: error:` repeats; its traceback only buries that line.
    Anything unexpected keeps its traceback."""
    for name in ("prefect.task_runs", "prefect.flow_runs"):
        logging.getLogger(name).addFilter(_NoTracebackFor(expected))


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns (and, run as a script, exits with) the exit status."""
    from models.base import ModelError
    from tasks.runtime import set_runtime_defaults
    from tasks.workspace import Workspace

    args = list(sys.argv[1:] if argv is None else argv)
    set_runtime_defaults(Workspace.at(_workspace_arg(args)).state)  # before prefect/transformers load
    quiet_expected_failures((KaizenError, ModelError))
    try:
        result = app(args=args, standalone_mode=False, prog_name="kaizen")
    except (KaizenError, ModelError) as exc:
        typer.echo(f"kaizen: error: {exc}", err=True)
        return 1
    except typer.Exit as exc:
        return exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("kaizen: aborted", err=True)
        return 130
    except typer.TyperException as exc:  # usage errors (typer's own click) carry their exit code
        exc.show()
        return getattr(exc, "exit_code", 2)
    return result if isinstance(result, int) else 0


def run_main() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run_main()
