"""MLflow tracking of what kaizen does: one run per validation, one run per cycle.

Plain functions over a Context; the flows call them inside Prefect tasks, so a flaky
tracking server is retried like any other I/O.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tasks.context import Context
from tasks.evaluate import Evaluation
from tasks.gate import GateDecision
from tasks.registry import ensure_experiment

LogMetrics = Callable[[dict[str, float], int], None]


def log_validation(ctx: Context, batch_id: str, report, report_path: Path, flow_run_id: str) -> str:
    """Every validation is a run of the `<project>-data` experiment, with its reports attached."""
    client = ctx.client
    experiment = ensure_experiment(client, ctx.ws, ctx.config, f"{ctx.config.project}-data")
    run = client.create_run(
        experiment,
        run_name=f"validate-{batch_id}",
        tags={
            "kaizen.batch_id": batch_id,
            "kaizen.validation": "pass" if report.success else "fail",
            "kaizen.flow_run_id": flow_run_id,
        },
    )
    run_id = run.info.run_id
    client.log_metric(run_id, "rows", report.rows)
    client.log_metric(run_id, "failed_expectations", len(report.failures))
    client.log_artifact(run_id, str(report_path))
    if report.data_docs and Path(report.data_docs).exists():
        client.log_artifacts(run_id, str(Path(report.data_docs).parent), "data_docs")
    client.set_terminated(run_id)
    return run_id


def start_cycle_run(ctx: Context, new_batches: list[str], flow_run_id: str) -> str:
    """The cycle's run: config (hash and full), then training curves, evaluation and gate."""
    return _start_run(ctx, f"cycle-{new_batches[-1]}", flow_run_id)


def _start_run(ctx: Context, run_name: str, flow_run_id: str) -> str:
    client = ctx.client
    experiment = ensure_experiment(client, ctx.ws, ctx.config)
    run = client.create_run(experiment, run_name=run_name, tags={"kaizen.flow_run_id": flow_run_id})
    client.log_param(run.info.run_id, "config_hash", ctx.config.fingerprint())
    client.log_text(run.info.run_id, json.dumps(ctx.config.model_dump(mode="json"), indent=1), "config.json")
    return run.info.run_id


def log_look(
    ctx: Context, version: str, batches: list[str], look: Evaluation, decision: GateDecision, flow_run_id: str
) -> str:
    """One more look at a held candidate: this look's evaluation (the part that is pooled later)
    and the gate's decision on all looks so far."""
    run_id = _start_run(ctx, f"evidence-v{version}-{batches[-1]}", flow_run_id)
    log_evaluation(ctx, run_id, look, decision)
    ctx.client.set_terminated(run_id)
    return run_id


def fail_run(ctx: Context, run_id: str) -> None:
    ctx.client.set_terminated(run_id, status="FAILED")


def metric_logger(ctx: Context, run_id: str) -> LogMetrics:
    """A callback for the training loop: step-indexed metrics on the cycle's run."""
    client = ctx.client

    def log_metrics(values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            client.log_metric(run_id, key, value, step=step)

    return log_metrics


def log_evaluation(ctx: Context, run_id: str, evaluation: Evaluation, decision: GateDecision) -> None:
    """Metrics of every set and slice, evaluation.json, gate.json / gate.md, the confusion matrix
    (a classifier), both models' generations from fixed prompts (a causal LM: samples.md)."""
    from tasks.report import confusion_figure

    client = ctx.client
    for key, value in flat_metrics(evaluation, slices=True).items():
        client.log_metric(run_id, metric_key(key), value)
    client.log_text(run_id, evaluation.to_json(), "evaluation.json")
    client.log_text(run_id, decision.to_json(), "gate.json")
    client.log_text(run_id, decision.to_markdown(), "gate.md")
    new_set = evaluation.get("new")
    if new_set is not None and new_set.confusion:
        client.log_figure(run_id, confusion_figure(new_set, evaluation.labels), "confusion_new.png")
    if evaluation.samples:
        client.log_text(run_id, samples_markdown(evaluation.samples), "samples.md")


def samples_markdown(samples: dict[str, dict[str, str]]) -> str:
    """Both models' continuations of the same fixed prompts, side by side."""
    roles = list(samples)
    lines = ["| prompt | " + " | ".join(roles) + " |", "|---" * (len(roles) + 1) + "|"]
    for prompt in samples[roles[0]]:
        cells = [samples[r].get(prompt, "").replace("|", "\\|").replace("\n", " ") for r in roles]
        lines.append(f"| {prompt} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def flat_metrics(evaluation: Evaluation, slices: bool) -> dict[str, float]:
    """`new.challenger.accuracy`, `regression.delta.accuracy`, `latency.champion.p95_ms`, ..."""
    out = {}
    for s in evaluation.sets:
        if s.kind == "slice" and not slices:
            continue
        for side in ("challenger", "champion", "delta", "ci_low", "ci_high"):
            for metric, value in (getattr(s, side) or {}).items():
                out[f"{s.name}.{side}.{metric}"] = value
    for role, values in evaluation.latency_ms.items():
        for key, value in values.items():
            out[f"latency.{role}.{key}_ms"] = value
    return out


def metric_key(name: str) -> str:
    # MLflow metric names allow letters, digits, _ - . / and space.
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in name)
