"""The causal-LM family on a tiny random GPT-2: loss, perplexity, training, generation."""

import numpy as np
import pandas as pd
import pytest
import torch

from models.causal_lm import TINY_GPT, build_tiny
from tasks.batching import pad_batch
from tasks.config import TrainConfig
from tasks.families import family_of
from tasks.featurize import feature_rows
from tasks.train import train_classifier

LM = family_of("causal-lm")


def _documents(n: int, seed: int, words: list[str]):
    rng = np.random.default_rng(seed)
    texts = [f"the {rng.choice(words)} shipped with a {rng.choice(words)} case" for _ in range(n)]
    _, tokenizer = build_tiny()
    frame = pd.DataFrame({"text": texts})
    return LM.examples_from(frame, feature_rows(LM.featurize(frame, tokenizer, 32)))


def test_every_text_ends_with_the_end_of_text_token_and_fits_max_length():
    from models.base import load_tokenizer

    tokenizer = load_tokenizer("tiny")
    rows = feature_rows(LM.featurize(pd.DataFrame({"text": ["short", "word " * 100]}), tokenizer, 16))["ids"]
    assert all(r[-1] == tokenizer.sep_token_id for r in rows) and len(rows[1]) <= 16


def test_the_loss_is_the_mean_next_token_loss_and_ignores_padding():
    model, tokenizer = build_tiny(seed=1)
    docs = _documents(6, 0, ["phone", "laptop"])
    index = np.arange(6)
    ids, mask = pad_batch([docs.ids[i] for i in index], tokenizer.pad_token_id)  # as the training loop pads
    with torch.no_grad():
        logits = model.eval()(input_ids=ids, attention_mask=mask).logits
    loss = float(LM.loss(logits, LM.targets(docs, index)))
    # The same number from per-token losses of each document, summed and divided by tokens.
    per_token = LM.predict(model, docs.ids, tokenizer.pad_token_id, 4, torch.device("cpu"))
    total, count = sum(float(r.sum()) for r in per_token), sum(len(r) for r in per_token)
    assert loss == pytest.approx(total / count, rel=1e-4)
    metrics = LM.validation_metrics(model, docs, tokenizer.pad_token_id, 4, torch.device("cpu"))
    assert metrics["perplexity"] == pytest.approx(np.exp(total / count), rel=1e-4)


def test_the_tiny_gpt_adapts_to_its_domain_and_generates(tmp_path):
    words = ["phone", "laptop", "tablet", "charger"]
    config = TrainConfig(epochs=6, batch_size=16, lr=3e-3, warmup_ratio=0.05, patience=3, seed=5)
    before, tokenizer = build_tiny(seed=5)
    test = _documents(40, 2, words)
    start = LM.validation_metrics(before, test, tokenizer.pad_token_id, 16, torch.device("cpu"))["perplexity"]
    result = train_classifier(
        TINY_GPT, [], _documents(200, 0, words), _documents(40, 1, words), config, tmp_path / "m",
        log=lambda _: None, task="causal-lm",
    )  # fmt: skip
    assert result.validation_metric == "perplexity" and (tmp_path / "m" / "model.safetensors").exists()
    model, tokenizer = LM.load_saved(tmp_path / "m")
    scored = LM.evaluate_set(
        "new",
        test,
        LM.predict(model, test.ids, tokenizer.pad_token_id, 16, torch.device("cpu")),
        LM.predict(before, test.ids, tokenizer.pad_token_id, 16, torch.device("cpu")),
        [],
        200,
        0,
    )
    # From a random model's ~vocabulary-sized perplexity to a few choices per token.
    assert start > 1000 and scored.challenger["perplexity"] < 20
    assert scored.delta["perplexity"] < 0 and scored.ci_high["perplexity"] < 0
    assert all(g > 0 for g in scored.paired["log_likelihood_gain"])
    greedy = LM.generate(model, tokenizer, ["the"], max_new_tokens=4)
    vocabulary = {*words, "the", "shipped", "with", "a", "case"}
    assert greedy == LM.generate(model, tokenizer, ["the"], max_new_tokens=4)
    assert greedy[0] and set(greedy[0].split()) <= vocabulary  # it speaks the domain's words only
    sampled = [LM.generate(model, tokenizer, ["the"], 6, temperature=1.5, seed=s)[0] for s in (1, 1, 2)]
    assert sampled[0] == sampled[1]  # seeded


def test_the_gate_margin_of_a_language_model_is_a_perplexity_ratio():
    import math

    from tasks.config import GateConfig
    from tasks.evaluate import Evaluation
    from tasks.gate import decide

    family = family_of("causal-lm")
    rng = np.random.default_rng(1)
    docs = [np.arange(rng.integers(5, 30)) for _ in range(80)]
    examples = family.examples_from(pd.DataFrame({"text": ["x"] * 80}), {"ids": docs})
    champion = np.array([rng.uniform(1.0, 2.0, len(d) - 1) for d in docs], dtype=object)
    # The challenger's loss is 3% higher on every token: perplexity ratio e^0.03 > 1.02.
    worse = np.array([row + 0.03 for row in champion], dtype=object)
    regression = family.evaluate_set("regression", examples, worse, champion, [], 200, 0)
    assert regression.delta["log_likelihood"] == pytest.approx(-0.03)
    assert np.mean(regression.paired["log_likelihood_gain"]) == pytest.approx(-0.03, abs=1e-6)
    better = np.array([row - 0.5 for row in champion], dtype=object)
    new = family.evaluate_set("new", examples, better, champion, [], 200, 0)
    decision = decide(Evaluation([new, regression], task="causal-lm"), GateConfig(), True)
    rule = next(r for r in decision.rules if r.name.startswith("regression log_likelihood gain"))
    assert rule.threshold == pytest.approx(-math.log(1.02)) and rule.outcome == "fail"
    assert decision.verdict == "reject"
