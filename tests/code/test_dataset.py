"""The regression set: test splits of every earlier batch, bounded by a stratified sample."""

import numpy as np
import pandas as pd

from tasks.dataset import Examples, sample_by_batch_and_label


def _examples(sizes: dict[tuple[str, int], int]) -> Examples:
    batches, labels = [], []
    for (batch, label), n in sizes.items():
        batches += [batch] * n
        labels += [label] * n
    ids = [np.array([i], dtype=np.int64) for i in range(len(labels))]
    return Examples(ids, np.array(labels, dtype=np.int64), pd.DataFrame({"batch_id": batches}))


def test_sample_keeps_every_batch_and_label_in_proportion():
    examples = _examples({("a", 0): 600, ("a", 1): 200, ("b", 0): 100, ("b", 1): 100, ("c", 1): 4})
    sample = sample_by_batch_and_label(examples, 250, seed=1)
    counts = pd.Series(list(zip(sample.meta["batch_id"], sample.labels, strict=True))).value_counts().to_dict()
    assert counts == {("a", 0): 149, ("a", 1): 50, ("b", 0): 25, ("b", 1): 25, ("c", 1): 1}
    again = sample_by_batch_and_label(examples, 250, seed=1)
    assert [int(r[0]) for r in again.ids] == [int(r[0]) for r in sample.ids]  # seeded


def test_small_history_is_taken_whole():
    examples = _examples({("a", 0): 10, ("b", 1): 10})
    assert len(sample_by_batch_and_label(examples, 100, seed=0)) == 20
