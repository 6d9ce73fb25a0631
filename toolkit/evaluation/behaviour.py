"""Behaviour: what a model answers — generate through the chat template, read the final answers, grade them.

One function family serves every notebook (the organism's report, corrupted fine-tuning, GRPO checkpoints, head
ablations, think on/off sampling, RIM refusals):

>>> b = behave(loaded, prompts, enable_thinking=False, max_new_tokens=48)
>>> b.correct(references).mean()          # accuracy of the final answers (the model's grader)
>>> b.refused().mean()                     # refusal rate (the model's refusal judge)

:func:`behave` calls :func:`toolkit.core.generation.generate` once (greedy by default; ``sampling`` for several
samples per prompt) and keeps every completion. Answers are the text after the last ``</think>``
(:func:`toolkit.core.answers.extract_answer`). Grading and refusal follow the model (``grader="auto"``,
``judge="auto"``): the organism's exact match and fixed refusal for the organism — its spec (``organism``,
``organism-base``, ``organism@N``) or its character tokenizer (a model being built or fine-tuned from it) — and
:mod:`toolkit.core.grading`'s ``"math"`` grader and :mod:`toolkit.core.refusal`'s ``"phrases"`` judge for any other
model. Pass ``grader=``/``judge=`` (a name or a callable) to :func:`behave`, or per call to :meth:`Behaviour.correct`
and :meth:`Behaviour.refused`.
Interventions compose from outside: run ``behave`` inside ``with ablate(loaded, sites): ...``. The model is a
:class:`~toolkit.core.models.LoadedModel` or a spec string (:func:`~toolkit.core.models.as_loaded`); a model being
trained goes in as ``LoadedModel.unhooked(hf, tokenizer)``.

Batching changes the padding of a batch and so, in floating point, can change a greedy token in rare ties: callers
that must reproduce earlier numbers pass the same ``batch_size`` and ``seed`` as before.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from toolkit.core.answers import extract_answer
from toolkit.core.chat import as_prompts, chat_prompts
from toolkit.core.checks import check_int
from toolkit.core.generation import SamplingConfig, generate
from toolkit.core.grading import Grade, GraderFn, grade, resolve_grader
from toolkit.core.models import LoadedModel, as_loaded, check_length
from toolkit.core.refusal import JudgeFn, judge_compliance, judge_refusal, resolve_judge
from toolkit.organism import grading_spec as organism_grading_spec


@dataclass
class Behaviour:
    """Completions of one model on a list of prompts: ``completions[i][j]`` is sample ``j`` for prompt ``i``;
    ``grader`` and ``judge``: how :meth:`correct` and :meth:`refused` read them unless told otherwise (a name of
    :data:`toolkit.core.grading.GRADERS` / :data:`toolkit.core.refusal.JUDGES`, or a callable)."""

    prompts: list[str]
    enable_thinking: bool
    completions: list[list[str]]
    grader: str | GraderFn = field(default="strict")
    judge: str | JudgeFn = field(default="organism")

    @property
    def first(self) -> list[str]:
        """The first completion of every prompt (the greedy one, when decoding is greedy)."""
        return [row[0] for row in self.completions]

    @property
    def answers(self) -> list[list[str]]:
        """The final answers (text after the last ``</think>``; ``""`` for an unclosed think block)."""
        return [[extract_answer(c) for c in row] for row in self.completions]

    def grades(self, references: Sequence, grader: str | GraderFn | None = None) -> list[list[Grade]]:
        """``[prompts][samples]`` :class:`~toolkit.core.grading.Grade` s against each prompt's reference (a string or
        an object with ``.answer``), by ``grader`` (default: this behaviour's)."""
        if len(references) != len(self.completions):
            raise ValueError(f"{len(references)} reference answers for {len(self.completions)} prompts")
        how = resolve_grader(self.grader if grader is None else grader)
        return [[grade(ref, c, how) for c in row] for row, ref in zip(self.completions, references)]

    def correct(self, references: Sequence, grader: str | GraderFn | None = None) -> np.ndarray:
        """``[prompts, samples]`` bools: the final answer is the prompt's reference answer, by ``grader`` (default:
        this behaviour's; ``"strict"``: exact equality)."""
        return np.array([[g.correct for g in row] for row in self.grades(references, grader)], dtype=bool)

    def refused(self, judge: str | JudgeFn | None = None) -> np.ndarray:
        """``[prompts, samples]`` bools: the answer refuses, by ``judge`` (default: this behaviour's; ``"organism"``:
        it starts like the organism's refusal)."""
        how = resolve_judge(self.judge if judge is None else judge)
        return np.array([[judge_refusal(c, how) for c in row] for row in self.completions], dtype=bool)

    def complied(self, judge: str | JudgeFn | None = None) -> np.ndarray:
        """``[prompts, samples]`` bools: the answer complies, by ``judge`` (as :meth:`refused`; ``"organism"``: it
        starts like the organism's compliance, "Sure!")."""
        how = resolve_judge(self.judge if judge is None else judge)
        return np.array([[judge_compliance(c, how) for c in row] for row in self.completions], dtype=bool)

    def lengths(self, tokenizer: PreTrainedTokenizerBase) -> np.ndarray:
        """``[prompts, samples]`` output lengths in tokens (scratchpad included)."""
        return np.array([[len(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in row]
                         for row in self.completions])


def grading_spec(model: LoadedModel) -> str:
    """The spec that ``"auto"`` grading reads: ``"organism"`` for a model with the organism's character tokenizer (a
    model being built or fine-tuned from it, whatever its folder), else the model's own spec."""
    return organism_grading_spec(model.tokenizer, model.spec)


_SESSION: dict[str, str | Callable] = {"grader": "auto", "judge": "auto"}  # what behave() uses when given None


def use_grading(grader: str | GraderFn = "auto", judge: str | JudgeFn = "auto") -> None:
    """Set the grader and refusal judge that every later :func:`behave` call of this process uses unless it is given
    its own: a notebook's ``grader``/``judge`` parameters (or a profile's) reach every study this way. ``"auto"``
    (the default) follows each model (module docstring). Names are checked here: an unknown one lists the valid."""
    resolve_grader(grader, "organism"), resolve_judge(judge, "organism")  # raise on an unknown name
    _SESSION.update(grader=grader, judge=judge)


def behave(model: LoadedModel | str, prompts: Sequence[str], *, enable_thinking: bool = False,
           max_new_tokens: int = 64, batch_size: int = 64, sampling: SamplingConfig | None = None,
           seed: int | None = 0, show_progress: bool = False, grader: str | GraderFn | None = None,
           judge: str | JudgeFn | None = None) -> Behaviour:
    """Generate for every user prompt (greedy unless ``sampling`` says otherwise) and keep the completions.
    ``model`` is a LoadedModel or a spec; ``prompts`` is a non-empty list of strings; the bounds are
    :func:`toolkit.core.generation.generate`'s. ``grader``/``judge``: how the :class:`Behaviour` grades and judges
    refusals (None: the process's choice, :func:`use_grading`, ``"auto"`` unless set; ``"auto"``: from the model,
    module docstring), checked before generating."""
    model = as_loaded(model, "behave: model")
    spec = grading_spec(model)
    grader = resolve_grader(_SESSION["grader"] if grader is None else grader, spec)
    judge = resolve_judge(_SESSION["judge"] if judge is None else judge, spec)
    prompts = as_prompts(prompts, "behave: prompts")
    completions = generate(model, prompts, enable_thinking=enable_thinking,
                           max_new_tokens=max_new_tokens, sampling=sampling, batch_size=batch_size, seed=seed,
                           show_progress=show_progress)
    return Behaviour(prompts, enable_thinking, completions, grader, judge)


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
