"""`kaizen`: the one command line. Every subcommand is a thin call into flows/ or tasks/."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Continual re-fine-tuning: validate, version, train, gate and promote.")

WorkspaceOpt = Annotated[Optional[Path], typer.Option("--workspace", "-w", help="Workspace root (default: $KAIZEN_WORKSPACE or .)")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override a config field: --set train.epochs=2")]


def _environment(workspace: Path | None) -> None:
    """Offline, quiet defaults; Prefect keeps its state inside the workspace."""
    from tasks.workspace import Workspace

    ws = Workspace.at(workspace)
    defaults = {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "GX_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_HOME": str(ws.state / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "GIT_PYTHON_REFRESH": "quiet",
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)


def _overrides(items: list[str] | None) -> dict:
    from tasks.config import parse_override

    return dict(parse_override(item) for item in items or [])


def _context(workspace: Path | None, overrides: list[str] | None):
    from tasks.config import load_config
    from tasks.workspace import Workspace

    ws = Workspace.at(workspace)
    return ws, load_config(ws.root, _overrides(overrides))


@app.command()
def init(workspace: WorkspaceOpt = None) -> None:
    """Create a workspace: DVC repo with a local remote, data/ and kaizen.yaml."""
    from tasks.config import CONFIG_FILE, KaizenConfig, load_config
    from tasks.versioning import init_repo
    from tasks.workspace import Workspace

    ws = Workspace.at(workspace)
    init_repo(ws, load_config(ws.root).data.remote)
    config_path = ws.root / CONFIG_FILE
    if not config_path.exists():
        import yaml

        config_path.write_text(yaml.safe_dump(KaizenConfig().model_dump(mode="json"), sort_keys=False))
    typer.echo(f"workspace ready at {ws.root}")


@app.command()
def ingest(
    file: Path,
    batch_id: Annotated[Optional[str], typer.Option("--batch-id", help="Id of the new batch (default: time + content hash)")] = None,
    workspace: WorkspaceOpt = None,
    set_: SetOpt = None,
) -> None:
    """Validate FILE and store it as a new immutable, DVC-versioned batch."""
    from tasks.ingest import check_input

    ws, config = _context(workspace, set_)
    check_input(ws, config, file, batch_id)  # refuse bad files before any flow starts
    from flows.pipeline import ingest as ingest_flow

    info = ingest_flow(str(file), batch_id, str(workspace) if workspace else None, _overrides(set_))
    typer.echo(f"ingested batch {info['batch_id']}: {info['rows']} rows, splits {info['split_counts']}")


@app.command()
def validate(file: Path, workspace: WorkspaceOpt = None, set_: SetOpt = None) -> None:
    """Run the validation suite (with drift and leakage against this workspace) without ingesting."""
    from models.classifier import load_tokenizer
    from tasks.history import load_history
    from tasks.ingest import extra_columns, prepare_batch, read_table
    from tasks.validate import validate_batch

    ws, config = _context(workspace, set_)
    raw = read_table(file)
    batch = prepare_batch(raw, config, str(file))
    tokenizer = load_tokenizer(config.model.base)
    history, keys = load_history(ws, tokenizer) if ws.manifest.exists() else (None, None)
    report = validate_batch(batch, config, extra_columns(raw, config), history, keys, tokenizer)
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
    files: Annotated[Optional[list[Path]], typer.Argument(help="Files to ingest first (optional)")] = None,
    workspace: WorkspaceOpt = None,
    set_: SetOpt = None,
    no_promote: Annotated[bool, typer.Option("--no-promote", help="Register but never move champion")] = False,
) -> None:
    """One continual-training cycle on every batch not yet trained on."""
    from tasks.ingest import check_input

    ws, config = _context(workspace, set_)
    for file in files or []:
        check_input(ws, config, file)  # refuse bad files before any flow starts
    from flows.pipeline import continual_training

    summary = continual_training(
        files=[str(f) for f in files or []],
        workspace=str(workspace) if workspace else None,
        overrides=_overrides(set_),
        auto_promote=False if no_promote else None,
    )
    _print_cycle(summary)


def _print_cycle(summary: dict) -> None:
    typer.echo(f"cycle: {summary['status']}" + (f", v{summary['version']}" if summary.get("version") else "")
               + f"; champion v{summary.get('champion_after') or '-'}")
    for reason in summary.get("reasons") or []:
        typer.echo(f"  - {reason}")


@app.command()
def status(workspace: WorkspaceOpt = None, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Champion, challenger, data version and the last run's gate verdict."""
    from tasks.cycle import load_last_summary
    from tasks.ingest import read_manifest
    from tasks.registry import CHALLENGER, CHAMPION, connect, get_alias
    from tasks.versioning import data_version

    ws, config = _context(workspace, None)
    client = connect(ws, config)
    name = config.registry.model_name
    champion, challenger = get_alias(client, name, CHAMPION), get_alias(client, name, CHALLENGER)
    last = load_last_summary(ws) or {}
    report = {
        "workspace": str(ws.root),
        "model": name,
        "champion": _describe_ref(champion),
        "challenger": _describe_ref(challenger),
        "data_version": data_version(ws),
        "batches": len(read_manifest(ws)),
        "quarantined": sorted(p.name for p in ws.quarantine.iterdir()) if ws.quarantine.exists() else [],
        "last_run": {k: last.get(k) for k in ("status", "verdict", "reasons", "version", "batch_ids", "finished_at")},
    }
    if as_json:
        typer.echo(json.dumps(report, indent=1))
        return
    for role in ("champion", "challenger"):
        ref = report[role]
        typer.echo(f"{role:<11} " + (f"v{ref['version']}  data {ref['data_md5']}  gate {ref['gate_verdict']}" if ref else "none"))
    typer.echo(f"data       {report['data_version']} ({report['batches']} batches, {len(report['quarantined'])} quarantined)")
    last_run = report["last_run"]
    typer.echo(f"last run   {last_run.get('status') or 'none'}" + (f", gate {last_run['verdict']}" if last_run.get("verdict") else ""))


