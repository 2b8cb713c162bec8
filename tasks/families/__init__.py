"""Model families: what differs between tasks, behind one small protocol.

A family is one module (tasks/families/<name>.py) that provides everything below. The cycle,
gate, registry, lineage, ledger, backtest, report and service get the module from
`family_of(config.task)` and never import a family module themselves
(tests/code/test_layering.py holds them to it).

Families: `classification` (one label per text), `token-classification` (one BIO tag per
word) and `causal-lm` (a decoder adapted to a domain's texts).

What every family's batch holds besides its own columns: `text` (the row as one string: what the
split hash, duplicate and leakage checks, lineage and drift's length read) and `label` (the row's
stratum: what replay, the pool and the regression set sample in proportion to, and what drift's
label distribution reads). A classifier's `label` is its class; the other families derive it.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import pandas as pd

if TYPE_CHECKING:
    import numpy as np
    import torch

    from tasks.config import GateConfig, KaizenConfig
    from tasks.dataset import Examples
    from tasks.evaluate import SetEvaluation

DEFAULT_TASK = "classification"
# task name -> module; a new family is one entry here and one module.
MODULES = {
    "classification": "tasks.families.classification",
    "token-classification": "tasks.families.token_classification",
    "causal-lm": "tasks.families.causal_lm",
}
# The families a `kaizen.yaml` may name: those the whole cycle (ingest to serving) takes.
IN_THE_CYCLE = tuple(MODULES)


class Family(Protocol):
    NAME: str
    PRIMARY_METRIC: str  # what model selection during training and the gate's floors read
    HIGHER_IS_BETTER: bool
    DISTILLS: bool  # whether the champion's outputs can teach replayed rows (train.distill_weight)
    INPUT_COLUMNS: tuple[str, ...]  # the batch columns `featurize` reads
    LORA_TASK_TYPE: str  # the name of peft's TaskType for this family's models
    COLUMNS: tuple[str, ...]  # the columns a submitted file must have
    USES_LABELS: bool  # whether config.labels is this family's label (or tag) set
    # The gate's comparisons read this higher-is-better metric: its challenger-minus-champion
    # delta and interval on each set, and its per-example paired gain, `paired[PAIRED_GAIN]`.
    GATE_METRIC: str
    PAIRED_GAIN: str
    HELPERS: tuple[str, ...]  # the family's validation helper columns (never stored)
    PREDICT_PARAMS: dict  # parameters `predict_frame` takes, with their defaults

    def prepare(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The family's columns as strings (None for a null), plus `text` and `label`; total:
        a malformed row is kept for validation to name, never refused here."""

    def helper_columns(self, batch: pd.DataFrame, config: KaizenConfig) -> dict[str, pd.Series]:
        """Per-row helper columns (tasks/validate.py) for this family's expectations: a string
        saying what is wrong with the row, None where nothing is."""

    def expectations(self, config: KaizenConfig) -> list[tuple[str, object]]:
        """(name, Great Expectations expectation) pairs of the family's own rules."""

    def examples_from(self, frame: pd.DataFrame, features: dict[str, list], labels: list[str]) -> Examples:
        """Rows of a batch (or the pool) with their cached features, ready for a model."""

    def floors(self, gate: GateConfig, bootstrap: bool) -> list[tuple[str, float, str, str]]:
        """(metric, threshold, op, kind) absolute rules on the challenger's `new` metrics; kind
        `floor` or `calibration`. `bootstrap`: the rules of a first model (no champion)."""

    def thresholds(self, gate: GateConfig) -> tuple[float, float]:
        """(least improvement on `new`, non-inferiority margin), in GATE_METRIC units."""

    def label_set(self, frame: pd.DataFrame) -> list[str] | None:
        """The `labels` a prepared frame implies (classes, or tags with `O` first); None when
        the family has none (what `kaizen demo` and `kaizen backtest` configure from a file)."""

    def example_output(self, labels: list[str], rows: int) -> pd.DataFrame:
        """A frame shaped like `predict_frame`'s answer: the registered model's signature."""

    def load(self, source: str, labels: list[str], seed: int = 0) -> tuple[torch.nn.Module, object]:
        """A base model (fresh head where the family has one) or a saved kaizen model, and its tokenizer."""

    def load_saved(self, path: Path | str) -> tuple[torch.nn.Module, object]:
        """A saved kaizen model directory as it was trained, in eval mode."""

    def featurize(self, frame: pd.DataFrame, tokenizer, max_length: int) -> dict[str, np.ndarray]:
        """`ids` (flat token ids), `offsets` (where each row starts) and any per-token array of
        the family's own, cut by the same offsets; cached per batch (tasks/featurize.py)."""

    def targets(self, examples: Examples, index: np.ndarray) -> torch.Tensor:
        """What the loss compares the model's output with, for rows `index`."""

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean training loss of a micro-batch."""

    def logits(self, model, ids: list[np.ndarray], pad_id: int, batch_size: int, device) -> np.ndarray:
        """Raw outputs for ragged token ids, in input order (the distillation teacher's too)."""

    def predict(self, model, ids: list[np.ndarray], pad_id: int, batch_size: int, device) -> np.ndarray:
        """What evaluation scores, in input order (class probabilities for a classifier)."""

    def predict_frame(self, model, tokenizer, texts: list[str], max_length: int, **params) -> pd.DataFrame:
        """What `kaizen predict`, the registered pyfunc and the service answer for raw texts."""

    def validation_metrics(self, model, examples: Examples, pad_id: int, batch_size: int, device) -> dict[str, float]:
        """PRIMARY_METRIC and `loss` on a validation set: model selection during training."""

    def evaluate_set(
        self,
        name: str,
        examples: Examples,
        challenger: np.ndarray,
        champion: np.ndarray | None,
        labels: list[str],
        resamples: int,
        seed: int,
        kind: str = "set",
    ) -> SetEvaluation:
        """Metrics of both models on one frozen set or slice, paired evidence and bootstrap intervals."""


def text_cell(value) -> str | None:
    """A cell as a string; None for a null (validation names it). Lists (Parquet, JSON Lines)
    are joined by single spaces."""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) or type(value).__name__ == "ndarray":
        return " ".join("" if v is None else str(v) for v in value)
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    return str(value)


def text_column(frame: pd.DataFrame, column: str) -> pd.Series:
    return frame[column].map(text_cell).astype(object)


def forgotten(family: Family, champion: dict | None, challenger: dict | None) -> float | None:
    """How much of what the champion knew the challenger lost on a set, in the family's
    primary metric (positive = forgot); None without both models' metrics."""
    if not champion or not challenger or family.PRIMARY_METRIC not in champion:
        return None
    lost = champion[family.PRIMARY_METRIC] - challenger[family.PRIMARY_METRIC]
    return lost if family.HIGHER_IS_BETTER else -lost


def family_of(task: str) -> Family:
    """The module of `task`; a clear error naming the tasks there are."""
    if task not in MODULES:
        raise ValueError(f"unknown task {task!r}; kaizen has {sorted(MODULES)}")
    return importlib.import_module(MODULES[task])  # type: ignore[return-value]
