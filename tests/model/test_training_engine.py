"""The training engine: resume after SIGKILL, truncated checkpoints, 2 processes (gloo),
OOM back-off, LoRA, distillation. All on CPU with the tiny encoder."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file

from models.base import load_tokenizer
from tasks.config import TrainConfig
from tasks.dataset import Examples, save_examples
from tasks.featurize import tokenize_texts
from tasks.train import launch_distributed, train_classifier

REPO = Path(__file__).resolve().parents[2]
LABELS = ["negative", "positive"]
CONFIG = TrainConfig(
    epochs=3,
    batch_size=8,
    lr=3e-3,
    warmup_ratio=0.05,
    patience=5,
    seed=5,
    eval_every_steps=4,
    checkpoint_every_steps=4,
    keep_checkpoints=3,
)


def _examples(n: int, seed: int, replayed: bool = False) -> Examples:
    rng = np.random.default_rng(seed)
    words = {1: ["great", "lovely", "superb"], 0: ["awful", "broken", "stale"]}
    labels = rng.integers(0, 2, n)
    texts = [
        f"item {i} was {rng.choice(words[int(y)])} " + "very " * int(rng.integers(0, 6)) for i, y in enumerate(labels)
    ]
    ids, offsets = tokenize_texts(texts, load_tokenizer("tiny"), 32)
    return Examples(
        [ids[offsets[i] : offsets[i + 1]] for i in range(n)],
        labels.astype(np.int64),
        pd.DataFrame({"replayed": [replayed] * n}),
    )


CHILD = """
import json, sys, time
sys.path.insert(0, {repo!r})
import torch
from tasks.config import TrainConfig
from tasks.dataset import read_examples
from tasks.train import train_classifier
slow = float(sys.argv[2])
if slow:  # make each step slow enough for the parent to kill the process mid-epoch
    original = torch.nn.Module.__call__
    def slowed(self, *a, **k):
        if type(self).__name__ == "BertForSequenceClassification" and self.training:
            time.sleep(slow)
        return original(self, *a, **k)
    torch.nn.Module.__call__ = slowed
spec = json.load(open(sys.argv[1]))
result = train_classifier("tiny", ["negative", "positive"], read_examples(spec["train"]), read_examples(spec["val"]),
                          TrainConfig.model_validate(spec["config"]), spec["out"], checkpoint_dir=spec["ckpt"])
