"""Causal language modelling: a decoder adapted to a domain's texts, judged by perplexity.

A row is a document (`text`). Training minimises the mean next-token loss; padding is neither
attended to nor scored. Metrics: mean token loss (token-weighted over a set) and perplexity,
exp of that loss, the primary metric (lower is better). The bootstrap resamples documents,
both models on the same draws. `predict_frame` generates a continuation of each text.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from models.causal_lm import load_causal_lm, load_saved_causal_lm
from tasks.dataset import Examples
from tasks.evaluate import SetEvaluation

NAME = "causal-lm"
PRIMARY_METRIC = "perplexity"
HIGHER_IS_BETTER = False
DISTILLS = False  # a teacher would be a vocabulary-sized distribution per token; replay guards old text
INPUT_COLUMNS = ("text",)
LORA_TASK_TYPE = "CAUSAL_LM"
IGNORE = -100
COLUMNS = ("text",)
USES_LABELS = False  # config.labels is ignored
# Mean log-likelihood per token (minus the mean token loss): its challenger-minus-champion delta
# is ln(champion perplexity / challenger perplexity), so a perplexity ratio margin r is ln r.
GATE_METRIC = "log_likelihood"
PAIRED_GAIN = "log_likelihood_gain"  # per document, its term in that delta (documents weigh by their tokens)
HELPERS: tuple[str, ...] = ()
PREDICT_PARAMS = {"max_new_tokens": 32, "temperature": 0.0, "seed": 0}
SAMPLE_PROMPTS = 3  # documents of `new` whose opening words prompt the generations recorded on the run
PROMPT_WORDS = 6


# --- data ------------------------------------------------------------------------------------


def prepare(frame):
    """`text` as given; every document is one stratum (`label` = `document`)."""
    import pandas as pd

    from tasks.families import text_column

    text = text_column(frame, "text")
    return pd.DataFrame({"text": text, "label": ["document"] * len(text)})


def helper_columns(batch, config) -> dict:
    return {}  # the shared rules (non-empty, length, debris, duplicates, leakage) are this family's


def expectations(config) -> list[tuple[str, object]]:
    return []


def floors(gate, bootstrap: bool) -> list[tuple[str, float, str, str]]:
    """A perplexity ceiling when one is configured; otherwise only that it is finite."""
    ceiling = gate.max_perplexity_new if gate.max_perplexity_new > 0 else float("inf")
    return [("perplexity", ceiling, "<", "floor")]


def thresholds(gate) -> tuple[float, float]:
    import math

    return 0.0, math.log(gate.max_perplexity_ratio)


def label_set(frame) -> list[str] | None:
    return None


def example_output(labels, rows: int):
    import pandas as pd

    return pd.DataFrame({"generated": ["text"] * rows})


def sample_prompts(frame) -> list[str]:
    """Fixed prompts for the generations recorded on a run: the opening words of the first documents."""
    texts = [str(t) for t in frame["text"].head(SAMPLE_PROMPTS)]
    return [" ".join(t.split()[:PROMPT_WORDS]) for t in texts if t.strip()]


def featurize(frame, tokenizer, max_length: int) -> dict[str, np.ndarray]:
    """Token ids of each text, truncated to `max_length`, ending with the end-of-text token
    where the tokenizer has one (so the model learns where a document stops)."""
    eos = tokenizer.eos_token_id
    encoded = tokenizer(frame["text"].tolist(), truncation=True, max_length=max_length - 1, padding=False)
    rows = [row + [eos] if eos is not None and (not row or row[-1] != eos) else row for row in encoded["input_ids"]]
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return {
        "ids": np.fromiter((t for r in rows for t in r), dtype=np.int32, count=int(offsets[-1])),
        "offsets": offsets,
    }


def examples_from(frame, features: dict[str, list[np.ndarray]], labels=None) -> Examples:
    """Documents as Examples; every row is its own target (`labels` all 0: one stratum)."""
    ids = list(features["ids"])
    return Examples(
        ids, np.zeros(len(ids), dtype=np.int64), frame.reset_index(drop=True), [r.astype(np.int64) for r in ids]
    )


# --- model -------------------------------------------------------------------------------------


def load(source: str, labels: list[str] | None = None, seed: int = 0):
    """`labels` is part of the protocol; a language model has none."""
    return load_causal_lm(source, seed=seed)


def load_saved(path: Path | str):
    return load_saved_causal_lm(path)


def targets(examples: Examples, index: np.ndarray) -> torch.Tensor:
    """The rows' own ids, padded with IGNORE to the batch's width."""
    from tasks.batching import pad_targets

    return pad_targets([examples.ids[i] for i in index], IGNORE)


def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean loss of predicting each token from the ones before it."""
    shifted = targets.to(logits.device)[:, 1:].reshape(-1)
    return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), shifted, ignore_index=IGNORE)


def _batches(model, ids: list[np.ndarray], pad_id: int, batch_size: int, device):
    from tasks.batching import pad_batch, sorted_batches
    from tasks.inference import autocast_for

    model.eval()
    with torch.inference_mode(), autocast_for(device):
        for index in sorted_batches([len(r) for r in ids], batch_size):
            input_ids, mask = pad_batch([ids[i] for i in index], pad_id)
            yield index, input_ids, model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits


def logits(model, ids: list[np.ndarray], pad_id: int, batch_size: int, device) -> np.ndarray:
    """Per row, a (tokens x vocabulary) array of logits; an object array, rows being ragged."""
    out = np.empty(len(ids), dtype=object)
    for index, _, batch in _batches(model, ids, pad_id, batch_size, device):
        batch = batch.float().cpu().numpy()
        for row, i in enumerate(index):
            out[i] = batch[row, : len(ids[i])]
    return out


