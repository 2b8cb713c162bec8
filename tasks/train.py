"""Fine-tune a challenger: warm start, replay (+ optional distillation), LoRA, checkpoints.

Built on accelerate (device placement, bf16 autocast on CUDA, gradient accumulation,
data-parallel processes launched by torchrun, gloo on CPU), peft (LoRA) and transformers
(models, schedules). What they lack is written here: training from our ragged,
pre-tokenised feature cache with length-grouped batches, early stopping on our validation
metric, a distillation term on replayed rows, and checkpoints that resume mid-epoch to the
same result (the batch order of every epoch and the dropout seed of every step are derived
from the seed, so nothing but the step counter needs restoring).

`run_training` is the loop, top to bottom: `prepare_run`, then per micro-batch `micro_step`
and, once gradients are synced, `optimizer_step`, `evaluate_and_track_best` and
`maybe_checkpoint`, then `finish`. Under torchrun rank 0's result carries every rank's row count.
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
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from models.base import save_model
from tasks.batching import length_grouped_batches, pad_batch
from tasks.config import KaizenConfig, LoraConfig, TrainConfig
from tasks.cycle import CyclePlan
from tasks.dataset import Examples, read_examples, save_examples, training_sets
from tasks.errors import KaizenError, StorageError
from tasks.families import DEFAULT_TASK, Family, family_of
from tasks.inference import choose_device
from tasks.workspace import Workspace

if TYPE_CHECKING:
    from accelerate import Accelerator
    from torch.optim.lr_scheduler import LRScheduler
    from transformers import PreTrainedTokenizerBase

Log = Callable[[str], None]
LogMetrics = Callable[[dict[str, float], int], None]
COMPLETE = "COMPLETE"
# A torchrun worker whose loss diverged leaves its message here, so the launcher can raise
# TrainingDiverged rather than a bare "exit 1".
DIVERGED_FILE = "diverged-rank{rank}.txt"


class TrainingDiverged(KaizenError, RuntimeError):
    """The loss stopped being a finite number; the run stopped before it touched the weights."""


def diverged_message(loss: float, step: int, epoch: int, micro: int) -> str:
    return (
        f"train: loss became {loss} at step {step} (epoch {epoch + 1}, micro-batch {micro + 1}); "
        "stopping — nothing is registered or promoted; the batches stay pending: "
        "the next cycle trains on them again"
    )


@dataclass(frozen=True)
class TrainResult:
    model_dir: str
    device: str
    train_rows: int
    validation_rows: int
    steps: int
    epochs_run: float
    best_validation: float  # of `validation_metric`, the family's primary metric
    stopped_early: bool
    samples_per_second: float
    wall_seconds: float
    validation_metric: str = "accuracy"
    processes: int = 1
    resumed_from_step: int = 0
    batch_size: int = 0
    grad_accum: int = 1
    rank: int = 0
    # Per rank, in rank order, gathered from every process: rows trained on, and whether it saved the model.
    rank_rows: list[int] = field(default_factory=list)
    rank_saved: list[bool] = field(default_factory=list)


def _format_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 60}m{seconds % 60:02d}s"


# --- checkpoints ---------------------------------------------------------------------------


def _checkpoints(root: Path) -> list[Path]:
    found = [p for p in root.glob("step-*") if p.is_dir() and p.name[5:].isdigit()] if root.exists() else []
    return sorted(found, key=lambda p: int(p.name[5:]), reverse=True)


def unshared(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors, none sharing memory with another: safetensors refuses tied weights
    (a GPT's input embedding is its output layer), and loading writes both names alike."""
    seen: set[int] = set()
    out = {}
    for name, tensor in weights.items():
        tensor = tensor.detach().cpu().contiguous()
        if tensor.data_ptr() in seen:
            tensor = tensor.clone()
        seen.add(tensor.data_ptr())
        out[name] = tensor
    return out


