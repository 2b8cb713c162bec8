"""What one cycle works on, what it records, and what happens to its batches afterwards."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from tasks.context import Context
from tasks.gate import GateDecision, implicates_data
from tasks.ingest import read_manifest
from tasks.lineage import Lineage, tag
from tasks.registry import CHAMPION, get_alias, get_version, git_sha, list_versions, versions_newest_first
from tasks.workspace import Workspace

Fate = Literal["kept", "pending", "withdrawn"]


@dataclass(frozen=True)
class CyclePlan:
    new_batches: list[str]
    seen_batches: list[str]  # the champion's lineage: replay pool and regression set
    champion_version: str | None


@dataclass
class CycleSummary:
    """What `kaizen status` and the demo show about a cycle; written to .kaizen/last_run.json."""

    status: str  # promoted | rejected | held | holding | registered | quarantined | failed | nothing-to-do
    batch_ids: list[str] = field(default_factory=list)
    version: str | None = None
    champion_before: str | None = None
    champion_after: str | None = None
    verdict: str | None = None
    reasons: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    data_version: str | None = None
    flow_run_id: str | None = None
    mlflow_run_id: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    withdrawn: list[str] = field(default_factory=list)  # rejected batches moved to quarantine
    pending: list[str] = field(default_factory=list)  # rejected batches kept for the next cycle
    # A held candidate looked at again this cycle: version, verdict, outcome, pooled rows, reasons.
    candidate: dict = field(default_factory=dict)
    # The smallest effect each judged set could resolve (accuracy points), from the gate.
    power: dict[str, float] = field(default_factory=dict)
    finished_at: str = ""

    def save(self, path: Path) -> None:
        self.finished_at = datetime.now(UTC).isoformat(timespec="seconds")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=1))


def load_last_summary(ws: Workspace) -> dict | None:
    return json.loads(ws.last_run.read_text()) if ws.last_run.exists() else None


def learned_batches(client, name: str, version: str | None) -> list[str]:
    """Every batch a version learned from: its own new batches and its ancestors'."""
    batches: list[str] = []
    while version:
        lineage = Lineage.from_tags(get_version(client, name, version).tags)
        batches = lineage.new_batches + batches
        version = lineage.parent_version
    return batches


# Versions created this long before a batch was ingested are not searched for having consumed it:
# a margin for clocks of different hosts, not a limit on how long a cycle may run.
CLOCK_MARGIN_MS = 3600 * 1000


def consumed_since(client, name: str, since_ms: float) -> set[str]:
    """Batches consumed by versions created after `since_ms`, newest first, page by page: a
    batch can only be consumed by a version registered after it was ingested, so planning reads
    the versions of recent cycles, not every version ever registered."""
    consumed: set[str] = set()
    for ref in versions_newest_first(client, name):
        if ref.created_ms < since_ms:
            break
        consumed.update(Lineage.from_tags(ref.tags).consumed_batches)
    return consumed


def plan_cycle(ctx: Context) -> CyclePlan:
    """New = ingested but never consumed by a registered version (pending ones are not consumed).

    Reads the champion's own batch list (one registry call) and only the versions registered
    since the oldest batch the champion has not learned, so its cost does not grow with history.
    """
    manifest = read_manifest(ctx.ws)
    present = [e["batch_id"] for e in manifest]
    champion = get_alias(ctx.client, ctx.model_name, CHAMPION)
    version = champion.version if champion else None
    lineage = Lineage.from_tags(champion.tags) if champion else Lineage()
    learned = (
        lineage.batch_ids if lineage.batch_ids or not version else learned_batches(ctx.client, ctx.model_name, version)
    )
    # A batch withdrawn after its challenger was rejected can still sit in a lineage when
    # that challenger was force-promoted; it is neither replayed nor used for regression.
    known, here = set(learned), set(present)
    seen = [b for b in learned if b in here]
    unlearned = [e for e in manifest if e["batch_id"] not in known]
    if not unlearned:
        return CyclePlan([], seen, version)
    since = min(_epoch_ms(e.get("ingested_at")) for e in unlearned) - CLOCK_MARGIN_MS
    consumed = consumed_since(ctx.client, ctx.model_name, since)
    return CyclePlan([e["batch_id"] for e in unlearned if e["batch_id"] not in consumed], seen, version)


