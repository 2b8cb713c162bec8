"""Option types and helpers shared by the `kaizen` command modules."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from tasks.config import parse_override
from tasks.context import Context
from tasks.workspace import exclusive

WorkspaceOpt = Annotated[
    Path | None, typer.Option("--workspace", "-w", help="Workspace root (default: $KAIZEN_WORKSPACE or .)")
]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override a config field: --set train.epochs=2")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON")]
ReasonOpt = Annotated[str, typer.Option("--reason", help="Why (recorded in the ledger)")]


def overrides(items: list[str] | None) -> dict:
    return dict(parse_override(item) for item in items or [])


def context(workspace: Path | None, items: list[str] | None = None) -> Context:
    return Context.open(workspace, overrides(items))


def write_access(ctx: Context, command: str):
    """Writing commands take the workspace in turn (see tasks.workspace.exclusive)."""
    return exclusive(ctx.ws, command, on_wait=lambda line: typer.echo(line, err=True))


def echo_json(value) -> None:
    typer.echo(json.dumps(value, indent=1, default=str))
