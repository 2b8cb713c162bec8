"""Evaluate challenger and champion on the same frozen sets and slices.

Metrics: accuracy, macro-F1, per-class precision/recall/F1, expected calibration error,
two proper scoring rules (log-loss, Brier), confusion matrices, per-example latency. Every
challenger-minus-champion delta carries a paired bootstrap confidence interval (rows
resampled jointly for both models, seeded). Each compared set also keeps its per-example
paired evidence (`SetEvaluation.paired`), which the gate tests and which pools across cycles
(`pool_evaluations`) when a held challenger meets fresh test rows.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from tasks.dataset import Examples

ECE_BINS = 15
BOOTSTRAPPED = ("accuracy", "macro_f1")
# Proper scoring rules, per example, lower is better.
SCORES = ("log_loss", "brier")
# A predicted probability of exactly 0 for the true label (fp16 underflow) would make one row's
# log-loss infinite and swamp every other row; 1e-6 caps a row at 13.8 nats.
PROBA_FLOOR = 1e-6
# Per-example gains are stored rounded: 1e-6 nats is far below any effect the gate can see,
# and it keeps evaluation.json small.
PAIRED_DECIMALS = 6


@dataclass(frozen=True)
class SetEvaluation:
    name: str  # "new", "regression", "golden", or a slice such as "new/domain=gadgets"
    kind: str  # "set" or "slice"
    rows: int
    # accuracy, macro_f1 and, with probabilities, ece, log_loss, brier and `<score>_gap`: the
    # model's mean loss on the rows it gets wrong minus on the rows it gets right (the gate's
    # exchange rate between a score and accuracy points)
    challenger: dict[str, float]
    champion: dict[str, float] | None
    # challenger minus champion, with a paired bootstrap confidence interval. Same sign
    # convention for every metric, so for log_loss, brier and ece negative = challenger better.
    delta: dict[str, float] = field(default_factory=dict)
    ci_low: dict[str, float] = field(default_factory=dict)
    ci_high: dict[str, float] = field(default_factory=dict)
    per_class: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # role -> label -> metrics
    confusion: dict[str, list[list[int]]] = field(default_factory=dict)  # role -> [true][predicted]
    # Per-example paired evidence, one entry per row, positive = challenger better:
    # correct_diff = challenger correct - champion correct (-1, 0, 1);
    # <score>_gain = champion loss - challenger loss, for each score in SCORES.
    paired: dict[str, list[float]] = field(default_factory=dict)
    # How many evaluations on disjoint fresh rows were pooled into this one (1 = one cycle);
    # the gate spends its error budget across these looks.
    looks: int = 1


@dataclass(frozen=True)
class Evaluation:
    sets: list[SetEvaluation]
    labels: list[str] = field(default_factory=list)
    latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)  # role -> p50 / p95
    confidence: float = 0.95
    resamples: int = 0
    task: str = (
        "classification"  # the family whose metrics these are (evaluations from before it travel as classifiers)
    )
    samples: dict[str, dict[str, str]] = field(default_factory=dict)  # role -> prompt -> generated text (causal-lm)

    def get(self, name: str) -> SetEvaluation | None:
        return next((s for s in self.sets if s.name == name), None)

    def slices(self) -> list[SetEvaluation]:
        return [s for s in self.sets if s.kind == "slice"]

    def to_json(self) -> str:
        return compact_number_lists(json.dumps(asdict(self), indent=1))

    @classmethod
    def from_json(cls, text: str) -> Evaluation:
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
    # sum over bins of share * |accuracy - confidence| = sum of |sum(correct - confidence)| / n
    gaps = np.bincount(edges, weights=correct - confidence, minlength=bins)
    return float(np.abs(gaps).sum() / len(y_true))


def compact_number_lists(text: str) -> str:
    """Put each list of numbers of an indented JSON text on one line.

    Per-example evidence would otherwise take a line per row. Only lists opened by a newline
    are touched, and a JSON string never holds a raw newline, so strings are left alone.
    """
    number = r"(?:-?\d[\d.eE+-]*|NaN|-?Infinity)"
    pattern = re.compile(r"\[\n\s*(" + number + r"(?:,\n\s*" + number + r")*)\n\s*\]")
    return pattern.sub(lambda m: "[" + ", ".join(v.strip() for v in m.group(1).split(",")) + "]", text)


def example_losses(y_true: np.ndarray, proba: np.ndarray) -> dict[str, np.ndarray]:
    """Per-example log-loss (nats) and multi-class Brier score; lower is better."""
    proba = np.asarray(proba, dtype=np.float64)
    rows = np.arange(len(y_true))
    onehot = np.zeros_like(proba)
    onehot[rows, y_true] = 1.0
    return {
        "log_loss": -np.log(np.clip(proba[rows, y_true], PROBA_FLOOR, 1.0)),
        "brier": ((proba - onehot) ** 2).sum(axis=1),
    }


def loss_gap(correct: np.ndarray, loss: np.ndarray) -> float:
    """Mean loss on the wrong rows minus on the right rows (NaN without both kinds of row)."""
    if correct.all() or not correct.any():
        return float("nan")
    return float(loss[~correct].mean() - loss[correct].mean())


def metrics(
    y_true: np.ndarray, y_pred: np.ndarray, num_labels: int, proba: np.ndarray | None = None
) -> dict[str, float]:
    if len(y_true) == 0:
        out = {"accuracy": float("nan"), "macro_f1": float("nan")}
    else:
        out = {"accuracy": float(np.mean(y_true == y_pred)), "macro_f1": macro_f1(y_true, y_pred, num_labels)}
    if proba is not None:
        out["ece"] = expected_calibration_error(y_true, proba)
        correct = y_true == y_pred
        for score, loss in example_losses(y_true, proba).items():
            out[score] = float(loss.mean()) if len(loss) else float("nan")
            out[f"{score}_gap"] = loss_gap(correct, loss)
    return out


def paired_evidence(
    y_true: np.ndarray, challenger_proba: np.ndarray, champion_proba: np.ndarray
) -> dict[str, list[float]]:
    """Per-example differences, positive = challenger better (see SetEvaluation.paired)."""
    correct = {
        role: np.asarray(p).argmax(axis=1) == y_true
        for role, p in (("challenger", challenger_proba), ("champion", champion_proba))
    }
    chal, champ = example_losses(y_true, challenger_proba), example_losses(y_true, champion_proba)
    out: dict[str, list[float]] = {
        "correct_diff": (correct["challenger"].astype(np.int8) - correct["champion"].astype(np.int8)).tolist()
    }
    for score in SCORES:
        out[f"{score}_gain"] = np.round(champ[score] - chal[score], PAIRED_DECIMALS).tolist()
    return out


def per_class(y_true: np.ndarray, y_pred: np.ndarray, labels: list[str]) -> dict[str, dict[str, float]]:
    tp, fp, fn = _counts(y_true, y_pred, len(labels))
    with np.errstate(invalid="ignore", divide="ignore"):
        precision, recall = tp / (tp + fp), tp / (tp + fn)
        f1 = 2 * tp / (2 * tp + fp + fn)
    return {
        label: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": float(tp[i] + fn[i]),
        }
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


def bootstrap_mean(
    values: np.ndarray, resamples: int, seed: int, confidence: float = 0.95
) -> tuple[float, float, float]:
    """(mean, low, high) of per-example values; with the same seed and length the rows drawn
    are those of `paired_bootstrap`, so every metric of a set is resampled jointly."""
    n = len(values)
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    index = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    alpha = (1 - confidence) / 2
    low, high = np.quantile(np.asarray(values, dtype=np.float64)[index].mean(axis=1), [alpha, 1 - alpha])
    return float(np.mean(values)), float(low), float(high)


def compare_predictions(
    name: str,
    y: np.ndarray,
    challenger_proba: np.ndarray,
    champion_proba: np.ndarray | None,
    labels: list[str],
    kind: str = "set",
) -> SetEvaluation:
    """Everything about one set except the bootstrap intervals: metrics, point deltas, paired evidence."""
    n_labels = len(labels)
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
        return SetEvaluation(name, kind, len(y), scores["challenger"], None, **detail)
    delta = {k: scores["challenger"][k] - scores["champion"][k] for k in (*BOOTSTRAPPED, "ece", *SCORES)}
    return SetEvaluation(
        name,
        kind,
        len(y),
        scores["challenger"],
        scores["champion"],
        delta=delta,
        paired=paired_evidence(y, challenger_proba, champion_proba),
        **detail,
    )


def with_bootstrap(
    s: SetEvaluation,
    y: np.ndarray,
    challenger_pred: np.ndarray,
    champion_pred: np.ndarray,
    num_labels: int,
    resamples: int,
    seed: int,
) -> SetEvaluation:
    """Add paired bootstrap intervals: accuracy and macro-F1 by `paired_bootstrap`, the scores
    by `bootstrap_mean` over the same resampled rows (delta = challenger - champion)."""
    if s.rows == 0:
        nan = {k: float("nan") for k in (*BOOTSTRAPPED, *SCORES)}
        return replace(s, delta={**s.delta, **nan}, ci_low=nan, ci_high=dict(nan))
    boot = paired_bootstrap(y, challenger_pred, champion_pred, num_labels, resamples, seed)
    for score in SCORES:
        # challenger - champion loss = -gain, so the interval flips.
        mean, low, high = bootstrap_mean(np.asarray(s.paired[f"{score}_gain"]), resamples, seed)
        boot[score] = (-mean, -high, -low)
    delta = {**s.delta, **{k: boot[k][0] for k in BOOTSTRAPPED}}
    return replace(
        s, delta=delta, ci_low={k: v[1] for k, v in boot.items()}, ci_high={k: v[2] for k, v in boot.items()}
    )


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
    y = examples.labels
    point = compare_predictions(name, y, challenger_proba, champion_proba, labels, kind)
    if champion_proba is None:
        return point
    return with_bootstrap(
        point, y, challenger_proba.argmax(axis=1), champion_proba.argmax(axis=1), len(labels), resamples, seed
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


def measure_latency(
    models: dict, ids: list[np.ndarray], pad_ids: dict, device, samples: int
) -> dict[str, dict[str, float]]:
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


def load_golden(path: str, labels: list[str], tokenizer, max_length: int, task: str = "classification") -> Examples:
    """A fixed, hand-curated set named in config, in the family's columns; read fresh each cycle."""
    from tasks.families import family_of
    from tasks.ingest import check_columns, read_table

    raw = read_table(path)
    check_columns(raw, f"{path} (golden set)", family_of(task).COLUMNS)
    try:
        return examples_of(raw, labels, tokenizer, max_length, task)
    except ValueError as exc:
        raise ValueError(f"{path}: golden set: {exc}") from None


