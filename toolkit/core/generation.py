"""Batched generation through the chat template (greedy or sampled), one list of completions per prompt.

Answers are read from completions by :mod:`toolkit.core.answers`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from toolkit.core.chat import chat_prompts
from toolkit.core.progress import progress


@dataclass
class SamplingConfig:
    """Decoding settings. ``do_sample=False`` is greedy; the defaults are Qwen3's thinking-mode ones."""

    do_sample: bool = False
    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 20
    num_samples: int = 1

    def generate_kwargs(self) -> dict:
        if not self.do_sample:
            return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k}


@torch.no_grad()
def generate(
    model,
    tokenizer,
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
    ``<|im_end|>`` per row.
    """
    sampling = sampling or SamplingConfig()
    if seed is not None:
        torch.manual_seed(seed)
    texts = chat_prompts(tokenizer, user_prompts, enable_thinking)
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
