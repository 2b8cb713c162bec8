"""Device choice, autocast and batched inference shared by training, evaluation and predict.

`predict_texts` is the one path from raw texts to class probabilities: `kaizen predict`,
the registered MLflow pyfunc and the tests all call it, so a long text is truncated by one
rule (the model's `max_length`, as in training) wherever it is labelled.
"""

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
            out[index] = (
                model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits.float().cpu().numpy()
            )
    return out


def predict_proba(model, ids: list[np.ndarray], pad_id: int, batch_size: int, device: torch.device) -> np.ndarray:
    """Class probabilities for ragged token ids, in input order."""
    logits = torch.from_numpy(predict_logits(model, ids, pad_id, batch_size, device))
    return torch.softmax(logits, dim=-1).numpy()


def predict_texts(
    model, tokenizer, texts: list[str], max_length: int, device: torch.device | None = None, batch_size: int = 32
) -> np.ndarray:
    """Class probabilities for raw texts, tokenized and truncated exactly as for training."""
    from tasks.featurize import tokenize_texts

    ids, offsets = tokenize_texts(list(texts), tokenizer, max_length)
    rows = [ids[offsets[i] : offsets[i + 1]] for i in range(len(texts))]
    return predict_proba(model, rows, tokenizer.pad_token_id or 0, batch_size, device or torch.device("cpu"))


def label_names(model) -> list[str]:
    return [model.config.id2label[i] for i in range(model.config.num_labels)]


def predictions_frame(proba: np.ndarray, model):
    """label, score (its probability) and one `p_<label>` column per class."""
    import pandas as pd

    names = label_names(model)
    frame = pd.DataFrame(
        {"label": [names[int(i)] for i in proba.argmax(axis=1)], "score": proba.max(axis=1).astype(float)}
    )
    for i, name in enumerate(names):
        frame[f"p_{name}"] = proba[:, i].astype(float)
    return frame


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


def predict_registered(ctx, texts: list[str], version: str | None = None, params: dict | None = None):
    """`kaizen predict`: load the registered pyfunc (champion by default) and label `texts`.

    Going through the pyfunc itself, not a copy of it, is what makes the CLI and a served
    model agree to the last digit. Returns (version, the family's prediction frame: for a
    classifier label/score/p_<label>). `params`: a causal LM's generation settings.
    """
    import mlflow
    import pandas as pd

    from tasks.errors import KaizenError
    from tasks.registry import CHAMPION, get_alias, get_version

    ref = (
        get_version(ctx.client, ctx.model_name, version) if version else get_alias(ctx.client, ctx.model_name, CHAMPION)
    )
    if ref is None:
        raise KaizenError("there is no champion yet; run `kaizen run` first")
    model = mlflow.pyfunc.load_model(f"models:/{ctx.model_name}/{ref.version}")
    params = {k: v for k, v in (params or {}).items() if v is not None}
    return ref.version, model.predict(pd.DataFrame({"text": list(texts)}), params=params or None)
