"""Promotion policies compared on one replay of a shifted stream, with the real cycle.

The stream: SST-2 train, a seeded sample ordered by text length, cut into batches (short
phrases first, full sentences last: each batch a shift). `kaizen backtest` replays it with the
default config (MiniLM, the `evidence` gate) and decides the `legacy`, `evidence` and
`no-harm` policies on the same evaluations; each policy's champion is measured on SST-2
validation (872 full sentences, never trained on) after every cycle.

    .venv/bin/python benchmarks/policy_backtest.py [--batches 4 --rows 2000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import pandas as pd
from common import ROOT, SST2, machine


def shifted_stream(rows: int, seed: int, target: Path) -> Path:
    frame = pd.read_csv(SST2 / "train.csv", dtype={"text": str}, keep_default_na=False)
    # SST-2 train holds a few texts with both labels; validation would quarantine their batch.
    key = frame["text"].str.strip().str.lower()
    frame = frame[frame.groupby(key)["label"].transform("nunique") == 1]
    frame = frame.sample(n=rows, random_state=seed)
    frame = frame.assign(length=frame["text"].str.len()).sort_values("length", kind="stable")
    path = target / "train.csv"  # beside label_names.txt, so labels are named
    frame[["text", "label"]].to_csv(path, index=False)  # in length order: the replay's file order
    (target / "label_names.txt").write_text((SST2 / "label_names.txt").read_text())
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--rows", type=int, default=2000, help="rows per batch")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from flows.cli import main as kaizen

    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        source = shifted_stream(args.batches * args.rows, args.seed, Path(tmp))
        workspace = Path(tmp) / "ws"
        workspace.mkdir()
        return kaizen(
            [
                "backtest",
                "--source",
                str(source),
                "--batches",
                str(args.batches),
                "--rows",
                str(args.rows),
                "--policy",
                "legacy",
                "--policy",
                "evidence",
                "--policy",
                "no-harm",
                "--reference",
                str(SST2 / "validation.csv"),
                "--workspace",
                str(workspace),
            ]
        )


if __name__ == "__main__":
    sys.exit(main())
