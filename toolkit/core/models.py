"""Load a model by spec: the embedded organism, a local folder, or a hub name, all by one path.

``load(spec)`` returns a :class:`LoadedModel` ``(hf, tokenizer, bridge)``. The TransformerLens
``TransformerBridge`` wraps the HF model's modules in place, so hooks added through the bridge also
fire in ``hf.generate`` (with its KV cache): both views share one set of weights.

Policy: bf16 on GPU, fp32 on CPU (fp16 overflows in Qwen3); safetensors only; never remote code.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import NamedTuple

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from toolkit.core.io import REPO_ROOT

SUPPORTED_ARCHITECTURES = ("qwen2", "qwen3")
ORGANISMS = ("organism", "organism-base")


class ModelLoadError(ValueError):
    """A model spec that cannot be loaded; the message says why and what to do instead."""


class LoadedModel(NamedTuple):
    hf: torch.nn.Module
    tokenizer: object
    bridge: object
    spec: str


def data_dir() -> Path:
    """Where the organism checkpoints live (``$TOOLKIT_DATA`` or the repository's ``data/``)."""
    return Path(os.environ.get("TOOLKIT_DATA", REPO_ROOT / "data"))


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def default_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def resolve(spec: str) -> str:
    """Turn a spec into something ``from_pretrained`` takes, or raise :class:`ModelLoadError`."""
    if spec in ORGANISMS:
        path = data_dir() / spec
        if not (path / "config.json").exists():
            raise ModelLoadError(
                f"the {spec!r} checkpoint is missing from {path}; build it with "
                f"`python -m toolkit build-organism` (or `make organism`)")
        _check_organism_hash(path)
        return str(path)
    path = Path(spec).expanduser()
    if path.exists() or spec.startswith((".", "/", "~")):
        if not path.is_dir():
            raise ModelLoadError(f"model folder {path} does not exist or is not a folder")
        missing = [f for f in ("config.json",) if not (path / f).exists()]
        if missing or not list(path.glob("*.safetensors")):
            raise ModelLoadError(
                f"model folder {path} is incomplete: it needs config.json and *.safetensors weights "
                f"(found: {sorted(p.name for p in path.iterdir())})")
        return str(path)
    return spec


def _check_organism_hash(path: Path) -> None:
    from toolkit.organism.recipe import Recipe, recipe_hash

    meta_file = path / "recipe.json"
    stored = json.loads(meta_file.read_text()).get("recipe_hash") if meta_file.exists() else None
    if stored != recipe_hash(Recipe()):
        warnings.warn(
            f"{path.name}: the shipped weights were built by recipe {stored}, but the current recipe is "
            f"{recipe_hash(Recipe())}; rebuild with `python -m toolkit build-organism` to match the code",
            stacklevel=3)


def load_config(spec: str):
    """The HF config of ``spec``, with clear errors for offline/unknown names and unsupported models."""
    source = resolve(spec)
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=False)
    except (OSError, ValueError) as err:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        raise ModelLoadError(
            f"cannot load model {spec!r}"
            + (" while offline (HF_HUB_OFFLINE=1)" if offline else "")
            + f": {str(err).splitlines()[0]}\nUse model='organism' (the embedded model organism), a local "
            f"folder with config.json and safetensors weights, or a hub name on a machine that can download it"
        ) from err
    if config.model_type not in SUPPORTED_ARCHITECTURES:
        raise ModelLoadError(
            f"model {spec!r} has architecture {config.model_type!r}; supported: {', '.join(SUPPORTED_ARCHITECTURES)}")
    return config


def load_tokenizer(source: str):
    """The tokenizer class the folder declares. A plain ``tokenizers`` backend (the organism's) is loaded
    as such: AutoTokenizer would swap in the model type's own class (Qwen2Tokenizer drops spaces)."""
    from transformers import PreTrainedTokenizerFast

    config_file = Path(source) / "tokenizer_config.json"
    if config_file.exists():
        declared = json.loads(config_file.read_text()).get("tokenizer_class")
        if declared in ("TokenizersBackend", "PreTrainedTokenizerFast"):
            return PreTrainedTokenizerFast.from_pretrained(source)
    return AutoTokenizer.from_pretrained(source, trust_remote_code=False)


def load(spec: str = "organism", device: str = "auto", dtype: torch.dtype | None = None) -> LoadedModel:
    """Load ``spec`` (``"organism"``, ``"organism-base"``, a local folder or a hub name).

    Returns ``(hf, tokenizer, bridge, spec)``; the model is in eval mode with gradients off for
    parameters. The tokenizer pads on the left for batched generation.
    """
    from transformer_lens.model_bridge import TransformerBridge

    load_config(spec)
    source = resolve(spec)
    device_ = resolve_device(device)
    dtype = dtype or default_dtype(device_)
    try:
        hf = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, use_safetensors=True,
                                                  trust_remote_code=False)
        tokenizer = load_tokenizer(source)
    except Exception as err:  # safetensors raises its own error type for corrupt files
        raise ModelLoadError(f"cannot load weights of {spec!r} from {source}: {str(err).splitlines()[0]}") from err
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    hf.to(device_).eval()
    hf.requires_grad_(False)
    bridge = TransformerBridge.boot_transformers(source, hf_model=hf, tokenizer=tokenizer, device=str(device_),
                                                 dtype=dtype)
    bridge.eval()
    return LoadedModel(hf, tokenizer, bridge, spec)


def tiny_model_dir(arch: str, path: str | Path | None = None, seed: int = 0, n_layers: int = 2) -> Path:
    """Save a tiny random-init Qwen2 or Qwen3 (GQA: 4 query / 2 KV heads) with the organism tokenizer.

    Tests load it with :func:`load`, the same path a hub model takes. Qwen2 has qkv biases and no
    q/k norm, as in Qwen2.5-Math and R1-Distill; Qwen3 has q/k norm.
    """
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    from toolkit.organism.tokenizer import build_tokenizer

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