def write_checkpoint(
    root: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: LRScheduler,
    state: dict,
    best: dict[str, torch.Tensor] | None,
    keep: int,
) -> Path:
    """Temporary directory, completeness marker, then one rename: a checkpoint is whole or absent."""
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".step-{step}."))
    final = root / f"step-{step}"
    try:
        save_file(unshared(model.state_dict()), str(tmp / "model.safetensors"))
        if best is not None:
            save_file(unshared(best), str(tmp / "best.safetensors"))
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps(state))
        (tmp / COMPLETE).write_text(str(step))
    except OSError as exc:  # a full disk: the previous checkpoint stays the newest, nothing half-written
        shutil.rmtree(tmp, ignore_errors=True)
        raise StorageError(final, exc) from None
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in _checkpoints(root)[keep:]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_latest_checkpoint(
    root: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: LRScheduler, log: Log
) -> tuple[dict, dict[str, torch.Tensor] | None] | None:
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
        except Exception as exc:  # noqa: BLE001 - a torn file raises anything from JSON to safetensors errors
            log(f"train: skipping checkpoint {candidate.name}: {type(exc).__name__}: {exc}")
            continue
        model.load_state_dict(weights)
        optimizer.load_state_dict(opt["optimizer"])
        scheduler.load_state_dict(opt["scheduler"])
        log(f"train: resuming from checkpoint {candidate.name} (step {state['step']})")
        return state, best
    return None


# --- the loop ------------------------------------------------------------------------------


def _silent(_: str) -> None:
    pass


def _wrap_lora(model: torch.nn.Module, lora: LoraConfig, task_type: str) -> torch.nn.Module:
    from peft import LoraConfig as PeftLora
    from peft import TaskType, get_peft_model

    config = PeftLora(
        task_type=TaskType[task_type],
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules) or None,  # None: peft's choice for the architecture
    )
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


@dataclass
class LoopState:
    """Where the loop stands. Only the position, best score and patience go into a checkpoint:
    the running counters restart with the process, and the best weights go in their own file."""

    step: int = 0
    epoch: int = 0
    micro: int = 0  # the next micro-batch of `epoch`
    best_score: list[float] | None = None  # [val primary metric (higher = better), -val loss]
    bad_evals: int = 0
    best_weights: dict[str, torch.Tensor] | None = None
    loss_sum: float = 0.0  # since the last evaluation
    loss_n: int = 0
    rows_here: int = 0  # rows this process trained on
    rows_all: int = 0  # rows all processes trained on, for throughput
    stopped_early: bool = False

    def resumable(self) -> dict:
        return {
            "step": self.step,
            "epoch": self.epoch,
            "micro": self.micro,
            "best_score": self.best_score,
            "bad_evals": self.bad_evals,
        }

    @classmethod
    def resume(cls, saved: dict, best_weights: dict[str, torch.Tensor] | None) -> LoopState:
        return cls(
            step=saved["step"],
            epoch=saved["epoch"],
            micro=saved["micro"],
            best_score=saved["best_score"],
            bad_evals=saved["bad_evals"],
            best_weights=best_weights,
        )


