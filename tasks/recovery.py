"""Finish or undo what a killed command left half done, before a command does anything else.

Every step that changes shared state either commits at one point or leaves a record the next
command can act on: the data markers (`tasks.versioning.recover_data`) and the champion move
the ledger records before making it (`tasks.registry.finish_interrupted_move`). Everything
else a kill can leave behind is either rewritten by a re-run (staging, reports, checkpoints) or
derived and rebuilt (the history statistics). `kaizen doctor` checks the result.
"""

from __future__ import annotations

import os
import shutil

from tasks.context import Context
from tasks.workspace import Workspace


def recover(ctx: Context, registry: bool = True) -> list[str]:
    """Bring the workspace back to a consistent state; one line per thing done (none usually).

    `registry=False` leaves the registry alone (no connection to MLflow): the CLI recovers the
    data before it checks a file, so a refusal still writes nothing, not even a new mlflow.db;
    the flow it then starts recovers the registry."""
    from tasks import versioning

    done = []
    data = versioning.recover_data(ctx.ws)
    if data:
        done.append(f"data: {data}")
        done += release_restored(ctx.ws)
        refresh_history(ctx)
    clear_staging(ctx.ws)
    pooled = build_missing_pool(ctx)
    if pooled:
        done.append(pooled)
    if registry:
        done += recover_registry(ctx)
    return done


def recover_registry(ctx: Context) -> list[str]:
    from tasks import cycle, registry
    from tasks.shared import champion_guard

    if not ctx.config.registry.tracking_uri and not ctx.ws.mlflow_db.exists():
        return []  # no registry yet, nothing to recover; connecting would create (and log) one
    done = []
    move = registry.finish_interrupted_move(ctx.client, champion_guard(ctx), ctx.model_name)
    if move:
        done.append(
            f"registry: finished the interrupted move of champion v{move.from_version or '-'} -> v{move.to_version} "
            f"(ledger #{move.seq}, {move.action})"
        )
    done += cycle.settle_unfinished(ctx)  # after the move: a version just made champion is done
    return done


def build_missing_pool(ctx: Context) -> str | None:
    """A workspace from before the replay pool gets one (reading every batch, once)."""
    from tasks import pool, versioning

    if pool.pool_path(ctx.ws).exists() or not ctx.ws.manifest.exists():
        return None
    with versioning.changing_data(ctx.ws):
        if not pool.ensure_pool(ctx.ws, ctx.config):
            return None
        version = versioning.commit_data(ctx.ws)
    return f"data: built the replay pool (data/pool.parquet) from every batch; data version {version}"


def refresh_history(ctx: Context) -> None:
    """Rebuild the history statistics if they no longer match the manifest (after a rollback or
    a finished change, the step that would have updated them never ran)."""
    from models.base import load_tokenizer
    from tasks.history import load_history

    if ctx.ws.manifest.exists():
        load_history(ctx.ws, load_tokenizer(ctx.config.model.base))


def release_restored(ws: Workspace) -> list[str]:
    """A withdrawal rolled back puts its batch back in data/; its quarantine entry, written by
    that withdrawal, is set aside so the batch is in one place (the next cycle judges it again)."""
    from tasks.ingest import batch_ids
    from tasks.quarantine import entry_dir, quarantined_ids

    done = []
    for batch_id in sorted(set(quarantined_ids(ws)) & set(batch_ids(ws))):
        kept = ws.state / "recovered" / "quarantine" / batch_id
        kept.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(kept, ignore_errors=True)
        os.replace(entry_dir(ws, batch_id), kept)
        done.append(f"quarantine: batch {batch_id} is back in data/; its interrupted withdrawal was kept in {kept}")
    return done


def clear_staging(ws: Workspace) -> None:
    """Staged copies of batches that made it into data/, and torn temporary files, are leftovers."""
    from tasks.ingest import batch_ids

    staging = ws.state / "staging"
    if not staging.exists():
        return
    ingested = set(batch_ids(ws))
    for path in staging.iterdir():
        if (path.name.startswith(".") and path.name.endswith(".tmp")) or path.stem in ingested:
            path.unlink(missing_ok=True)
