"""Dynamic padding and length-grouped batches.

transformers' DataCollatorWithPadding pads python lists through the tokenizer, which costs
more than the model on short texts on a CPU; our features are already ragged int arrays, so
padding them is one numpy copy.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch


def pad_batch(rows: Sequence[np.ndarray], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad to the longest row of this batch only."""
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return torch.from_numpy(ids), torch.from_numpy(mask)


def pad_targets(rows: Sequence[np.ndarray], ignore: int) -> torch.Tensor:
    """Per-token targets padded with `ignore` to the longest row, as `pad_batch` pads the ids."""
    out = np.full((len(rows), max(len(r) for r in rows)), ignore, dtype=np.int64)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return torch.from_numpy(out)


def length_grouped_batches(
    lengths: Sequence[int], batch_size: int, rng: np.random.Generator, group_factor: int = 50
) -> list[np.ndarray]:
    """Shuffle, sort by length inside mega-batches, then shuffle the batch order.

    Rows of similar length share a batch (little padding) while each epoch still sees a
    different mix; the same idea as transformers' LengthGroupedSampler.
    """
    order = rng.permutation(len(lengths))
    lengths = np.asarray(lengths)
    mega = batch_size * group_factor
    batches = []
    for start in range(0, len(order), mega):
        chunk = order[start : start + mega]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def sorted_batches(lengths: Sequence[int], batch_size: int) -> Iterator[np.ndarray]:
    """Inference order: longest first, so memory peaks early and padding is minimal."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]
