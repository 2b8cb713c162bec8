"""Pictures and the static HTML dashboard for the data team."""

from __future__ import annotations

import html
import json
from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def confusion_figure(set_eval, labels: list[str], role: str = "challenger"):
    plt = _pyplot()
    matrix = set_eval.confusion[role]
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(labels), 1 + 0.8 * len(labels)))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            ax.text(j, i, str(count), ha="center", va="center")
    ax.set_title(f"{set_eval.name}: {role}")
    fig.tight_layout()
    return fig
