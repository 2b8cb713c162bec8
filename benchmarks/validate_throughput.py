"""Validation throughput and its cost as history grows.

  python benchmarks/validate_throughput.py [--rows 1000000] [--batch-rows 10000]

(a) rows/s of the full suite (GX expectations + helper columns + drift statistics) on
    `--rows` rows built by repeating ../shared/datasets/sst2/train.csv;
(b) seconds to validate one new `--batch-rows` batch against 10, 100 and 1000 earlier
    batches of history. History is the incremental state kaizen keeps (.kaizen/history:
    summed statistics and the sorted leak keys of every test-split row) plus a manifest of
    that many batches; it is written here by the same functions that maintain it, with one
    real SST-2 batch's statistics standing in for each earlier batch (distinct test keys).
    The goal: (b) stays flat, i.e. checking a batch costs in proportion to the batch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tasks.runtime import set_runtime_defaults  # noqa: E402

set_runtime_defaults()

from models.base import load_tokenizer  # noqa: E402
from tasks.config import KaizenConfig  # noqa: E402
from tasks.history import BatchStats, History, _save, batch_stats  # noqa: E402
from tasks.ingest import prepare_batch  # noqa: E402
from tasks.validate import validate_batch  # noqa: E402
from tasks.workspace import Workspace  # noqa: E402

SST2 = ROOT.parent / "shared" / "datasets" / "sst2" / "train.csv"


def sst2_rows(n: int) -> pd.DataFrame:
    base = pd.read_csv(SST2, dtype=str, keep_default_na=False)
    base["label"] = base["label"].map({"0": "negative", "1": "positive"})
    reps = -(-n // len(base))
    frame = pd.concat([base] * reps, ignore_index=True).head(n)
    # Make repeated rows distinct texts, as a real 1M-row file would be.
    frame["text"] = frame["text"] + (frame.index // len(base)).map(lambda r: "" if r == 0 else f" #{r}")
    return frame


def suite_throughput(rows: int, config: KaizenConfig, tokenizer) -> None:
    frame = sst2_rows(rows)
    started = time.perf_counter()
    batch = prepare_batch(frame, config, "bench")
    prepared = time.perf_counter()
    report = validate_batch(batch, config, [], History(), np.zeros(0, dtype=np.int64), tokenizer)
    done = time.perf_counter()
    print(
        f"(a) full suite on {rows:,} rows: prepare {prepared - started:.1f}s + validate {done - prepared:.1f}s "
        f"= {done - started:.1f}s -> {rows / (done - started):,.0f} rows/s "
        f"(success={report.success}; failed: {[o.name for o in report.failures]})"
    )


def history_cost(batch_rows: int, config: KaizenConfig, tokenizer, sizes: list[int]) -> None:
    new = prepare_batch(sst2_rows(batch_rows * 2).tail(batch_rows).reset_index(drop=True), config, "new")
    template = prepare_batch(sst2_rows(batch_rows), config, "old")
    one = batch_stats(template, tokenizer)
    test_share = int((template["split"] == "test").sum())
    rng = np.random.default_rng(0)
    validate_batch(new, config, [], History(), np.zeros(0, dtype=np.int64), tokenizer)  # warm-up (imports, caches)
    timings = {}
    for size in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            ws = Workspace.at(tmp)
            ws.data.mkdir(parents=True)
            ids = [f"b{i:05d}" for i in range(size)]
            ws.manifest.write_text(json.dumps([{"batch_id": b, "sha256": b, "rows": batch_rows} for b in ids]))
            stats = BatchStats()
            for _ in range(size):
                stats.add(one)
            keys = rng.integers(0, 2**62, size=size * test_share, dtype=np.int64)
            _save(ws, History(ids, stats), keys)
            from tasks.history import load_history

            runs = []
            for _ in range(3):
                started = time.perf_counter()
                history, loaded = load_history(ws, tokenizer)
                validate_batch(new, config, [], history, loaded, tokenizer)
                runs.append(time.perf_counter() - started)
            timings[size] = min(runs)
            print(
                f"(b) one {batch_rows:,}-row batch vs {size:>5} earlier batches "
                f"({size * batch_rows:>10,} rows, {len(keys):>9,} test keys): {timings[size]:.3f}s (best of 3)"
            )
    first, last = timings[sizes[0]], timings[sizes[-1]]
    print(f"    ratio {sizes[-1]} vs {sizes[0]} batches of history: {last / first:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch-rows", type=int, default=10_000)
    parser.add_argument("--history", type=int, nargs="+", default=[10, 100, 1000])
    args = parser.parse_args()
    config = KaizenConfig(validation={"min_rows": 50, "max_duplicate_rate": 0.05})
    tokenizer = load_tokenizer(config.model.base)
    print(f"machine: {os.cpu_count()} CPU cores; python {sys.version.split()[0]}")
    suite_throughput(args.rows, config, tokenizer)
    history_cost(args.batch_rows, config, tokenizer, args.history)


if __name__ == "__main__":
    main()