def predict(model, ids: list[np.ndarray], pad_id: int, batch_size: int, device) -> np.ndarray:
    """Per row, the loss (negative log-likelihood, nats) of each of its tokens after the first."""
    out = np.empty(len(ids), dtype=object)
    for index, input_ids, batch in _batches(model, ids, pad_id, batch_size, device):
        nll = -torch.log_softmax(batch[:, :-1].float(), dim=-1).gather(-1, input_ids[:, 1:, None].to(batch.device))
        nll = nll[..., 0].cpu().numpy()
        for row, i in enumerate(index):
            out[i] = nll[row, : len(ids[i]) - 1]
    return out


def generate(
    model, tokenizer, prompts: list[str], max_new_tokens: int = 32, temperature: float = 0.0, seed: int = 0
) -> list[str]:
    """A continuation of each prompt: greedy at temperature 0, sampled (seeded) above."""
    model.eval()
    out = []
    for prompt in prompts:
        encoded = tokenizer(prompt, return_tensors="pt", add_special_tokens=True)
        ids = encoded["input_ids"]
        if ids[0, -1] == tokenizer.eos_token_id:  # a prompt is unfinished text: it does not end here
            ids = ids[:, :-1]
        torch.manual_seed(seed)
        sample = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
        with torch.inference_mode():
            new = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                **sample,
            )
        out.append(tokenizer.decode(new[0, ids.shape[1] :], skip_special_tokens=True))
    return out


def predict_frame(model, tokenizer, texts: list[str], max_length: int, **params):
    """A continuation of each text (PREDICT_PARAMS: max_new_tokens, temperature, seed)."""
    import pandas as pd

    chosen = {**PREDICT_PARAMS, **{k: v for k, v in params.items() if k in PREDICT_PARAMS and v is not None}}
    return pd.DataFrame(
        {
            "generated": generate(
                model,
                tokenizer,
                list(texts),
                max_new_tokens=int(chosen["max_new_tokens"]),
                temperature=float(chosen["temperature"]),
                seed=int(chosen["seed"]),
            )
        }
    )


# --- metrics -----------------------------------------------------------------------------------


def _document_sums(nll: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per document: summed token loss and scored tokens."""
    return np.array([float(np.sum(r)) for r in nll]), np.array([len(r) for r in nll], dtype=np.float64)


def _summary(total: np.ndarray, tokens: np.ndarray) -> dict[str, float]:
    n = float(tokens.sum())
    mean = float(total.sum() / n) if n else float("nan")
    return {"mean_token_loss": mean, "perplexity": float(np.exp(mean)), GATE_METRIC: -mean, "tokens": n}


def validation_metrics(model, examples: Examples, pad_id: int, batch_size: int, device) -> dict[str, float]:
    if len(examples) == 0:
        return {PRIMARY_METRIC: float("nan"), "loss": float("nan")}
    measured = _summary(*_document_sums(predict(model, examples.ids, pad_id, batch_size, device)))
    return {PRIMARY_METRIC: measured["perplexity"], "loss": measured["mean_token_loss"]}


def evaluate_set(
    name: str,
    examples: Examples,
    challenger: np.ndarray,
    champion: np.ndarray | None,
    labels: list[str] | None,
    resamples: int,
    seed: int,
    kind: str = "set",
) -> SetEvaluation:
    """Mean token loss and perplexity of both models; deltas (challenger - champion, negative =
    challenger better) with intervals from resampling documents; per-document loss gains."""
    total, tokens = _document_sums(challenger)
    scores = _summary(total, tokens)
    if champion is None:
        return SetEvaluation(name, kind, len(examples), scores, None)
    base_total, _ = _document_sums(champion)
    base = _summary(base_total, tokens)
    delta = {k: scores[k] - base[k] for k in ("mean_token_loss", "perplexity")}
    delta[GATE_METRIC] = scores[GATE_METRIC] - base[GATE_METRIC]
    low, high = _bootstrap(total, base_total, tokens, resamples, seed)
    low[GATE_METRIC], high[GATE_METRIC] = -high["mean_token_loss"], -low["mean_token_loss"]
    # Each document's term of (champion - challenger) summed loss / all tokens, times n: the
    # terms average to the token-weighted loss difference (documents weigh by their length).
    n, scored = len(tokens), float(tokens.sum())
    gain = (base_total - total) * n / scored if scored else np.zeros(n)
    return SetEvaluation(
        name,
        kind,
        len(examples),
        scores,
        base,
        delta=delta,
        ci_low=low,
        ci_high=high,
        paired={PAIRED_GAIN: np.round(gain, 6).tolist()},
    )


def _bootstrap(total, base_total, tokens, resamples: int, seed: int, confidence: float = 0.95):
    if len(tokens) == 0 or resamples == 0:
        nan = {"mean_token_loss": float("nan"), "perplexity": float("nan")}
        return nan, dict(nan)
    index = np.random.default_rng(seed).integers(0, len(tokens), size=(resamples, len(tokens)))
    n = tokens[index].sum(axis=1)
    mine, theirs = total[index].sum(axis=1) / n, base_total[index].sum(axis=1) / n
    draws = {"mean_token_loss": mine - theirs, "perplexity": np.exp(mine) - np.exp(theirs)}
    alpha = (1 - confidence) / 2
    low = {k: float(np.quantile(v, alpha)) for k, v in draws.items()}
    high = {k: float(np.quantile(v, 1 - alpha)) for k, v in draws.items()}
    return low, high
