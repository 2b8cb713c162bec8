"""The token-classification family: entity reading, metrics, sub-word alignment, training."""

import numpy as np
import pandas as pd
import pytest
import torch

from models.base import load_tokenizer
from tasks.config import TrainConfig
from tasks.families import family_of
from tasks.families.token_classification import (
    IGNORE,
    entities,
    entity_counts,
    examples_from,
    f1_from,
    featurize,
)
from tasks.featurize import feature_rows
from tasks.train import train_classifier

TAGS = ["O", "B-person", "I-person", "B-location", "I-location"]


@pytest.mark.parametrize(
    "tags, expected",
    [
        (["B-person", "I-person", "O", "B-location"], {(0, 2, "person"), (3, 4, "location")}),
        (["O", "I-person", "I-person"], {(1, 3, "person")}),  # an I- after O starts an entity
        (["B-person", "I-location"], {(0, 1, "person"), (1, 2, "location")}),  # a type change ends one
        (["B-person", "B-person"], {(0, 1, "person"), (1, 2, "person")}),
        (["O", "O"], set()),
    ],
)
def test_entities_are_read_as_conlleval_reads_them(tags, expected):
    assert entities(tags) == expected


def test_entity_f1_counts_exact_span_and_type_only():
    gold = [["B-person", "I-person", "O", "B-location"], ["O", "B-location", "I-location"]]
    pred = [["B-person", "O", "O", "B-location"], ["O", "B-location", "I-location"]]
    counts = entity_counts(gold, pred, ["location", "person"])
    # 3 gold entities; predicted: person (wrong span), location, location: 2 correct of 3.
    precision, recall, f1 = f1_from(counts[:, -1].sum(axis=0))
    assert (precision, recall, f1) == pytest.approx((2 / 3, 2 / 3, 2 / 3))
    per_type = f1_from(counts[:, :-1].sum(axis=0))[2]
    assert per_type.tolist() == pytest.approx([1.0, 0.0])  # location, person


def test_the_first_sub_token_of_a_word_carries_its_tag():
    tokenizer = load_tokenizer("tiny")
    frame = pd.DataFrame({"tokens": ["met Zyxwvutsrq at Reykjavik"], "tags": ["O B-person O B-location"]})
    features = featurize(frame, tokenizer, 64)
    rows = feature_rows(features)
    examples = examples_from(frame, rows, TAGS)
    target, ids = examples.targets[0], examples.ids[0]
    pieces = tokenizer.convert_ids_to_tokens(ids.tolist())
    assert len(pieces) > 6  # the odd words are split into several sub-tokens
    tagged = [(piece, TAGS[t]) for piece, t in zip(pieces, target, strict=True) if t != IGNORE]
    assert [t for _, t in tagged] == ["O", "B-person", "O", "B-location"]
    assert all(not piece.startswith("##") for piece, _ in tagged)
    assert examples.labels.tolist() == [1]


def test_unknown_tags_are_named():
    frame = pd.DataFrame({"tokens": ["hello there"], "tags": ["O B-animal"]})
    features = featurize(frame, load_tokenizer("tiny"), 64)
    with pytest.raises(ValueError, match=r"B-animal"):
        examples_from(frame, feature_rows(features), TAGS)


def _sentences(n: int, seed: int):
    rng = np.random.default_rng(seed)
    people, places = ["alice", "bob", "carol", "dave"], ["paris", "oslo", "lima", "new york"]
    tokens, tags = [], []
    for _ in range(n):
        who, where = rng.choice(people), rng.choice(places)
        place_tags = ["B-location"] + ["I-location"] * (len(where.split()) - 1)
        if rng.random() < 0.5:
            words, row = ["yesterday", who, "flew", "to", *where.split()], ["O", "B-person", "O", "O", *place_tags]
        else:
            words, row = ["the", "weather", "in", *where.split(), "was", "fine"], ["O", "O", "O", *place_tags, "O", "O"]
        tokens.append(" ".join(words))
        tags.append(" ".join(row))
    frame = pd.DataFrame({"tokens": tokens, "tags": tags})
    return examples_from(frame, feature_rows(featurize(frame, load_tokenizer("tiny"), 32)), TAGS)