@dataclass
class TrainingRun:
    """What stays fixed while the loop runs."""

    family: Family
    accelerator: Accelerator
    model: torch.nn.Module  # prepared: possibly DDP-wrapped, possibly peft
    tokenizer: PreTrainedTokenizerBase
    optimizer: torch.optim.Optimizer
    scheduler: LRScheduler
    config: TrainConfig
    train_set: Examples
    validation_set: Examples
    pad_id: int
    bf16: bool
    teacher: np.ndarray | None  # champion logits per train row; None without distillation
    replayed: np.ndarray  # bool per train row
    lengths: list[int]  # tokens per train row
    steps_per_epoch: int
    total_steps: int
    eval_every: int
    checkpoint_every: int
    checkpoint_root: Path | None
    resumed_from: int
    log: Log
    log_metrics: LogMetrics | None
    started: float = 0.0

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        """This rank's micro-batches of `epoch`."""
        every_rank = _epoch_batches(self.lengths, self.config.batch_size, self.config.seed, epoch, self.world)
        return every_rank[self.rank :: self.world]


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
    task: str = DEFAULT_TASK,
) -> TrainResult:
    """Train a model of family `task` from `start_from` (base model or champion directory); save the best one.

    On CUDA an out-of-memory error halves the micro-batch and doubles accumulation (same
    effective batch), then retries from the last checkpoint.
    """
    while True:
        try:
            return run_training(
                start_from,
                labels,
                train_set,
                validation_set,
                config,
                output_dir,
                log,
                log_metrics,
                checkpoint_dir,
                task,
            )
        except torch.cuda.OutOfMemoryError:
            if config.batch_size <= 1:
                raise
            smaller = config.model_copy(
                update={"batch_size": config.batch_size // 2, "grad_accum": config.grad_accum * 2}
            )
            log(
                f"train: CUDA out of memory at micro-batch {config.batch_size}; retrying with micro-batch "
                f"{smaller.batch_size} x accumulation {smaller.grad_accum}"
            )
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            config = smaller


def run_training(
    start_from: str,
    labels: list[str],
    train_set: Examples,
    validation_set: Examples,
    config: TrainConfig,
    output_dir: Path | str,
    log: Log,
    log_metrics: LogMetrics | None,
    checkpoint_dir: Path | str | None,
    task: str = DEFAULT_TASK,
) -> TrainResult:
    """One attempt at training: the whole loop, top to bottom."""
    run, state = prepare_run(
        start_from, labels, train_set, validation_set, config, log, log_metrics, checkpoint_dir, task
    )
    for epoch in range(state.epoch, config.epochs):
        run.model.train()
        batches = run.epoch_batches(epoch)
        for micro in range(state.micro if epoch == state.epoch else 0, len(batches)):
            last_micro = micro == len(batches) - 1
            synced = (micro + 1) % config.grad_accum == 0 or last_micro
            micro_step(run, state, epoch, micro, batches[micro], synced)
            if not synced:
                continue
            optimizer_step(run, state, epoch, micro, last_micro)
            if state.step % run.eval_every == 0 or state.step == run.total_steps:
                evaluate_and_track_best(run, state, epoch)
            maybe_checkpoint(run, state)
            if state.stopped_early:
                break
        if state.stopped_early:
            run.log(f"train: early stop after {state.bad_evals} evaluation(s) without improvement")
            break
    return finish(run, state, output_dir)


def prepare_run(
    start_from: str,
    labels: list[str],
    train_set: Examples,
    validation_set: Examples,
    config: TrainConfig,
    log: Log,
    log_metrics: LogMetrics | None,
    checkpoint_dir: Path | str | None,
    task: str = DEFAULT_TASK,
) -> tuple[TrainingRun, LoopState]:
    """Model, teacher logits, LoRA, optimizer and schedule, then resume from the newest checkpoint."""
    if len(train_set) == 0:
        raise ValueError("nothing to train on: the new batches have no train rows")
    family = family_of(task)
    accelerator, bf16 = _accelerator(config)
    log = log if accelerator.is_main_process else _silent
    model, tokenizer, teacher, replayed = _load_student(
        family, start_from, labels, train_set, config, accelerator.device
    )
    lengths = [len(r) for r in train_set.ids]
    steps_per_epoch = _steps_per_epoch(lengths, config, accelerator.num_processes)
    optimizer, scheduler = _optimizer_and_schedule(model, config, steps_per_epoch * config.epochs)
    checkpoint_root = Path(checkpoint_dir) if checkpoint_dir else None
    loaded = load_latest_checkpoint(checkpoint_root, model, optimizer, scheduler, log) if checkpoint_root else None
    state = LoopState() if loaded is None else LoopState.resume(*loaded)
    model, optimizer = accelerator.prepare(model, optimizer)
    eval_every = config.eval_every_steps or steps_per_epoch
    run = TrainingRun(
        family=family,
        accelerator=accelerator,
        model=model,
        tokenizer=tokenizer,
        optimizer=optimizer,
        scheduler=scheduler,
        config=config,
        train_set=train_set,
        validation_set=validation_set,
        pad_id=tokenizer.pad_token_id or 0,
        bf16=bf16,
        teacher=teacher,
        replayed=replayed,
        lengths=lengths,
        steps_per_epoch=steps_per_epoch,
        total_steps=steps_per_epoch * config.epochs,
        eval_every=eval_every,
        checkpoint_every=config.checkpoint_every_steps or eval_every,
        checkpoint_root=checkpoint_root,
        resumed_from=state.step,
        log=log,
        log_metrics=log_metrics,
    )
    log(_describe(run, start_from))
    run.started = time.perf_counter()
    return run, state


def _accelerator(config: TrainConfig) -> tuple[Accelerator, bool]:
    """The accelerator and whether to autocast to bf16."""
    from accelerate import Accelerator

    device = choose_device(config.device)
    bf16 = config.precision == "bf16" or (config.precision == "auto" and device.type == "cuda")
    # Autocast is applied in micro_step with torch.autocast (bf16 needs no loss scaling);
    # accelerate keeps one process-wide precision state, so it is left at "no" here.
    return Accelerator(cpu=device.type == "cpu", mixed_precision="no"), bf16


def _steps_per_epoch(lengths: list[int], config: TrainConfig, world: int) -> int:
    """Optimizer steps per epoch: the batch count depends only on the row count, so epoch 0's serves."""
    batches_per_epoch = len(_epoch_batches(lengths, config.batch_size, config.seed, 0, world)) // world
    return max(math.ceil(batches_per_epoch / config.grad_accum), 1)


def _load_student(
    family: Family, start_from: str, labels: list[str], train_set: Examples, config: TrainConfig, device: torch.device
) -> tuple[torch.nn.Module, PreTrainedTokenizerBase, np.ndarray | None, np.ndarray]:
    """The model to train (LoRA-wrapped if asked), its tokenizer, teacher logits and the replayed mask."""
    torch.manual_seed(config.seed)
    model, tokenizer = family.load(start_from, labels, seed=config.seed)
    meta = train_set.meta
    replayed = meta["replayed"].to_numpy(dtype=bool) if "replayed" in meta else np.zeros(len(train_set), bool)
    teacher = None
    if config.distill_weight > 0 and replayed.any() and family.DISTILLS:
        # The warm start *is* the champion: its logits before training are the teacher.
        teacher = family.logits(model.to(device), train_set.ids, tokenizer.pad_token_id or 0, 64, device)
    if config.lora.enabled:
        model = _wrap_lora(model, config.lora, family.LORA_TASK_TYPE)
    return model, tokenizer, teacher, replayed


def _optimizer_and_schedule(
    model: torch.nn.Module, config: TrainConfig, total_steps: int
) -> tuple[torch.optim.Optimizer, LRScheduler]:
    from transformers import get_linear_schedule_with_warmup

    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=config.lr, weight_decay=config.weight_decay
    )
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * total_steps), total_steps)
    return optimizer, scheduler


