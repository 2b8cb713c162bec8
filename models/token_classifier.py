"""The token-classification family's models: an encoder with a per-token classification head."""

from __future__ import annotations

from pathlib import Path

from models.base import TINY, ModelError, load_tokenizer, quiet_transformers, resolve_base


def _tag_maps(tags: list[str]) -> dict:
    return {
        "num_labels": len(tags),
        "id2label": {i: name for i, name in enumerate(tags)},
        "label2id": {name: i for i, name in enumerate(tags)},
    }


def build_tiny(tags: list[str], seed: int = 0):
    """A randomly initialised 2-layer BERT encoder with a token head, for tests."""
    import torch
    from transformers import BertConfig, BertForTokenClassification

    tokenizer = load_tokenizer(TINY)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        **_tag_maps(tags),
    )
    torch.manual_seed(seed)
    return BertForTokenClassification(config), tokenizer


def load_token_classifier(source: str, tags: list[str], seed: int = 0):
    """A base encoder (new token head for `tags`) or a saved kaizen token classifier."""
    if source == TINY:
        return build_tiny(tags, seed)
    import torch
    from transformers import AutoModelForTokenClassification
    from transformers.utils import logging as hf_logging

    quiet_transformers()
    path = resolve_base(source)
    torch.manual_seed(seed)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialized head" is expected on a base encoder
    try:
        model = AutoModelForTokenClassification.from_pretrained(path, local_files_only=True, **_tag_maps(tags))
    except OSError as exc:
        raise ModelError(f"cannot load model from {path}: {exc}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    saved = [model.config.id2label[i] for i in range(model.config.num_labels)]
    if saved != list(tags):
        raise ModelError(f"{path}: model tags {saved} differ from configured labels {list(tags)}")
    return model, load_tokenizer(path)


def load_saved_token_classifier(path: Path | str):
    from transformers import AutoModelForTokenClassification

    quiet_transformers()
    try:
        model = AutoModelForTokenClassification.from_pretrained(str(path), local_files_only=True)
    except OSError as exc:
        raise ModelError(f"cannot load model from {path}: {exc}") from None
    return model.eval(), load_tokenizer(str(path))
