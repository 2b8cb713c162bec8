"""Sequence classification: one label per text, an encoder with a classification head.

Metrics are accuracy (the primary one), macro-F1, per-class scores, calibration and two proper
scoring rules (tasks/evaluate.py); the gate reads the paired evidence they leave per row.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from models.classifier import load_classifier, load_saved_classifier
from tasks.dataset import Examples
from tasks.evaluate import SetEvaluation, evaluate_predictions
from tasks.families import text_column
from tasks.featurize import tokenize_texts
from tasks.inference import accuracy_and_loss, predict_logits, predict_proba, predict_texts, predictions_frame

NAME = "classification"
PRIMARY_METRIC = "accuracy"
HIGHER_IS_BETTER = True
DISTILLS = True  # one row of logits per example: the champion's are a teacher for replayed rows
INPUT_COLUMNS = ("text",)
LORA_TASK_TYPE = "SEQ_CLS"  # the name of peft's TaskType
COLUMNS = ("text", "label")
USES_LABELS = True
GATE_METRIC = "accuracy"
PAIRED_GAIN = "correct_diff"  # challenger correct - champion correct, per row (-1, 0, 1)
HELPERS = ("_labels_per_text", "_label_share")
PREDICT_PARAMS: dict = {}


# --- data ------------------------------------------------------------------------------------


def prepare(frame: pd.DataFrame) -> pd.DataFrame:
    """`text` and `label` as given: the class is the row's stratum."""
    return pd.DataFrame({"text": text_column(frame, "text"), "label": text_column(frame, "label")})


def helper_columns(batch: pd.DataFrame, config) -> dict[str, pd.Series]:
    """How many labels each (normalised) text carries in the batch, and each row's class share:
    row-group properties GX has no expectation for."""
    from tasks.ingest import normalise_text

    norm = batch["text"].map(lambda t: (normalise_text(t) or None) if isinstance(t, str) else None)
    per_text = pd.DataFrame({"norm": norm, "label": batch["label"]}).groupby("norm", dropna=True)["label"]
    shares = batch["label"].map(batch["label"].value_counts(normalize=True))
    return {
        "_labels_per_text": per_text.transform("nunique").fillna(1).astype(int),
        "_label_share": shares.astype(float).fillna(1.0),
    }


def expectations(config) -> list[tuple[str, object]]:
    import great_expectations as gx

    e, v = gx.expectations, config.validation
    named = [
        ("label column present", e.ExpectColumnToExist(column="label")),
        ("label not null", e.ExpectColumnValuesToNotBeNull(column="label")),
        ("no text with two labels", e.ExpectColumnValuesToBeBetween(column="_labels_per_text", max_value=1)),
        (
            f"every class at least {v.min_class_share:.0%} of rows",
            e.ExpectColumnMinToBeBetween(column="_label_share", min_value=v.min_class_share),
        ),
    ]
    if not v.allow_label_growth:
        named.append(
            (
                "label in declared label set",
                e.ExpectColumnValuesToBeInSet(column="label", value_set=list(config.labels)),
            )
        )
    return named


def examples_from(frame: pd.DataFrame, features: dict[str, list], labels: list[str]) -> Examples:
    index = {name: i for i, name in enumerate(labels)}
    unknown = sorted(set(frame["label"].astype(str)) - set(index))
    if unknown:
        raise ValueError(f"labels {unknown} are outside the configured set {labels}")
    meta = frame.drop(columns=["label"]).assign(label=frame["label"]).reset_index(drop=True)
    return Examples(list(features["ids"]), frame["label"].astype(str).map(index).to_numpy(dtype=np.int64), meta)


# --- the gate --------------------------------------------------------------------------------


def floors(gate, bootstrap: bool) -> list[tuple[str, float, str, str]]:
    if bootstrap:
        b = gate.bootstrap
        return [("accuracy", b.min_accuracy_new, ">=", "floor"), ("ece", b.max_ece, "<=", "calibration")]
    return [
        ("accuracy", gate.min_accuracy_new, ">=", "floor"),
        ("macro_f1", gate.min_macro_f1_new, ">=", "floor"),
        ("ece", gate.max_ece, "<=", "calibration"),
    ]


def thresholds(gate) -> tuple[float, float]:
    return gate.min_improvement_new, gate.noninferiority_margin


def label_set(frame) -> list[str] | None:
    return sorted(frame["label"].dropna().astype(str).unique())


def example_output(labels: list[str], rows: int) -> pd.DataFrame:
    return pd.DataFrame(
        {"label": [labels[0]] * rows, "score": [0.5] * rows, **{f"p_{label}": [0.5] * rows for label in labels}}
    )


# --- model -------------------------------------------------------------------------------------


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


def predict_frame(model, tokenizer, texts: list[str], max_length: int, **params):
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