def _describe(run: TrainingRun, start_from: str) -> str:
    c = run.config
    return (
        f"train: {len(run.train_set)} rows ({int(run.replayed.sum())} replayed), {len(run.validation_set)} "
        f"validation rows, {c.epochs} epoch(s), {run.total_steps} steps, micro-batch {c.batch_size} x "
        f"accumulation {c.grad_accum} x {run.world} process(es), device {run.device}, "
        f"{'bf16 autocast' if run.bf16 else 'fp32'}, "
        f"{'LoRA r=' + str(c.lora.r) if c.lora.enabled else 'full fine-tuning'}, from {start_from}"
    )


def micro_step(run: TrainingRun, state: LoopState, epoch: int, micro: int, index: np.ndarray, synced: bool) -> None:
    """Forward and backward one micro-batch; gradients are all-reduced only when `synced`."""
    # Dropout seeded from the position, not from a generator's history: a resumed run draws the same masks.
    torch.manual_seed(run.config.seed * 1_000_003 + epoch * 10_007 + micro)
    input_ids, mask = pad_batch([run.train_set.ids[i] for i in index], run.pad_id)
    target = run.family.targets(run.train_set, index).to(run.device)
    with torch.autocast(device_type=run.device.type, dtype=torch.bfloat16, enabled=run.bf16):
        logits = run.model(input_ids=input_ids.to(run.device), attention_mask=mask.to(run.device)).logits.float()
    loss = _loss(run, logits, target, index)
    # The one host sync of a micro-step (it feeds the running loss), taken before backward so a
    # NaN or inf loss stops the run before it reaches the gradients, let alone the weights.
    value = float(loss.detach())
    if not math.isfinite(value):
        raise TrainingDiverged(diverged_message(value, state.step + 1, epoch, micro))
    # Accumulating micro-batches skip DDP's all-reduce; the synced one reduces the summed gradient once.
    with nullcontext() if synced else run.accelerator.no_sync(run.model):
        run.accelerator.backward(loss / run.config.grad_accum)
    state.loss_sum += value
    state.loss_n += 1
    state.rows_here += len(index)
    state.rows_all += len(index) * run.world


def _loss(run: TrainingRun, logits: torch.Tensor, target: torch.Tensor, index: np.ndarray) -> torch.Tensor:
    loss = run.family.loss(logits, target)
    if run.teacher is None:
        return loss
    teacher = torch.from_numpy(run.teacher[index]).to(run.device)
    replayed = torch.from_numpy(run.replayed[index]).to(run.device)
    distill = _distill_loss(logits, teacher, replayed, run.config.distill_temperature)
    return (1 - run.config.distill_weight) * loss + run.config.distill_weight * distill


