"""`kaizen demo`: the whole story on the demo corpus (or any labelled CSV), then a summary."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import typer

from flows.pipeline import BatchRejected, continual_training
from tasks.cycle import load_last_summary
from tasks.errors import KaizenError
from tasks.ingest import read_manifest
from tasks.workspace import Workspace

# Local state the demo may reset; the feature cache and Prefect's home are kept (content
# addressed / harmless) so a second demo is faster.
RESET = (
    "mlflow.db",
    "mlartifacts",
    "dvc-remote",
    "quarantine",
    "runs",
    "reports",
    "staging",
    "last_run.json",
    "promote.lock",
)


def reset_workspace(ws: Workspace, force: bool) -> None:
    foreign = [e["batch_id"] for e in read_manifest(ws) if not e["batch_id"].startswith("demo-")]
    if foreign and not force:
        raise KaizenError(
            f"{ws.root} holds batches the demo did not make ({', '.join(foreign[:3])}...); "
            "the demo resets the workspace, so run it elsewhere or pass --force"
        )
    shutil.rmtree(ws.data, ignore_errors=True)
    for name in RESET:
        path = ws.state / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def run_demo(
    workspace: Path | None, source: Path | None, batches: int, rows: int, force: bool, overrides: dict
) -> list[dict]:
    from tasks.demo_data import LABELS, split_source, write_demo_batches

    ws = Workspace.at(workspace)
    typer.echo(f"demo: resetting kaizen state in {ws.root} (data/, registry, quarantine)")
    reset_workspace(ws, force)
    feed_dir = ws.state / "demo-input"
    shutil.rmtree(feed_dir, ignore_errors=True)
    if source is None:
        feed = write_demo_batches(feed_dir, rows)
        overrides = {"labels": LABELS, **overrides}
    else:
        feed, labels = split_source(source, feed_dir, batches, rows, shuffle=True, prefix="demo-")
        overrides = {"labels": labels, **overrides}

    started = time.perf_counter()
    results = replay_feed(ws, feed, overrides)
    print_summary(results, time.perf_counter() - started)
    print_next_steps(ws)
    return results


def replay_feed(ws: Workspace, feed: list[tuple[str, Path, str]], overrides: dict, echo=typer.echo) -> list[dict]:
    """One full cycle per file, in order; returns each cycle's summary (quarantine included)."""
    results = []
    for batch_id, path, description in feed:
        echo(f"\n=== {batch_id}: {description} ===")
        t0 = time.perf_counter()
        try:
            continual_training(files=[str(path)], batch_ids=[batch_id], workspace=str(ws.root), overrides=overrides)
        except BatchRejected as rejected:
            echo(str(rejected))
        summary = load_last_summary(ws) or {}
        summary["batch"], summary["seconds"] = batch_id, time.perf_counter() - t0
        results.append(summary)
    return results


def print_summary(results: list[dict], total: float) -> None:
    typer.echo("\n" + "=" * 100)
    header = f"{'batch':<22}{'outcome':<13}{'version':<9}{'champion':<10}{'new acc (chal/champ)':<22}{'regression acc':<17}{'secs':>6}"
    typer.echo(header)
    typer.echo("-" * len(header))
    for r in results:
        m = r.get("metrics") or {}
        new = f"{_fmt(m.get('new.challenger.accuracy'))}/{_fmt(m.get('new.champion.accuracy'))}"
        reg = f"{_fmt(m.get('regression.challenger.accuracy'))}/{_fmt(m.get('regression.champion.accuracy'))}"
        typer.echo(
            f"{r['batch']:<22}{r.get('status', '?'):<13}{('v' + r['version']) if r.get('version') else '-':<9}"
            f"{('v' + r['champion_after']) if r.get('champion_after') else '-':<10}{new:<22}{reg:<17}{r['seconds']:>6.1f}"
        )
        for reason in (r.get("reasons") or [])[:4]:
            typer.echo(f"{'':<22}  why: {reason}")
        if r.get("withdrawn"):
            typer.echo(f"{'':<22}  data: withdrawn to quarantine (the failures implicate the batch)")
        if r.get("pending"):
            typer.echo(f"{'':<22}  data: kept pending for the next cycle")
    stages: dict[str, float] = {}
    for r in results:
        for stage, secs in (r.get("timings") or {}).items():
            stages[stage] = stages.get(stage, 0.0) + secs
    typer.echo("-" * len(header))
    typer.echo(
        f"total {total:.1f}s; by stage: "
        + ", ".join(f"{k} {v:.1f}s ({100 * v / total:.0f}%)" for k, v in sorted(stages.items(), key=lambda kv: -kv[1]))
        + f", orchestration and other {max(total - sum(stages.values()), 0):.1f}s"
    )


def print_next_steps(ws: Workspace) -> None:
    typer.echo(f"""
Next:
  kaizen status                 champion, challenger, data version, last gate verdict
  kaizen history                every move of the champion alias
  kaizen predict "the battery drains overnight"
  MLflow UI:   mlflow ui --backend-store-uri sqlite:///{ws.mlflow_db} --host 127.0.0.1 --port 5000
  Prefect UI:  PREFECT_HOME={ws.state / "prefect"} prefect server start --host 127.0.0.1
""")
