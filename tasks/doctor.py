"""`kaizen doctor`: does everything the workspace records agree with everything else?

Each check compares two records that a crash, a tampered byte or a hand edit could set apart:
data/ and data.dvc, the manifest and the batch files, the DVC remote's objects and their md5s,
the history statistics and the manifest, registered weights and their recorded sha256, the
aliases and the promotion ledger. A *problem* is a disagreement (exit non-zero); a *note* is
something left over that harms nothing (a staged file, a run a killed command left RUNNING).

Hand-written because none of the libraries has it: `dvc status` compares a workspace with its
cache and remote but never re-hashes the remote, MLflow has no notion of a ledger, and neither
knows about the other.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from tasks.context import Context
from tasks.workspace import Workspace

PROBLEM, NOTE = "problem", "note"


@dataclass(frozen=True)
class Finding:
    severity: str  # problem | note
    area: str  # data | remote | history | quarantine | registry | ledger | runs
    text: str

    def line(self) -> str:
        return f"{self.severity}: {self.area}: {self.text}"


def examine(ctx: Context, deep: bool = True, progress: Callable[[str], None] = lambda _: None) -> list[Finding]:
    """Every finding, problems first. `deep` re-hashes every object in the data remote and every
    registered version's weights (cost grows with the whole history; off for a quick look)."""
    from tasks.ingest import read_manifest

    ws, found = ctx.ws, []
    manifest = read_manifest(ws)
    progress("data/, data.dvc and the manifest")
    found += check_markers(ws)
    found += check_manifest(ws, manifest)
    found += check_data_version(ws)
    found += check_pool(ws, manifest)
    found += check_shared_head(ctx)
    progress("the history statistics")
    found += check_history(ws, manifest)
    found += check_quarantine(ws, manifest)
    progress("the registry, aliases and ledger")
    versions = _versions(ctx)
    found += check_registry(ctx, versions)
    found += check_ledger(ctx, versions)
    found += check_runs(ctx)
    progress("the data remote" + (" (re-hashing every object)" if deep else ""))
    found += check_remote(ws, versions, deep)
    if deep:
        found += check_weights(ctx, versions, progress)
    return sorted(found, key=lambda f: f.severity != PROBLEM)


# --- data/ ------------------------------------------------------------------------------------


def check_markers(ws: Workspace) -> list[Finding]:
    from tasks.versioning import _change_marker, _push_marker

    found = []
    if _push_marker(ws).exists():
        found.append(
            Finding(PROBLEM, "data", "an interrupted dvc push is pending; the next writing command finishes it")
        )
    if _change_marker(ws).exists():
        found.append(
            Finding(PROBLEM, "data", "an interrupted change of data/ is pending; the next writing command undoes it")
        )
    staged = sorted((ws.state / "staging").glob("*")) if (ws.state / "staging").exists() else []
    if staged:
        names = ", ".join(p.name for p in staged[:5]) + (" ..." if len(staged) > 5 else "")
        found.append(Finding(NOTE, "data", f"{len(staged)} staged file(s) never ingested in .kaizen/staging: {names}"))
    return found


def check_manifest(ws: Workspace, manifest: list[dict]) -> list[Finding]:
    """Every manifest entry has its file with its rows and content hash; every file is listed."""
    import pandas as pd
    import pyarrow.parquet as pq

    from tasks.ingest import content_hash

    found, listed = [], set()
    for entry in manifest:
        batch_id = entry["batch_id"]
        listed.add(batch_id)
        path = ws.batch_path(batch_id)
        if not path.exists():
            found.append(Finding(PROBLEM, "data", f"batch {batch_id} is in the manifest but {path} is missing"))
            continue
        rows = pq.ParquetFile(path).metadata.num_rows
        if rows != entry["rows"]:
            found.append(
                Finding(PROBLEM, "data", f"batch {batch_id}: {rows} rows in {path}, manifest says {entry['rows']}")
            )
        elif content_hash(pd.read_parquet(path)) != entry["sha256"]:
            found.append(Finding(PROBLEM, "data", f"batch {batch_id}: {path} content differs from its manifest sha256"))
    on_disk = sorted(p.stem for p in ws.batches.glob("*.parquet")) if ws.batches.exists() else []
    for batch_id in on_disk:
        if batch_id not in listed:
            found.append(Finding(PROBLEM, "data", f"{ws.batch_path(batch_id)} is not in the manifest"))
    return found


