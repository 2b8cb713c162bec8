"""Drift of a new batch against the training history, from incremental statistics.

Three signals, each with a statistic, a threshold and a severity from config:
  label distribution  total variation distance between label shares (0 = same, 1 = disjoint)
  text length         population stability index over shared character-length bins
  unknown tokens      increase of the tokenizer's [UNK] rate over history, in points
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tasks.history import BatchStats


@dataclass(frozen=True)
class DriftCheck:
    name: str
    statistic: str
    value: float | None
    threshold: float
    severity: str  # warn | fail
    drifted: bool


def total_variation(batch: dict[str, int], history: dict[str, int]) -> float:
    labels = set(batch) | set(history)
    nb, nh = max(sum(batch.values()), 1), max(sum(history.values()), 1)
    return 0.5 * sum(abs(batch.get(k, 0) / nb - history.get(k, 0) / nh) for k in labels)


def population_stability(batch: list[int], history: list[int], floor: float = 1e-4) -> float:
    b = np.asarray(batch, dtype=float)
    h = np.asarray(history, dtype=float)
    p = np.maximum(b / max(b.sum(), 1), floor)
    q = np.maximum(h / max(h.sum(), 1), floor)
    return float(np.sum((p - q) * np.log(p / q)))


def unk_rate(stats: BatchStats) -> float:
    return stats.unk_tokens / stats.tokens if stats.tokens else 0.0


def check_drift(batch: BatchStats, history: BatchStats, config) -> list[DriftCheck]:
    """`config` is the `validation.drift` section; no history means nothing to drift from."""
    if history.rows == 0:
        return []
    checks = [
        (
            "label distribution",
            "total variation distance",
            total_variation(batch.label_counts, history.label_counts),
            config.label_tvd,
        ),
        (
            "text length distribution",
            "population stability index",
            population_stability(batch.length_hist, history.length_hist),
            config.length_psi,
        ),
        (
            "unknown-token rate",
            "increase in [UNK] share (points)",
            100 * (unk_rate(batch) - unk_rate(history)),
            config.unk_rate_increase,
        ),
    ]
    return [
        DriftCheck(name, statistic, float(value), limit.threshold, limit.severity, bool(value > limit.threshold))
        for name, statistic, value, limit in checks
    ]
