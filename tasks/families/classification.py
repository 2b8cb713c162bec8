"""Sequence classification: one label per text, an encoder with a classification head.

Metrics are accuracy (the primary one), macro-F1, per-class scores, calibration and two proper
scoring rules (tasks/evaluate.py); the gate reads the paired evidence they leave per row.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from models.classifier import load_classifier, load_saved_classifier
from tasks.dataset import Examples
from tasks.evaluate import SetEvaluation, evaluate_predictions
from tasks.featurize import tokenize_texts
from tasks.inference import accuracy_and_loss, predict_logits, predict_proba, predict_texts, predictions_frame

NAME = "classification"
PRIMARY_METRIC = "accuracy"
HIGHER_IS_BETTER = True
DISTILLS = True  # one row of logits per example: the champion's are a teacher for replayed rows
INPUT_COLUMNS = ("text",)
LORA_TASK_TYPE = "SEQ_CLS"  # the name of peft's TaskType


def load(source: str, labels: list[str], seed: int = 0):
    return load_classifier(source, labels, seed=seed)


def load_saved(path: Path | str):
    return load_saved_classifier(path)


def featurize(frame, tokenizer, max_length: int) -> dict[str, np.ndarray]:
    ids, offsets = tokenize_texts(frame["text"].tolist(), tokenizer, max_length)
    return {"ids": ids, "offsets": offsets}


def targets(examples: Examples, index: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(examples.labels[index])


def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(logits, targets.to(logits.device))


def logits(model, ids: list[np.ndarray], pad_id: int, batch_size: int, device) -> np.ndarray:
    return predict_logits(model, ids, pad_id, batch_size, device)


def predict(model, ids: list[np.ndarray], pad_id: int, batch_size: int, device) -> np.ndarray:
    return predict_proba(model, ids, pad_id, batch_size, device)


def predict_frame(model, tokenizer, texts: list[str], max_length: int):
    """label, score and one p_<label> column per class, for raw texts."""
    return predictions_frame(predict_texts(model, tokenizer, texts, max_length), model)


def validation_metrics(model, examples: Examples, pad_id: int, batch_size: int, device) -> dict[str, float]:
    accuracy, mean_loss = accuracy_and_loss(model, examples, pad_id, batch_size, device)
    return {PRIMARY_METRIC: accuracy, "loss": mean_loss}


def evaluate_set(
    name: str,
    examples: Examples,
    challenger: np.ndarray,
    champion: np.ndarray | None,
    labels: list[str],
    resamples: int,
    seed: int,
    kind: str = "set",
) -> SetEvaluation:
    return evaluate_predictions(name, examples, challenger, champion, labels, resamples, seed, kind)
