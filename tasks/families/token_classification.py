"""Token classification (NER): one BIO tag per word, an encoder with a per-token head.

A row is a sentence: `tokens` (words joined by single spaces) and `tags` (one BIO tag per
word, joined the same way). Sub-word alignment: the first sub-token of a word carries the
word's tag; the other sub-tokens and the special tokens are ignored by the loss and by
evaluation (target -100, as transformers' token-classification heads expect).

Metrics: entity-level micro precision, recall and F1 with exact span and type (the primary
metric), token accuracy over words, and per-type F1. Entities are read from tag sequences as
conlleval and seqeval's default mode read them: an `I-X` that does not continue an `X` entity
starts one. Written here rather than taken from seqeval, which ships only as an sdist and pulls
in scikit-learn for these twenty lines. Bootstrap intervals resample sentences.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from models.token_classifier import load_saved_token_classifier, load_token_classifier
from tasks.dataset import Examples
from tasks.evaluate import SetEvaluation

NAME = "token-classification"
PRIMARY_METRIC = "entity_f1"
HIGHER_IS_BETTER = True
DISTILLS = False  # the teacher would be per sub-token, ragged; replay alone guards old entities
INPUT_COLUMNS = ("tokens",)
LORA_TASK_TYPE = "TOKEN_CLS"
IGNORE = -100  # the target of sub-tokens that carry no tag (cross_entropy's ignore_index)
NO_WORD = -1  # in the `words` feature array: not the first sub-token of a word
COLUMNS = ("tokens", "tags")
USES_LABELS = True  # config.labels is the tag set, `O` included
GATE_METRIC = "entity_f1"
# Per sentence, its term in the linearised challenger-minus-champion entity F1 (the delta
# method): the terms average to the F1 delta exactly, and their spread is F1's sampling spread.
PAIRED_GAIN = "f1_gain"
HELPERS = ("_token_count", "_empty_token", "_unknown_tag", "_bio")
PREDICT_PARAMS: dict = {}


# --- data ------------------------------------------------------------------------------------


def split_words(value) -> list[str]:
    """Words of a `tokens` or `tags` cell: a space-joined string, or a list (Parquet, JSON Lines)."""
    if isinstance(value, str):
        return value.split(" ")
    return [str(v) for v in value]


def prepare(frame):
    """`tokens` and `tags` as space-joined strings (lists are joined); `text` is the sentence,
    `label` whether it holds an entity (`entity` or `none`), what replay keeps in proportion."""
    import pandas as pd

    from tasks.families import text_column

    tokens, tags = text_column(frame, "tokens"), text_column(frame, "tags")
    stratum = tags.map(lambda t: "entity" if isinstance(t, str) and any(x != "O" for x in t.split(" ")) else "none")
    return pd.DataFrame({"tokens": tokens, "tags": tags, "text": tokens, "label": stratum})


def _row_problems(tokens, tags, known: set[str]) -> dict[str, str | None]:
    """What is wrong with one sentence, rule by rule (None: nothing)."""
    out: dict[str, str | None] = dict.fromkeys(HELPERS)
    if not isinstance(tokens, str) or not isinstance(tags, str):
        return out  # the not-null expectations name it
    words, labels = tokens.split(" "), tags.split(" ")
    if len(words) != len(labels):
        out["_token_count"] = f"{len(words)} tokens, {len(labels)} tags"
    empty = [i + 1 for i, w in enumerate(words) if not w.strip()]
    if empty:
        out["_empty_token"] = f"empty token at word {empty[0]}"
    unknown = [t for t in labels if t not in known]
    if unknown:
        out["_unknown_tag"] = f"tag {unknown[0]!r} is not in labels"
    previous = "O"
    for i, tag in enumerate(labels):
        if tag.startswith("I-") and previous[2:] != tag[2:]:
            out["_bio"] = f"{tag!r} at word {i + 1} follows {previous!r}" if i else f"{tag!r} starts the sentence"
            break
        previous = tag
    return out


def helper_columns(batch, config) -> dict:
    import pandas as pd

    known = set(config.labels)
    rows = [_row_problems(a, b, known) for a, b in zip(batch["tokens"], batch["tags"], strict=True)]
    return {h: pd.Series([r[h] for r in rows], index=batch.index, dtype=object) for h in HELPERS}


def expectations(config) -> list[tuple[str, object]]:
    import great_expectations as gx

    e = gx.expectations
    return [
        ("tokens column present", e.ExpectColumnToExist(column="tokens")),
        ("tags column present", e.ExpectColumnToExist(column="tags")),
        ("tags not null", e.ExpectColumnValuesToNotBeNull(column="tags")),
        ("as many tags as tokens", e.ExpectColumnValuesToBeNull(column="_token_count")),
        ("no empty token", e.ExpectColumnValuesToBeNull(column="_empty_token")),
        ("tags in declared label set", e.ExpectColumnValuesToBeNull(column="_unknown_tag")),
        ("BIO well-formed (an I-X continues an X)", e.ExpectColumnValuesToBeNull(column="_bio")),
    ]


def floors(gate, bootstrap: bool) -> list[tuple[str, float, str, str]]:
    return [("entity_f1", gate.min_entity_f1_new, ">=", "floor")]


def thresholds(gate) -> tuple[float, float]:
    return gate.min_improvement_new, gate.noninferiority_margin


def label_set(frame) -> list[str] | None:
    """Every tag of the frame, `O` first."""
    tags = {t for row in frame["tags"].dropna() for t in str(row).split(" ") if t}
    return ["O", *sorted(tags - {"O"})]


def example_output(labels: list[str], rows: int):
    import pandas as pd

    return pd.DataFrame({"tags": ["O"] * rows, "score": [0.5] * rows})


def featurize(frame, tokenizer, max_length: int) -> dict[str, np.ndarray]:
    """Token ids, and for each token the index of the word it starts (NO_WORD otherwise)."""
    sentences = [split_words(v) for v in frame["tokens"].tolist()]
    encoded = tokenizer(sentences, is_split_into_words=True, truncation=True, max_length=max_length, padding=False)
    ids, words, lengths = [], [], []
    for i, row in enumerate(encoded["input_ids"]):
        seen: set[int] = set()
        starts = []
        for word in encoded.word_ids(i):
            first = word is not None and word not in seen
            starts.append(word if first else NO_WORD)
            if word is not None:
                seen.add(word)
        ids.extend(row)
        words.extend(starts)
        lengths.append(len(row))
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return {"ids": np.asarray(ids, dtype=np.int32), "offsets": offsets, "words": np.asarray(words, dtype=np.int32)}


def align_targets(words: np.ndarray, tags: list[str], index: dict[str, int]) -> np.ndarray:
    """Per token: the tag index of the word it starts, IGNORE elsewhere (and past truncation)."""
    out = np.full(len(words), IGNORE, dtype=np.int64)
    starts = np.flatnonzero(words >= 0)
    out[starts] = [index[tags[w]] for w in words[starts]]
    return out


def examples_from(frame, features: dict[str, list[np.ndarray]], tags: list[str]) -> Examples:
    """Examples of a frame of sentences and its features; `labels` says whether a sentence has an entity
    (what stratified sampling keeps in proportion)."""
    index = {name: i for i, name in enumerate(tags)}
    sentence_tags = [split_words(v) for v in frame["tags"].tolist()]
    unknown = sorted({t for row in sentence_tags for t in row} - set(index))
    if unknown:
        raise ValueError(f"tags {unknown} are outside the configured set {tags}")
    targets = [align_targets(w, t, index) for w, t in zip(features["words"], sentence_tags, strict=True)]
    has_entity = np.array([any(t != "O" for t in row) for row in sentence_tags], dtype=np.int64)
    return Examples(list(features["ids"]), has_entity, frame.reset_index(drop=True), targets)


# --- model -------------------------------------------------------------------------------------


def load(source: str, labels: list[str], seed: int = 0):
    return load_token_classifier(source, labels, seed=seed)


def load_saved(path: Path | str):
    return load_saved_token_classifier(path)


def targets(examples: Examples, index: np.ndarray) -> torch.Tensor:
    """Targets of rows `index`, padded with IGNORE to the batch's width (that of `pad_batch`)."""
    from tasks.batching import pad_targets

    return pad_targets([examples.targets[i] for i in index], IGNORE)