def optimizer_step(run: TrainingRun, state: LoopState, epoch: int, micro: int, last_micro: bool) -> None:
    run.accelerator.clip_grad_norm_(run.model.parameters(), 1.0)
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    state.step += 1
    # Point at the next micro-batch, so a checkpoint written now resumes exactly after this step.
    state.epoch, state.micro = (epoch, micro + 1) if not last_micro else (epoch + 1, 0)


def evaluate_and_track_best(run: TrainingRun, state: LoopState, epoch: int) -> None:
    """Validate, report, keep the best weights so far and count evaluations without improvement."""
    elapsed = time.perf_counter() - run.started
    unwrapped = run.accelerator.unwrap_model(run.model)
    metric = run.family.PRIMARY_METRIC
    measured = run.family.validation_metrics(
        unwrapped, run.validation_set, run.pad_id, run.config.batch_size * 2, run.device
    )
    val_score, val_loss = measured[metric], measured["loss"]
    unwrapped.train()
    rate = state.rows_all / max(elapsed, 1e-9)
    eta = (run.total_steps - state.step) * elapsed / max(state.step - run.resumed_from, 1)
    train_loss = state.loss_sum / max(state.loss_n, 1)
    run.log(
        f"train: step {state.step}/{run.total_steps} epoch {epoch + 1} loss {train_loss:.4f} "
        f"val_{metric} {val_score:.4f} val_loss {val_loss:.4f} {rate:.1f} samples/s ETA {_format_eta(eta)}"
    )
    if run.log_metrics and run.main:
        run.log_metrics(
            {"train_loss": train_loss, f"val_{metric}": val_score, "val_loss": val_loss, "samples_per_s": rate},
            state.step,
        )
    state.loss_sum, state.loss_n = 0.0, 0
    # The family's primary metric decides; the loss breaks ties (accuracy saturates on easy data).
    score = [val_score if run.family.HIGHER_IS_BETTER else -val_score, -val_loss]
    if state.best_score is None or math.isnan(val_score) or score > state.best_score:
        state.best_score, state.bad_evals = score, 0
        state.best_weights = {k: v.detach().cpu().clone() for k, v in unwrapped.state_dict().items()}
    else:
        state.bad_evals += 1
        # Never "early" on the last step: that run simply finished.
        state.stopped_early = state.bad_evals >= run.config.patience and state.step < run.total_steps


def maybe_checkpoint(run: TrainingRun, state: LoopState) -> None:
    """Rank 0 writes every `checkpoint_every` steps, and at an early stop."""
    if run.checkpoint_root is None or not run.main:
        return
    if state.step % run.checkpoint_every == 0 or state.stopped_early:
        write_checkpoint(
            run.checkpoint_root,
            state.step,
            run.accelerator.unwrap_model(run.model),
            run.optimizer,
            run.scheduler,
            state.resumable(),
            state.best_weights,
            run.config.keep_checkpoints,
        )


def finish(run: TrainingRun, state: LoopState, output_dir: Path | str) -> TrainResult:
    """Load the best weights, merge LoRA, save on rank 0 and report for every rank."""
    wall = time.perf_counter() - run.started
    run.accelerator.wait_for_everyone()
    model = run.accelerator.unwrap_model(run.model)
    if state.best_weights is not None:
        model.load_state_dict(state.best_weights)
    if run.config.lora.enabled:
        model = model.merge_and_unload()  # a plain model: servable with no peft at load time
    if run.main:
        save_model(model.to("cpu"), run.tokenizer, output_dir)
    rank_rows, rank_saved = _per_rank(run, state.rows_here, saved=run.main)
    return TrainResult(
        model_dir=str(output_dir) if run.main else "",
        device=run.device.type,
        train_rows=len(run.train_set),
        validation_rows=len(run.validation_set),
        steps=state.step,
        epochs_run=round(state.step / run.steps_per_epoch, 3),
        best_validation=_best_validation(run, state),
        validation_metric=run.family.PRIMARY_METRIC,
        stopped_early=state.stopped_early,
        samples_per_second=state.rows_all / max(wall, 1e-9),
        wall_seconds=wall,
        processes=run.world,
        resumed_from_step=run.resumed_from,
        batch_size=run.config.batch_size,
        grad_accum=run.config.grad_accum,
        rank=run.rank,
        rank_rows=rank_rows,
        rank_saved=rank_saved,
    )


def _best_validation(run: TrainingRun, state: LoopState) -> float:
    if not state.best_score:
        return float("nan")
    return float(state.best_score[0] if run.family.HIGHER_IS_BETTER else -state.best_score[0])


