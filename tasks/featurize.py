"""Token ids per batch, cached by (batch content, tokenizer fingerprint, max_length).

Batches are immutable, so a batch is tokenized once in its life; a cycle only pays for the
batches it has never seen. Ids are stored ragged (flat ids + offsets) so no padding is stored.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.errors import KaizenError
from tasks.families import DEFAULT_TASK, family_of
from tasks.ingest import read_manifest, write_atomic
from tasks.workspace import Workspace


class FeatureError(KaizenError, RuntimeError):
    """The feature cache could not be written; the message names the file."""


@dataclass(frozen=True)
class FeatureInfo:
    batch_id: str
    path: str
    rows: int
    cached: bool


def tokenizer_fingerprint(tokenizer) -> str:
    """Hash of the tokenizer's definition (vocab, normaliser, special tokens).

    Truncation and padding are left out: the fast tokenizer stores the settings of its
    latest call there, and max_length is part of the cache key anyway.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        definition = json.loads(backend.to_str())
        definition.pop("truncation", None)
        definition.pop("padding", None)
        blob = json.dumps(definition, sort_keys=True)
    else:
        blob = repr(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def feature_path(ws: Workspace, batch_sha: str, fingerprint: str, max_length: int, task: str = DEFAULT_TASK) -> Path:
    """The cache file of a batch's content as `task`'s family featurizes it."""
    return ws.features / f"{batch_sha[:20]}-{task}-{fingerprint}-{max_length}.npz"


def tokenize_texts(texts: list[str], tokenizer, max_length: int) -> tuple[np.ndarray, np.ndarray]:
    encoded = tokenizer(texts, truncation=True, max_length=max_length, padding=False)["input_ids"]
    lengths = np.fromiter((len(ids) for ids in encoded), dtype=np.int64, count=len(encoded))
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.fromiter((t for ids in encoded for t in ids), dtype=np.int32, count=int(offsets[-1]))
    return flat, offsets


def featurize_batch(ws: Workspace, batch_id: str, tokenizer, max_length: int, task: str = DEFAULT_TASK) -> FeatureInfo:
    import pandas as pd

    entry = next((e for e in read_manifest(ws) if e["batch_id"] == batch_id), None)
    if entry is None:
        raise KeyError(f"batch {batch_id} is not in {ws.manifest}")
    path = feature_path(ws, entry["sha256"], tokenizer_fingerprint(tokenizer), max_length, task)
    if path.exists():
        return FeatureInfo(batch_id, str(path), entry["rows"], cached=True)
    family = family_of(task)
    frame = pd.read_parquet(ws.batch_path(batch_id), columns=list(family.INPUT_COLUMNS))
    write_features(path, **family.featurize(frame, tokenizer, max_length))
    return FeatureInfo(batch_id, str(path), len(frame), cached=False)


def featurize_pool(ws: Workspace, tokenizer, max_length: int, task: str = DEFAULT_TASK) -> FeatureInfo:
    """Token ids of the pool (tasks/pool.py), cached by its content like a batch's: bounded
    in size, so re-tokenizing it after each ingest costs the same however long the history."""
    import pandas as pd

    from tasks.pool import pool_path, pool_sha

    path = feature_path(ws, pool_sha(ws), tokenizer_fingerprint(tokenizer), max_length, task)
    frame = None
    if not path.exists():
        family = family_of(task)
        frame = pd.read_parquet(pool_path(ws), columns=list(family.INPUT_COLUMNS))
        write_features(path, **family.featurize(frame, tokenizer, max_length))
    return FeatureInfo("<pool>", str(path), -1 if frame is None else len(frame), cached=frame is None)


def write_features(path: Path, ids: np.ndarray, offsets: np.ndarray, **per_token: np.ndarray) -> None:
    """Write the cache file atomically; a failed write (a full disk) leaves no file at `path`
    and no temporary beside it (write_atomic), and becomes one line naming the file.
    `per_token`: a family's arrays aligned with `ids` (cut by the same offsets)."""
    try:
        write_atomic(path, lambda tmp: _save_npz(tmp, ids=ids, offsets=offsets, **per_token))
    except OSError as exc:
        reason = (exc.strerror or str(exc) or type(exc).__name__).lower()
        raise FeatureError(f"{path}: cannot write token features: {reason}") from None


def _save_npz(path: str, **arrays: np.ndarray) -> None:
    with open(path, "wb") as handle:  # a handle: np.savez would append .npz to a bare name
        np.savez(handle, **arrays)


def load_features(path: Path | str) -> list[np.ndarray]:
    """Ragged ids, one array per row. np.load without pickle: plain arrays only."""
    return load_feature_rows(path)["ids"]


def load_feature_rows(path: Path | str) -> dict[str, list[np.ndarray]]:
    """Every per-token array of a cache file (`ids`, and a family's own), ragged by row."""
    with np.load(path, allow_pickle=False) as data:
        return feature_rows({k: data[k] for k in data.files})


def feature_rows(features: dict[str, np.ndarray]) -> dict[str, list[np.ndarray]]:
    """A family's `featurize` output (flat arrays and `offsets`) cut into one array per row."""
    offsets = features["offsets"]
    rows = range(len(offsets) - 1)
    return {k: [v[offsets[i] : offsets[i + 1]] for i in rows] for k, v in features.items() if k != "offsets"}
