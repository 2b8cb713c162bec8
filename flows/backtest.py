"""`kaizen backtest`: replay a historical labelled file as a stream of batches through the
real cycle, in a workspace of its own, and report what kaizen would have done."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import typer

from flows.demo import replay_feed
from tasks.config import CONFIG_FILE
from tasks.demo_data import split_source
from tasks.errors import KaizenError
from tasks.versioning import init_repo
from tasks.workspace import Workspace


def make_backtest_workspace(home: Workspace, into: Path | None) -> Workspace:
    """A fresh workspace that starts from the current workspace's kaizen.yaml."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    target = Workspace.at(into or home.state / "backtests" / stamp)
    if target.root.exists() and any(target.root.iterdir()):
        raise KaizenError(f"{target.root} is not empty; a backtest needs a fresh workspace")
    target.root.mkdir(parents=True, exist_ok=True)
    source_config = home.root / CONFIG_FILE
    if source_config.exists():
        (target.root / CONFIG_FILE).write_text(source_config.read_text())
    init_repo(target)
    return target


def _get(summary: dict, key: str) -> float | None:
    return (summary.get("metrics") or {}).get(key)


def backtest_record(cycle: int, summary: dict, task: str = "classification") -> dict:
    """One cycle's line. Metric keys are named after the family's primary metric
    (`new_accuracy` for a classifier, `new_entity_f1`, `new_perplexity`)."""
    from tasks.families import family_of, forgotten

    family = family_of(task)
    m = family.PRIMARY_METRIC
    champion_old = _get(summary, f"regression.champion.{m}")
    challenger_old = _get(summary, f"regression.challenger.{m}")
    lost = forgotten(family, {m: champion_old} if champion_old is not None else None, {m: challenger_old})
    return {
        "cycle": cycle,
        "batch": summary.get("batch"),
        "outcome": summary.get("status"),
        "promoted": summary.get("status") == "promoted",
        "version": summary.get("version"),
        "champion_after": summary.get("champion_after"),
        "reasons": summary.get("reasons") or [],
        "data": "withdrawn" if summary.get("withdrawn") else ("pending" if summary.get("pending") else "kept"),
        "metric": m,
        f"new_{m}": _get(summary, f"new.challenger.{m}"),
        f"new_{m}_champion": _get(summary, f"new.champion.{m}"),
        f"regression_{m}": challenger_old,
        f"regression_{m}_champion": champion_old,
        # How much of what the champion knew the challenger lost (positive = forgot).
        "forgetting": None if challenger_old is None else lost,
        "seconds": round(summary.get("seconds", 0.0), 1),
        # The power behind the decision: the smallest effect `new` could resolve, and which
        # comparisons could not resolve their margin.
        "new_resolvable": (summary.get("power") or {}).get("new"),
        "underpowered": [r for r in summary.get("reasons") or [] if "underpowered" in r],
    }


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def print_table(records: list[dict], total: float) -> None:
    m = records[0]["metric"] if records else "accuracy"
    short = "acc" if m == "accuracy" else m
    head = (
        f"{'cycle':<6}{'batch':<16}{'outcome':<13}{'champion':<9}{'new ' + short:<20}{'regression ' + short:<24}"
        f"{'forgetting':<11}{'resolves':<9}{'secs':>6}"
    )
    typer.echo(head)
    typer.echo("-" * len(head))
    for r in records:
        typer.echo(
            f"{r['cycle']:<6}{r['batch'][-15:]:<16}{r['outcome']:<13}{'v' + (r['champion_after'] or '-'):<9}"
            f"{_fmt(r[f'new_{m}']) + '/' + _fmt(r[f'new_{m}_champion']):<20}"
            f"{_fmt(r[f'regression_{m}']) + '/' + _fmt(r[f'regression_{m}_champion']):<24}"
            f"{_fmt(r['forgetting']):<11}{_fmt(r['new_resolvable']):<9}{r['seconds']:>6.1f}"
        )
        for reason in r["reasons"][:3]:
            typer.echo(f"{'':<6}why: {reason}")
        if r["data"] != "kept":
            typer.echo(f"{'':<6}data: batch {r['data']}")
    typer.echo(
        f"({m}: challenger/champion; resolves: the smallest gain the `new` set could resolve, in the gate's "
        f"units; {len(records)} cycles in {total:.1f}s)"
    )


