"""Model families: what differs between tasks, behind one small protocol.

A family is one module (tasks/families/<name>.py) that provides everything below. The cycle,
gate, registry, lineage, ledger, backtest, report and service get the module from
`family_of(config.task)` and never import a family module themselves
(tests/code/test_layering.py holds them to it).

Families: `classification`, the one the cycle takes today; `token-classification` and
`causal-lm`, whose models, training, featurization and metrics exist (benchmarks/ner_accuracy.py
and benchmarks/lm_adaptation.py use them) and which the cycle takes once ingest, validation,
the pool and the gate read them (issue 12).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import torch

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
IN_THE_CYCLE = ("classification",)


class Family(Protocol):
    NAME: str
    PRIMARY_METRIC: str  # what model selection during training and the gate's floors read
    HIGHER_IS_BETTER: bool
    DISTILLS: bool  # whether the champion's outputs can teach replayed rows (train.distill_weight)
    INPUT_COLUMNS: tuple[str, ...]  # the batch columns `featurize` reads
    LORA_TASK_TYPE: str  # the name of peft's TaskType for this family's models

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

    def predict_frame(self, model, tokenizer, texts: list[str], max_length: int) -> pd.DataFrame:
        """What `kaizen predict` and the registered pyfunc answer for raw texts."""

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


def family_of(task: str) -> Family:
    """The module of `task`; a clear error naming the tasks there are."""
    if task not in MODULES:
        raise ValueError(f"unknown task {task!r}; kaizen has {sorted(MODULES)}")
    return importlib.import_module(MODULES[task])  # type: ignore[return-value]
