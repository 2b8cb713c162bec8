"""`kaizen demo`: the whole story on the demo corpus (or any labelled CSV), then a summary."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import typer

from flows.pipeline import BatchRejected, continual_training
from tasks.cycle import load_last_summary
from tasks.errors import KaizenError
from tasks.families import family_of
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
    workspace: Path | None,
    source: Path | None,
    batches: int,
    rows: int | None,
    force: bool,
    overrides: dict,
    task: str = "classification",
) -> list[dict]:
    """The demo of `task`'s family: its own corpus (tasks/demo_families.py), or `source` cut
    into batches, each through the whole cycle."""
    from tasks.demo_data import split_source
    from tasks.demo_families import demo_feed

    ws = Workspace.at(workspace)
    typer.echo(f"demo ({task}): resetting kaizen state in {ws.root} (data/, registry, quarantine)")
    reset_workspace(ws, force)
    feed_dir = ws.state / "demo-input"
    shutil.rmtree(feed_dir, ignore_errors=True)
    if source is None:
        feed, settings = demo_feed(task, feed_dir, rows)
    else:
        feed, labels = split_source(source, feed_dir, batches, rows or 600, shuffle=True, prefix="demo-", task=task)
        settings = {"labels": labels} if labels else {}
    overrides = {"task": task, **settings, **overrides}

    started = time.perf_counter()
    results = replay_feed(ws, feed, overrides)
    print_summary(results, time.perf_counter() - started, family_of(task).PRIMARY_METRIC)
    print_next_steps(ws, task)
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


def print_summary(results: list[dict], total: float, metric: str = "accuracy") -> None:
    typer.echo("\n" + "=" * 100)
    short = "acc" if metric == "accuracy" else metric
    header = (
        f"{'batch':<22}{'outcome':<13}{'version':<9}{'champion':<10}{f'new {short} (chal/champ)':<30}"
        f"{f'regression {short}':<22}{'secs':>6}"
    )
    typer.echo(header)
    typer.echo("-" * len(header))
    for r in results:
        m = r.get("metrics") or {}
        new = f"{_fmt(m.get(f'new.challenger.{metric}'))}/{_fmt(m.get(f'new.champion.{metric}'))}"
        reg = f"{_fmt(m.get(f'regression.challenger.{metric}'))}/{_fmt(m.get(f'regression.champion.{metric}'))}"
        typer.echo(
            f"{r['batch']:<22}{r.get('status', '?'):<13}{('v' + r['version']) if r.get('version') else '-':<9}"
            f"{('v' + r['champion_after']) if r.get('champion_after') else '-':<10}{new:<30}{reg:<22}{r['seconds']:>6.1f}"
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


EXAMPLES = {
    "classification": '"the battery drains overnight"',
    "token-classification": '"Maria Lopez reviewed the Zephyr X2 in Lisbon"',
    "causal-lm": '--max-new-tokens 20 "Hi Omar, thanks for telling us your new Nimbus Pad 2"',
}


def print_next_steps(ws: Workspace, task: str = "classification") -> None:
    typer.echo(f"""
Next:
  kaizen status                 champion, challenger, data version, last gate verdict
  kaizen history                every move of the champion alias
  kaizen predict {EXAMPLES.get(task, '"some text"')}
  MLflow UI:   mlflow ui --backend-store-uri sqlite:///{ws.mlflow_db} --host 127.0.0.1 --port 5000
  Prefect UI:  PREFECT_HOME={ws.state / "prefect"} prefect server start --host 127.0.0.1
""")