def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.to(logits.device).reshape(-1), ignore_index=IGNORE
    )


def logits(model, ids: list[np.ndarray], pad_id: int, batch_size: int, device) -> np.ndarray:
    """Per row, a (tokens x tags) array of logits; an object array, rows being ragged."""
    from tasks.batching import pad_batch, sorted_batches
    from tasks.inference import autocast_for

    model.eval()
    out = np.empty(len(ids), dtype=object)
    with torch.inference_mode(), autocast_for(device):
        for index in sorted_batches([len(r) for r in ids], batch_size):
            input_ids, mask = pad_batch([ids[i] for i in index], pad_id)
            batch = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits.float().cpu().numpy()
            for row, i in enumerate(index):
                out[i] = batch[row, : len(ids[i])]
    return out


def predict(model, ids: list[np.ndarray], pad_id: int, batch_size: int, device) -> np.ndarray:
    """Per row, a (tokens x tags) array of probabilities."""
    out = logits(model, ids, pad_id, batch_size, device)
    for i, row in enumerate(out):
        out[i] = torch.softmax(torch.from_numpy(row), dim=-1).numpy()
    return out


def predict_frame(model, tokenizer, texts: list[str], max_length: int, **params):
    """`tokens` given as text (split on spaces): one `tags` string per text, one tag per word
    (words past `max_length` tokens get `O`), and the mean probability of the tags chosen."""
    import pandas as pd

    frame = pd.DataFrame({"tokens": [" ".join(t.split()) for t in texts]})
    from tasks.featurize import feature_rows

    rows = feature_rows(featurize(frame, tokenizer, max_length))
    ids, words = rows["ids"], rows["words"]
    proba = predict(model, ids, tokenizer.pad_token_id or 0, 32, torch.device("cpu"))
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    tags, scores = [], []
    for row, starts, sentence in zip(proba, words, frame["tokens"], strict=True):
        chosen = ["O"] * len(sentence.split(" "))
        keep = np.flatnonzero(starts >= 0)
        best = row[keep].argmax(axis=1)
        for position, tag in zip(starts[keep], best, strict=True):
            chosen[position] = names[int(tag)]
        tags.append(" ".join(chosen))
        scores.append(float(row[keep].max(axis=1).mean()) if len(keep) else float("nan"))
    return pd.DataFrame({"tags": tags, "score": scores})