def _describe_ref(ref) -> dict | None:
    if ref is None:
        return None
    return {
        "version": ref.version,
        "data_md5": ref.tags.get("kaizen.data_md5"),
        "batch_ids": [b for b in ref.tags.get("kaizen.batch_ids", "").split(",") if b],
        "gate_verdict": ref.tags.get("kaizen.gate_verdict"),
        "git_sha": ref.tags.get("kaizen.git_sha"),
    }


@app.command()
def promote(
    version: str,
    reason: Annotated[str, typer.Option("--reason", help="Why (recorded in the ledger)")],
    force: Annotated[bool, typer.Option("--force", help="Promote even though the gate rejected it (recorded)")] = False,
    workspace: WorkspaceOpt = None,
) -> None:
    """Make VERSION the champion by hand."""
    from tasks.errors import KaizenError
    from tasks.registry import CHAMPION, connect, get_alias, get_version, manual_promotion_problem, move_champion

    ws, config = _context(workspace, None)
    client = connect(ws, config)
    name = config.registry.model_name
    ref = get_version(client, name, version)
    current = get_alias(client, name, CHAMPION)
    current_version = current.version if current else None
    if current_version == ref.version:
        raise KaizenError(f"v{version} is already the champion")
    problem = manual_promotion_problem(ref, current_version)
    if problem and not force:
        raise KaizenError(f"v{version}: {problem}; use --force to promote anyway (the override is recorded)")
    action = "forced-promote" if problem else "manual-promote"
    why = f"{reason} [override: {problem}]" if problem else reason
    entry = move_champion(client, ws, name, version, current_version, action, why)
    typer.echo(f"champion: v{entry.from_version or '-'} -> v{entry.to_version} ({action})")


@app.command()
def rollback(
    reason: Annotated[str, typer.Option("--reason", help="Why (recorded in the ledger)")],
    workspace: WorkspaceOpt = None,
) -> None:
    """Restore the previous champion."""
    from tasks.registry import CHAMPION, connect, get_alias, move_champion, previous_champion

    ws, config = _context(workspace, None)
    client = connect(ws, config)
    name = config.registry.model_name
    current = get_alias(client, name, CHAMPION)
    target = previous_champion(client, name)
    entry = move_champion(client, ws, name, target, current.version if current else None, "rollback", reason)
    typer.echo(f"champion: v{entry.from_version} -> v{entry.to_version} (rollback)")


