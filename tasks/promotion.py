"""Who may move `champion`, and when: after a gate, by hand, or back (rollback).

The mechanics (compare-and-set under a lock, the ledger) are in tasks/registry.py; this
module holds the policy, so the flow and the CLI apply the same rules.
"""

from __future__ import annotations

from tasks.context import Context
from tasks.errors import KaizenError
from tasks.lineage import Lineage
from tasks.registry import CHAMPION, LedgerEntry, ModelRef, get_alias, get_version, move_champion, previous_champion
from tasks.shared import champion_guard


def current_champion(ctx: Context) -> str | None:
    ref = get_alias(ctx.client, ctx.model_name, CHAMPION)
    return ref.version if ref else None


def manual_promotion_problem(ref: ModelRef, current_champion: str | None) -> str | None:
    """Why promoting `ref` by hand is not backed by its gate (None when it is).

    A version's gate verdict only counts against the champion it was compared with.
    """
    lineage = Lineage.from_tags(ref.tags)
    if lineage.gate_verdict != "pass":
        return f"its gate verdict is {lineage.gate_verdict or 'missing'}"
    if lineage.parent_version != current_champion:
        return (
            f"its gate compared it with v{lineage.parent_version or '-'}, "
            f"but the champion is now v{current_champion or '-'}"
        )
    return None


def promote_after_gate(ctx: Context, version: str, compared_with: str | None) -> LedgerEntry:
    """The cycle's own promotion: only if the champion is still the one the gate compared with."""
    why = "bootstrap: first model" if compared_with is None else "gate passed"
    return move_champion(ctx.client, champion_guard(ctx), ctx.model_name, version, compared_with, "promote", why)


def promote_by_hand(ctx: Context, version: str, reason: str, force: bool) -> LedgerEntry:
    """`kaizen promote`: gated like a cycle unless forced; an override is recorded as such."""
    ref = get_version(ctx.client, ctx.model_name, version)
    current = current_champion(ctx)
    if current == ref.version:
        raise KaizenError(f"v{version} is already the champion")
    problem = manual_promotion_problem(ref, current)
    if problem and not force:
        raise KaizenError(f"v{version}: {problem}; use --force to promote anyway (the override is recorded)")
    action = "forced-promote" if problem else "manual-promote"
    why = f"{reason} [override: {problem}]" if problem else reason
    return move_champion(ctx.client, champion_guard(ctx), ctx.model_name, version, current, action, why)


def roll_back(ctx: Context, reason: str) -> LedgerEntry:
    """`kaizen rollback`: the champion before the current one (rollbacks walk further back)."""
    current = current_champion(ctx)
    target = previous_champion(ctx.client, ctx.model_name)
    return move_champion(ctx.client, champion_guard(ctx), ctx.model_name, target, current, "rollback", reason)
