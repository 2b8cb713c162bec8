"""Fine-tune a challenger: warm start, replay, dynamic padding, early stopping.

The loop is written out (nanoGPT-style) rather than handed to transformers' Trainer because
it trains from our ragged, pre-tokenized cache and checks early stopping on our own metric;
schedules and models come from transformers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from models.classifier import load_classifier, save_classifier
from tasks.batching import length_grouped_batches, pad_batch
from tasks.config import KaizenConfig, TrainConfig
from tasks.cycle import CyclePlan
from tasks.dataset import Examples, training_sets
from tasks.inference import accuracy_and_loss, autocast_for, choose_device
from tasks.workspace import Workspace

Log = Callable[[str], None]
LogMetrics = Callable[[dict[str, float], int], None]


@dataclass(frozen=True)
class TrainResult:
    model_dir: str
    device: str
    train_rows: int
    validation_rows: int
    steps: int
    epochs_run: float
    best_validation_accuracy: float
    stopped_early: bool
    samples_per_second: float
    wall_seconds: float


def _format_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 60}m{seconds % 60:02d}s"


def train_classifier(
    start_from: str,
    labels: list[str],
    train_set: Examples,
    validation_set: Examples,
    config: TrainConfig,
    output_dir: Path | str,
    log: Log = print,
    log_metrics: LogMetrics | None = None,
) -> TrainResult:
    """Train from `start_from` (base encoder or champion directory); save the best model."""
    if len(train_set) == 0:
        raise ValueError("nothing to train on: the new batches have no train rows")
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    device = choose_device(config.device)
    model, tokenizer = load_classifier(start_from, labels, seed=config.seed)
    model.to(device)
    pad_id = tokenizer.pad_token_id or 0

    lengths = [len(r) for r in train_set.ids]
    steps_per_epoch = math.ceil(math.ceil(len(train_set) / config.batch_size) / config.grad_accum)
    total_steps = steps_per_epoch * config.epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    from transformers import get_linear_schedule_with_warmup

    scheduler = get_linear_schedule_with_warmup(
        optimizer, int(config.warmup_ratio * total_steps), max(total_steps, 1)
    )
    eval_every = config.eval_every_steps or steps_per_epoch
    log(
        f"train: {len(train_set)} rows, {len(validation_set)} validation rows, {config.epochs} epoch(s), "
        f"{total_steps} steps, device {device.type}, from {start_from}"
    )

    best_score, best_state, bad_evals, step, seen = None, None, 0, 0, 0
    stopped_early = False
    started = time.perf_counter()
    loss_sum, loss_n = 0.0, 0
    for epoch in range(config.epochs):
        model.train()
        batches = length_grouped_batches(lengths, config.batch_size, rng)
        for micro, index in enumerate(batches):
            input_ids, mask = pad_batch([train_set.ids[i] for i in index], pad_id)
            target = torch.from_numpy(train_set.labels[index]).to(device)
            with autocast_for(device):
                logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits
            loss = torch.nn.functional.cross_entropy(logits.float(), target)
            (loss / config.grad_accum).backward()
            loss_sum += float(loss.detach())
            loss_n += 1
            seen += len(index)
            last_micro = micro == len(batches) - 1
            if (micro + 1) % config.grad_accum and not last_micro:
                continue
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if step % eval_every and step != total_steps:
                continue
            elapsed = time.perf_counter() - started
            val_acc, val_loss = accuracy_and_loss(model, validation_set, pad_id, config.batch_size * 2, device)
            rate = seen / max(elapsed, 1e-9)
            eta = (total_steps - step) * elapsed / step
            log(
                f"train: step {step}/{total_steps} epoch {epoch + 1} loss {loss_sum / max(loss_n, 1):.4f} "
                f"val_acc {val_acc:.4f} val_loss {val_loss:.4f} {rate:.1f} samples/s ETA {_format_eta(eta)}"
            )
            if log_metrics:
                log_metrics(
                    {"train_loss": loss_sum / max(loss_n, 1), "val_accuracy": val_acc, "val_loss": val_loss,
                     "samples_per_s": rate},
                    step,
                )
            loss_sum, loss_n = 0.0, 0
            # Validation accuracy decides; its loss breaks ties (accuracy saturates on easy data).
            score = (val_acc, -val_loss)
            if best_score is None or math.isnan(val_acc) or score > best_score:
                best_score = score
                best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
                bad_evals = 0
            else:
                bad_evals += 1
                if bad_evals >= config.patience and step < total_steps:
                    stopped_early = True
                    break
        if stopped_early:
            log(f"train: early stop after {bad_evals} evaluation(s) without improvement")
            break
    wall = time.perf_counter() - started
    if best_state is not None:
        model.load_state_dict(best_state)
    model.to("cpu")
    save_classifier(model, tokenizer, output_dir)
    return TrainResult(
        model_dir=str(output_dir),
        device=device.type,
        train_rows=len(train_set),
        validation_rows=len(validation_set),
        steps=step,
        epochs_run=round(step / max(steps_per_epoch, 1), 3),
        best_validation_accuracy=float(best_score[0]) if best_score else float("nan"),
        stopped_early=stopped_early,
        samples_per_second=seen / max(wall, 1e-9),
        wall_seconds=wall,
    )


def train_challenger(
    ws: Workspace,
    config: KaizenConfig,
    plan: CyclePlan,
    features: dict[str, str],
    start_from: str,
    output_dir: Path | str,
    log: Log = print,
    log_metrics: LogMetrics | None = None,
) -> tuple[TrainResult, int]:
    """Assemble new rows + replay and train; returns the result and the replayed row count."""
    t = config.train
    train, validation, replayed = training_sets(
        ws, config.labels, plan.new_batches, plan.seen_batches, features, t.replay_fraction, t.replay_max_rows, t.seed
    )
    log(f"train: {len(train) - replayed} new rows + {replayed} replayed rows from {len(plan.seen_batches)} earlier batch(es)")
    return train_classifier(start_from, config.labels, train, validation, t, output_dir, log, log_metrics), replayed