def examples_of(raw, labels: list[str], tokenizer, max_length: int, task: str = "classification") -> Examples:
    """Rows of a file in the family's columns, featurized as the cycle featurizes batches."""
    from tasks.families import family_of
    from tasks.featurize import feature_rows

    family = family_of(task)
    frame = family.prepare(raw)
    return family.examples_from(frame, feature_rows(family.featurize(frame, tokenizer, max_length)), labels)


def evaluate_challenger(
    ws,
    config,
    plan,
    features: dict[str, str],
    challenger_dir: str,
    champion_dir: str | None,
) -> Evaluation:
    """Both models on identical frozen sets and slices; deltas with paired bootstrap intervals."""
    from tasks.dataset import evaluation_sets
    from tasks.families import family_of
    from tasks.inference import choose_device

    family = family_of(config.task)
    e = config.evaluate
    device = choose_device(config.train.device)
    sets = evaluation_sets(
        ws, config.labels, plan.new_batches, plan.seen_batches, features, e.regression_max_rows, e.seed, config.task
    )
    models, pads, tokenizers = _load_models(
        family, config, {"challenger": challenger_dir, "champion": champion_dir}, device
    )
    golden = _golden_set(ws, config, challenger_dir)
    if golden is not None:
        sets["golden"] = golden
    proba = {
        role: {name: family.predict(model, ex.ids, pads[role], e.batch_size, device) for name, ex in sets.items()}
        for role, model in models.items()
    }
    results = [r for name, ex in sets.items() for r in _evaluate_set(family, config, name, ex, proba)]
    latency = measure_latency(models, sets["new"].ids, pads, device, e.latency_samples)
    samples = _samples(family, models, tokenizers, sets["new"].meta)
    return Evaluation(results, list(config.labels), latency, 0.95, e.bootstrap_resamples, config.task, samples)