def _per_rank(run: TrainingRun, rows: int, saved: bool) -> tuple[list[int], list[bool]]:
    """Every rank's (rows trained on, saved the model), in rank order. A collective: all ranks call it."""
    mine = torch.tensor([[rows, int(saved)]], dtype=torch.int64, device=run.device)
    every = run.accelerator.gather(mine).tolist()
    return [int(r) for r, _ in every], [bool(s) for _, s in every]


# --- launching -----------------------------------------------------------------------------


def launch_distributed(
    start_from: str,
    labels: list[str],
    train_set: Examples,
    validation_set: Examples,
    config: TrainConfig,
    output_dir: Path,
    scratch: Path,
    checkpoint_dir: Path | None,
    log: Log = print,
    task: str = DEFAULT_TASK,
) -> TrainResult:
    """Run `train_classifier` in `config.num_processes` processes via torchrun (rank 0 saves)."""
    scratch.mkdir(parents=True, exist_ok=True)
    save_examples(train_set, scratch / "train.npz")
    save_examples(validation_set, scratch / "validation.npz")
    spec = {
        "start_from": start_from,
        "labels": labels,
        "config": config.model_dump(mode="json"),
        "output_dir": str(output_dir),
        "scratch": str(scratch),
        "checkpoint_dir": str(checkpoint_dir) if checkpoint_dir else None,
        "task": task,
    }
    (scratch / "spec.json").write_text(json.dumps(spec))
    for stale in scratch.glob(DIVERGED_FILE.format(rank="*")):
        stale.unlink()
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={config.num_processes}",
        "--master-addr=127.0.0.1",
        f"--master-port={port}",
        "-m",
        "tasks.train",
        str(scratch / "spec.json"),
    ]
    log(f"train: launching {config.num_processes} processes: {' '.join(command[1:])}")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, check=False)
    for line in done.stdout.splitlines():
        log(line)
    diverged = sorted(scratch.glob(DIVERGED_FILE.format(rank="*")))
    if done.returncode != 0 and diverged:
        raise TrainingDiverged(diverged[0].read_text())
    if done.returncode != 0:
        raise RuntimeError(f"distributed training failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return TrainResult(**json.loads((scratch / "result.json").read_text()))


def _worker(spec_path: str) -> None:
    """One torchrun process. Every rank trains; rank 0's result, which carries every rank's rows, is the answer."""
    spec = json.loads(Path(spec_path).read_text())
    scratch = Path(spec["scratch"])
    config = TrainConfig.model_validate(spec["config"])
    try:
        result = train_classifier(
            spec["start_from"],
            spec["labels"],
            read_examples(scratch / "train.npz"),
            read_examples(scratch / "validation.npz"),
            config,
            spec["output_dir"],
            log=lambda line: print(line, flush=True),
            checkpoint_dir=spec["checkpoint_dir"],
            task=spec["task"],
        )
    except TrainingDiverged as exc:
        (scratch / DIVERGED_FILE.format(rank=os.environ.get("RANK", "0"))).write_text(str(exc))
        raise
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
        ws,
        config.labels,
        plan.new_batches,
        plan.seen_batches,
        features,
        t.replay_fraction,
        t.replay_max_rows,
        t.seed,
        config.task,
    )
    log(
        f"train: {len(train) - replayed} new rows + {replayed} replayed rows from {len(plan.seen_batches)} "
        f"earlier batch(es)"
    )
    key = f"{'+'.join(plan.new_batches)}-from-{plan.champion_version or 'base'}-{config.fingerprint()}"[-150:]
    checkpoints = ws.runs / "checkpoints" / key
    try:
        if t.num_processes > 1:
            dist = Path(output_dir).parent / "dist"
            result = launch_distributed(
                start_from, config.labels, train, validation, t, Path(output_dir), dist, checkpoints, log, config.task
            )
        else:
            result = train_classifier(
                start_from,
                config.labels,
                train,
                validation,
                t,
                output_dir,
                log,
                log_metrics,
                checkpoint_dir=checkpoints,
                task=config.task,
            )
    except TrainingDiverged:
        # Resuming a diverged run would replay the same steps to the same NaN: its checkpoints are waste.
        shutil.rmtree(checkpoints, ignore_errors=True)
        raise
    shutil.rmtree(checkpoints, ignore_errors=True)  # the model is saved; the cycle no longer needs them
    return result, replayed


if __name__ == "__main__":
    _worker(sys.argv[1])