# --- metrics -----------------------------------------------------------------------------------


def entities(tags: list[str]) -> set[tuple[int, int, str]]:
    """(start, end, type) of each entity in a BIO sequence, read as conlleval reads it."""
    spans, start, kind = set(), None, None
    for i, tag in enumerate([*tags, "O"]):
        prefix, _, name = tag.partition("-")
        if start is not None and (prefix != "I" or name != kind):
            spans.add((start, i, kind))
            start = None
        if prefix == "B" or (prefix == "I" and start is None):
            start, kind = i, name
    return spans


def word_tags(examples: Examples, proba: np.ndarray, names: list[str]) -> tuple[list[list[str]], list[list[str]]]:
    """Gold and predicted tags of every word. A word's prediction is that of its first
    sub-token; words cut off by `max_length` are predicted `O`, so truncation costs recall
    instead of silently leaving entities out of the count."""
    full = examples.meta["tags"].tolist() if "tags" in examples.meta else None
    gold, pred = [], []
    for i, (target, row) in enumerate(zip(examples.targets, proba, strict=True)):
        keep = target != IGNORE
        seen = [names[t] for t in target[keep]]
        guessed = [names[t] for t in np.asarray(row)[keep].argmax(axis=1)]
        truth = split_words(full[i]) if full is not None else seen
        gold.append(truth)
        pred.append(guessed + ["O"] * (len(truth) - len(guessed)))
    return gold, pred


def entity_counts(gold: list[list[str]], pred: list[list[str]], kinds: list[str]) -> np.ndarray:
    """Per sentence and per entity type (the last column: all types): [correct, predicted, gold]."""
    column = {k: i for i, k in enumerate(kinds)}
    counts = np.zeros((len(gold), len(kinds) + 1, 3), dtype=np.int64)
    for i, (g, p) in enumerate(zip(gold, pred, strict=True)):
        truth, guess = entities(g), entities(p)
        for spans, what in ((truth & guess, 0), (guess, 1), (truth, 2)):
            for _, _, kind in spans:
                counts[i, column[kind], what] += 1
            counts[i, -1, what] += len(spans)
    return counts


