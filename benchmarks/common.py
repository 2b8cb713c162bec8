"""Shared helpers for the training benchmarks: SST-2 as kaizen Examples, timing, memory."""

from __future__ import annotations

import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tasks.runtime import set_runtime_defaults  # noqa: E402

set_runtime_defaults()

SST2 = ROOT.parent / "shared" / "datasets" / "sst2"
LABELS = ["negative", "positive"]


def sst2_frame(split: str, rows: int | None = None, seed: int = 0) -> pd.DataFrame:
    frame = pd.read_csv(SST2 / f"{split}.csv", dtype=str, keep_default_na=False)
    frame["label"] = frame["label"].astype(int)
    if rows is not None and rows < len(frame):
        frame = frame.sample(n=rows, random_state=seed).reset_index(drop=True)
    return frame


def to_examples(frame: pd.DataFrame, tokenizer, max_length: int = 128):
    from tasks.dataset import Examples
    from tasks.featurize import tokenize_texts

    ids, offsets = tokenize_texts(frame["text"].tolist(), tokenizer, max_length)
    rows = [ids[offsets[i] : offsets[i + 1]] for i in range(len(frame))]
    return Examples(rows, frame["label"].to_numpy(dtype=np.int64), frame.assign(replayed=False))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def matmul_peak_flops(size: int = 2048, repeats: int = 10) -> float:
    """Measured fp32 matrix-multiply FLOP/s of this machine (best of `repeats`)."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best


def machine() -> str:
    import platform

    import torch

    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"
