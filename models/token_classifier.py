"""The token-classification family's models: an encoder with a per-token classification head."""

from __future__ import annotations

from pathlib import Path

from models.base import TINY, build_tiny_encoder, load_labelled, load_saved_labelled

HEAD, AUTO = "BertForTokenClassification", "AutoModelForTokenClassification"


def build_tiny(tags: list[str], seed: int = 0):
    """A randomly initialised 2-layer BERT with a token head, for tests."""
    return build_tiny_encoder(HEAD, tags, seed)


def load_token_classifier(source: str, tags: list[str], seed: int = 0):
    """A base encoder (new token head for `tags`) or a saved kaizen token classifier."""
    return build_tiny(tags, seed) if source == TINY else load_labelled(AUTO, source, tags, seed)


def load_saved_token_classifier(path: Path | str):
    return load_saved_labelled(AUTO, path)
