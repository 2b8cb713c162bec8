"""Behaviour of a trained model (CheckList-style): minimum functionality, invariance, direction.

The model is the tiny encoder trained on the demo corpus, so these tests check that the
training task produces a model that behaves, not just one that scores.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.classifier import load_classifier
from tasks.config import TrainConfig
from tasks.dataset import Examples
from tasks.demo_data import RESTAURANT, make_domain_batch
from tasks.featurize import tokenize_texts
from tasks.inference import predict_proba
from tasks.train import train_classifier

LABELS = ["negative", "positive"]


def _examples(frame: pd.DataFrame, tokenizer) -> Examples:
    ids, offsets = tokenize_texts(frame["text"].tolist(), tokenizer, 64)
    rows = [ids[offsets[i]:offsets[i + 1]] for i in range(len(frame))]
    return Examples(rows, frame["label"].map({"negative": 0, "positive": 1}).to_numpy(), frame)


@pytest.fixture(scope="module")
def classify(tmp_path_factory):
    import torch

    target = tmp_path_factory.mktemp("model") / "m"
    _, tokenizer = load_classifier("tiny", LABELS)
    train = _examples(make_domain_batch(RESTAURANT, "restaurants", 500, seed=1), tokenizer)
    val = _examples(make_domain_batch(RESTAURANT, "restaurants", 100, seed=2), tokenizer)
    config = TrainConfig(epochs=8, batch_size=16, lr=3e-3, warmup_ratio=0.05, patience=3, seed=3)
    train_classifier("tiny", LABELS, train, val, config, target, log=lambda _: None)
    model, tokenizer = load_classifier(str(target), LABELS)

    def predict(texts: list[str]) -> np.ndarray:
        ids, offsets = tokenize_texts(texts, tokenizer, 64)
        rows = [ids[offsets[i]:offsets[i + 1]] for i in range(len(texts))]
        return predict_proba(model, rows, tokenizer.pad_token_id, 32, torch.device("cpu"))

    return predict


def test_minimum_functionality_on_unseen_reviews(classify):
    held_out = make_domain_batch(RESTAURANT, "restaurants", 200, seed=99)
    predicted = classify(held_out["text"].tolist()).argmax(axis=1)
    truth = held_out["label"].map({"negative": 0, "positive": 1}).to_numpy()
    assert (predicted == truth).mean() >= 0.9


def test_invariance_to_the_dish_named(classify):
    pairs = [("The pasta was delicious and the staff made our evening.", "The curry was delicious and the staff made our evening."),
             ("The soup tasted stale and the service was rude and slow.", "The salad tasted stale and the service was rude and slow.")]
    for a, b in pairs:
        pa, pb = classify([a, b])
        assert pa.argmax() == pb.argmax(), (a, b)


def test_direction_of_a_negative_clause(classify):
    positive = "The steak was cooked to perfection and the coffee was lovely."
    negative = "The steak was cooked to perfection and the coffee tasted stale."
    p_pos, p_neg = classify([positive, negative])
    assert p_neg[1] < p_pos[1]  # adding a complaint lowers P(positive)
