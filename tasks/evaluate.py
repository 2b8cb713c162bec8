"""Evaluate challenger and champion on the same frozen sets and slices.

Metrics: accuracy, macro-F1, per-class precision/recall/F1, expected calibration error,
confusion matrices, per-example latency. Every challenger-minus-champion delta carries a
paired bootstrap confidence interval (rows resampled jointly for both models, seeded).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from tasks.dataset import Examples

ECE_BINS = 15
BOOTSTRAPPED = ("accuracy", "macro_f1")


@dataclass(frozen=True)
class SetEvaluation:
    name: str  # "new", "regression", "golden", or a slice such as "new/domain=gadgets"
    kind: str  # "set" or "slice"
    rows: int
    challenger: dict[str, float]
    champion: dict[str, float] | None
    # challenger minus champion, with a paired bootstrap confidence interval
    delta: dict[str, float] = field(default_factory=dict)
    ci_low: dict[str, float] = field(default_factory=dict)
    ci_high: dict[str, float] = field(default_factory=dict)
    per_class: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # role -> label -> metrics
    confusion: dict[str, list[list[int]]] = field(default_factory=dict)  # role -> [true][predicted]


@dataclass(frozen=True)
class Evaluation:
    sets: list[SetEvaluation]
    labels: list[str] = field(default_factory=list)
    latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)  # role -> p50 / p95
    confidence: float = 0.95
    resamples: int = 0

    def get(self, name: str) -> SetEvaluation | None:
        return next((s for s in self.sets if s.name == name), None)

    def slices(self) -> list[SetEvaluation]:
        return [s for s in self.sets if s.kind == "slice"]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "Evaluation":
        raw = json.loads(text)
        raw["sets"] = [SetEvaluation(**s) for s in raw["sets"]]
        return cls(**raw)


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, num_labels: int) -> float:
    """Mean F1 over the labels present in y_true or y_pred."""
    tp, fp, fn = _counts(y_true, y_pred, num_labels)
    denom = 2 * tp + fp + fn
    present = denom > 0
    return float(np.mean(2 * tp[present] / denom[present])) if present.any() else float("nan")


def _counts(y_true: np.ndarray, y_pred: np.ndarray, num_labels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    matrix = confusion_matrix(y_true, y_pred, num_labels)
    tp = np.diag(matrix).astype(float)
    return tp, matrix.sum(axis=0) - tp, matrix.sum(axis=1) - tp


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_labels: int) -> np.ndarray:
    return np.bincount(y_true * num_labels + y_pred, minlength=num_labels * num_labels).reshape(num_labels, num_labels)


def expected_calibration_error(y_true: np.ndarray, proba: np.ndarray, bins: int = ECE_BINS) -> float:
    """Top-label ECE with equal-width confidence bins."""
    if len(y_true) == 0:
        return float("nan")
    confidence = proba.max(axis=1)
    correct = proba.argmax(axis=1) == y_true
    edges = np.minimum((confidence * bins).astype(int), bins - 1)
    ece = 0.0
    for b in range(bins):
        in_bin = edges == b
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def metrics(y_true: np.ndarray, y_pred: np.ndarray, num_labels: int, proba: np.ndarray | None = None) -> dict[str, float]:
    if len(y_true) == 0:
        out = {"accuracy": float("nan"), "macro_f1": float("nan")}
    else:
        out = {"accuracy": float(np.mean(y_true == y_pred)), "macro_f1": macro_f1(y_true, y_pred, num_labels)}
    if proba is not None:
        out["ece"] = expected_calibration_error(y_true, proba)
    return out


def per_class(y_true: np.ndarray, y_pred: np.ndarray, labels: list[str]) -> dict[str, dict[str, float]]:
    tp, fp, fn = _counts(y_true, y_pred, len(labels))
    with np.errstate(invalid="ignore", divide="ignore"):
        precision, recall = tp / (tp + fp), tp / (tp + fn)
        f1 = 2 * tp / (2 * tp + fp + fn)
    return {
        label: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]), "support": float(tp[i] + fn[i])}
        for i, label in enumerate(labels)
    }


def _resampled(y: np.ndarray, pred: np.ndarray, index: np.ndarray, num_labels: int) -> dict[str, np.ndarray]:
    """Accuracy and macro-F1 of every bootstrap resample at once (index: resamples x rows)."""
    accuracy = (y == pred)[index].mean(axis=1)
    f1 = []
    for label in range(num_labels):
        is_true, is_pred = (y == label)[index], (pred == label)[index]
        tp = (is_true & is_pred).sum(axis=1)
        denom = is_true.sum(axis=1) + is_pred.sum(axis=1)  # = 2tp + fp + fn
        with np.errstate(invalid="ignore", divide="ignore"):
            f1.append(np.where(denom > 0, 2 * tp / denom, np.nan))
    with np.errstate(invalid="ignore"), _quiet_nanmean():
        macro = np.nanmean(np.stack(f1), axis=0)
    return {"accuracy": accuracy, "macro_f1": macro}


class _quiet_nanmean:
    """nanmean warns on an all-NaN column (a resample with no labels at all); NaN is right."""

    def __enter__(self):
        import warnings

        self._catch = warnings.catch_warnings()
        self._catch.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        return self._catch.__exit__(*exc)


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
    n = len(y_true)
    index = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    sample_a, sample_b = _resampled(y_true, pred_a, index, num_labels), _resampled(y_true, pred_b, index, num_labels)
    point_a, point_b = metrics(y_true, pred_a, num_labels), metrics(y_true, pred_b, num_labels)
    alpha = (1 - confidence) / 2
    out = {}
    for key in BOOTSTRAPPED:
        diff = sample_a[key] - sample_b[key]
        low, high = np.nanquantile(diff, [alpha, 1 - alpha]) if np.isfinite(diff).any() else (np.nan, np.nan)
        out[key] = (point_a[key] - point_b[key], float(low), float(high))
    return out


def evaluate_predictions(
    name: str,
    examples: Examples,
    challenger_proba: np.ndarray,
    champion_proba: np.ndarray | None,
    labels: list[str],
    resamples: int,
    seed: int,
    kind: str = "set",
) -> SetEvaluation:
    y, n_labels = examples.labels, len(labels)
    roles = {"challenger": challenger_proba, "champion": champion_proba}
    preds = {role: p.argmax(axis=1) for role, p in roles.items() if p is not None}
    scores = {role: metrics(y, preds[role], n_labels, roles[role]) for role in preds}
    detail = {}
    if kind == "set":
        detail = {
            "per_class": {role: per_class(y, preds[role], labels) for role in preds},
            "confusion": {role: confusion_matrix(y, preds[role], n_labels).tolist() for role in preds},
        }
    if "champion" not in preds:
        return SetEvaluation(name, kind, len(examples), scores["challenger"], None, **detail)
    if len(examples) == 0:
        nan = {k: float("nan") for k in BOOTSTRAPPED}
        return SetEvaluation(name, kind, 0, scores["challenger"], scores["champion"], nan, nan, nan, **detail)
    boot = paired_bootstrap(y, preds["challenger"], preds["champion"], n_labels, resamples, seed)
    delta = {k: v[0] for k, v in boot.items()}
    delta["ece"] = scores["challenger"]["ece"] - scores["champion"]["ece"]
    return SetEvaluation(
        name, kind, len(examples), scores["challenger"], scores["champion"],
        delta=delta,
        ci_low={k: v[1] for k, v in boot.items()},
        ci_high={k: v[2] for k, v in boot.items()},
        **detail,
    )


def length_buckets(lengths: np.ndarray, edges: list[int]) -> tuple[np.ndarray, list[str]]:
    """Bucket index of each length, and bucket names: edges [16, 48] -> 1-16, 17-48, >48 tokens."""
    names, low = [], 1
    for edge in edges:
        names.append(f"{low}-{edge} tokens")
        low = edge + 1
    names.append(f">{edges[-1]} tokens" if edges else "all")
    return np.searchsorted(np.asarray(edges), lengths, side="left"), names


def slice_index(examples: Examples, columns: list[str], length_edges: list[int]) -> dict[str, np.ndarray]:
    """Row indices of every slice: each value of each slice column, and token-length buckets."""
    out: dict[str, np.ndarray] = {}
    for column in columns:
        if column not in examples.meta:
            continue
        values = examples.meta[column].fillna("(missing)").astype(str).to_numpy()
        for value in sorted(set(values)):
            out[f"{column}={value}"] = np.flatnonzero(values == value)
    bucket, names = length_buckets(np.array([len(r) for r in examples.ids]), length_edges)
    for i, name in enumerate(names):
        rows = np.flatnonzero(bucket == i)
        if len(rows):
            out[f"length={name}"] = rows
    return out


def measure_latency(models: dict, ids: list[np.ndarray], pad_ids: dict, device, samples: int) -> dict[str, dict[str, float]]:
    """Per-example latency (batch of one), models interleaved so they share the machine's noise."""
    import torch

    from tasks.batching import pad_batch
    from tasks.inference import autocast_for

    chosen = ids[:samples]
    if not chosen:
        return {}
    times: dict[str, list[float]] = {role: [] for role in models}
    with torch.inference_mode(), autocast_for(device):
        for i, row in enumerate([chosen[0]] * 3 + chosen):  # 3 warm-up passes
            for role, model in models.items():
                input_ids, mask = pad_batch([row], pad_ids[role])
                started = time.perf_counter()
                model(input_ids=input_ids.to(device), attention_mask=mask.to(device))
                if device.type == "cuda":
                    torch.cuda.synchronize()
                if i >= 3:
                    times[role].append((time.perf_counter() - started) * 1000)
    return {role: {"p50": float(np.percentile(t, 50)), "p95": float(np.percentile(t, 95))} for role, t in times.items()}


