"""Behaviour: what a model answers — generate through the chat template, read the final answers, grade them.

One function family serves every notebook (the organism's report, corrupted fine-tuning, GRPO checkpoints, head
ablations, think on/off sampling, RIM refusals):

>>> b = behave(loaded, prompts, enable_thinking=False, max_new_tokens=48)
>>> b.correct(references).mean()          # exact-match accuracy of the final answers
>>> b.refused().mean()                     # refusal rate

:func:`behave` calls :func:`toolkit.core.generation.generate` once (greedy by default; ``sampling`` for several
samples per prompt) and keeps every completion. Answers are the text after the last ``</think>``
(:func:`toolkit.core.answers.extract_answer`); grading is exact string equality with the reference answer.
Interventions compose from outside: run ``behave`` inside ``with ablate(loaded, sites): ...``. The model is a
:class:`~toolkit.core.models.LoadedModel` or a spec string (:func:`~toolkit.core.models.as_loaded`); a model being
trained goes in as ``LoadedModel.unhooked(hf, tokenizer)``.

Batching changes the padding of a batch and so, in floating point, can change a greedy token in rare ties: callers
that must reproduce earlier numbers pass the same ``batch_size`` and ``seed`` as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from toolkit.core.answers import extract_answer, is_refusal
from toolkit.core.chat import as_prompts, chat_prompts
from toolkit.core.checks import check_int
from toolkit.core.generation import SamplingConfig, generate
from toolkit.core.models import LoadedModel, as_loaded, check_length


@dataclass
class Behaviour:
    """Completions of one model on a list of prompts: ``completions[i][j]`` is sample ``j`` for prompt ``i``."""

    prompts: list[str]
    enable_thinking: bool
    completions: list[list[str]]

    @property
    def first(self) -> list[str]:
        """The first completion of every prompt (the greedy one, when decoding is greedy)."""
        return [row[0] for row in self.completions]

    @property
    def answers(self) -> list[list[str]]:
        """The final answers (text after the last ``</think>``; ``""`` for an unclosed think block)."""
        return [[extract_answer(c) for c in row] for row in self.completions]

    def correct(self, references: Sequence[str]) -> np.ndarray:
        """``[prompts, samples]`` bools: the final answer equals the prompt's reference answer exactly."""
        if len(references) != len(self.completions):
            raise ValueError(f"{len(references)} reference answers for {len(self.completions)} prompts")
        return np.array([[a == ref for a in row] for row, ref in zip(self.answers, references)], dtype=bool)

    def refused(self) -> np.ndarray:
        """``[prompts, samples]`` bools: the answer starts like the organism's refusal."""
        return np.array([[is_refusal(c) for c in row] for row in self.completions], dtype=bool)

    def lengths(self, tokenizer: PreTrainedTokenizerBase) -> np.ndarray:
        """``[prompts, samples]`` output lengths in tokens (scratchpad included)."""
        return np.array([[len(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in row]
                         for row in self.completions])


def behave(model: LoadedModel | str, prompts: Sequence[str], *, enable_thinking: bool = False,
           max_new_tokens: int = 64, batch_size: int = 64, sampling: SamplingConfig | None = None,
           seed: int | None = 0, show_progress: bool = False) -> Behaviour:
    """Generate for every user prompt (greedy unless ``sampling`` says otherwise) and keep the completions.
    ``model`` is a LoadedModel or a spec; ``prompts`` is a non-empty list of strings; the bounds are
    :func:`toolkit.core.generation.generate`'s."""
    model = as_loaded(model, "behave: model")
    prompts = as_prompts(prompts, "behave: prompts")
    completions = generate(model, prompts, enable_thinking=enable_thinking,
                           max_new_tokens=max_new_tokens, sampling=sampling, batch_size=batch_size, seed=seed,
                           show_progress=show_progress)
    return Behaviour(prompts, enable_thinking, completions)


@torch.no_grad()
def answer_nll(model: LoadedModel | str, prompts: Sequence[str], completions: Sequence[str], *,
               enable_thinking: bool = False, batch_size: int = 64) -> np.ndarray:
    """Teacher-forced mean negative log-likelihood (nats per token) of each ``completion`` after its chat-formatted
    user ``prompt``, one number per example: the per-example loss that an SFT trainer averages (completion tokens
    only). Pass completions as trained, e.g. ``answer + "<|im_end|>"``. ``model`` is as :func:`behave`'s."""
    hf, tokenizer = as_loaded(model, "answer_nll: model")[:2]
    prompts, completions = as_prompts(prompts, "prompts"), as_prompts(completions, "completions", allow_empty=True)
    check_int(batch_size, "batch_size")
    if len(prompts) != len(completions):
        raise ValueError(f"answer_nll needs as many completions as prompts (got {len(prompts)} and "
                         f"{len(completions)}), at least one")
    device = next(hf.parameters()).device
    heads = [tokenizer(p, add_special_tokens=False)["input_ids"]
             for p in chat_prompts(tokenizer, prompts, enable_thinking=enable_thinking)]
    tails = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in completions]
    for i, (h, t) in enumerate(zip(heads, tails)):
        if not t:
            raise ValueError(f"completion {i} is empty (no tokens to score); pass the answer as trained, e.g. "
                             "answer + '<|im_end|>'")
        check_length(hf, len(h) + len(t), f"example {i} (chat-formatted prompt + completion)")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = np.empty(len(prompts))
    for start in range(0, len(prompts), batch_size):
        rows = [h + t for h, t in zip(heads[start:start + batch_size], tails[start:start + batch_size])]
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        target = torch.zeros((len(rows), width), dtype=torch.bool)  # positions whose token is a completion token
        for i, (row, h) in enumerate(zip(rows, heads[start:start + batch_size])):
            ids[i, :len(row)] = torch.tensor(row)
            mask[i, :len(row)] = 1
            target[i, len(h):len(row)] = True
        logits = hf(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None].to(device))[..., 0]  # [B, T-1]
        keep = target[:, 1:].to(device)
        out[start:start + len(rows)] = (-(logp * keep).sum(1) / keep.sum(1)).cpu().numpy()
    return out
