"""Quarantine: batches kept out of training (failed validation, or withdrawn after the gate).

This module owns the layout; everything else writes and reads it through these functions:

    .kaizen/quarantine/<batch_id>/batch.parquet   the rows, as prepared for ingest
                                  report.json     validation report or gate decision
                                  source.txt      where the rows came from, and why they are here
    .kaizen/quarantine-resolved/<batch_id>/       the same, after a fixed batch was accepted
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from tasks.errors import KaizenError
from tasks.workspace import Workspace

BATCH_FILE = "batch.parquet"
REPORT_FILE = "report.json"
SOURCE_FILE = "source.txt"


@dataclass(frozen=True)
class QuarantineEntry:
    batch_id: str
    kind: str  # validation | gate
    rows: int
    reason: str
    path: str


def entry_dir(ws: Workspace, batch_id: str) -> Path:
    return ws.quarantine / batch_id


def put_rows(ws: Workspace, batch_id: str, batch: pd.DataFrame, report_json: str, note: str) -> Path:
    """Keep rows that never reached data/ (validation failed), with their report."""
    target = entry_dir(ws, batch_id)
    target.mkdir(parents=True, exist_ok=True)
    batch.to_parquet(target / BATCH_FILE, index=False)
    _write_record(target, report_json, note)
    return target


def put_file(ws: Workspace, batch_id: str, parquet: Path, report_json: str, note: str) -> Path:
    """Move an ingested batch's file into quarantine (withdrawn after the gate), with the decision."""
    target = entry_dir(ws, batch_id)
    target.mkdir(parents=True, exist_ok=True)
    os.replace(parquet, target / BATCH_FILE)
    _write_record(target, report_json, note)
    return target


def _write_record(target: Path, report_json: str, note: str) -> None:
    (target / REPORT_FILE).write_text(report_json)
    (target / SOURCE_FILE).write_text(note if note.endswith("\n") else note + "\n")


def quarantined_ids(ws: Workspace) -> list[str]:
    if not ws.quarantine.exists():
        return []
    return sorted(p.name for p in ws.quarantine.iterdir() if (p / BATCH_FILE).exists())


def batch_file(ws: Workspace, batch_id: str) -> Path:
    return entry_dir(ws, batch_id) / BATCH_FILE


def list_quarantine(ws: Workspace) -> list[QuarantineEntry]:
    return [
        _describe(ws, batch_id) for batch_id in quarantined_ids(ws) if (entry_dir(ws, batch_id) / REPORT_FILE).exists()
    ]


def _describe(ws: Workspace, batch_id: str) -> QuarantineEntry:
    folder = entry_dir(ws, batch_id)
    report = json.loads((folder / REPORT_FILE).read_text())
    if "outcomes" in report:  # a validation report
        failures = [f"{o['name']}: {o['detail']}" for o in report["outcomes"] if not o["success"]]
        return QuarantineEntry(batch_id, "validation", report.get("rows", 0), "; ".join(failures), str(folder))
    rows = len(pd.read_parquet(folder / BATCH_FILE, columns=["label"]))
    return QuarantineEntry(batch_id, "gate", rows, "; ".join(report.get("reasons", [])), str(folder))


def resubmission(ws: Workspace, batch_id: str, fixed: Path | None, existing: set[str]) -> tuple[Path, str]:
    """(file to ingest, new batch id). Batch ids are immutable, so a resubmission gets `-rN`."""
    if not batch_file(ws, batch_id).exists():
        raise KaizenError(f"no quarantined batch {batch_id} in {ws.quarantine}")
    n = 1
    while f"{batch_id}-r{n}" in existing:
        n += 1
    return (fixed if fixed is not None else batch_file(ws, batch_id)), f"{batch_id}-r{n}"


def resolve(ws: Workspace, batch_id: str, accepted_as: str) -> Path:
    """Move a resubmitted batch's quarantine folder aside, keeping its report for the record."""
    target = ws.state / "quarantine-resolved" / batch_id
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        shutil.rmtree(target)
    shutil.move(str(entry_dir(ws, batch_id)), target)
    (target / "resolved.txt").write_text(f"accepted as batch {accepted_as}\n")
    return target