def check_data_version(ws: Workspace) -> list[Finding]:
    """data/ is exactly the data version data.dvc names (DVC's own status, using its hash cache)."""
    from dvc.repo import Repo

    from tasks.versioning import _quiet_dvc, data_version

    if data_version(ws) is None:
        if ws.batches.exists() and any(ws.batches.iterdir()):
            return [Finding(PROBLEM, "data", f"data/ holds batches but {ws.dvc_file.name} records no data version")]
        return []
    with _quiet_dvc():
        changed = Repo(str(ws.root)).status(targets=[str(ws.dvc_file)])
    if changed:
        detail = json.dumps(changed, default=str)
        return [Finding(PROBLEM, "data", f"data/ differs from the data version in {ws.dvc_file.name}: {detail}")]
    return []


def check_pool(ws: Workspace, manifest: list[dict]) -> list[Finding]:
    """The replay/regression pool covers exactly the manifest's batches (tasks/pool.py)."""
    from tasks.pool import pool_path, read_pool

    if not manifest:
        return []
    if not pool_path(ws).exists():
        return [Finding(NOTE, "data", f"{pool_path(ws)} is missing; the next writing command builds it")]
    rows, strata = read_pool(ws)
    listed = {e["batch_id"] for e in manifest}
    pooled = {b for batches in strata.values() for b in batches} | set(rows.get("batch_id", []))
    found = [
        Finding(PROBLEM, "data", f"the pool holds batch {b}, which is not in the manifest")
        for b in sorted(pooled - listed)
    ]
    found += [Finding(PROBLEM, "data", f"batch {b} is not in the pool") for b in sorted(listed - pooled)]
    return found


def check_shared_head(ctx: Context) -> list[Finding]:
    """Scaled out: is this workspace at the shared data head? (Behind is normal between runs.)"""
    from tasks import shared
    from tasks.versioning import data_version

    if not shared.enabled(ctx.config):
        return []
    try:
        head = shared.latest_head(ctx.config)
    except shared.SharedStoreError as exc:
        return [Finding(PROBLEM, "data", str(exc))]
    if head is not None and head.data_md5 != data_version(ctx.ws):
        return [Finding(NOTE, "data", f"this workspace is behind the shared data head #{head.seq} (`kaizen sync`)")]
    return []


def check_history(ws: Workspace, manifest: list[dict]) -> list[Finding]:
    """The incremental statistics describe exactly the batches in the manifest (rows, labels)."""
    import pandas as pd

    from tasks.history import _paths

    stats_path, _ = _paths(ws)
    if not stats_path.exists():
        if manifest:
            return [Finding(NOTE, "history", "no history statistics yet; the next ingest builds them")]
        return []
    raw = json.loads(stats_path.read_text())
    ids = [e["batch_id"] for e in manifest]
    if raw["batches"] != ids:
        return [
            Finding(
                PROBLEM,
                "history",
                f"statistics cover batches {raw['batches']} but the manifest lists {ids} (the next ingest rebuilds them)",
            )
        ]
    labels: dict[str, int] = {}
    for batch_id in ids:
        if ws.batch_path(batch_id).exists():
            for label, count in (
                pd.read_parquet(ws.batch_path(batch_id), columns=["label"])["label"].value_counts().items()
            ):
                labels[str(label)] = labels.get(str(label), 0) + int(count)
    rows = sum(e["rows"] for e in manifest)
    if raw["stats"]["rows"] != rows or raw["stats"]["label_counts"] != labels:
        return [
            Finding(
                PROBLEM,
                "history",
                f"statistics count {raw['stats']['rows']} rows {raw['stats']['label_counts']}, "
                f"the batches hold {rows} rows {labels}",
            )
        ]
    return []


