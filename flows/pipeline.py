"""Prefect flows: `ingest` and `continual_training`.

Each stage is a one-line Prefect task wrapping a plain function in tasks/; retries only
around I/O (DVC and the MLflow tracking server). `run_cycle` is the map of the pipeline.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE as NO_CACHE
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from prefect.runtime import flow_run
from prefect.states import Failed, State

from models.base import load_tokenizer
from tasks import approval, candidate, cycle, history, promotion, registry, shared, tracking, versioning
from tasks import evaluate as evaluate_mod
from tasks import gate as gate_mod
from tasks import ingest as ingest_mod
from tasks import train as train_mod
from tasks import validate as validate_mod
from tasks.context import Context
from tasks.cycle import CyclePlan, CycleSummary
from tasks.dataset import POOL
from tasks.errors import KaizenError
from tasks.featurize import featurize_batch, featurize_pool
from tasks.recovery import recover, refresh_history
from tasks.workspace import exclusive


def _transient(task, task_run, state) -> bool:
    """Retry I/O unless the failure is one of ours that another try cannot change (a refused,
    tampered or unknown model version); DVC push failures are network trouble, so they retry."""
    exc = state.data
    return not isinstance(exc, KaizenError) or isinstance(exc, versioning.VersioningError)


IO = {"retries": 2, "retry_delay_seconds": 2, "retry_condition_fn": _transient}


class BatchRejected(KaizenError):
    """Validation failed; the batch is in quarantine."""

    def __init__(self, batch_id: str, lines: list[str], where: Path):
        self.batch_id, self.lines, self.where = batch_id, lines, where
        text = "\n".join(f"  - {line}" for line in lines)
        super().__init__(f"batch {batch_id} failed validation and is quarantined in {where}:\n{text}")


def _task(fn, name: str, **options):
    return task(fn, name=name, cache_policy=NO_CACHE, **options)


# One-line wrappers. Inputs are paths, ids, the context and configs; outputs are small dataclasses.
stage_task = _task(ingest_mod.stage_file, "stage")
validate_task = _task(validate_mod.validate_staged, "validate")
save_report_task = _task(validate_mod.save_report, "save-validation-report")
log_validation_task = _task(tracking.log_validation, "log-validation", **IO)
quarantine_task = _task(validate_mod.quarantine_staged, "quarantine")
accept_task = _task(ingest_mod.accept_batch, "version-data", **IO)
record_history_task = _task(history.record_batch, "record-history")
plan_task = _task(cycle.plan_cycle, "plan", **IO)
fetch_model_task = _task(registry.download_version, "load-model", **IO)
featurize_task = _task(featurize_batch, "featurize")
featurize_pool_task = _task(featurize_pool, "featurize-pool")
start_run_task = _task(tracking.start_cycle_run, "start-run", **IO)
train_task = _task(train_mod.train_challenger, "train")
evaluate_task = _task(evaluate_mod.evaluate_challenger, "evaluate")
gate_task = _task(gate_mod.decide, "gate")
log_evaluation_task = _task(tracking.log_evaluation, "log-evaluation", **IO)
fail_run_task = _task(tracking.fail_run, "fail-run", **IO)
lineage_task = _task(cycle.build_lineage, "lineage")
register_task = _task(cycle.register_version, "register", **IO)
promote_task = _task(promotion.promote_after_gate, "promote")
champion_task = _task(promotion.current_champion, "read-champion", **IO)
hold_task = _task(candidate.hold, "hold-candidate", **IO)
candidate_task = _task(candidate.current_candidate, "find-candidate", **IO)
drop_stale_task = _task(candidate.drop_if_stale, "drop-stale-candidate", **IO)
judge_task = _task(candidate.judge, "judge-candidate")
log_look_task = _task(tracking.log_look, "log-look", **IO)
record_look_task = _task(candidate.record_look, "record-look", **IO)
conclude_task = _task(candidate.conclude, "conclude-candidate")
withdraw_task = _task(cycle.withdraw_batches, "withdraw-batches", **IO)
close_task = _task(cycle.close_version, "close-version", **IO)
request_approval_task = _task(approval.request, "request-approval", **IO)
approval_task = _task(approval.settle, "settle-approval", **IO)
sync_task = _task(shared.sync, "sync-data-head", **IO)
upload_quarantine_task = _task(shared.upload_quarantine, "share-quarantine", **IO)


@contextlib.contextmanager
def prepared(workspace: str | None, overrides: dict[str, Any] | None, command: str) -> Iterator[Context]:
    """The flow's turn in the workspace (the same lock as a writing command; a command that
    already holds it passes it on), with what a killed run left half done recovered first."""
    ctx = Context.open(workspace, overrides)
    # One line naming a broken remote before init_repo rewrites .dvc/config or a push is retried.
    versioning.check_remote(ctx.ws, ctx.config.data.remote)
    logger = get_run_logger()
    with exclusive(ctx.ws, command, on_wait=logger.info):
        versioning.init_repo(ctx.ws, ctx.config.data.remote)
        for line in recover(ctx):
            logger.warning(line)
        synced = sync_task(ctx)  # scaled out: this workspace is a cache of the shared data head
        if synced:
            logger.info(synced)
            refresh_history(ctx)
        yield ctx


def expected_failure(exc: KaizenError) -> State:
    """End the flow run Failed with the message a user acts on, not a traceback; the caller
    of the flow still gets `exc` raised."""
    return Failed(message=str(exc).splitlines()[0], data=exc)


def _flow_run_id() -> str:
    return str(flow_run.get_id() or "")


# --- ingest ----------------------------------------------------------------------------------


def ingest_one(ctx: Context, file: str, batch_id: str | None, skip_known: bool = True) -> ingest_mod.BatchInfo:
    """Validate and version one file. Scaled out, the part that reads and changes the data head
    (stage, validate against the newest head, accept or quarantine) holds the data's turn across
    hosts; the reports and the history cache are written after it, so other hosts wait less."""
    with shared.data_turn(ctx, f"ingest {file}") as synced:
        for line in synced:
            get_run_logger().info(line)
        checked = ingest_in_turn(ctx, file, batch_id, skip_known)
    if isinstance(checked, ingest_mod.BatchInfo):  # already a batch: nothing was done
        return checked
    return record_ingest(ctx, checked)


@dataclass
class Checked:
    """An ingest's outcome inside the data's turn, and what it still has to record."""

    staged: ingest_mod.StagedBatch
    report: validate_mod.ValidationReport
    report_path: Path
    tokenizer: Any
    info: ingest_mod.BatchInfo | None = None  # accepted
    version: str | None = None
    quarantined: Path | None = None  # refused


def ingest_in_turn(ctx: Context, file: str, batch_id: str | None, skip_known: bool) -> Checked | ingest_mod.BatchInfo:
    try:
        staged = stage_task(ctx.ws, ctx.config, file, batch_id)
    except ingest_mod.AlreadyIngested as done:  # a re-sent file, or a re-run after a crash
        if not skip_known:
            raise
        get_run_logger().info(f"ingest: {done}")
        return ingest_mod.describe_batch(ctx.ws, done.batch_id)
    tokenizer = load_tokenizer(ctx.config.model.base)  # one load serves validation and history
    report = validate_task(ctx.ws, staged, ctx.config, tokenizer)
    checked = Checked(staged, report, save_report_task(ctx.ws, staged.batch_id, report), tokenizer)
    if not report.success:
        checked.quarantined = quarantine_task(ctx.ws, staged, report)
    else:
        checked.info, checked.version = accept_task(ctx.ws, staged, versioning.commit_data, ctx.config)
    return checked


def record_ingest(ctx: Context, checked: Checked) -> ingest_mod.BatchInfo:
    """Reports (Prefect artifact, MLflow run), the history cache, the quarantine copy; then the
    outcome: the batch, or BatchRejected."""
    logger, staged, report = get_run_logger(), checked.staged, checked.report
    publish_validation(report, staged.batch_id)
    log_validation_task(ctx, staged.batch_id, report, checked.report_path, _flow_run_id())
    for line in report.warning_lines():
        logger.warning(f"validate: {staged.batch_id}: {line}")
    if checked.info is None:
        share_quarantine(ctx, staged.batch_id)
        raise BatchRejected(staged.batch_id, report.failure_lines(), checked.quarantined)
    info = checked.info
    record_history_task(ctx.ws, info.batch_id, ingest_mod.load_batch(ctx.ws, info.batch_id), checked.tokenizer)
    logger.info(
        f"ingest: batch {info.batch_id} ({info.rows} rows, splits {info.split_counts}) -> data version {checked.version}"
    )
    return info


def share_quarantine(ctx: Context, batch_id: str) -> None:
    where = upload_quarantine_task(ctx, batch_id)
    if where:
        get_run_logger().info(f"quarantine: batch {batch_id} copied to {where}")


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


@flow(name="ingest")
def ingest(
    file: str, batch_id: str | None = None, workspace: str | None = None, overrides: dict[str, Any] | None = None
) -> dict:
    """Validate a file and, if it passes, add it to data/ as an immutable DVC-versioned batch."""
    with prepared(workspace, overrides, "ingest") as ctx:
        try:
            info = ingest_one(ctx, file, batch_id)
        except KaizenError as exc:
            return expected_failure(exc)
    return info.__dict__


# --- the cycle -------------------------------------------------------------------------------


@flow(name="continual_training")
def continual_training(
    files: list[str] | None = None,
    batch_ids: list[str] | None = None,
    workspace: str | None = None,
    overrides: dict[str, Any] | None = None,
    auto_promote: bool | None = None,
) -> dict:
    """Ingest any given files, then train, evaluate, gate and register a challenger; with
    `gate.approval: manual`, a passing challenger then waits (this run paused) for a person."""
    with prepared(workspace, overrides, "run") as ctx:
        summary, result = cycle_in_turn(ctx, files, batch_ids, auto_promote)
    if summary.status == "awaiting-approval":  # outside the workspace's turn: ingests go on meanwhile
        return _finish(ctx, summary, wait_for_approval(ctx, summary))
    return result


def cycle_in_turn(
    ctx: Context, files: list[str] | None, batch_ids: list[str] | None, auto_promote: bool | None
) -> tuple[CycleSummary, Any]:
    summary = CycleSummary(status="failed", flow_run_id=_flow_run_id())
    # Known before anything can fail, so a quarantined batch's summary still names the champion.
    summary.champion_before = summary.champion_after = champion_task(ctx)
    try:
        for file, batch_id in _pair(files or [], batch_ids):
            with timed(summary, "ingest+validate"):
                ingest_one(ctx, file, batch_id)
        run_cycle(ctx, summary, ctx.config.gate.auto_promote if auto_promote is None else auto_promote)
    except BatchRejected as rejected:
        summary.status, summary.batch_ids, summary.reasons = "quarantined", [rejected.batch_id], rejected.lines
        return summary, _finish(ctx, summary, expected_failure(rejected))
    except KaizenError as exc:
        summary.reasons = [str(exc)]
        if summary.mlflow_run_id:  # e.g. training diverged: the run ends FAILED, not RUNNING
            fail_run_task(ctx, summary.mlflow_run_id)
        return summary, _finish(ctx, summary, expected_failure(exc))
    except BaseException as exc:
        summary.reasons = summary.reasons or [f"{type(exc).__name__}: {exc}"]
        summary.save(ctx.ws.last_run)
        raise
    return summary, _finish(ctx, summary, summary.__dict__)


class ApprovalInput(RunInput):
    """What `kaizen approve/reject` (or the form in the Prefect UI) sends a paused cycle."""

    decision: Literal["approve", "reject"]
    reason: str
    who: str = "prefect-ui"


def wait_for_approval(ctx: Context, summary: CycleSummary) -> dict:
    """Pause this run until a person decides on the challenger or `gate.approval_timeout` passes."""
    logger = get_run_logger()
    version, compared = summary.version, summary.champion_before
    logger.info(
        f"approval: v{version} passed its gate against v{compared or '-'} and waits for "
        f"`kaizen approve {version} --reason ...` or `kaizen reject {version} --reason ...`"
    )
    try:
        given = pause_flow_run(
            wait_for_input=ApprovalInput, timeout=ctx.config.gate.approval_timeout, poll_interval=2, key="approval"
        )
        answer = approval.Answer(given.decision, given.reason, given.who)
    except FlowPauseTimeout:
        answer = approval.timed_out(ctx)
    entry = approval_task(ctx, version, compared, answer)
    promoted = entry.action == "approve"
    summary.status = "promoted" if promoted else "rejected"
    summary.champion_after = version if promoted else compared
    summary.reasons = [f"{entry.action} by {entry.who}: {entry.why}"]
    logger.info(f"approval: v{version} {'is champion' if promoted else 'rejected'} ({entry.who}: {entry.why})")
    return summary.__dict__


def _pair(files: list[str], batch_ids: list[str] | None) -> list[tuple[str, str | None]]:
    ids = batch_ids or [None] * len(files)
    if len(ids) != len(files):
        raise KaizenError(f"{len(files)} file(s) but {len(ids)} batch id(s)")
    return list(zip(files, ids, strict=True))


def _finish(ctx: Context, summary: CycleSummary, result):
    summary.save(ctx.ws.last_run)
    return result


def run_cycle(ctx: Context, summary: CycleSummary, auto_promote: bool) -> None:
    """plan -> candidate look -> load champion -> featurize -> train -> evaluate -> gate -> register
    -> promote or hold -> settle the batches."""
    plan = plan_task(ctx)
    if not announce_plan(ctx, plan, summary):
        return
    with scratch_dir(ctx) as scratch:
        plan = settle_candidate(ctx, plan, scratch, summary, auto_promote)
        if plan is None:
            return  # a held candidate is still gathering evidence; the new batches wait for it
        with timed(summary, "load champion"):
            champion_dir = fetch_model(ctx, plan.champion_version, scratch / "champion")
        start_from = champion_dir or ctx.config.model.base
        with timed(summary, "featurize"):
            features = featurize_all(ctx, plan.new_batches, start_from, pool=bool(plan.seen_batches))
        summary.mlflow_run_id = run_id = start_run_task(ctx, plan.new_batches, summary.flow_run_id)
        log, log_metrics = get_run_logger().info, tracking.metric_logger(ctx, run_id)
        with timed(summary, "train"):
            args = (plan, features, start_from, scratch / "challenger", log, log_metrics)
            result, replayed = train_task(ctx.ws, ctx.config, *args)
        with timed(summary, "evaluate"):
            evaluation = evaluate_task(ctx.ws, ctx.config, plan, features, result.model_dir, champion_dir)
        decision = gate_task(evaluation, ctx.config.gate, plan.champion_version is not None)
        log_evaluation_task(ctx, run_id, evaluation, decision)
        announce_decision(decision, plan, evaluation, summary)
        lineage = lineage_task(ctx, plan, replayed, decision, summary.flow_run_id, summary.data_version)
        with timed(summary, "register+promote"):
            ref = register_task(ctx, plan, run_id, result.model_dir, lineage, decision)
            act_on_decision(ctx, ref.version, run_id, plan, decision, auto_promote, summary)
        with timed(summary, "ingest+validate"):
            settle_batches(ctx, plan, decision, ref.version, summary)
        close_task(ctx, ref.version)


def act_on_decision(
    ctx: Context,
    version: str,
    run_id: str,
    plan: CyclePlan,
    decision: gate_mod.GateDecision,
    auto_promote: bool,
    summary: CycleSummary,
) -> None:
    """Promote a passing challenger (or ask a person to); make a held one the candidate; leave a
    rejected one be."""
    promoted = decision.passed and auto_promote and ctx.config.gate.approval == "auto"
    if promoted:
        promote_task(ctx, version, plan.champion_version)
    elif decision.passed and auto_promote:
        request_approval_task(ctx, version, summary.flow_run_id)
    elif decision.held:
        hold_task(ctx, version, run_id, plan.new_batches, decision)
    announce_outcome(version, promoted, decision, plan, summary)
    if decision.passed and auto_promote and not promoted:
        summary.status = "awaiting-approval"


def settle_candidate(
    ctx: Context, plan: CyclePlan, scratch: Path, summary: CycleSummary, auto_promote: bool
) -> CyclePlan | None:
    """Before training anything new, look again at a held candidate on the test split of the
    batches it has not been judged on. Returns the plan to train on (re-planned when the
    candidate was decided), or None while it is still held."""
    held = candidate_task(ctx)
    if held is None:
        return plan
    if drop_stale_task(ctx, held, plan.champion_version):
        return replan(ctx, summary)
    fresh = candidate.fresh_batches(held, plan.new_batches)
    if fresh:
        with timed(summary, "evaluate"):
            look = look_at_candidate(ctx, held, plan, fresh, scratch)
        decision = judge_task(ctx, held, look)
        run_id = log_look_task(ctx, held.version, fresh, look, decision, summary.flow_run_id)
        record_look_task(ctx, held, run_id, fresh, decision)
        summary.candidate = {
            "version": held.version,
            "verdict": decision.verdict,
            "reasons": decision.reasons,
            "rows": _pooled_new_rows(decision),
            "outcome": conclude_task(ctx, held, decision, auto_promote),
        }
    else:
        summary.candidate = {
            "version": held.version,
            "verdict": "hold",
            "outcome": "held",
            "rows": None,
            "reasons": ["no batch it has not already been judged on; waiting for fresh data"],
        }
    announce_candidate(summary.candidate)
    if summary.candidate["outcome"] == "held":
        summary.status, summary.version = "holding", held.version
        summary.verdict, summary.reasons = "hold", summary.candidate["reasons"]
        return None
    return replan(ctx, summary)


def look_at_candidate(ctx: Context, held, plan: CyclePlan, fresh: list[str], scratch: Path):
    """Candidate and champion on the fresh test split only (regression and golden were judged
    on the candidate's own cycle and are the same rows every time)."""
    candidate_dir = fetch_model(ctx, held.version, scratch / "candidate")
    champion_dir = fetch_model(ctx, plan.champion_version, scratch / "champion")
    features = featurize_all(ctx, fresh, candidate_dir)
    look_plan = CyclePlan(fresh, [], plan.champion_version)
    return evaluate_task(ctx.ws, ctx.config, look_plan, features, candidate_dir, champion_dir)


def _pooled_new_rows(decision: gate_mod.GateDecision) -> int | None:
    rows = next((r for r in decision.rules if r.kind == "size"), None)
    return None if rows is None or rows.value is None else int(rows.value)


def replan(ctx: Context, summary: CycleSummary) -> CyclePlan:
    plan = plan_task(ctx)
    summary.batch_ids, summary.champion_before = plan.new_batches, plan.champion_version
    summary.champion_after = plan.champion_version
    return plan


def announce_plan(ctx: Context, plan: CyclePlan, summary: CycleSummary) -> bool:
    """Record and log what the cycle will do; False when there is nothing to train."""
    summary.batch_ids, summary.champion_before = plan.new_batches, plan.champion_version
    summary.champion_after, summary.data_version = plan.champion_version, versioning.data_version(ctx.ws)
    logger = get_run_logger()
    if not plan.new_batches:
        summary.status = "nothing-to-do"
        logger.info("cycle: no new batches since the last cycle; nothing to train")
        return False
    logger.info(
        f"cycle: new batches {plan.new_batches}; champion v{plan.champion_version or '-'} "
        f"knows {len(plan.seen_batches)} batch(es)"
    )
    return True


def fetch_model(ctx: Context, version: str | None, target: Path) -> str | None:
    if not version:
        return None
    return str(fetch_model_task(ctx.client, ctx.model_name, version, target))


def featurize_all(ctx: Context, batches: list[str], tokenizer_source: str, pool: bool = False) -> dict[str, str]:
    """Token ids of the new batches and, for replay and regression, of the pool (never of every
    earlier batch); cached, so only never-seen content costs anything."""
    tokenizer = load_tokenizer(tokenizer_source)
    max_length = ctx.config.model.max_length
    task = ctx.config.task
    features = {b: featurize_task(ctx.ws, b, tokenizer, max_length, task).path for b in batches}
    if pool:
        features[POOL] = featurize_pool_task(ctx.ws, tokenizer, max_length, task).path
    return features


def announce_decision(
    decision: gate_mod.GateDecision, plan: CyclePlan, evaluation: evaluate_mod.Evaluation, summary: CycleSummary
) -> None:
    summary.metrics = tracking.flat_metrics(evaluation, slices=False)
    summary.verdict, summary.reasons = decision.verdict, decision.reasons
    summary.power = {r.name.split(" ")[0]: r.resolvable for r in decision.rules if r.resolvable is not None}
    create_markdown_artifact(
        key="gate-decision",
        markdown=decision.to_markdown(),
        description=f"gate for batches {', '.join(plan.new_batches)}",
    )
    get_run_logger().info(f"gate: {decision.verdict}" + "".join(f"\n  - {r}" for r in decision.reasons))


def announce_outcome(
    version: str, promoted: bool, decision: gate_mod.GateDecision, plan: CyclePlan, summary: CycleSummary
) -> None:
    summary.version = version
    if promoted:
        summary.status, summary.champion_after = "promoted", version
        get_run_logger().info(f"promote: v{version} is champion (was v{plan.champion_version or '-'})")
        return
    summary.status = "registered" if decision.passed else ("held" if decision.held else "rejected")
    held = " and the candidate gathering evidence" if decision.held else ""
    get_run_logger().info(f"registry: v{version} is challenger{held}; champion stays v{plan.champion_version or '-'}")


def announce_candidate(look: dict) -> None:
    rows = f" on {look['rows']} pooled new rows" if look.get("rows") else ""
    get_run_logger().info(
        f"candidate: v{look['version']} {look['outcome']}{rows}" + "".join(f"\n  - {r}" for r in look["reasons"])
    )


def settle_batches(
    ctx: Context, plan: CyclePlan, decision: gate_mod.GateDecision, version: str, summary: CycleSummary
) -> None:
    """A rejected cycle's batches are withdrawn (the data is implicated) or stay pending."""
    fate = cycle.batch_fate(decision)
    logger = get_run_logger()
    if fate == "withdrawn":
        with shared.data_turn(ctx, "withdraw batches") as synced:
            for line in synced:
                logger.info(line)
            summary.data_version = withdraw_task(ctx, plan.new_batches, version, decision.to_json())
        for batch_id in plan.new_batches:
            share_quarantine(ctx, batch_id)
        summary.withdrawn = plan.new_batches
        logger.info(
            f"data: the gate's failures implicate the data; batches {plan.new_batches} withdrawn to "
            f"quarantine; data version {summary.data_version}"
        )
    elif fate == "pending":
        summary.pending = plan.new_batches
        logger.info(f"data: batches {plan.new_batches} stay pending and join the next cycle's training data")


@contextlib.contextmanager
def scratch_dir(ctx: Context) -> Iterator[Path]:
    """A cycle's temporary files (the champion's weights, the challenger before registration)."""
    ctx.ws.runs.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="cycle-", dir=ctx.ws.runs))
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@contextlib.contextmanager
def timed(summary: CycleSummary, stage: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        summary.timings[stage] = summary.timings.get(stage, 0.0) + time.perf_counter() - started
