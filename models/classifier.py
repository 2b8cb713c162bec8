"""The classification family's models: an encoder with a sequence-classification head."""

from __future__ import annotations

from pathlib import Path

from models.base import TINY, ModelError, load_tokenizer, quiet_transformers, resolve_base


def _label_maps(labels: list[str]) -> dict:
    return {
        "num_labels": len(labels),
        "id2label": {i: name for i, name in enumerate(labels)},
        "label2id": {name: i for i, name in enumerate(labels)},
    }


def build_tiny(labels: list[str], seed: int = 0):
    """A randomly initialised 2-layer BERT encoder for tests: seconds, not minutes."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    tokenizer = load_tokenizer(TINY)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        **_label_maps(labels),
    )
    torch.manual_seed(seed)
    return BertForSequenceClassification(config), tokenizer


def load_classifier(source: str, labels: list[str], seed: int = 0):
    """A base encoder (new head for `labels`) or a saved kaizen classifier directory."""
    if source == TINY:
        return build_tiny(labels, seed)
    import torch
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    quiet_transformers()
    path = resolve_base(source)
    torch.manual_seed(seed)  # the fresh head of a base encoder is seeded too
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialized head" is expected on a base encoder
    try:
        model = AutoModelForSequenceClassification.from_pretrained(path, local_files_only=True, **_label_maps(labels))
    except OSError as exc:
        raise ModelError(f"cannot load model from {path}: {exc}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    saved = [model.config.id2label[i] for i in range(model.config.num_labels)]
    if saved != list(labels):
        raise ModelError(f"{path}: model labels {saved} differ from configured labels {list(labels)}")
    return model, load_tokenizer(path)


def load_saved_classifier(path: Path | str):
    """A saved kaizen classifier directory, labels as it was trained with, in eval mode."""
    from transformers import AutoModelForSequenceClassification

    quiet_transformers()
    try:
        model = AutoModelForSequenceClassification.from_pretrained(str(path), local_files_only=True)
    except OSError as exc:
        raise ModelError(f"cannot load model from {path}: {exc}") from None
    return model.eval(), load_tokenizer(str(path))