def check_quarantine(ws: Workspace, manifest: list[dict]) -> list[Finding]:
    from tasks.quarantine import quarantined_ids

    ingested = {e["batch_id"] for e in manifest}
    both = sorted(set(quarantined_ids(ws)) & ingested)
    return [Finding(PROBLEM, "quarantine", f"batch {b} is both in data/ and in quarantine") for b in both]


# --- the data remote --------------------------------------------------------------------------


def check_remote(ws: Workspace, versions: list, deep: bool) -> list[Finding]:
    """Every data version in use (data.dvc's, each registered version's) is complete in the
    remote; with `deep`, every object in the remote still has the md5 it is named by."""
    from dvc.repo import Repo

    from tasks.lineage import Lineage
    from tasks.versioning import _object_name, _quiet_dvc, data_version, remote_settings

    url = remote_settings(ws).get("url", "")
    if not url:
        return [Finding(PROBLEM, "remote", "the DVC repo has no default remote")] if data_version(ws) else []
    with _quiet_dvc():
        odb = Repo(str(ws.root)).cloud.get_remote_odb()
        needed = {data_version(ws): "data.dvc"} if data_version(ws) else {}
        for ref in versions:
            lineage = Lineage.from_tags(ref.tags)
            if lineage.data_md5 and lineage.dvc_remote.rstrip("/") == url.rstrip("/"):
                needed.setdefault(lineage.data_md5, f"v{ref.version}")
        found = []
        for md5, who in needed.items():
            found += _check_data_objects(odb, md5, who, url)
        if deep:
            found += [
                Finding(PROBLEM, "remote", f"{url}: object {_object_name(oid)} does not match its md5")
                for oid in _corrupt_objects(odb)
            ]
    return found


def _check_data_objects(odb, md5: str, who: str, url: str) -> list[Finding]:
    from tasks.versioning import _object_name

    if not odb.exists(md5):
        return [Finding(PROBLEM, "remote", f"{url}: data version {md5} ({who}) is missing ({_object_name(md5)})")]
    try:
        with odb.fs.open(odb.oid_to_path(md5), "rb") as fh:
            listing = json.loads(fh.read())
    except (ValueError, OSError) as exc:
        return [Finding(PROBLEM, "remote", f"{url}: {_object_name(md5)} ({who}) is not a readable listing: {exc}")]
    return [
        Finding(PROBLEM, "remote", f"{url}: {_object_name(e['md5'])} (data/{e['relpath']} of {who}) is missing")
        for e in listing
        if not odb.exists(e["md5"])
    ]


def _corrupt_objects(odb) -> Iterable[str]:
    for oid in odb.all():
        digest = hashlib.md5(usedforsecurity=False)
        with odb.fs.open(odb.oid_to_path(oid), "rb") as fh:
            for chunk in iter(lambda fh=fh: fh.read(1 << 20), b""):
                digest.update(chunk)
        if digest.hexdigest() != oid.removesuffix(".dir"):
            yield oid


# --- the registry -----------------------------------------------------------------------------


def _versions(ctx: Context) -> list:
    from tasks.registry import list_versions

    return list_versions(ctx.client, ctx.model_name)


def check_registry(ctx: Context, versions: list) -> list[Finding]:
    from tasks.lineage import Lineage
    from tasks.registry import CANDIDATE, CHALLENGER, CHAMPION, get_alias

    found = [
        Finding(PROBLEM, "registry", f"v{ref.version} has no recorded weights sha256; no loader will accept it")
        for ref in versions
        if not Lineage.from_tags(ref.tags).weights_sha256
    ]
    found += [
        Finding(
            PROBLEM,
            "registry",
            f"v{ref.version}'s cycle has not acted on its decision (a cycle running now, or one killed: the next command settles it)",
        )
        for ref in versions
        if Lineage.from_tags(ref.tags).cycle_state == "open"
    ]
    known = {ref.version for ref in versions}
    for alias in (CHAMPION, CHALLENGER, CANDIDATE):
        ref = get_alias(ctx.client, ctx.model_name, alias)
        if ref is not None and ref.version not in known:
            found.append(Finding(PROBLEM, "registry", f"alias {alias} points at v{ref.version}, which is not listed"))
    return found


