"""The training task on the tiny encoder: learns, stops early, saves safetensors, is seeded."""

import numpy as np
import pandas as pd
from safetensors.torch import load_file

from models.base import load_tokenizer
from tasks.config import TrainConfig
from tasks.dataset import Examples
from tasks.featurize import tokenize_texts
from tasks.train import train_classifier


def _examples(n, seed):
    rng = np.random.default_rng(seed)
    words_pos, words_neg = ["great", "lovely", "superb"], ["awful", "broken", "stale"]
    texts, labels = [], []
    for i in range(n):
        label = int(rng.integers(0, 2))
        word = rng.choice(words_pos if label else words_neg)
        texts.append(f"the item number {i} was {word}")
        labels.append(label)
    ids, offsets = tokenize_texts(texts, load_tokenizer("tiny"), 32)
    rows = [ids[offsets[i] : offsets[i + 1]] for i in range(n)]
    return Examples(rows, np.array(labels), pd.DataFrame({"text": texts}))


CONFIG = TrainConfig(epochs=6, batch_size=16, lr=3e-3, warmup_ratio=0.05, patience=2, seed=5)


def test_training_learns_and_saves_safetensors(tmp_path):
    result = train_classifier(
        "tiny",
        ["negative", "positive"],
        _examples(240, 0),
        _examples(60, 1),
        CONFIG,
        tmp_path / "m",
        log=lambda _: None,
    )
    assert result.best_validation > 0.9
    assert (tmp_path / "m" / "model.safetensors").exists()
    assert not list((tmp_path / "m").glob("*.bin")) and not list((tmp_path / "m").glob("*.pt"))
    assert result.device == "cpu" and result.steps > 0


def test_training_is_seeded(tmp_path):
    a = train_classifier(
        "tiny",
        ["negative", "positive"],
        _examples(64, 0),
        _examples(16, 1),
        CONFIG.model_copy(update={"epochs": 1}),
        tmp_path / "a",
        log=lambda _: None,
    )
    b = train_classifier(
        "tiny",
        ["negative", "positive"],
        _examples(64, 0),
        _examples(16, 1),
        CONFIG.model_copy(update={"epochs": 1}),
        tmp_path / "b",
        log=lambda _: None,
    )
    wa, wb = load_file(f"{a.model_dir}/model.safetensors"), load_file(f"{b.model_dir}/model.safetensors")
    assert all((wa[k] == wb[k]).all() for k in wa)


def test_early_stopping_stops_before_the_last_epoch(tmp_path):
    # Validation labels are the opposite rule, so validation never improves after the first look.
    val = _examples(40, 2)
    val.labels = 1 - val.labels
    result = train_classifier(
        "tiny",
        ["negative", "positive"],
        _examples(160, 0),
        val,
        CONFIG.model_copy(update={"epochs": 10, "patience": 1}),
        tmp_path / "m",
        log=lambda _: None,
    )
    assert result.stopped_early and result.epochs_run < 10