def f1_from(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and F1 of summed [correct, predicted, gold] counts (..., 3); NaN where undefined."""
    correct, predicted, truth = counts[..., 0], counts[..., 1], counts[..., 2]
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, correct / np.maximum(predicted, 1), np.nan)
        recall = np.where(truth > 0, correct / np.maximum(truth, 1), np.nan)
        f1 = np.where(predicted + truth > 0, 2 * correct / np.maximum(predicted + truth, 1), np.nan)
    return precision, recall, f1


def entity_kinds(names: list[str]) -> list[str]:
    return sorted({n.partition("-")[2] for n in names if n != "O"})


def _metrics(gold, pred, counts: np.ndarray, word_loss: np.ndarray) -> dict[str, float]:
    precision, recall, f1 = f1_from(counts[:, -1].sum(axis=0))
    words = sum(len(g) for g in gold)
    right = sum(a == b for g, p in zip(gold, pred, strict=True) for a, b in zip(g, p, strict=True))
    return {
        "entity_f1": float(f1),
        "entity_precision": float(precision),
        "entity_recall": float(recall),
        "token_accuracy": right / words if words else float("nan"),
        "log_loss": float(word_loss.mean()) if len(word_loss) else float("nan"),
    }


def _word_loss(examples: Examples, proba: np.ndarray) -> np.ndarray:
    """Cross-entropy of every tagged word (a sentence's words, in order, sentences concatenated)."""
    losses = []
    for target, row in zip(examples.targets, proba, strict=True):
        keep = np.flatnonzero(target != IGNORE)
        picked = np.asarray(row)[keep, target[keep]]
        losses.append(-np.log(np.clip(picked, 1e-6, 1.0)))
    return np.concatenate(losses) if losses else np.zeros(0)


def _per_type(counts: np.ndarray, kinds: list[str]) -> dict[str, dict[str, float]]:
    precision, recall, f1 = f1_from(counts[:, :-1].sum(axis=0))
    support = counts[:, :-1, 2].sum(axis=0)
    return {
        kind: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": float(support[i]),
        }
        for i, kind in enumerate(kinds)
    }


def validation_metrics(model, examples: Examples, pad_id: int, batch_size: int, device) -> dict[str, float]:
    if len(examples) == 0:
        return {PRIMARY_METRIC: float("nan"), "loss": float("nan")}
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    proba = predict(model, examples.ids, pad_id, batch_size, device)
    gold, pred = word_tags(examples, proba, names)
    counts = entity_counts(gold, pred, entity_kinds(names))
    measured = _metrics(gold, pred, counts, _word_loss(examples, proba))
    # No entity predicted and none to find: F1 is undefined; 0 keeps model selection moving.
    return {PRIMARY_METRIC: np.nan_to_num(measured["entity_f1"]), "loss": measured["log_loss"]}


def evaluate_set(
    name: str,
    examples: Examples,
    challenger: np.ndarray,
    champion: np.ndarray | None,
    labels: list[str],
    resamples: int,
    seed: int,
    kind: str = "set",
) -> SetEvaluation:
    """Entity F1 (and precision, recall, token accuracy, word log-loss) of both models; the
    challenger-minus-champion delta of each with a paired bootstrap over sentences."""
    kinds = entity_kinds(labels)
    roles = {"challenger": challenger, "champion": champion}
    scores, per_type, counts = {}, {}, {}
    for role, proba in roles.items():
        if proba is None:
            continue
        gold, pred = word_tags(examples, proba, labels)
        counts[role] = entity_counts(gold, pred, kinds)
        scores[role] = _metrics(gold, pred, counts[role], _word_loss(examples, proba))
        per_type[role] = _per_type(counts[role], kinds)
    detail = {"per_class": per_type} if kind == "set" else {}
    if champion is None:
        return SetEvaluation(name, kind, len(examples), scores["challenger"], None, **detail)
    delta = {k: scores["challenger"][k] - scores["champion"][k] for k in scores["challenger"]}
    low, high = _bootstrap_f1(counts["challenger"][:, -1], counts["champion"][:, -1], resamples, seed)
    gain = linearised_f1(counts["challenger"][:, -1]) - linearised_f1(counts["champion"][:, -1])
    return SetEvaluation(
        name,
        kind,
        len(examples),
        scores["challenger"],
        scores["champion"],
        delta=delta,
        ci_low={"entity_f1": low},
        ci_high={"entity_f1": high},
        paired={PAIRED_GAIN: np.round(gain, 6).tolist()},
        **detail,
    )


def linearised_f1(counts: np.ndarray) -> np.ndarray:
    """Per sentence, F1 plus its influence term n (2c - F1 (p + g)) / (P + G) (rows: [correct,
    predicted, gold]): the terms average to F1, so a difference of two models' terms averages to
    their F1 delta, and the spread of the differences gives the delta's standard error (the
    delta method). No entity predicted or to find anywhere: F1 counts as 0 and every term is 0."""
    total = counts.sum(axis=0).astype(np.float64)
    mass = total[1] + total[2]
    if len(counts) == 0 or mass == 0:
        return np.zeros(len(counts))
    f1 = 2 * total[0] / mass
    return f1 + len(counts) * (2 * counts[:, 0] - f1 * (counts[:, 1] + counts[:, 2])) / mass


def _bootstrap_f1(a: np.ndarray, b: np.ndarray, resamples: int, seed: int, confidence: float = 0.95):
    """Interval of F1(a) - F1(b), sentences resampled jointly for both models (rows: [correct, predicted, gold])."""
    n = len(a)
    if n == 0 or resamples == 0:
        return float("nan"), float("nan")
    index = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    diff = f1_from(a[index].sum(axis=1))[2] - f1_from(b[index].sum(axis=1))[2]
    alpha = (1 - confidence) / 2
    if not np.isfinite(diff).any():
        return float("nan"), float("nan")
    low, high = np.nanquantile(diff, [alpha, 1 - alpha])
    return float(low), float(high)