def check_weights(ctx: Context, versions: list, progress: Callable[[str], None]) -> list[Finding]:
    """Download each version's artifacts and verify them as every loader does."""
    from tasks.registry import RegistryError, download_model

    found = []
    for ref in versions:
        progress(f"v{ref.version}: verifying its weights")
        with tempfile.TemporaryDirectory(prefix="kaizen-doctor-") as tmp:
            try:
                download_model(ctx.client, ref, Path(tmp))
            except RegistryError as exc:
                found.append(Finding(PROBLEM, "registry", str(exc)))
            except Exception as exc:  # noqa: BLE001 - an unreadable artifact store is a finding too
                found.append(Finding(PROBLEM, "registry", f"v{ref.version}: artifacts cannot be read: {exc}"))
    return found


def check_ledger(ctx: Context, versions: list) -> list[Finding]:
    """The ledger is numbered 1..n, names real versions, each move starts where the previous one
    ended, and the last one ends where `champion` points."""
    from tasks.registry import CHAMPION, CHAMPION_MOVES, PROMOTED_AT_TAG, get_alias, last_move, read_ledger

    ledger = read_ledger(ctx.client, ctx.model_name)
    found, known = [], {ref.version for ref in versions}
    seqs = [e.seq for e in ledger]
    if seqs != list(range(1, len(ledger) + 1)):
        found.append(Finding(PROBLEM, "ledger", f"entries are numbered {seqs}, not 1..{len(ledger)}"))
    at = None
    for entry in ledger:
        if entry.to_version not in known:
            found.append(
                Finding(
                    PROBLEM, "ledger", f"#{entry.seq} ({entry.action}) names v{entry.to_version}, not in the registry"
                )
            )
        if entry.action in CHAMPION_MOVES:
            if entry.from_version != at:
                found.append(
                    Finding(
                        PROBLEM,
                        "ledger",
                        f"#{entry.seq} moves champion from v{entry.from_version or '-'}, "
                        f"but the previous move left it at v{at or '-'}",
                    )
                )
            at = entry.to_version
    champion = get_alias(ctx.client, ctx.model_name, CHAMPION)
    move = last_move(ledger)
    if (champion.version if champion else None) != (move.to_version if move else None):
        found.append(
            Finding(
                PROBLEM,
                "ledger",
                f"champion points at v{champion.version if champion else '-'}, but the ledger's last move "
                + (f"(#{move.seq}) made it v{move.to_version}" if move else "is none"),
            )
        )
    elif champion is not None and champion.tags.get(PROMOTED_AT_TAG) != move.when:
        found.append(
            Finding(PROBLEM, "ledger", f"champion v{champion.version} lacks the promoted-at time of ledger #{move.seq}")
        )
    return found


def check_runs(ctx: Context) -> list[Finding]:
    """MLflow runs still RUNNING: a command was killed inside them (harmless; worth knowing)."""
    from mlflow.entities import RunStatus, ViewType

    names = (ctx.config.project, f"{ctx.config.project}-data")  # cycles, validations
    experiments = [e for e in map(ctx.client.get_experiment_by_name, names) if e is not None]
    if not experiments:
        return []
    running = ctx.client.search_runs(
        [e.experiment_id for e in experiments],
        filter_string=f"attributes.status = '{RunStatus.to_string(RunStatus.RUNNING)}'",
        run_view_type=ViewType.ACTIVE_ONLY,
    )
    return [
        Finding(
            NOTE,
            "runs",
            f"MLflow run {run.info.run_id} ({run.info.run_name}) is still RUNNING: a command killed in it?",
        )
        for run in running
    ]


def summary_line(found: list[Finding]) -> str:
    problems = sum(f.severity == PROBLEM for f in found)
    notes = len(found) - problems
    if problems:
        return f"doctor: {problems} problem(s), {notes} note(s)"
    return f"doctor: consistent ({notes} note(s))"
