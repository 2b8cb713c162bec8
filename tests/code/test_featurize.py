import pandas as pd

from models.base import load_tokenizer
from tasks.config import load_config
from tasks.featurize import featurize_batch, load_features
from tasks.ingest import content_hash, prepare_batch, write_batch
from tasks.workspace import Workspace


def _add_batch(ws, config, batch_id, texts):
    frame = pd.DataFrame({"text": texts, "label": ["positive"] * len(texts)})
    batch = prepare_batch(frame, config, "test")
    write_batch(ws, batch_id, batch, content_hash(batch), "test")


def test_a_batch_is_tokenized_once(workspace):
    ws = Workspace.at(workspace)
    config = load_config(ws.root)
    tokenizer = load_tokenizer("tiny")
    _add_batch(ws, config, "b1", ["one two three", "four"])
    first = featurize_batch(ws, "b1", tokenizer, 64)
    assert not first.cached
    mtime = os_mtime(first.path)
    second = featurize_batch(ws, "b1", tokenizer, 64)
    assert second.cached and second.path == first.path and os_mtime(second.path) == mtime
    # Another max_length is another cache entry.
    assert not featurize_batch(ws, "b1", tokenizer, 8).cached
    rows = load_features(first.path)
    assert len(rows) == 2 and len(rows[0]) == 5  # [CLS] one two three [SEP]


def os_mtime(path):
    import os

    return os.stat(path).st_mtime_ns
