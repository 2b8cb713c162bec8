"""Option types and helpers shared by the `kaizen` command modules."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
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


@contextlib.contextmanager
def write_access(ctx: Context, command: str, recover: bool = True) -> Iterator[None]:
    """Writing commands take the workspace in turn (see tasks.workspace.exclusive), then finish or
    undo what a killed command left half done to data/ (tasks.recovery) before their own work;
    the flows they start, and every champion move, recover the registry's side."""
    with exclusive(ctx.ws, command, on_wait=lambda line: typer.echo(line, err=True)):
        if recover:
            from tasks.recovery import recover as recover_workspace

            for line in recover_workspace(ctx, registry=False):  # the flow recovers the registry
                typer.echo(f"kaizen: {line}", err=True)
        yield


def echo_json(value) -> None:
    typer.echo(json.dumps(value, indent=1, default=str))
