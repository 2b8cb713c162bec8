"""Assemble training, validation and frozen evaluation sets from batches and their features."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from tasks.families import DEFAULT_TASK, family_of
from tasks.featurize import load_feature_rows
from tasks.workspace import Workspace


@dataclass
class Examples:
    """Rows ready for a model: ragged token ids, label indices and row metadata.

    `labels` is one class index per row (what stratified sampling groups by); a family whose
    targets are per token (token classification) also fills `targets`, ragged like `ids`.
    """

    ids: list[np.ndarray] = field(default_factory=list)
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    meta: pd.DataFrame = field(default_factory=pd.DataFrame)
    targets: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, index: np.ndarray) -> Examples:
        index = np.asarray(index, dtype=np.int64)
        targets = None if self.targets is None else [self.targets[i] for i in index]
        return Examples(
            [self.ids[i] for i in index], self.labels[index], self.meta.iloc[index].reset_index(drop=True), targets
        )

    @staticmethod
    def concat(parts: list[Examples]) -> Examples:
        parts = [p for p in parts if len(p)]
        if not parts:
            return Examples()
        targets = None if any(p.targets is None for p in parts) else [t for p in parts for t in p.targets]
        return Examples(
            [row for p in parts for row in p.ids],
            np.concatenate([p.labels for p in parts]),
            pd.concat([p.meta for p in parts], ignore_index=True),
            targets,
        )


# The key of the pool's token ids in a cycle's feature map (a batch id cannot contain "<").
POOL = "<pool>"


def load_examples(
    ws: Workspace, batch_id: str, feature_file: str, labels: list[str], task: str = DEFAULT_TASK
) -> Examples:
    frame = pd.read_parquet(ws.batch_path(batch_id)).assign(batch_id=batch_id)
    return _examples(frame, load_feature_rows(feature_file), labels, f"batch {batch_id}", task)


def load_pool(
    ws: Workspace, feature_file: str, labels: list[str], batches: list[str], task: str = DEFAULT_TASK
) -> Examples:
    """The pooled rows of `batches` (tasks/pool.py): bounded, however long the history."""
    from tasks.pool import pool_path

    frame = pd.read_parquet(pool_path(ws))
    examples = _examples(frame.drop(columns=["pool_key"]), load_feature_rows(feature_file), labels, "the pool", task)
    return examples.take(np.flatnonzero(examples.meta["batch_id"].isin(set(batches)).to_numpy()))


def _examples(frame: pd.DataFrame, features: dict[str, list], labels: list[str], what: str, task: str) -> Examples:
    if len(features["ids"]) != len(frame):
        raise ValueError(f"features of {what} have {len(features['ids'])} rows, it has {len(frame)}")
    try:
        return family_of(task).examples_from(frame.reset_index(drop=True), features, labels)
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from None


def split_of(examples: Examples, split: str) -> Examples:
    return examples.take(np.flatnonzero(examples.meta["split"].to_numpy() == split))


def stratified_sample(examples: Examples, n: int, seed: int) -> Examples:
    """n rows, each label represented in proportion to its share; seeded."""
    if n >= len(examples) or len(examples) == 0:
        return examples
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(examples.labels):
        rows = np.flatnonzero(examples.labels == label)
        quota = int(round(n * len(rows) / len(examples)))
        chosen.append(rng.choice(rows, size=min(quota, len(rows)), replace=False))
    index = np.sort(np.concatenate(chosen))
    return examples.take(index)


def replay_size(new_rows: int, fraction: float, max_rows: int) -> int:
    return int(min(max_rows, round(new_rows * fraction)))


def load_many(
    ws: Workspace, batch_ids: list[str], features: dict[str, str], labels: list[str], task: str = DEFAULT_TASK
) -> Examples:
    return Examples.concat([load_examples(ws, b, features[b], labels, task) for b in batch_ids])


def training_sets(
    ws: Workspace,
    labels: list[str],
    new_batches: list[str],
    seen_batches: list[str],
    features: dict[str, str],
    replay_fraction: float,
    replay_max_rows: int,
    seed: int,
    task: str = DEFAULT_TASK,
) -> tuple[Examples, Examples, int]:
    """(train, validation, replayed rows): new rows plus a seeded, stratified replay sample of
    the pooled rows of `seen_batches` (`features[POOL]` holds the pool's token ids)."""
    new = load_many(ws, new_batches, features, labels, task)
    train, validation = split_of(new, "train"), split_of(new, "validation")
    train.meta = train.meta.assign(replayed=False)
    replayed = 0
    if seen_batches:
        old = load_pool(ws, features[POOL], labels, seen_batches, task)
        n = replay_size(len(train), replay_fraction, replay_max_rows)
        replay = stratified_sample(split_of(old, "train"), n, seed)
        replay.meta = replay.meta.assign(replayed=True)
        replayed = len(replay)
        old_validation = split_of(old, "validation")
        keep = replay_size(len(validation), replay_fraction, replay_max_rows)
        validation = Examples.concat([validation, stratified_sample(old_validation, keep, seed + 1)])
        train = Examples.concat([train, replay])
    return train, validation, replayed


def evaluation_sets(
    ws: Workspace,
    labels: list[str],
    new_batches: list[str],
    seen_batches: list[str],
    features: dict[str, str],
    regression_max_rows: int | None = None,
    seed: int = 0,
    task: str = DEFAULT_TASK,
) -> dict[str, Examples]:
    """Frozen sets: `new` (test split of the new batches), `regression` (of every earlier one).

    The regression set is the pooled test rows of every earlier batch (a sample stratified by
    batch and label, `data.pool.test_rows`), so its power grows with history while its cost
    stays bounded; past `regression_max_rows` it is sampled again by (batch, label).
    """
    sets = {"new": split_of(load_many(ws, new_batches, features, labels, task), "test")}
    if seen_batches:
        regression = split_of(load_pool(ws, features[POOL], labels, seen_batches, task), "test")
        if regression_max_rows is not None:
            regression = sample_by_batch_and_label(regression, regression_max_rows, seed)
        sets["regression"] = regression
    return sets


def sample_by_batch_and_label(examples: Examples, n: int, seed: int) -> Examples:
    """n rows, every (batch, label) group represented in proportion to its size; seeded."""
    if n >= len(examples):
        return examples
    rng = np.random.default_rng(seed)
    groups = examples.meta["batch_id"].astype(str).to_numpy() + "\x00" + examples.labels.astype(str)
    chosen = []
    # One pass to group the rows (a scan per group would cost groups x rows: thousands of
    # batches in a long history); groups in sorted order, rows ascending, as np.unique gives.
    _, inverse = np.unique(groups, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    for rows in np.split(order, np.cumsum(np.bincount(inverse))[:-1]):
        quota = max(1, int(round(n * len(rows) / len(examples))))
        chosen.append(rng.choice(rows, size=min(quota, len(rows)), replace=False))
    return examples.take(np.sort(np.concatenate(chosen)))


def save_examples(examples: Examples, path) -> None:
    """Plain arrays only (read back without pickle), for handing sets to worker processes."""
    lengths = np.array([len(r) for r in examples.ids], dtype=np.int64)
    flat = np.concatenate(examples.ids).astype(np.int64) if len(examples) else np.zeros(0, dtype=np.int64)
    replayed = (
        examples.meta["replayed"].to_numpy(dtype=bool) if "replayed" in examples.meta else np.zeros(len(examples), bool)
    )
    extra = {}
    if examples.targets is not None:  # ragged like ids, so the same lengths cut them
        extra["targets"] = np.concatenate(examples.targets).astype(np.int64) if len(examples) else flat
    np.savez(path, ids=flat, lengths=lengths, labels=examples.labels, replayed=replayed, **extra)


def read_examples(path) -> Examples:
    with np.load(path, allow_pickle=False) as data:
        offsets = np.concatenate([[0], np.cumsum(data["lengths"])])
        cut = lambda flat: [flat[offsets[i] : offsets[i + 1]] for i in range(len(data["lengths"]))]
        targets = cut(data["targets"]) if "targets" in data else None
        return Examples(cut(data["ids"]), data["labels"], pd.DataFrame({"replayed": data["replayed"]}), targets)
