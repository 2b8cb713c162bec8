"""Evaluate challenger and champion on the same frozen sets, with paired bootstrap deltas."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np

from tasks.dataset import Examples


@dataclass(frozen=True)
class SetEvaluation:
    name: str
    rows: int
    challenger: dict[str, float]
    champion: dict[str, float] | None
    # challenger minus champion, with a paired bootstrap confidence interval
    delta: dict[str, float] = field(default_factory=dict)
    ci_low: dict[str, float] = field(default_factory=dict)
    ci_high: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Evaluation:
    sets: list[SetEvaluation]
    confidence: float = 0.95

    def get(self, name: str) -> SetEvaluation | None:
        return next((s for s in self.sets if s.name == name), None)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, num_labels: int) -> float:
    """Mean F1 over the labels present in y_true or y_pred."""
    scores = []
    for label in range(num_labels):
        tp = np.sum((y_pred == label) & (y_true == label))
        fp = np.sum((y_pred == label) & (y_true != label))
        fn = np.sum((y_pred != label) & (y_true == label))
        if tp + fp + fn == 0:
            continue
        scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else float("nan")


def metrics(y_true: np.ndarray, y_pred: np.ndarray, num_labels: int) -> dict[str, float]:
    if len(y_true) == 0:
        return {"accuracy": float("nan"), "macro_f1": float("nan")}
    return {
        "accuracy": float(np.mean(y_true == y_pred)),
        "macro_f1": macro_f1(y_true, y_pred, num_labels),
    }


def paired_bootstrap(
    y_true: np.ndarray,
    pred_a: np.ndarray,
    pred_b: np.ndarray,
    num_labels: int,
    resamples: int,
    seed: int,
    confidence: float = 0.95,
) -> dict[str, tuple[float, float, float]]:
    """(delta, low, high) of metric(a) - metric(b), resampling rows jointly for both models."""
    rng = np.random.default_rng(seed)
    n = len(y_true)
    point_a, point_b = metrics(y_true, pred_a, num_labels), metrics(y_true, pred_b, num_labels)
    samples: dict[str, list[float]] = {k: [] for k in point_a}
    for _ in range(resamples):
        idx = rng.integers(0, n, size=n)
        ma, mb = metrics(y_true[idx], pred_a[idx], num_labels), metrics(y_true[idx], pred_b[idx], num_labels)
        for key in samples:
            samples[key].append(ma[key] - mb[key])
    alpha = (1 - confidence) / 2
    return {
        key: (
            point_a[key] - point_b[key],
            float(np.nanquantile(values, alpha)),
            float(np.nanquantile(values, 1 - alpha)),
        )
        for key, values in samples.items()
    }


def evaluate_predictions(
    name: str,
    examples: Examples,
    challenger_pred: np.ndarray,
    champion_pred: np.ndarray | None,
    num_labels: int,
    resamples: int,
    seed: int,
) -> SetEvaluation:
    y = examples.labels
    challenger = metrics(y, challenger_pred, num_labels)
    if champion_pred is None:
        return SetEvaluation(name, len(examples), challenger, None)
    champion = metrics(y, champion_pred, num_labels)
    if len(examples) == 0:
        nan = {k: float("nan") for k in challenger}
        return SetEvaluation(name, 0, challenger, champion, nan, nan, nan)
    boot = paired_bootstrap(y, challenger_pred, champion_pred, num_labels, resamples, seed)
    return SetEvaluation(
        name,
        len(examples),
        challenger,
        champion,
        delta={k: v[0] for k, v in boot.items()},
        ci_low={k: v[1] for k, v in boot.items()},
        ci_high={k: v[2] for k, v in boot.items()},
    )


def evaluate_challenger(
    ws,
    config,
    plan,
    features: dict[str, str],
    challenger_dir: str,
    champion_dir: str | None,
) -> Evaluation:
    """Both models on identical frozen sets; deltas with paired bootstrap intervals."""
    from models.classifier import load_classifier
    from tasks.dataset import evaluation_sets
    from tasks.inference import choose_device, predict_proba

    device = choose_device(config.train.device)
    sets = evaluation_sets(ws, config.labels, plan.new_batches, plan.seen_batches, features)
    predictions: dict[str, dict[str, np.ndarray]] = {}
    for role, source in (("challenger", challenger_dir), ("champion", champion_dir)):
        if source is None:
            continue
        model, tokenizer = load_classifier(source, config.labels)
        model.to(device)
        pad = tokenizer.pad_token_id or 0
        predictions[role] = {
            name: predict_proba(model, ex.ids, pad, config.evaluate.batch_size, device).argmax(axis=1)
            for name, ex in sets.items()
        }
    e = config.evaluate
    return Evaluation(
        [
            evaluate_predictions(
                name,
                ex,
                predictions["challenger"][name],
                predictions["champion"][name] if "champion" in predictions else None,
                len(config.labels),
                e.bootstrap_resamples,
                e.seed,
            )
            for name, ex in sets.items()
        ]
    )