def _samples(family, models: dict, tokenizers: dict, new_rows) -> dict[str, dict[str, str]]:
    """Generations of both models from the same fixed prompts, for a family that generates."""
    prompt_of = getattr(family, "sample_prompts", None)
    prompts = prompt_of(new_rows) if prompt_of is not None and "text" in new_rows else []
    if not prompts:
        return {}
    return {
        role: dict(zip(prompts, family.generate(model.cpu(), tokenizers[role], prompts), strict=True))
        for role, model in models.items()
    }


def _load_models(family, config, sources: dict[str, str | None], device) -> tuple[dict, dict, dict]:
    models, pads, tokenizers = {}, {}, {}
    for role, source in sources.items():
        if source is not None:
            model, tokenizer = family.load(source, config.labels)
            models[role], pads[role] = model.to(device).eval(), tokenizer.pad_token_id or 0
            tokenizers[role] = tokenizer
    return models, pads, tokenizers


def _golden_set(ws, config, tokenizer_source: str) -> Examples | None:
    """The optional hand-curated set from config, read fresh each cycle."""
    from pathlib import Path

    from models.base import load_tokenizer

    if not config.evaluate.golden_file:
        return None
    golden = Path(config.evaluate.golden_file)
    path = golden if golden.is_absolute() else ws.root / golden
    return load_golden(str(path), config.labels, load_tokenizer(tokenizer_source), config.model.max_length, config.task)