@app.command()
def history(workspace: WorkspaceOpt = None, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """The promotion ledger: every move of champion, with who, when and why."""
    from tasks.registry import connect, read_ledger

    ws, config = _context(workspace, None)
    entries = read_ledger(connect(ws, config), config.registry.model_name)
    if as_json:
        typer.echo(json.dumps([e.__dict__ for e in entries], indent=1))
        return
    for e in entries:
        typer.echo(f"{e.seq:>4} {e.when} {e.action:<15} v{e.from_version or '-'} -> v{e.to_version}  by {e.who}: {e.why}")


quarantine_app = typer.Typer(help="Batches kept out of training, with their reports.", no_args_is_help=True)
app.add_typer(quarantine_app, name="quarantine")


@quarantine_app.command("list")
def quarantine_list(workspace: WorkspaceOpt = None, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Every quarantined batch: why it is there, how many rows."""
    from tasks.quarantine import list_quarantine

    ws, _ = _context(workspace, None)
    entries = list_quarantine(ws)
    if as_json:
        typer.echo(json.dumps([e.__dict__ for e in entries], indent=1))
        return
    if not entries:
        typer.echo("quarantine is empty")
    for e in entries:
        typer.echo(f"{e.batch_id:<32} {e.rows:>7} rows  {e.kind:<10} {e.reason}")


@quarantine_app.command("resubmit")
def quarantine_resubmit(
    batch_id: str,
    file: Annotated[Optional[Path], typer.Option("--file", help="The fixed file (default: the quarantined rows as they are)")] = None,
    workspace: WorkspaceOpt = None,
    set_: SetOpt = None,
) -> None:
    """Ingest a quarantined batch again (after fixing it) under a new batch id."""
    from tasks.quarantine import resolve, resubmission

    ws, config = _context(workspace, set_)
    source, new_id = resubmission(ws, batch_id, file)
    from flows.pipeline import ingest as ingest_flow

    info = ingest_flow(str(source), new_id, str(ws.root), _overrides(set_))
    resolve(ws, batch_id, new_id)
    typer.echo(f"resubmitted {batch_id} as batch {info['batch_id']}: {info['rows']} rows")


@app.command()
def lineage(
    version: str,
    checkout: Annotated[Optional[Path], typer.Option("--checkout", help="Restore that version's exact data into DIR")] = None,
    workspace: WorkspaceOpt = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """What VERSION was trained on: data version, batches, DVC remote, code and config."""
    from tasks.registry import connect, get_version
    from tasks.versioning import checkout_version

    ws, config = _context(workspace, None)
    ref = get_version(connect(ws, config), config.registry.model_name, version)
    t = ref.tags
    record = {
        "version": ref.version,
        "data_md5": t.get("kaizen.data_md5"),
        "batch_ids": [b for b in t.get("kaizen.batch_ids", "").split(",") if b],
        "new_batches": [b for b in t.get("kaizen.new_batches", "").split(",") if b],
        "parent_version": t.get("kaizen.parent_version") or None,
        "dvc_remote": t.get("kaizen.dvc_remote"),
        "dvc_endpoint": t.get("kaizen.dvc_endpoint") or None,
        "git_sha": t.get("kaizen.git_sha"),
        "config_hash": t.get("kaizen.config_hash"),
        "flow_run_id": t.get("kaizen.flow_run_id"),
        "mlflow_run_id": ref.run_id,
    }
    if as_json:
        typer.echo(json.dumps(record, indent=1))
    else:
        for key, value in record.items():
            typer.echo(f"{key:<15} {', '.join(value) if isinstance(value, list) else value}")
    if checkout is not None:
        remote = {"url": record["dvc_remote"] or ""}
        if record["dvc_endpoint"]:
            remote["endpointurl"] = record["dvc_endpoint"]
        data = checkout_version(record["data_md5"] or "", remote, checkout)
        typer.echo(f"restored data version {record['data_md5']} into {data}")


@app.command()
def report(
    out: Annotated[Path, typer.Option("--out", help="Directory for index.html and its pictures")],
    workspace: WorkspaceOpt = None,
) -> None:
    """Write a static HTML dashboard: champion timeline, metrics, gate decisions, drift."""
    from tasks.registry import connect
    from tasks.report import collect_report, write_report

    ws, config = _context(workspace, None)
    page = write_report(collect_report(connect(ws, config), ws, config), out)
    typer.echo(f"report: {page} (open it in a browser; no server needed)")


@app.command()
def predict(
    texts: list[str],
    version: Annotated[Optional[str], typer.Option("--version", help="Model version (default: champion)")] = None,
    workspace: WorkspaceOpt = None,
) -> None:
    """Label TEXT... with the champion (or --version)."""
    import tempfile

    from models.classifier import load_classifier
    from tasks.errors import KaizenError
    from tasks.featurize import tokenize_texts
    from tasks.inference import choose_device, predict_proba
    from tasks.registry import CHAMPION, connect, download_model, get_alias, get_version

    ws, config = _context(workspace, None)
    client = connect(ws, config)
    name = config.registry.model_name
    ref = get_version(client, name, version) if version else get_alias(client, name, CHAMPION)
    if ref is None:
        raise KaizenError("there is no champion yet; run `kaizen run` first")
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = download_model(client, ref, Path(tmp))
        model, tokenizer = load_classifier(str(model_dir), config.labels)
    ids, offsets = tokenize_texts(list(texts), tokenizer, config.model.max_length)
    rows = [ids[offsets[i]:offsets[i + 1]] for i in range(len(texts))]
    proba = predict_proba(model, rows, tokenizer.pad_token_id or 0, 32, choose_device(config.train.device))
    for text, p in zip(texts, proba):
        typer.echo(f"{config.labels[int(p.argmax())]}\t{float(p.max()):.3f}\t{text}")


@app.command()
def demo(
    source: Annotated[Optional[Path], typer.Option("--source", help="Replay this labelled CSV as batches instead")] = None,
    batches: Annotated[int, typer.Option(help="Batches to cut from --source")] = 4,
    rows: Annotated[int, typer.Option(help="Rows per batch")] = 600,
    force: Annotated[bool, typer.Option("--force", help="Reset a workspace that holds non-demo batches")] = False,
    workspace: WorkspaceOpt = None,
    set_: SetOpt = None,
) -> None:
    """Feed a sequence of batches through the whole cycle and print what happened."""
    from flows.demo import run_demo

    run_demo(workspace, source, batches, rows, force, _overrides(set_))


@app.command()
def backtest(
    source: Annotated[Path, typer.Option("--source", help="Historical labelled file (CSV/Parquet/JSONL)")],
    batches: Annotated[int, typer.Option("--batches", help="How many batches to cut it into")],
    order_by: Annotated[Optional[str], typer.Option("--order-by", help="Column that orders history (default: file order)")] = None,
    rows: Annotated[Optional[int], typer.Option("--rows", help="Rows per batch (default: all rows / batches)")] = None,
    into: Annotated[Optional[Path], typer.Option("--into", help="Workspace to create (default: .kaizen/backtests/<time>)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the per-cycle records as JSON")] = False,
    workspace: WorkspaceOpt = None,
    set_: SetOpt = None,
) -> None:
    """Replay history through the real cycle: what would kaizen have promoted, and why?"""
    from flows.backtest import run_backtest
    from tasks.workspace import Workspace

    if batches < 1:
        raise typer.BadParameter("--batches must be at least 1")
    run_backtest(Workspace.at(workspace), source, batches, rows, order_by, into, _overrides(set_), as_json)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns (and, run as a script, exits with) the exit status."""
    from models.classifier import ModelError
    from tasks.errors import KaizenError

    args = list(sys.argv[1:] if argv is None else argv)
    workspace = None
    for i, arg in enumerate(args):
        if arg in ("--workspace", "-w") and i + 1 < len(args):
            workspace = Path(args[i + 1])
        elif arg.startswith("--workspace="):
            workspace = Path(arg.split("=", 1)[1])
    _environment(workspace)
    import click

    try:
        result = app(args=args, standalone_mode=False, prog_name="kaizen")
    except (KaizenError, ModelError) as exc:
        typer.echo(f"kaizen: error: {exc}", err=True)
        return 1
    except (typer.Exit, click.exceptions.Exit) as exc:
        return exc.exit_code
    except (typer.Abort, click.exceptions.Abort):
        typer.echo("kaizen: aborted", err=True)
        return 130
    except click.ClickException as exc:  # usage errors carry their own exit code
        exc.show()
        return exc.exit_code
    return result if isinstance(result, int) else 0


def run_main() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run_main()
