"""A challenger held back as underpowered stays a *candidate*, and fresh data adds evidence.

When the gate cannot yet tell a challenger from the champion (verdict `hold`), the version
gets the `candidate` alias and keeps its batches. Each later cycle first looks at it again on
the test split of batches it has not been judged on (unseen by both models), pools that with
every earlier look (tasks/evaluate.py: pool_evaluations) and lets the gate decide on the
pooled rows, spending its error budget across looks (tasks/gate.py: decide_accumulated).
Promoted: it becomes champion. Rejected: it loses the alias and its batches become pending,
so the next challenger trains on them. Still held: the cycle stops and new batches wait.
"""

from __future__ import annotations

from tasks.context import Context
from tasks.evaluate import Evaluation
from tasks.gate import GateDecision, decide_accumulated
from tasks.lineage import MAX_REASONS_CHARS, Lineage, tag, tag_value
from tasks.registry import CANDIDATE, ModelRef, get_alias, move_champion, record_event
from tasks.shared import champion_guard

EVALUATION_FILE = "evaluation.json"


def current_candidate(ctx: Context) -> ModelRef | None:
    return get_alias(ctx.client, ctx.model_name, CANDIDATE)


def hold(ctx: Context, version: str, run_id: str, batches: list[str], decision: GateDecision) -> None:
    """Make a held challenger the candidate; its own cycle is the first look at its evidence."""
    set_lineage(ctx, version, evidence_runs=[run_id], evidence_batches=list(batches))
    ctx.client.set_registered_model_alias(ctx.model_name, CANDIDATE, version)
    record_event(
        champion_guard(ctx),
        ctx.client,
        ctx.model_name,
        "hold",
        lineage_of(ctx, version).parent_version,
        version,
        f"held as candidate: {'; '.join(decision.reasons)[:500]}",
    )


def lineage_of(ctx: Context, version: str) -> Lineage:
    return Lineage.from_tags(dict(ctx.client.get_model_version(ctx.model_name, version).tags))


def set_lineage(ctx: Context, version: str, **fields: object) -> None:
    """Update some lineage fields of a registered version (the rest are as registered)."""
    for name, value in fields.items():
        ctx.client.set_model_version_tag(ctx.model_name, version, tag(name), tag_value(value))


def fresh_batches(candidate: ModelRef, new_batches: list[str]) -> list[str]:
    """New batches whose test split has not yet been evidence for this candidate."""
    used = set(Lineage.from_tags(candidate.tags).evidence_batches)
    return [b for b in new_batches if b not in used]


def earlier_looks(ctx: Context, candidate: ModelRef) -> list[Evaluation]:
    """The candidate's evaluations so far, oldest first, read back from their MLflow runs."""
    import mlflow

    parts = []
    for run_id in Lineage.from_tags(candidate.tags).evidence_runs:
        text = mlflow.artifacts.load_text(f"runs:/{run_id}/{EVALUATION_FILE}")
        parts.append(Evaluation.from_json(text))
    return parts


def judge(ctx: Context, candidate: ModelRef, look: Evaluation) -> GateDecision:
    """The gate on all the evidence so far: every earlier look plus this one."""
    return decide_accumulated([*earlier_looks(ctx, candidate), look], ctx.config.gate)


def record_look(ctx: Context, candidate: ModelRef, run_id: str, batches: list[str], decision: GateDecision) -> None:
    lineage = Lineage.from_tags(candidate.tags)
    runs = [*lineage.evidence_runs, run_id]
    set_lineage(ctx, candidate.version, evidence_runs=runs, evidence_batches=[*lineage.evidence_batches, *batches])
    record_event(
        champion_guard(ctx),
        ctx.client,
        ctx.model_name,
        "evidence",
        lineage.parent_version,
        candidate.version,
        f"look {len(runs)} on {', '.join(batches)}: {decision.verdict}",
    )


def conclude(ctx: Context, candidate: ModelRef, decision: GateDecision, auto_promote: bool) -> str:
    """Act on the pooled decision: `promoted`, `rejected` or `held`."""
    client, name, version = ctx.client, ctx.model_name, candidate.version
    parent = Lineage.from_tags(candidate.tags).parent_version
    if decision.held or (decision.passed and not auto_promote):
        return "held"
    client.delete_registered_model_alias(name, CANDIDATE)
    set_lineage(
        ctx, version, gate_verdict=decision.verdict, gate_reasons="; ".join(decision.reasons)[:MAX_REASONS_CHARS]
    )
    if decision.passed:
        looks = len(lineage_of(ctx, version).evidence_runs)
        move_champion(
            client,
            champion_guard(ctx),
            name,
            version,
            parent,
            "promote",
            f"gate passed on evidence pooled over {looks} looks",
        )
        return "promoted"
    set_lineage(ctx, version, batches_pending=True)
    record_event(
        champion_guard(ctx), client, name, "drop-candidate", parent, version, "; ".join(decision.reasons)[:500]
    )
    return "rejected"


def drop_if_stale(ctx: Context, candidate: ModelRef, champion: str | None) -> bool:
    """A candidate's evidence is against the champion it was compared with; if the champion has
    moved since (a manual promotion, a rollback), that evidence no longer applies."""
    parent = Lineage.from_tags(candidate.tags).parent_version
    if parent == champion:
        return False
    ctx.client.delete_registered_model_alias(ctx.model_name, CANDIDATE)
    set_lineage(ctx, candidate.version, batches_pending=True)
    record_event(
        champion_guard(ctx),
        ctx.client,
        ctx.model_name,
        "drop-candidate",
        parent,
        candidate.version,
        f"the champion moved to v{champion or '-'} since it was compared with v{parent or '-'}",
    )
    return True
