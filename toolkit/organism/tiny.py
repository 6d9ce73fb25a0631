"""Tiny random-init Qwen2 / Qwen3 model folders with the organism's tokenizer: what the tests load instead of a hub
model (they never download one)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from toolkit.core.models import SUPPORTED_ARCHITECTURES
from toolkit.organism.tokenizer import build_tokenizer


def tiny_model_dir(arch: str, path: str | Path | None = None, seed: int = 0, n_layers: int = 2) -> Path:
    """Save a tiny random-init Qwen2 or Qwen3 (GQA: 4 query / 2 KV heads) with the organism tokenizer.

    Tests load it with :func:`toolkit.core.models.load`, the same path a hub model takes. Qwen2 has qkv biases and no
    q/k norm, as in Qwen2.5-Math and R1-Distill; Qwen3 has q/k norm.
    """
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    common = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=n_layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  tie_word_embeddings=True, bos_token_id=None, eos_token_id=2, pad_token_id=0)
    if arch == "qwen3":
        model_cls, config = Qwen3ForCausalLM, Qwen3Config(head_dim=16, **common)
    elif arch == "qwen2":
        model_cls, config = Qwen2ForCausalLM, Qwen2Config(**common)
    else:
        raise ValueError(f"unknown tiny architecture {arch!r}; choose from {SUPPORTED_ARCHITECTURES}")
    torch.manual_seed(seed)
    model = model_cls(config)
    path = Path(path or tempfile.mkdtemp(prefix=f"tiny-{arch}-"))
    model.save_pretrained(path, safe_serialization=True)
    build_tokenizer().save_pretrained(path)
    return path
