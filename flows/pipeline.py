"""Prefect flows: `ingest` and `continual_training`. Each task is a one-line wrapper of a
plain function in tasks/; retries only around I/O."""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE as NO_CACHE
from prefect.runtime import flow_run
from prefect.states import Failed, State

from models.classifier import load_tokenizer
from tasks import evaluate as evaluate_mod
from tasks import gate as gate_mod
from tasks import ingest as ingest_mod
from tasks import registry, train as train_mod, validate as validate_mod, versioning
from tasks import history as history_mod
from tasks import report as report_mod
from tasks.config import KaizenConfig, load_config
from tasks.cycle import NEW_BATCHES_TAG, PARENT_TAG, PENDING_TAG, CycleSummary, plan_cycle
from tasks.errors import KaizenError
from tasks.featurize import featurize_batch
from tasks.workspace import Workspace


class BatchRejected(KaizenError):
    """Validation failed; the batch is in quarantine."""

    def __init__(self, batch_id: str, lines: list[str], where: Path):
        self.batch_id, self.lines, self.where = batch_id, lines, where
        text = "\n".join(f"  - {line}" for line in lines)
        super().__init__(f"batch {batch_id} failed validation and is quarantined in {where}:\n{text}")


# One-line wrappers. Inputs are paths, ids and configs; outputs are small dataclasses.
stage_task = task(ingest_mod.stage_file, name="stage", cache_policy=NO_CACHE)
validate_task = task(validate_mod.validate_staged, name="validate", cache_policy=NO_CACHE)
record_history_task = task(history_mod.record_batch, name="record-history", cache_policy=NO_CACHE)
quarantine_task = task(validate_mod.quarantine_staged, name="quarantine", cache_policy=NO_CACHE)
accept_task = task(ingest_mod.accept_batch, name="version-data", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
featurize_task = task(featurize_batch, name="featurize", cache_policy=NO_CACHE)
train_task = task(train_mod.train_challenger, name="train", cache_policy=NO_CACHE)
evaluate_task = task(evaluate_mod.evaluate_challenger, name="evaluate", cache_policy=NO_CACHE)
gate_task = task(gate_mod.decide, name="gate", cache_policy=NO_CACHE)
register_task = task(registry.register_challenger, name="register", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
promote_task = task(registry.move_champion, name="promote", cache_policy=NO_CACHE)


def prepare(workspace: str | None, overrides: dict[str, Any] | None) -> tuple[Workspace, KaizenConfig]:
    ws = Workspace.at(workspace)
    config = load_config(ws.root, overrides)
    versioning.init_repo(ws, config.data.remote)
    if versioning.finish_interrupted_push(ws):
        get_run_logger().warning(f"data: finished an interrupted dvc push of data version {versioning.data_version(ws)}")
    return ws, config


def publish_validation(report: validate_mod.ValidationReport, batch_id: str) -> None:
    create_table_artifact(
        key=f"validation-{_artifact_key(batch_id)}",
        table=[
            {"expectation": o.name, "gx": o.expectation, "outcome": "pass" if o.success else "FAIL", "detail": o.detail}
            for o in report.outcomes
        ],
        description=f"Great Expectations results for batch {batch_id}",
    )


def _artifact_key(text: str) -> str:
    # Prefect artifact keys allow lowercase letters, digits and dashes only.
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")[:60] or "batch"


def ingest_one(ws: Workspace, config: KaizenConfig, file: str, batch_id: str | None) -> ingest_mod.BatchInfo:
    logger = get_run_logger()
    staged = stage_task(ws, config, file, batch_id)
    tokenizer = load_tokenizer(config.model.base)  # one load serves validation and history
    report = validate_task(ws, staged, config, tokenizer)
    ws.reports.mkdir(parents=True, exist_ok=True)
    report_path = ws.reports / f"validation-{staged.batch_id}.json"
    report_path.write_text(report.to_json())
    publish_validation(report, staged.batch_id)
    log_validation(ws, config, staged.batch_id, report, report_path)
    for line in report.warning_lines():
        logger.warning(f"validate: {staged.batch_id}: {line}")
    if not report.success:
        where = quarantine_task(ws.quarantine, staged, report)
        raise BatchRejected(staged.batch_id, report.failure_lines(), where)
    info, version = accept_task(ws, staged, versioning.commit_data)
    record_history_task(ws, info.batch_id, ingest_mod.load_batch(ws, info.batch_id), tokenizer)
    logger.info(f"ingest: batch {info.batch_id} ({info.rows} rows, splits {info.split_counts}) -> data version {version}")
    return info


def log_validation(ws: Workspace, config: KaizenConfig, batch_id: str, report, report_path: Path) -> None:
    """Every validation is an MLflow run of the `<project>-data` experiment, with its reports."""
    client = registry.connect(ws, config)
    experiment = registry.ensure_experiment(client, ws, config, f"{config.project}-data")
    run = client.create_run(experiment, run_name=f"validate-{batch_id}",
                            tags={"kaizen.batch_id": batch_id, "kaizen.validation": "pass" if report.success else "fail",
                                  "kaizen.flow_run_id": str(flow_run.get_id() or "")})
    client.log_metric(run.info.run_id, "rows", report.rows)
    client.log_metric(run.info.run_id, "failed_expectations", len(report.failures))
    client.log_artifact(run.info.run_id, str(report_path))
    if report.data_docs and Path(report.data_docs).exists():
        client.log_artifacts(run.info.run_id, str(Path(report.data_docs).parent), "data_docs")
    client.set_terminated(run.info.run_id)


@flow(name="ingest")
def ingest(file: str, batch_id: str | None = None, workspace: str | None = None,
           overrides: dict[str, Any] | None = None) -> dict:
    """Validate a file and, if it passes, add it to data/ as an immutable DVC-versioned batch."""
    ws, config = prepare(workspace, overrides)
    try:
        info = ingest_one(ws, config, file, batch_id)
    except KaizenError as exc:
        return expected_failure(exc)
    return info.__dict__


def expected_failure(exc: KaizenError) -> State:
    """End the flow run Failed with the message a user acts on, not a traceback; the caller
    of the flow still gets `exc` raised."""
    return Failed(message=str(exc).splitlines()[0], data=exc)


@task(name="withdraw-batches", cache_policy=NO_CACHE)
def withdraw_task(ws: Workspace, batch_ids: list[str], version: str, gate_json: str, tokenizer) -> str:
    """A gate-rejected cycle's batches leave the training history (kept in quarantine)."""
    for batch_id in batch_ids:
        batch = ingest_mod.load_batch(ws, batch_id)
        ingest_mod.withdraw_batch(ws, batch_id, ws.quarantine, f"gate rejected v{version}", gate_json)
        history_mod.forget_batch(ws, batch_id, batch, tokenizer)
    return versioning.commit_data(ws)


def _flat_metrics(evaluation: evaluate_mod.Evaluation, slices: bool) -> dict[str, float]:
    """`new.challenger.accuracy`, `regression.delta.accuracy`, `latency.champion.p95`, ..."""
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


def _metric_key(name: str) -> str:
    # MLflow metric names allow letters, digits, _ - . / and space.
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in name)


@flow(name="continual_training")
def continual_training(
    files: list[str] | None = None,
    batch_ids: list[str] | None = None,
    workspace: str | None = None,
    overrides: dict[str, Any] | None = None,
    auto_promote: bool | None = None,
) -> dict:
    """Ingest any given files, then train, evaluate, gate and register a challenger."""
    ws, config = prepare(workspace, overrides)
    logger = get_run_logger()
    summary = CycleSummary(status="failed", flow_run_id=str(flow_run.get_id() or ""))
    champion = registry.get_alias(registry.connect(ws, config), config.registry.model_name, registry.CHAMPION)
    summary.champion_before = summary.champion_after = champion.version if champion else None
    try:
        files = files or []
        ids = batch_ids or [None] * len(files)
        if len(ids) != len(files):
            raise KaizenError(f"{len(files)} file(s) but {len(ids)} batch id(s)")
        for file, batch_id in zip(files, ids):
            with timed(summary, "ingest+validate"):
                ingest_one(ws, config, file, batch_id)
        _run_cycle(ws, config, summary, logger, config.gate.auto_promote if auto_promote is None else auto_promote)
    except BatchRejected as rejected:
        summary.status, summary.batch_ids, summary.reasons = "quarantined", [rejected.batch_id], rejected.lines
        summary.save(ws.last_run)
        return expected_failure(rejected)
    except KaizenError as exc:
        summary.reasons = [str(exc)]
        summary.save(ws.last_run)
        return expected_failure(exc)
    except BaseException as exc:
        summary.reasons = summary.reasons or [f"{type(exc).__name__}: {exc}"]
        summary.save(ws.last_run)
        raise
    summary.save(ws.last_run)
    return summary.__dict__


def _run_cycle(ws: Workspace, config: KaizenConfig, summary: CycleSummary, logger, auto_promote: bool) -> None:
    client = registry.connect(ws, config)
    name = config.registry.model_name
    plan = plan_cycle(ws, client, name)
    summary.batch_ids, summary.champion_before = plan.new_batches, plan.champion_version
    summary.champion_after = plan.champion_version
    summary.data_version = versioning.data_version(ws)
    if not plan.new_batches:
        summary.status = "nothing-to-do"
        logger.info("cycle: no new batches since the last cycle; nothing to train")
        return
    logger.info(f"cycle: new batches {plan.new_batches}; champion v{plan.champion_version or '-'} "
                f"knows {len(plan.seen_batches)} batch(es)")
    scratch = Path(tempfile.mkdtemp(prefix="cycle-", dir=_mkdir(ws.runs)))
    try:
        champion_dir = None
        with timed(summary, "load champion"):
            if plan.champion_version:
                ref = registry.get_version(client, name, plan.champion_version)
                champion_dir = str(registry.download_model(client, ref, scratch / "champion"))
        start_from = champion_dir or config.model.base
        with timed(summary, "featurize"):
            tokenizer = load_tokenizer(start_from)
            features = {
                b: featurize_task(ws, b, tokenizer, config.model.max_length).path
                for b in plan.new_batches + plan.seen_batches
            }
        experiment = registry.ensure_experiment(client, ws, config)
        run = client.create_run(experiment, run_name=f"cycle-{plan.new_batches[-1]}",
                                tags={"kaizen.flow_run_id": summary.flow_run_id or ""})
        summary.mlflow_run_id = run.info.run_id
        client.log_param(run.info.run_id, "config_hash", config.fingerprint())
        client.log_text(run.info.run_id, json.dumps(config.model_dump(mode="json"), indent=1), "config.json")

        def log_metrics(values: dict[str, float], step: int) -> None:
            for key, value in values.items():
                client.log_metric(run.info.run_id, key, value, step=step)

        with timed(summary, "train"):
            result, replayed = train_task(ws, config, plan, features, start_from, scratch / "challenger",
                                          logger.info, log_metrics)
        with timed(summary, "evaluate"):
            evaluation = evaluate_task(ws, config, plan, features, result.model_dir, champion_dir)
        decision = gate_task(evaluation, config.gate, plan.champion_version is not None)
        summary.metrics = _flat_metrics(evaluation, slices=False)
        summary.verdict, summary.reasons = decision.verdict, decision.reasons
        for key, value in _flat_metrics(evaluation, slices=True).items():
            client.log_metric(run.info.run_id, _metric_key(key), value)
        client.log_text(run.info.run_id, evaluation.to_json(), "evaluation.json")
        client.log_text(run.info.run_id, decision.to_json(), "gate.json")
        client.log_text(run.info.run_id, decision.to_markdown(), "gate.md")
        new_set = evaluation.get("new")
        if new_set is not None and new_set.confusion:
            client.log_figure(run.info.run_id, report_mod.confusion_figure(new_set, evaluation.labels),
                              "confusion_new.png")
        create_markdown_artifact(key="gate-decision", markdown=decision.to_markdown(),
                                 description=f"gate for batches {', '.join(plan.new_batches)}")
        logger.info(f"gate: {decision.verdict}" + "".join(f"\n  - {r}" for r in decision.reasons))

        remote = versioning.remote_settings(ws)
        tags = {
            "kaizen.data_md5": summary.data_version or "",
            "kaizen.batch_ids": ",".join(plan.seen_batches + plan.new_batches),
            NEW_BATCHES_TAG: ",".join(plan.new_batches),
            PARENT_TAG: plan.champion_version or "",
            "kaizen.replayed_rows": str(replayed),
            "kaizen.dvc_remote": remote.get("url", ""),
            "kaizen.dvc_endpoint": remote.get("endpointurl", ""),
            "kaizen.git_sha": registry.git_sha(),
            "kaizen.config_hash": config.fingerprint(),
            "kaizen.flow_run_id": summary.flow_run_id or "",
            "kaizen.gate_verdict": decision.verdict,
            "kaizen.gate_reasons": "; ".join(decision.reasons)[:4000],
        }
        withdraw = not decision.passed and gate_mod.implicates_data(decision)
        if not decision.passed and not withdraw:
            tags[PENDING_TAG] = "true"
        examples = ingest_mod.load_batch(ws, plan.new_batches[0])["text"].head(3).tolist()
        with timed(summary, "register+promote"):
            ref = register_task(client, config, run.info.run_id, Path(result.model_dir), tags, examples)
            summary.version = ref.version
            # The decision travels with the model version, readable in the registry UI.
            client.update_model_version(name, ref.version, description=decision.to_markdown())
            client.set_terminated(run.info.run_id)
            if decision.passed and auto_promote:
                why = "bootstrap: first model" if plan.champion_version is None else "gate passed"
                promote_task(client, ws, name, ref.version, plan.champion_version, "promote", why)
        if decision.passed and auto_promote:
            summary.status, summary.champion_after = "promoted", ref.version
            logger.info(f"promote: v{ref.version} is champion (was v{plan.champion_version or '-'})")
        else:
            summary.status = "rejected" if not decision.passed else "registered"
            logger.info(f"registry: v{ref.version} is challenger; champion stays v{plan.champion_version or '-'}")
        if withdraw:
            with timed(summary, "ingest+validate"):
                summary.data_version = withdraw_task(ws, plan.new_batches, ref.version, decision.to_json(),
                                                     load_tokenizer(config.model.base))
            summary.withdrawn = plan.new_batches
            logger.info(f"data: the gate's failures implicate the data; batches {plan.new_batches} withdrawn to "
                        f"quarantine; data version {summary.data_version}")
        elif not decision.passed:
            summary.pending = plan.new_batches
            logger.info(f"data: batches {plan.new_batches} stay pending and join the next cycle's training data")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@contextlib.contextmanager
def timed(summary: CycleSummary, stage: str):
    started = time.perf_counter()
    try:
        yield
    finally:
        summary.timings[stage] = summary.timings.get(stage, 0.0) + time.perf_counter() - started


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
