"""Batched generation through the chat template (greedy or sampled), one list of completions per prompt.

Answers are read from completions by :mod:`toolkit.core.answers`.

Bounds (checked before anything is generated): ``user_prompts`` is a non-empty list of strings
(:func:`toolkit.core.chat.as_prompts`); ``max_new_tokens`` and ``batch_size`` are integers >= 1; every prompt's
chat-formatted tokens plus ``max_new_tokens`` fit the model's ``max_position_embeddings``
(:func:`toolkit.core.models.check_length`); :meth:`SamplingConfig.validate` checks the decoding settings
(integers with :func:`toolkit.core.checks.check_int`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from toolkit.core.chat import as_prompts, chat_prompts
from toolkit.core.checks import check_int
from toolkit.core.models import LoadedModel, as_loaded, check_length
from toolkit.core.progress import progress


@dataclass
class SamplingConfig:
    """Decoding settings. ``do_sample=False`` is greedy (one completion per prompt; the other fields are then
    unused); the defaults are Qwen3's thinking-mode ones. ``top_k=0`` turns top-k filtering off."""

    do_sample: bool = False
    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 20
    num_samples: int = 1

    def __post_init__(self):
        self.validate()

    def validate(self) -> SamplingConfig:
        """Refuse settings that generate nothing or that transformers would ignore or reject late: ``num_samples``
        >= 1 (and 1 when greedy), and when sampling ``temperature`` > 0, ``top_p`` in (0, 1], ``top_k`` >= 0."""
        check_int(self.num_samples, "SamplingConfig.num_samples")
        if not self.do_sample:
            if self.num_samples != 1:
                raise ValueError(f"SamplingConfig.num_samples={self.num_samples} needs do_sample=True: greedy "
                                 "decoding gives one completion per prompt")
            return self
        if not isinstance(self.temperature, numbers.Real) or not (math.isfinite(self.temperature)
                                                                   and self.temperature > 0):
            raise ValueError(f"SamplingConfig.temperature must be a finite number > 0 when sampling, got "
                             f"{self.temperature!r} (for greedy decoding use do_sample=False)")
        if not isinstance(self.top_p, numbers.Real) or not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingConfig.top_p must be in (0, 1] when sampling, got {self.top_p!r} (1 keeps "
                             "every token)")
        check_int(self.top_k, "SamplingConfig.top_k", minimum=0)
        return self

    def generate_kwargs(self) -> dict:
        if not self.do_sample:
            return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k}


@torch.no_grad()
def generate(
    model: LoadedModel | str,
    user_prompts: Sequence[str],
    enable_thinking: bool = False,
    max_new_tokens: int = 64,
    sampling: SamplingConfig | None = None,
    batch_size: int = 64,
    seed: int | None = 0,
    show_progress: bool = False,
) -> list[list[str]]:
    """Generate completions for each user prompt.

    Returns one list per prompt of ``sampling.num_samples`` completions (text after the prompt,
    special tokens removed except ``<think>``/``</think>``). Left-padded batches; stops at
    ``<|im_end|>`` per row. Refuses bad bounds before generating (module docstring). ``model``: a
    :class:`~toolkit.core.models.LoadedModel` (a training model in hand: ``LoadedModel.unhooked(hf, tokenizer)``) or a
    spec.
    """
    loaded = as_loaded(model, "generate: model")
    model, tokenizer = loaded.hf, loaded.tokenizer
    user_prompts = as_prompts(user_prompts, "user_prompts")
    check_int(max_new_tokens, "max_new_tokens")
    check_int(batch_size, "batch_size")
    if seed is not None:
        check_int(seed, "seed", minimum=-(2**63))  # any integer torch.manual_seed takes
    sampling = (sampling or SamplingConfig()).validate()
    texts = chat_prompts(tokenizer, user_prompts, enable_thinking)
    for i, ids in enumerate(tokenizer(texts, add_special_tokens=False)["input_ids"]):
        check_length(model, len(ids), f"prompt {i} ({user_prompts[i][:40]!r}, chat-formatted)", max_new_tokens)
    if seed is not None:
        torch.manual_seed(seed)
    device = next(model.parameters()).device
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else im_end
    tokenizer.padding_side = "left"
    out: list[list[str]] = []
    starts = range(0, len(texts), batch_size)
    for start in progress(starts, desc="generate", disable=not show_progress):
        batch = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True,
                          add_special_tokens=False).to(device)
        gen = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            eos_token_id=im_end,
            pad_token_id=pad,
            num_return_sequences=sampling.num_samples,
            **sampling.generate_kwargs(),
        )
        new = gen[:, batch["input_ids"].shape[1]:]  # (B * num_samples, T_new)
        decoded = [_decode(tokenizer, row, im_end, pad) for row in new]
        n = sampling.num_samples
        out.extend(decoded[i:i + n] for i in range(0, len(decoded), n))
    return out


def _decode(tokenizer, ids: torch.Tensor, im_end: int, pad: int) -> str:
    ids = ids.tolist()
    if im_end in ids:
        ids = ids[:ids.index(im_end)]
    return tokenizer.decode([i for i in ids if i != pad], skip_special_tokens=True)
