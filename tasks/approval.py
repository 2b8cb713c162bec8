"""Human approval of a challenger that passed its gate (`gate.approval: manual`).

The cycle registers the challenger, marks it waiting (version tags, so `kaizen status` and any
host see it) and pauses its flow run; `kaizen approve/reject` checks the request here and
resumes the run with the decision; the run applies it (`settle`). Every outcome lands in the
ledger with who, when and why. Approval counts only against the champion the gate compared
with: when the champion moved meanwhile, approving is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from tasks.context import Context
from tasks.errors import KaizenError
from tasks.lineage import Lineage
from tasks.registry import (
    CHAMPION,
    LedgerEntry,
    StaleChampionError,
    get_alias,
    get_version,
    list_versions,
    move_champion,
    record_event,
)
from tasks.shared import champion_guard

STATE_TAG = "kaizen.approval"  # waiting | approved | rejected
RUN_TAG = "kaizen.approval.flow_run"
SINCE_TAG = "kaizen.approval.since"
DEADLINE_TAG = "kaizen.approval.deadline"
TIMEOUT_WHO = "kaizen (approval timeout)"


class ApprovalError(KaizenError):
    pass


@dataclass(frozen=True)
class Answer:
    decision: str  # approve | reject
    reason: str
    who: str


def request(ctx: Context, version: str, flow_run_id: str) -> None:
    now = datetime.now(UTC)
    deadline = now + timedelta(seconds=ctx.config.gate.approval_timeout)
    for key, value in (
        (RUN_TAG, flow_run_id),
        (SINCE_TAG, now.isoformat(timespec="seconds")),
        (DEADLINE_TAG, deadline.isoformat(timespec="seconds")),
        (STATE_TAG, "waiting"),  # last: a version is waiting only once it says how to resume it
    ):
        ctx.client.set_model_version_tag(ctx.model_name, version, key, value)


def waiting(ctx: Context) -> list[dict]:
    """Versions waiting for a decision, oldest first."""
    found = []
    for ref in list_versions(ctx.client, ctx.model_name):
        if ref.tags.get(STATE_TAG) == "waiting":
            found.append(
                {
                    "version": ref.version,
                    "since": ref.tags.get(SINCE_TAG),
                    "deadline": ref.tags.get(DEADLINE_TAG),
                    "compared_with": Lineage.from_tags(ref.tags).parent_version,
                    "flow_run_id": ref.tags.get(RUN_TAG),
                }
            )
    return sorted(found, key=lambda w: int(w["version"]))


def check_decision(ctx: Context, version: str, decision: str) -> str:
    """The flow run to resume for a decision on `version`; refuses what cannot be decided."""
    ref = get_version(ctx.client, ctx.model_name, version)
    state = ref.tags.get(STATE_TAG)
    if state != "waiting":
        raise ApprovalError(f"v{version} is not waiting for approval ({'it was ' + state if state else 'never asked'})")
    if decision == "approve":
        compared = Lineage.from_tags(ref.tags).parent_version
        current = get_alias(ctx.client, ctx.model_name, CHAMPION)
        now = current.version if current else None
        if now != compared:
            raise ApprovalError(
                f"approval of v{version} refused: its gate compared it with v{compared or '-'}, but the champion "
                f"is now v{now or '-'}; reject it (`kaizen reject {version} --reason ...`) and let the next cycle "
                "compare against the new champion"
            )
    return ref.tags[RUN_TAG]


def settle(ctx: Context, version: str, compared_with: str | None, answer: Answer) -> LedgerEntry:
    """Apply a decision in the waiting run: approve moves `champion` (only if it is still the
    one the gate compared with); reject, a timeout or a stale approval records why it did not."""
    if answer.decision == "approve":
        try:
            entry = move_champion(
                ctx.client,
                champion_guard(ctx),
                ctx.model_name,
                version,
                compared_with,
                "approve",
                answer.reason,
                who=answer.who,
            )
        except StaleChampionError as exc:
            why = f"approved by {answer.who} ({answer.reason}), but refused: {exc}"
            entry = record_event(champion_guard(ctx), ctx.client, ctx.model_name, "reject", compared_with, version, why)
            _mark(ctx, version, "rejected")
            return entry
        _mark(ctx, version, "approved")
        return entry
    entry = record_event(
        champion_guard(ctx), ctx.client, ctx.model_name, "reject", compared_with, version, answer.reason, who=answer.who
    )
    _mark(ctx, version, "rejected")
    return entry


def timed_out(ctx: Context) -> Answer:
    return Answer(
        "reject", f"no decision within gate.approval_timeout ({ctx.config.gate.approval_timeout} s)", TIMEOUT_WHO
    )


def _mark(ctx: Context, version: str, state: str) -> None:
    ctx.client.set_model_version_tag(ctx.model_name, version, STATE_TAG, state)


def outcome(ctx: Context, version: str) -> str | None:
    """`waiting`, `approved` or `rejected` (None: never asked)."""
    return get_version(ctx.client, ctx.model_name, version).tags.get(STATE_TAG)