def print_policies(tracks: list, records: list[dict]) -> None:
    """Per policy: its verdict and champion after each cycle, the champion's reference accuracy."""
    typer.echo(
        "\nreference accuracy of each cycle's challenger: "
        + " | ".join(f"v{r['version']} {_fmt(r.get('challenger_reference_accuracy'))}" for r in records if r["version"])
    )
    typer.echo("policies decided on the same evaluations (verdict->champion after each cycle, its reference accuracy):")
    for track in tracks:
        cells = [
            f"{v}->v{c or '-'} {_fmt(a)}"
            for v, c, a in zip(track.verdicts, track.champions, track.reference_accuracy, strict=True)
        ]
        typer.echo(
            f"  {track.policy:<9} promotions {track.promotions}, worst forgetting {_fmt(track.worst_forgetting)}: "
            + " | ".join(cells)
        )


def run_backtest(
    home: Workspace,
    source: Path,
    batches: int,
    rows: int | None,
    order_by: str | None,
    into: Path | None,
    overrides: dict,
    as_json: bool,
    policies: list[str] | None = None,
    reference: Path | None = None,
) -> list[dict]:
    from tasks.config import load_config

    target = make_backtest_workspace(home, into)
    task = load_config(target.root, overrides).task
    feed, labels = split_source(
        source, target.state / "backtest-input", batches, rows, shuffle=False, order_by=order_by, task=task
    )
    if labels is not None:
        overrides = {"labels": labels, **overrides}
    started = time.perf_counter()
    echo = (lambda *_: None) if as_json else typer.echo
    echo(f"backtest: {len(feed)} batches of {source} in workspace {target.root}")
    results = replay_feed(target, feed, overrides, echo=echo)
    records = [backtest_record(i + 1, r, task) for i, r in enumerate(results)]
    tracks = compare_policies(target, results, records, policies, reference, overrides)
    if as_json:
        typer.echo(json.dumps(records, indent=1))
        return records
    typer.echo("")
    print_table(records, time.perf_counter() - started)
    if tracks:
        print_policies(tracks, records)
    typer.echo(f"workspace kept at {target.root} (kaizen status / report --workspace {target.root})")
    return records


def compare_policies(
    target: Workspace,
    results: list[dict],
    records: list[dict],
    policies: list[str] | None,
    reference: Path | None,
    overrides: dict,
) -> list:
    """Decide each listed policy on the replay's evaluations; add its verdict, champion and (with
    a reference file) the champion's reference accuracy to every cycle's record."""
    from tasks.backtest import attach_reference, reference_accuracies, track_policies
    from tasks.context import Context

    if not policies:
        return []
    ctx = Context.open(target.root, overrides)
    tracks = track_policies(ctx, results, policies)
    accuracy: dict[str, float] = {}
    if reference is not None:
        # Every challenger, promoted or not: the reference set is what says a rejection was wrong.
        versions = {c for t in tracks for c in t.champions if c} | {r["version"] for r in records if r["version"]}
        accuracy = reference_accuracies(ctx, versions, reference, target.runs / "reference")
        attach_reference(tracks, accuracy)
    for i, record in enumerate(records):
        record["challenger_reference_accuracy"] = accuracy.get(record["version"] or "")
        record["policies"] = {
            t.policy: {
                "verdict": t.verdicts[i],
                "champion": t.champions[i],
                "reference_accuracy": t.reference_accuracy[i] if t.reference_accuracy else None,
            }
            for t in tracks
        }
    return tracks
