"""The classification family's models: an encoder with a sequence-classification head."""

from __future__ import annotations

from pathlib import Path

from models.base import TINY, build_tiny_encoder, load_labelled, load_saved_labelled

HEAD, AUTO = "BertForSequenceClassification", "AutoModelForSequenceClassification"


def build_tiny(labels: list[str], seed: int = 0):
    """A randomly initialised 2-layer BERT classifier for tests."""
    return build_tiny_encoder(HEAD, labels, seed)


def load_classifier(source: str, labels: list[str], seed: int = 0):
    """A base encoder (new head for `labels`) or a saved kaizen classifier directory."""
    return build_tiny(labels, seed) if source == TINY else load_labelled(AUTO, source, labels, seed)


def load_saved_classifier(path: Path | str):
    """A saved kaizen classifier directory, labels as it was trained with, in eval mode."""
    return load_saved_labelled(AUTO, path)