def test_the_tiny_token_classifier_learns_entities_and_tags_raw_text(tmp_path):
    family = family_of("token-classification")
    config = TrainConfig(epochs=8, batch_size=16, lr=3e-3, warmup_ratio=0.05, patience=3, seed=5)
    result = train_classifier(
        "tiny", TAGS, _sentences(240, 0), _sentences(60, 1), config, tmp_path / "m", log=lambda _: None,
        task="token-classification",
    )  # fmt: skip
    assert result.validation_metric == "entity_f1" and result.best_validation > 0.9
    assert (tmp_path / "m" / "model.safetensors").exists()

    model, tokenizer = family.load_saved(tmp_path / "m")
    test = _sentences(50, 2)
    proba = family.predict(model, test.ids, tokenizer.pad_token_id, 16, torch.device("cpu"))
    evaluation = family.evaluate_set("new", test, proba, None, TAGS, 0, 0)
    assert evaluation.challenger["entity_f1"] > 0.9 and set(evaluation.per_class["challenger"]) == {
        "location",
        "person",
    }

    frame = family.predict_frame(model, tokenizer, ["yesterday carol flew to new york"], 32)
    assert frame["tags"].tolist() == ["O B-person O O B-location I-location"]


def test_the_bootstrap_interval_of_an_f1_difference_holds_the_difference():
    family = family_of("token-classification")
    test = _sentences(80, 3)
    truth = [np.eye(len(TAGS))[np.where(t == IGNORE, 0, t)] for t in test.targets]  # a perfect model
    blind = [np.eye(len(TAGS))[np.zeros(len(t), dtype=int)] for t in test.targets]  # tags everything O
    perfect, none = np.empty(len(truth), dtype=object), np.empty(len(blind), dtype=object)
    perfect[:], none[:] = truth, blind
    evaluation = family.evaluate_set("new", test, perfect, none, TAGS, 200, 0)
    assert evaluation.challenger["entity_f1"] == 1.0 and evaluation.champion["entity_f1"] == 0.0
    half = np.empty(len(truth), dtype=object)
    half[:] = [truth[i] if i % 2 else blind[i] for i in range(len(truth))]
    evaluation = family.evaluate_set("new", test, perfect, half, TAGS, 200, 0)
    delta = evaluation.delta["entity_f1"]
    assert delta > 0 and evaluation.ci_low["entity_f1"] <= delta <= evaluation.ci_high["entity_f1"]


def test_words_cut_off_by_max_length_count_as_missed_entities():
    family = family_of("token-classification")
    frame = pd.DataFrame({"tokens": ["a b c d e f g h i j paris"], "tags": [" ".join(["O"] * 10 + ["B-location"])]})
    features = featurize(frame, load_tokenizer("tiny"), 8)
    examples = examples_from(frame, feature_rows(features), TAGS)
    target = examples.targets[0]
    assert (target != IGNORE).sum() < 11  # paris is past the cut
    perfect = np.empty(1, dtype=object)
    perfect[0] = np.eye(len(TAGS))[np.where(target == IGNORE, 0, target)]
    scores = family.evaluate_set("new", examples, perfect, None, TAGS, 0, 0).challenger
    assert scores["entity_recall"] == 0.0 and scores["token_accuracy"] == pytest.approx(10 / 11)


def test_linearised_f1_terms_average_to_the_f1_delta_and_the_gate_reads_entity_f1():
    from tasks.config import GateConfig
    from tasks.evaluate import Evaluation, SetEvaluation
    from tasks.families.token_classification import f1_from, linearised_f1
    from tasks.gate import decide

    rng = np.random.default_rng(0)
    gold = rng.integers(0, 3, size=200)
    a = np.stack([np.minimum(gold, rng.integers(0, 3, 200)), rng.integers(0, 3, 200), gold], axis=1)
    b = np.stack([np.minimum(gold, rng.integers(0, 2, 200)), rng.integers(0, 3, 200), gold], axis=1)
    gain = linearised_f1(a) - linearised_f1(b)
    delta = f1_from(a.sum(axis=0))[2] - f1_from(b.sum(axis=0))[2]
    assert gain.mean() == pytest.approx(delta, abs=1e-12)

    def sets(name, shift):
        metrics = {"entity_f1": 0.6}
        return SetEvaluation(
            name, "set", 200, metrics, {"entity_f1": 0.6 - shift}, paired={"f1_gain": list(gain + shift)}
        )

    evaluation = Evaluation([sets("new", 0.2), sets("regression", 0.0)], task="token-classification")
    decision = decide(evaluation, GateConfig(), True)
    names = [r.name for r in decision.rules]
    assert "new entity_f1" in names and "new entity_f1 gain CI low (improvement)" in names
    assert not any("accuracy" in n or "ece" in n for n in names)
