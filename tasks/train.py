"""Fine-tune a challenger: warm start, replay (+ optional distillation), LoRA, checkpoints.

Built on accelerate (device placement, bf16 autocast on CUDA, gradient accumulation,
data-parallel processes launched by torchrun, gloo on CPU), peft (LoRA) and transformers
(models, schedules). What they lack is written here: training from our ragged,
pre-tokenised feature cache with length-grouped batches, early stopping on our validation
metric, a distillation term on replayed rows, and checkpoints that resume mid-epoch to the
same result (the batch order of every epoch and the dropout seed of every step are derived
from the seed, so nothing but the step counter needs restoring).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from models.classifier import load_classifier, save_classifier
from tasks.batching import length_grouped_batches, pad_batch
from tasks.config import KaizenConfig, TrainConfig
from tasks.cycle import CyclePlan
from tasks.dataset import Examples, read_examples, save_examples, training_sets
from tasks.inference import accuracy_and_loss, choose_device, predict_logits
from tasks.workspace import Workspace

Log = Callable[[str], None]
LogMetrics = Callable[[dict[str, float], int], None]
COMPLETE = "COMPLETE"


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
    processes: int = 1
    resumed_from_step: int = 0
    batch_size: int = 0
    grad_accum: int = 1
    rank: int = 0
    rank_rows: int = 0  # rows this process trained on (every rank contributes in data parallel)


def _format_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 60}m{seconds % 60:02d}s"


# --- checkpoints ---------------------------------------------------------------------------

def _checkpoints(root: Path) -> list[Path]:
    found = [p for p in root.glob("step-*") if p.is_dir() and p.name[5:].isdigit()] if root.exists() else []
    return sorted(found, key=lambda p: int(p.name[5:]), reverse=True)


def write_checkpoint(root: Path, step: int, model, optimizer, scheduler, state: dict, best: dict | None, keep: int) -> Path:
    """Temporary directory, completeness marker, then one rename: a checkpoint is whole or absent."""
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".step-{step}."))
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(weights, str(tmp / "model.safetensors"))
    if best is not None:
        save_file({k: v.contiguous() for k, v in best.items()}, str(tmp / "best.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps(state))
    (tmp / COMPLETE).write_text(str(step))
    final = root / f"step-{step}"
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in _checkpoints(root)[keep:]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_latest_checkpoint(root: Path, model, optimizer, scheduler, log: Log) -> tuple[dict, dict | None] | None:
    """The newest complete checkpoint that loads; truncated ones are skipped with a log line."""
    from safetensors.torch import load_file

    for candidate in _checkpoints(root):
        try:
            if not (candidate / COMPLETE).exists():
                raise ValueError("no completeness marker")
            state = json.loads((candidate / "state.json").read_text())
            weights = load_file(str(candidate / "model.safetensors"))
            # weights_only: optimizer state is tensors and numbers; nothing executable loads.
            opt = torch.load(candidate / "optimizer.pt", weights_only=True)
            best = load_file(str(candidate / "best.safetensors")) if (candidate / "best.safetensors").exists() else None
        except Exception as exc:  # a torn file raises anything from JSON to safetensors errors
            log(f"train: skipping checkpoint {candidate.name}: {type(exc).__name__}: {exc}")
            continue
        model.load_state_dict(weights)
        optimizer.load_state_dict(opt["optimizer"])
        scheduler.load_state_dict(opt["scheduler"])
        log(f"train: resuming from checkpoint {candidate.name} (step {state['step']})")
        return state, best
    return None


# --- the loop ------------------------------------------------------------------------------

def _wrap_lora(model, lora):
    from peft import LoraConfig as PeftLora
    from peft import TaskType, get_peft_model

    config = PeftLora(task_type=TaskType.SEQ_CLS, r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                      target_modules=list(lora.target_modules))
    return get_peft_model(model, config)


def _distill_loss(logits: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) at temperature T on the masked (replayed) rows, scaled by T^2."""
    if not bool(mask.any()):
        return logits.new_zeros(())
    t = temperature
    student = torch.log_softmax(logits[mask] / t, dim=-1)
    target = torch.softmax(teacher[mask] / t, dim=-1)
    return torch.nn.functional.kl_div(student, target, reduction="batchmean") * t * t


