"""The replay and regression pool: bounded, stratified, and the same however it was built."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tasks import pool
from tasks.config import load_config
from tasks.workspace import Workspace


def _batch(i: int, rows: int, positive_share: float = 0.5) -> pd.DataFrame:
    labels = ["positive" if k < rows * positive_share else "negative" for k in range(rows)]
    splits = ["train" if k % 10 < 7 else ("validation" if k % 10 == 7 else "test") for k in range(rows)]
    return pd.DataFrame(
        {"text": [f"batch {i} text {k}" for k in range(rows)], "label": labels, "split": splits, "domain": f"d{i % 3}"}
    )


@pytest.fixture
def config(workspace):
    return load_config(
        workspace, {"data.pool.train_rows": 300, "data.pool.validation_rows": 40, "data.pool.test_rows": 90}
    )


def _rows(ws: Workspace) -> set[tuple[str, str]]:
    rows, _ = pool.read_pool(ws)
    return set(zip(rows["batch_id"], rows["text"], strict=True))


def test_pool_stays_within_its_bounds_in_proportion_to_each_batch_and_label(workspace, config):
    ws = Workspace.at(workspace)
    sizes = {f"b{i:02d}": 60 + 40 * (i % 4) for i in range(20)}
    for i, (batch_id, rows) in enumerate(sizes.items()):
        pool.add_batch(ws, batch_id, _batch(i, rows, positive_share=0.25 + 0.05 * (i % 5)), config)
    rows, strata = pool.read_pool(ws)
    counts = rows.groupby("split").size().to_dict()
    assert counts["train"] <= 300 + 40 and counts["test"] <= 90 + 40 and counts["validation"] <= 40 + 40
    # Every batch is in the train pool, its share following its size (a 180-row batch gets
    # about three times a 60-row batch's rows).
    per_batch = rows[rows["split"] == "train"].groupby("batch_id").size()
    assert set(per_batch.index) == set(sizes)
    assert per_batch["b03"] == pytest.approx(3 * per_batch["b00"], abs=2)
    assert set(strata["train"]) == set(sizes)


def test_built_one_batch_at_a_time_equals_built_at_once_in_any_order(tmp_path, config):
    from tests.conftest import make_workspace

    batches = {f"b{i:02d}": _batch(i, 50 + 10 * i) for i in range(8)}
    one = Workspace.at(make_workspace(tmp_path / "one"))
    for batch_id, frame in batches.items():
        pool.add_batch(one, batch_id, frame, config)
    other = Workspace.at(make_workspace(tmp_path / "other"))
    for batch_id in reversed(list(batches)):
        pool.add_batch(other, batch_id, batches[batch_id], config)
    assert _rows(one) == _rows(other)
    assert len(_rows(one)) < sum(len(f) for f in batches.values())  # it did sample


def test_a_withdrawn_batch_leaves_the_pool(workspace, config):
    ws = Workspace.at(workspace)
    for i in range(3):
        pool.add_batch(ws, f"b{i}", _batch(i, 80), config)
    pool.remove_batch(ws, "b1", config)
    rows, strata = pool.read_pool(ws)
    assert "b1" not in set(rows["batch_id"]) and all("b1" not in s for s in strata.values())


def test_replay_and_regression_read_the_pool_not_the_earlier_batches(workspace, config):
    """The earlier batches' files are deleted after pooling: the sets still come out."""
    from models.base import load_tokenizer
    from tasks.dataset import POOL, evaluation_sets, training_sets
    from tasks.featurize import featurize_batch, featurize_pool
    from tasks.ingest import write_batch

    ws = Workspace.at(workspace)
    for i in range(4):
        frame = _batch(i, 80)
        write_batch(ws, f"b{i}", frame, f"sha{i}", "test")
        pool.add_batch(ws, f"b{i}", frame, config)
    tokenizer = load_tokenizer("tiny")
    features = {"b3": featurize_batch(ws, "b3", tokenizer, 32).path, POOL: featurize_pool(ws, tokenizer, 32).path}
    for i in range(3):
        ws.batch_path(f"b{i}").unlink()
    train, validation, replayed = training_sets(ws, config.labels, ["b3"], ["b0", "b1", "b2"], features, 1.0, 1000, 0)
    assert replayed > 0 and set(train.meta.loc[train.meta["replayed"], "batch_id"]) == {"b0", "b1", "b2"}
    sets = evaluation_sets(ws, config.labels, ["b3"], ["b0", "b1"], features)
    assert set(sets["regression"].meta["batch_id"]) == {"b0", "b1"}  # b2 is pooled but not the champion's
    assert (sets["regression"].meta["split"] == "test").all() and len(sets["new"]) > 0
    assert np.all(sets["regression"].labels >= 0)


def test_a_long_lineage_fits_one_tag():
    """A champion's batch list is read in one call (no walk up the lineage chain), so it must fit
    MLflow's 100,000-character version tag however long the history."""
    from tasks.lineage import Lineage, split_ids

    for count in (1000, 6000):
        ids = [f"b2026{i // 3600:04d}T{i % 3600:06d}-{(i * 2654435761) % 2**32:08x}" for i in range(count)]
        tags = Lineage(batch_ids=ids, new_batches=ids[-1:]).to_tags()
        assert len(tags["kaizen.batch_ids"]) < 100_000
        assert Lineage.from_tags(tags).batch_ids == ids and split_ids(tags["kaizen.new_batches"]) == ids[-1:]