def _epoch_ms(stamp: str | None) -> float:
    if not stamp:
        return 0.0  # unknown: search every version
    return datetime.fromisoformat(stamp).timestamp() * 1000


def batch_fate(decision: GateDecision) -> Fate:
    """Rejected batches are withdrawn only when the gate's failures implicate the data;
    otherwise (a gain within the noise, too few rows, ...) they stay pending for the next cycle.
    A held challenger keeps its batches: they are the candidate's, decided with it."""
    if decision.passed or decision.held:
        return "kept"
    return "withdrawn" if implicates_data(decision) else "pending"


def build_lineage(
    ctx: Context, plan: CyclePlan, replayed: int, decision: GateDecision, flow_run_id: str, data_version: str | None
) -> Lineage:
    from tasks.versioning import remote_settings

    remote = remote_settings(ctx.ws)
    return Lineage(
        data_md5=data_version or "",
        batch_ids=plan.seen_batches + plan.new_batches,
        new_batches=plan.new_batches,
        parent_version=plan.champion_version,
        replayed_rows=replayed,
        dvc_remote=remote.get("url", ""),
        dvc_endpoint=remote.get("endpointurl", ""),
        git_sha=git_sha(),
        config_hash=ctx.config.fingerprint(),
        flow_run_id=flow_run_id,
        gate_verdict=decision.verdict,
        gate_reasons="; ".join(decision.reasons),
        batches_pending=batch_fate(decision) == "pending",
        cycle_state="open",
    )


def close_version(ctx: Context, version: str) -> None:
    """The cycle has acted on the version's decision (promoted, held, withdrawn or left pending)."""
    ctx.client.set_model_version_tag(ctx.model_name, version, tag("cycle_state"), "done")


def settle_unfinished(ctx: Context) -> list[str]:
    """Versions a killed cycle left "open": the champion or candidate was acted on (done); any
    other is abandoned, so its batches are trained on again by the next cycle.

    Runs under the workspace lock, so no live cycle on this workspace can own an open version.
    """
    from tasks.registry import CANDIDATE, CHAMPION

    acted_on = {ref.version for alias in (CHAMPION, CANDIDATE) if (ref := get_alias(ctx.client, ctx.model_name, alias))}
    done = []
    # One tag query, not a read of every version: recovery runs before every command.
    for ref in list_versions(ctx.client, ctx.model_name, f"tags.`{tag('cycle_state')}` = 'open'"):
        state = "done" if ref.version in acted_on else "abandoned"
        ctx.client.set_model_version_tag(ctx.model_name, ref.version, tag("cycle_state"), state)
        done.append(f"registry: v{ref.version} was left by an interrupted cycle; marked {state}")
    return done


def withdraw_batches(ctx: Context, batches: list[str], version: str, gate_json: str) -> str:
    """A gate-rejected cycle's batches leave data/ and the history statistics (kept in quarantine);
    returns the new data version."""
    from models.base import load_tokenizer
    from tasks import history, ingest, versioning

    tokenizer = load_tokenizer(ctx.config.model.base)  # history statistics are under the base tokenizer
    with versioning.changing_data(ctx.ws):  # a kill in here is undone (or finished) by the next command
        for batch_id in batches:
            batch = ingest.load_batch(ctx.ws, batch_id)
            ingest.withdraw_batch(ctx.ws, batch_id, f"gate rejected v{version}", gate_json, ctx.config)
            history.forget_batch(ctx.ws, batch_id, batch, tokenizer)
        return versioning.commit_data(ctx.ws)


def register_version(
    ctx: Context, plan: CyclePlan, run_id: str, model_dir: str, lineage: Lineage, decision: GateDecision
):
    """Register the challenger (alias `challenger`) with its lineage and gate decision; close the run."""
    from tasks.ingest import load_batch
    from tasks.registry import register_challenger

    examples = load_batch(ctx.ws, plan.new_batches[0])["text"].head(3).tolist()
    ref = register_challenger(ctx.client, ctx.config, run_id, Path(model_dir), lineage.to_tags(), examples)
    # The decision travels with the model version, readable in the registry UI.
    ctx.client.update_model_version(ctx.model_name, ref.version, description=decision.to_markdown())
    ctx.client.set_terminated(run_id)
    return ref