print("RESULT", json.dumps({{"steps": result.steps, "resumed": result.resumed_from_step}}), flush=True)
"""


def _child(tmp_path: Path, name: str, slow: float, ckpt: Path):
    save_examples(_examples(160, 0), tmp_path / "train.npz")
    save_examples(_examples(40, 1), tmp_path / "val.npz")
    spec = {
        "train": str(tmp_path / "train.npz"),
        "val": str(tmp_path / "val.npz"),
        "out": str(tmp_path / name),
        "ckpt": str(ckpt),
        "config": CONFIG.model_dump(mode="json"),
    }
    (tmp_path / f"{name}.json").write_text(json.dumps(spec))
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(repo=str(REPO)))
    return subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / f"{name}.json"), str(slow)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def test_resume_after_sigkill_reaches_the_uninterrupted_result(tmp_path):
    straight = _child(tmp_path, "straight", 0.0, tmp_path / "ckpt-straight")
    out, _ = straight.communicate(timeout=300)
    assert straight.returncode == 0, out
    straight_summary = json.loads(out.split("RESULT ", 1)[1].splitlines()[0])
    assert straight_summary["steps"] > 8

    victim = _child(tmp_path, "resumed", 0.05, tmp_path / "ckpt-resumed")
    deadline = time.time() + 240
    while not (tmp_path / "ckpt-resumed" / "step-8" / "COMPLETE").exists():
        assert victim.poll() is None and time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)  # mid-epoch: 20 micro-batches an epoch, killed after step 8
    victim.wait(timeout=30)
    assert victim.returncode == -signal.SIGKILL
    assert not (tmp_path / "resumed").exists()

    again = _child(tmp_path, "resumed", 0.0, tmp_path / "ckpt-resumed")
    out, _ = again.communicate(timeout=300)
    assert again.returncode == 0, out
    assert "resuming from checkpoint step-" in out
    summary = json.loads(out.split("RESULT ", 1)[1].splitlines()[0])
    assert summary["resumed"] >= 8 and summary["steps"] == straight_summary["steps"]
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    # Stated tolerance: the same weights up to float reassociation (both runs on this CPU).
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5


def test_truncated_latest_checkpoint_is_skipped_with_a_log_line(tmp_path):
    lines: list[str] = []
    config = CONFIG.model_copy(update={"epochs": 1})
    train_classifier(
        "tiny",
        LABELS,
        _examples(160, 0),
        _examples(40, 1),
        config,
        tmp_path / "m",
        log=lines.append,
        checkpoint_dir=tmp_path / "ckpt",
    )
    checkpoints = sorted((tmp_path / "ckpt").glob("step-*"), key=lambda p: int(p.name[5:]))
    assert [p.name for p in checkpoints] == ["step-12", "step-16", "step-20"]
    latest = checkpoints[-1] / "model.safetensors"
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])  # torn write
    lines.clear()
    result = train_classifier(
        "tiny",
        LABELS,
        _examples(160, 0),
        _examples(40, 1),
        config,
        tmp_path / "m2",
        log=lines.append,
        checkpoint_dir=tmp_path / "ckpt",
    )
    assert any(line.startswith("train: skipping checkpoint step-20") for line in lines), lines
    assert any("resuming from checkpoint step-16" in line for line in lines), lines
    assert result.resumed_from_step == 16 and result.steps == 20


def test_two_processes_on_cpu_both_train_and_only_rank_zero_saves(tmp_path):
    train, val = _examples(160, 0), _examples(40, 1)
    config = CONFIG.model_copy(update={"num_processes": 2, "epochs": 2})
    result = launch_distributed(
        "tiny", LABELS, train, val, config, tmp_path / "model", tmp_path / "dist", tmp_path / "ckpt", log=lambda _: None
    )
    # Gathered over the gloo process group: one entry per rank, so two processes took part.
    assert result.processes == 2 and result.rank == 0
    assert len(result.rank_rows) == 2 and len(result.rank_saved) == 2
    assert result.rank_rows[0] > 0 and result.rank_rows[1] > 0  # both ranks contributed
    assert sum(result.rank_rows) == 2 * 160  # disjoint shards cover the data each epoch
    assert result.rank_saved == [True, False]
    assert result.model_dir == str(tmp_path / "model") and (tmp_path / "model" / "model.safetensors").exists()


def test_cuda_oom_halves_micro_batch_and_doubles_accumulation(tmp_path, monkeypatch):
    original = torch.nn.Module.__call__
    seen = []

    def flaky(self, *args, **kwargs):
        if type(self).__name__ == "BertForSequenceClassification" and self.training:
            rows = kwargs["input_ids"].shape[0]
            seen.append(rows)
            if rows > 4:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "__call__", flaky)
    lines: list[str] = []
    result = train_classifier(
        "tiny",
        LABELS,
        _examples(64, 0),
        _examples(16, 1),
        CONFIG.model_copy(update={"epochs": 1, "batch_size": 16}),
        tmp_path / "m",
        log=lines.append,
    )
    assert result.batch_size == 4 and result.grad_accum == 4
    assert [line for line in lines if "out of memory" in line] == [
        "train: CUDA out of memory at micro-batch 16; retrying with micro-batch 8 x accumulation 2",
        "train: CUDA out of memory at micro-batch 8; retrying with micro-batch 4 x accumulation 4",
    ]


def test_lora_trains_only_adapters_and_saves_a_merged_plain_model(tmp_path):
    config = TrainConfig.model_validate(
        {**CONFIG.model_dump(), "epochs": 2, "lr": 1e-2, "lora": {"enabled": True, "r": 4, "alpha": 8}}
    )
    result = train_classifier(
        "tiny", LABELS, _examples(160, 0), _examples(40, 1), config, tmp_path / "m", log=lambda _: None
    )
    weights = _weights(tmp_path / "m")
    assert not any("lora" in k for k in weights)  # merged: a plain classifier, loads without peft
    from models.classifier import build_tiny

    base = build_tiny(LABELS, seed=CONFIG.seed)[0].state_dict()
    query = "bert.encoder.layer.0.attention.self.query.weight"
    key = "bert.encoder.layer.0.attention.self.key.weight"
    assert not torch.equal(weights[query], base[query])  # the adapter was merged into query
    assert torch.equal(weights[key], base[key])  # untargeted weights stayed frozen
    assert result.steps > 0


def test_distillation_keeps_the_challenger_closer_to_the_champion_on_replayed_rows(tmp_path):
    from models.classifier import load_classifier
    from tasks.inference import predict_proba

    # A champion trained on one rule, then new data that contradicts it, with replay.
    champion_dir = tmp_path / "champion"
    train_classifier(
        "tiny",
        LABELS,
        _examples(160, 0),
        _examples(40, 1),
        CONFIG.model_copy(update={"epochs": 2}),
        champion_dir,
        log=lambda _: None,
    )
    replay = _examples(80, 2, replayed=True)
    flipped = _examples(80, 3)
    flipped.labels = 1 - flipped.labels
    mix = Examples.concat([flipped, replay])
    champion, tokenizer = load_classifier(str(champion_dir), LABELS)
    before = predict_proba(champion, replay.ids, 0, 32, torch.device("cpu"))

    def kl_after(weight: float) -> float:
        out = tmp_path / f"student-{weight}"
        train_classifier(
            str(champion_dir),
            LABELS,
            mix,
            _examples(20, 4),
            CONFIG.model_copy(update={"epochs": 2, "distill_weight": weight}),
            out,
            log=lambda _: None,
        )
        student, _ = load_classifier(str(out), LABELS)
        after = predict_proba(student, replay.ids, 0, 32, torch.device("cpu"))
        return float(np.mean(np.sum(before * (np.log(before + 1e-9) - np.log(after + 1e-9)), axis=1)))

    assert kl_after(0.9) < kl_after(0.0)


def test_bf16_autocast_path_runs_on_cpu(tmp_path, monkeypatch):
    original = torch.nn.Module.__call__
    dtypes = set()

    def recording(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        if type(self).__name__ == "BertForSequenceClassification" and self.training:
            dtypes.add(out.logits.dtype)
        return out

    monkeypatch.setattr(torch.nn.Module, "__call__", recording)
    lines: list[str] = []
    result = train_classifier(
        "tiny",
        LABELS,
        _examples(96, 0),
        _examples(24, 1),
        CONFIG.model_copy(update={"epochs": 1, "precision": "bf16"}),
        tmp_path / "m",
        log=lines.append,
    )
    assert any("bf16 autocast" in line for line in lines)
    assert dtypes == {torch.bfloat16}  # the forward pass really ran under bf16 autocast
    weights = _weights(tmp_path / "m")
    assert all(w.dtype == torch.float32 for w in weights.values())  # autocast computes in bf16, stores fp32
    assert result.steps > 0 and np.isfinite(result.best_validation)
