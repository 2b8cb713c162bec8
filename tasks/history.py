"""Statistics of the training history, kept incrementally.

Drift and leakage checks compare a new batch with everything before it. Re-reading history
for every batch would make validation cost grow with history; instead each accepted batch
adds its counts here (and a withdrawn one subtracts them), so checking a batch costs in
proportion to the batch. The file is derived data: `rebuild_history` recreates it from data/.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.ingest import normalise_text, read_manifest, write_atomic
from tasks.workspace import Workspace

# Character-length bins shared by every batch, so histograms add up.
LENGTH_EDGES = [0, 20, 40, 60, 80, 100, 140, 200, 300, 500, 1000, 2000]
_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)


@dataclass
class BatchStats:
    rows: int = 0
    label_counts: dict[str, int] = field(default_factory=dict)
    length_hist: list[int] = field(default_factory=lambda: [0] * (len(LENGTH_EDGES) + 1))
    tokens: int = 0
    unk_tokens: int = 0

    def add(self, other: BatchStats, sign: int = 1) -> None:
        self.rows += sign * other.rows
        for label, count in other.label_counts.items():
            self.label_counts[label] = self.label_counts.get(label, 0) + sign * count
            if self.label_counts[label] == 0:
                del self.label_counts[label]
        self.length_hist = [a + sign * b for a, b in zip(self.length_hist, other.length_hist, strict=True)]
        self.tokens += sign * other.tokens
        self.unk_tokens += sign * other.unk_tokens


@dataclass
class History:
    batches: list[str] = field(default_factory=list)
    stats: BatchStats = field(default_factory=BatchStats)


def leak_key(text: str) -> int:
    """Hash of a text with case, spacing and punctuation removed: near-duplicates collide."""
    key = _NON_WORD.sub(" ", normalise_text(text)).strip()
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "big") >> 1


def batch_stats(batch: pd.DataFrame, tokenizer) -> BatchStats:
    texts = batch["text"].fillna("").astype(str)
    lengths = texts.str.len().to_numpy()
    hist = np.bincount(np.searchsorted(LENGTH_EDGES, lengths, side="right"), minlength=len(LENGTH_EDGES) + 1)
    encoded = tokenizer(texts.tolist(), add_special_tokens=False, truncation=False)["input_ids"] if len(texts) else []
    unk = tokenizer.unk_token_id
    return BatchStats(
        rows=int(len(batch)),
        label_counts={str(k): int(v) for k, v in batch["label"].value_counts().items()},
        length_hist=[int(x) for x in hist],
        tokens=int(sum(len(ids) for ids in encoded)),
        unk_tokens=int(sum(ids.count(unk) for ids in encoded)) if unk is not None else 0,
    )


def _paths(ws: Workspace) -> tuple[Path, Path]:
    return ws.state / "history" / "stats.json", ws.state / "history" / "test_keys.npy"


def load_history(ws: Workspace, tokenizer) -> tuple[History, np.ndarray]:
    """(stats, sorted leak keys of every test-split row); rebuilt if missing or stale."""
    stats_path, keys_path = _paths(ws)
    if stats_path.exists() and keys_path.exists():
        raw = json.loads(stats_path.read_text())
        history = History(raw["batches"], BatchStats(**raw["stats"]))
        manifest = [e["batch_id"] for e in read_manifest(ws)]
        if history.batches == manifest:
            return history, np.load(keys_path, allow_pickle=False)
        known = set(manifest)
        if all(b in known for b in history.batches):
            # Batches other hosts added (a synced data head): read those only, not history.
            return _extend(ws, history, np.load(keys_path, allow_pickle=False), manifest, tokenizer)
    return rebuild_history(ws, tokenizer)


def _extend(ws: Workspace, history: History, keys: np.ndarray, manifest: list[str], tokenizer):
    had, parts = set(history.batches), [keys]
    for batch_id in manifest:
        if batch_id not in had:
            batch = pd.read_parquet(ws.batch_path(batch_id))
            history.stats.add(batch_stats(batch, tokenizer))
            parts.append(_test_keys(batch))
    history.batches = list(manifest)
    merged = np.sort(np.concatenate(parts))
    _save(ws, history, merged)
    return history, merged


def _save(ws: Workspace, history: History, keys: np.ndarray) -> None:
    stats_path, keys_path = _paths(ws)
    write_atomic(keys_path, lambda tmp: _save_array(tmp, np.sort(keys)))
    write_atomic(stats_path, lambda tmp: Path(tmp).write_text(json.dumps(asdict(history))))


def _save_array(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as handle:  # a handle: np.save would append .npy to a bare name
        np.save(handle, array)


def _test_keys(batch: pd.DataFrame) -> np.ndarray:
    test = batch.loc[batch["split"] == "test", "text"].dropna().astype(str)
    return np.fromiter((leak_key(t) for t in test), dtype=np.int64, count=len(test))


def rebuild_history(ws: Workspace, tokenizer) -> tuple[History, np.ndarray]:
    history, keys = History(), [np.zeros(0, dtype=np.int64)]
    for entry in read_manifest(ws):
        batch = pd.read_parquet(ws.batch_path(entry["batch_id"]))
        history.batches.append(entry["batch_id"])
        history.stats.add(batch_stats(batch, tokenizer))
        keys.append(_test_keys(batch))
    merged = np.sort(np.concatenate(keys))
    _save(ws, history, merged)
    return history, merged


def record_batch(ws: Workspace, batch_id: str, batch: pd.DataFrame, tokenizer) -> None:
    """Add an accepted batch to the history (call after it is in the manifest)."""
    history, keys = load_history_before(ws, batch_id, tokenizer)
    history.batches.append(batch_id)
    history.stats.add(batch_stats(batch, tokenizer))
    _save(ws, history, np.concatenate([keys, _test_keys(batch)]))


def load_history_before(ws: Workspace, batch_id: str, tokenizer) -> tuple[History, np.ndarray]:
    stats_path, keys_path = _paths(ws)
    expected = [e["batch_id"] for e in read_manifest(ws) if e["batch_id"] != batch_id]
    if stats_path.exists() and keys_path.exists():
        raw = json.loads(stats_path.read_text())
        if raw["batches"] == expected:
            return History(raw["batches"], BatchStats(**raw["stats"])), np.load(keys_path, allow_pickle=False)
    history, keys = rebuild_history(ws, tokenizer)
    if batch_id in history.batches:  # the rebuild already saw it
        history.batches.remove(batch_id)
        batch = pd.read_parquet(ws.batch_path(batch_id))
        history.stats.add(batch_stats(batch, tokenizer), sign=-1)
        keys = _remove_keys(keys, _test_keys(batch))
    return history, keys


def _remove_keys(keys: np.ndarray, remove: np.ndarray) -> np.ndarray:
    keep = np.ones(len(keys), dtype=bool)
    for key in remove:
        hits = np.flatnonzero((keys == key) & keep)
        if len(hits):
            keep[hits[0]] = False
    return keys[keep]


def forget_batch(ws: Workspace, batch_id: str, batch: pd.DataFrame, tokenizer) -> None:
    """Subtract a withdrawn batch (call after it left the manifest)."""
    stats_path, keys_path = _paths(ws)
    if not stats_path.exists():
        rebuild_history(ws, tokenizer)
        return
    raw = json.loads(stats_path.read_text())
    if batch_id not in raw["batches"]:
        rebuild_history(ws, tokenizer)
        return
    history = History([b for b in raw["batches"] if b != batch_id], BatchStats(**raw["stats"]))
    history.stats.add(batch_stats(batch, tokenizer), sign=-1)
    _save(ws, history, _remove_keys(np.load(keys_path, allow_pickle=False), _test_keys(batch)))
