"""The pool: a bounded, stratified sample of every accepted batch, kept incrementally in data/.

Replay, replayed validation rows and the regression set used to be drawn from every earlier
batch, so a cycle's cost grew with history. They now come from `data/pool.parquet`: per split
at most `data.pool.<split>_rows` rows, allocated to (batch, label) strata in proportion to
their sizes (proportional stratified sampling), each stratum holding its rows with the
smallest per-row hash. Adding a batch only shrinks the quotas of the strata already there, and
the rows a smaller quota keeps are the smallest-hash rows the pool already holds, so the pool
after N batches is the same whether built at once or one batch at a time: an update reads the
pool and the new batch, never history. `data/pool.json` holds the stratum sizes the quotas
are computed from. Both files are versioned with the data (the same data version, the same
pool), so a worker that syncs the data head has the pool without reading a batch.

Hand-written: neither pandas nor DVC keeps a mergeable stratified sample, and a reservoir's
random replacement would make the pool depend on ingestion order.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.ingest import read_manifest, write_atomic
from tasks.workspace import Workspace

SPLITS = ("train", "validation", "test")


def pool_path(ws: Workspace) -> Path:
    return ws.data / "pool.parquet"


def strata_path(ws: Workspace) -> Path:
    return ws.data / "pool.json"


def row_keys(batch_id: str, texts: pd.Series) -> np.ndarray:
    """A stable pseudo-random key per row (batch id + position + text): the sample's order."""
    out = np.empty(len(texts), dtype=np.uint64)
    for i, text in enumerate(texts.astype(str)):
        digest = hashlib.blake2b(f"{batch_id}\x00{i}\x00{text}".encode(), digest_size=8).digest()
        out[i] = int.from_bytes(digest, "big")
    return out


def quotas(strata: dict[str, dict[str, dict[str, int]]], limits: dict[str, int]) -> dict[tuple[str, str, str], int]:
    """(split, batch, label) -> rows kept: its share of the split's limit, in proportion to size.

    A stratum whose share rounds to nothing still keeps one row while it is among the `limit`
    strata of its split with the smallest fixed hash: so no batch or class of a small history
    drops out, a long history keeps a uniform sample of its strata (never an empty split), and
    the split holds at most about twice its limit. Quotas only shrink as batches are added,
    which is what lets the pool be kept incrementally.
    """
    out = {}
    for split, batches in strata.items():
        total = sum(n for labels in batches.values() for n in labels.values())
        limit = limits[split]
        keys = [(batch_id, label) for batch_id, labels in batches.items() for label in labels]
        kept = set(sorted(keys, key=_stratum_hash)[:limit])
        for batch_id, labels in batches.items():
            for label, n in labels.items():
                share = int(round(limit * n / total)) if total > limit else n
                out[(split, batch_id, label)] = min(n, max(share, int((batch_id, label) in kept)))
    return out


def _stratum_hash(key: tuple[str, str]) -> bytes:
    return hashlib.blake2b("\x00".join(key).encode(), digest_size=8).digest()


def limits_of(config) -> dict[str, int]:
    pool = config.data.pool
    return {"train": pool.train_rows, "validation": pool.validation_rows, "test": pool.test_rows}


def read_pool(ws: Workspace) -> tuple[pd.DataFrame, dict]:
    """(rows, strata); empty when no batch was pooled yet."""
    if not pool_path(ws).exists() or not strata_path(ws).exists():
        return pd.DataFrame(), {split: {} for split in SPLITS}
    return pd.read_parquet(pool_path(ws)), json.loads(strata_path(ws).read_text())


def _stratum_sizes(batch: pd.DataFrame) -> dict[str, dict[str, int]]:
    counts = batch.groupby(["split", "label"]).size()
    sizes: dict[str, dict[str, int]] = {}
    for (split, label), n in counts.items():
        sizes.setdefault(str(split), {})[str(label)] = int(n)
    return sizes


def _trim(rows: pd.DataFrame, keep: dict[tuple[str, str, str], int]) -> pd.DataFrame:
    if rows.empty:
        return rows
    ranked = rows.sort_values("pool_key", kind="stable")
    rank = ranked.groupby(["split", "batch_id", "label"], sort=False).cumcount().to_numpy()
    groups = zip(ranked["split"].astype(str), ranked["batch_id"].astype(str), ranked["label"].astype(str), strict=True)
    allowed = np.fromiter((keep.get(g, 0) for g in groups), dtype=np.int64, count=len(ranked))
    return ranked[rank < allowed].sort_values(["batch_id", "pool_key"], kind="stable").reset_index(drop=True)


def _write(ws: Workspace, rows: pd.DataFrame, strata: dict) -> None:
    write_atomic(pool_path(ws), lambda tmp: rows.to_parquet(tmp, index=False))
    write_atomic(strata_path(ws), lambda tmp: Path(tmp).write_text(json.dumps(strata, indent=1, sort_keys=True)))


def add_batch(ws: Workspace, batch_id: str, batch: pd.DataFrame, config) -> int:
    """Pool an accepted batch (reads the pool and this batch only); returns the pool's rows."""
    rows, strata = read_pool(ws)
    for split, labels in _stratum_sizes(batch).items():
        strata.setdefault(split, {})[batch_id] = labels
    fresh = batch.assign(batch_id=batch_id, pool_key=row_keys(batch_id, batch["text"]))
    merged = pd.concat([rows[rows["batch_id"] != batch_id], fresh], ignore_index=True) if len(rows) else fresh
    kept = _trim(merged, quotas(strata, limits_of(config)))
    _write(ws, kept, strata)
    return len(kept)


def remove_batch(ws: Workspace, batch_id: str, config) -> None:
    """Drop a withdrawn batch. The other strata keep what they hold: their larger quotas would
    need rows the pool no longer has, and refilling them would mean reading history."""
    rows, strata = read_pool(ws)
    if rows.empty:
        return
    for batches in strata.values():
        batches.pop(batch_id, None)
    _write(ws, rows[rows["batch_id"] != batch_id].reset_index(drop=True), strata)


def ensure_pool(ws: Workspace, config) -> bool:
    """Build the pool of a workspace from before pools (reads every batch once); True if it did."""
    manifest = [e["batch_id"] for e in read_manifest(ws)]
    if not manifest or pool_path(ws).exists():
        return False
    for batch_id in manifest:
        add_batch(ws, batch_id, pd.read_parquet(ws.batch_path(batch_id)), config)
    return True


def pool_sha(ws: Workspace) -> str:
    """Content hash of the pool file: the key of its token-id cache."""
    digest = hashlib.sha256()
    with open(pool_path(ws), "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
