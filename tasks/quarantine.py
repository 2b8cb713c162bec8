"""Quarantine: batches kept out of training (failed validation, or withdrawn after the gate)."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from tasks.errors import KaizenError
from tasks.ingest import batch_ids
from tasks.workspace import Workspace


@dataclass(frozen=True)
class QuarantineEntry:
    batch_id: str
    kind: str  # validation | gate
    rows: int
    reason: str
    path: str


def list_quarantine(ws: Workspace) -> list[QuarantineEntry]:
    if not ws.quarantine.exists():
        return []
    entries = []
    for folder in sorted(p for p in ws.quarantine.iterdir() if (p / "report.json").exists()):
        report = json.loads((folder / "report.json").read_text())
        if "outcomes" in report:  # a validation report
            failures = [f"{o['name']}: {o['detail']}" for o in report["outcomes"] if not o["success"]]
            entries.append(QuarantineEntry(folder.name, "validation", report.get("rows", 0),
                                           "; ".join(failures), str(folder)))
        else:  # a gate decision
            import pandas as pd

            rows = len(pd.read_parquet(folder / "batch.parquet", columns=["label"]))
            entries.append(QuarantineEntry(folder.name, "gate", rows, "; ".join(report.get("reasons", [])), str(folder)))
    return entries


def resubmission(ws: Workspace, batch_id: str, fixed: Path | None) -> tuple[Path, str]:
    """(file to ingest, new batch id). Batch ids are immutable, so a resubmission gets `-rN`."""
    folder = ws.quarantine / batch_id
    if not (folder / "batch.parquet").exists():
        raise KaizenError(f"no quarantined batch {batch_id} in {ws.quarantine}")
    existing = set(batch_ids(ws))
    n = 1
    while f"{batch_id}-r{n}" in existing:
        n += 1
    return (fixed if fixed is not None else folder / "batch.parquet"), f"{batch_id}-r{n}"


def resolve(ws: Workspace, batch_id: str, accepted_as: str) -> Path:
    """Move a resubmitted batch's quarantine folder aside, keeping its report for the record."""
    target = ws.state / "quarantine-resolved" / batch_id
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        shutil.rmtree(target)
    shutil.move(str(ws.quarantine / batch_id), target)
    (target / "resolved.txt").write_text(f"accepted as batch {accepted_as}\n")
    return target
