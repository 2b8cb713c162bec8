"""Forgetting under a shift, with and without replay (and with distillation).

  python benchmarks/forgetting.py [--rows 2000] [--epochs 2]

A shift scenario built from SST-2 train: batch A holds short sentences (at most 8 words),
batch B long ones (at least 20 words) — systematically different inputs. A champion is
fine-tuned on A; challengers are then warm-started from it and trained on B:
  no replay          B only
  replay             B + a stratified replay sample of A (kaizen's default, replay_fraction 1)
  replay + distill   as above, plus the KL term to the champion on replayed rows (weight 0.5)
Printed: accuracy on A's held-out rows (forgetting = champion's minus challenger's) and on B's.
"""

from __future__ import annotations

import argparse
import tempfile

import numpy as np
from common import LABELS, machine, sst2_frame, to_examples


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()

    import torch

    from models.base import load_tokenizer
    from models.classifier import load_classifier
    from tasks.config import TrainConfig
    from tasks.dataset import Examples, stratified_sample
    from tasks.inference import predict_proba
    from tasks.train import train_classifier

    frame = sst2_frame("train")
    words = frame["text"].str.split().str.len()
    short = frame[words <= 8].sample(n=args.rows + 500, random_state=0).reset_index(drop=True)
    long = frame[words >= 20].sample(n=args.rows + 500, random_state=0).reset_index(drop=True)
    tok = load_tokenizer("minilm")
    a_train, a_test = to_examples(short.head(args.rows), tok), to_examples(short.tail(500), tok)
    b_train, b_test = to_examples(long.head(args.rows), tok), to_examples(long.tail(500), tok)
    b_val = b_train.take(np.arange(200))
    config = TrainConfig(epochs=args.epochs, patience=100)

    def accuracy(model_dir: str, ex: Examples) -> float:
        model, _ = load_classifier(model_dir, LABELS)
        proba = predict_proba(model, ex.ids, tok.pad_token_id, 64, torch.device("cpu"))
        return float((proba.argmax(1) == ex.labels).mean())

    print(f"machine: {machine()}")
    print(f"A: {args.rows} SST-2 sentences of <= 8 words; B: {args.rows} of >= 20 words; 500 held out of each")
    with tempfile.TemporaryDirectory() as tmp:
        champion = f"{tmp}/champion"
        train_classifier("minilm", LABELS, a_train, a_train.take(np.arange(200)), config, champion, log=lambda _: None)
        base_a, base_b = accuracy(champion, a_test), accuracy(champion, b_test)
        print(f"champion (trained on A): A {base_a:.4f}  B {base_b:.4f}")
        replay = stratified_sample(a_train, len(b_train.ids), seed=1)
        replay.meta = replay.meta.assign(replayed=True)
        runs = {
            "no replay": (b_train, config),
            "replay": (Examples.concat([b_train, replay]), config),
            "replay + distill": (Examples.concat([b_train, replay]), config.model_copy(update={"distill_weight": 0.5})),
        }
        for name, (train, cfg) in runs.items():
            out = f"{tmp}/{name.replace(' ', '_')}"
            train_classifier(champion, LABELS, train, b_val, cfg, out, log=lambda _: None)
            acc_a, acc_b = accuracy(out, a_test), accuracy(out, b_test)
            print(f"{name:<17} A {acc_a:.4f} (forgetting {base_a - acc_a:+.4f})  B {acc_b:.4f}")


if __name__ == "__main__":
    main()
