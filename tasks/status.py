"""`kaizen status`: champion, challenger, data version and the last run, as data and as text."""

from __future__ import annotations

from tasks.approval import waiting as waiting_for_approval
from tasks.context import Context
from tasks.cycle import load_last_summary
from tasks.ingest import read_manifest
from tasks.lineage import Lineage
from tasks.quarantine import quarantined_ids
from tasks.registry import CANDIDATE, CHALLENGER, CHAMPION, ModelRef, get_alias
from tasks.versioning import data_version

LAST_RUN_FIELDS = ("status", "verdict", "reasons", "version", "batch_ids", "candidate", "power", "finished_at")


def describe_ref(ref: ModelRef | None) -> dict | None:
    if ref is None:
        return None
    lineage = Lineage.from_tags(ref.tags)
    return {
        "version": ref.version,
        "data_md5": lineage.data_md5 or None,
        "batch_ids": lineage.batch_ids,
        "gate_verdict": lineage.gate_verdict or None,
        "git_sha": lineage.git_sha or None,
        "compared_with": lineage.parent_version,
        "looks": len(lineage.evidence_runs),
        "evidence_batches": lineage.evidence_batches,
    }


def workspace_status(ctx: Context) -> dict:
    last = load_last_summary(ctx.ws) or {}
    return {
        "workspace": str(ctx.ws.root),
        "model": ctx.model_name,
        "champion": describe_ref(get_alias(ctx.client, ctx.model_name, CHAMPION)),
        "challenger": describe_ref(get_alias(ctx.client, ctx.model_name, CHALLENGER)),
        "candidate": describe_ref(get_alias(ctx.client, ctx.model_name, CANDIDATE)),
        "data_version": data_version(ctx.ws),
        "batches": len(read_manifest(ctx.ws)),
        "quarantined": quarantined_ids(ctx.ws),
        "awaiting_approval": waiting_for_approval(ctx),
        "last_run": {k: last.get(k) for k in LAST_RUN_FIELDS},
    }


def format_status(report: dict) -> list[str]:
    lines = []
    for role in ("champion", "challenger"):
        ref = report[role]
        lines.append(
            f"{role:<11} "
            + (f"v{ref['version']}  data {ref['data_md5']}  gate {ref['gate_verdict']}" if ref else "none")
        )
    held = report.get("candidate")
    if held:
        lines.append(
            f"candidate   v{held['version']}  held against v{held['compared_with'] or '-'}: underpowered so far, "
            f"{held['looks']} look(s) at its evidence"
        )
    for wait in report.get("awaiting_approval") or []:
        lines.append(
            f"approval    v{wait['version']} passed its gate against v{wait['compared_with'] or '-'} and waits since "
            f"{wait['since']} (rejected at {wait['deadline']}): kaizen approve|reject {wait['version']} --reason ..."
        )
    lines.append(
        f"data       {report['data_version']} ({report['batches']} batches, {len(report['quarantined'])} quarantined)"
    )
    last = report["last_run"]
    lines.append(
        f"last run   {last.get('status') or 'none'}" + (f", gate {last['verdict']}" if last.get("verdict") else "")
    )
    if last.get("power"):  # the smallest effect each judged set could resolve
        lines.append(
            "power      resolves " + ", ".join(f"{k} {v:.3f}" for k, v in last["power"].items()) + " (accuracy points)"
        )
    if last.get("verdict") == "hold":  # say what the gate could not resolve yet
        lines += [f"  - {reason}" for reason in last.get("reasons") or []]
    return lines