def load_golden(path: str, labels: list[str], tokenizer, max_length: int) -> Examples:
    """A fixed, hand-curated set named in config; read fresh each cycle."""
    from tasks.featurize import tokenize_texts
    from tasks.ingest import read_table

    frame = read_table(path)
    unknown = sorted(set(frame["label"].astype(str)) - set(labels))
    if unknown:
        raise ValueError(f"{path}: golden set has labels {unknown} outside {labels}")
    ids, offsets = tokenize_texts(frame["text"].astype(str).tolist(), tokenizer, max_length)
    rows = [ids[offsets[i]:offsets[i + 1]] for i in range(len(frame))]
    index = {name: i for i, name in enumerate(labels)}
    return Examples(rows, frame["label"].astype(str).map(index).to_numpy(dtype=np.int64), frame.reset_index(drop=True))


def evaluate_challenger(
    ws,
    config,
    plan,
    features: dict[str, str],
    challenger_dir: str,
    champion_dir: str | None,
) -> Evaluation:
    """Both models on identical frozen sets and slices; deltas with paired bootstrap intervals."""
    from pathlib import Path

    from models.classifier import load_classifier
    from tasks.dataset import evaluation_sets
    from tasks.inference import choose_device, predict_proba

    e = config.evaluate
    device = choose_device(config.train.device)
    sets = evaluation_sets(ws, config.labels, plan.new_batches, plan.seen_batches, features)
    models, pads, proba = {}, {}, {}
    for role, source in (("challenger", challenger_dir), ("champion", champion_dir)):
        if source is None:
            continue
        model, tokenizer = load_classifier(source, config.labels)
        models[role], pads[role] = model.to(device).eval(), tokenizer.pad_token_id or 0
        if e.golden_file and "golden" not in sets:
            golden = Path(e.golden_file)
            sets["golden"] = load_golden(str(golden if golden.is_absolute() else ws.root / golden),
                                         config.labels, tokenizer, config.model.max_length)
    for role, model in models.items():
        proba[role] = {name: predict_proba(model, ex.ids, pads[role], e.batch_size, device) for name, ex in sets.items()}

    results = []
    for name, ex in sets.items():
        champion = proba.get("champion", {}).get(name)
        results.append(evaluate_predictions(name, ex, proba["challenger"][name], champion, config.labels,
                                            e.bootstrap_resamples, e.seed))
        for slice_name, rows in slice_index(ex, config.data.slice_columns, e.length_buckets).items():
            results.append(evaluate_predictions(
                f"{name}/{slice_name}", ex.take(rows), proba["challenger"][name][rows],
                None if champion is None else champion[rows], config.labels, e.bootstrap_resamples, e.seed,
                kind="slice"))
    latency = measure_latency(models, sets["new"].ids, pads, device, e.latency_samples)
    return Evaluation(results, list(config.labels), latency, 0.95, e.bootstrap_resamples)
