"""A loss that becomes NaN or inf stops training with one clear message, before it reaches the
weights; in the flow the cycle fails, nothing is registered or promoted, and the batches stay
pending for the next cycle. All with the tiny encoder on CPU, and a real divergence (lr 1e6)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from models.base import load_tokenizer
from tasks.config import TrainConfig
from tasks.dataset import Examples
from tasks.featurize import tokenize_texts

LABELS = ["negative", "positive"]
CONFIG = TrainConfig(epochs=2, batch_size=8, lr=3e-3, warmup_ratio=0.05, patience=5, seed=5)
# train: loss became nan at step 3 (epoch 1, micro-batch 3); stopping — ...
DIVERGED = (
    r"^train: loss became (nan|inf|-inf) at step \d+ \(epoch \d+, micro-batch \d+\); stopping — nothing is "
    r"registered or promoted; the batches stay pending: the next cycle trains on them again$"
)


def _examples(n: int, seed: int) -> Examples:
    rng = np.random.default_rng(seed)
    words = {1: ["great", "lovely", "superb"], 0: ["awful", "broken", "stale"]}
    labels = rng.integers(0, 2, n)
    texts = [f"item {i} was {rng.choice(words[int(y)])}" for i, y in enumerate(labels)]
    ids, offsets = tokenize_texts(texts, load_tokenizer("tiny"), 32)
    return Examples(
        [ids[offsets[i] : offsets[i + 1]] for i in range(n)], labels.astype(np.int64), pd.DataFrame(index=range(n))
    )


def test_an_absurd_learning_rate_stops_training_with_a_clear_message(tmp_path):
    from tasks.train import TrainingDiverged, train_classifier

    config = CONFIG.model_copy(update={"lr": 1e6})
    with pytest.raises(TrainingDiverged, match=DIVERGED):
        train_classifier("tiny", LABELS, _examples(96, 1), _examples(24, 2), config, tmp_path / "out", log=print)
    assert not (tmp_path / "out").exists(), "a diverged run saved a model"


def test_a_non_finite_loss_is_caught_before_backward(tmp_path, monkeypatch):
    """The third micro-batch's loss is forced to NaN (through the graph, as a poisoned batch would):
    training stops there, naming it, with neither gradients nor weights touched by the NaN."""
    from tasks import train as train_mod

    seen: dict = {}
    real_loss = train_mod._loss

    def poisoned(run, logits, target, index):
        seen["calls"] = seen.get("calls", 0) + 1
        seen["model"] = run.model
        loss = real_loss(run, logits, target, index)
        return loss * float("nan") if seen["calls"] == 3 else loss

    monkeypatch.setattr(train_mod, "_loss", poisoned)
    with pytest.raises(train_mod.TrainingDiverged, match=DIVERGED) as stopped:
        train_mod.train_classifier("tiny", LABELS, _examples(96, 1), _examples(24, 2), CONFIG, tmp_path / "out")
    assert "loss became nan at step 3 (epoch 1, micro-batch 3)" in str(stopped.value)
    for name, param in seen["model"].named_parameters():
        assert torch.isfinite(param).all(), f"{name} has non-finite weights"
        assert param.grad is None or torch.isfinite(param.grad).all(), f"{name} has non-finite gradients"


@pytest.mark.slow
def test_divergence_in_two_processes_is_reported_as_such(tmp_path):
    """Under torchrun the launcher raises TrainingDiverged with the worker's message, not "exit 1"."""
    from tasks.train import TrainingDiverged, launch_distributed

    config = CONFIG.model_copy(update={"lr": 1e6, "num_processes": 2})
    with pytest.raises(TrainingDiverged, match=DIVERGED):
        launch_distributed(
            "tiny", LABELS, _examples(96, 1), _examples(24, 2), config, tmp_path / "out", tmp_path / "dist", None
        )


@pytest.mark.slow
def test_a_diverging_cycle_fails_registers_nothing_and_leaves_the_batch_pending(
    prefect_harness, demo_files, tmp_path, capsys
):
    from flows.cli import main
    from flows.pipeline import continual_training
    from tasks.context import Context
    from tasks.registry import list_versions
    from tasks.train import TrainingDiverged
    from tests.conftest import make_workspace

    root = make_workspace(tmp_path / "ws")
    first, second = list(demo_files)[:2]
    bootstrap = continual_training(files=[str(demo_files[first])], batch_ids=[first], workspace=str(root))
    assert bootstrap["status"] == "promoted", bootstrap["reasons"]

    with pytest.raises(TrainingDiverged, match=DIVERGED):
        continual_training(
            files=[str(demo_files[second])], batch_ids=[second], workspace=str(root), overrides={"train.lr": 1e6}
        )

    ctx = Context.open(root)
    assert [v.version for v in list_versions(ctx.client, ctx.model_name)] == ["1"], "a diverged cycle registered"
    last = json.loads(ctx.ws.last_run.read_text())
    assert last["status"] == "failed" and last["batch_ids"] == [second]
    assert len(last["reasons"]) == 1 and "loss became" in last["reasons"][0]
    assert "the batches stay pending" in last["reasons"][0]
    capsys.readouterr()
    assert main(["status", "--json", "--workspace", str(root)]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["champion"]["version"] == "1", status
    assert status["last_run"]["status"] == "failed", status

    again = continual_training(workspace=str(root))
    assert again["batch_ids"] == [second], again
    assert again["status"] != "failed", again["reasons"]
    assert again["version"] == "2"
