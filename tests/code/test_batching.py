import numpy as np

from tasks.batching import length_grouped_batches, pad_batch, sorted_batches
from tasks.featurize import load_features, tokenize_texts


def test_pad_batch_pads_to_longest_row_only():
    ids, mask = pad_batch([np.array([5, 6, 7]), np.array([8])], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]


def test_length_grouped_batches_cover_every_row_once_and_group_lengths():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 120, 1000)
    batches = length_grouped_batches(lengths, 16, np.random.default_rng(1))
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(1000))
    waste_grouped = sum(len(b) * lengths[b].max() - lengths[b].sum() for b in batches)
    random_batches = np.array_split(rng.permutation(1000), len(batches))
    waste_random = sum(len(b) * lengths[b].max() - lengths[b].sum() for b in random_batches)
    assert waste_grouped < waste_random / 3


def test_sorted_batches_cover_all_rows():
    order = np.concatenate(list(sorted_batches([3, 1, 2, 5], 3)))
    assert sorted(order.tolist()) == [0, 1, 2, 3] and order[0] == 3


def test_ragged_features_round_trip(tmp_path):
    from models.base import load_tokenizer

    tokenizer = load_tokenizer("tiny")
    ids, offsets = tokenize_texts(["a short one", "a somewhat longer sentence here"], tokenizer, 64)
    path = tmp_path / "f.npz"
    np.savez(path, ids=ids, offsets=offsets)
    rows = load_features(path)
    assert [len(r) for r in rows] == [offsets[1] - offsets[0], offsets[2] - offsets[1]]
    assert rows[0][0] == tokenizer.cls_token_id and rows[0][-1] == tokenizer.sep_token_id