def _evaluate_set(family, config, name: str, ex: Examples, proba: dict) -> list[SetEvaluation]:
    """A set and each of its slices (every value of each slice column, token-length buckets)."""
    e = config.evaluate
    challenger, champion = proba["challenger"][name], proba.get("champion", {}).get(name)
    out = [family.evaluate_set(name, ex, challenger, champion, config.labels, e.bootstrap_resamples, e.seed)]
    for slice_name, rows in slice_index(ex, config.data.slice_columns, e.length_buckets).items():
        out.append(
            family.evaluate_set(
                f"{name}/{slice_name}",
                ex.take(rows),
                challenger[rows],
                None if champion is None else champion[rows],
                config.labels,
                e.bootstrap_resamples,
                e.seed,
                kind="slice",
            )
        )
    return out


def _pooled_metrics(parts: list[SetEvaluation], side: str) -> dict[str, float] | None:
    """Row-weighted means: exact for accuracy, log_loss and brier (means over rows), an
    approximation for macro_f1, ece and the loss gaps (not means over rows)."""
    dicts = [(getattr(p, side), p.rows) for p in parts]
    if any(d is None for d, _ in dicts):
        return None
    out = {}
    for key in dicts[0][0]:
        pairs = [(d[key], rows) for d, rows in dicts if key in d and rows > 0 and np.isfinite(d[key])]
        weight = sum(rows for _, rows in pairs)
        out[key] = sum(v * rows for v, rows in pairs) / weight if weight else float("nan")
    return out


def pool_sets(parts: list[SetEvaluation], resamples: int = 1000, seed: int = 0) -> SetEvaluation:
    """One set's evidence from evaluations of the same two models on disjoint rows.

    Valid only when no row appears twice and neither model trained on any of them (fresh
    test splits): the per-example differences are then independent draws and concatenate.
    Intervals are re-drawn from the pooled rows (none when resamples is 0); per-class tables
    are dropped.
    """
    if not parts:
        raise ValueError("nothing to pool")
    if any(not p.paired for p in parts):
        raise ValueError(f"{parts[0].name}: every part needs paired evidence to be pooled")
    if len(parts) == 1:
        return parts[0]
    keys = [k for k in parts[0].paired if all(k in p.paired for p in parts)]
    paired = {k: [v for p in parts for v in p.paired[k]] for k in keys}
    challenger, champion = _pooled_metrics(parts, "challenger"), _pooled_metrics(parts, "champion")
    delta = {k: challenger[k] - champion[k] for k in challenger if champion and k in champion and "_gap" not in k}
    ci_low, ci_high = {}, {}
    if "correct_diff" in paired and resamples > 0:
        delta["accuracy"], ci_low["accuracy"], ci_high["accuracy"] = bootstrap_mean(
            np.asarray(paired["correct_diff"], dtype=np.float64), resamples, seed
        )
    for score in (s for s in SCORES if f"{s}_gain" in paired and resamples > 0):
        mean, low, high = bootstrap_mean(np.asarray(paired[f"{score}_gain"]), resamples, seed)
        # challenger - champion loss = -gain, so the interval flips.
        delta[score], ci_low[score], ci_high[score] = -mean, -high, -low
    confusion = {}
    if all(p.confusion for p in parts):
        confusion = {role: np.sum([p.confusion[role] for p in parts], axis=0).tolist() for role in parts[0].confusion}
    return SetEvaluation(
        parts[0].name,
        parts[0].kind,
        sum(p.rows for p in parts),
        challenger,
        champion,
        delta,
        ci_low,
        ci_high,
        {},
        confusion,
        paired,
        sum(p.looks for p in parts),
    )


def _is_fresh(name: str, fresh: tuple[str, ...]) -> bool:
    return any(name == f or name.startswith(f + "/") for f in fresh)


def pool_evaluations(parts: list[Evaluation], fresh: tuple[str, ...] = ("new",), seed: int = 0) -> Evaluation:
    """Accumulate the evidence about one challenger/champion pair over several cycles.

    `parts` are evaluations of the *same* two models, oldest first. Sets named in `fresh`
    (and their slices) must hold rows unseen by both models and by every other part (each
    cycle's new test split); they are pooled. Every other set (regression, golden) is the
    same rows evaluated again, so only the latest copy counts: pooling it would count rows
    twice. Latency and labels come from the latest part; intervals are re-drawn with its
    resamples (0: none, the evidence policy does not read them).
    """
    if not parts:
        raise ValueError("nothing to pool")
    resamples = parts[-1].resamples
    names = list(dict.fromkeys(s.name for e in parts for s in e.sets))
    sets = []
    for name in names:
        found = [s for e in parts if (s := e.get(name)) is not None]
        sets.append(pool_sets(found, resamples, seed) if _is_fresh(name, fresh) else found[-1])
    last = parts[-1]
    return Evaluation(
        sets, list(last.labels), dict(last.latency_ms), last.confidence, resamples, last.task, dict(last.samples)
    )
