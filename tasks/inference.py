"""Device choice, autocast and batched inference shared by training, evaluation and predict."""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch

from tasks.batching import pad_batch, sorted_batches
from tasks.dataset import Examples


def choose_device(preference: str) -> torch.device:
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("train.device=cuda but no CUDA device is available")
        return torch.device("cuda")
    return torch.device("cpu")


def autocast_for(device: torch.device):
    """bf16 autocast on CUDA; fp32 on CPU, where bf16 autocast is slower on most CPUs."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def predict_logits(model, ids: list[np.ndarray], pad_id: int, batch_size: int, device: torch.device) -> np.ndarray:
    """Raw logits for ragged token ids, in input order."""
    model.eval()
    out = np.zeros((len(ids), model.config.num_labels), dtype=np.float32)
    with torch.inference_mode(), autocast_for(device):
        for index in sorted_batches([len(r) for r in ids], batch_size):
            input_ids, mask = pad_batch([ids[i] for i in index], pad_id)
            out[index] = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits.float().cpu().numpy()
    return out


def predict_proba(model, ids: list[np.ndarray], pad_id: int, batch_size: int, device: torch.device) -> np.ndarray:
    """Class probabilities for ragged token ids, in input order."""
    logits = torch.from_numpy(predict_logits(model, ids, pad_id, batch_size, device))
    return torch.softmax(logits, dim=-1).numpy()


def accuracy_and_loss(
    model, examples: Examples, pad_id: int, batch_size: int, device: torch.device
) -> tuple[float, float]:
    """Accuracy and mean cross-entropy; (nan, nan) on an empty set."""
    if len(examples) == 0:
        return float("nan"), float("nan")
    proba = predict_proba(model, examples.ids, pad_id, batch_size, device)
    picked = proba[np.arange(len(examples)), examples.labels]
    loss = float(-np.log(np.clip(picked, 1e-12, 1.0)).mean())
    return float((proba.argmax(axis=1) == examples.labels).mean()), loss