def _epoch_batches(lengths: list[int], batch_size: int, seed: int, epoch: int, world: int) -> list[np.ndarray]:
    """Every rank derives the same order from (seed, epoch); equal counts per rank for DDP."""
    batches = length_grouped_batches(lengths, batch_size, np.random.default_rng([seed, epoch]))
    usable = len(batches) - len(batches) % world if len(batches) >= world else len(batches)
    return batches[:usable]


def train_classifier(
    start_from: str,
    labels: list[str],
    train_set: Examples,
    validation_set: Examples,
    config: TrainConfig,
    output_dir: Path | str,
    log: Log = print,
    log_metrics: LogMetrics | None = None,
    checkpoint_dir: Path | str | None = None,
) -> TrainResult:
    """Train from `start_from` (base encoder or champion directory); save the best model.

    On CUDA an out-of-memory error halves the micro-batch and doubles accumulation (same
    effective batch), then retries from the last checkpoint.
    """
    while True:
        try:
            return _train(start_from, labels, train_set, validation_set, config, output_dir, log, log_metrics,
                          checkpoint_dir)
        except torch.cuda.OutOfMemoryError:
            if config.batch_size <= 1:
                raise
            smaller = config.model_copy(update={"batch_size": config.batch_size // 2, "grad_accum": config.grad_accum * 2})
            log(f"train: CUDA out of memory at micro-batch {config.batch_size}; retrying with micro-batch "
                f"{smaller.batch_size} x accumulation {smaller.grad_accum}")
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            config = smaller


def _train(start_from, labels, train_set, validation_set, config, output_dir, log, log_metrics, checkpoint_dir):
    from accelerate import Accelerator
    from transformers import get_linear_schedule_with_warmup

    if len(train_set) == 0:
        raise ValueError("nothing to train on: the new batches have no train rows")
    device = choose_device(config.device)
    bf16 = config.precision == "bf16" or (config.precision == "auto" and device.type == "cuda")
    # Autocast is applied below with torch.autocast (bf16 needs no loss scaling); accelerate
    # keeps one process-wide precision state, so it is left at "no" here.
    accelerator = Accelerator(cpu=device.type == "cpu", mixed_precision="no")
    rank, world, main = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    log = log if main else (lambda _: None)
    torch.manual_seed(config.seed)
    model, tokenizer = load_classifier(start_from, labels, seed=config.seed)
    pad_id = tokenizer.pad_token_id or 0

    teacher = None
    replayed = train_set.meta["replayed"].to_numpy(dtype=bool) if "replayed" in train_set.meta else np.zeros(len(train_set), bool)
    if config.distill_weight > 0 and replayed.any():
        # The warm start *is* the champion: its logits before training are the teacher.
        teacher = predict_logits(model.to(accelerator.device), train_set.ids, pad_id, 64, accelerator.device)
    if config.lora.enabled:
        model = _wrap_lora(model, config.lora)

    lengths = [len(r) for r in train_set.ids]
    batches_per_epoch = len(_epoch_batches(lengths, config.batch_size, config.seed, 0, world)) // world
    steps_per_epoch = max(math.ceil(batches_per_epoch / config.grad_accum), 1)
    total_steps = steps_per_epoch * config.epochs
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr,
                                  weight_decay=config.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * total_steps), total_steps)
    eval_every = config.eval_every_steps or steps_per_epoch
    checkpoint_every = config.checkpoint_every_steps or eval_every
    ckpt_root = Path(checkpoint_dir) if checkpoint_dir else None

    state = {"step": 0, "epoch": 0, "micro": 0, "best_score": None, "bad_evals": 0}
    best_state, resumed_from = None, 0
    if ckpt_root is not None:
        loaded = load_latest_checkpoint(ckpt_root, model, optimizer, scheduler, log)
        if loaded is not None:
            state, best_state = loaded
            resumed_from = state["step"]
    model, optimizer = accelerator.prepare(model, optimizer)
    log(f"train: {len(train_set)} rows ({int(replayed.sum())} replayed), {len(validation_set)} validation rows, "
        f"{config.epochs} epoch(s), {total_steps} steps, micro-batch {config.batch_size} x accumulation "
        f"{config.grad_accum} x {world} process(es), device {accelerator.device}, {'bf16 autocast' if bf16 else 'fp32'}, "
        f"{'LoRA r=' + str(config.lora.r) if config.lora.enabled else 'full fine-tuning'}, from {start_from}")

    stopped_early = False
    started = time.perf_counter()
    loss_sum, loss_n, seen_here = 0.0, 0, 0
    rank_rows = 0
    for epoch in range(state["epoch"], config.epochs):
        model.train()
        batches = _epoch_batches(lengths, config.batch_size, config.seed, epoch, world)[rank::world]
        start_micro = state["micro"] if epoch == state["epoch"] else 0
        for micro in range(start_micro, len(batches)):
            index = batches[micro]
            torch.manual_seed(config.seed * 1_000_003 + epoch * 10_007 + micro)  # dropout, resumable
            input_ids, mask = pad_batch([train_set.ids[i] for i in index], pad_id)
            target = torch.from_numpy(train_set.labels[index]).to(accelerator.device)
            last_micro = micro == len(batches) - 1
            sync = (micro + 1) % config.grad_accum == 0 or last_micro
            with torch.autocast(device_type=accelerator.device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = model(input_ids=input_ids.to(accelerator.device),
                               attention_mask=mask.to(accelerator.device)).logits.float()
            loss = torch.nn.functional.cross_entropy(logits, target)
            if teacher is not None:
                distill = _distill_loss(logits, torch.from_numpy(teacher[index]).to(accelerator.device),
                                        torch.from_numpy(replayed[index]).to(accelerator.device), config.distill_temperature)
                loss = (1 - config.distill_weight) * loss + config.distill_weight * distill
            if sync:
                accelerator.backward(loss / config.grad_accum)
            else:
                with accelerator.no_sync(model):
                    accelerator.backward(loss / config.grad_accum)
            loss_sum += float(loss.detach())
            loss_n += 1
            rank_rows += len(index)
            seen_here += len(index) * world
            if not sync:
                continue
            accelerator.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state["step"] += 1
            state["epoch"], state["micro"] = (epoch, micro + 1) if not last_micro else (epoch + 1, 0)
            step = state["step"]
            if step % eval_every == 0 or step == total_steps:
                elapsed = time.perf_counter() - started
                unwrapped = accelerator.unwrap_model(model)
                val_acc, val_loss = accuracy_and_loss(unwrapped, validation_set, pad_id, config.batch_size * 2,
                                                      accelerator.device)
                unwrapped.train()
                rate = seen_here / max(elapsed, 1e-9)
                eta = (total_steps - step) * elapsed / max(step - resumed_from, 1)
                log(f"train: step {step}/{total_steps} epoch {epoch + 1} loss {loss_sum / max(loss_n, 1):.4f} "
                    f"val_acc {val_acc:.4f} val_loss {val_loss:.4f} {rate:.1f} samples/s ETA {_format_eta(eta)}")
                if log_metrics and main:
                    log_metrics({"train_loss": loss_sum / max(loss_n, 1), "val_accuracy": val_acc,
                                 "val_loss": val_loss, "samples_per_s": rate}, step)
                loss_sum, loss_n = 0.0, 0
                # Validation accuracy decides; its loss breaks ties (accuracy saturates on easy data).
                score = [val_acc, -val_loss]
                if state["best_score"] is None or math.isnan(val_acc) or score > state["best_score"]:
                    state["best_score"], state["bad_evals"] = score, 0
                    best_state = {k: v.detach().cpu().clone() for k, v in unwrapped.state_dict().items()}
                else:
                    state["bad_evals"] += 1
                    stopped_early = state["bad_evals"] >= config.patience and step < total_steps
            if ckpt_root is not None and main and (step % checkpoint_every == 0 or stopped_early):
                write_checkpoint(ckpt_root, step, accelerator.unwrap_model(model), optimizer, scheduler, state,
                                 best_state, config.keep_checkpoints)
            if stopped_early:
                break
        if stopped_early:
            log(f"train: early stop after {state['bad_evals']} evaluation(s) without improvement")
            break
    wall = time.perf_counter() - started
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    if best_state is not None:
        unwrapped.load_state_dict(best_state)
    if config.lora.enabled:
        unwrapped = unwrapped.merge_and_unload()  # a plain classifier: servable with no peft at load time
    if main:
        save_classifier(unwrapped.to("cpu"), tokenizer, output_dir)
    best = state["best_score"]
    return TrainResult(
        model_dir=str(output_dir) if main else "",
        device=accelerator.device.type,
        train_rows=len(train_set),
        validation_rows=len(validation_set),
        steps=state["step"],
        epochs_run=round(state["step"] / steps_per_epoch, 3),
        best_validation_accuracy=float(best[0]) if best else float("nan"),
        stopped_early=stopped_early,
        samples_per_second=seen_here / max(wall, 1e-9),
        wall_seconds=wall,
        processes=world,
        resumed_from_step=resumed_from,
        batch_size=config.batch_size,
        grad_accum=config.grad_accum,
        rank=rank,
        rank_rows=rank_rows,
    )


# --- launching -----------------------------------------------------------------------------

def launch_distributed(start_from: str, labels: list[str], train_set: Examples, validation_set: Examples,
                       config: TrainConfig, output_dir: Path, scratch: Path, checkpoint_dir: Path | None,
                       log: Log = print) -> TrainResult:
    """Run `train_classifier` in `config.num_processes` processes via torchrun (rank 0 saves)."""
    scratch.mkdir(parents=True, exist_ok=True)
    save_examples(train_set, scratch / "train.npz")
    save_examples(validation_set, scratch / "validation.npz")
    spec = {"start_from": start_from, "labels": labels, "config": config.model_dump(mode="json"),
            "output_dir": str(output_dir), "scratch": str(scratch),
            "checkpoint_dir": str(checkpoint_dir) if checkpoint_dir else None}
    (scratch / "spec.json").write_text(json.dumps(spec))
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={config.num_processes}",
               "--master-addr=127.0.0.1", f"--master-port={port}", "-m", "tasks.train", str(scratch / "spec.json")]
    log(f"train: launching {config.num_processes} processes: {' '.join(command[1:])}")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
    for line in done.stdout.splitlines():
        log(line)
    if done.returncode != 0:
        raise RuntimeError(f"distributed training failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return TrainResult(**json.loads((scratch / "result.json").read_text()))


def _worker(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    scratch = Path(spec["scratch"])
    config = TrainConfig.model_validate(spec["config"])
    result = train_classifier(spec["start_from"], spec["labels"], read_examples(scratch / "train.npz"),
                              read_examples(scratch / "validation.npz"), config, spec["output_dir"],
                              log=lambda line: print(line, flush=True), checkpoint_dir=spec["checkpoint_dir"])
    (scratch / f"rank-{result.rank}.json").write_text(json.dumps({"rank": result.rank, "rows": result.rank_rows,
                                                                  "pid": os.getpid(), "saved": bool(result.model_dir)}))
    if result.rank == 0:
        (scratch / "result.json").write_text(json.dumps(asdict(result)))


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
    """Assemble new rows + replay and train; returns the result and the replayed row count.

    Checkpoints live under .kaizen/runs/checkpoints/<what this cycle trains>, so a cycle that
    is killed and run again resumes where it stopped.
    """
    t = config.train
    train, validation, replayed = training_sets(
        ws, config.labels, plan.new_batches, plan.seen_batches, features, t.replay_fraction, t.replay_max_rows, t.seed
    )
    log(f"train: {len(train) - replayed} new rows + {replayed} replayed rows from {len(plan.seen_batches)} earlier batch(es)")
    key = f"{'+'.join(plan.new_batches)}-from-{plan.champion_version or 'base'}-{config.fingerprint()}"[-150:]
    checkpoints = ws.runs / "checkpoints" / key
    if t.num_processes > 1:
        result = launch_distributed(start_from, config.labels, train, validation, t, Path(output_dir),
                                    Path(output_dir).parent / "dist", checkpoints, log)
    else:
        result = train_classifier(start_from, config.labels, train, validation, t, output_dir, log, log_metrics,
                                  checkpoint_dir=checkpoints)
    shutil.rmtree(checkpoints, ignore_errors=True)  # the model is saved; the cycle no longer needs them
    return result, replayed


if __name__ == "__main__":
    _worker(sys.argv[1])
