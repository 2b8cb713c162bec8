"""`kaizen` commands over the registry: status, promotion, rollback, history, lineage,
report and prediction. Merged into the top-level app by flows/cli.py."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows.cli_options import JsonOpt, ReasonOpt, SetOpt, WorkspaceOpt, context, echo_json, write_access
from tasks import lineage as lineage_mod
from tasks import promotion
from tasks.registry import read_ledger
from tasks.status import format_status, workspace_status

registry_app = typer.Typer()


@registry_app.command()
def status(workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """Champion, challenger, data version and the last run's gate verdict."""
    report = workspace_status(context(workspace))
    if as_json:
        return echo_json(report)
    typer.echo("\n".join(format_status(report)))


@registry_app.command()
def promote(
    version: str,
    reason: ReasonOpt,
    force: Annotated[bool, typer.Option("--force", help="Promote even though the gate rejected it (recorded)")] = False,
    workspace: WorkspaceOpt = None,
) -> None:
    """Make VERSION the champion by hand."""
    ctx = context(workspace)
    with write_access(ctx, "promote"):
        entry = promotion.promote_by_hand(ctx, version, reason, force)
    typer.echo(f"champion: v{entry.from_version or '-'} -> v{entry.to_version} ({entry.action})")


@registry_app.command()
def rollback(reason: ReasonOpt, workspace: WorkspaceOpt = None) -> None:
    """Restore the previous champion."""
    ctx = context(workspace)
    with write_access(ctx, "rollback"):
        entry = promotion.roll_back(ctx, reason)
    typer.echo(f"champion: v{entry.from_version} -> v{entry.to_version} (rollback)")


@registry_app.command()
def history(workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """The promotion ledger: every move of champion, with who, when and why."""
    ctx = context(workspace)
    entries = read_ledger(ctx.client, ctx.model_name)
    if as_json:
        return echo_json([e.__dict__ for e in entries])
    for e in entries:
        typer.echo(
            f"{e.seq:>4} {e.when} {e.action:<15} v{e.from_version or '-'} -> v{e.to_version}  by {e.who}: {e.why}"
        )


@registry_app.command()
def lineage(
    version: str,
    checkout: Annotated[
        Path | None, typer.Option("--checkout", help="Restore that version's exact data into DIR")
    ] = None,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """What VERSION was trained on: data version, batches, DVC remote, code and config."""
    ctx = context(workspace)
    record = lineage_mod.describe_version(ctx, version)
    if as_json:
        echo_json(record)
    else:
        for key, value in record.items():
            typer.echo(f"{key:<15} {', '.join(value) if isinstance(value, list) else value}")
    if checkout is not None:
        typer.echo(
            f"restored data version {record['data_md5']} into {lineage_mod.checkout_data(ctx, version, checkout)}"
        )


@registry_app.command()
def report(
    out: Annotated[Path, typer.Option("--out", help="Directory for index.html and its pictures")],
    workspace: WorkspaceOpt = None,
) -> None:
    """Write a static HTML dashboard: champion timeline, metrics, gate decisions, drift."""
    from tasks.report import collect_report, write_report

    ctx = context(workspace)
    page = write_report(collect_report(ctx.client, ctx.ws, ctx.config), out)
    typer.echo(f"report: {page} (open it in a browser; no server needed)")


@registry_app.command()
def predict(
    texts: list[str],
    version: Annotated[str | None, typer.Option("--version", help="Model version (default: champion)")] = None,
    max_new_tokens: Annotated[
        int | None, typer.Option("--max-new-tokens", min=1, help="causal-lm: tokens to generate (default 32)")
    ] = None,
    temperature: Annotated[
        float | None, typer.Option("--temperature", min=0.0, help="causal-lm: 0 = greedy (default), above: sampled")
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="causal-lm: seed of sampling (default 0)")] = None,
    workspace: WorkspaceOpt = None,
) -> None:
    """Answer TEXT... with the champion (or --version), through the registered MLflow model:
    a label (classification), a tag per word (token-classification: words split on spaces) or
    a continuation (causal-lm). One line per text: the answer's columns, tab-separated, then the text."""
    from tasks.inference import predict_registered

    params = {"max_new_tokens": max_new_tokens, "temperature": temperature, "seed": seed}
    _, frame = predict_registered(context(workspace), texts, version, params)
    shown = [c for c in frame.columns if not str(c).startswith("p_")]
    for text, row in zip(texts, frame[shown].itertuples(index=False), strict=True):
        cells = [f"{v:.3f}" if isinstance(v, float) else str(v) for v in row]
        typer.echo("\t".join([*cells, text]))


@registry_app.command()
def doctor(
    quick: Annotated[
        bool, typer.Option("--quick", help="Skip re-hashing every remote object and every registered version's weights")
    ] = False,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Check that data/, data.dvc, the manifest, the remote, the history statistics, the registry,
    the aliases and the ledger agree; one line per disagreement, exit 1 if there is any."""
    from tasks.doctor import PROBLEM, examine, summary_line

    found = examine(context(workspace), deep=not quick, progress=lambda what: typer.echo(f"checking {what}", err=True))
    if as_json:
        echo_json([f.__dict__ for f in found])
    else:
        for finding in found:
            typer.echo(finding.line())
        typer.echo(summary_line(found))
    if any(f.severity == PROBLEM for f in found):
        raise typer.Exit(1)


@registry_app.command("serve-model")
def serve_model(
    host: Annotated[str | None, typer.Option(help="Address to bind (default serve.host, 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default serve.port, 8000; 0 = any free port)")] = None,
    workspace: WorkspaceOpt = None,
    set_: SetOpt = None,
) -> None:
    """Answer POST /predict from the champion, following the alias as it moves (GET /health, /metrics)."""
    import logging

    from tasks.service import serve

    items = list(set_ or []) + [f"serve.{k}={v}" for k, v in (("host", host), ("port", port)) if v is not None]
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.WARNING)
    logging.getLogger("kaizen").setLevel(logging.INFO)
    serve(context(workspace, items), on_ready=lambda line: typer.echo(line, err=True))
