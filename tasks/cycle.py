"""What one cycle works on: which batches are new, and what the champion already learned."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from tasks.ingest import batch_ids
from tasks.registry import CHAMPION, get_alias, get_version, list_versions
from tasks.workspace import Workspace

NEW_BATCHES_TAG = "kaizen.new_batches"
PARENT_TAG = "kaizen.parent_version"
# Set on a rejected version whose batches stay pending for the next cycle.
PENDING_TAG = "kaizen.batches_pending"


@dataclass(frozen=True)
class CyclePlan:
    new_batches: list[str]
    seen_batches: list[str]  # the champion's lineage: replay pool and regression set
    champion_version: str | None


@dataclass
class CycleSummary:
    """What `kaizen status` and the demo show about a cycle; written to .kaizen/last_run.json."""

    status: str  # promoted | rejected | registered | quarantined | failed | nothing-to-do
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
    finished_at: str = ""

    def save(self, path: Path) -> None:
        self.finished_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=1))


def load_last_summary(ws: Workspace) -> dict | None:
    return json.loads(ws.last_run.read_text()) if ws.last_run.exists() else None


def _split_tag(value: str | None) -> list[str]:
    return [b for b in (value or "").split(",") if b]


def lineage(client, name: str, version: str | None) -> list[str]:
    """Every batch a version learned from: its own new batches and its ancestors'."""
    batches: list[str] = []
    while version:
        ref = get_version(client, name, version)
        batches = _split_tag(ref.tags.get(NEW_BATCHES_TAG)) + batches
        version = ref.tags.get(PARENT_TAG) or None
    return batches


def plan_cycle(ws: Workspace, client, name: str) -> CyclePlan:
    consumed = {
        b
        for ref in list_versions(client, name)
        if ref.tags.get(PENDING_TAG) != "true"
        for b in _split_tag(ref.tags.get(NEW_BATCHES_TAG))
    }
    new = [b for b in batch_ids(ws) if b not in consumed]
    champion = get_alias(client, name, CHAMPION)
    version = champion.version if champion else None
    present = set(batch_ids(ws))
    # A batch withdrawn after its challenger was rejected can still sit in a lineage when
    # that challenger was force-promoted; it is neither replayed nor used for regression.
    seen = [b for b in lineage(client, name, version) if b in present]
    return CyclePlan(new, seen, version)
